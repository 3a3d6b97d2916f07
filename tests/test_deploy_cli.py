"""From a run to an export and back as a user would: ``train``, ``early-exit``, ``export``, then ``predict`` on the
export in a process where torch cannot be imported, answering as ``predict RUN --from-early-exit`` does."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

import shallowdeep
from shallowdeep.cli import main
from shallowdeep.exit_outputs import ExitOutputs
from shallowdeep.exits import calibrate
from shallowdeep.export import run_policy
from shallowdeep.export.quantise import run_calibration
from shallowdeep.run import open_run
from shallowdeep.runtime import load, read_manifest

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]  # ONNX exports and a torch-free subprocess

BACKBONE = '''
from torch import nn


def small():
    def block(i, o, stride):
        return nn.Sequential(nn.Conv2d(i, o, 3, stride, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU())
    return nn.Sequential(block(3, 16, 1), block(16, 16, 1), block(16, 32, 2), block(32, 32, 1),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))
'''
NO_TORCH = """
import sys
sys.modules["torch"] = None  # import torch now fails
import shallowdeep
from shallowdeep.cli import main
code = main(sys.argv[1:])
assert "torch" not in [name.split(".")[0] for name, module in sys.modules.items() if module is not None], "torch loaded"
sys.exit(code)
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory, one_thread):
    """A small CNN trained for two epochs on the digits with two ICs, calibrated, exported; some digits as files."""
    root = tmp_path_factory.mktemp("deploy")
    (root / "net.py").write_text(BACKBONE)
    run = root / "run"
    assert main(["train", "--mode", "sdn", "--backbone", f"{root / 'net.py'}:small", "--dataset", "digits",
                 "--exits", "1,2", "--epochs", "2", "--batch-size", "32", "--lr", "0.05", "--out", str(run)]) == 0
    assert main(["early-exit", str(run), "--budget", "0.75"]) == 0
    assert main(["export", str(run), "--out", str(root / "export")]) == 0
    from sklearn.datasets import load_digits

    digits = load_digits()
    (root / "images").mkdir()
    for i in range(24):
        pixels = (digits.images[i] * 255 / 16).astype(np.uint8)
        Image.fromarray(pixels, "L").resize((16, 16)).save(root / "images" / f"{i:02d}.png")
    return root


def _first_ic_median(root) -> str:
    """The median largest probability of the first IC on the images: a threshold sending half of them out there."""
    clf = shallowdeep.load(root / "run")
    with torch.no_grad():
        first = clf.net.exit_logits(clf.preprocess(clf.read_images([root / "images"])[1]))[0]
    return f"{float(torch.softmax(first, 1).amax(1).median()):.6f}"


@pytest.mark.parametrize("rule", ["calibrated", "threshold"])
def test_predict_on_an_export_runs_without_torch_and_answers_as_the_run(exported, rule):
    root = exported
    run_rule = ["--from-early-exit"] if rule == "calibrated" else ["--threshold", _first_ic_median(root)]
    export_rule = [] if rule == "calibrated" else run_rule
    assert main(["predict", str(root / "run"), str(root / "images"), *run_rule,
                 "--output", str(root / f"run-{rule}.json"), "--force"]) == 0
    expected = json.loads((root / f"run-{rule}.json").read_text())
    if rule == "threshold":
        assert len({r["exit"] for r in expected}) > 1  # the threshold sends images out at several exits
    for batch in ("1", "8"):
        out = root / f"export-{rule}-{batch}.json"
        done = subprocess.run([sys.executable, "-c", NO_TORCH, "predict", str(root / "export"), str(root / "images"),
                               *export_rule, "--batch-size", batch, "--output", str(out), "--threads", "1"],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        rows = json.loads(out.read_text())
        for ours, theirs in zip(rows, expected, strict=True):
            assert {k: ours[k] for k in theirs} == theirs
            assert 0 < ours["confidence"] <= 1
    manifest = json.loads((root / "export" / "manifest.json").read_text())
    result = json.loads((root / "run" / "early-exit.json").read_text())
    assert manifest["policy"]["threshold"] == result["threshold"]
    assert manifest["policy"]["source"]["early_exit_result"] == result["key"]
    assert manifest["policy"]["source"]["calibrated_on"] == result["calibrated_on"]


def test_export_errors_are_one_line(exported, capsys):
    root = exported
    capsys.readouterr()
    for argv, message in (
            (["export", str(root / "run"), "--out", str(root / "run" / "deploy")], "lies in the run folder"),
            (["export", str(root / "run"), "--out", str(root / "images")], "not empty and holds no export"),
            (["export", str(root / "run"), "--out", str(root / "x"), "--early-exit", "nope"], "no early-exit result 'nope'"),
            (["predict", str(root / "export"), str(root / "images"), "--from-early-exit"], "applies its own policy"),
            (["predict", str(root / "export"), str(root / "images"), "--output", str(root / "export" / "manifest.json"),
              "--force"], "lies in the export folder")):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert len(list((root / "images").iterdir())) == 24
    assert main(["export", str(root / "run"), "--out", str(root / "export"), "--threshold", "0.5",
                 "--policy", "entropy"]) == 0  # an earlier export is replaced
    manifest = json.loads((root / "export" / "manifest.json").read_text())
    assert manifest["policy"]["name"] == "entropy" and manifest["policy"]["threshold"] == 0.5


def test_an_int8_export_quantises_its_stages_and_chooses_the_threshold_again(exported, capsys):
    root = exported
    assert main(["export", str(root / "run"), "--out", str(root / "int8"), "--quantize", "int8"]) == 0
    manifest = read_manifest(root / "int8")
    assert manifest.quantisation["precision"] == "int8"
    ops = [{n.op_type for n in onnx.load(str(root / "int8" / s.file)).graph.node} for s in manifest.stages]
    assert any("DequantizeLinear" in o for o in ops)  # the 32-channel convolutions are int8
    # the threshold: the early-exit result's criterion (a budget of 0.75) on the int8 outputs of its own data
    run = open_run(root / "run")
    fp32_policy = run_policy(run.path, None, None, None)
    calibration = run_calibration(run, fp32_policy)
    runtime = load(root / "int8")
    outputs = ExitOutputs(np.stack(runtime.exit_logits(calibration.images)), calibration.labels,
                          np.asarray(manifest.exit_flops), manifest.backbone_flops)
    assert manifest.policy.threshold == pytest.approx(calibrate(outputs, "maxprob", budget=0.75).threshold)
    assert manifest.policy.source["fp32_policy"]["threshold"] == fp32_policy.threshold
    # batch 1 (the fused graph) and streaming answer alike, and close to fp32
    _, images = runtime.read_images([root / "images"])
    alone, streamed = runtime.predict(images, batch_size=1), runtime.predict(images, batch_size=8)
    assert (alone.exits == streamed.exits).all() and (alone.indices == streamed.indices).all()
    fp32_final, int8_final = load(root / "export").exit_logits(images)[-1], runtime.exit_logits(images)[-1]
    assert (fp32_final.argmax(1) == int8_final.argmax(1)).mean() >= 0.9
    capsys.readouterr()
    assert main(["export", str(root / "run"), "--out", str(root / "x"), "--data-dir", str(root)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == ["shallowdeep export: error: --data-dir goes with --quantize"]
