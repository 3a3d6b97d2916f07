"""The export's layout rewrites (``shallowdeep.export.blocked_layout``): the same numbers as the graph
``torch.onnx.export`` writes and as PyTorch, and fewer layout conversions in onnxruntime's optimised graph."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from shallowdeep.export.blocked_layout import blocked_input, keep_blocked, shortcuts_as_convolutions

pytestmark = pytest.mark.usefixtures("one_thread")


class Block(nn.Module):
    """A residual block; ``stride`` 2 doubles the channels through the parameter-free option-A shortcut."""

    def __init__(self, channels: int, stride: int = 1, halve: tuple[int, ...] = (2, 3)) -> None:
        super().__init__()
        out = channels * stride
        self.conv1 = nn.Conv2d(channels, out, 3, stride, 1)
        self.conv2 = nn.Conv2d(out, out, 3, 1, 1)
        self.stride, self.pad, self.halve = stride, (out - channels) // 2, halve

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            return x
        step = [slice(None)] * 4
        for axis in self.halve:
            step[axis] = slice(None, None, 2)
        return F.pad(x[tuple(step)], (0, 0, 0, 0, self.pad, self.pad))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv2(F.relu(self.conv1(x))) + self.shortcut(x))


def _export(model: nn.Module, shape: tuple[int, ...], path: Path) -> onnx.ModelProto:
    torch.manual_seed(0)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (torch.randn(2, *shape),), str(path), input_names=["h"],
                          dynamic_shapes=({0: torch.export.Dim("batch")},), dynamo=True, verbose=False)
    return onnx.load(str(path))


def _run(model: onnx.ModelProto, x: np.ndarray, optimised: Path | None = None) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    if optimised is not None:
        options.optimized_model_filepath = str(optimised)
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"h": x})[0]


def _layout_conversions(model: onnx.ModelProto, folder: Path, x: np.ndarray) -> int:
    path = folder / "optimised.onnx"
    _run(model, x, path)
    return sum(node.op_type in ("ReorderInput", "ReorderOutput") for node in onnx.load(str(path)).graph.node)


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


def test_option_a_shortcuts_become_convolutions_with_the_same_numbers(tmp_path: Path) -> None:
    net = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1), Block(16), Block(16, 2), Block(32), Block(32, 2), Block(64)).eval()
    plain = _export(net, (3, 16, 16), tmp_path / "net.onnx")
    rewritten = _copy(plain)
    assert shortcuts_as_convolutions(rewritten) == 2
    onnx.checker.check_model(rewritten)
    assert not {"Slice", "Pad"} & {node.op_type for node in rewritten.graph.node}
    x = np.random.default_rng(0).standard_normal((3, 3, 16, 16)).astype(np.float32)
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    got = _run(rewritten, x)
    np.testing.assert_allclose(got, _run(plain, x), rtol=0, atol=1e-5)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)
    before = _layout_conversions(plain, tmp_path, x)
    if before == 0:
        pytest.skip("onnxruntime uses no blocked layout on this CPU")
    assert _layout_conversions(rewritten, tmp_path, x) < before


def test_a_stage_input_is_read_blocked_with_the_same_numbers(tmp_path: Path) -> None:
    net = nn.Sequential(Block(16), Block(16), Block(16, 2), Block(32)).eval()
    plain = _export(net, (16, 8, 8), tmp_path / "stage.onnx")
    rewritten = _copy(plain)
    shortcuts_as_convolutions(rewritten)
    assert blocked_input(rewritten)
    onnx.checker.check_model(rewritten)
    both = _copy(plain)
    assert keep_blocked(both)  # what the export applies: the same two rewrites
    assert [(n.op_type, list(n.input)) for n in both.graph.node] == [(n.op_type, list(n.input))
                                                                     for n in rewritten.graph.node]
    x = np.random.default_rng(1).standard_normal((2, 16, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(_run(rewritten, x), _run(plain, x), rtol=0, atol=1e-5)
    shortcut_only = _copy(plain)
    shortcuts_as_convolutions(shortcut_only)
    before = _layout_conversions(shortcut_only, tmp_path, x)
    if before == 0:
        pytest.skip("onnxruntime uses no blocked layout on this CPU")
    assert _layout_conversions(rewritten, tmp_path, x) < before


@pytest.mark.parametrize("halve", [(2,), (3,)], ids=["rows only", "columns only"])
def test_a_subsampling_that_is_not_option_a_is_left_alone(tmp_path: Path, halve: tuple[int, ...]) -> None:
    class Odd(Block):
        def shortcut(self, x: torch.Tensor) -> torch.Tensor:
            return F.max_pool2d(super().shortcut(x), (1, 2) if halve == (2,) else (2, 1))

    net = nn.Sequential(Odd(16, 2, halve)).eval()
    model = _export(net, (16, 8, 8), tmp_path / "odd.onnx")
    nodes = len(model.graph.node)
    assert shortcuts_as_convolutions(model) == 0
    assert len(model.graph.node) == nodes


def test_an_input_with_channels_off_the_block_or_that_is_also_an_output_is_left_alone(tmp_path: Path) -> None:
    rgb = _export(nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1)).eval(), (3, 8, 8), tmp_path / "rgb.onnx")
    assert not blocked_input(rgb)
    passed_on = _export(nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1)).eval(), (16, 8, 8), tmp_path / "16.onnx")
    passed_on.graph.output.append(onnx.helper.make_tensor_value_info("h", onnx.TensorProto.FLOAT, None))
    assert not blocked_input(passed_on)
    assert [node.op_type for node in passed_on.graph.node].count("Conv") == 1
