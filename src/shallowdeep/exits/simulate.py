"""Early exit simulated on stored per-exit logits: outcomes, trade-off curves, the oracle.

The simulation applies exactly the engine's rule (stop at the first IC whose score reaches the
policy's key) to :class:`~shallowdeep.exit_outputs.ExitOutputs`, vectorised over samples, so a
policy can be evaluated at thousands of thresholds without running the network.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import UserError
from ..exit_outputs import ExitOutputs
from .policies import ExitPolicy


@dataclass
class Outcome:
    """Where every sample leaves under one policy, and what it answers there."""

    predictions: np.ndarray  # int64 (samples,)
    exits: np.ndarray  # int64 (samples,), 0 = first IC, E-1 = final head
    flops: np.ndarray  # int64 (samples,)


@dataclass
class Summary:
    """Accuracy and cost of one way of classifying a split."""

    accuracy: float
    average_flops: float
    flops_fraction: float  # average FLOPs over the backbone's FLOPs
    exit_shares: list[float]  # share of samples leaving at each exit, the final head last

    def as_dict(self) -> dict:
        return {"accuracy": self.accuracy, "average_flops": self.average_flops,
                "flops_fraction": self.flops_fraction, "exit_shares": self.exit_shares}


@dataclass
class Curve:
    """Accuracy and average cost of a policy at many thresholds (in threshold order)."""

    thresholds: np.ndarray
    accuracy: np.ndarray
    average_flops: np.ndarray
    flops_fraction: np.ndarray


def exit_scores(outputs: ExitOutputs, kind: type[ExitPolicy] | ExitPolicy) -> np.ndarray:
    """The policy's float32 score of every IC on every sample, ``(ICs, samples)``, computed as the engine does."""
    if outputs.logits.ndim != 3 or outputs.logits.shape[0] < 1:
        raise UserError("per-exit logits must have the shape (exits, samples, classes)")
    return kind.safe_scores(torch.from_numpy(np.ascontiguousarray(outputs.logits[:-1]))).numpy()


def simulate(outputs: ExitOutputs, policy: ExitPolicy) -> Outcome:
    """Where each sample of ``outputs`` leaves under ``policy`` (one key for all ICs or one per IC), and its
    answer and cost."""
    scores = exit_scores(outputs, policy)
    if isinstance(policy.threshold, tuple) and len(policy.threshold) != scores.shape[0]:
        raise UserError(f"the policy has {len(policy.threshold)} thresholds for {scores.shape[0]} ICs")
    keys = np.array([policy.key_at(i) for i in range(scores.shape[0])], np.float32)
    stops = ~(scores < keys[:, None])
    exits = np.where(stops.any(axis=0), stops.argmax(axis=0), stops.shape[0]).astype(np.int64)
    predictions = outputs.predictions[exits, np.arange(exits.size)].astype(np.int64)
    return Outcome(predictions, exits, outputs.exit_flops[exits].astype(np.int64))


def summarise(outputs: ExitOutputs, outcome: Outcome) -> Summary:
    """Accuracy, average cost and exit shares of ``outcome`` on ``outputs``' labels."""
    n = max(1, outcome.exits.size)
    average = float(outcome.flops.mean()) if outcome.flops.size else 0.0
    return Summary(
        accuracy=float((outcome.predictions == outputs.labels).mean()) if outcome.exits.size else 0.0,
        average_flops=average,
        flops_fraction=average / outputs.backbone_flops,
        exit_shares=(np.bincount(outcome.exits, minlength=len(outputs.exit_flops)) / n).tolist(),
    )


def final_head(outputs: ExitOutputs) -> Summary:
    """The backbone alone: every sample answered by the final head at the backbone's cost."""
    shares = [0.0] * (len(outputs.exit_flops) - 1) + [1.0]
    return Summary(float(outputs.correct[-1].mean()), float(outputs.backbone_flops), 1.0, shares)


def earliest_correct_exit(correct: np.ndarray) -> np.ndarray:
    """Index of the first exit that is right on each sample, -1 where none is; ``correct`` is (exits, samples)."""
    correct = np.asarray(correct, dtype=bool)
    return np.where(correct.any(0), correct.argmax(0), -1)


def oracle(outputs: ExitOutputs) -> Summary:
    """The bound of a perfect policy: each sample leaves at its earliest correct exit; samples that no
    exit gets right run to the final head (and stay wrong)."""
    earliest = earliest_correct_exit(outputs.correct)
    exits = np.where(earliest >= 0, earliest, len(outputs.exit_flops) - 1).astype(np.int64)
    predictions = outputs.predictions[exits, np.arange(exits.size)]
    return summarise(outputs, Outcome(predictions, exits, outputs.exit_flops[exits]))


def curve(outputs: ExitOutputs, kind: type[ExitPolicy], keys: np.ndarray) -> Curve:
    """Policy ``kind``'s accuracy and average cost at each key (see :func:`sweep`), exactly."""
    accuracy, average = sweep(outputs, kind, keys)
    thresholds = np.array([kind.threshold_of_key(float(k)) for k in keys])
    return Curve(thresholds, accuracy, average, average / outputs.backbone_flops)


def sweep(outputs: ExitOutputs, kind: type[ExitPolicy], keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Accuracy and average FLOPs of policy ``kind`` at every key in ``keys``, in O(ICs x samples x log).

    A sample goes on past IC i exactly when the running maximum of its scores up to IC i is below
    the key, so raising the key past that value moves the sample from exit i to exit i + 1 and
    changes the correct count and the total cost by fixed amounts: cumulative sums over the sorted
    running maxima give the whole curve. Keys are compared in float32, as in the engine.
    """
    n = outputs.labels.size
    if n == 0:
        raise UserError("cannot simulate early exit on an empty data split")
    correct = outputs.correct.astype(np.int64)
    flops = outputs.exit_flops.astype(np.float64)
    running_max = np.maximum.accumulate(exit_scores(outputs, kind), axis=0)
    gain = (correct[1:] - correct[:-1]).ravel()
    cost = np.broadcast_to((flops[1:] - flops[:-1])[:, None], running_max.shape).ravel()
    order = np.argsort(running_max.ravel(), kind="stable")
    passed = np.searchsorted(running_max.ravel()[order], np.asarray(keys, dtype=np.float32), side="left")
    correct_at = correct[0].sum() + np.concatenate([[0], np.cumsum(gain[order])])[passed]
    flops_at = n * flops[0] + np.concatenate([[0.0], np.cumsum(cost[order])])[passed]
    return correct_at / n, flops_at / n


def candidate_keys(outputs: ExitOutputs, kind: type[ExitPolicy]) -> np.ndarray:
    """One key per distinct outcome on ``outputs``, increasing.

    Between two consecutive distinct running maxima of the scores the key is the float32 nearest
    their midpoint (the upper one when no float32 lies strictly between), so a threshold chosen on
    these data does not hinge on the last bit of any sample's score; below all of them every sample
    leaves at the first IC, above all none leaves early. Keys are float32 values, as the engine
    compares them.
    """
    keys = midpoint_keys(np.maximum.accumulate(exit_scores(outputs, kind), axis=0))
    if keys.size == 0:
        raise UserError("early exit needs at least one internal classifier and one sample")
    return keys


def midpoint_keys(scores: np.ndarray) -> np.ndarray:
    """Float32 keys separating the distinct values of ``scores`` (see :func:`candidate_keys`), with one key
    below and one above them all; empty when there are no (non-NaN) scores."""
    values = np.unique(scores)
    values = values[~np.isnan(values)]
    if values.size == 0:
        return np.zeros(0)
    lower, upper = values[:-1], values[1:]
    middle = ((lower.astype(np.float64) + upper) / 2).astype(np.float32)
    middle = np.where(middle > lower, middle, upper)
    ends = np.nextafter(values[[0, -1]], np.array([-np.inf, np.inf], np.float32), dtype=np.float32)
    return np.concatenate([ends[:1], middle, ends[1:]]).astype(np.float64)


def grid_keys(outputs: ExitOutputs, kind: type[ExitPolicy], points: int = 400) -> np.ndarray:
    """At most ``points`` of the candidate keys, spread evenly over them all, for plotting the curve."""
    keys = candidate_keys(outputs, kind)
    if keys.size <= points:
        return keys
    return keys[np.unique(np.linspace(0, keys.size - 1, points).round().astype(np.int64))]
