"""Bad input through the command line: one line naming the problem, exit code 2, no traceback, nothing that
existed before destroyed. The command line runs in this process (``run_cli``); one test runs it as a user
does, ``python -m shallowdeep`` in a fresh interpreter."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from conftest import assert_one_line_error, cli, run_cli

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.slow
def test_the_command_line_in_its_own_interpreter(tmp_path):
    assert_one_line_error(cli("evaluate", str(tmp_path / "none")), "run folder", "does not exist")
    r = cli("--help")
    assert r.returncode == 0 and "usage" in r.stdout and not r.stderr


def test_missing_data_folder(tmp_path):
    r = run_cli("train", "--arch", "resnet56", "--dataset", "cifar10", "--data-dir", str(tmp_path / "nope"),
                "--out", str(tmp_path / "run"))
    assert_one_line_error(r, "data directory", "nope", "does not exist")
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_a_file_where_a_folder_belongs(tmp_path):
    (tmp_path / "a.png").write_bytes(b"not a folder")
    r = run_cli("train", "--arch", "resnet56", "--dataset", "imagefolder", "--data-dir", str(tmp_path / "a.png"),
                "--out", str(tmp_path / "run"))
    assert_one_line_error(r, "a.png", "is a file, not a folder")
    assert_one_line_error(run_cli("evaluate", str(tmp_path / "a.png")), "run folder", "is a file, not a folder")


def test_empty_image_folder(tmp_path):
    (tmp_path / "data").mkdir()
    r = run_cli("train", "--arch", "resnet56", "--dataset", "imagefolder", "--data-dir", str(tmp_path / "data"),
                "--out", str(tmp_path / "run"))
    assert_one_line_error(r, "missing folder", "train", "ROOT/train/<class>/<image>")


def test_conflicting_and_missing_options(tmp_path):
    r = run_cli("train", "--arch", "resnet56", "--backbone", "x.py:f", "--dataset", "digits",
                "--out", str(tmp_path / "r"))
    assert_one_line_error(r, "--arch", "--backbone", "not both")
    r = run_cli("train", "--mode", "ic-only", "--arch", "resnet56", "--dataset", "digits", "--out", str(tmp_path / "r"))
    assert_one_line_error(r, "needs a trained backbone", "--from")
    r = run_cli("train", "--arch", "resnet56", "--pretrained", "--dataset", "digits", "--out", str(tmp_path / "r"))
    assert_one_line_error(r, "--pretrained applies to torchvision:NAME and timm:NAME")
    r = run_cli("train", "--backbone", "x.py:f", "--model-kwargs", '{"a": 1}', "--dataset", "digits",
                "--out", str(tmp_path / "r"))
    assert_one_line_error(r, "--model-kwargs applies to torchvision:NAME and timm:NAME")


def test_evaluate_missing_or_damaged_run(tmp_path):
    assert_one_line_error(run_cli("evaluate", str(tmp_path / "none")), "run folder", "does not exist")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("{not json")
    assert_one_line_error(run_cli("evaluate", str(tmp_path / "bad")), "config.json is damaged (not valid JSON)")


@pytest.mark.slow
def test_weights_of_another_architecture_name_the_keys(tmp_path):
    torch.save({"state_dict": {"module.features.0.weight": torch.zeros(3)}}, tmp_path / "w.th")
    r = run_cli("train", "--mode", "ic-only", "--arch", "resnet56", "--from", str(tmp_path / "w.th"),
                "--dataset", "digits", "--out", str(tmp_path / "run"))
    assert_one_line_error(r, "do not fit", "missing", "unexpected", "features.0.weight")


def test_truncated_checkpoint(tmp_path):
    torch.save({"state_dict": {"w": torch.zeros(1000)}}, tmp_path / "w.th")
    data = (tmp_path / "w.th").read_bytes()
    (tmp_path / "w.th").write_bytes(data[: len(data) // 2])
    r = run_cli("train", "--mode", "ic-only", "--arch", "resnet56", "--from", str(tmp_path / "w.th"),
                "--dataset", "digits", "--out", str(tmp_path / "run"))
    assert_one_line_error(r, "w.th is damaged or not a PyTorch file")
    assert (tmp_path / "w.th").read_bytes() == data[: len(data) // 2]


class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {_Payload.marker}",))


def test_checkpoint_that_would_run_code_is_refused(tmp_path):
    _Payload.marker = tmp_path / "pwned"
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"state_dict": _Payload()}, f)
    r = run_cli("train", "--mode", "ic-only", "--arch", "resnet56", "--from", str(tmp_path / "evil.pt"),
                "--dataset", "digits", "--out", str(tmp_path / "run"))
    assert_one_line_error(r, "evil.pt", "refusing to unpickle")
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("args", [["--help"], ["train", "--help"], ["evaluate", "--help"], ["demo", "--help"]])
def test_help(args):
    r = run_cli(*args)
    assert r.returncode == 0 and "usage" in r.stdout


def _image_folder(root: Path, classes: int, size: int = 16) -> Path:
    from PIL import Image

    for split in ("train", "test"):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", (size, size), (40 * c, 10 * i, 5 + 20 * i)).save(folder / f"{i}.png")
    return root


def test_corrupt_image_is_named(tmp_path):
    root = _image_folder(tmp_path / "data", 2)
    (root / "train" / "class1" / "2.png").write_bytes(b"\x89PNG not really")
    r = run_cli("train", "--arch", "resnet56", "--dataset", "imagefolder", "--data-dir", str(root), "--out",
                str(tmp_path / "run"))
    assert_one_line_error(r, "cannot decode image", "2.png")


@pytest.mark.slow
def test_data_set_with_other_classes_than_the_checkpoint(tmp_path):
    digits_run = tmp_path / "digits"
    r = run_cli("train", "--arch", "resnet56", "--dataset", "digits", "--limit", "64", "--epochs", "1",
                "--out", str(digits_run))
    assert r.returncode == 0, r.stderr
    root = _image_folder(tmp_path / "data", 3)
    r = run_cli("train", "--mode", "ic-only", "--from", str(digits_run), "--dataset", "imagefolder",
                "--data-dir", str(root), "--out", str(tmp_path / "run"))
    assert_one_line_error(r, "wrong shape")
    before = (digits_run / "checkpoint.pt").read_bytes()
    r = run_cli("train", "--arch", "resnet56", "--dataset", "digits", "--out", str(digits_run))  # would overwrite
    assert_one_line_error(r, "already holds a run; resume it or choose another folder (--resume, --out)")
    assert (digits_run / "checkpoint.pt").read_bytes() == before


def test_a_file_system_refusal_is_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    r = run_cli("train", "--arch", "resnet56", "--dataset", "digits", "--limit", "64", "--epochs", "1",
                "--out", str(tmp_path / "file" / "run"))
    assert_one_line_error(r, "not a directory", "file")
