"""Exit policies: when an internal classifier's answer is good enough to stop.

Every policy is a rule "go on while the IC's *score* is below the policy's *key*", i.e. stop at
the first IC whose score reaches the key; the final head answers the samples no IC stops.
Expressing all of them this way lets the batched engine, the simulation on stored logits and the
threshold search share one definition.

- ``maxprob`` (the paper's): score = largest softmax probability; key = threshold q.
- ``entropy``: score = minus the softmax entropy divided by log(classes), so the normalised
  entropy lies in [0, 1]; the threshold t means "stop when the normalised entropy <= t" (key = -t).
- ``patience``: score = how many consecutive exits, ending at this one, predict the same class;
  the threshold k means "stop once k consecutive exits agree" (key = k, a whole number >= 1).
- ``maxprob-per-exit``: the paper's score with one threshold per IC (a tuple), chosen by
  ``calibrate(..., per_exit=True)``; it is not one of the named policies of :data:`POLICIES`.
"""

from __future__ import annotations

import math
import numbers
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Sequence

import torch

from ..errors import UserError

State = tuple[torch.Tensor, ...]


@dataclass(frozen=True)
class ExitPolicy(ABC):
    """A stopping rule with its threshold, in the user's units."""

    threshold: float
    name: ClassVar[str]

    @property
    def key(self) -> float:
        """The value a score must reach for a sample to stop (compared in float32, as scores are)."""
        return float(self.threshold)

    @classmethod
    @abstractmethod
    def threshold_of_key(cls, key: float) -> float:
        """The threshold whose key is ``key`` (inverse of :attr:`key`)."""

    @classmethod
    @abstractmethod
    def scores(cls, logits: torch.Tensor) -> torch.Tensor:
        """Float32 scores of the ICs' logits ``(exits, samples, classes)`` -> ``(exits, samples)``."""

    @classmethod
    def safe_scores(cls, logits: torch.Tensor) -> torch.Tensor:
        """:meth:`scores` with NaN (from NaN logits) made -inf: such a sample is never confident enough to stop."""
        return torch.nan_to_num(cls.scores(logits), nan=-torch.inf)

    def key_at(self, index: int) -> float:
        """The key at IC ``index`` (0 = first IC): the same at every IC unless the policy has one per IC."""
        return self.key

    def start(self, n: int, device: torch.device) -> State:
        """Per-sample state carried from exit to exit (rows follow the surviving samples)."""
        return ()

    def step(self, logits: torch.Tensor, state: State, index: int) -> tuple[torch.Tensor, State]:
        """Whether each sample goes on past IC ``index`` (0-based), given its logits ``(samples, classes)``,
        and the new state.

        Stateless policies score each IC alone (``scores`` accepts any leading dimensions)."""
        return self.safe_scores(logits) < self.key_at(index), state


@dataclass(frozen=True)
class MaxProb(ExitPolicy):
    """Stop when the largest softmax probability is at least ``threshold`` (the paper's rule; above 1: never)."""

    name: ClassVar[str] = "maxprob"

    def __post_init__(self) -> None:
        _check_number(self)

    @classmethod
    def threshold_of_key(cls, key: float) -> float:
        return key

    @classmethod
    def scores(cls, logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits.float(), dim=-1).amax(dim=-1)


@dataclass(frozen=True)
class Entropy(ExitPolicy):
    """Stop when the softmax entropy divided by log(classes) is at most ``threshold`` (below 0: never)."""

    name: ClassVar[str] = "entropy"

    def __post_init__(self) -> None:
        _check_number(self)

    @property
    def key(self) -> float:
        return -float(self.threshold)

    @classmethod
    def threshold_of_key(cls, key: float) -> float:
        return -key

    @classmethod
    def scores(cls, logits: torch.Tensor) -> torch.Tensor:
        log_p = torch.log_softmax(logits.float(), dim=-1)
        entropy = -(log_p.exp() * log_p).sum(dim=-1)
        return -entropy / math.log(max(2, logits.shape[-1]))


@dataclass(frozen=True)
class Patience(ExitPolicy):
    """Stop once ``threshold`` consecutive exits (this one included) predict the same class (more than the
    number of ICs: never)."""

    name: ClassVar[str] = "patience"

    def __post_init__(self) -> None:
        _check_number(self)
        if not math.isfinite(self.threshold) or self.threshold < 1 or self.threshold != int(self.threshold):
            raise UserError(f"patience {self.threshold} must be a whole number of agreeing exits, at least 1")

    @classmethod
    def threshold_of_key(cls, key: float) -> float:
        return float(math.ceil(key))

    @classmethod
    def scores(cls, logits: torch.Tensor) -> torch.Tensor:
        predictions = logits.argmax(dim=-1)
        broken = logits.isnan().any(dim=-1)  # NaN logits agree with nothing
        runs = torch.where(broken, 0.0, torch.ones(predictions.shape, dtype=torch.float32, device=logits.device))
        for i in range(1, len(predictions)):
            run = torch.where(predictions[i] == predictions[i - 1], runs[i - 1] + 1, 1.0)
            runs[i] = torch.where(broken[i], 0.0, run)
        return runs

    def start(self, n: int, device: torch.device) -> State:
        return (torch.full((n,), -1, dtype=torch.long, device=device), torch.zeros(n, device=device))

    def step(self, logits: torch.Tensor, state: State, index: int) -> tuple[torch.Tensor, State]:
        previous, run = state
        predictions = logits.argmax(dim=-1)
        run = torch.where(predictions == previous, run + 1, 1.0)
        run = torch.where(logits.isnan().any(dim=-1), 0.0, run)  # NaN logits agree with nothing
        return run < self.key_at(index), (predictions, run)


@dataclass(frozen=True)
class PerExitMaxProb(MaxProb):
    """The paper's rule with one threshold per IC: stop at the first IC ``i`` whose largest softmax
    probability is at least ``threshold[i]``."""

    threshold: tuple[float, ...]
    name: ClassVar[str] = "maxprob-per-exit"

    def __post_init__(self) -> None:
        if not isinstance(self.threshold, tuple) or not self.threshold:
            raise UserError(f"a per-exit policy needs a tuple of thresholds, one per IC, got {self.threshold!r}")
        if not all(isinstance(q, numbers.Real) and not math.isnan(q) for q in self.threshold):
            raise UserError(f"{self.name} thresholds must be numbers, got {self.threshold!r}")

    @property
    def key(self) -> float:
        raise UserError("a per-exit policy has one key per IC: use key_at(index)")

    @classmethod
    def safe_scores(cls, logits: torch.Tensor) -> torch.Tensor:
        """:meth:`scores` with NaN (from NaN logits) made -inf: such a sample is never confident enough to stop."""
        return torch.nan_to_num(cls.scores(logits), nan=-torch.inf)

    def key_at(self, index: int) -> float:
        return float(self.threshold[index])


def _check_number(policy: ExitPolicy) -> None:
    if not isinstance(policy.threshold, numbers.Real) or math.isnan(policy.threshold):
        raise UserError(f"{policy.name} threshold must be a number, got {policy.threshold!r}")


POLICIES: dict[str, type[ExitPolicy]] = {p.name: p for p in (MaxProb, Entropy, Patience)}


def make_policy(name: str, threshold: float | Sequence[float]) -> ExitPolicy:
    """The policy called ``name`` ('maxprob', 'entropy' or 'patience') with ``threshold``, or 'maxprob-per-exit'
    with one threshold per IC: a policy as an early-exit result records it."""
    if name == PerExitMaxProb.name:
        return PerExitMaxProb(tuple(threshold) if isinstance(threshold, (list, tuple)) else threshold)
    if name not in POLICIES:
        raise UserError(f"unknown exit policy '{name}': choose one of {', '.join(POLICIES)}")
    return POLICIES[name](float(threshold))


def resolve_policy(threshold: float | None, policy: ExitPolicy | str | None) -> ExitPolicy:
    """The policy ``early_exit`` was asked for: a policy object, or a name (default maxprob) with a threshold."""
    if isinstance(policy, ExitPolicy):
        if threshold is not None:
            raise UserError("give either a policy object or a threshold, not both")
        return policy
    if threshold is None:
        raise UserError("early exit needs a threshold (or a policy object carrying one)")
    return make_policy(policy or "maxprob", threshold)
