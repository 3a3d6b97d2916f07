"""Backdoor study: triggers land exactly where asked, poisoning is exact, seeded and leaves the clean data alone,
the figures match direct computations, and the ``backdoor`` command runs end to end on the digits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

from conftest import write_tiny_cnn
from shallowdeep.backdoor import (
    PoisonConfig, TriggerSpec, accuracy, attack_success_rate, backdoor_figures, build_trigger, choose_poisoned,
    default_side, poison_splits, poisoned_run_data, random_subset, stamp, triggered_inputs,
)
from shallowdeep.cli import main
from shallowdeep.data import DatasetSpec, ImageData, Splits, load_dataset
from shallowdeep.errors import UserError
from shallowdeep.exit_outputs import ExitOutputs
from shallowdeep.run import open_run

QUICK = ["--dataset", "digits", "--limit", "600", "--epochs", "4", "--lr", "0.05", "--batch-size", "32",
         "--ic-epochs", "2", "--cache-views", "1", "--device", "cpu"]

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks train many times faster on one thread


def normalised(images: torch.Tensor, splits: Splits) -> torch.Tensor:
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (splits.spec.mean, splits.spec.std))
    return (images.float() / 255 - mean) / std


def final_predictions(run_dir: Path, images: torch.Tensor, splits: Splits) -> np.ndarray:
    with torch.no_grad():
        return open_run(run_dir).load_net()(normalised(images, splits))[-1].argmax(1).numpy()


def random_images(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 200, (n, 3, size, size), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def test_default_trigger_is_a_white_square_in_the_bottom_right_corner():
    images = random_images(4)
    trigger = build_trigger(TriggerSpec(), 32)
    out = stamp(images, trigger)
    assert (out[:, :, 27:, 27:] == 255).all()
    changed = torch.ones(32, 32, dtype=torch.bool)
    changed[27:, 27:] = False
    assert torch.equal(out[:, :, changed], images[:, :, changed])
    assert images.max() < 255  # the input is a new copy's source, untouched
    assert [default_side(s) for s in (16, 32, 64, 8)] == [3, 5, 10, 1]
    assert (trigger.top, trigger.left) == (27, 27)


def test_checkerboard_at_a_given_pixel_and_named_places():
    images = random_images(2, 16)
    trigger = build_trigger(TriggerSpec("checkerboard", 4, "2,5"), 16)
    out = stamp(images, trigger)
    expected = torch.tensor([[255 if (r + c) % 2 == 0 else 0 for c in range(4)] for r in range(4)], dtype=torch.uint8)
    assert torch.equal(out[:, :, 2:6, 5:9], expected.expand(2, 3, 4, 4))
    outside = torch.ones(16, 16, dtype=torch.bool)
    outside[2:6, 5:9] = False
    assert torch.equal(out[:, :, outside], images[:, :, outside])
    places = {p: (build_trigger(TriggerSpec(position=p), 64).top, build_trigger(TriggerSpec(position=p), 64).left)
              for p in ("top-left", "top-right", "bottom-left", "center")}
    assert places == {"top-left": (0, 0), "top-right": (0, 54), "bottom-left": (54, 0), "center": (27, 27)}


def test_image_file_pattern_is_resized_nearest(tmp_path):
    pixels = np.zeros((2, 2, 3), np.uint8)
    pixels[0, 0] = (255, 0, 0)
    pixels[1, 1] = (0, 0, 255)
    Image.fromarray(pixels).save(tmp_path / "logo.png")
    trigger = build_trigger(TriggerSpec("logo.png", 4, "top-left"), 32, tmp_path)
    patch = trigger.patch.permute(1, 2, 0).numpy()
    assert np.array_equal(patch, pixels.repeat(2, axis=0).repeat(2, axis=1))


@pytest.mark.parametrize("spec, message", [
    (TriggerSpec(size=40), "between 1 and the image side"),
    (TriggerSpec(size=5, position="30,2"), "does not fit"),
    (TriggerSpec(position="middle"), "ROW,COL"),
    (TriggerSpec(pattern="no-such-file.png"), "neither square nor checkerboard"),
])
def test_bad_triggers_are_clear_errors(spec, message):
    with pytest.raises(UserError, match=message):
        build_trigger(spec, 32)


def test_poisoning_is_exact_seeded_and_leaves_the_clean_data_alone():
    labels = torch.arange(200) % 10
    images = random_images(200)
    spec = DatasetSpec("toy", 10, 32, [str(c) for c in range(10)], (0.5,) * 3, (0.25,) * 3, pad=4, jitter=False)
    clean = Splits(spec, ImageData(images, labels), ImageData(images[:5], labels[:5]),
                   ImageData(images[5:9], labels[5:9]))
    before = images.clone(), labels.clone()
    config = PoisonConfig(TriggerSpec(), target=3, rate=0.15, seed=7)
    poisoned, index = poison_splits(clean, config)
    assert len(index) == 30 and len(set(index.tolist())) == 30 and torch.equal(index, index.sort().values)
    assert (labels[index] != 3).all()
    assert torch.equal(clean.train.images, before[0]) and torch.equal(clean.train.labels, before[1])
    mask = torch.zeros(200, dtype=torch.bool)
    mask[index] = True
    assert (poisoned.train.labels[mask] == 3).all() and torch.equal(poisoned.train.labels[~mask], labels[~mask])
    assert (poisoned.train.images[mask][:, :, 27:, 27:] == 255).all()
    assert torch.equal(poisoned.train.images[mask][:, :, :27], images[mask][:, :, :27])
    assert torch.equal(poisoned.train.images[~mask], images[~mask])
    assert poisoned.holdout is clean.holdout and poisoned.test is clean.test
    assert torch.equal(choose_poisoned(labels, 3, 0.15, 7), index)
    assert not torch.equal(choose_poisoned(labels, 3, 0.15, 8), index)
    with pytest.raises(UserError, match="outside the target class"):
        choose_poisoned(labels, 3, 0.95, 0)


def test_triggered_inputs_drop_the_target_class_and_keep_true_labels():
    labels = torch.tensor([0, 1, 2, 1, 0])
    images = random_images(5)
    data = triggered_inputs(ImageData(images, labels), build_trigger(TriggerSpec(), 32), target=1)
    assert data.labels.tolist() == [0, 2, 0]
    assert torch.equal(data.images[:, :, :27], images[[0, 2, 4]][:, :, :27])
    assert (data.images[:, :, 27:, 27:] == 255).all()


def test_random_subset_is_seeded_and_mixes_the_classes_of_an_ordered_split():
    labels = torch.arange(10).repeat_interleave(50)  # ordered by class, as an image folder reads
    data = ImageData(random_images(500, 8), labels)
    sample = random_subset(data, 60, seed=0)
    assert len(sample) == 60 and set(sample.labels.tolist()) == set(range(10))
    rows = {tuple(img.flatten().tolist()) for img in sample.images}
    assert len(rows) == 60 and rows <= {tuple(img.flatten().tolist()) for img in data.images}
    assert torch.equal(random_subset(data, 60, seed=0).images, sample.images)
    assert random_subset(data, None, 0) is data


def test_attack_success_rate_and_accuracy_by_hand():
    labels = np.array([0, 1, 2, 2, 1, 0, 2])
    predictions = np.array([2, 2, 2, 0, 1, 2, 2])
    # target 2: samples outside class 2 are 0, 1, 4, 5; of them 0, 1 and 5 are predicted 2
    assert attack_success_rate(predictions, labels, 2) == pytest.approx(3 / 4)
    assert accuracy(predictions, labels) == pytest.approx(3 / 7)
    with pytest.raises(UserError):
        attack_success_rate(predictions, np.full(7, 2), 2)


def outputs(logits: list[list[list[float]]], labels: list[int]) -> ExitOutputs:
    return ExitOutputs(np.asarray(logits, np.float32), np.asarray(labels), np.array([10, 20, 100]), 100)


def test_figures_on_hand_made_outputs():
    """Two ICs and a final head, 3 classes, target 0. The first IC is confidently right everywhere; the final
    head is right on clean inputs and answers the target on triggered ones."""
    sure = lambda c: [8.0 if k == c else 0.0 for k in range(3)]  # noqa: E731
    vague = [0.0, 0.0, 0.0]
    holdout = outputs([[sure(1), sure(2)], [vague, vague], [sure(1), sure(2)]], [1, 2])
    train = outputs([[sure(0), sure(1), vague], [vague, sure(1), sure(2)], [sure(0), sure(1), sure(2)]], [0, 1, 2])
    clean = outputs([[sure(1), sure(2), sure(0)], [vague] * 3, [sure(1), sure(2), sure(0)]], [1, 2, 0])
    triggered = outputs([[sure(1), sure(2)], [vague, vague], [sure(0), sure(0)]], [1, 2])
    f = backdoor_figures(train, holdout, clean, triggered, target=0)
    assert f["attack"]["success_rate"] == 1.0 and f["triggered"]["accuracy_cnn"] == 0.0
    assert f["triggered"]["accuracy_early_exit"] == 1.0 and f["attack"]["success_rate_early_exit"] == 0.0
    assert f["triggered"]["recovered_points"] == pytest.approx(100.0)
    assert f["early_exit"]["triggered_test"]["exit_shares"] == [1.0, 0.0, 0.0]
    assert f["early_exit"]["triggered_test"]["flops_fraction"] == pytest.approx(0.1)
    assert f["clean"]["accuracy_cnn"] == 1.0 and f["clean"]["accuracy_early_exit"] == 1.0
    # a vague IC (all logits equal) answers class 0, the target
    assert f["triggered"]["per_exit"] == {"accuracy": [1.0, 0.0, 0.0], "target_share": [0.0, 1.0, 1.0]}

    def confusion(o: ExitOutputs) -> np.ndarray:
        p = np.exp(o.logits) / np.exp(o.logits).sum(-1, keepdims=True)
        return np.abs(p[:-1] - p[-1]).sum(-1).sum(0)

    base = confusion(train)
    scores = np.r_[confusion(clean), confusion(triggered)]
    d = f["detection"]
    assert d["normalisation"]["mean"] == pytest.approx(base.mean())
    assert d["normalisation"]["std"] == pytest.approx(base.std())
    assert d["auroc"] == pytest.approx(roc_auc_score([0, 0, 0, 1, 1], scores))
    assert d["mean_confusion"]["triggered"] == pytest.approx((confusion(triggered).mean() - base.mean()) / base.std())
    assert d["mean_confusion"]["clean"] == pytest.approx((confusion(clean).mean() - base.mean()) / base.std())
    assert sum(d["histogram"]["clean"]) == 3 and sum(d["histogram"]["triggered"]) == 2


@pytest.fixture(scope="module")
def study(tmp_path_factory, one_thread) -> Path:
    """One end-to-end study on the digits with the default trigger."""
    root = tmp_path_factory.mktemp("backdoor")
    out = root / "study"
    assert main(["backdoor", "--out", str(out), "--backbone", write_tiny_cnn(root), *QUICK]) == 0
    return out


@pytest.mark.slow
def test_cli_study_writes_runs_json_and_figures(study):
    result = json.loads((study / "backdoor.json").read_text())
    assert {p.name for p in study.glob("backdoor-*.png")} == {"backdoor-confusion.png", "backdoor-exits.png",
                                                             "backdoor-examples.png"}
    cnn, sdn = open_run(study / "backdoored-cnn"), open_run(study)
    assert cnn.config["poison"] == {"trigger": {"pattern": "square", "size": None, "position": "bottom-right"},
                                    "target": 0, "rate": 0.1, "seed": 0}
    assert open_run(study / "clean-cnn").config["poison"] is None
    assert result["poison"]["poisoned_images"] == 60 and result["poison"]["train_images"] == 600
    assert len(sdn.config["model"]["exits"]) >= 2 and cnn.config["model"]["exits"] == []

    # ASR and triggered accuracy of the backdoored CNN, recomputed from its own run with a hand-stamped trigger
    splits = load_dataset("digits", None)
    keep = splits.test.labels != 0
    images = splits.test.images[keep].clone()
    images[:, :, 13:, 13:] = 255
    predictions = final_predictions(cnn.path, images, splits)
    assert np.array_equal(predictions, final_predictions(study, images, splits))  # IC-only left the backbone alone
    assert result["attack"]["success_rate"] == pytest.approx((predictions == 0).mean())
    true_labels = splits.test.labels[keep].numpy()
    assert result["triggered"]["accuracy_cnn"] == pytest.approx((predictions == true_labels).mean())
    assert result["triggered"]["samples"] == int(keep.sum()) and result["test_images"] == len(splits.test)
    twin = final_predictions(study / "clean-cnn", splits.test.images, splits)
    assert result["clean_baseline"]["accuracy"] == pytest.approx((twin == splits.test.labels.numpy()).mean())
    assert 0 <= result["detection"]["auroc"] <= 1

    rebuilt, index = poisoned_run_data(cnn)
    assert len(index) == 60 and (rebuilt.train.labels[index] == 0).all()
    assert (rebuilt.train.images[index][:, :, 13:, 13:] == 255).all()


@pytest.mark.slow
def test_cli_study_runs_are_ordinary_runs(study, capsys):
    assert main(["evaluate", str(study), "--device", "cpu"]) == 0
    assert main(["early-exit", str(study), "--device", "cpu"]) == 0
    assert "wrote" in capsys.readouterr().out


@pytest.mark.slow
def test_cli_resume_reuses_finished_stages_and_refuses_a_second_start(study, capsys):
    checkpoints = [study / "backdoored-cnn" / "checkpoint.pt", study / "checkpoint.pt"]
    stamps = [p.stat().st_mtime_ns for p in checkpoints]
    before = json.loads((study / "backdoor.json").read_text())
    assert main(["backdoor", "--out", str(study), "--resume", "--device", "cpu"]) == 0
    assert [p.stat().st_mtime_ns for p in checkpoints] == stamps
    after = json.loads((study / "backdoor.json").read_text())
    assert {k: v for k, v in after.items() if k != "seconds"} == {k: v for k, v in before.items() if k != "seconds"}
    training = ("backdoored_cnn", "clean_cnn", "ic_only")  # stages that did not run again keep their times
    assert [after["seconds"][k] for k in training] == [before["seconds"][k] for k in training]
    assert main(["backdoor", "--out", str(study), "--dataset", "digits"]) == 2
    assert "already holds a study" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_custom_trigger_image_position_target_and_source_baseline(study, tmp_path):
    logo = np.zeros((4, 4, 3), np.uint8)
    logo[::2, ::2] = (255, 255, 0)
    Image.fromarray(logo).save(tmp_path / "logo.png")
    out = tmp_path / "custom"
    args = ["backdoor", "--out", str(out), "--from", str(study / "clean-cnn"), "--pattern", str(tmp_path / "logo.png"),
            "--trigger-size", "4", "--position", "1,2", "--target", "7", "--poison-rate", "0.2",
            "--clean-baseline", "source", "--test-limit", "100", "--normalization", "imagenet", *QUICK]
    assert main(args) == 0
    cnn = open_run(out / "backdoored-cnn")
    assert cnn.config["poison"]["trigger"] == {"pattern": "trigger.png", "size": 4, "position": "1,2"}
    assert (out / "backdoored-cnn" / "trigger.png").read_bytes() == (tmp_path / "logo.png").read_bytes()
    rebuilt, index = poisoned_run_data(cnn)
    assert len(index) == 120 and (rebuilt.train.labels[index] == 7).all()
    expected = torch.from_numpy(logo.transpose(2, 0, 1).copy())
    assert (rebuilt.train.images[index][:, :, 1:5, 2:6] == expected).all()
    result = json.loads((out / "backdoor.json").read_text())
    assert result["poison"]["target_name"] == "7" and result["test_images"] == 100
    assert result["clean_baseline"]["network"].startswith("pretrained source")
    assert cnn.config["data"]["normalization"] == "imagenet"
    splits = load_dataset("digits", None, normalization="imagenet")
    assert splits.spec.mean == (0.485, 0.456, 0.406)
    sample = torch.randperm(len(splits.test), generator=torch.Generator().manual_seed(0))[:100].sort().values
    source = final_predictions(study / "clean-cnn", splits.test.images[sample], splits)
    accuracy_ = (source == splits.test.labels[sample].numpy()).mean()
    assert result["clean_baseline"]["accuracy"] == pytest.approx(accuracy_)


def test_cli_rejects_a_target_outside_the_classes(tmp_path, capsys):
    code = main(["backdoor", "--out", str(tmp_path / "x"), "--backbone", write_tiny_cnn(tmp_path), "--target", "cat",
                 *QUICK])
    assert code == 2 and "target class 'cat'" in capsys.readouterr().err


def test_a_short_study_sizes_its_cnn_batch_to_the_training_images_like_train(tmp_path):
    from shallowdeep.cli import build_parser
    from shallowdeep.cli.backdoor import _settings
    from shallowdeep.train.recipe import resolve_recipe

    quick = [a for a in QUICK if a not in ("--batch-size", "32")]
    args = build_parser().parse_args(["backdoor", "--out", str(tmp_path / "x"), "--backbone",
                                      write_tiny_cnn(tmp_path), *quick])
    settings, splits = _settings(args)
    recipe = settings.cnn.recipe
    train_images = len(load_dataset("digits", None, limit=600).train)
    assert len(splits.train) == train_images  # read once: the study goes on with these
    assert recipe == resolve_recipe("cnn", recipe.weight_decay, {"epochs": 4, "lr": 0.05}, train_images)
    assert f"over 4 epochs of {train_images:,} images" in recipe.note
