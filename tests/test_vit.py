"""Vision transformers: exits on token sequences (ViT, DeiT) and on channels-last maps (Swin), only at block
boundaries, with every IC design; small configurations of the library models, randomly initialised."""

from __future__ import annotations

import json
import re
import warnings

import pytest
import torch
from torch import nn

from shallowdeep.cli import main
from shallowdeep.errors import UserError
from shallowdeep.exits import early_exit
from shallowdeep.flops import count_flops
from shallowdeep.heads import TokenHead
from shallowdeep.layouts import CHANNELS_LAST_MAP, FEATURE_MAP, TOKENS
from shallowdeep.surgery import attach, cut_points

torchvision = pytest.importorskip("torchvision")
timm = pytest.importorskip("timm")

pytestmark = pytest.mark.usefixtures("one_thread")

CLASSES = 10
TINY = {  # name: (builder, input shape)
    "torchvision:vit_b_16": (lambda: torchvision.models.vision_transformer.VisionTransformer(
        image_size=32, patch_size=8, num_layers=12, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=CLASSES),
        (3, 32, 32)),
    "timm:vit_tiny_patch16_224": (lambda: timm.create_model(
        "vit_tiny_patch16_224", img_size=32, embed_dim=48, num_classes=CLASSES), (3, 32, 32)),
    "timm:deit_tiny_patch16_224": (lambda: timm.create_model(
        "deit_tiny_patch16_224", img_size=32, embed_dim=48, num_classes=CLASSES), (3, 32, 32)),
    "timm:swin_tiny_patch4_window7_224": (lambda: timm.create_model(
        "swin_tiny_patch4_window7_224", img_size=64, embed_dim=24, num_classes=CLASSES), (3, 64, 64)),
}
BLOCK_OUTPUT = re.compile(r"(encoder\.layers\.encoder_layer_\d+|blocks\.\d+|layers\.\d+(\.blocks\.\d+|\.downsample(\.norm)?)?)")


def build(name: str) -> tuple[nn.Module, tuple[int, ...]]:
    torch.manual_seed(0)
    make, shape = TINY[name]
    return make().eval(), shape


def quiet_attach(model: nn.Module, shape, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # placement notes
        return attach(model, shape, CLASSES, **kw).eval()


@pytest.mark.parametrize("name", TINY)
def test_attach_keeps_the_output_and_places_six_exits_at_block_outputs(name):
    model, shape = build(name)
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(1))
    net = quiet_attach(model, shape)
    with torch.no_grad():
        assert torch.equal(net(x)[-1], model(x))
    shares = [f / net.backbone_flops for f in net.exit_flops[:-1]]
    assert len(shares) == 6, (net.exit_names, shares)
    for got, want in zip(shares, (0.15, 0.3, 0.45, 0.6, 0.75, 0.9)):
        assert abs(got - want) < 0.07, (net.exit_names, shares)
    assert all(BLOCK_OUTPUT.fullmatch(n) for n in net.exit_names), net.exit_names
    assert all(isinstance(ic, TokenHead) for ic in net.ics)


@pytest.mark.parametrize("name, layout", [("timm:vit_tiny_patch16_224", TOKENS),
                                          ("timm:swin_tiny_patch4_window7_224", CHANNELS_LAST_MAP)])
def test_cut_points_are_block_outputs_listed_once_each(name, layout):
    model, shape = build(name)
    points = cut_points(model, shape)
    inside = [p.name for p in points if p.name.startswith(("blocks", "layers")) and not BLOCK_OUTPUT.fullmatch(p.name)]
    assert set(inside) <= {"blocks", "layers"}, inside  # the last block's output is named by its container
    assert len({p.name for p in points}) == len(points)
    assert {p.layout for p in points} == {FEATURE_MAP, layout}  # the patch embedding's convolution, then tokens
    assert [p.layout for p in points].count(FEATURE_MAP) == 1


def test_an_exit_between_attention_and_mlp_is_refused():
    model, shape = build("timm:vit_tiny_patch16_224")
    with pytest.raises(UserError, match="exit 'add_1' is not a point where the model can be split"):
        attach(model, shape, CLASSES, exits=["add_1"])  # blocks.0's attention residual add


class _Block(nn.Module):
    """A transformer block written by hand, under names no library uses; layer norms before (pre-norm) or
    after (post-norm) the residual adds."""

    def __init__(self, dim: int, post_norm: bool) -> None:
        super().__init__()
        self.post_norm = post_norm
        self.norm_a, self.qkv, self.out = nn.LayerNorm(dim), nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.norm_b, self.ff = nn.LayerNorm(dim), nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return self.out(torch.softmax(q @ k.transpose(1, 2), dim=-1) @ v)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.post_norm:
            x = self.norm_a(x + self.attend(x))
            return self.norm_b(x + self.ff(x))
        x = x + self.attend(self.norm_a(x))
        return x + self.ff(self.norm_b(x))


class _HandMadeTransformer(nn.Module):
    def __init__(self, post_norm: bool, dim: int = 24, depth: int = 12) -> None:
        super().__init__()
        self.patches = nn.Conv2d(3, dim, 4, stride=4)
        self.trunk = nn.Sequential(*[_Block(dim, post_norm) for _ in range(depth)])
        self.fc = nn.Linear(dim, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.trunk(self.patches(x).flatten(2).transpose(1, 2)).mean(1))


@pytest.mark.parametrize("post_norm", [False, True])
def test_the_block_rule_and_token_layout_hold_for_any_names(post_norm):
    points = cut_points(_HandMadeTransformer(post_norm).eval(), (3, 16, 16))
    names = [p.name for p in points]
    assert not any("norm_a" in n for n in names)  # post-norm: the attention's norm, before the MLP
    outputs = [n for n in names if not n.startswith("add_")]  # post-norm: each block's last add, before its norm
    assert outputs == ["patches", "transpose", *[f"trunk.{i}" for i in range(11)], "trunk"]
    assert len(names) == len(outputs) + (11 if post_norm else 0) + post_norm
    assert [p.layout for p in points] == [FEATURE_MAP] + [TOKENS] * (len(names) - 1)


@pytest.mark.parametrize("design", ["paper", "ztw"])
def test_token_heads_cost_their_layer_norm_and_linear_layer(design):
    model, shape = build("timm:vit_tiny_patch16_224")
    net = quiet_attach(model, shape, ic=design)
    flops_at = {p.name: p.flops for p in cut_points(model, shape)}
    norm = count_flops(nn.LayerNorm(48), torch.zeros(1, 48))  # FlopCounterMode counts none: element-wise
    heads = [norm + 2 * (48 + (CLASSES if design == "ztw" and i else 0)) * CLASSES for i in range(6)]
    assert net.exit_flops[:-1] == [flops_at[n] + sum(heads[: i + 1]) for i, n in enumerate(net.exit_names)]
    assert net.exit_flops[-1] == net.backbone_flops + sum(heads)


@pytest.mark.parametrize("design", ["paper", "conv", "ztw"])
def test_every_design_gives_token_heads_whose_reduction_is_parameter_free(design):
    model, shape = build("timm:swin_tiny_patch4_window7_224")
    net = quiet_attach(model, shape, ic=design)
    assert all(isinstance(ic, TokenHead) for ic in net.ics)
    assert [ic.cascade_classes for ic in net.ics] == [0] + [CLASSES if design == "ztw" else 0] * 5
    assert (net.ensemble is not None) == (design == "ztw")
    x = torch.randn(3, *shape)
    with torch.no_grad():
        maps, _ = net.features(x)
        logits = net(x)
        for i, (ic, m) in enumerate(zip(net.ics, maps)):
            assert m.dim() == 4 and m.shape[-1] == ic.norm.normalized_shape[0]  # channels-last (N, H, W, C)
            (pooled,) = ic.reduce(m)
            assert torch.allclose(pooled, m.mean((1, 2)), atol=1e-6)
            assert torch.equal(ic.classify((pooled,), logits[i - 1] if i else None), logits[i])


@pytest.mark.parametrize("design", ["paper", "ztw"])
def test_early_exit_on_a_batch_equals_one_by_one(design):
    model, shape = build("torchvision:vit_b_16")
    net = quiet_attach(model, shape, ic=design)
    x = torch.randn(16, *shape, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        scores = torch.stack([o.softmax(1).max(1).values for o in net.exit_logits(x)[:-1]])
    best = scores.max(0).values
    threshold = float(best.median())  # about half leave early
    batch = early_exit(net, x, threshold)
    single = [early_exit(net, x[i:i + 1], threshold) for i in range(len(x))]
    assert 0 < int((batch[1] < len(net.ics)).sum()) < len(x)
    for got, one_by_one in zip(batch, zip(*single)):
        assert torch.equal(got, torch.cat(one_by_one))


VIT_ON_DIGITS = '{"img_size": 16, "patch_size": 4, "embed_dim": 32, "num_heads": 2}'


def test_ic_only_training_and_evaluation_from_the_cli(tmp_path, capsys):
    model = timm.create_model("vit_tiny_patch16_224", num_classes=CLASSES, **json.loads(VIT_ON_DIGITS))
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    run = tmp_path / "run"
    assert main(["train", "--mode", "ic-only", "--backbone", "timm:vit_tiny_patch16_224", "--model-kwargs",
                 VIT_ON_DIGITS, "--from", str(tmp_path / "weights.pt"), "--dataset", "digits", "--limit", "64",
                 "--epochs", "1", "--device", "cpu", "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert "exits: 6 'paper' ICs" in out and "inputs cached in memory" in out  # the token heads' mean tokens
    assert main(["evaluate", str(run), "--device", "cpu"]) == 0
    assert len(json.loads((run / "eval-test.json").read_text())["exits"]) == 7


def test_exits_command_lists_token_cut_points(capsys):
    assert main(["exits", "--backbone", "timm:vit_tiny_patch16_224", "--model-kwargs", VIT_ON_DIGITS,
                 "--input-shape", "3,16,16"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[2:] if line.strip().startswith("blocks")]
    assert [r[0] for r in rows] == [*[f"blocks.{i}" for i in range(11)], "blocks"]
    assert all(r[1] == "17x32" and r[2] == "tokens" for r in rows)


def test_gradcam_on_token_exits_is_one_line_saying_why():
    from shallowdeep.analysis.gradcam import gradcam, reads_feature_maps

    model, shape = build("timm:vit_tiny_patch16_224")
    net = quiet_attach(model, shape)
    assert not reads_feature_maps(net)
    with pytest.raises(UserError, match="token sequences"):
        gradcam(net, torch.randn(2, *shape), torch.zeros(2, dtype=torch.long), 0)
