"""One max-probability threshold per IC, found by coordinate descent on calibration outputs.

Start from the best global threshold; then, IC by IC, move that IC's threshold to the key (among the
midpoints of its scores on the samples that reach it) that lowers the average cost most while the
accuracy stays within ``max_drop`` of the final head's; repeat for a few rounds or until nothing moves.
"""

from __future__ import annotations

import numpy as np

from ..exit_outputs import ExitOutputs
from .policies import MaxProb, PerExitMaxProb
from .simulate import exit_scores, midpoint_keys

ROUNDS = 4


def per_exit_thresholds(outputs: ExitOutputs, start: MaxProb, max_drop: float, reference: np.ndarray,
                        rounds: int = ROUNDS) -> PerExitMaxProb:
    """Per-IC thresholds, starting from the global policy ``start``, cheaper on ``outputs`` while at most
    ``max_drop`` below the accuracy of ``reference`` (per-sample hits, e.g. the final head's)."""
    scores = exit_scores(outputs, MaxProb)  # (ICs, samples)
    correct = outputs.correct
    flops = outputs.exit_flops.astype(np.float64)
    keys = np.full(scores.shape[0], np.float32(start.key), np.float32)
    floor = reference.sum() - max_drop * outputs.labels.size - 1e-9  # fewest correct answers allowed
    for _ in range(rounds):
        moved = False
        for i in range(scores.shape[0]):
            key = _best_key(scores, correct, flops, keys, i, floor)
            moved |= key != keys[i]
            keys[i] = key
        if not moved:
            break
    return PerExitMaxProb(tuple(float(k) for k in keys))


def _best_key(scores: np.ndarray, correct: np.ndarray, flops: np.ndarray, keys: np.ndarray, i: int,
              floor: float) -> np.float32:
    """IC ``i``'s key with the lowest total cost and at least ``floor`` correct answers, the others fixed;
    the current key unless another is strictly cheaper."""
    stops = scores >= keys[:, None]
    before = _first(stops[:i], 0, i)
    reach = before == i
    then = _first(stops[i + 1:], i + 1, scores.shape[0])  # the exit when going on past IC i
    samples = np.arange(scores.shape[1])
    base = np.where(reach, then, before)  # everyone who reaches IC i goes on
    base_correct, base_cost = correct[base, samples].sum(), flops[base].sum()
    s = scores[i, reach]
    order = np.argsort(s, kind="stable")
    s = s[order]
    gain = (correct[i, reach].astype(np.int64) - correct[then[reach], samples[reach]])[order]
    extra = (flops[i] - flops[then[reach]])[order]  # cost of stopping at i instead (<= 0)
    candidates = midpoint_keys(s).astype(np.float32)
    if candidates.size == 0:
        return keys[i]
    going_on = np.searchsorted(s, candidates, side="left")  # samples below the key go on; the rest stop at i
    right = base_correct + _suffix_sums(gain)[going_on]
    costs = base_cost + _suffix_sums(extra)
    cost, current_cost = costs[going_on], costs[np.searchsorted(s, keys[i], side="left")]
    feasible = np.flatnonzero(right >= floor)
    if feasible.size == 0:
        return keys[i]
    order = np.lexsort((feasible, right[feasible], -cost[feasible]))
    best = feasible[order[-1]]
    return candidates[best] if cost[best] < current_cost - 1e-9 else keys[i]


def _suffix_sums(values: np.ndarray) -> np.ndarray:
    """``out[j] = values[j:].sum()`` for j = 0 .. len(values)."""
    return np.concatenate([np.cumsum(values[::-1])[::-1], [0]])


def _first(stops: np.ndarray, offset: int, default: int) -> np.ndarray:
    """Per sample, ``offset`` plus the first row of ``stops`` that is True, else ``default``."""
    if stops.shape[0] == 0:
        return np.full(stops.shape[1], default)
    return np.where(stops.any(axis=0), offset + stops.argmax(axis=0), default)
