"""IC designs (paper, conv, ztw): FLOPs by hand, the final output untouched, cascading and the geometric
ensemble by their definitions, the engine equal to one-by-one, and every command on a ztw run (cached and
streamed training of every design: tests/test_train.py)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from shallowdeep.surgery import attach
from shallowdeep.cli import main
from shallowdeep.errors import UserError
from shallowdeep.exits import early_exit
from shallowdeep.heads import ConvHead, GeometricEnsemble, ICDesign
from shallowdeep.model_spec import ModelSpec
from shallowdeep.run import open_run
from shallowdeep.train import Recipe, TrainConfig, new_run
from shallowdeep.train.ensemble import fit_ensemble

from conftest import load_example

DATA = {"name": "digits", "data_dir": None, "holdout_fraction": 0.1, "seed": 0, "limit": 160}
CPU = torch.device("cpu")
DESIGNS = ("paper", "conv", "ztw")


@pytest.fixture(scope="module")
def resnet20():
    torch.manual_seed(0)
    return load_example().resnet20().eval()


def conv_head_flops(c: int, h: int, w: int, width: int, classes: int, cascade: int = 0) -> int:
    """FLOPs of a conv head by hand: pooling to <= 8x8, 3x3 conv, strided 3x3 conv, linear (2 per MAC)."""
    h, w = min(h, 8), min(w, 8)
    stride = 2 if min(h, w) > 4 else 1
    oh, ow = (h - 1) // stride + 1, (w - 1) // stride + 1
    macs = c * width * 9 * h * w + width * width * 9 * oh * ow + (width * oh * ow + cascade) * classes
    return 2 * macs


@pytest.mark.parametrize("design", DESIGNS)
def test_every_design_keeps_the_final_output_and_counts_its_heads(resnet20, design, one_thread):
    net = attach(resnet20, (3, 32, 32), 10, ic=design).eval()
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        outs = net.exit_logits(x)
        assert torch.equal(outs[-1], resnet20(x))
    assert len(outs) == 7 and all(o.shape == (5, 10) for o in outs)
    shapes = [tuple(m.shape[1:]) for m in net.features(x[:1])[0]]
    if design == "paper":
        heads = [2 * (c * min(h, 4) * min(w, 4)) * 10 for c, h, w in shapes]
    else:
        heads = [conv_head_flops(c, h, w, 64, 10, cascade=10 if design == "ztw" and i else 0)
                 for i, (c, h, w) in enumerate(shapes)]
    backbone_to_exit = [f - sum(heads[: i + 1]) for i, f in enumerate(net.exit_flops[:-1])]
    assert net.exit_flops[-1] == net.backbone_flops + sum(heads)
    assert all(0 < a < b for a, b in zip(backbone_to_exit, backbone_to_exit[1:]))  # heads subtracted exactly


def test_cascading_heads_read_the_previous_ics_probabilities(resnet20):
    torch.manual_seed(1)
    net = attach(resnet20, (3, 32, 32), 10, ic="ztw").eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        maps, _ = net.features(x)
        raws = net(x)[:-1]
        head = net.ics[2]
        assert isinstance(head, ConvHead) and head.cascade_classes == 10 and net.ics[0].cascade_classes == 0
        features = head.body(torch.lerp(*reversed(head.reduce(maps[2])), head.alpha) if head.alpha is not None
                             else maps[2]).flatten(1)
        by_hand = head.linear(torch.cat([features, torch.softmax(raws[1], 1)], 1))
        assert torch.allclose(raws[2], by_hand, atol=1e-5)
    with pytest.raises(ValueError, match="previous IC"):
        head(maps[2])


def test_geometric_ensemble_is_a_weighted_geometric_mean_and_starts_as_each_ic_alone():
    torch.manual_seed(2)
    logits = [torch.randn(6, 4) for _ in range(3)]
    ensemble = GeometricEnsemble(3, 4)
    start = ensemble(logits)
    assert all(torch.allclose(a, F.log_softmax(z, 1), atol=1e-6) for a, z in zip(start, logits))
    with torch.no_grad():
        for w in ensemble.weights:
            w.uniform_(0, 2)
        ensemble.bias.normal_()
    k = 2
    w = ensemble.weights[k]
    probs = [F.softmax(z, 1) for z in logits]
    geometric = math.prod(p ** w[i] for i, p in enumerate(probs)) * ensemble.bias[k].exp()
    expected = geometric / geometric.sum(1, keepdim=True)
    assert torch.allclose(ensemble(logits)[k].exp(), expected, atol=1e-5)


def test_fitting_the_ensemble_lowers_its_loss_and_never_touches_the_ics(resnet20):
    torch.manual_seed(3)
    net = attach(resnet20, (3, 32, 32), 10, ic="ztw")
    labels = torch.randint(0, 10, (200,))
    noisy = [F.one_hot(labels, 10).float() * s + torch.randn(200, 10) for s in (0.5, 1.0, 1.5, 2.0, 2.5, 3.0)]
    before = sum(F.cross_entropy(o, labels) for o in net.ensemble(noisy)).item()
    ics = [p.clone() for p in net.ics.parameters()]
    after = fit_ensemble(net, noisy, labels, steps=100)
    assert after < before - 0.1
    assert all(torch.equal(a, b) for a, b in zip(ics, net.ics.parameters()))


@pytest.mark.parametrize("design", DESIGNS)
def test_engine_equals_one_by_one_for_every_design(resnet20, design, one_thread):
    torch.manual_seed(4)
    net = attach(resnet20, (3, 32, 32), 10, ic=design).eval()
    with torch.no_grad():
        for head in net.ics:  # sharpen the heads so that samples leave at different exits
            head.linear.weight.mul_(40)
        if net.ensemble is not None:
            for w in net.ensemble.weights:
                w.uniform_(0.2, 1.0)
    x = torch.randn(48, 3, 32, 32)
    with torch.no_grad():
        outs = net.exit_logits(x)
    q = float(torch.softmax(outs[0], 1).amax(1).quantile(0.7))
    predictions, exits, flops = early_exit(net, x, threshold=q)
    assert 0 < (exits == 0).sum() < 48 and len(exits.unique()) >= 3  # samples leave at several exits
    for i in range(48):
        with torch.no_grad():
            single = net.exit_logits(x[i : i + 1])
        stop = next((k for k in range(6) if torch.softmax(single[k], 1).max() >= q), 6)
        assert exits[i] == stop and predictions[i] == single[stop].argmax()
        assert flops[i] == net.exit_flops[stop]


@pytest.mark.slow
def test_design_is_saved_in_the_run_and_rebuilt(tmp_path, one_thread):
    cfg = TrainConfig("sdn", Recipe("sgd", 0.02, 1, [], batch_size=64), seed=1)
    new_run(tmp_path / "z", DATA, ModelSpec(arch="resnet56", ic=ICDesign("ztw", 8)), cfg, device=CPU)
    run = open_run(tmp_path / "z")
    assert run.config["model"]["ic"] == {"design": "ztw", "width": 8}
    assert run.load_checkpoint()["ensemble_trained"]
    net = run.load_net()
    assert net.ic_design == ICDesign("ztw", 8) and net.ensemble is not None
    assert "ensemble_loss" in run.read_metrics()[-1]
    with pytest.raises(UserError, match="unknown IC design"):
        ICDesign.parse({"design": "huge"})
    with pytest.raises(UserError, match="unknown settings"):
        ICDesign.parse({"design": "conv", "depth": 3})


@pytest.mark.slow
def test_every_command_runs_on_a_ztw_run_from_the_cli(tmp_path, capsys, one_thread):
    cnn, ztw = tmp_path / "cnn", tmp_path / "ztw"
    common = ["--dataset", "digits", "--limit", "300", "--batch-size", "64"]
    assert main(["train", "--arch", "resnet56", "--out", str(cnn), "--epochs", "1", "--lr", "0.05", *common]) == 0
    assert main(["train", "--mode", "ic-only", "--from", str(cnn), "--ic", "ztw", "--ic-width", "8", "--out", str(ztw),
                 "--epochs", "2", *common]) == 0
    assert json.loads((ztw / "config.json").read_text())["model"]["ic"] == {"design": "ztw", "width": 8}
    for command in (["evaluate"], ["early-exit"], ["overthinking"], ["confusion"], ["report"]):
        assert main([*command, str(ztw)]) == 0, command
    capsys.readouterr()
    net = open_run(ztw).load_net()
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        answers = net.exit_logits(x)
    assert all(torch.allclose(a.exp().sum(1), torch.ones(4), atol=1e-5) for a in answers[:-1])  # ensemble answers
