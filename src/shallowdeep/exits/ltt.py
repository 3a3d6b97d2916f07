"""A threshold with a guarantee: Learn then Test (Angelopoulos, Bates, Candès, Jordan & Lei, 2021).

The candidate thresholds, a grid fixed before any data is seen (:func:`fixed_keys`), are tested in a
fixed sequence, from the most cautious (nobody leaves early) to the most aggressive. For each, the null hypothesis is "the expected accuracy drop below the final
head exceeds ``max_drop``"; it is rejected when a finite-sample valid p-value is at most
``delta = 1 - confidence``, and the sequence stops at the first candidate it cannot reject. Every
rejected candidate is then certified at once (fixed-sequence testing controls the family-wise error),
so the cheapest of them is returned: with probability at least ``confidence`` over the calibration
sample, its expected drop on new data from the same distribution is at most ``max_drop``.

The p-value is that of a bettor's wealth (Waudby-Smith & Ramdas, 2023): per sample the paired loss
``1[final head right] - 1[early exit right]`` in {-1, 0, 1}, mapped to [0, 1], is bet against with
predictable, growth-adaptive stakes over a seeded random order; by Ville's inequality the inverse of
the largest wealth is a valid p-value. Most losses are 0, and the stakes adapt to that low variance,
which makes the test far less conservative than Hoeffding's bound.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import UserError
from ..exit_outputs import ExitOutputs
from .policies import ExitPolicy
from .policies import Entropy, MaxProb, Patience
from .simulate import exit_scores

METHOD = "learn-then-test: fixed-sequence testing, betting p-value (Waudby-Smith & Ramdas)"
GRID_LINEAR, GRID_NEAR_CERTAIN = 101, 200  # candidate probabilities: evenly spread, and 1 - 1e-7 ... 1 - 0.1


def fixed_keys(kind: type[ExitPolicy], num_ics: int) -> np.ndarray:
    """Candidate keys of ``kind``, increasing, fixed before any data is seen (as Learn then Test requires):
    maxprob thresholds (and entropy bounds) spread evenly over [0, 1] and densely near certainty, then
    one key at which nobody leaves early; patience 1 .. ICs + 1."""
    if issubclass(kind, Patience):
        return np.arange(1, num_ics + 2, dtype=np.float64)
    near = np.geomspace(1e-7, 0.1, GRID_NEAR_CERTAIN)
    spread = np.linspace(0.0, 1.0, GRID_LINEAR)
    if issubclass(kind, MaxProb):
        values = np.concatenate([spread, 1 - near, [np.nextafter(np.float32(1), np.float32(2))]])
    elif issubclass(kind, Entropy):
        values = np.concatenate([-spread, -near, [np.nextafter(np.float32(0), np.float32(1))]])
    else:
        raise UserError(f"no fixed candidate thresholds for the {kind.name} policy")
    return np.unique(values.astype(np.float32)).astype(np.float64)
CHUNK = 25  # candidates tested together
STAKE_CAP = 0.5  # largest share of the wealth at risk on one sample


@dataclass(frozen=True)
class Certificate:
    """The certified policy, the p-value of its candidate, and how many candidates were tested and rejected."""

    policy: ExitPolicy
    p_value: float
    certified: bool  # False: no candidate rejected, the most cautious one is returned
    tested: int
    rejected: int

    def as_dict(self, confidence: float) -> dict:
        return {"confidence": confidence, "method": METHOD, "p_value": self.p_value, "certified": self.certified,
                "candidates_tested": self.tested, "candidates_certified": self.rejected}


def betting_p_value(x: np.ndarray, bound: float, seed: int = 0) -> np.ndarray | float:
    """A valid p-value for "E[x] >= bound" from i.i.d. ``x`` in [0, 1] (small when the mean is clearly below);
    ``x`` may hold several sample sets along its leading axes, the samples along the last one.

    The wealth ``prod (1 + lambda_t (bound - x_t))`` is a nonnegative supermartingale under the null for any
    stakes ``lambda_t >= 0`` chosen from the samples before t; ``1 / max wealth`` is then valid in finite
    samples. Stakes: the growth-rate-adaptive choice ``(bound - mean) / (variance + (bound - mean)^2)`` of the
    running (regularised) estimates, clipped to [0, STAKE_CAP / (1 - bound)].
    """
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0 or x.min() < 0 or x.max() > 1 or not 0 < bound < 1:
        raise UserError("the betting p-value needs samples in [0, 1] and a bound strictly inside (0, 1)")
    x = x[..., np.random.default_rng(seed).permutation(x.shape[-1])]
    t = np.arange(1, x.shape[-1] + 1)
    mean = (0.5 + np.cumsum(x, axis=-1)) / (t + 1)  # after t samples
    variance = (0.25 + np.cumsum((x - mean) ** 2, axis=-1)) / (t + 1)
    mean_before = np.concatenate([np.full(x.shape[:-1] + (1,), 0.5), mean[..., :-1]], axis=-1)
    variance_before = np.concatenate([np.full(x.shape[:-1] + (1,), 0.25), variance[..., :-1]], axis=-1)
    gap = bound - mean_before
    stakes = np.clip(gap / (variance_before + gap ** 2), 0.0, STAKE_CAP / (1 - bound))
    log_wealth = np.cumsum(np.log1p(stakes * (bound - x)), axis=-1)
    p = np.minimum(1.0, np.exp(-np.maximum(0.0, log_wealth.max(axis=-1))))
    return float(p) if p.ndim == 0 else p


def drop_p_value(losses: np.ndarray, max_drop: float, seed: int = 0) -> np.ndarray | float:
    """The p-value of "expected drop > max_drop" from paired losses in {-1, 0, 1} (final right minus early
    right), samples along the last axis."""
    return betting_p_value((np.asarray(losses, np.float64) + 1) / 2, (1 + max_drop) / 2, seed)


def certify(outputs: ExitOutputs, kind: type[ExitPolicy], max_drop: float, confidence: float,
            seed: int = 0, reference: np.ndarray | None = None) -> Certificate:
    """The cheapest threshold of ``kind`` certified by Learn then Test on ``outputs`` (see the module); the
    drop is measured against ``reference`` (per-sample hits; the final head's when None)."""
    if not 0 < confidence < 1:
        raise UserError(f"confidence {confidence} must lie strictly between 0 and 1 (e.g. 0.9)")
    if not 0 < max_drop < 1:
        raise UserError(f"a certified maximum accuracy drop must lie strictly between 0 and 1, got {max_drop}")
    keys = fixed_keys(kind, len(outputs.exit_flops) - 1)[::-1]  # cautious (largest key) first
    running_max = np.maximum.accumulate(exit_scores(outputs, kind), axis=0)
    final_right = (outputs.correct[-1] if reference is None else reference).astype(np.int64)
    samples = np.arange(outputs.labels.size)
    p, exits = [], []
    for start in range(0, keys.size, CHUNK):  # the sequence stops at the first p-value above delta
        chunk = keys[start:start + CHUNK].astype(np.float32)
        exits.append((running_max[None] < chunk[:, None, None]).sum(axis=1))  # (candidates, samples)
        losses = final_right - outputs.correct[exits[-1], samples]
        p.append(np.atleast_1d(drop_p_value(losses, max_drop, seed)))
        if (p[-1] > 1 - confidence).any():
            break
    p, exits = np.concatenate(p), np.concatenate(exits)
    above = np.flatnonzero(p > 1 - confidence)
    rejected = int(above[0]) if above.size else keys.size
    if rejected == 0:
        return Certificate(kind(kind.threshold_of_key(float(keys[0]))), float(p[0]), False, 1, 0)
    cost = outputs.exit_flops[exits[:rejected]].mean(axis=1)
    best = int(np.flatnonzero(cost == cost.min())[0])  # the cheapest; among equals the most cautious
    return Certificate(kind(kind.threshold_of_key(float(keys[best]))), float(p[best]), True,
                       min(rejected + 1, keys.size), rejected)
