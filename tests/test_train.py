"""Training modes: IC-only leaves the backbone untouched, cached features train the same ICs as
streaming, an interrupted run resumes to the same weights, NaN losses stop cleanly."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from conftest import sigterm_in
from shallowdeep.build import build_sdn, extract_state_dict
from shallowdeep.data import load_dataset
from shallowdeep.errors import SettingError, UserError
from shallowdeep.heads import ICDesign
from shallowdeep.model_spec import ModelSpec
from shallowdeep.run import open_run
from shallowdeep.train import Interrupted, Recipe, TrainConfig, new_run, resume_run
from shallowdeep.train.sources import CachedMaps, StreamedImages, epoch_generator, epoch_seed
from shallowdeep.train.recipe import default_recipe, describe_recipe, resolve_recipe, sdn_ic_weights
from shallowdeep.train.trainer import exit_weights, train

DATA = {"name": "digits", "data_dir": None, "holdout_fraction": 0.1, "seed": 0, "limit": 192}
MODEL = ModelSpec(arch="resnet56")
CPU = torch.device("cpu")


def quick(mode: str, epochs: int = 1, lr: float | None = None) -> TrainConfig:
    recipe = Recipe("adam" if mode == "ic-only" else "sgd", lr or (1e-3 if mode == "ic-only" else 0.02), epochs, [],
                    batch_size=64)
    return TrainConfig(mode, recipe, seed=3)


@pytest.fixture(scope="module")
def cnn_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "cnn"
    new_run(out, DATA, MODEL, quick("cnn"), device=CPU)
    return out


def test_recipes_and_growing_ic_weights():
    assert default_recipe("cnn", 1e-4).lr_at(34) == 0.1 and default_recipe("cnn", 1e-4).lr_at(35) == pytest.approx(0.01)
    assert default_recipe("ic-only", 5e-4).lr_at(15) == pytest.approx(1e-4)
    c = [0.15, 0.3, 0.45, 0.6, 0.75, 0.9]
    assert sdn_ic_weights(0, 10, c) == pytest.approx([0.01] * 6)
    assert sdn_ic_weights(9, 10, c) == pytest.approx(c)
    mid = sdn_ic_weights(3, 7, c)
    assert mid == pytest.approx([0.01 + (x - 0.01) / 2 for x in c])


@pytest.mark.slow
def test_ic_only_keeps_the_backbone_exactly(cnn_run, tmp_path):
    out = tmp_path / "ic"
    new_run(out, DATA, ModelSpec(), quick("ic-only", epochs=2), pretrained=str(cnn_run), device=CPU)
    before, after = open_run(cnn_run).load_net(), open_run(out).load_net()
    b_state = extract_state_dict(before.state_dict())
    a_state = extract_state_dict(after.state_dict())
    assert b_state.keys() == a_state.keys()
    assert all(torch.equal(b_state[k], a_state[k]) for k in b_state)  # BN running stats included
    x = torch.randn(8, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(before(x)[-1], after(x)[-1])
    assert len(before.ics) == 0 and len(after.ics) == 6
    assert len(open_run(out).read_metrics()) == 2


@pytest.mark.slow
@pytest.mark.parametrize("design", ("paper", "conv", "ztw"))
def test_cached_features_train_the_same_ics_as_streaming(cnn_run, tmp_path, design):
    splits = load_dataset(**DATA)
    ckpt = open_run(cnn_run).load_checkpoint()
    nets = []
    for name in ("stream", "cache"):
        torch.manual_seed(0)
        net = build_sdn(replace(MODEL.with_data(10, (3, 16, 16)), ic=ICDesign(design, 16)))
        state = {k: v for k, v in ckpt["model"].items() if k.startswith("segments.")}
        net.load_state_dict(state, strict=False)
        cfg = quick("ic-only", epochs=2)
        cfg.cache_views = 2
        (tmp_path / name).mkdir()
        if name == "stream":
            train(tmp_path / name, net, StreamedImages(splits), cfg, CPU)
        else:
            train(tmp_path / name, net, CachedMaps(splits, torch.float32), cfg, CPU)
        nets.append(net)
    for (name, a), b in zip(nets[0].named_parameters(), nets[1].parameters()):  # the ztw ensemble included
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-3), name
    if design == "ztw":
        assert not torch.equal(nets[0].ensemble.bias, torch.zeros_like(nets[0].ensemble.bias))  # fitted


@pytest.mark.slow
def test_interrupted_run_resumes_to_the_same_weights(tmp_path):
    cfg = quick("sdn", epochs=2)
    new_run(tmp_path / "whole", DATA, MODEL, cfg, device=CPU)

    with pytest.raises(Interrupted):
        new_run(tmp_path / "cut", DATA, MODEL, quick("sdn", epochs=2), device=CPU, progress=sigterm_in(2))
    assert open_run(tmp_path / "cut").load_checkpoint()["step"] == 2
    resume_run(tmp_path / "cut", device=CPU)
    whole = open_run(tmp_path / "whole").load_checkpoint()["model"]
    cut = open_run(tmp_path / "cut").load_checkpoint()["model"]
    assert all(torch.equal(whole[k], cut[k]) for k in whole)
    assert len(open_run(tmp_path / "cut").read_metrics()) == 2


@pytest.mark.slow
def test_nan_loss_stops_with_a_clear_error_and_keeps_nothing_half_written(tmp_path):
    with pytest.raises(UserError, match="learning rate"):
        new_run(tmp_path / "nan", DATA, MODEL, quick("cnn", lr=1e30), device=CPU)
    assert not (tmp_path / "nan" / "checkpoint.pt").exists()
    with pytest.raises(UserError, match="stopped before its first epoch ended; start it again"):
        resume_run(tmp_path / "nan", device=CPU)
    new_run(tmp_path / "nan", DATA, MODEL, quick("cnn"), device=CPU)  # a failed start does not block a retry
    assert open_run(tmp_path / "nan").config["train"]["recipe"]["lr"] != 1e30
    with pytest.raises(UserError, match="already holds a run"):
        new_run(tmp_path / "nan", DATA, MODEL, quick("cnn"), device=CPU)


@pytest.mark.slow
@pytest.mark.parametrize("source", (StreamedImages, CachedMaps))
def test_a_nan_loss_stops_both_batch_sources_before_saving(cnn_run, tmp_path, source):
    splits = load_dataset(**DATA)
    net = build_sdn(MODEL.with_data(10, (3, 16, 16)))
    net.load_state_dict(open_run(cnn_run).load_checkpoint()["model"], strict=False)
    with torch.no_grad():
        next(net.ics[2].parameters()).fill_(float("nan"))
    with pytest.raises(UserError, match="loss became nan at epoch 1, batch 1"):
        train(tmp_path, net, source(splits), quick("ic-only"), CPU)
    assert not (tmp_path / "checkpoint.pt").exists()


@pytest.mark.slow
def test_the_recipe_is_resolved_after_the_backbone_of_the_source_run(tmp_path):
    data = dict(DATA, limit=64)
    vgg = tmp_path / "vgg"
    new_run(vgg, data, ModelSpec(arch="vgg16_bn"), TrainConfig("cnn", seed=0),
            recipe_changes={"epochs": 1, "batch_size": 64}, device=CPU)
    assert open_run(vgg).config["train"]["recipe"]["weight_decay"] == 5e-4
    seen = []
    new_run(tmp_path / "ic", data, ModelSpec(), TrainConfig("ic-only", seed=0),
            recipe_changes={"epochs": 1, "milestones": []}, pretrained=str(vgg), device=CPU, on_start=seen.append)
    recipe = open_run(tmp_path / "ic").config["train"]["recipe"]
    assert recipe["weight_decay"] == 5e-4 and recipe["optimizer"] == "adam" and recipe["milestones"] == []
    summary = "\n".join(seen[0])
    assert "mode: ic-only; recipe: adam lr 0.001, 1 epochs" in summary and "weight decay 0.0005" in summary
    assert "data: digits, 64 train" in summary and "10 classes, 3x16x16" in summary
    assert re.search(r"exits: 6 'paper' ICs at (\d+\.\d )+% of the backbone's cost", summary)
    assert "batches: the ICs' inputs cached in memory" in summary


@pytest.mark.parametrize("changes, message", [
    ({"lr": float("nan")}, "lr nan is out of range"), ({"weight_decay": -1.0}, "weight_decay -1.0"),
    ({"momentum": -0.5}, "momentum -0.5"), ({"epochs": 0}, "epochs must be at least 1"),
    ({"milestones": [0]}, "milestones [0]"),
])
def test_recipe_values_out_of_range_are_refused_in_one_line_naming_the_setting(changes, message):
    with pytest.raises(SettingError, match=re.escape(message)) as refused:
        resolve_recipe("cnn", 1e-4, changes)
    assert refused.value.settings == tuple(changes)


def test_resolve_recipe_rescales_milestones_then_applies_the_users_values():
    r = resolve_recipe("cnn", 1e-4, {"epochs": 10, "lr": 0.01, "momentum": None, "schedule": "paper"})
    assert (r.epochs, r.milestones, r.lr, r.momentum) == (10, [4, 6, 8], 0.01, 0.9)
    assert "lr x0.1 at epochs 4, 6, 8" in describe_recipe(r)


def test_uniform_ic_loss_weighs_every_exit_one_from_the_first_epoch():
    recipe = Recipe("sgd", 0.1, 5, [])
    uniform = TrainConfig("sdn", recipe, ic_weights=[0.2, 0.5], ic_loss="uniform")
    growing = TrainConfig("sdn", recipe, ic_weights=[0.2, 0.5])
    assert exit_weights(uniform, 2, 0) == [1.0, 1.0, 1.0]
    assert exit_weights(growing, 2, 0) == pytest.approx([0.01, 0.01, 1.0])
    assert exit_weights(growing, 2, 4) == pytest.approx([0.2, 0.5, 1.0])


def test_an_epochs_shuffling_augmentation_and_dropout_are_seeded_by_one_formula():
    assert [epoch_seed(s, e) for s, e in ((0, 0), (0, 7), (2, 5))] == [0, 7, 2_000_011]
    expected = torch.rand(4, generator=torch.Generator().manual_seed(2_000_011))
    assert torch.equal(torch.rand(4, generator=epoch_generator(2, 5)), expected)
