"""Early exit on an export folder with onnxruntime and numpy: one image at a time, or streamed in batches.

- Batch size 1: each image runs the fused graph (see :func:`~shallowdeep.runtime.graphs.fused_early_exit`):
  one onnxruntime call, and nothing past the exit it leaves at.
- Larger batches: the streaming engine of :func:`shallowdeep.exits.early_exit_stream`, in numpy. The samples
  waiting at each stage run once ``batch_size`` of them wait (the rest when the input ends); only those
  that go on wait at the next stage. The answer of a sample never depends on which others share its batch.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import onnx
import onnxruntime as ort

from ..errors import UserError, first_line
from ..images import decode_images, image_files
from ..predict_inputs import check_batch_size, checked_pixels
from .graphs import IMAGE, KEYS, decision_stage, fused_early_exit
from .manifest import NEXT, Policy, read_manifest
from .policies import start_state
from .stream import Answered, StageQueues

BATCH_SIZE = 256


@dataclass
class Prediction:
    """Per image: the class index and name, the exit it left at (``num_ics``: the final head) with its name,
    the largest softmax probability of that exit's answer, the FLOPs it cost, and the answer's logits."""

    indices: np.ndarray
    classes: list[str]
    exits: np.ndarray
    exit_names: list[str]
    confidence: np.ndarray
    flops: np.ndarray
    logits: np.ndarray
    paths: list[Path] | None = None


class Runtime:
    """An export folder loaded into onnxruntime sessions (made on first use), with an exit policy."""

    def __init__(self, folder: str | Path, policy: Policy | None = None, threads: int | None = None) -> None:
        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)
        self.policy = policy or self.manifest.policy
        self.keys = np.asarray(self.policy.keys(self.manifest.num_ics), np.float32)
        self.threads = threads
        self._graphs = [self._load_graph(stage.file) for stage in self.manifest.stages]
        self._stages: list[ort.InferenceSession] | None = None
        self._fused: ort.InferenceSession | None = None

    @property
    def num_ics(self) -> int:
        return self.manifest.num_ics

    # -- inputs ------------------------------------------------------------------------------------------------
    def preprocess(self, images: np.ndarray) -> np.ndarray:
        """Normalised float32 inputs for uint8 images ``(N, C, H, W)`` (or one ``(C, H, W)``) as read from files,
        integers within 0..255, or floats in [0, 1]; a one-line error naming the fix for anything else (see
        :func:`shallowdeep.predict_inputs.checked_pixels`)."""
        x = checked_pixels(images, self.manifest.input_shape, "this export")
        x = x.astype(np.float32) / np.float32(255) if x.dtype == np.uint8 else x
        mean = np.asarray(self.manifest.mean, np.float32).reshape(1, -1, 1, 1)
        std = np.asarray(self.manifest.std, np.float32).reshape(1, -1, 1, 1)
        return np.ascontiguousarray((x - mean) / std)

    def read_images(self, paths: str | Path | Sequence[str | Path]) -> tuple[list[Path], np.ndarray]:
        """The image files ``paths`` name (folders read recursively) and their pixels, read as the run's data was
        (grey or RGB as the network takes them, resized bilinearly to its input size)."""
        channels, _, side = self.manifest.input_shape
        files = image_files(paths)
        return files, decode_images(files, image_size=side, channels=channels)

    # -- answers -----------------------------------------------------------------------------------------------
    def predict(self, images: np.ndarray, batch_size: int = BATCH_SIZE) -> Prediction:
        """Classify ``images`` (see :meth:`preprocess`) with early exit: batch size 1 runs each image through the
        fused graph, larger batches stream (every stage runs on ``batch_size`` waiting samples)."""
        check_batch_size(batch_size)
        x = self.preprocess(images)
        if x.shape[0] == 0:
            raise UserError("no images to classify")
        if batch_size == 1:
            logits, exits, confidence = self.fused(x)
        else:
            logits, exits, confidence = self.stream((x[i:i + batch_size] for i in range(0, len(x), batch_size)),
                                                    batch_size)
        return self._prediction(logits, exits, confidence)

    def predict_files(self, paths: str | Path | Sequence[str | Path], batch_size: int = BATCH_SIZE) -> Prediction:
        """:meth:`predict` on the image files ``paths`` name (see :meth:`read_images`), with their paths."""
        check_batch_size(batch_size)
        files, images = self.read_images(paths)
        answer = self.predict(images, batch_size)
        answer.paths = files
        return answer

    def stream(self, batches: Iterable[np.ndarray], batch_size: int | None = None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Early exit over normalised ``batches``, each stage run on ``batch_size`` waiting samples (default: the
        first batch's size); per sample in stream order: the answering exit's logits, its index and confidence."""
        queues: StageQueues | None = None
        done: list[Answered] = []
        total = 0
        for x in batches:
            if len(x) == 0:
                continue
            queues = queues or self.queues(batch_size or len(x))
            queues.add(self.entering(x, np.arange(total, total + len(x))))
            total += len(x)
            done += queues.run()
        if queues is None:
            raise UserError("early exit got no samples")
        done += queues.run(flush=True)
        logits = np.empty((total, len(self.manifest.classes)), np.float32)
        exits, confidence = np.empty(total, np.int64), np.empty(total, np.float32)
        for answered in done:
            ids = answered.ids
            logits[ids], exits[ids], confidence[ids] = answered.logits, answered.exit, answered.confidence
        return logits, exits, confidence

    def queues(self, batch_size: int) -> StageQueues:
        """An empty streaming engine over this runtime's stages (see :class:`~shallowdeep.runtime.stream.StageQueues`)."""
        return StageQueues(self.manifest.num_ics + 1, self.run_stage, batch_size)

    def entering(self, x: np.ndarray, ids: np.ndarray, since: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """What the first stage reads of the normalised images ``x``, with their ``ids`` and arrival times."""
        since = np.zeros(len(x)) if since is None else since
        return {"ids": ids, "since": since, IMAGE: x, **start_state(self.policy.name, len(x))}

    def exit_logits(self, images: np.ndarray) -> list[np.ndarray]:
        """What every exit answers on ``images`` (see :meth:`preprocess`), the final head last: every stage runs
        on every image (as ``SDN.exit_logits``)."""
        feeds = {IMAGE: self.preprocess(images), **start_state(self.policy.name, len(images))}
        answers = []
        for index in range(self.num_ics + 1):
            out = self.run_stage(index, feeds, never_stop=True)
            answers.append(out["logits"])
            feeds = {name.removesuffix(NEXT): v for name, v in out.items() if name.endswith(NEXT)}
        return answers

    # -- engines -----------------------------------------------------------------------------------------------
    def run_stage(self, index: int, values: dict[str, np.ndarray], never_stop: bool = False) -> dict[str, np.ndarray]:
        """Decision stage ``index`` on ``values`` (the inputs it takes are picked by name; see
        :func:`~shallowdeep.runtime.graphs.decision_stage`); its outputs by name. ``never_stop``: every sample
        goes on (keys of infinity)."""
        session = self._stage_sessions()[index]
        keys = np.full_like(self.keys, np.inf) if never_stop else self.keys
        feeds = {i.name: (keys if i.name == KEYS else values[i.name]) for i in session.get_inputs()}
        try:
            outputs = session.run(None, feeds)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise UserError(f"stage {index} of {self.folder} failed in onnxruntime: {first_line(exc)}") from None
        return {o.name: v for o, v in zip(session.get_outputs(), outputs)}

    def fused(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Each normalised image of ``x`` through the fused graph: the answering exit's logits, index and
        confidence."""
        session = self.fused_session()
        logits = np.empty((len(x), len(self.manifest.classes)), np.float32)
        exits, confidence = np.empty(len(x), np.int64), np.empty(len(x), np.float32)
        for i in range(len(x)):
            logits[i:i + 1], exits[i:i + 1], confidence[i:i + 1] = session.run(None, {IMAGE: x[i:i + 1]})
        return logits, exits, confidence

    def _prediction(self, logits: np.ndarray, exits: np.ndarray, confidence: np.ndarray) -> Prediction:
        indices = logits.argmax(axis=1)
        names = self.manifest.exit_names
        return Prediction(indices, [self.manifest.classes[i] for i in indices], exits, [names[e] for e in exits],
                          confidence, np.asarray(self.manifest.exit_flops, np.int64)[exits], logits)

    # -- sessions ----------------------------------------------------------------------------------------------
    def fused_graph(self) -> onnx.ModelProto:
        """The whole early exit of one image under this runtime's policy, as one ONNX graph."""
        return fused_early_exit(self.manifest, self._graphs, self.policy.name, self.keys, overridable=False)

    def _stage_sessions(self) -> list[ort.InferenceSession]:
        if self._stages is None:
            self._stages = [self._session(decision_stage(self.manifest, graph, k, self.policy.name), f"stage {k}")
                            for k, graph in enumerate(self._graphs)]
        return self._stages

    def fused_session(self) -> ort.InferenceSession:
        """The onnxruntime session of :meth:`fused_graph` (input ``h``: one normalised image)."""
        if self._fused is None:
            self._fused = self._session(self.fused_graph(), "the fused early-exit graph")
        return self._fused

    def _session(self, model: onnx.ModelProto, what: str) -> ort.InferenceSession:
        return make_session(model, self.threads, f"{what} of {self.folder}")

    def _load_graph(self, name: str) -> onnx.ModelProto:
        path = self.folder / name
        try:
            model = onnx.load(str(path))
            onnx.checker.check_model(model)
        except Exception as exc:  # onnx raises its own types (DecodeError, ValidationError)
            raise UserError(f"{path} is not a valid ONNX graph ({first_line(exc)}); export the run again") from None
        return model


def make_session(model: onnx.ModelProto | str | Path, threads: int | None = None,
                 what: str = "the graph") -> ort.InferenceSession:
    """An onnxruntime session (CPU) of ``model``, on the process's shared thread pool where it can have one
    (see :func:`_shared_thread_pool`); a one-line error naming ``what`` when onnxruntime refuses the graph. Every
    session of a process that uses the shared pool must be made here."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if _shared_thread_pool(threads):
        options.use_per_session_threads = False
    else:  # several pools: a pool's threads spinning after its call would starve the next session's
        options.intra_op_num_threads, options.inter_op_num_threads = threads or 0, 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    try:
        return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise UserError(f"onnxruntime cannot load {what}: {first_line(exc)}") from None


_POOL: dict[str, object] = {}  # the process's one onnxruntime thread pool, once tried: {"shared": bool, "threads": N}


def _shared_thread_pool(threads: int | None) -> bool:
    """Whether this process's sessions share one onnxruntime thread pool (made on the first call, with ``threads``
    threads, default one per core). One pool matters: the streaming engine calls one session per stage in turn,
    and each session's own pool would keep spinning while the next one's waits for a core (measured: 1,540
    against 2,740 images/s). A later call asking for another thread count gets a warning."""
    if not _POOL:
        try:
            ort.set_global_thread_pool_sizes(threads or 0, 1)
            _POOL.update(shared=True, threads=threads)
        except Exception:  # noqa: BLE001 - made by other code already: each session gets its own pool
            _POOL.update(shared=False, threads=threads)
    elif _POOL["shared"] and threads is not None and threads != _POOL["threads"]:
        warnings.warn(f"onnxruntime's thread pool is shared by every runtime of this process and has "
                      f"{_POOL['threads'] or 'one per core'} threads (set by the first one made), not {threads}")
    return bool(_POOL["shared"])


def load(folder: str | Path, threshold: float | Sequence[float] | None = None, policy: str | None = None,
         threads: int | None = None) -> Runtime:
    """The export folder ``folder`` ready to classify, with the manifest's exit policy, or ``policy`` (a name;
    default the manifest's) at ``threshold``; ``threads``: onnxruntime's threads per call (default: its own)."""
    if threads is not None and threads < 1:
        raise UserError(f"threads must be at least 1, got {threads}")
    chosen = None
    if threshold is not None or policy is not None:
        manifest_policy = read_manifest(folder).policy
        if threshold is None:
            raise UserError("a policy for an export needs its threshold")
        name = policy or ("maxprob-per-exit" if isinstance(threshold, (list, tuple)) else
                          manifest_policy.name if manifest_policy.name != "maxprob-per-exit" else "maxprob")
        chosen = Policy(name, tuple(threshold) if isinstance(threshold, (list, tuple)) else threshold,
                        {"override": "given when loading"})
    return Runtime(folder, chosen, threads)
