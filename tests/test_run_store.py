"""The run folder has one owner: every artefact's name lives in run_folder.py, and run_results.py keeps what the
analysis commands and the backdoor study write (the early-exit store with its migration of an earlier version's
single result, the report folder, the study's files)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from shallowdeep import run_folder
from shallowdeep.errors import SettingError
from shallowdeep.run_results import (find_early_exit, read_backdoor, read_early_exits, recorded_study_seconds,
                                     result_key, result_path, write_backdoor, write_backdoor_figures,
                                     write_early_exit, write_report_files)
from shallowdeep.train import DataSettings

SRC = Path(__file__).resolve().parents[1] / "src" / "shallowdeep"


def _result(drop: float, split: str = "holdout") -> dict:
    return {"criterion": {"max_drop": drop}, "policy": "maxprob", "threshold": 0.9,
            "calibrated_on": {"source": "run", "split": split}}


def test_artefact_names_are_written_only_in_the_run_folders_owner():
    names = [v for k, v in vars(run_folder).items() if k.isupper() and isinstance(v, str) and "." in v]
    names += run_folder.BACKDOOR_FIGURES.values()
    found = []
    for path in SRC.rglob("*.py"):
        if path.name == "run_folder.py":
            continue
        text = path.read_text()
        found += [f"{path.relative_to(SRC)}: {n}" for n in names if re.search(f"([\"']){re.escape(n)}\\1", text)]
        found += [f"{path.relative_to(SRC)}: eval-" for _ in re.findall(r"[\"']eval-\{", text)]
    assert not found, found


def test_a_result_is_kept_under_its_key_and_as_the_latest(tmp_path):
    path = write_early_exit(tmp_path, _result(0.01), lambda r: r["key"].encode())
    assert path == result_path(tmp_path, "max-drop=0.01 maxprob holdout")
    assert path.with_suffix(".png").read_bytes() == b"max-drop=0.01 maxprob holdout"
    write_early_exit(tmp_path, _result(0.02, "train"), lambda r: b"second")
    assert [r["key"] for r in read_early_exits(tmp_path)] == ["max-drop=0.01 maxprob holdout",
                                                              "max-drop=0.02 maxprob train"]
    assert find_early_exit(tmp_path)["key"] == "max-drop=0.02 maxprob train"  # the latest
    assert (tmp_path / run_folder.EARLY_EXIT_PNG).read_bytes() == b"second"


def test_an_earlier_versions_single_result_is_moved_under_its_key_with_its_plot(tmp_path):
    old = _result(0.05)
    (tmp_path / run_folder.EARLY_EXIT_JSON).write_text(json.dumps(old))
    (tmp_path / run_folder.EARLY_EXIT_PNG).write_bytes(b"old plot")
    assert [r["key"] for r in read_early_exits(tmp_path)] == [result_key(old)]  # read before any migration
    write_early_exit(tmp_path, _result(0.01), lambda r: b"new plot")
    moved = result_path(tmp_path, "max-drop=0.05 maxprob holdout")
    assert json.loads(moved.read_text()) == {**old, "key": "max-drop=0.05 maxprob holdout"}
    assert moved.with_suffix(".png").read_bytes() == b"old plot"
    assert len(read_early_exits(tmp_path)) == 2


def test_a_report_removes_the_figures_it_no_longer_draws(tmp_path):
    write_report_files(tmp_path, {"gradcam.png": b"a", "accuracy.png": b"b"}, {"n": 1}, "<html>")
    page = write_report_files(tmp_path, {"accuracy.png": b"c"}, {"n": 2}, "<html>2")
    folder = tmp_path / run_folder.REPORT_DIR
    assert page == folder / run_folder.REPORT_PAGE and page.read_text() == "<html>2"
    assert sorted(p.name for p in folder.iterdir()) == ["accuracy.png", "index.html", "report.json"]


def test_the_backdoor_studys_files_read_back(tmp_path):
    assert read_backdoor(tmp_path) is None and recorded_study_seconds(tmp_path) == {}
    write_backdoor_figures(tmp_path, confusion=b"c", exits=b"e", examples=b"x")
    write_backdoor(tmp_path, {"seconds": {"ic_only": 3.5}})
    data, figures = read_backdoor(tmp_path)
    assert data == {"seconds": {"ic_only": 3.5}} and recorded_study_seconds(tmp_path) == {"ic_only": 3.5}
    assert dict(figures) == {"backdoor-confusion.png": b"c", "backdoor-examples.png": b"x", "backdoor-exits.png": b"e"}


def test_data_settings_record_absolute_folders_and_need_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    options = DataSettings("imagefolder", Path("data"), cache_dir=Path("cache"), image_size=16).options()
    assert options["data_dir"] == str(tmp_path / "data") and options["cache_dir"] == str(tmp_path / "cache")
    assert "download" not in options and options["image_size"] == 16
    assert DataSettings("digits", download=False).options()["download"] is False
    with pytest.raises(SettingError, match="cifar10 needs the folder") as caught:
        DataSettings("cifar10").options()
    assert caught.value.settings == ("data_dir",)
