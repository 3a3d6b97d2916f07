"""The four backbones: sizes and costs against hand formulas, the stages/head contract, the registry."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from shallowdeep import models
from shallowdeep.errors import UserError
from shallowdeep.flops import model_flops
from shallowdeep.models import registry

NAMES = ["mobilenet", "resnet56", "vgg16_bn", "wrn32_4"]
SIZES = [16, 32, 64]


# --- hand formulas: (parameters, FLOPs) of one layer, FLOPs = 2 per multiply-add ---------------


def conv(k: int, cin: int, cout: int, out_side: int, groups: int = 1, bias: bool = False) -> tuple[int, int]:
    macs_per_pixel = k * k * (cin // groups) * cout
    return macs_per_pixel + (cout if bias else 0), 2 * macs_per_pixel * out_side * out_side


def bn(channels: int) -> tuple[int, int]:
    return 2 * channels, 0


def linear(n_in: int, n_out: int) -> tuple[int, int]:
    return n_in * n_out + n_out, 2 * n_in * n_out


def total(layers: list[tuple[int, int]]) -> tuple[int, int]:
    return sum(p for p, _ in layers), sum(f for _, f in layers)


def resnet56_counts(size: int, classes: int) -> tuple[int, int]:
    side = size // 2 if size == 64 else size
    layers = [conv(3, 3, 16, side), bn(16)]
    cin = 16
    for stage, c in enumerate([16, 32, 64]):
        for block in range(9):
            if stage > 0 and block == 0:
                side //= 2
            layers += [conv(3, cin, c, side), bn(c), conv(3, c, c, side), bn(c)]
            if cin != c:
                layers += [conv(1, cin, c, side), bn(c)]  # projection shortcut
            cin = c
    return total(layers + [linear(64, classes)])


def vgg16_bn_counts(size: int, classes: int) -> tuple[int, int]:
    channels = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    pool_after = {1, 3, 6, 9, 12}
    side, cin, layers = size, 3, []
    for index, c in enumerate(channels):
        layers += [conv(3, cin, c, side, bias=True), bn(c)]
        if index in pool_after and side > 1:
            side //= 2
        cin = c
    hidden = [2048, 1024] if size == 64 else [512, 512]
    widths = [side * side * 512] + hidden + [classes]
    return total(layers + [linear(a, b) for a, b in zip(widths, widths[1:])])


def wrn32_4_counts(size: int, classes: int) -> tuple[int, int]:
    side = size // 2 if size == 64 else size
    layers = [conv(3, 3, 16, side, bias=True)]
    cin = 16
    for stage, c in enumerate([64, 128, 256]):
        for block in range(5):
            in_side = side
            if stage > 0 and block == 0:
                side //= 2
            layers += [bn(cin), conv(3, cin, c, in_side, bias=True), bn(c), conv(3, c, c, side, bias=True)]
            if cin != c:
                layers.append(conv(1, cin, c, side, bias=True))
            cin = c
    return total(layers + [bn(256), linear(256, classes)])


def mobilenet_counts(size: int, classes: int) -> tuple[int, int]:
    side = size
    layers = [conv(3, 3, 32, side), bn(32)]
    cin = 32
    cfg = [64, (128, 2), 128, (256, 2), 256, (512, 2), 512, 512, 512, 512, 512, (1024, 2), 1024]
    for item in cfg:
        c, stride = (item, 1) if isinstance(item, int) else item
        side //= stride
        layers += [conv(3, cin, cin, side, groups=cin), bn(cin), conv(1, cin, c, side), bn(c)]
        cin = c
    return total(layers + [linear(1024, classes)])


HAND_COUNTS = {
    "mobilenet": mobilenet_counts,
    "resnet56": resnet56_counts,
    "vgg16_bn": vgg16_bn_counts,
    "wrn32_4": wrn32_4_counts,
}
STAGE_COUNT = {"mobilenet": 14, "resnet56": 28, "vgg16_bn": 13, "wrn32_4": 16}
# (channels, side) of the last feature map for inputs of 16, 32, 64.
LAST_MAP = {
    "mobilenet": (1024, {16: 1, 32: 2, 64: 4}),
    "resnet56": (64, {16: 4, 32: 8, 64: 8}),
    "vgg16_bn": (512, {16: 1, 32: 1, 64: 2}),
    "wrn32_4": (256, {16: 4, 32: 8, 64: 8}),
}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", NAMES)
def test_parameters_and_flops_match_hand_formulas(name: str, size: int) -> None:
    classes = 200 if size == 64 else 10
    model = models.create(name, classes, size)
    assert (n_params(model), model_flops(model, (3, size, size))) == HAND_COUNTS[name](size, classes)


def test_resnet56_and_vgg16_bn_at_32_match_closed_form_sums() -> None:
    # ResNet-56, 10 classes. Params: stem 432+32; stage 1: 9*(2*2304+2*32); stage 2: 4608+9216+512+3*64
    # + 8*(2*9216+2*64); stage 3: 18432+36864+2048+3*128 + 8*(2*36864+2*128); linear 650.
    # FLOPs: 2*(432*1024 + 18*2304*1024 + (4608+17*9216+512)*256 + (18432+17*36864+2048)*64 + 640).
    assert resnet56_counts(32, 10) == (855_770, 251_495_680)
    resnet = models.create("resnet56", 10)
    assert (n_params(resnet), model_flops(resnet, (3, 32, 32))) == (855_770, 251_495_680)
    # VGG-16-BN, 10 classes: convs (weights + bias + BN) 14,723,136; FC 2*(512*512+512) + 5130.
    vgg = models.create("vgg16_bn", 10)
    assert n_params(vgg) == 14_723_136 + 2 * (512 * 512 + 512) + 5130


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_output_shapes_and_stage_contract(name: str) -> None:
    channels, last_side = LAST_MAP[name]
    for size in SIZES:
        model = models.create(name, 7, size).eval()
        assert isinstance(model.stages, nn.Sequential) and len(model.stages) == STAGE_COUNT[name]
        assert (model.num_classes, model.input_size) == (7, size)
        x = torch.randn(2, 3, size, size)
        with torch.no_grad():
            features = x
            for block in model.stages:
                features = block(features)
            logits = model(x)
            assert features.shape == (2, channels, last_side[size], last_side[size])
            assert torch.equal(model.forward_features(x), features)
            assert torch.equal(model.forward_head(features), logits)
            assert torch.equal(model.head(features), logits)
        assert logits.shape == (2, 7)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_fx_trace_reproduces_the_model(name: str) -> None:
    model = models.create(name, 10).eval()
    traced = torch.fx.symbolic_trace(model)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(traced(x), model(x))


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_every_parameter_gets_a_gradient(name: str) -> None:
    model = models.create(name, 5, 16).train()
    nn.functional.cross_entropy(model(torch.randn(4, 3, 16, 16)), torch.tensor([0, 1, 2, 3])).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_resnet56_block_layout() -> None:
    model = models.create("resnet56", 10, 64)
    stem_conv = model.stages[0][0]
    assert stem_conv.stride == (2, 2)
    projections = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)]
    assert [(p.in_channels, p.out_channels, p.stride) for p in projections] == [(16, 32, (2, 2)), (32, 64, (2, 2))]
    assert models.create("resnet56", 10, 32).stages[0][0].stride == (1, 1)


def test_dropout_rates() -> None:
    wrn = [m.p for m in models.create("wrn32_4", 10).modules() if isinstance(m, nn.Dropout)]
    assert wrn == [0.3] * 15
    vgg = [m.p for m in models.create("vgg16_bn", 10).head.modules() if isinstance(m, nn.Dropout)]
    assert vgg == [0.5, 0.5]


def test_weight_init() -> None:
    model = models.create("vgg16_bn", 10)
    big_conv = model.stages[12][0]  # 512 -> 512, 3x3: 2.4 M weights
    assert big_conv.weight.std().item() == pytest.approx(math.sqrt(2 / (9 * 512)), rel=0.02)
    assert torch.all(big_conv.bias == 0)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            assert torch.all(module.weight == 1) and torch.all(module.bias == 0)
        if isinstance(module, nn.Linear):
            assert torch.all(module.bias == 0)
    assert model.head[1].weight.std().item() == pytest.approx(0.01, rel=0.02)


def test_registry_names_and_weight_decay() -> None:
    assert models.available() == NAMES
    assert {n: models.default_weight_decay(n) for n in NAMES} == {
        "mobilenet": 1e-4,
        "resnet56": 1e-4,
        "vgg16_bn": 5e-4,
        "wrn32_4": 5e-4,
    }


@pytest.mark.parametrize(
    "call",
    [
        lambda: models.create("resnet50", 10),
        lambda: models.default_weight_decay("resnet50"),
        lambda: models.create("resnet56", 10, 15),
        lambda: models.create("resnet56", 10, 32, 0),
        lambda: models.create("vgg16_bn", 10, 32.0),
        lambda: models.create("mobilenet", 0),
        lambda: models.create("wrn32_4", True),
    ],
)
def test_bad_arguments_raise_user_error(call) -> None:
    with pytest.raises(UserError):
        call()


def test_unknown_name_message_lists_the_choices() -> None:
    with pytest.raises(UserError, match="resnet50.*mobilenet, resnet56, vgg16_bn, wrn32_4"):
        models.create("resnet50", 10)


def test_register_decorator_adds_a_builder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_REGISTRY", {})

    @registry.register("tiny", weight_decay=0.25)
    def tiny(num_classes: int, input_size: int, in_channels: int) -> nn.Module:
        return nn.Linear(in_channels * input_size, num_classes)

    assert models.available() == ["tiny"]
    assert models.default_weight_decay("tiny") == 0.25
    assert models.create("tiny", 3, 16, 1).weight.shape == (3, 16)
