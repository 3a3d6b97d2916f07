"""The run folder format: the model spec round-trips, format tags are checked, a user's backbone file is
copied into the run, one process at a time holds a run folder and nothing of the user's is overwritten."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from shallowdeep.build import build_sdn
from shallowdeep.errors import UserError
from shallowdeep.heads import ICDesign
from shallowdeep.model_spec import ModelSpec
from shallowdeep.run import CHECKPOINT_FORMAT, create_run, open_run, run_lock, write_checkpoint
from shallowdeep.outputs import load_outputs
from shallowdeep.train import Recipe, TrainConfig, new_run, resume_run

from test_data import write_image, write_imagefolder

CPU = torch.device("cpu")


def test_a_model_spec_round_trips_through_json(tmp_path):
    spec = ModelSpec(factory="nets/b.py:make", num_classes=7, input_shape=(1, 28, 28), exits=("a", "b"),
                     fractions=(0.3, 0.6), ic=ICDesign("conv", 32), base_dir=tmp_path)
    again = ModelSpec.from_dict(json.loads(json.dumps(spec.to_dict())), tmp_path)
    assert again == spec and again.factory_path == tmp_path / "nets" / "b.py"
    old = ModelSpec.from_dict({"arch": "resnet56", "num_classes": 10, "input_shape": [3, 32, 32], "exits": []})
    assert old.ic == ICDesign("paper") and old.fractions == (0.15, 0.3, 0.45, 0.6, 0.75, 0.9) and old.exits == ()


def test_a_damaged_or_contradictory_spec_is_one_line():
    with pytest.raises(UserError, match="not both"):
        ModelSpec(arch="resnet56", factory="b.py:f")
    with pytest.raises(UserError, match="must look like"):
        ModelSpec(factory="b.py")
    with pytest.raises(UserError, match="model description is damaged"):
        ModelSpec.from_dict({"arch": "resnet56", "input_shape": 3})
    for edit, message in [({"num_classes": "ten"}, "positive integer, got 'ten'"),
                          ({"input_shape": [3, -1]}, r"positive integers, got \[3, -1\]"),
                          ({"exits": [1]}, "module names"), ({"fractions": [0.5, 2]}, r"lie in \(0, 1\]")]:
        with pytest.raises(UserError, match=message):
            ModelSpec.from_dict({"arch": "resnet56", **edit})


def test_a_config_with_missing_sections_is_one_line(tmp_path):
    create_run(tmp_path, ModelSpec(arch="resnet56", num_classes=10, input_shape=(3, 16, 16)), {"data": None})
    with pytest.raises(UserError, match="lacks the 'model' or 'data' section"):
        open_run(tmp_path)
    create_run(tmp_path, ModelSpec(arch="resnet56", num_classes=10, input_shape=(3, 16, 16)), {"data": {}})
    write_checkpoint(tmp_path, {"model": {}, "epoch": 0}, [])
    with pytest.raises(UserError, match="'train' section of config.json is missing"):
        resume_run(tmp_path, device=torch.device("cpu"))


def test_create_run_copies_the_backbone_and_tags_the_format(tmp_path):
    (tmp_path / "mine.py").write_text("def make():\n    pass\n")
    saved = create_run(tmp_path / "run", ModelSpec(factory="mine.py:make", base_dir=tmp_path), {"data": {}})
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["format"] == "shallowdeep-run-1" and config["model"]["factory"] == "backbone.py:make"
    assert saved.factory_path == tmp_path / "run" / "backbone.py" and saved.factory_path.read_text().startswith("def")
    # training into the folder that holds the backbone keeps the user's file
    again = create_run(tmp_path / "run", saved, {"data": {}})
    assert again.factory_path.read_text().startswith("def")


def test_a_run_of_another_format_is_refused_naming_both_formats(tmp_path):
    create_run(tmp_path, ModelSpec(arch="resnet56"), {"data": {}})
    write_checkpoint(tmp_path, {"model": {}}, [{"epoch": 1}])
    assert open_run(tmp_path).load_checkpoint()["format"] == CHECKPOINT_FORMAT
    assert json.loads((tmp_path / "metrics.jsonl").read_text()) == {"epoch": 1}
    torch.save({"format": "shallowdeep-checkpoint-0", "model": {}}, tmp_path / "checkpoint.pt")
    with pytest.raises(UserError, match="format 'shallowdeep-checkpoint-0'.*reads 'shallowdeep-checkpoint-1'"):
        open_run(tmp_path).load_checkpoint()
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "format": "shallowdeep-run-9"}))
    with pytest.raises(UserError, match="format 'shallowdeep-run-9'"):
        open_run(tmp_path)


def test_a_run_without_a_format_tag_is_read_as_version_one(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"data": {}, "model": {"arch": "resnet56"}}))
    assert open_run(Path(tmp_path)).model.arch == "resnet56"


DATA = {"name": "digits", "data_dir": None, "holdout_fraction": 0.1, "seed": 0, "limit": 64}


def quick_cnn() -> TrainConfig:
    return TrainConfig("cnn", Recipe("sgd", 0.02, 1, [], batch_size=64))


def test_a_second_process_on_a_run_folder_is_refused_at_once(tmp_path):
    with run_lock(tmp_path / "run"):
        with pytest.raises(UserError, match="in use by another shallowdeep process"):
            new_run(tmp_path / "run", DATA, ModelSpec(arch="resnet56"), quick_cnn(), device=CPU)
    assert not (tmp_path / "run" / "config.json").exists()


def test_a_new_run_never_overwrites_the_users_files(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("mine\n")
    with pytest.raises(UserError, match=r"is not empty \(metrics.jsonl\)"):
        new_run(tmp_path, DATA, ModelSpec(arch="resnet56"), quick_cnn(), device=CPU)
    assert (tmp_path / "metrics.jsonl").read_text() == "mine\n"
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        new_run(tmp_path / "file", DATA, ModelSpec(arch="resnet56"), quick_cnn(), device=CPU)


@pytest.mark.slow
def test_weights_holding_nan_are_refused_in_one_line(tmp_path):
    net = build_sdn(ModelSpec(arch="resnet56", num_classes=10, input_shape=(3, 16, 16), exits=()))
    state = net.state_dict()
    first = next(k for k, v in state.items() if v.is_floating_point())
    state[first] = torch.full_like(state[first], float("nan"))
    torch.save(state, tmp_path / "nan.pt")
    with pytest.raises(UserError, match="hold NaN or infinite values"):
        new_run(tmp_path / "ic", DATA, ModelSpec(arch="resnet56"), TrainConfig("ic-only"),
                pretrained=str(tmp_path / "nan.pt"), device=CPU)
    assert not (tmp_path / "ic").exists()  # a start that failed leaves no folder behind


@pytest.mark.slow
def test_a_run_notices_when_its_data_changed_under_it(tmp_path):
    write_imagefolder(tmp_path / "data", per_class=4, size=16)
    data = {"name": "imagefolder", "data_dir": str(tmp_path / "data"), "holdout_fraction": 0.25, "seed": 0}
    new_run(tmp_path / "run", data, ModelSpec(arch="resnet56"), quick_cnn(), device=CPU)
    run = open_run(tmp_path / "run")
    assert run.config["data_record"]["classes"] == ["apple", "banana", "cherry"]
    assert len(load_outputs(run, "test").labels) == 12
    write_image(tmp_path / "data" / "test" / "apple" / "new.png", np.zeros((16, 16, 3), np.uint8))
    assert len(load_outputs(run, "test").labels) == 13  # new test images are not hidden by the cache
    for split in ("train", "test"):
        write_image(tmp_path / "data" / split / "date" / "0.png", np.zeros((16, 16, 3), np.uint8))
    with pytest.raises(UserError, match="classes of this data set differ.*added date.*every label would shift"):
        load_outputs(run, "test")


def test_a_runs_backbone_file_must_be_its_own_and_unchanged(tmp_path, monkeypatch):
    (tmp_path / "mine.py").write_text("def make():\n    pass\n")
    create_run(tmp_path / "run", ModelSpec(factory="mine.py:make", base_dir=tmp_path), {"data": {}})
    run = open_run(tmp_path / "run")
    assert run.model.factory == "backbone.py:make"
    (tmp_path / "run" / "backbone.py").write_text("import os\ndef make():\n    pass\n")
    with pytest.raises(UserError, match="changed since the run was made; .*SHALLOWDEEP_TRUST_CODE=1"):
        open_run(tmp_path / "run").model
    monkeypatch.setenv("SHALLOWDEEP_TRUST_CODE", "1")
    assert open_run(tmp_path / "run").model.factory == "backbone.py:make"
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    config["model"]["factory"] = "../mine.py:make"
    (tmp_path / "run" / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="outside the run folder"):
        open_run(tmp_path / "run").model


@pytest.mark.parametrize("tamper", ["one exit fewer", "other classes", "short labels", "nan logits", "not npz"])
def test_edited_per_exit_outputs_are_computed_again(tmp_path_factory, tamper):
    from test_analysis import shared_tiny_run

    run = open_run(shared_tiny_run(tmp_path_factory))
    true = load_outputs(run, "test")
    path = run.path / "outputs" / "test.npz"
    original = path.read_bytes()
    with np.load(path, allow_pickle=False) as f:
        arrays = dict(f)
    edits = {"one exit fewer": lambda a: {"logits": a["logits"][1:], "exit_flops": a["exit_flops"][1:]},
             "other classes": lambda a: {"logits": a["logits"][:, :, :5]},
             "short labels": lambda a: {"logits": a["logits"][:, :-1], "labels": a["labels"][:-1]},
             "nan logits": lambda a: {"logits": np.where(np.arange(a["logits"].shape[1])[None, :, None] == 3,
                                                         np.nan, a["logits"]).astype(np.float32)}}
    try:
        if tamper == "not npz":
            path.write_bytes(b"garbage")
        else:
            np.savez(path, **{**arrays, **edits[tamper](arrays)})
        again = load_outputs(run, "test")
        assert np.array_equal(again.logits, true.logits) and np.array_equal(again.labels, true.labels)
        assert np.array_equal(again.exit_flops, true.exit_flops)
    finally:
        path.write_bytes(original)


@pytest.mark.slow
def test_computing_outputs_waits_for_another_process_that_computes_them(tmp_path_factory):
    """While another process holds the outputs' lock, a second one waits; then it computes them once."""
    import subprocess
    import sys
    import time

    from shallowdeep.io import file_lock
    from test_analysis import shared_tiny_run

    run_dir = shared_tiny_run(tmp_path_factory)
    (run_dir / "outputs").mkdir(exist_ok=True)
    (run_dir / "outputs" / "holdout.npz").unlink(missing_ok=True)
    code = "import sys; from shallowdeep.outputs import load_outputs; from shallowdeep.run import open_run; " \
           "load_outputs(open_run(sys.argv[1]), 'holdout')"
    with file_lock(run_dir / "outputs" / ".lock"):
        proc = subprocess.Popen([sys.executable, "-c", code, str(run_dir)])
        time.sleep(8)  # far longer than the tiny run's outputs take
        assert proc.poll() is None and not (run_dir / "outputs" / "holdout.npz").exists()
    assert proc.wait(timeout=300) == 0 and (run_dir / "outputs" / "holdout.npz").is_file()


def test_a_library_backbone_round_trips_and_is_checked(monkeypatch):
    spec = ModelSpec(library="timm:resnet18", model_kwargs={"drop_path_rate": 0.1}, num_classes=10,
                     input_shape=(3, 16, 16))
    assert ModelSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    with pytest.raises(UserError, match="must look like torchvision or timm:NAME"):
        ModelSpec(library="keras:resnet")
    with pytest.raises(UserError, match="give one backbone"):
        ModelSpec(arch="resnet56", library="timm:resnet18")
    import importlib

    from shallowdeep.library_models import create_library_model

    def missing(name, *args):
        raise ImportError(name)

    monkeypatch.setattr(importlib, "import_module", missing)
    with pytest.raises(UserError, match=r"needs timm: pip install 'shallowdeep\[vision\]'"):
        create_library_model("timm:resnet18", 10)
