"""The tracing escape hatch: a model torch.fx cannot trace until one module is a leaf (or one function is
autowrapped) attaches with ``leaf_modules`` / ``autowrap_functions`` and ``--leaf-module``, the error says which to
use, and a run records them and uses them again when it is loaded."""

from __future__ import annotations

import importlib.util
import json
import warnings

import pytest
import torch

import shallowdeep
from shallowdeep.build import build_sdn
from shallowdeep.cli import main
from shallowdeep.errors import UserError
from shallowdeep.model_spec import ModelSpec
from shallowdeep.sdn import backbone_state

GATED = '''
import torch
from torch import nn


class Gate(nn.Module):
    """Doubles its input when the batch's mean is positive: Python control flow on a tensor's value."""

    def forward(self, x):
        if x.mean() > 0:
            return x * 2
        return x


def clip_large(x):
    if x.abs().max() > 1:
        return x / x.abs().max()
    return x


class Net(nn.Module):
    def __init__(self, wrap=False):
        super().__init__()
        self.wrap = wrap
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.gate = Gate()
        self.body = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1, stride=2), nn.ReLU(),
                                  nn.Conv2d(16, 16, 3, padding=1, stride=2), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))

    def forward(self, x):
        x = self.stem(x)
        x = clip_large(x) if self.wrap else self.gate(x)
        return self.head(self.body(x))


def make():
    return Net()
'''
SHAPE = (3, 16, 16)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def gated(tmp_path):
    """The file defining the model, and the module it makes."""
    path = tmp_path / "gated.py"
    path.write_text(GATED)
    spec = importlib.util.spec_from_file_location("gated_model", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return path, module


def attached(model, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # few cut points: placement notes
        return shallowdeep.attach(model, SHAPE, 10, **kwargs).eval()


def outputs_agree(net, model) -> bool:
    """The SDN's final output equals the model's own on inputs that take each branch of the gate."""
    model.eval()
    with torch.no_grad():
        xs = [torch.rand(4, *SHAPE) * 5, -torch.rand(4, *SHAPE) * 5]
        return all(torch.equal(net(x)[-1], model(x)) for x in xs)


def test_untraceable_until_its_module_is_a_leaf(gated):
    _, m = gated
    with pytest.raises(UserError, match=r"torch.fx could not trace .* in Gate\.forward; .*leaf_modules=\['Gate'\]"):
        attached(m.Net())
    for leaf in ("Gate", m.Gate, "gated_model.Gate"):  # a name, the class, its full import path
        model = m.Net()
        net = attached(model, leaf_modules=[leaf])
        assert "gate" in net.exit_names and outputs_agree(net, model)


def test_untraceable_until_its_function_is_autowrapped(gated):
    _, m = gated
    with pytest.raises(UserError, match=r"in the function clip_large .*autowrap_functions=\['clip_large'\]"):
        attached(m.Net(wrap=True))
    for function in ("clip_large", m.clip_large):
        model = m.Net(wrap=True)
        assert outputs_agree(attached(model, autowrap_functions=[function]), model)


def test_names_that_match_nothing_are_one_line(gated):
    _, m = gated
    with pytest.raises(UserError, match="leaf module 'Gat' is no class of the model's modules"):
        attached(m.Net(), leaf_modules=["Gat"])
    with pytest.raises(UserError, match="autowrap function 'clip' is no function"):
        attached(m.Net(wrap=True), autowrap_functions=["clip"])
    with pytest.raises(UserError, match="leaf_modules must be names, classes or functions"):
        ModelSpec(arch="resnet56", leaf_modules=[3])


def test_a_spec_records_its_leaf_modules_and_builds_with_them(gated):
    path, m = gated
    spec = ModelSpec(factory=f"{path}:make", num_classes=10, input_shape=SHAPE, leaf_modules=[m.Gate])
    assert spec.leaf_modules == ("Gate",)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = build_sdn(spec)
    saved = net.spec.to_dict()
    assert saved["leaf_modules"] == ["Gate"] and "autowrap_functions" not in saved
    assert ModelSpec.from_dict(json.loads(json.dumps(saved))) == net.spec
    with pytest.raises(UserError, match=r"leaf_modules=\['Gate'\]"):
        build_sdn(ModelSpec(factory=f"{path}:make", num_classes=10, input_shape=SHAPE))


def test_the_exits_command_names_the_option_and_takes_it(gated, capsys):
    path, _ = gated
    command = ["exits", "--backbone", f"{path}:make", "--input-shape", "3,16,16"]
    assert main(command) == 2
    err = capsys.readouterr().err
    assert "leaf_modules=['Gate']" in err and "(--leaf-module)" in err and len(err.strip().splitlines()) == 1
    assert main([*command, "--leaf-module", "Gate"]) == 0
    assert "gate" in capsys.readouterr().out


@pytest.mark.slow
def test_a_run_trained_with_a_leaf_module_records_it_and_loads(gated, tmp_path, capsys):
    path, m = gated
    out = tmp_path / "run"
    assert main(["train", "--mode", "sdn", "--backbone", f"{path}:make", "--leaf-module", "Gate", "--dataset", "digits",
                 "--epochs", "1", "--limit", "64", "--threads", "1", "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["leaf_modules"] == ["Gate"]
    net = shallowdeep.load(out).net
    assert "gate" in net.exit_names
    model = m.Net()  # the backbone with the run's weights, run as itself
    model.load_state_dict(backbone_state(net.state_dict()))
    assert outputs_agree(net, model)
    assert main(["evaluate", str(out)]) == 0
