"""Hostile input: a user's backbone file that misbehaves, and image folders with odd contents. Each is a one-line
error (or a warning and a sane result), never a traceback, a silent wrong result or a huge allocation."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import assert_one_line_error, run_cli
from shallowdeep.build import build_sdn
from shallowdeep import images
from shallowdeep.data import load_dataset
from shallowdeep.data.imagefolder import read_imagefolder
from shallowdeep.data.loader import batches
from shallowdeep.errors import UserError
from shallowdeep.model_spec import ModelSpec
from test_data import write_image

NET = """
import sys
from torch import nn

def small(channels=3, side=16):
    return nn.Sequential(nn.Conv2d(channels, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(4 * side * side, 10))

def good():
    return small()

def one_channel():
    return small(channels=1)

def other_size():
    return small(side=28)

def number():
    return 42

def raises():
    raise ValueError("no such layer")

def recurses():
    return recurses()

def exits():
    sys.exit(0)

def interrupted():
    raise KeyboardInterrupt

class Quits(nn.Module):
    def forward(self, x):
        sys.exit(0)

def quits():
    return Quits()
"""


def build(folder: Path, factory: str, source: str = NET) -> None:
    (folder / factory.partition(":")[0]).write_text(source)
    build_sdn(ModelSpec(factory=factory, num_classes=10, input_shape=(3, 16, 16), base_dir=folder))


@pytest.mark.parametrize("factory, words", [
    ("net.py:number", "returned an object of type int, not a torch.nn.Module"),
    ("net.py:raises", "backbone function net.py:raises failed: ValueError: no such layer"),
    ("net.py:recurses", "RecursionError"),
    ("net.py:exits", "backbone function net.py:exits failed: SystemExit"),
    ("net.py:one_channel", "cannot run on inputs of shape (3, 16, 16): layer '0' failed with Given groups=1"),
    ("net.py:other_size", "cannot run on inputs of shape (3, 16, 16): layer '5' failed with mat1 and mat2"),
])
def test_a_misbehaving_backbone_function_is_a_one_line_error(tmp_path, capfd, factory, words):
    with pytest.raises(UserError) as err:
        build(tmp_path, factory)
    assert words in str(err.value) and "\n" not in str(err.value)
    assert capfd.readouterr().err == ""  # torch.fx prints the traceback of a failing node unless stopped
    build(tmp_path, "net.py:good")


@pytest.mark.parametrize("name, source, words", [
    ("net.py", "def f(:\n", "SyntaxError: invalid syntax"),
    ("net.py", "\x00\x9c\xff garbage", "SyntaxError"),
    ("net.py", "import sys\nsys.exit(0)\n", "importing the backbone file"),
    ("net.txt", "def f(): pass\n", "is not a Python file"),
])
def test_a_backbone_file_that_is_not_python_is_a_one_line_error(tmp_path, name, source, words):
    with pytest.raises(UserError, match=words):
        build(tmp_path, f"{name}:f", source)


def test_ctrl_c_in_the_backbone_function_still_interrupts(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        build(tmp_path, "net.py:interrupted")


def test_sys_exit_in_the_backbone_file_fails_through_the_cli_in_one_line(tmp_path):
    (tmp_path / "net.py").write_text(NET)
    r = run_cli("train", "--backbone", f"{tmp_path / 'net.py'}:exits", "--dataset", "digits", "--epochs", "1",
                "--limit", "8", "--out", str(tmp_path / "run"))
    assert_one_line_error(r, "net.py:exits failed: SystemExit")


def test_sys_exit_in_the_backbones_forward_fails_in_one_line(tmp_path):
    (tmp_path / "net.py").write_text(NET)
    r = run_cli("train", "--mode", "sdn", "--backbone", f"{tmp_path / 'net.py'}:quits", "--dataset",
                "digits", "--epochs", "1", "--limit", "8", "--out", str(tmp_path / "run"))
    assert_one_line_error(r, "the backbone's code called sys.exit(0)")


@pytest.mark.slow
def test_a_warning_through_the_cli_is_one_line(tmp_path):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in "ab":
            for i in range(4):
                array = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
                array[..., 2] = 0
                write_image(tmp_path / "data" / split / c / f"{i}.png", array)
    r = run_cli("train", "--arch", "resnet56", "--dataset", "imagefolder", "--data-dir", str(tmp_path / "data"),
                "--epochs", "1", "--out", str(tmp_path / "run"))
    assert r.returncode == 0, r.stderr
    warned = [line for line in r.stderr.splitlines() if "blue channel" in line]
    assert len(warned) == 1 and warned[0].startswith("shallowdeep train: warning: the blue channel")
    assert "warnings.warn" not in r.stderr


def test_broken_and_looping_links_are_skipped_with_a_warning(tmp_path):
    for split in ("train", "test"):
        write_image(tmp_path / split / "a" / "0.png", np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "train" / "a" / "loop.png").symlink_to("loop.png")
    (tmp_path / "train" / "a" / "gone.png").symlink_to("nothing.png")
    with pytest.warns(UserWarning, match="looping symbolic link") as caught:
        raw = read_imagefolder(tmp_path)
    assert len(raw.train) == 1
    for name in ("loop.png", "gone.png"):
        assert any(name in str(w.message) for w in caught), name


def test_an_image_of_another_size_is_refused_before_decoding(tmp_path, monkeypatch):
    for i in range(3):
        write_image(tmp_path / "train" / "a" / f"{i}.png", np.zeros((4, 4, 3), np.uint8))
    write_image(tmp_path / "test" / "a" / "0.png", np.zeros((4, 4, 3), np.uint8))
    write_image(tmp_path / "train" / "a" / "!huge.png", np.zeros((300, 200), np.uint8))  # sorted first

    def decoded(*args):
        raise AssertionError("an image was decoded before the sizes were checked")

    monkeypatch.setattr(images, "_open_image", decoded)
    with pytest.raises(UserError, match=r"!huge.png is 200x300 but 4 of the 5 images are 4x4"):
        read_imagefolder(tmp_path)


def test_16_bit_grey_levels_are_scaled_to_8_bits(tmp_path):
    for split in ("train", "test"):
        write_image(tmp_path / split / "a" / "0.png", np.array([[0, 257], [32768, 65535]], np.uint16))
    with Image.open(tmp_path / "train" / "a" / "0.png") as image:
        assert image.mode.startswith("I")
    assert read_imagefolder(tmp_path).train.images[0].tolist() == [[[0, 1], [128, 255]]]  # grey stays grey
    Image.fromarray(np.array([[0, 70000], [0, 0]], np.int32), "I").save(tmp_path / "train" / "a" / "0.tif")
    with pytest.raises(UserError, match="0.tif has pixel values outside 0..65535"):
        read_imagefolder(tmp_path)


def test_class_folder_names_that_are_not_utf8_are_escaped(tmp_path):
    try:
        os.makedirs(os.path.join(os.fsencode(tmp_path), b"train", b"caf\xe9"))
    except OSError:
        pytest.skip("this file system refuses names that are not UTF-8")
    for split in ("train", "test"):
        for name in (b"caf\xe9", b"ok"):
            folder = Path(os.fsdecode(os.path.join(os.fsencode(tmp_path), split.encode(), name)))
            write_image(folder / "0.png", np.full((4, 4, 3), len(name), np.uint8))
    for _ in range(2):  # decoded, then from the cache
        splits = load_dataset("imagefolder", tmp_path, holdout_fraction=0)
        assert splits.spec.classes == ["caf\\xe9", "ok"]
        json.dumps(splits.spec.classes, ensure_ascii=False).encode()


def test_a_constant_channel_is_normalised_with_one_grey_level(tmp_path):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for i in range(2):
            array = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
            array[..., 2] = 0  # no blue anywhere
            write_image(tmp_path / split / "a" / f"{i}.png", array)
    with pytest.warns(UserWarning, match="blue channel .* constant"):
        splits = load_dataset("imagefolder", tmp_path, holdout_fraction=0, normalization="dataset")
    assert splits.spec.std[2] == pytest.approx(1 / 255) and min(splits.spec.std[:2]) > 0.1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x, _ = next(batches(splits.train, splits.spec, 2, train=False, shuffle=False, device="cpu"))
    assert bool(torch.isfinite(x).all())
