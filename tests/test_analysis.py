"""Overthinking, the confusion score and Grad-CAM, checked against direct computations."""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from shallowdeep.analysis import confusion_report, confusion_scores, error_auroc, overthinking
from shallowdeep.analysis.gradcam import disagreements, gradcam
from shallowdeep.surgery import attach
from shallowdeep.build import build_sdn
from shallowdeep.model_spec import ModelSpec
from shallowdeep.cli import main
from shallowdeep.data import batches, load_dataset
from shallowdeep.errors import UserError
from shallowdeep.io import atomic_torch_save, atomic_write_json
from shallowdeep.exit_outputs import ExitOutputs
from shallowdeep.outputs import load_outputs
from shallowdeep.run import open_run

BACKBONE = textwrap.dedent('''
    from torch import nn


    def make():
        return nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
        )
''')


def make_tiny_run(path: Path, epochs: int = 3) -> Path:
    """A run folder written by hand: a small CNN with ICs, trained briefly on the embedded digits."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "backbone.py").write_text(BACKBONE)
    data = {"name": "digits", "data_dir": None}
    model = ModelSpec(factory="backbone.py:make", num_classes=10, input_shape=(3, 16, 16), exits=("1", "4", "6"),
                      base_dir=path)
    torch.manual_seed(0)
    net = build_sdn(model)
    splits = load_dataset(**data)
    optimiser = torch.optim.Adam(net.parameters(), 3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        for x, y in batches(splits.train, splits.spec, 64, train=False, shuffle=True, device="cpu",
                            generator=generator):
            loss = sum(F.cross_entropy(out, y) for out in net(x))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    atomic_write_json(path / "config.json", {"data": data, "model": net.spec.to_dict()})
    atomic_torch_save({"format": "shallowdeep-checkpoint-1", "model": net.state_dict()}, path / "checkpoint.pt")
    return path


def shared_tiny_run(tmp_path_factory) -> Path:
    """One tiny run per test session, built by whichever test module asks first."""
    path = tmp_path_factory.getbasetemp() / "shared-tiny-run"
    return path if (path / "checkpoint.pt").is_file() else make_tiny_run(path)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    return shared_tiny_run(tmp_path_factory)


def direct_softmax(row) -> list[float]:
    top = max(row)
    e = [math.exp(v - top) for v in row]
    return [v / sum(e) for v in e]


def direct_confusion(logits: np.ndarray) -> np.ndarray:
    """The paper's formula, one sample, exit and class at a time."""
    exits, samples, classes = logits.shape
    out = []
    for n in range(samples):
        final = direct_softmax(logits[-1, n])
        total = 0.0
        for i in range(exits - 1):
            probs = direct_softmax(logits[i, n])
            total += sum(abs(probs[c] - final[c]) for c in range(classes))
        out.append(total)
    return np.array(out)


def pairwise_auroc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties counted one half."""
    wins = sum((p > q) + 0.5 * (p == q) for p in positive for q in negative)
    return wins / (len(positive) * len(negative))


def test_confusion_scores_match_the_formula_for_every_input_form():
    rng = np.random.default_rng(0)
    logits = (rng.normal(size=(4, 25, 6)) * 8).astype(np.float32)  # large logits test the softmax's stability
    expected = direct_confusion(logits.astype(np.float64))
    forms = [
        list(logits),
        [torch.from_numpy(a) for a in logits],
        logits,
        torch.from_numpy(logits),
        ExitOutputs(logits, np.zeros(25, np.int64), np.arange(1, 5), 4),
    ]
    for form in forms:
        np.testing.assert_allclose(confusion_scores(form), expected, rtol=1e-6, atol=1e-9)


def test_confusion_is_zero_when_every_exit_agrees_and_grows_with_disagreement():
    same = np.tile(np.array([[2.0, 0.0, -1.0]]), (3, 1, 1))
    assert confusion_scores(same) == pytest.approx([0.0])
    one_off = same.copy()
    one_off[0, 0] = [-1.0, 0.0, 2.0]
    two_off = one_off.copy()
    two_off[1, 0] = [-1.0, 0.0, 2.0]
    assert 0 < confusion_scores(one_off)[0] < confusion_scores(two_off)[0] < 4


def test_confusion_scores_reject_bad_input():
    with pytest.raises(UserError, match="internal classifiers"):
        confusion_scores([np.zeros((3, 2))])
    with pytest.raises(UserError, match="same shape"):
        confusion_scores([np.zeros((3, 2)), np.zeros((4, 2))])
    with pytest.raises(UserError, match="exits, samples, classes"):
        confusion_scores(np.zeros((3, 2)))


def outputs_from(predictions, strengths, labels, exit_flops, backbone_flops) -> ExitOutputs:
    """Logits whose argmax is ``predictions`` with logit ``strength`` on it and 0 elsewhere (3 classes)."""
    predictions, strengths = np.asarray(predictions), np.asarray(strengths, dtype=np.float32)
    logits = np.zeros((*predictions.shape, 3), np.float32)
    np.put_along_axis(logits, predictions[..., None], strengths[..., None], axis=-1)
    return ExitOutputs(logits, np.asarray(labels, np.int64), np.asarray(exit_flops, np.int64), backbone_flops)


def test_overthinking_on_a_hand_worked_example():
    labels = [0, 1, 2, 0, 1, 2]
    predictions = [[0, 0, 2, 1, 1, 0],   # IC 1: right on 0, 2, 4
                   [0, 1, 0, 0, 2, 0],   # IC 2: right on 0, 1, 3
                   [0, 1, 1, 1, 2, 0]]   # final: right on 0, 1
    strengths = [[3, 3, 1, 3, 2, 3], [3, 3, 3, 0.5, 3, 3], [3, 3, 3, 3, 3, 3]]
    result = overthinking(outputs_from(predictions, strengths, labels, [10, 30, 100], 90), ["a", "b", "final"])

    assert result["exit_accuracy"] == pytest.approx([3 / 6, 3 / 6, 2 / 6])
    # earliest correct exits: 0, 1, 0, 1, 0, none
    assert result["wasteful"]["earliest_correct_exit"]["counts"] == [3, 2, 0]
    assert result["wasteful"]["earliest_correct_exit"]["none_count"] == 1
    assert result["wasteful"]["share"] == pytest.approx(5 / 6)
    assert result["oracle"]["average_flops"] == pytest.approx((10 + 30 + 10 + 30 + 10 + 100) / 6)
    assert result["oracle"]["relative_cost"] == pytest.approx(190 / 6 / 90)
    assert result["oracle"]["accuracy"] == pytest.approx(5 / 6)

    destructive = result["destructive"]
    assert destructive["final_mistakes"] == 4  # samples 2, 3, 4, 5
    assert destructive["count"] == 3  # 2 and 4 (IC 1), 3 (IC 2)
    assert destructive["share_of_mistakes"] == pytest.approx(3 / 4)
    assert destructive["share_of_samples"] == pytest.approx(3 / 6)
    confidence = lambda a: math.exp(a) / (math.exp(a) + 2)  # noqa: E731 - logit a on one class of three
    assert destructive["per_ic"][0] == {"exit": 0, "name": "a", "count": 2,
                                        "mean_confidence": pytest.approx((confidence(1) + confidence(2)) / 2)}
    assert destructive["per_ic"][1] == {"exit": 1, "name": "b", "count": 1,
                                        "mean_confidence": pytest.approx(confidence(0.5))}
    json.dumps(result)  # JSON-ready


def test_overthinking_without_destruction_or_samples():
    clean = overthinking(outputs_from([[0, 1], [0, 1]], [[1, 1], [1, 1]], [0, 1], [5, 10], 10))
    assert clean["destructive"]["final_mistakes"] == 0
    assert clean["destructive"]["share_of_mistakes"] is None
    assert clean["destructive"]["per_ic"][0]["mean_confidence"] is None
    empty = ExitOutputs(np.zeros((2, 0, 3), np.float32), np.zeros(0, np.int64), np.array([5, 10]), 10)
    with pytest.raises(UserError, match="empty"):
        overthinking(empty)


def test_confusion_report_normalises_on_train_and_ranks_errors():
    rng = np.random.default_rng(1)
    train = ExitOutputs(rng.normal(size=(3, 40, 4)).astype(np.float32), rng.integers(0, 4, 40), np.array([1, 2, 3]), 3)
    test = ExitOutputs(rng.normal(size=(3, 30, 4)).astype(np.float32), rng.integers(0, 4, 30), np.array([1, 2, 3]), 3)
    report = confusion_report(train, test, bins=7)

    train_scores = direct_confusion(train.logits.astype(np.float64))
    mean, std = train_scores.mean(), train_scores.std()
    assert report["normalisation"]["mean"] == pytest.approx(mean)
    assert report["normalisation"]["std"] == pytest.approx(std)
    scores = (direct_confusion(test.logits.astype(np.float64)) - mean) / std
    wrong = test.logits[-1].argmax(-1) != test.labels
    assert report["final_mistakes"] == int(wrong.sum())
    assert report["auroc"]["confusion"] == pytest.approx(pairwise_auroc(scores[wrong], scores[~wrong]))
    uncertainty = np.array([1 - max(direct_softmax(row)) for row in test.logits[-1]])
    assert report["auroc"]["confidence"] == pytest.approx(pairwise_auroc(uncertainty[wrong], uncertainty[~wrong]))
    assert report["mean_confusion"]["wrong"] == pytest.approx(scores[wrong].mean())
    assert report["mean_confusion"]["correct"] == pytest.approx(scores[~wrong].mean())
    assert sum(report["histogram"]["wrong"]) == wrong.sum()
    assert sum(report["histogram"]["correct"]) == (~wrong).sum()
    assert len(report["histogram"]["edges"]) == 8


def test_confusion_separates_errors_when_the_ics_disagree_on_them():
    rng = np.random.default_rng(2)
    labels = np.arange(20) % 4
    final = np.eye(4)[labels] * 4
    final[:5] = np.eye(4)[(labels[:5] + 1) % 4] * 4  # the final head is wrong on the first 5 samples
    ics = np.repeat(final[None], 2, axis=0) + rng.normal(0, 0.1, size=(2, 20, 4))
    ics[:, :5] = np.eye(4)[labels[:5]] * 4  # the ICs disagree with it exactly there
    logits = np.concatenate([ics, final[None]]).astype(np.float32)
    outputs = ExitOutputs(logits, labels.astype(np.int64), np.array([1, 2, 3]), 3)
    report = confusion_report(outputs, outputs)
    assert report["auroc"]["confusion"] == pytest.approx(1.0)
    assert report["mean_confusion"]["wrong"] > report["mean_confusion"]["correct"]


def test_error_auroc_needs_both_kinds():
    assert error_auroc(np.array([False, False]), np.array([0.1, 0.2])) is None
    assert error_auroc(np.array([True, True]), np.array([0.1, 0.2])) is None
    assert error_auroc(np.array([True, False]), np.array([0.9, 0.2])) == 1.0


def test_disagreements_are_first_ic_right_final_wrong():
    correct = np.array([[1, 1, 0, 1], [0, 1, 1, 1], [0, 1, 0, 0]], bool)
    assert disagreements(correct).tolist() == [0, 3]
    assert disagreements(correct, 1).tolist() == [2, 3]


def manual_gradcam(front: nn.Module, back: nn.Module, x: torch.Tensor, targets: torch.Tensor) -> np.ndarray:
    """Grad-CAM of the map ``front(x)`` for the logits ``back(front(x))``, written out by hand."""
    maps = front(x).detach().requires_grad_(True)
    score = back(maps)[torch.arange(len(x)), targets].sum()
    (grads,) = torch.autograd.grad(score, maps)
    cam = F.relu((grads.mean((2, 3), keepdim=True) * maps).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0].clamp_min(0)
    peak = cam.flatten(1).max(1).values[:, None, None]
    return torch.where(peak > 0, cam / peak, torch.zeros_like(cam)).detach().numpy()


@pytest.mark.parametrize("exits", [["1", "4"], ["1", "7"]])  # "7" is the global pool: a 1x1 map
def test_gradcam_matches_a_manual_computation(exits):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 12, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 5),
    ).eval()
    net = attach(model, (3, 16, 16), 5, exits=exits).eval()
    x = torch.randn(4, 3, 16, 16)
    targets = torch.tensor([0, 3, 1, 4])

    ic_maps, ic_layer = gradcam(net, x, targets, 0)
    expected = manual_gradcam(model[:2], nn.Sequential(net.ics[0]), x, targets)
    np.testing.assert_allclose(ic_maps, expected, atol=1e-5)
    assert "segment 0" in ic_layer

    final_maps, final_layer = gradcam(net, x, targets, net.num_exits - 1)
    expected = manual_gradcam(model[:7], model[7:], x, targets)  # the last ReLU: the last map before pooling
    np.testing.assert_allclose(final_maps, expected, atol=1e-5)
    assert final_maps.shape == (4, 16, 16) and final_maps.max() == pytest.approx(1.0)
    assert "final head" in final_layer
    with pytest.raises(UserError, match="does not exist"):
        gradcam(net, x, targets, net.num_exits)


def test_overthinking_command_writes_what_the_library_computes(tiny_run, capsys):
    assert main(["overthinking", str(tiny_run), "--device", "cpu"]) == 0
    written = json.loads((tiny_run / "overthinking.json").read_text())
    expected = overthinking(load_outputs(open_run(tiny_run), "test"), ["1", "4", "6", "final"])
    assert written["split"] == "test"
    assert {k: v for k, v in written.items() if k not in ("run", "split")} == json.loads(json.dumps(expected))
    out = capsys.readouterr().out
    assert "wasteful" in out and "destructive" in out and "overthinking.json" in out


def test_confusion_command_writes_what_the_library_computes(tiny_run, capsys):
    assert main(["confusion", str(tiny_run), "--device", "cpu", "--bins", "10"]) == 0
    written = json.loads((tiny_run / "confusion.json").read_text())
    run = open_run(tiny_run)
    expected = confusion_report(load_outputs(run, "train"), load_outputs(run, "test"), bins=10)
    assert written["auroc"] == pytest.approx(expected["auroc"])
    assert written["histogram"]["wrong"] == expected["histogram"]["wrong"]
    assert written["normalisation"]["train_samples"] == load_outputs(run, "train").labels.size > 0
    assert "AUROC" in capsys.readouterr().out


def test_confusion_is_normalised_on_a_seeded_sample_of_the_training_split(tiny_run, capsys):
    run = open_run(tiny_run)
    total = len(load_outputs(run, "train").labels)
    results = {}
    for samples in ("300", "0"):  # a sample, then the whole split
        assert main(["confusion", str(tiny_run), "--device", "cpu", "--train-samples", samples]) == 0
        results[samples] = json.loads((tiny_run / "confusion.json").read_text())
    sample, full = results["300"], results["0"]
    assert sample["normalised_on"] == f"a seeded random sample of 300 of the {total} training images (un-augmented)"
    assert sample["normalisation"]["train_samples"] == 300 and sample["normalisation"]["sample_seed"] == 0
    assert full["normalised_on"] == f"the {total} training images (un-augmented)"
    assert full["normalisation"]["train_samples"] == full["normalisation"]["train_split_images"] == total
    assert abs(sample["auroc"]["confusion"] - full["auroc"]["confusion"]) <= 0.005  # equal: the order is kept
    assert sample["normalisation"]["mean"] == pytest.approx(full["normalisation"]["mean"], rel=0.1)
    assert sample["normalisation"]["std"] == pytest.approx(full["normalisation"]["std"], rel=0.1)
    assert f"normalised on a seeded random sample of 300 of the {total}" in capsys.readouterr().out
    assert (tiny_run / "outputs" / "train-sample-300-seed-0.npz").is_file()


def test_commands_turn_bad_input_into_one_line(tmp_path, tiny_run, capsys):
    assert main(["overthinking", str(tmp_path / "missing")]) == 2
    with pytest.raises(SystemExit) as exc:  # refused by the parser, before any work
        main(["confusion", str(tiny_run), "--bins", "0"])
    assert exc.value.code == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and "does not exist" in errors[0] and "--bins" in errors[1]


@pytest.mark.parametrize("command, figure", [("evaluate", "top-1 %"), ("overthinking", "wasteful:"),
                                             ("confusion", "AUROC"), ("early-exit", "threshold")])
def test_a_full_disk_loses_no_figure(tiny_run, monkeypatch, capsys, command, figure):
    import errno
    import sys

    import shallowdeep.io  # noqa: F401 - loaded, so that the loop below patches it

    load_outputs(open_run(tiny_run), "train")  # the outputs exist; only the result files fail to write

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    for name, module in list(sys.modules.items()):  # every module that took the function by name
        if name.startswith("shallowdeep") and hasattr(module, "atomic_write_json"):
            monkeypatch.setattr(module, "atomic_write_json", full)  # shallowdeep.io among them
    assert main([command, str(tiny_run)]) == 2
    out, err = capsys.readouterr()
    assert figure in out and "no space left on device" in err and len(err.strip().splitlines()) == 1
