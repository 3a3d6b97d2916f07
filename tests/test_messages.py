"""Messages and figures that must not surprise: remedies that name options the command takes, shares that add
up, the heads' cost for the user's input size, ``dir(shallowdeep)``."""

from __future__ import annotations

import json
import shutil

import pytest
from torch import nn

import shallowdeep
from shallowdeep.build import build_sdn
from shallowdeep.cli import main
from shallowdeep.cli._common import percentages
from shallowdeep.errors import UserError
from shallowdeep.model_spec import ModelSpec
from shallowdeep.surgery import attach
from test_analysis import BACKBONE, shared_tiny_run

pytestmark = pytest.mark.usefixtures("one_thread")


def test_grey_data_on_an_rgb_network_names_channels_3():
    rgb = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))
    with pytest.raises(UserError, match=r"takes 3-channel images: read the data with --channels 3$"):
        attach(rgb, (1, 8, 8), 10)


@pytest.mark.parametrize("command", ["early-exit", "overthinking", "confusion"])
def test_a_plain_cnn_run_is_told_to_train_ics_on_it(tmp_path_factory, tmp_path, capsys, command):
    run = tmp_path / "cnn"
    shutil.copytree(shared_tiny_run(tmp_path_factory), run)
    config = json.loads((run / "config.json").read_text())
    config["model"]["exits"] = []  # as --mode cnn records it
    (run / "config.json").write_text(json.dumps(config))
    assert main([command, str(run)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"shallowdeep {command}: error: {command} needs internal classifiers and {run} is a plain CNN: train them on "
        f"it with shallowdeep train --mode ic-only --from {run} --dataset digits --out NEW_RUN, then run "
        f"shallowdeep {command} NEW_RUN")


def test_printed_shares_add_up_to_100():
    assert percentages([1 / 3] * 3) == ["33.4", "33.3", "33.3"]
    assert sum(float(p) for p in percentages([1 / 6] * 6)) == pytest.approx(100)  # each alone: 16.7, 100.2 in all
    assert percentages([0.5, 0.25, 0.25], 2) == ["50.00", "25.00", "25.00"]


def test_exits_takes_threads_and_prints_each_designs_head_cost_at_the_input_shape(tmp_path, capsys):
    (tmp_path / "backbone.py").write_text(BACKBONE)
    backbone = f"{tmp_path / 'backbone.py'}:make"
    for shape in ("3,16,16", "3,32,32"):
        assert main(["exits", "--backbone", backbone, "--input-shape", shape, "--exits", "1,4,6",
                     "--threads", "1"]) == 0
        line = capsys.readouterr().out.strip().splitlines()[-1]
        side = int(shape.split(",")[-1])
        expected = []
        for design in ("paper", "conv", "ztw"):
            spec = ModelSpec(factory=backbone, num_classes=10, input_shape=(3, side, side), exits=("1", "4", "6"),
                             ic=design)
            net = build_sdn(spec)
            expected.append(f"{design} {100 * (net.exit_flops[-1] - net.backbone_flops) / net.backbone_flops:.1f} %")
        assert line == f"the 3 heads add to the backbone's cost at 3x{side}x{side}, by --ic design: " + ", ".join(expected)


def test_dir_lists_each_public_name_once():
    shallowdeep.attach  # noqa: B018 - an imported name stays listed once
    assert dir(shallowdeep) == sorted([*shallowdeep.__all__, "__version__"])
