"""The HTML report: self-contained, showing what the analyses compute, and rendering in a browser."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shallowdeep.analysis import confusion_report, overthinking
from shallowdeep.cli import main
from shallowdeep.exits import MaxProb, curve, oracle
from shallowdeep.outputs import load_outputs
from shallowdeep.report import write_report
from shallowdeep.run import open_run
from test_analysis import shared_tiny_run

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "screenshot_report.sh"


@pytest.fixture(scope="module")
def reported_run(tmp_path_factory) -> tuple[Path, Path]:
    run = shared_tiny_run(tmp_path_factory)
    return run, write_report(run, gradcam_samples=3, examples_per_exit=3)


def embedded_images(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


def test_report_is_one_self_contained_page(reported_run):
    run, index = reported_run
    assert index == run / "report" / "index.html"
    page = index.read_text()
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)
    assert "//" not in text and "url(" not in text and "@import" not in text, "the page must fetch nothing"
    assert "<script" not in page and "<link" not in page
    assert len(re.findall(r"<img ", page)) == len(embedded_images(page)), "every image is a data URI"
    for png in embedded_images(page):
        assert Image.open(io.BytesIO(png)).format == "PNG"
    for anchor in ("exits", "early-exit", "overthinking", "confusion", "gradcam"):
        assert f'id="{anchor}"' in page
    assert 'id="backdoor"' not in page
    assert "run `shallowdeep early-exit RUN`" in page
    written = {p.name for p in (run / "report").glob("*.png")}
    assert written == {"accuracy.png", "tradeoff.png", "earliest_exit.png", "examples.png", "destructive.png",
                       "confusion.png", "gradcam.png"}
    on_page = set(embedded_images(page))
    assert all((run / "report" / name).read_bytes() in on_page for name in written)


def test_report_json_holds_the_analyses_figures(reported_run):
    run, _ = reported_run
    summary = json.loads((run / "report" / "report.json").read_text())
    r = open_run(run)
    test = load_outputs(r, "test")
    expected = overthinking(test, ["IC 1", "IC 2", "IC 3", "final"])
    assert summary["overthinking"] == json.loads(json.dumps(expected))
    assert summary["exits"]["labels"] == ["IC 1", "IC 2", "IC 3", "final"]
    swept = curve(test, MaxProb, np.linspace(0, 1, 201))  # no early-exit.json: the paper's q swept on test
    assert summary["early_exit"]["source"] == "max-probability sweep on test"
    assert summary["early_exit"]["curve"] == {"flops_fraction": swept.flops_fraction.tolist(),
                                              "accuracy": swept.accuracy.tolist()}
    best = oracle(test)
    assert summary["early_exit"]["oracle"] == [best.flops_fraction, best.accuracy]
    assert summary["confusion"]["auroc"] == pytest.approx(confusion_report(load_outputs(r, "train"), test)["auroc"])
    assert summary["exits"]["accuracy"]["test"] == pytest.approx(test.correct.mean(1).tolist())
    assert summary["exits"]["layers"] == ["1", "4", "6", "final head"]
    shown = summary["gradcam"]["shown"]
    assert len(shown) == min(3, summary["gradcam"]["disagreements"]) > 0
    assert all(test.correct[0, i] and not test.correct[-1, i] for i in shown)


def test_report_shows_early_exit_and_backdoor_results_when_present(reported_run, tmp_path):
    source, _ = reported_run
    run = tmp_path / "run"
    shutil.copytree(source, run, ignore=shutil.ignore_patterns("report"))
    assert main(["early-exit", str(run), "--device", "cpu"]) == 0  # the real early-exit.json
    stored = json.loads((run / "early-exit.json").read_text())
    (run / "backdoor.json").write_text(json.dumps({"attack": {"success_rate": 0.9731, "trigger": "patch"},
                                                   "detection": {"auroc": 0.8125}}))
    marker = Image.new("RGB", (8, 8), (255, 0, 0))
    buf = io.BytesIO()
    marker.save(buf, format="PNG")
    (run / "backdoor-detection.png").write_bytes(buf.getvalue())

    page = write_report(run, gradcam_samples=0, examples_per_exit=0).read_text()
    summary = json.loads((run / "report" / "report.json").read_text())
    point = lambda entry: [entry["flops_fraction"], entry["accuracy"]]  # noqa: E731
    assert summary["early_exit"]["source"] == "early-exit.json"
    assert summary["early_exit"]["chosen"] == point(stored["test"]["early_exit"])
    assert summary["early_exit"]["oracle"] == point(stored["test"]["oracle"])
    assert summary["early_exit"]["curve"]["accuracy"] == stored["curve"]["test"]["accuracy"]
    assert f"threshold {stored['threshold']:.4g} chosen on the holdout split" in page
    assert "run `shallowdeep early-exit RUN`" not in page
    assert 'id="backdoor"' in page and "attack.success_rate" in page and "0.9731" in page and "detection.auroc" in page
    assert buf.getvalue() in embedded_images(page)
    assert not (run / "report" / "gradcam.png").exists() and not (run / "report" / "examples.png").exists()


def test_report_command(reported_run, tmp_path, capsys):
    run, _ = reported_run
    assert main(["report", str(run), "--device", "cpu", "--gradcam", "1", "--examples", "2"]) == 0
    assert str(run / "report" / "index.html") in capsys.readouterr().out
    assert main(["report", str(tmp_path / "nothing")]) == 2
    with pytest.raises(SystemExit) as exc:  # refused by the parser, before any work
        main(["report", str(run), "--gradcam", "-1"])
    assert exc.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 2


@pytest.mark.skipif(shutil.which("chromium") is None and shutil.which("chromium-browser") is None,
                    reason="chromium is not installed")
def test_report_renders_in_headless_chromium(reported_run, tmp_path):
    run, _ = reported_run
    shot = tmp_path / "shot.png"
    done = subprocess.run(["bash", str(SCRIPT), str(run), str(shot), "2400"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    image = np.asarray(Image.open(shot).convert("L"))
    assert image.shape == (2400, 1280)
    drawn_rows = (image < 200).any(axis=1)
    assert drawn_rows[:300].any() and drawn_rows[1000:2400].any(), "the title and the figures must be drawn"
    assert (image < 200).mean() > 0.02
