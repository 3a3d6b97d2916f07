"""Readers, restricted unpickler, download, cache and load_dataset on small files written here."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import run_cli
from shallowdeep.data import DATASETS, load_dataset
from shallowdeep.data import cache as cache_module
from shallowdeep.data import cifar, dataset
from shallowdeep.data.cifar import download_cifar, read_cifar10, read_cifar100
from shallowdeep.data.containers import ImageData
from shallowdeep.data.digits import read_digits
from shallowdeep.data.imagefolder import read_imagefolder
from shallowdeep.data.safe_pickle import load_pickle
from shallowdeep.data.splits import carve_holdout, channel_stats
from shallowdeep.data.tinyimagenet import read_tinyimagenet
from shallowdeep.errors import UserError

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


# --- official-layout writers -------------------------------------------------------------------

def write_pickle(path, obj, protocol=2):
    path.write_bytes(pickle.dumps(obj, protocol=protocol))


def random_rows(rng, n):
    return rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)


def write_cifar10(folder, batch_sizes=(5, 4), n_test=3, seed=0, protocol=2):
    """An official cifar-10-batches-py folder (bytes keys, as the official Python 2 pickles have)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    write_pickle(folder / "batches.meta", {b"label_names": [n.encode() for n in CIFAR10_NAMES],
                                           b"num_cases_per_batch": 10000, b"num_vis": 3072}, protocol)
    batches = []
    for i, n in enumerate(batch_sizes, 1):
        batch = {b"data": random_rows(rng, n), b"labels": rng.integers(0, 10, n).tolist(),
                 b"batch_label": f"training batch {i} of 5".encode(), b"filenames": [b"x.png"] * n}
        write_pickle(folder / f"data_batch_{i}", batch, protocol)
        batches.append(batch)
    test = {b"data": random_rows(rng, n_test), b"labels": rng.integers(0, 10, n_test).tolist()}
    write_pickle(folder / "test_batch", test, protocol)
    return batches, test


def write_cifar100(folder, n_train=6, n_test=4, seed=1):
    """An official cifar-100-python folder: train, test, meta with fine and coarse labels (str keys)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    write_pickle(folder / "meta", {"fine_label_names": [f"fine{i}" for i in range(100)],
                                   "coarse_label_names": [f"coarse{i}" for i in range(20)]})
    splits = {}
    for split, n in (("train", n_train), ("test", n_test)):
        fine = rng.integers(0, 100, n)
        splits[split] = {"data": random_rows(rng, n), "fine_labels": fine.tolist(),
                         "coarse_labels": (fine // 5).tolist(), "filenames": ["x.png"] * n, "batch_label": split}
        write_pickle(folder / split, splits[split])
    return splits


def as_images(rows):
    """Independent decoding of CIFAR rows: value of (c, y, x) is at c * 1024 + y * 32 + x."""
    out = np.zeros((len(rows), 3, 32, 32), dtype=np.uint8)
    for n, row in enumerate(rows):
        for c in range(3):
            for y in range(32):
                out[n, c, y] = row[c * 1024 + y * 32:c * 1024 + y * 32 + 32]
    return out


def write_image(path, array, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format=fmt)


def write_imagefolder(root, per_class=3, size=8, seed=0):
    """ROOT/{train,test}/<class>/*.png with random lossless images; returns {split: [(array HWC, label)]}."""
    rng = np.random.default_rng(seed)
    written = {}
    for split in ("train", "test"):
        written[split] = []
        for label, cls in enumerate(["apple", "banana", "cherry"]):
            for k in range(per_class):
                array = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                write_image(root / split / cls / f"{k:03d}.png", array)
                written[split].append((array, label))
    return written


# --- CIFAR --------------------------------------------------------------------------------------

def test_cifar10_reads_official_layout_from_folder_or_parent(tmp_path):
    batches, test = write_cifar10(tmp_path / "cifar-10-batches-py")
    for root in (tmp_path, tmp_path / "cifar-10-batches-py"):
        raw = read_cifar10(root)
        assert raw.classes == CIFAR10_NAMES
        rows = np.concatenate([b[b"data"] for b in batches])
        assert torch.equal(raw.train.images, torch.from_numpy(as_images(rows)))
        assert raw.train.labels.tolist() == batches[0][b"labels"] + batches[1][b"labels"]
        assert raw.test.images.dtype == torch.uint8 and raw.test.labels.dtype == torch.int64
        assert torch.equal(raw.test.images, torch.from_numpy(as_images(test[b"data"])))


def test_cifar10_accepts_the_numpy_1_module_name_and_protocol_4(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    batches, _ = write_cifar10(folder, batch_sizes=(3,), protocol=2)
    blob = (folder / "data_batch_1").read_bytes()
    assert b"numpy._core.multiarray" in blob
    (folder / "data_batch_1").write_bytes(blob.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    assert torch.equal(read_cifar10(tmp_path).train.images, torch.from_numpy(as_images(batches[0][b"data"])))
    other = tmp_path / "p4"
    batches, _ = write_cifar10(other / "cifar-10-batches-py", batch_sizes=(2,), protocol=4)
    assert torch.equal(read_cifar10(other).train.images, torch.from_numpy(as_images(batches[0][b"data"])))


def test_cifar10_subset_of_batches_and_missing_batches(tmp_path):
    write_cifar10(tmp_path / "cifar-10-batches-py", batch_sizes=(4,))
    assert len(read_cifar10(tmp_path).train) == 4
    (tmp_path / "cifar-10-batches-py" / "data_batch_1").unlink()
    with pytest.raises(UserError, match="data_batch"):
        read_cifar10(tmp_path)


def test_cifar100_fine_and_coarse_labels(tmp_path):
    splits = write_cifar100(tmp_path / "cifar-100-python")
    fine = read_cifar100(tmp_path)
    assert fine.classes == [f"fine{i}" for i in range(100)]
    assert fine.train.labels.tolist() == splits["train"]["fine_labels"]
    assert torch.equal(fine.test.images, torch.from_numpy(as_images(splits["test"]["data"])))
    coarse = read_cifar100(tmp_path / "cifar-100-python", coarse_labels=True)
    assert coarse.classes == [f"coarse{i}" for i in range(20)]
    assert coarse.test.labels.tolist() == splits["test"]["coarse_labels"]
    spec = load_dataset("cifar100", tmp_path, holdout_fraction=0.0, coarse_labels=True).spec
    assert spec.num_classes == 20 and spec.mean == (0.507, 0.4865, 0.441)


def test_cifar_corrupt_or_wrong_files_raise_user_error(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder)
    blob = (folder / "data_batch_2").read_bytes()
    (folder / "data_batch_2").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(UserError, match="data_batch_2"):
        read_cifar10(tmp_path)
    write_pickle(folder / "data_batch_2", {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]})
    with pytest.raises(UserError, match="3072"):
        read_cifar10(tmp_path)
    write_pickle(folder / "data_batch_2", {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]})
    with pytest.raises(UserError, match="out of"):
        read_cifar10(tmp_path)
    with pytest.raises(UserError, match="cifar-100-python"):
        read_cifar100(tmp_path)


# --- restricted unpickler -----------------------------------------------------------------------

class RunsShell:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class RunsEval:
    def __reduce__(self):
        return eval, ("__import__('os').getcwd()",)


@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_unpickler_refuses_code_execution(tmp_path, protocol):
    marker = tmp_path / "pwned"
    path = tmp_path / "data_batch_1"
    write_pickle(path, {b"data": RunsShell(marker)}, protocol)
    with pytest.raises(UserError, match="system"):
        load_pickle(path)
    assert not marker.exists()
    pickle.loads(path.read_bytes())  # the same bytes do run code under the plain unpickler
    assert marker.exists()
    write_pickle(path, [RunsEval()], protocol)
    with pytest.raises(UserError, match="eval"):
        load_pickle(path)


def test_unpickler_refuses_other_codecs(tmp_path):
    # protocol 0/2 bytes go through _codecs.encode(text, "latin1"); any other codec is refused
    blob = pickle.dumps(b"\xff", protocol=2).replace(b"latin1", b"utf_16")
    (tmp_path / "p").write_bytes(blob)
    with pytest.raises(UserError, match="encoding"):
        load_pickle(tmp_path / "p")
    (tmp_path / "ok").write_bytes(pickle.dumps({b"k": [1, "s", b"\xff"], "a": np.arange(3)}, protocol=2))
    loaded = load_pickle(tmp_path / "ok")
    assert loaded[b"k"] == [1, "s", b"\xff"] and loaded["a"].tolist() == [0, 1, 2]


# --- download -----------------------------------------------------------------------------------

def tar_bytes(members):
    """A .tar.gz holding ``members``: {name: bytes} for files, or TarInfo objects as they are."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def serve(monkeypatch, tmp_path, archive: bytes, md5: str | None = None):
    path = tmp_path / "served" / "cifar-10-python.tar.gz"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(archive)
    layout = cifar.CifarLayout("cifar-10-batches-py", "batches.meta", path.as_uri(),
                               md5 or hashlib.md5(archive).hexdigest())
    monkeypatch.setitem(cifar.CIFAR_LAYOUTS, "cifar10", layout)
    return path


def cifar_archive(tmp_path):
    source = tmp_path / "source"
    batches, _ = write_cifar10(source / "cifar-10-batches-py", batch_sizes=(3,))
    members = {f"cifar-10-batches-py/{p.name}": p.read_bytes() for p in (source / "cifar-10-batches-py").iterdir()}
    return tar_bytes(members), batches


def test_download_verifies_extracts_and_is_reused(tmp_path, monkeypatch):
    archive, batches = cifar_archive(tmp_path)
    served = serve(monkeypatch, tmp_path, archive)
    root = tmp_path / "data"
    folder = download_cifar("cifar10", root)
    assert folder == root / "cifar-10-batches-py"
    assert torch.equal(read_cifar10(root).train.images, torch.from_numpy(as_images(batches[0][b"data"])))
    assert not [p for p in root.iterdir() if p.name.startswith(".extract-")]
    served.unlink()  # already present: no second download
    assert download_cifar("cifar10", root) == folder
    splits = load_dataset("cifar10", root, download=True, holdout_fraction=0.0, cache_dir=tmp_path / "c")
    assert len(splits.train) == 3


def test_download_checksum_mismatch_and_offline_raise(tmp_path, monkeypatch):
    archive, _ = cifar_archive(tmp_path)
    serve(monkeypatch, tmp_path, archive, md5="0" * 32)
    with pytest.raises(UserError, match="checksum mismatch"):
        download_cifar("cifar10", tmp_path / "data")
    assert not (tmp_path / "data" / "cifar-10-batches-py").exists()
    layout = cifar.CIFAR_LAYOUTS["cifar10"]
    monkeypatch.setitem(cifar.CIFAR_LAYOUTS, "cifar10",
                        cifar.CifarLayout(layout.folder, layout.marker, (tmp_path / "absent.tgz").as_uri(), layout.md5))
    with pytest.raises(UserError, match="cifar-10-batches-py") as info:
        download_cifar("cifar10", tmp_path / "data")
    assert "\n" not in str(info.value) and "could not download" in str(info.value)


@pytest.mark.parametrize("name", ["../escape.txt", "/tmp/shallowdeep-absolute-escape.txt",
                                  "cifar-10-batches-py/../../escape.txt"])
def test_download_refuses_unsafe_archive_paths(tmp_path, monkeypatch, name):
    serve(monkeypatch, tmp_path, tar_bytes({"cifar-10-batches-py/batches.meta": b"x", name: b"bad"}))
    root = tmp_path / "deep" / "data"
    with pytest.raises(UserError, match="unsafe path"):
        download_cifar("cifar10", root)
    assert not (tmp_path / "deep" / "escape.txt").exists() and not (tmp_path / "escape.txt").exists()
    assert not os.path.exists("/tmp/shallowdeep-absolute-escape.txt")
    assert not (root / "cifar-10-batches-py").exists()


def test_download_refuses_links_and_corrupt_archives(tmp_path, monkeypatch):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        link = tarfile.TarInfo("cifar-10-batches-py/batches.meta")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    serve(monkeypatch, tmp_path, buffer.getvalue())
    with pytest.raises(UserError, match="not a plain file"):
        download_cifar("cifar10", tmp_path / "data")
    serve(monkeypatch, tmp_path, b"not a tarball")
    with pytest.raises(UserError, match="corrupt archive"):
        download_cifar("cifar10", tmp_path / "data")


# --- image folder, Tiny ImageNet, digits --------------------------------------------------------

def test_imagefolder_reads_sorted_classes_and_exact_pixels(tmp_path):
    written = write_imagefolder(tmp_path)
    raw = read_imagefolder(tmp_path)
    assert raw.classes == ["apple", "banana", "cherry"]
    for split, data in (("train", raw.train), ("test", raw.test)):
        expected = np.stack([a.transpose(2, 0, 1) for a, _ in written[split]])
        assert torch.equal(data.images, torch.from_numpy(expected))
        assert data.labels.tolist() == [label for _, label in written[split]]
    assert len(read_imagefolder(tmp_path, max_per_class=1).train) == 3


def test_imagefolder_converts_modes_and_resizes(tmp_path):
    grey = np.arange(64, dtype=np.uint8).reshape(8, 8)
    write_image(tmp_path / "train" / "a" / "0.png", grey)
    rgba = np.full((8, 8, 4), 200, dtype=np.uint8)
    write_image(tmp_path / "test" / "a" / "0.png", rgba)
    with pytest.warns(UserWarning, match="1 of the 2 images are grey and the others in colour: all are read as RGB"):
        raw = read_imagefolder(tmp_path)
    assert torch.equal(raw.train.images[0], torch.from_numpy(np.stack([grey] * 3)))
    assert raw.test.images.shape == (1, 3, 8, 8) and int(raw.test.images.max()) == 200
    write_image(tmp_path / "train" / "a" / "1.png", np.zeros((8, 12, 3), np.uint8))
    with pytest.raises(UserError, match="1.png is 12x8"):
        read_imagefolder(tmp_path)
    with pytest.warns(UserWarning, match="all are read as RGB"):
        resized = read_imagefolder(tmp_path, image_size=4)
    assert resized.train.images.shape == (2, 3, 4, 4)
    expected = np.asarray(Image.fromarray(grey).convert("RGB").resize((4, 4), Image.Resampling.BILINEAR))
    assert torch.equal(resized.train.images[0], torch.from_numpy(expected.transpose(2, 0, 1).copy()))


def test_imagefolder_bad_input_raises_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        read_imagefolder(tmp_path / "nothing")
    (tmp_path / "train" / "a").mkdir(parents=True)
    (tmp_path / "test" / "a").mkdir(parents=True)
    with pytest.raises(UserError, match="no images"):
        read_imagefolder(tmp_path)
    write_imagefolder(tmp_path)
    (tmp_path / "train" / "apple" / "zzz.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(UserError, match="zzz.jpg"):
        read_imagefolder(tmp_path)
    (tmp_path / "train" / "apple" / "zzz.jpg").unlink()
    write_image(tmp_path / "test" / "durian" / "0.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(UserError, match="durian"):
        read_imagefolder(tmp_path)


def write_tinyimagenet(folder, wnids=("n002", "n001", "n003"), per_class=3):
    """Official layout; every image of class k is the flat colour 40 * (k + 1), so JPEG keeps it exact."""
    (folder / "val" / "images").mkdir(parents=True)
    (folder / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (folder / "words.txt").write_text("n000\tentity\nn001\tcat, puss\nn002\tdog\nn003\tbird, fowl\n")
    lines = []
    for k, wnid in enumerate(wnids):
        flat = np.full((64, 64, 3), 40 * (k + 1), dtype=np.uint8)
        for i in range(per_class):
            write_image(folder / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", flat, "JPEG")
    for i in range(per_class * len(wnids)):
        k = (i * 2) % len(wnids)
        write_image(folder / "val" / "images" / f"val_{i}.JPEG", np.full((64, 64, 3), 40 * (k + 1), np.uint8), "JPEG")
        lines.append(f"val_{i}.JPEG\t{wnids[k]}\t0\t0\t63\t63")
    (folder / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")


def test_tinyimagenet_official_layout(tmp_path):
    write_tinyimagenet(tmp_path / "tiny-imagenet-200")
    for root in (tmp_path, tmp_path / "tiny-imagenet-200"):
        raw = read_tinyimagenet(root)
        assert raw.classes == ["dog", "cat", "bird"]
        assert raw.train.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
        assert raw.test.labels.tolist() == [(i * 2) % 3 for i in range(9)]
        for data in (raw.train, raw.test):
            assert data.images.shape[1:] == (3, 64, 64)
            colour = data.images.float().mean(dim=(1, 2, 3))
            assert torch.allclose(colour, 40.0 * (data.labels + 1).float(), atol=1.5)
    small = read_tinyimagenet(tmp_path, max_per_class=1)
    assert small.train.labels.tolist() == [0, 1, 2] and sorted(small.test.labels.tolist()) == [0, 1, 2]


def test_tinyimagenet_wrong_layout(tmp_path):
    with pytest.raises(UserError, match="tiny-imagenet-200"):
        read_tinyimagenet(tmp_path)
    write_tinyimagenet(tmp_path)
    with open(tmp_path / "val" / "val_annotations.txt", "a") as f:
        f.write("val_99.JPEG\tn999\t0\t0\t1\t1\n")
    with pytest.raises(UserError, match="line 10"):
        read_tinyimagenet(tmp_path)


def test_digits_are_scaled_upsampled_and_split():
    from sklearn.datasets import load_digits

    digits = load_digits()
    raw = read_digits()
    assert len(raw.train) == 1438 and len(raw.test) == 359 and raw.train.images.shape[1:] == (3, 16, 16)
    i = 1500  # a test image: index i - 1438 in the test split
    image = raw.test.images[i - 1438]
    for y in range(8):
        for x in range(8):
            expected = round(digits.images[i, y, x] * 255 / 16)
            assert image[:, 2 * y:2 * y + 2, 2 * x:2 * x + 2].eq(expected).all()
    assert raw.test.labels[i - 1438] == digits.target[i]


def test_normalisations_imagenet_paper_and_the_data_sets_own():
    imagenet = load_dataset("digits", None, normalization="imagenet").spec
    assert (imagenet.mean, imagenet.std) == dataset.IMAGENET_STATS == dataset.PAPER_STATS["cifar10"]
    own = load_dataset("digits", None, normalization="dataset").spec
    paper = load_dataset("digits", None, normalization="paper").spec  # digits: the paper has no statistics
    assert (paper.mean, paper.std) == (own.mean, own.std) != dataset.IMAGENET_STATS


# --- cache ---------------------------------------------------------------------------------------

def test_cache_is_reused_and_rebuilt_when_the_source_changes(tmp_path, monkeypatch):
    written = write_imagefolder(tmp_path / "data")
    calls = []
    real_read = dataset.read_imagefolder
    monkeypatch.setattr(dataset, "read_imagefolder", lambda *a, **k: calls.append(1) or real_read(*a, **k))
    first = load_dataset("imagefolder", tmp_path / "data", holdout_fraction=0.0)
    cache_dir = tmp_path / "data" / ".shallowdeep-cache"
    assert len(calls) == 1 and len(list(cache_dir.glob("imagefolder-*.npz"))) == 1
    second = load_dataset("imagefolder", tmp_path / "data", holdout_fraction=0.0)
    assert len(calls) == 1 and torch.equal(first.test.images, second.test.images)
    changed = np.zeros((8, 8, 3), np.uint8)
    path = tmp_path / "data" / "test" / "apple" / "000.png"
    write_image(path, changed)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    third = load_dataset("imagefolder", tmp_path / "data", holdout_fraction=0.0)
    assert len(calls) == 2 and third.test.images[0].eq(0).all()
    assert not torch.equal(third.test.images[0], torch.from_numpy(written["test"][0][0].transpose(2, 0, 1)))
    assert len(list(cache_dir.glob("imagefolder-*.npz"))) == 1  # the stale file is gone
    load_dataset("imagefolder", tmp_path / "data", holdout_fraction=0.0, image_size=4)
    assert len(calls) == 3  # options are part of the key
    load_dataset("imagefolder", tmp_path / "data", holdout_fraction=0.0)
    assert len(calls) == 3  # ... and each option set keeps its own file


def test_cache_files_hold_plain_arrays_and_survive_corruption(tmp_path):
    write_cifar10(tmp_path / "cifar-10-batches-py")
    splits = load_dataset("cifar10", tmp_path, holdout_fraction=0.0, cache_dir=tmp_path / "cache")
    (path,) = (tmp_path / "cache").glob("cifar10-*.npz")
    with np.load(path, allow_pickle=False) as arrays:
        assert arrays["train_images"].dtype == np.uint8 and list(arrays["classes"]) == CIFAR10_NAMES
        assert np.array_equal(np.sort(arrays["train_labels"]), np.sort(splits.train.labels.numpy()))
    path.write_bytes(b"garbage")
    again = load_dataset("cifar10", tmp_path, holdout_fraction=0.0, cache_dir=tmp_path / "cache")
    assert torch.equal(again.test.images, splits.test.images)
    with np.load(path, allow_pickle=False) as arrays:
        assert arrays["test_images"].shape == (3, 3, 32, 32)


def test_fingerprint_changes_with_size_mtime_and_options(tmp_path):
    f = tmp_path / "a.bin"
    f.write_bytes(b"1234")
    base = cache_module.fingerprint(tmp_path, [f], {})
    assert cache_module.fingerprint(tmp_path, [f], {}) == base
    assert cache_module.fingerprint(tmp_path, [f], {"image_size": 4}) != base
    os.utime(f, ns=(0, 10**9))
    assert cache_module.fingerprint(tmp_path, [f], {}) != base
    with pytest.raises(UserError, match="missing file"):
        cache_module.fingerprint(tmp_path, [tmp_path / "b.bin"], {})


# --- splits and load_dataset -------------------------------------------------------------------

def test_holdout_is_deterministic_disjoint_and_complete():
    ids = torch.arange(1000)
    data = ImageData(torch.zeros(1000, 3, 2, 2, dtype=torch.uint8), ids)
    train, holdout = carve_holdout(data, 0.1, seed=3)
    train2, holdout2 = carve_holdout(data, 0.1, seed=3)
    assert torch.equal(holdout.labels, holdout2.labels) and torch.equal(train.labels, train2.labels)
    assert len(holdout) == 100 and len(train) == 900
    assert set(holdout.labels.tolist()).isdisjoint(train.labels.tolist())
    assert sorted(holdout.labels.tolist() + train.labels.tolist()) == ids.tolist()
    _, other = carve_holdout(data, 0.1, seed=4)
    assert not torch.equal(other.labels, holdout.labels)
    assert not torch.equal(train.labels[:100], ids[:100])  # training order is shuffled


def test_load_dataset_splits_limit_and_stats(tmp_path):
    full = load_dataset("digits", None, seed=1)
    limited = load_dataset("digits", None, seed=1, limit=50)
    assert DATASETS == ("cifar10", "cifar100", "tinyimagenet", "imagefolder", "digits")
    assert len(full.holdout) == round(0.1 * 1438) and len(full.train) == 1438 - len(full.holdout)
    assert len(limited.train) == 50 and torch.equal(limited.holdout.labels, full.holdout.labels)
    assert torch.equal(limited.train.images, full.train.images[:50])
    assert len(set(limited.train.labels.tolist())) >= 8  # first images of a shuffled order mix classes
    assert limited.spec.mean == full.spec.mean and len(full.test) == 359
    pixels = full.train.images.numpy().astype(np.float64) / 255
    assert np.allclose(full.spec.mean, pixels.mean(axis=(0, 2, 3)), atol=1e-9)
    assert np.allclose(full.spec.std, pixels.std(axis=(0, 2, 3)), atol=1e-9)
    assert (full.spec.input_size, full.spec.pad, full.spec.jitter, full.spec.flip) == (16, 2, False, False)
    write_imagefolder(tmp_path, per_class=4, size=64)
    spec = load_dataset("imagefolder", tmp_path).spec
    assert (spec.classes, spec.input_size, spec.pad, spec.jitter, spec.flip) == (
        ["apple", "banana", "cherry"], 64, 8, True, True)


def test_channel_stats_matches_numpy():
    images = torch.randint(0, 256, (10, 3, 5, 5), dtype=torch.uint8)
    mean, std = channel_stats(images)
    pixels = images.numpy().astype(np.float64) / 255
    assert np.allclose(mean, pixels.mean(axis=(0, 2, 3))) and np.allclose(std, pixels.std(axis=(0, 2, 3)))


def test_cifar10_copy_in_image_folder_layout(tmp_path):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for cls in reversed(CIFAR10_NAMES):
            write_image(tmp_path / split / cls / "0.png", rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    splits = load_dataset("cifar10", tmp_path, holdout_fraction=0.0)
    assert splits.spec.classes == CIFAR10_NAMES and splits.spec.mean == (0.485, 0.456, 0.406)
    assert sorted(splits.train.labels.tolist()) == list(range(10))
    for split in ("train", "test"):
        (tmp_path / split / "truck").rename(tmp_path / split / "lorry")
    with pytest.raises(UserError, match="not a cifar10 copy"):
        load_dataset("cifar10", tmp_path)
    with pytest.raises(UserError, match="not a cifar100 copy"):
        load_dataset("cifar100", tmp_path)


def test_load_dataset_bad_arguments_are_one_line_user_errors(tmp_path):
    cases = [
        dict(name="mnist", data_dir=tmp_path),
        dict(name="cifar10", data_dir=None),
        dict(name="cifar10", data_dir=tmp_path / "absent"),
        dict(name="cifar10", data_dir=tmp_path),
        dict(name="tinyimagenet", data_dir=tmp_path),
        dict(name="imagefolder", data_dir=tmp_path),
        dict(name="tinyimagenet", data_dir=tmp_path, download=True),
        dict(name="digits", data_dir=None, limit=0),
        dict(name="digits", data_dir=None, holdout_fraction=1.0),
        dict(name="digits", data_dir=None, image_size=8),
        dict(name="cifar10", data_dir=tmp_path, coarse_labels=True),
    ]
    for case in cases:
        with pytest.raises(UserError) as info:
            load_dataset(case.pop("name"), case.pop("data_dir"), **case)
        assert "\n" not in str(info.value) and str(info.value)


@pytest.mark.slow
def test_image_size_resizes_odd_sized_images_and_is_applied_again_when_evaluating(tmp_path):
    write_imagefolder(tmp_path / "data", per_class=4, size=12)  # smaller than any built-in backbone takes
    r = run_cli("train", "--arch", "resnet56", "--dataset", "imagefolder", "--data-dir", str(tmp_path / "data"),
                "--epochs", "1", "--out", str(tmp_path / "refused"))
    assert r.returncode == 2 and "input_size must be an integer of at least 16" in r.stderr
    r = run_cli("train", "--arch", "resnet56", "--dataset", "imagefolder", "--data-dir", str(tmp_path / "data"),
                "--image-size", "16", "--epochs", "1", "--out", str(tmp_path / "run"))
    assert r.returncode == 0, r.stderr
    assert "3x16x16" in r.stdout
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["data"]["image_size"] == 16 and config["data_record"]["input_shape"] == [3, 16, 16]
    r = run_cli("evaluate", str(tmp_path / "run"))
    assert r.returncode == 0, r.stderr
