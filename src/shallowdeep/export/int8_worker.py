"""Quantise stage graphs to int8 in a process of its own: ``python -m shallowdeep.export.int8_worker JOBS.json``.

onnxruntime's quantiser makes its own sessions with their own thread pools, which onnxruntime refuses in a
process that set up the shared pool the runtime uses (:func:`shallowdeep.runtime.engine.make_session`). JOBS.json
lists ``{"source", "target", "feeds"}``: an fp32 graph, where its int8 graph goes, and an ``.npz`` of calibration
inputs by input name. A graph that cannot be quantised is one line on stderr and exit code 1.
"""

from __future__ import annotations

import json
import sys
from typing import Iterator

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

QUANTISED_OPS = ("Conv", "Gemm", "MatMul")  # the exit tests and softmaxes stay in float
BATCH = 64
MIN_CHANNELS = 32


class _Batches(CalibrationDataReader):
    """A stage's calibration inputs, :data:`BATCH` samples at a time, as onnxruntime's calibrator reads them."""

    def __init__(self, feeds: dict[str, np.ndarray]) -> None:
        n = len(next(iter(feeds.values())))
        self._batches: Iterator[dict[str, np.ndarray]] = iter(
            [{k: v[i:i + BATCH] for k, v in feeds.items()} for i in range(0, n, BATCH)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def quantise(source: str, target: str, feeds: dict[str, np.ndarray]) -> None:
    """The graph ``source`` as int8 (QDQ: int8 weights per output channel, uint8 activations whose ranges the
    ``feeds`` set) in ``target``. onnxruntime's pre-processing first folds batch norms into the convolutions
    (a float op left between two int8 ones would convert back and forth)."""
    prepared = target + ".prepared.onnx"
    quant_pre_process(source, prepared)
    quantize_static(prepared, target, _Batches(feeds), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    op_types_to_quantize=list(QUANTISED_OPS), nodes_to_exclude=_narrow_convs(prepared))


def _narrow_convs(path: str) -> list[str]:
    """The convolutions with fewer than :data:`MIN_CHANNELS` input channels: in int8 their quantising and
    dequantising costs more than the int8 arithmetic saves (measured on ResNet-56's 16-channel stages)."""
    model = onnx.load(path)
    weights = {w.name: tuple(w.dims) for w in model.graph.initializer}
    return [node.name for node in model.graph.node if node.op_type == "Conv" and len(node.input) > 1
            and node.input[1] in weights and weights[node.input[1]][1] < MIN_CHANNELS]


def main(jobs_file: str) -> int:
    for job in json.loads(open(jobs_file).read()):
        with np.load(job["feeds"]) as stored:
            feeds = {name: stored[name] for name in stored.files}
        try:
            quantise(job["source"], job["target"], feeds)
        except Exception as exc:  # noqa: BLE001 - onnxruntime's quantiser raises its own types
            print(f"onnxruntime cannot quantise {job['source']}: {str(exc).splitlines()[0]}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
