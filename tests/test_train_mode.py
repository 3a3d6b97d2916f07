"""An SDN acts in training as its model does: code that branches on ``self.training`` is kept (issue 12)."""

from __future__ import annotations

import copy
import io
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from shallowdeep.mode_graphs import ModeSegment
from shallowdeep.surgery import analyse, attach, split_graph

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPE = (3, 16, 16)
EXITS = ["blocks.0", "blocks.1"]


def _block() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())


class _Noisy(nn.Module):
    """A forward that checks ``self.training`` itself: noise, then functional dropout, only while training."""

    def __init__(self, skip_in_training: bool = False) -> None:
        super().__init__()
        self.stem, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, 10)
        self.blocks = nn.Sequential(_block(), _block(), _block())
        self.skip_in_training = skip_in_training

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stem = self.stem(x)
        x = self.blocks[0](stem)
        if self.training:
            x = x + 0.1 * torch.randn_like(x)
        x = self.blocks[2](self.blocks[1](x))
        if self.training and self.skip_in_training:
            x = x + stem  # in training only, a value from before every exit is needed after them
        return self.fc(F.dropout(x.mean((2, 3)), 0.5, self.training))


def _attached(model: nn.Module, exits: list[str] = EXITS) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return attach(model, SHAPE, 10, exits=exits)


def _final(module: nn.Module, x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """The final output of a model or an SDN on ``x``, from random seed ``seed``."""
    torch.manual_seed(seed)
    out = module(x)
    return out[-1] if isinstance(out, list) else out


def _same_draws(first: nn.Module, second: nn.Module, x: torch.Tensor) -> bool:
    """Whether both give the same final output when each starts from the same random seed."""
    return torch.equal(_final(first, x), _final(second, x))


def test_a_forward_branching_on_self_training_acts_alike_in_both_modes():
    torch.manual_seed(0)
    model, x = _Noisy(), torch.randn(4, *SHAPE)
    net = _attached(model)
    assert any(isinstance(s, ModeSegment) for s in net.segments)
    assert torch.equal(net.eval()(x)[-1], model.eval()(x))
    assert _same_draws(model.train(), net.train(), x)
    assert not torch.equal(_final(net, x, seed=1), _final(model, x))  # the draws matter


def test_state_dict_keys_deep_copies_and_saved_weights_are_unchanged():
    torch.manual_seed(0)
    model, x = _Noisy(), torch.randn(2, *SHAPE)
    net = _attached(model)
    gm, points, _ = analyse(model, SHAPE)
    plain = nn.ModuleList(split_graph(gm, [p.index for p in points if p.name in EXITS]))
    assert [k for k in net.state_dict() if k.startswith("segments.")] == [f"segments.{k}" for k in plain.state_dict()]
    buffer = io.BytesIO()
    torch.save(net.state_dict(), buffer)
    buffer.seek(0)
    other = _attached(_Noisy())
    other.load_state_dict(torch.load(buffer, weights_only=True))
    twin = copy.deepcopy(net)
    assert _same_draws(net.train(), other.train(), x) and _same_draws(net, twin.train(), x)
    with torch.no_grad():
        next(twin.parameters()).add_(1)
    assert not _same_draws(net, twin, x)  # the copy holds its own weights


def test_a_frozen_backbone_runs_its_eval_mode_graph_in_training():
    torch.manual_seed(0)
    model, x = _Noisy(), torch.randn(2, *SHAPE)
    net = _attached(model)
    net.freeze_backbone()
    net.train()
    assert not any(s.training for s in net.segments)
    assert torch.equal(net(x)[-1], model.eval()(x))


def test_models_that_trace_alike_in_both_modes_keep_plain_segments():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), _block(), _block(), nn.Flatten(), nn.Dropout(), nn.LazyLinear(10))
    model(torch.zeros(1, *SHAPE))
    net = _attached(model, ["1", "2"])
    assert all(isinstance(s, torch.fx.GraphModule) for s in net.segments)


class _ExtraLayerInTraining(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks, self.extra = nn.Sequential(nn.Conv2d(3, 8, 3), _block(), _block()), nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks[1](self.blocks[0](x))
        x = self.extra(x) if self.training else x
        return self.fc(self.blocks[2](x).mean((2, 3)))


@pytest.mark.parametrize("model, said", [
    (lambda: _Noisy(skip_in_training=True), "exit 'blocks.0' has no matching point in its train-mode graph"),
    (_ExtraLayerInTraining, "its train-mode graph reads 'extra', which the eval-mode segment lacks"),
])
def test_a_train_mode_graph_that_cannot_be_split_alike_falls_back_with_a_warning(model, said):
    with pytest.warns(UserWarning, match=f"cannot keep .*{said}.*runs its eval-mode graph in training too"):
        net = attach(model(), SHAPE, 10, exits=EXITS)
    assert all(isinstance(s, torch.fx.GraphModule) for s in net.segments)


def test_timm_drop_path_is_kept_in_training():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=10, drop_path_rate=0.2, zero_init_last=False)
    x = torch.randn(4, 3, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        net = attach(model, (3, 32, 32), 10, exits=["layer1", "layer2", "layer3"])
    assert torch.equal(net.eval()(x)[-1], model.eval()(x))
    assert _same_draws(model.train(), net.train(), x)
    assert not torch.equal(_final(net, x, seed=1), _final(model, x))


def test_swin_drop_path_is_kept_with_the_constants_its_train_mode_trace_makes():
    """timm's Swin makes its attention masks as tensor constants, numbered anew by each trace: the train-mode code
    gets its own, outside the state dict."""
    timm = pytest.importorskip("timm")

    def swin() -> nn.Module:
        torch.manual_seed(0)
        return timm.create_model("swin_tiny_patch4_window7_224", img_size=32, window_size=4, embed_dim=16,
                                 depths=(2, 2, 2, 2), num_heads=(1, 1, 2, 2), num_classes=10, drop_path_rate=0.2)

    model, x = swin(), torch.randn(2, 3, 32, 32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        net = attach(model, (3, 32, 32), 10)
    assert not [w for w in caught if "train-mode" in str(w.message)]
    assert any(isinstance(s, ModeSegment) for s in net.segments)
    gm, points, _ = analyse(swin(), (3, 32, 32))  # a fresh model: fx numbers constants on from earlier traces
    plain = nn.ModuleList(split_graph(gm, [p.index for p in points if p.name in net.exit_names]))
    assert [k for k in net.state_dict() if k.startswith("segments.")] == [f"segments.{k}" for k in plain.state_dict()]
    assert torch.equal(net.eval()(x)[-1], model.eval()(x))
    assert _same_draws(model.train(), net.train(), x)


def test_distributed_data_parallel_trains_mode_segments(tmp_path):
    import torch.distributed as dist

    if dist.is_initialized():
        pytest.skip("a process group is already running")
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        net = nn.parallel.DistributedDataParallel(_attached(_Noisy()))
        sum(o.sum() for o in net(torch.randn(2, *SHAPE))).backward()
        assert all(p.grad is not None for p in net.parameters())
    finally:
        dist.destroy_process_group()
