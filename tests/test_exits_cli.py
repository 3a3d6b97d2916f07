"""The early-exit command end to end on a tiny trained run, and the early-exit benchmark (not timed)."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from shallowdeep.cli import main
from shallowdeep.data import batches, load_dataset
from shallowdeep.exits import calibrate, early_exit, make_policy, simulate
from shallowdeep.outputs import load_outputs
from shallowdeep.run import open_run
from test_analysis import make_tiny_run



pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    return make_tiny_run(tmp_path_factory.mktemp("runs") / "tiny", epochs=2)


def early_exit_json(run: Path, *options: str) -> dict:
    assert main(["early-exit", str(run), "--device", "cpu", *options]) == 0
    return json.loads((run / "early-exit.json").read_text())


@pytest.mark.slow
def test_command_calibrates_on_holdout_and_reports_what_the_engine_does_on_test(tiny_run, capsys):
    result = early_exit_json(tiny_run, "--max-drop", "0.05")
    run = open_run(tiny_run)
    holdout, test = load_outputs(run, "holdout"), load_outputs(run, "test")
    assert result["calibrated_on"] == {"source": "run", "dataset": "digits", "data_dir": None, "split": "holdout",
                                       "samples": 144}
    assert result["policy"] == "maxprob" and result["criterion"] == {"max_drop": 0.05}
    assert result["threshold"] == calibrate(holdout, "maxprob", max_drop=0.05).threshold
    assert result["calibration"]["final_head"]["accuracy"] - result["calibration"]["early_exit"]["accuracy"] <= 0.05

    # the recorded test figures are what the batched engine does on the real test images
    splits = load_dataset("digits", None)
    x = torch.cat([b for b, _ in batches(splits.test, splits.spec, 512, train=False, shuffle=False, device="cpu")])
    net = run.load_net("cpu")
    predictions, exits, flops = early_exit(net, x, threshold=result["threshold"])
    recorded = result["test"]["early_exit"]
    assert recorded["accuracy"] == pytest.approx((predictions == splits.test.labels).double().mean().item())
    assert recorded["average_flops"] == pytest.approx(flops.double().mean().item())
    assert recorded["flops_fraction"] == pytest.approx(flops.double().mean().item() / net.backbone_flops)
    assert recorded["exit_shares"] == pytest.approx(np.bincount(exits.numpy(), minlength=4) / len(x))
    assert result["test"]["final_head"]["accuracy"] == pytest.approx(test.correct[-1].mean())
    assert result["exit_flops"] == net.exit_flops and result["backbone_flops"] == net.backbone_flops
    assert result["exit_names"] == ["1", "4", "6", "final"]

    curve = result["curve"]["test"]
    assert len(curve["thresholds"]) == len(curve["accuracy"]) == len(curve["flops_fraction"]) > 20
    q = curve["thresholds"][len(curve["thresholds"]) // 2]
    middle = simulate(test, make_policy("maxprob", q))
    assert curve["accuracy"][len(curve["thresholds"]) // 2] == pytest.approx((middle.predictions == test.labels).mean())
    png = (tiny_run / "early-exit.png").read_bytes()
    assert Image.open(io.BytesIO(png)).format == "PNG"
    out = capsys.readouterr().out
    assert "holdout" in out and "early exit" in out and "oracle" in out and f"{result['threshold']:.6g}" in out


@pytest.mark.slow
def test_budget_and_other_policies(tiny_run):
    result = early_exit_json(tiny_run, "--budget", "0.3", "--policy", "entropy")
    assert result["criterion"] == {"budget": 0.3} and result["policy"] == "entropy"
    assert result["calibration"]["early_exit"]["flops_fraction"] <= 0.3
    result = early_exit_json(tiny_run, "--policy", "patience", "--calibration-split", "train")
    assert result["policy"] == "patience" and result["threshold"] == int(result["threshold"])
    assert result["calibrated_on"]["split"] == "train" and result["calibrated_on"]["samples"] == 1294


def test_the_test_set_never_chooses_the_threshold(tiny_run, tmp_path, capsys):
    (tiny_run / "early-exit.json").unlink(missing_ok=True)
    for split in ("test", "all"):
        assert main(["early-exit", str(tiny_run), "--calibration-split", split, "--device", "cpu"]) == 2
        assert "test set" in capsys.readouterr().err
    # naming the run's own data set as separate calibration data does not get around it: it is the run's data
    options = ["--calibration-data", str(tmp_path), "--calibration-dataset", "digits"]
    assert main(["early-exit", str(tiny_run), *options, "--calibration-split", "all", "--device", "cpu"]) == 2
    assert "test set" in capsys.readouterr().err
    assert not (tiny_run / "early-exit.json").exists()
    recorded = early_exit_json(tiny_run, *options)["calibrated_on"]
    assert recorded["source"] == "run" and recorded["split"] == "holdout"
    assert main(["early-exit", str(tiny_run), "--budget", "0.000001", "--device", "cpu"]) == 2
    assert "budget" in capsys.readouterr().err


@pytest.mark.slow
def test_separate_calibration_data_is_used_and_recorded(tiny_run, tmp_path):
    """The run's holdout images written as an image folder calibrate exactly as the holdout split does."""
    holdout = load_dataset("digits", None).holdout
    root = tmp_path / "calibration"
    for i, (image, label) in enumerate(zip(holdout.images, holdout.labels.tolist())):
        folder = root / ("train" if i % 2 else "test") / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{i}.png")
    separate = early_exit_json(tiny_run, "--calibration-data", str(root), "--calibration-dataset", "imagefolder")
    assert separate["calibrated_on"] == {"source": "separate", "dataset": "imagefolder", "data_dir": str(root),
                                         "split": "all", "samples": len(holdout)}
    own = early_exit_json(tiny_run)
    assert separate["threshold"] == own["threshold"]
    assert separate["calibration"] == own["calibration"]


@pytest.mark.slow
def test_each_criterion_policy_and_calibration_keeps_its_own_result(tiny_run):
    folder = tiny_run / "early-exit"
    shutil.rmtree(folder, ignore_errors=True)
    results = [early_exit_json(tiny_run, *options) for options in (["--max-drop", "0.01"], ["--budget", "0.5"],
                                                                  ["--policy", "entropy", "--max-drop", "0.01"])]
    names = ["max-drop=0.01_maxprob_holdout", "budget=0.5_maxprob_holdout", "max-drop=0.01_entropy_holdout"]
    assert [r["key"] for r in results] == [n.replace("_", " ") for n in names]
    assert sorted(p.name for p in folder.iterdir()) == sorted(n + e for n in names for e in (".json", ".png"))
    assert [json.loads((folder / f"{n}.json").read_text()) for n in names] == results
    assert (tiny_run / "early-exit.png").read_bytes() == (folder / f"{names[2]}.png").read_bytes()  # the latest

    # the same criterion again replaces its own result only
    (folder / f"{names[0]}.json").write_text('{"key": "max-drop=0.01 maxprob holdout", "stale": true}')
    others = {n: (folder / f"{n}.json").read_bytes() for n in names[1:]}
    assert early_exit_json(tiny_run) == results[0]  # --max-drop 0.01 is the default
    assert json.loads((folder / f"{names[0]}.json").read_text()) == results[0]
    assert {n: (folder / f"{n}.json").read_bytes() for n in names[1:]} == others
    assert len(list(folder.iterdir())) == 6  # no temporary file is left behind


def test_a_single_result_of_the_earlier_version_is_kept(tiny_run):
    folder = tiny_run / "early-exit"
    earlier = early_exit_json(tiny_run, "--budget", "0.4", "--policy", "patience")
    earlier.pop("key")  # the earlier version wrote one early-exit.json, without a key, and no early-exit/ folder
    shutil.rmtree(folder)
    (tiny_run / "early-exit.json").write_text(json.dumps(earlier))
    early_exit_json(tiny_run, "--max-drop", "0.05")
    kept = json.loads((folder / "budget=0.4_patience_holdout.json").read_text())
    assert kept == {**earlier, "key": "budget=0.4 patience holdout"}
    assert (folder / "budget=0.4_patience_holdout.png").is_file()
    assert sorted(p.name for p in folder.glob("*.json")) == ["budget=0.4_patience_holdout.json",
                                                            "max-drop=0.05_maxprob_holdout.json"]
