"""No surprises, part three: truncated images are refused, the Python API refuses inputs it would misread, an
interrupted ZTW run is never used with its ensemble unfitted, the decode cache notices files rewritten in place, and
a run's data is found from any folder (``--data-dir`` on every command that reads it). Each bad input is one line
(exit code 2 through the CLI) and destroys nothing."""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

import shallowdeep.train.trainer as trainer
from shallowdeep.classifier import load
from shallowdeep.cli import main
from shallowdeep.data import load_dataset
from shallowdeep.data.fingerprint import split_fingerprint
from shallowdeep.errors import UserError
from shallowdeep.images import decode_images, image_files

from test_hostile_inputs_2 import one_line_error, run_dir  # noqa: F401 - run_dir: the fixture, shared

pytestmark = pytest.mark.usefixtures("one_thread")


# 12. truncated images


def png(path: Path, width: int, height: int, data: bytes, interlaced: bool = False) -> Path:
    """A grey 8-bit PNG with this header and ``data`` (filtered rows, before compression) as its image data."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, int(interlaced))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(data))
                     + chunk(b"IEND", b""))
    return path


def test_a_truncated_image_is_refused_naming_the_file(run_dir, tmp_path, capsys, monkeypatch):
    # a 1x4000000 header whose compressed stream ends, complete, after 50 rows: PIL reads the rest as black
    tall = png(tmp_path / "tall.png", 1, 4_000_000, b"\x00\x07" * 50)
    assert len(tall.read_bytes()) < 100
    for size in (None, 16):
        with pytest.raises(UserError, match="tall.png: its data is truncated"):
            decode_images([tall], size, 1)
    one_line_error(capsys, main(["predict", str(run_dir), str(tall)]), "tall.png", "truncated")

    # a file cut short is refused even where some other code turned PIL's LOAD_TRUNCATED_IMAGES on
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    photo = tmp_path / "photo.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), np.uint8)).save(photo)
    photo.write_bytes(photo.read_bytes()[:-200])
    with pytest.raises(UserError, match="photo.jpg: image file is truncated"):
        decode_images([photo], 16, 3)
    assert ImageFile.LOAD_TRUNCATED_IMAGES  # left as it was

    # whole images of every PNG layout pass: modes, 16 bits, and Adam7 interlacing (5x3: 22 bytes of data)
    for mode in ("1", "L", "LA", "P", "RGB", "RGBA", "I;16"):
        Image.new(mode, (7, 5)).save(tmp_path / f"{mode}.png")
        assert decode_images([tmp_path / f"{mode}.png"], 8, 3).shape == (1, 3, 8, 8)
    rows = bytes([0, 1, 0, 2, 0, 3, 0, 4, 5, 6, 0, 7, 8, 0, 9, 10, 0, 11, 12, 13, 14, 15])  # passes 1-2, 4-7
    grid = decode_images([png(tmp_path / "adam7.png", 5, 3, rows, interlaced=True)])[0, 0]
    assert grid.tolist() == [[1, 7, 3, 8, 2], [11, 12, 13, 14, 15], [4, 9, 5, 10, 6]]
    with pytest.raises(UserError, match="21 of the 22 bytes"):
        decode_images([png(tmp_path / "short.png", 5, 3, rows[:-1], interlaced=True)])


# 11. the Python API's inputs


def test_predict_scales_unambiguous_pixels_and_refuses_the_rest_naming_the_fix(run_dir, tmp_path):
    clf = load(run_dir)
    pixels = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (5, 3, 16, 16), np.uint8))
    expected = clf.predict(pixels).indices.tolist()
    for same in (pixels.long(), pixels.numpy().astype(np.int32), pixels.tolist(), list(pixels.numpy()),
                 pixels.float() / 255, pixels.numpy()[:, :, ::-1, ::-1][:, :, ::-1, ::-1]):
        assert clf.predict(same, batch_size=2).indices.tolist() == expected
    wide = pixels.long()
    wide[0, 0, 0, :2] = torch.tensor([-3, 1000])
    refused = {
        r"float images must be in \[0, 1\], these go from 0 to 255; divide pixel values of 0..255 by 255":
            pixels.float(),
        "integer images must hold pixel values 0..255, these go from -3 to 1000": wide,
        "NaN or infinite": torch.full((2, 3, 16, 16), float("nan")),
        "infinite": torch.full((2, 3, 16, 16), float("inf")),
        "of type bool": pixels > 100,
        r"images of shape \(16, 16\) given, but this network takes \(3, 16, 16\)": pixels[0, 0],
        r"images of shape \(16, 16, 3\) given.*transpose\(0, 3, 1, 2\)": pixels.permute(0, 2, 3, 1),
        "call predict_files": "x.png",
        "predict_files": [tmp_path / "x.png"],
    }
    for message, images in refused.items():
        with pytest.raises(UserError, match=message):
            clf.predict(images)
    for batch_size in (0, -1, 2.5, True):
        with pytest.raises(UserError, match="batch_size must be a whole number >= 1"):
            clf.predict(pixels, batch_size=batch_size)
        with pytest.raises(UserError, match="batch_size must be a whole number >= 1"):
            clf.predict_files([tmp_path], batch_size=batch_size)

    one = tmp_path / "one.png"
    Image.fromarray(pixels[0].permute(1, 2, 0).numpy()).save(one)
    for paths in (str(one), one, [one]):  # one path alone is one file, not a list of characters
        answer = clf.predict_files(paths)
        assert answer.paths == [one] and answer.indices.tolist() == expected[:1]


# 9. an interrupted ZTW run


TINY_BACKBONE = '''
from torch import nn


def make():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
'''


def test_an_interrupted_ztw_ensemble_fit_says_resume_and_is_never_used_unfitted(tmp_path, capsys, monkeypatch):
    (tmp_path / "tiny.py").write_text(TINY_BACKBONE)
    run, image = tmp_path / "ztw", tmp_path / "digit.png"
    Image.fromarray(np.full((16, 16, 3), 90, np.uint8)).save(image)
    fit = trainer.fit_ensemble

    def fit_and_be_interrupted(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while the ensemble is fitted
        return fit(*args, **kwargs)

    monkeypatch.setattr(trainer, "fit_ensemble", fit_and_be_interrupted)
    train = ["train", "--backbone", f"{tmp_path / 'tiny.py'}:make", "--exits", "1,3", "--ic", "ztw", "--ic-width", "4",
             "--mode", "sdn", "--dataset", "digits", "--limit", "64", "--batch-size", "32", "--epochs", "1",
             "--out", str(run)]
    assert main(train) == 130
    assert "stopped before the exit ensemble was fitted, after the last epoch; checkpoint saved; continue with " \
           "--resume" in capsys.readouterr().out
    checkpoint = torch.load(run / "checkpoint.pt", weights_only=True)
    assert checkpoint["epoch"] == 1 and not checkpoint["ensemble_trained"]

    for command in (["evaluate", str(run)], ["report", str(run)], ["predict", str(run), str(image)]):
        one_line_error(capsys, main(command), "exit ensemble", "not fitted yet", f"train --out {run} --resume")
    assert not list(run.glob("outputs/*.npz")) and not (run / "report").exists()

    monkeypatch.setattr(trainer, "fit_ensemble", fit)
    assert main(["train", "--out", str(run), "--resume"]) == 0
    out = capsys.readouterr().out
    assert "resuming after the last epoch (1): fitting the exit ensemble" in out and "epoch 2" not in out
    assert torch.load(run / "checkpoint.pt", weights_only=True)["ensemble_trained"]
    assert main(["evaluate", str(run)]) == 0


# 8. the decode cache


def image_folder(root: Path, size: int = 8) -> Path:
    """``root/{train,test}/{a,b}/{0,1}.bmp``: uncompressed, so an image written over keeps its file size."""
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for label in ("a", "b"):
            (root / split / label).mkdir(parents=True)
            for i in range(2):
                pixels = rng.integers(0, 256, (size, size, 3), np.uint8)
                Image.fromarray(pixels).save(root / split / label / f"{i}.bmp")
    return root


def test_an_image_written_over_in_place_with_its_old_mtime_is_decoded_again(tmp_path):
    root = image_folder(tmp_path / "data")
    before = load_dataset("imagefolder", root, holdout_fraction=0.0)
    image = root / "test" / "a" / "0.bmp"
    stat = image.stat()
    time.sleep(0.02)  # past the file system clock's tick
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (image.stat().st_size, image.stat().st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)
    after = load_dataset("imagefolder", root, holdout_fraction=0.0)
    assert after.test.images[0].sum() == 0 and before.test.images[0].sum() > 0
    assert split_fingerprint(after.test) != split_fingerprint(before.test)
    assert len(list((root / ".shallowdeep-cache").glob("imagefolder-*.npz"))) == 1  # the stale file is gone


# 7. paths


def test_a_runs_data_is_found_from_any_folder_and_moved_with_data_dir(tmp_path, capsys, monkeypatch):
    (tmp_path / "tiny.py").write_text(TINY_BACKBONE.replace("nn.Linear(8, 10)", "nn.Linear(8, 2)"))  # two classes
    image_folder(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--backbone", "tiny.py:make", "--exits", "1,3", "--mode", "sdn", "--dataset", "imagefolder",
                 "--data-dir", "data", "--holdout-fraction", "0.25", "--epochs", "1", "--batch-size", "4",
                 "--out", "run"]) == 0
    run = tmp_path / "run"
    assert json.loads((run / "config.json").read_text())["data"]["data_dir"] == str(tmp_path / "data")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert main(["evaluate", str(run)]) == 0

    (tmp_path / "data").rename(tmp_path / "moved")
    one_line_error(capsys, main(["evaluate", str(run)]), f"trained on the data in {tmp_path / 'data'}, which does "
                   "not exist here; say where that data is now (--data-dir)")
    moved = ["--data-dir", str(tmp_path / "moved")]
    for command in ("evaluate", "overthinking", "confusion", "early-exit"):
        assert main([command, str(run), *moved]) == 0, command
    assert main(["evaluate", str(run), *moved, "--cache-dir", str(tmp_path / "cache")]) == 0
    assert len(list((tmp_path / "cache").glob("imagefolder-*.npz"))) == 1
    (tmp_path / "a-file").write_text("not a folder")
    one_line_error(capsys, main(["evaluate", str(run), *moved, "--cache-dir", str(tmp_path / "a-file")]),
                   "cannot write the data cache", "--cache-dir DIR")

    other = tmp_path / "other"  # the same layout and classes, another test image: not the run's data
    shutil.copytree(tmp_path / "moved", other)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(other / "test" / "b" / "1.bmp")
    for command in ("evaluate", "report", "confusion"):
        one_line_error(capsys, main([command, str(run), "--data-dir", str(other)]),
                       f"the test split of {other} (4 images) is not the one run {run} was trained")


def test_an_unreadable_folder_is_reported_as_such(run_dir, tmp_path, capsys, monkeypatch):
    photos = tmp_path / "photos" / "locked"
    photos.mkdir(parents=True)
    Image.fromarray(np.full((16, 16, 3), 90, np.uint8)).save(photos / "digit.png")
    scandir = os.scandir

    def locked(path="."):  # as a folder without read permission answers (tests run as root, who may read all)
        if Path(path) == photos:
            raise PermissionError(13, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", locked)
    with pytest.raises(UserError, match=f"cannot read folder {photos}: permission denied"):
        image_files([tmp_path / "photos"])
    one_line_error(capsys, main(["predict", str(run_dir), str(tmp_path / "photos")]), "permission denied",
                   str(photos))
