"""The streaming engine's state: the samples waiting at each stage, run when a full batch waits.

Each sample carries its position (``ids``), the time it arrived (``since``) and what the next stage reads
(``h`` and the carried values, see :mod:`shallowdeep.runtime.manifest`). A stage runs on ``batch_size`` waiting
samples at a time; fewer run only when asked to flush: everything (the input has ended), or the stages whose
oldest sample arrived before a given time (a server bounding how long a sample may wait for company).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np

from .manifest import NEXT

Values = dict[str, np.ndarray]


class Answered(NamedTuple):
    """Samples that left at one exit: their ids, what the exit answered, its index and confidence."""

    ids: np.ndarray
    logits: np.ndarray
    exit: int
    confidence: np.ndarray


class StageQueues:
    """Samples waiting at each of ``stages`` stages; ``run_stage(index, values)`` runs one decision stage (its
    outputs by name, ``go_on`` for an IC's stage)."""

    def __init__(self, stages: int, run_stage: Callable[[int, Values], Values], batch_size: int) -> None:
        self.waiting: list[list[Values]] = [[] for _ in range(stages)]
        self.run_stage, self.batch_size = run_stage, batch_size

    def __len__(self) -> int:
        return sum(len(group["ids"]) for queue in self.waiting for group in queue)

    def add(self, values: Values) -> None:
        """Samples entering the first stage: ``values`` holds ``ids``, ``since`` and the first stage's inputs."""
        self.waiting[0].append(values)

    def run(self, flush: bool = False, older_than: float | None = None) -> list[Answered]:
        """Run every stage, shallowest first, on each full batch of its waiting samples, and on fewer where
        ``flush``, or where the oldest waiting sample arrived before ``older_than``; the survivors wait at the
        next stage. Returns the samples that left."""
        done: list[Answered] = []
        last = len(self.waiting) - 1
        for index, queue in enumerate(self.waiting):
            while queue and (sum(len(g["ids"]) for g in queue) >= self.batch_size or flush
                             or (older_than is not None and min(g["since"].min() for g in queue) < older_than)):
                group = _concat(queue)
                queue.clear()
                if len(group["ids"]) > self.batch_size:
                    queue.append({name: v[self.batch_size:] for name, v in group.items()})
                    group = {name: v[:self.batch_size] for name, v in group.items()}
                out = self.run_stage(index, group)
                if index == last:
                    done.append(Answered(group["ids"], out["logits"], index, out["confidence"]))
                    continue
                go_on = out["go_on"]
                if not go_on.all():
                    leave = ~go_on
                    done.append(Answered(group["ids"][leave], out["logits"][leave], index, out["confidence"][leave]))
                if go_on.any():
                    survivors = {name.removesuffix(NEXT): v for name, v in out.items() if name.endswith(NEXT)}
                    survivors.update(ids=group["ids"], since=group["since"])
                    self.waiting[index + 1].append(survivors if go_on.all() else
                                                   {name: v[go_on] for name, v in survivors.items()})
        return done


def _concat(groups: list[Values]) -> Values:
    if len(groups) == 1:
        return groups[0]
    return {name: np.concatenate([g[name] for g in groups]) for name in groups[0]}
