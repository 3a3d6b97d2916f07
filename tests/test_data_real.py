"""Readers on the real files of ../shared (skipped when it is absent)."""

from __future__ import annotations

import shutil
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from shallowdeep.data import batches, load_dataset
from shallowdeep.data.cifar import read_cifar10
from shallowdeep.data.imagefolder import read_imagefolder
from shallowdeep.data.tinyimagenet import read_tinyimagenet

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
EXTRACTED = REPO / ".cache" / "data"
CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

pytestmark = pytest.mark.realdata


def extracted(folder: str) -> Path:
    """``.cache/data/<folder>``, extracted from ``../shared/data/<folder>.tar.gz`` on first use."""
    target = EXTRACTED / folder
    if target.is_dir():
        return target
    archive = SHARED / "data" / f"{folder}.tar.gz"
    if not archive.is_file():
        pytest.skip(f"{archive} is absent")
    EXTRACTED.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=EXTRACTED, prefix=".extract-"))
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        if not target.exists():
            (tmp / folder).rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def akamaster_resnet20() -> torch.nn.Module:
    weights = SHARED / "weights" / "akamaster-resnet-cifar10" / "resnet20-12fca82f.th"
    if not weights.is_file():
        pytest.skip(f"{weights} is absent")
    from conftest import load_example

    model = load_example("akamaster_resnet").resnet20()
    state = torch.load(weights, map_location="cpu", weights_only=True)["state_dict"]
    model.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
    return model.eval()


def accuracy(model, data, spec) -> float:
    correct = 0
    with torch.no_grad():
        for x, y in batches(data, spec, 250, train=False, shuffle=False, device="cpu"):
            correct += int((model(x).argmax(1) == y).sum())
    return correct / len(data)


def test_official_pickles_subset():
    raw = read_cifar10(extracted("cifar-10-subset-batches-py"))
    assert raw.classes == CIFAR10_NAMES
    assert raw.train.images.shape == (2000, 3, 32, 32) and raw.test.images.shape == (1000, 3, 32, 32)
    # the first official training labels: frog, truck, truck, deer, automobile, automobile, bird, horse, ship, cat
    assert raw.train.labels[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]
    assert raw.test.labels[:4].tolist() == [3, 8, 8, 0]  # cat, ship, ship, airplane
    assert torch.bincount(raw.train.labels, minlength=10).min() > 150


def test_official_pickles_match_the_jpeg_copy_image_by_image():
    raw = read_cifar10(extracted("cifar-10-subset-batches-py"))
    jpeg = read_imagefolder(extracted("cifar10-jpeg"), max_per_class=3)
    for label in range(10):
        lossless = raw.train.images[raw.train.labels == label][:3].float()
        lossy = jpeg.train.images[jpeg.train.labels == label].float()
        same = (lossless - lossy).abs().mean(dim=(1, 2, 3))
        shifted = (lossless - lossy.roll(1, dims=0)).abs().mean(dim=(1, 2, 3))
        assert same.max() < 15 and shifted.min() > 25, (label, same, shifted)


@pytest.mark.slow
def test_pretrained_network_is_accurate_on_loaded_data(tmp_path):
    model = akamaster_resnet20()
    splits = load_dataset("cifar10", extracted("cifar-10-subset-batches-py"), cache_dir=tmp_path)
    assert (len(splits.train), len(splits.holdout), len(splits.test)) == (1800, 200, 1000)
    assert accuracy(model, splits.test.subset(slice(0, 500)), splits.spec) > 0.88  # about 92 % on this subset
    jpeg = read_imagefolder(extracted("cifar10-jpeg"), max_per_class=15)
    assert accuracy(model, jpeg.test, splits.spec) > 0.65  # about 82 % on the JPEG copy


def test_tinyimagenet_subset():
    folder = extracted("tiny-imagenet-200-subset")
    raw = read_tinyimagenet(folder, max_per_class=2)
    wnids = (folder / "wnids.txt").read_text().split()
    assert len(raw.classes) == 200 and raw.classes[:3] == ["Egyptian cat", "reel", "volleyball"]
    assert raw.train.images.shape == (400, 3, 64, 64) and raw.test.images.shape == (400, 3, 64, 64)
    assert raw.train.labels.tolist() == [k for k in range(200) for _ in range(2)]
    annotations = [line.split("\t")[:2] for line in (folder / "val" / "val_annotations.txt").read_text().splitlines()]
    taken, expected = {}, []
    for name, wnid in annotations:
        if taken.get(wnid, 0) < 2:
            taken[wnid] = taken.get(wnid, 0) + 1
            expected.append((name, wnids.index(wnid)))
    assert raw.test.labels.tolist() == [label for _, label in expected]
    for i in (0, 123, 399):
        decoded = np.asarray(Image.open(folder / "val" / "images" / expected[i][0]).convert("RGB"))
        assert np.array_equal(raw.test.images[i].numpy(), decoded.transpose(2, 0, 1))


@pytest.mark.slow
def test_tinyimagenet_subset_through_load_dataset(tmp_path):
    splits = load_dataset("tinyimagenet", extracted("tiny-imagenet-200-subset"), cache_dir=tmp_path, limit=500)
    assert (len(splits.train), len(splits.holdout), len(splits.test)) == (500, 2000, 10000)
    assert torch.bincount(splits.test.labels, minlength=200).eq(50).all()
    spec = splits.spec
    assert (spec.num_classes, spec.input_size, spec.pad, spec.jitter) == (200, 64, 8, True)
    assert spec.mean == (0.4802, 0.4481, 0.3975)
