"""attach(): exits at cut points, the final output unchanged, costs counted right."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from shallowdeep import models
from shallowdeep.surgery import attach, cut_points
from shallowdeep.build import extract_state_dict, load_backbone_weights, load_checkpoint_file
from shallowdeep.errors import UserError
from shallowdeep.heads import InternalClassifier

from conftest import AKAMASTER, load_example


def assert_same_final(model: nn.Module, shape=(3, 32, 32), classes=10, **kw):
    model.eval()
    net = attach(model, shape, classes, **kw).eval()
    x = torch.randn(4, *shape)
    with torch.no_grad():
        outs = net(x)
        ref = model(x)
    assert torch.equal(outs[-1], ref)
    assert len(outs) == len(net.ics) + 1 and all(o.shape == (4, classes) for o in outs)
    return net


@pytest.mark.parametrize("arch", models.available())
def test_builtin_backbones_keep_their_output_and_get_paper_placement(arch):
    torch.manual_seed(0)
    net = assert_same_final(models.create(arch, 10, 32))
    fractions = [f / net.backbone_flops for f in net.exit_flops[:-1]]
    assert len(fractions) == 6
    for got, want in zip(fractions, (0.15, 0.3, 0.45, 0.6, 0.75, 0.9)):
        assert abs(got - want) < 0.07, (arch, fractions)
    assert all(name.startswith("stages.") for name in net.exit_names)


def test_sequential_and_hand_counted_costs():
    seq = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(8, 10))
    net = assert_same_final(seq, exits=["1", "3"])
    conv1 = 2 * 3 * 3 * 3 * 8 * 32 * 32
    conv = 2 * 3 * 3 * 8 * 8 * 32 * 32
    ic = 2 * 8 * 4 * 4 * 10  # pooled to 8x4x4, then linear to 10 classes
    assert net.backbone_flops == conv1 + 2 * conv + 2 * 8 * 10
    assert net.exit_flops == [conv1 + ic, conv1 + conv + 2 * ic, net.backbone_flops + 2 * ic]


def test_option_a_resnet_with_third_party_layout():
    torch.manual_seed(0)
    net = assert_same_final(load_example().resnet20())
    assert net.exit_names[0].startswith("layer1.") and len(net.ics) == 6


def test_real_third_party_weights_load_and_keep_output(shared):
    model = load_example().resnet56()
    state = extract_state_dict(load_checkpoint_file(AKAMASTER / "resnet56-4bfd9763.th"))
    load_backbone_weights(model, state)
    assert_same_final(model)


class Concat(nn.Module):
    """A layout with a dense connection spanning two convolutions and a functional head."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 6, 3, padding=1)
        self.b = nn.Conv2d(6, 6, 3, padding=1, stride=2)
        self.c = nn.Conv2d(6, 6, 3, padding=1)
        self.d = nn.Conv2d(12, 6, 3, padding=1)
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        x = F.relu(self.a(x))
        x = F.relu(self.b(x))
        y = F.relu(self.c(x))
        x = F.relu(self.d(torch.cat([x, y], 1)))
        return self.fc(x.mean((2, 3)))


def test_dense_connection_is_not_a_cut_point():
    names = [p.name for p in cut_points(Concat(), (3, 16, 16))]
    assert "b" in names and "c" not in names
    assert_same_final(Concat(), (3, 16, 16), 5, exits=["b"])
    with pytest.raises(UserError, match="not a point"):
        attach(Concat(), (3, 16, 16), 5, exits=["c"])


def test_bad_exits_and_untraceable_models():
    with pytest.raises(UserError, match="neither a module"):
        attach(Concat(), (3, 16, 16), 5, exits=["nope"])

    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            if x.sum() > 0:
                return self.conv(x).mean((2, 3))
            return self.conv(-x).mean((2, 3))

    with pytest.raises(UserError, match="could not trace"):
        attach(Branchy(), (3, 8, 8), 4)
    with pytest.raises(UserError, match="classes"):
        attach(Concat(), (3, 16, 16), 7)


def test_internal_classifier_pooling_formula():
    torch.manual_seed(0)
    ic = InternalClassifier(5, 16, 16, 3)
    x = torch.randn(2, 5, 16, 16)
    a = ic.alpha.item()
    mixed = a * F.max_pool2d(x, 4) + (1 - a) * F.avg_pool2d(x, 4)
    assert torch.allclose(ic(x), ic.linear(mixed.flatten(1)), atol=1e-6)
    small = InternalClassifier(5, 4, 4, 3)
    assert small.alpha is None and small.linear.in_features == 80


def test_a_foreign_model_with_stages_gets_its_exits_by_flops():
    class Foreign(nn.Module):  # like timm's ConvNeXt: a `stages` Sequential of a few large stages
        def __init__(self) -> None:
            super().__init__()
            self.stages = nn.Sequential(*[nn.Sequential(*[nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
                                                          for _ in range(4)]) for _ in range(3)])
            self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))

        def forward(self, x):
            return self.head(self.stages(x))

    net = attach(Foreign(), (8, 8, 8), 5)
    assert len(net.ics) == 6 and not all(re.fullmatch(r"stages\.\d+", n) for n in net.exit_names)


def test_placement_says_when_it_falls_short_of_the_fractions():
    from shallowdeep.fx_split import CutPoint
    from shallowdeep.surgery import placement_notes

    points = [CutPoint(1, "a", (4, 8, 8), 15), CutPoint(2, "b", (4, 8, 8), 30), CutPoint(3, "c", (4, 4, 4), 70)]
    assert placement_notes(points, 100, (0.15, 0.3, 0.7)) == []
    notes = placement_notes(points, 100, (0.15, 0.3, 0.45))
    assert notes == ["the exit meant for 45 % of the cost is at 30.0 % (b): no cut point lies nearer"]
    notes = placement_notes([points[0], points[2]], 100, (0.15, 0.18, 0.7))
    assert notes[0].startswith("only 2 distinct cut points are nearest to the 3 exit fractions") and len(notes) == 1


@pytest.mark.slow
def test_the_exits_command_lists_cut_points_and_marks_the_chosen_ones():
    from test_cli_errors import cli

    r = cli("exits", "--arch", "resnet56", "--input-shape", "3,16,16", "--fractions", "0.3,0.6")
    assert r.returncode == 0, r.stderr
    marked = [line.split()[0] for line in r.stdout.splitlines() if line.rstrip().endswith("IC")]
    assert marked == ["stages.8", "stages.16"] and "2 exits at stages.8,stages.16" in r.stdout
    assert "16x16x16" in r.stdout and "100.0 %" in r.stdout
