"""``shallowdeep reproduce``: the whole experiment end to end on a tiny network and data set (every table cell
filled or marked, the figures those of the run folders, checked against the stored logits), a reproduction killed
mid-step that finishes on a rerun with the same tables, a failing step that stops only the steps that need it, and
the paper's figures, each with its citation."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, TINY_CNN
from shallowdeep.reproduce import steps as steps_module
from shallowdeep.reproduce.paper import NOT_STATED, paper_cell, paper_figures
from shallowdeep.reproduce.steps import Context, Outcome, Settings, Step, run_reproduction


ENV = {**os.environ, "PYTHONPATH": str(REPO / "src")}


def command(backbone: Path, out: Path, steps: str = "cnn,ic-only,sdn,mixed,backdoor") -> list[str]:
    return [sys.executable, "-m", "shallowdeep", "reproduce", "--backbone", f"{backbone}:make", "--exits", "2,5",
            "--dataset", "digits", "--limit", "400", "--out", str(out), "--steps", steps, "--threads", "1"]


@pytest.fixture(scope="module")
def backbone(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("backbone") / "tiny.py"
    path.write_text(TINY_CNN)
    return path


@pytest.fixture(scope="module")
def reference(backbone, tmp_path_factory) -> Path:
    """A reproduction run once, uninterrupted, backdoor study included."""
    out = tmp_path_factory.mktemp("reference") / "out"
    done = subprocess.run(command(backbone, out), env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return out


def cells(node, path=""):
    """Every table cell of tables.json (a dict with 'ours', 'note' and 'paper'), with where it is."""
    if isinstance(node, dict):
        if {"ours", "note", "paper"} <= set(node):
            yield path, node
        for key, value in node.items():
            yield from cells(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from cells(value, f"{path}/{i}")


def comparable(tables: dict) -> dict:
    """The tables without what differs between two runs of the same reproduction: times and paths."""
    def strip(node):
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k not in ("seconds", "training_seconds", "run")}
        return [strip(v) for v in node] if isinstance(node, list) else node
    return strip({k: tables[k] for k in ("runs", "budget", "answer")})


@pytest.mark.slow
def test_every_cell_is_filled_or_marked(reference):
    tables = json.loads((reference / "tables.json").read_text())
    assert all(s["status"] == "ran" for s in tables["steps"]), tables["steps"]
    found = list(cells(tables))
    assert len(found) > 60
    for where, c in found:
        assert c["ours"] is not None or c["note"], where
        assert c["paper"] == NOT_STATED or "Abstract" in c["paper"], where
    assert tables["budget"]["equal"] and tables["budget"]["ways"] == {"cnn + ic-only": 5, "sdn": 5, "cnn + mixed": 5}
    for row in (reference / "tables.md").read_text().splitlines():
        if row.startswith("|") and not row.startswith("|---"):
            assert all(part.strip() for part in re.split(r"(?<!\\)\|", row)[1:-1]), row
    verdicts = [c["verdict"] for way in tables["answer"]["comparisons"].values() for c in way.values()]
    assert len(verdicts) == 8 and set(verdicts) <= {"yes", "no", "tie", "cannot tell"}


@pytest.mark.slow
def test_the_tables_hold_the_run_folders_figures(reference):
    tables = json.loads((reference / "tables.json").read_text())
    for name in ("ic-only", "sdn", "mixed"):
        run = reference / name
        stored = np.load(run / "outputs" / "test.npz")
        logits, labels = stored["logits"], stored["labels"]
        correct = logits.argmax(-1) == labels  # (exits, samples), computed here from the logits
        t = tables["runs"][name]
        assert t["final_accuracy"]["ours"] == pytest.approx(correct[-1].mean())
        assert [e["accuracy"]["ours"] for e in t["exits"]] == pytest.approx(list(correct.mean(1)))
        mistakes = ~correct[-1]
        rescued = (mistakes & correct[:-1].any(0)).sum()
        assert t["overthinking"]["destructive"]["ours"] == pytest.approx(rescued / mistakes.sum())
        assert t["overthinking"]["wasteful"]["ours"] == pytest.approx(correct[:-1].any(0).mean())
        for calibration, key in steps_module.early_exit_keys().items():
            result = json.loads(steps_module.result_path(run, key).read_text())
            assert t["early_exit"][calibration]["cost"]["ours"] == result["test"]["early_exit"]["flops_fraction"]
        assert t["early_exit"]["certified"]["cost"]["paper"] == paper_cell("early_exit_cost")
    cnn = np.load(reference / "cnn" / "outputs" / "test.npz")
    assert tables["runs"]["cnn"]["final_accuracy"]["ours"] == pytest.approx(
        (cnn["logits"][-1].argmax(-1) == cnn["labels"]).mean())
    backdoor = json.loads((reference / "backdoor" / "backdoor.json").read_text())
    assert "paper" not in backdoor
    assert tables["backdoor"]["triggered_accuracy_cnn"]["ours"] == backdoor["triggered"]["accuracy_cnn"]


@pytest.mark.slow
def test_a_reproduction_killed_mid_step_finishes_on_a_rerun_with_the_same_tables(reference, backbone, tmp_path):
    out = tmp_path / "out"
    steps = "cnn,ic-only,sdn,mixed,backdoor"
    proc = subprocess.Popen(command(backbone, out, steps), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    in_sdn = False
    for line in proc.stdout:
        in_sdn = in_sdn or line.startswith("[sdn] running")
        if in_sdn and line.strip().startswith("epoch   1"):
            break
    else:
        pytest.fail(f"the reproduction ended before the SDN's first epoch: {proc.stderr.read()[-1000:]}")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    epochs_before = len((out / "sdn" / "metrics.jsonl").read_text().splitlines())
    assert 1 <= epochs_before < 6
    again = subprocess.run(command(backbone, out, steps), env=ENV, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    for finished in ("cnn", "cnn/evaluate", "ic-only", "ic-only/early-exit", "ic-only/confusion"):
        assert f"[{finished}] finished before; skipped" in again.stdout
    assert f"resuming at epoch {epochs_before + 1}" in again.stdout
    ours, theirs = (json.loads((d / "tables.json").read_text()) for d in (out, reference))
    assert comparable(ours) == comparable(theirs)
    assert [s["status"] for s in ours["steps"] if s["name"].startswith("sdn")] == ["ran"] * 5


def test_a_failing_step_stops_only_the_steps_that_need_it(tmp_path, monkeypatch):
    ran = []

    def fake_plan(settings, ctx):
        def work(name, fail=False):
            def do():
                if fail:
                    raise ValueError(f"{name} broke")
                ran.append(name)
            return do
        return [Step("cnn", (), lambda: False, work("cnn", fail=True)),
                Step("cnn/evaluate", ("cnn",), lambda: False, work("cnn/evaluate")),
                Step("ic-only", ("cnn",), lambda: False, work("ic-only")),
                Step("sdn", (), lambda: True, work("sdn")),
                Step("sdn/evaluate", ("sdn",), lambda: False, work("sdn/evaluate")),
                Step("mixed", ("cnn",), lambda: False, work("mixed"))]

    monkeypatch.setattr(steps_module, "plan_steps", fake_plan)
    settings = Settings(tmp_path / "out", {"name": "digits"}, steps_module.ModelSpec(arch="resnet56"))
    done = run_reproduction(settings, ("cnn", "ic-only", "sdn"), Context("cpu"))
    by_name = {o.name: o for o in done.outcomes}
    assert by_name["cnn"].status == "failed" and by_name["cnn"].detail == "ValueError: cnn broke"
    assert by_name["cnn/evaluate"] == Outcome("cnn/evaluate", "not run", "needs cnn, which failed")
    assert by_name["ic-only"].status == "not run"
    assert by_name["sdn"].status == "finished before" and by_name["sdn/evaluate"].status == "ran"
    assert by_name["mixed"].status == "not asked"
    assert ran == ["sdn/evaluate"] and {o.name for o in done.failed} == {"cnn", "cnn/evaluate", "ic-only"}
    other = Settings(tmp_path / "out", {"name": "digits"}, steps_module.ModelSpec(arch="vgg16_bn"))
    with pytest.raises(steps_module.UserError, match="other settings .model."):
        run_reproduction(other, ("cnn",), Context("cpu"))


def test_every_paper_figure_has_its_words_and_citation():
    figures = paper_figures()
    assert set(figures) == {"early_exit_cost", "destructive_share"}
    for figure in figures.values():
        assert figure.citation.startswith("Abstract") and figure.quote and figure.scope
        assert f"{round(100 * figure.value)}%" in figure.quote
    assert paper_cell("wasteful_share") == NOT_STATED
    assert not hasattr(__import__("shallowdeep.backdoor.study", fromlist=["PAPER"]), "PAPER")
