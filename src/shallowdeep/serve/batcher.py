"""Dynamic batching into the streaming engine, on one worker thread.

Requests put their images in a bounded inbox; the worker takes what has arrived (up to ``max_batch``), feeds it
to the runtime's streaming engine (:class:`~shallowdeep.runtime.stream.StageQueues`) and answers each image as
soon as it leaves. Under load, images arrive while a batch computes, so the next batch is fuller, and the
images that go on past an exit wait at the next stage for company, so that every stage runs on full batches
where the traffic allows; none waits longer than ``max_wait`` for company (counted from its arrival), and
when no request is waiting at the door every stage runs on whoever is there. An image alone in an idle
server runs the fused graph (one onnxruntime call), on the caller's thread where :meth:`Batcher.answer_alone` is
asked. An image's answer never depends on the others in its
batch: each stage computes every sample on its own.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..runtime import Runtime
from ..runtime.stream import Answered


class Overloaded(Exception):
    """The inbox is full: the request should be retried later."""


@dataclass
class Answer:
    """One image's answer: the exit's logits, the exit's index and its confidence."""

    logits: np.ndarray
    exit: int
    confidence: float


@dataclass
class _Pending:
    image: np.ndarray  # normalised (C, H, W)
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    arrived: float
    gone: Callable[[], bool]  # whether the client has disconnected


class Batcher:
    """The worker thread and its inbox (see the module docstring)."""

    def __init__(self, runtime: Runtime, max_batch: int, max_wait: float, max_queue: int,
                 on_dropped: Callable[[int], None] = lambda n: None) -> None:
        self.runtime, self.max_batch, self.max_wait, self.max_queue = runtime, max_batch, max_wait, max_queue
        self.on_dropped = on_dropped
        self._inbox: deque[_Pending] = deque()
        self._running: dict[int, _Pending] = {}
        self._next_id = 0
        self._queues = runtime.queues(max_batch)
        self._wake = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._work, name="shallowdeep-batcher", daemon=True)
        self._thread.start()

    @property
    def waiting(self) -> int:
        """Images accepted and not yet answered."""
        with self._wake:
            return len(self._inbox) + len(self._running)

    def submit(self, images: np.ndarray, gone: Callable[[], bool]) -> list[asyncio.Future]:
        """Queue normalised ``images`` (N, C, H, W); a future per image, or :class:`Overloaded` (none queued)."""
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        with self._wake:
            if self._stopping:
                raise Overloaded("the server is stopping")
            if len(self._inbox) + len(self._running) + len(images) > self.max_queue:
                raise Overloaded(f"{len(self._inbox) + len(self._running)} images are queued")
            pending = [_Pending(image, loop.create_future(), loop, now, gone) for image in images]
            self._inbox.extend(pending)
            self._wake.notify()
        return [p.future for p in pending]

    def answer_alone(self, image: np.ndarray) -> Answer | None:
        """``image``'s answer computed on the caller's thread with the fused graph, when nothing is queued or
        running (an idle server then spends no thread hop on it); None when the batcher is busy."""
        with self._wake:
            if self._inbox or self._running or self._stopping:
                return None
        return self._fused(image)

    def _fused(self, image: np.ndarray) -> Answer:
        """One normalised image's answer from the fused graph (one onnxruntime call)."""
        logits, exits, confidence = self.runtime.fused(image[None])
        return Answer(logits[0], int(exits[0]), float(confidence[0]))

    def stop(self) -> None:
        """Answer what was accepted, then end the worker thread."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join()

    # -- the worker thread ---------------------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            with self._wake:
                while not self._inbox and not self._running and not self._stopping:
                    self._wake.wait()
                if self._stopping and not self._inbox and not self._running:
                    return
                if not self._inbox and self._running:  # only survivors wait: give newcomers a moment
                    self._wake.wait(max(0.0, self._oldest() + self.max_wait - time.monotonic()))
                batch = self._take()
                door_empty = not self._inbox
            try:
                self._compute(batch, door_empty)
            except Exception as exc:  # noqa: BLE001 - every waiting request gets the error, the server goes on
                self._fail_all(exc)

    def _take(self) -> list[_Pending]:
        """Up to ``max_batch`` images from the inbox, leaving out those whose client has gone."""
        batch: list[_Pending] = []
        dropped = 0
        while self._inbox and len(batch) < self.max_batch:
            pending = self._inbox.popleft()
            if pending.gone():
                dropped += 1
                pending.loop.call_soon_threadsafe(_cancel, pending.future)
                continue
            batch.append(pending)
        if dropped:
            self.on_dropped(dropped)
        return batch

    def _oldest(self) -> float:
        return min(p.arrived for p in self._running.values())

    def _compute(self, batch: list[_Pending], door_empty: bool) -> None:
        if len(batch) == 1 and not self._running and door_empty:  # alone: one call of the fused graph
            _deliver(batch[0], self._fused(batch[0].image))
            return
        if batch:
            ids = np.arange(self._next_id, self._next_id + len(batch))
            self._next_id += len(batch)
            with self._wake:
                self._running.update(zip(ids.tolist(), batch))
            x = np.stack([p.image for p in batch])
            self._queues.add(self.runtime.entering(x, ids, np.array([p.arrived for p in batch])))
        done = self._queues.run(flush=door_empty, older_than=time.monotonic() - self.max_wait)
        for answered in done:
            self._answer(answered)

    def _answer(self, answered: Answered) -> None:
        with self._wake:
            pendings = [self._running.pop(i) for i in answered.ids.tolist()]
        for pending, logits, confidence in zip(pendings, answered.logits, answered.confidence):
            _deliver(pending, Answer(logits, answered.exit, float(confidence)))

    def _fail_all(self, exc: Exception) -> None:
        with self._wake:
            pendings = list(self._running.values())
            self._running.clear()
            self._queues = self.runtime.queues(self.max_batch)
        for pending in pendings:
            pending.loop.call_soon_threadsafe(_set_exception, pending.future, exc)


def _deliver(pending: _Pending, answer: Answer) -> None:
    pending.loop.call_soon_threadsafe(_set_result, pending.future, answer)


def _set_result(future: asyncio.Future, value: object) -> None:
    if not future.done():
        future.set_result(value)


def _set_exception(future: asyncio.Future, exc: Exception) -> None:
    if not future.done():
        future.set_exception(exc)


def _cancel(future: asyncio.Future) -> None:
    if not future.done():
        future.cancel()
