"""Any image size and channel count: grey folders stay grey, --channels converts, the built-in backbones take
any square side from 16 and any channel count, and the commands that read the data keep its channels."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from shallowdeep import models
from shallowdeep.backdoor import TriggerSpec, build_trigger, stamp
from shallowdeep.data import batches, load_dataset
from shallowdeep.data.imagefolder import read_imagefolder
from shallowdeep.errors import UserError
from shallowdeep.report.plots import image_grid, image_png
from shallowdeep.run import Run


def write_folder(root, mode="L", size=8, per_class=2):
    """ROOT/{train,test}/{a,b}/*.png of random images in PIL ``mode``; returns the arrays in reading order."""
    rng = np.random.default_rng(0)
    arrays = []
    for split in ("train", "test"):
        for cls in ("a", "b"):
            for i in range(per_class):
                shape = (size, size) if mode == "L" else (size, size, 3)
                array = rng.integers(0, 256, shape, dtype=np.uint8)
                (root / split / cls).mkdir(parents=True, exist_ok=True)
                Image.fromarray(array, mode).save(root / split / cls / f"{i}.png")
                arrays.append(array)
    return arrays


def test_a_grey_folder_stays_grey_and_channels_converts_it(tmp_path):
    arrays = write_folder(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # all grey: no warning
        raw = read_imagefolder(tmp_path)
    assert raw.train.images.shape == (4, 1, 8, 8)
    assert torch.equal(raw.train.images[0, 0], torch.from_numpy(arrays[0]))
    rgb = read_imagefolder(tmp_path, channels=3)
    assert rgb.train.images.shape == (4, 3, 8, 8)
    assert torch.equal(rgb.train.images[0], raw.train.images[0].expand(3, 8, 8))
    splits = load_dataset("imagefolder", tmp_path, holdout_fraction=0, normalization="imagenet")
    assert splits.spec.input_shape == (1, 8, 8)
    assert splits.spec.mean == pytest.approx((0.299 * 0.485 + 0.587 * 0.456 + 0.114 * 0.406,))
    own = load_dataset("imagefolder", tmp_path, holdout_fraction=0, normalization="dataset").spec
    assert len(own.mean) == len(own.std) == 1
    x, _ = next(batches(splits.train, splits.spec, 4, train=True, shuffle=False, device="cpu"))
    assert x.shape == (4, 1, 8, 8)


def test_colour_read_as_grey_is_pils_grey_and_mixed_folders_are_rgb_with_a_warning(tmp_path):
    arrays = write_folder(tmp_path, mode="RGB")
    grey = read_imagefolder(tmp_path, channels=1)
    assert np.array_equal(grey.train.images[0, 0].numpy(), np.asarray(Image.fromarray(arrays[0]).convert("L")))
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "test" / "a" / "grey.png")
    with pytest.warns(UserWarning, match="1 of the 9 images are grey and the others in colour: all are read as RGB "
                      r"\(3 channels\); to read them all as grey, train with --channels 1"):
        assert read_imagefolder(tmp_path).test.images.shape[1] == 3
    with pytest.raises(UserError, match="channels must be 1 .* imagefolder only"):
        load_dataset("digits", None, channels=1)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("name", ["mobilenet", "resnet56", "vgg16_bn", "wrn32_4"])
def test_built_in_backbones_take_any_side_from_16_and_any_channel_count(name):
    with torch.no_grad():
        for size, channels in ((28, 1), (48, 3), (96, 2)):
            model = models.create(name, 5, size, channels).eval()
            assert model(torch.zeros(1, channels, size, size)).shape == (1, 5)
    stem = next(m for m in models.create(name, 5, 28, 1).modules() if isinstance(m, torch.nn.Conv2d))
    assert stem.in_channels == 1
    with pytest.raises(UserError, match="input_size must be an integer of at least 16"):
        models.create(name, 5, 15)


def test_triggers_and_report_images_on_grey_images():
    images = torch.zeros(2, 1, 16, 16, dtype=torch.uint8)
    out = stamp(images, build_trigger(TriggerSpec("checkerboard", 4, "top-left"), 16, channels=1))
    assert out.shape == (2, 1, 16, 16) and out[0, 0, 0, 0] == 255 and out[0, 0, 0, 1] == 0
    with pytest.raises(UserError, match=r"stamped on uint8 \(N, 3, H, W\) images"):
        stamp(images, build_trigger(TriggerSpec(), 16))
    png = image_png(images[0].numpy(), scale=2)
    with Image.open(io.BytesIO(png)) as picture:
        assert (picture.mode, picture.size) == ("L", (32, 32))
    assert image_grid([[images[0].numpy()]], ["row"], [["caption"]])[:4] == b"\x89PNG"


def test_runs_of_earlier_versions_read_their_folders_with_their_networks_channels(tmp_path):
    old = {"data": {"name": "imagefolder", "data_dir": "d"}, "model": {"input_shape": [3, 8, 8]}}
    assert Run(tmp_path, old).data_options["channels"] == 3  # they read every folder as RGB
    new = {"data": {"name": "imagefolder", "data_dir": "d", "channels": None}, "model": {"input_shape": [1, 8, 8]}}
    assert Run(tmp_path, new).data_options["channels"] is None  # the folder's own
