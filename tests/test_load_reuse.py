"""Loading a run reuses what attaching its exits found (cut points, shapes, layouts, FLOPs: the run's stored
analysis) with one trace of the backbone and no pass over its graph; a run without one (made before it was stored),
or whose analysis was made for another graph, version or spec, is analysed again; a damaged one is one line."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import pytest
import torch
import torch.fx
from torch.utils.data import DataLoader, TensorDataset

from conftest import TINY_CNN
import shallowdeep
from shallowdeep.build import build_sdn
from shallowdeep.errors import UserError
from shallowdeep.mode_graphs import ModeSegment
from shallowdeep.model_spec import ModelSpec
from shallowdeep.run import open_run
from shallowdeep.train import Recipe, TrainConfig, new_run

DROPOUT = """
import torch.nn.functional as F
from torch import nn

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1, stride=2), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))

    def forward(self, x):
        return self.head(F.dropout(self.b(self.a(x)), 0.5, self.training))  # traced apart in train mode

def make():
    return Net()
"""
DATA = {"name": "digits", "data_dir": None, "limit": 64}

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A small SDN run and the reference SDN: built by analysing the backbone afresh, with the run's weights."""
    folder = tmp_path_factory.mktemp("load-reuse")
    (folder / "tiny.py").write_text(TINY_CNN)
    run = folder / "run"
    new_run(run, DATA, ModelSpec(factory=f"{folder / 'tiny.py'}:make", exits=("2", "5")),
            TrainConfig("sdn", Recipe("sgd", 0.02, 1, [], batch_size=64)), device=torch.device("cpu"))
    opened = open_run(run)
    reference = build_sdn(replace(opened.model, analysis=None))
    reference.load_state_dict(opened.load_checkpoint()["model"])
    return run, reference.eval()


@pytest.fixture
def run_copy(made, tmp_path):
    """A copy of the run, and a function that edits its stored analysis."""
    run = tmp_path / "run"
    shutil.copytree(made[0], run)

    def edit(change) -> None:
        config = json.loads((run / "config.json").read_text())
        change(config["model"])
        (run / "config.json").write_text(json.dumps(config))

    return run, edit


@pytest.fixture
def counted(monkeypatch):
    """How often torch.fx traces a model and interprets a graph node by node (shapes, FLOPs, identities)."""
    calls = {"traces": 0, "passes": 0}

    def counting(name, key):
        original = getattr(torch.fx.Tracer if name == "trace" else torch.fx.Interpreter, name)

        def wrapper(*args, **kwargs):
            calls[key] += 1
            return original(*args, **kwargs)
        monkeypatch.setattr(torch.fx.Tracer if name == "trace" else torch.fx.Interpreter, name, wrapper)

    counting("trace", "traces")
    counting("run", "passes")
    return calls


def same_network(net, reference) -> bool:
    """The same exits, costs and outputs of every exit on an input."""
    x = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        outputs = zip(net.eval()(x), reference(x))
        return (net.exit_names == reference.exit_names and net.exit_flops == reference.exit_flops
                and net.backbone_flops == reference.backbone_flops and all(torch.equal(a, b) for a, b in outputs))


def test_a_run_stores_its_analysis_and_load_reuses_it(made, counted):
    run, reference = made
    analysis = json.loads((run / "config.json").read_text())["model"]["analysis"]
    assert analysis["version"] == 1 and [e["name"] for e in analysis["exits"]] == ["2", "5"]
    assert analysis["exit_flops"] == reference.exit_flops and analysis["train_graph"] is False
    net = shallowdeep.load(run).net
    assert counted == {"traces": 1, "passes": 0}
    assert same_network(net, reference)


def test_a_run_trained_from_python_keeps_its_analysis_too(tmp_path, counted):
    (tmp_path / "tiny.py").write_text(TINY_CNN)
    spec = ModelSpec(factory=f"{tmp_path / 'tiny.py'}:make", num_classes=10, input_shape=(3, 16, 16), exits=("2", "5"))
    images, labels = torch.randn(16, 3, 16, 16), torch.randint(0, 10, (16,))
    loader = DataLoader(TensorDataset(images, labels), batch_size=8)
    net, _ = shallowdeep.train_sdn(build_sdn(spec), loader, epochs=1, out=tmp_path / "run", mean=(0.5,) * 3,
                                   std=(0.25,) * 3)
    counted.update(traces=0, passes=0)
    loaded = shallowdeep.load(tmp_path / "run").net
    assert counted == {"traces": 1, "passes": 0} and same_network(loaded, net)


def test_a_run_made_before_analyses_were_stored_still_loads(run_copy, made, counted):
    run, edit = run_copy
    edit(lambda model: model.pop("analysis"))
    assert same_network(shallowdeep.load(run).net, made[1])
    assert counted["traces"] == 2 and counted["passes"] == 2  # eval and train mode; shapes+FLOPs and identities


@pytest.mark.parametrize("change", [
    lambda a: a.update(version=99),  # another version of the format
    lambda a: a.update(graph="0" * 16),  # another graph: another torch, or an edited backbone
    lambda a: a.update(spec="0" * 16),  # made for another spec
    lambda a: a["exits"][0].update(node=0),  # a node where the graph cannot be cut (its input)
])
def test_an_analysis_that_does_not_fit_is_made_again(run_copy, made, counted, change):
    run, edit = run_copy
    edit(lambda model: change(model["analysis"]))
    assert same_network(shallowdeep.load(run).net, made[1])
    assert counted["passes"] == 2


def test_an_analysis_for_other_exits_is_not_used(run_copy, counted):
    run, edit = run_copy
    edit(lambda model: model.update(exits=["5"]))  # the ICs' weights no longer fit, but the exits are analysed again
    with pytest.raises(UserError, match="does not match the model in config.json"):
        shallowdeep.load(run)
    assert counted["passes"] == 2


@pytest.mark.parametrize("damage, said", [
    (lambda a: a.update(exit_flops="many"), "exit_flops"),
    (lambda a: a["exits"][1].update(shape=[16, -4, 4]), "an exit's shape"),
    (lambda a: a.pop("train_graph"), "train_graph"),
])
def test_a_damaged_analysis_is_one_line(run_copy, damage, said):
    run, edit = run_copy
    edit(lambda model: damage(model["analysis"]))
    with pytest.raises(UserError, match=f"stored analysis is damaged \\({said}: missing or malformed\\)") as caught:
        shallowdeep.load(run)
    assert "\n" not in str(caught.value)


def test_a_backbone_with_its_own_train_mode_code_is_traced_in_both_modes(tmp_path, counted):
    (tmp_path / "dropout.py").write_text(DROPOUT)
    spec = ModelSpec(factory=f"{tmp_path / 'dropout.py'}:make", num_classes=10, input_shape=(3, 16, 16), exits=("a",))
    made = build_sdn(spec)
    assert made.spec.analysis["train_graph"] is True
    counted.update(traces=0, passes=0)
    rebuilt = build_sdn(made.spec)
    assert counted == {"traces": 2, "passes": 0}
    assert isinstance(rebuilt.segments[-1], ModeSegment)
    rebuilt.load_state_dict(made.state_dict())
    x = torch.randn(4, 3, 16, 16)
    outputs = []
    for net in (made.train(), rebuilt.train()):  # dropout in train mode, from the same seed
        torch.manual_seed(1)
        outputs.append(net(x)[-1])
    assert torch.equal(*outputs) and not torch.equal(outputs[0], made.eval()(x)[-1])
