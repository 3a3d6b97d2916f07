"""Every numeric option is checked when the command line is parsed: a value out of range is one line naming
the option and its range, exit code 2, before any work. Results are strict JSON."""

from __future__ import annotations

import argparse
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest

from shallowdeep.cli import build_parser, main
from shallowdeep.cli._common import resolve_device
from shallowdeep.errors import SettingError
from shallowdeep.io import atomic_write_json

PREFIX = {"train": ["train", "--out", "RUN"], "backdoor": ["backdoor", "--out", "RUN"], "demo": ["demo"]}
BAD = [
    *[("train", "--lr", v) for v in ("nan", "inf", "-inf", "0", "-1", "abc")],
    *[("train", "--weight-decay", v) for v in ("-1", "nan", "inf")],
    *[("train", "--momentum", v) for v in ("-0.5", "1", "nan")],
    *[("train", "--seed", v) for v in ("1e20", "100000000000000000000", "4294967296", "-1")],
    *[("train", "--device", v) for v in ("meta", "cuda:x", "gpu", "")],
    *[("train", "--cache-views", v) for v in ("0", "-2", "1.5")],
    *[("train", "--cache-budget-gb", v) for v in ("-1", "inf")],
    *[("train", "--holdout-fraction", v) for v in ("1", "-0.1", "nan")],
    *[("train", "--limit", v) for v in ("0", "-5")],
    ("train", "--epochs", "0"), ("train", "--batch-size", "0"),
    *[("train", "--model-kwargs", v) for v in ("[1]", "{bad", "3")],
    *[("exits", "--input-shape", v) for v in ("3,0,32", "a")], ("exits", "--classes", "1"),
    *[("train", "--ic-width", v) for v in ("0", "100000")],
    *[("train", "--fractions", v) for v in ("0.5,0.3", "0.3,0.3", "0,0.5", "0.5,1", "0.2,,0.4", "a", "")],
    *[("train", "--milestones", v) for v in ("0", "-1", "3,a")],
    *[("early-exit", "--budget", v) for v in ("inf", "nan", "0", "-0.5")],
    *[("early-exit", "--max-drop", v) for v in ("1", "-0.01", "nan")],
    *[("early-exit", "--confidence", v) for v in ("0", "1", "1.5")],
    ("early-exit", "--split-seed", "-1"), ("early-exit", "--device", "meta"),
    *[("confusion", "--bins", v) for v in ("0", "100000000")],
    ("evaluate", "--device", "meta"), ("overthinking", "--device", "cuda:-1"), ("demo", "--device", "meta"),
    *[("report", option, v) for option in ("--gradcam", "--examples") for v in ("-1", "1000")],
    *[("backdoor", "--poison-rate", v) for v in ("1", "-0.1")],
    *[("backdoor", "--holdout-fraction", v) for v in ("0", "1")],
    *[("backdoor", option, "0") for option in ("--trigger-size", "--test-limit", "--limit", "--epochs", "--ic-epochs",
                                               "--batch-size", "--cache-views", "--ic-width")],
    ("backdoor", "--lr", "nan"), ("backdoor", "--weight-decay", "-1"), ("backdoor", "--seed", "-1"),
    ("backdoor", "--max-drop", "1.5"), ("backdoor", "--fractions", "0.9,0.1"),
]


@pytest.mark.parametrize("command, option, value", BAD)
def test_a_value_out_of_range_is_one_line_naming_the_option(command, option, value, capsys):
    with pytest.raises(SystemExit) as exc:
        main([*PREFIX.get(command, [command, "RUN"]), f"{option}={value}"])
    assert exc.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert f"shallowdeep {command}: error: argument {option}: must be " in lines[0]
    assert f"got '{value}'" in lines[0]


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def test_no_numeric_option_is_left_unchecked():
    bare = [(name, a.option_strings) for name, p in _subparsers().items() for a in p._actions
            if a.type in (int, float)]
    assert not bare, f"give these options a type function from cli/_common.py: {bare}"


def test_values_in_range_pass_with_their_types():
    args = build_parser().parse_args(
        ["train", "--out", "RUN", "--momentum=0", "--weight-decay=0", "--holdout-fraction=0", "--seed=4294967295",
         "--device=cuda:1", "--fractions=0.2,0.9", "--milestones=", "--lr=1e-3", "--cache-budget-gb=0"])
    assert (args.momentum, args.weight_decay, args.holdout_fraction, args.seed) == (0.0, 0.0, 0.0, 2**32 - 1)
    assert (args.device, args.fractions, args.milestones, args.lr) == ("cuda:1", (0.2, 0.9), [], 1e-3)
    default = build_parser().parse_args(["train", "--out", "RUN", "--milestones", "3, 5", "--device", "mps"])
    assert default.fractions == (0.15, 0.3, 0.45, 0.6, 0.75, 0.9) and default.milestones == [3, 5]
    assert default.device == "mps" and default.momentum is None and default.cache_views == 2
    early = build_parser().parse_args(["early-exit", "RUN", "--budget=2.5"])
    assert early.budget == 2.5 and early.max_drop is None and early.device == "auto"
    certified = build_parser().parse_args(["early-exit", "RUN", "--max-drop=0", "--confidence=0.9"])
    assert (certified.max_drop, certified.confidence) == (0.0, 0.9)


def test_an_empty_split_is_one_line_saying_why(monkeypatch):
    from shallowdeep import run_analyses

    outputs = SimpleNamespace(labels=np.zeros(1))
    monkeypatch.setattr(run_analyses, "load_outputs", lambda *args: outputs)
    assert run_analyses._outputs(None, "holdout", "cpu", None) is outputs
    outputs = SimpleNamespace(labels=np.zeros(0))
    with pytest.raises(SettingError, match=r"holdout split is empty \(the run's holdout fraction is 0\); choose "
                                           r"another split") as exc:
        run_analyses._outputs(None, "holdout", "cpu", None)
    assert exc.value.settings == ("split",)


def test_results_are_strict_json_with_null_for_undefined_numbers(tmp_path):
    def refuse(constant: str):
        raise ValueError(f"not JSON: {constant}")

    atomic_write_json(tmp_path / "r.json", {
        "nan": math.nan, "inf": [math.inf, -math.inf], "numpy": (np.float32(np.nan), np.float64(np.inf), np.float32(0.5)),
        "nested": {"deeper": [{"x": np.float64(-np.inf), "n": np.int64(3)}], "ok": 0.25, "flag": np.bool_(True)},
        "text": "NaN"})
    written = json.loads((tmp_path / "r.json").read_text(), parse_constant=refuse)
    assert written == {"nan": None, "inf": [None, None], "numpy": [None, None, 0.5],
                       "nested": {"deeper": [{"x": None, "n": 3}], "ok": 0.25, "flag": True}, "text": "NaN"}


def test_threads_sets_the_number_of_cpu_threads_torch_uses():
    import torch

    before = torch.get_num_threads()
    try:
        assert resolve_device("cpu", 1).type == "cpu" and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
