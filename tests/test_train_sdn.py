"""``shallowdeep.train_sdn``: an attached network trained from Python on a DataLoader, with the training loop of
the command line, into a run folder the commands read; the README's example runs as written (smaller)."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import shallowdeep
from conftest import REPO, TINY_CNN, write_tiny_cnn
from shallowdeep.build import build_sdn, load_factory
from shallowdeep.cli import main
from shallowdeep.data import load_dataset
from shallowdeep.data.loader import batches
from shallowdeep.errors import UserError
from shallowdeep.heads import ICDesign
from shallowdeep.model_spec import ModelSpec
from shallowdeep.run import open_run

DATA = {"name": "digits", "data_dir": None, "limit": 64}

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def tiny(tmp_path) -> ModelSpec:
    return ModelSpec(factory=write_tiny_cnn(tmp_path), num_classes=10, input_shape=(3, 16, 16), exits=("2", "5"))


def digits_loader(split: str = "train") -> DataLoader:
    splits = load_dataset(**DATA)
    data = getattr(splits, split)
    x, y = next(batches(data, splits.spec, len(data), train=False, shuffle=False, device="cpu"))
    return DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True)


def test_the_readme_example_runs(tmp_path, monkeypatch):
    block = next(b for b in re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), re.S)
                 if "train_sdn(" in b)
    for old, new in (("512", "32"), ("epochs=4", "epochs=1"), ("batch_size=64", "batch_size=16")):
        assert old in block
        block = block.replace(old, new)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(block, scope)
    assert len(scope["metrics"]) == 1 and len(scope["metrics"][0]["holdout_acc"]) == len(scope["net"].ics) + 1
    with torch.no_grad():
        ours, theirs = scope["net"](scope["images"][:4]), scope["clf"].net(scope["images"][:4])
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))
    assert scope["clf"].class_names == [str(i) for i in range(10)] and list(scope["clf"].mean) == [0.5] * 3
    assert not any(p.requires_grad for p in scope["net"].segments.parameters())  # ic-only: the backbone frozen


def test_a_run_on_a_loader_of_a_named_data_set_works_with_the_commands(tmp_path, tiny, capsys):
    net = build_sdn(tiny)
    backbone = {k: v.clone() for k, v in net.segments.state_dict().items()}
    out = tmp_path / "run"
    net, metrics = shallowdeep.train_sdn(net, digits_loader(), mode="ic-only", epochs=1, out=out, data=DATA)
    assert all(torch.equal(v, net.segments.state_dict()[k]) for k, v in backbone.items())
    assert open_run(out).config["train"]["recipe"]["schedule"] == "short"
    assert main(["evaluate", str(out)]) == 0 and (out / "eval-test.json").is_file()
    assert main(["train", "--out", str(out), "--resume"]) == 2
    assert "the command line cannot continue it" in capsys.readouterr().err


def test_a_run_without_a_folder_and_bad_input(tmp_path, tiny):
    train = digits_loader()
    net, metrics = shallowdeep.train_sdn(build_sdn(tiny), train, mode="sdn", epochs=2, lr=0.05)
    assert [m["epoch"] for m in metrics] == [1, 2] and not net.training and metrics[1]["lr"] < metrics[0]["lr"]
    ztw, _ = shallowdeep.train_sdn(build_sdn(replace(tiny, ic=ICDesign("ztw", 8))), train, epochs=1)
    assert ztw.ensemble.bias.abs().sum() > 0  # the exit ensemble fitted on the loader's batches
    attached = shallowdeep.attach(load_factory(tiny)(), (3, 16, 16), 10, exits=tiny.exits)
    other = ModelSpec(factory=write_tiny_cnn(tmp_path, "wider.py", TINY_CNN.replace("8", "12")))
    with pytest.raises(UserError, match="trains an SDN, not a Linear"):
        shallowdeep.train_sdn(torch.nn.Linear(2, 2), train)
    with pytest.raises(UserError, match="unknown mode 'cnn'"):
        shallowdeep.train_sdn(build_sdn(tiny), train, mode="cnn")
    with pytest.raises(UserError, match=r"out= needs spec=ModelSpec\(...\)"):
        shallowdeep.train_sdn(attached, train, out=tmp_path / "a")
    with pytest.raises(UserError, match="the spec does not build this network again"):
        shallowdeep.train_sdn(build_sdn(tiny), train, out=tmp_path / "b", spec=other)
    with pytest.raises(UserError, match="images must be a float tensor"):
        shallowdeep.train_sdn(build_sdn(tiny), [(torch.zeros(2, 3, 16, 16, dtype=torch.uint8), torch.zeros(2))])
    images = torch.zeros(2, 3, 16, 16)
    with pytest.raises(UserError, match="must give \\(images, labels\\) batches, got a dict"):
        shallowdeep.train_sdn(build_sdn(tiny), [{"image": images, "label": torch.zeros(2, dtype=torch.long)}])
    with pytest.raises(UserError, match="training loader's labels go from 0 to 10, but the network has 10 classes"):
        shallowdeep.train_sdn(build_sdn(tiny), [(images, torch.tensor([0, 10]))])
    later = [(images, torch.tensor([0, 1])), (images, torch.tensor([-1, 1]))]  # every batch is checked
    with pytest.raises(UserError, match="training loader's labels go from -1 to 1"):
        shallowdeep.train_sdn(build_sdn(tiny), later, epochs=1)
    with pytest.raises(UserError, match="validation loader's labels go from 0 to 12"):
        shallowdeep.train_sdn(build_sdn(tiny), later[:1], epochs=1, val_loader=[(images, torch.tensor([0, 12]))])
    with pytest.raises(UserError, match="the data set is normalised with mean"):
        shallowdeep.train_sdn(build_sdn(tiny), train, out=tmp_path / "c", data=DATA, mean=(0.5, 0.5, 0.5))
