"""Batched augmentation against slow per-image references, normalisation, and the batch loader."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shallowdeep.data import DatasetSpec, ImageData, batches, num_batches
from shallowdeep.data.augment import adjust_colors, color_jitter, crop_flip, normalize, random_crop_flip
from shallowdeep.data.loader import JITTER_STRENGTH
from shallowdeep.errors import UserError

LUMA = np.array([0.299, 0.587, 0.114])


def reference_crop_flip(image: np.ndarray, pad: int, top: int, left: int, flip: bool) -> np.ndarray:
    """One image (C, H, W): zero-pad, slice the window, mirror."""
    _, h, w = image.shape
    padded = np.pad(image, ((0, 0), (pad, pad), (pad, pad)))
    window = padded[:, top:top + h, left:left + w]
    return window[:, :, ::-1] if flip else window


def reference_colors(image: np.ndarray, b: float, c: float, s: float) -> np.ndarray:
    """One float64 image (3, H, W) in [0, 1], pixel by pixel."""
    out = np.clip(image * b, 0, 1)
    grey_mean = sum(LUMA[k] * out[k] for k in range(3)).mean()
    out = np.clip((out - grey_mean) * c + grey_mean, 0, 1)
    result = np.empty_like(out)
    for y in range(out.shape[1]):
        for x in range(out.shape[2]):
            grey = float(LUMA @ out[:, y, x])
            result[:, y, x] = np.clip((out[:, y, x] - grey) * s + grey, 0, 1)
    return result


def spec_for(size=8, pad=1, jitter=False, flip=True, mean=(0.5, 0.25, 0.75), std=(0.2, 0.4, 0.1)) -> DatasetSpec:
    return DatasetSpec("toy", 10, size, [str(i) for i in range(10)], mean, std, pad, jitter, flip)


def images(n=6, size=8, seed=0):
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_random_crop_flip_matches_per_image_reference():
    x = images(n=64)
    pad = 3
    out = random_crop_flip(x, pad, torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)  # the documented draw order: top, left, flip
    top = torch.randint(0, 2 * pad + 1, (64,), generator=g)
    left = torch.randint(0, 2 * pad + 1, (64,), generator=g)
    flip = torch.randint(0, 2, (64,), generator=g).bool()
    assert out.dtype == torch.uint8 and out.shape == x.shape
    assert flip.any() and not flip.all() and top.min() == 0 and top.max() == 2 * pad
    for i in range(64):
        expected = reference_crop_flip(x[i].numpy(), pad, int(top[i]), int(left[i]), bool(flip[i]))
        assert np.array_equal(out[i].numpy(), expected), i


def test_crop_flip_edge_cases():
    x = images(n=4)
    zero = torch.zeros(4, dtype=torch.long)
    assert torch.equal(crop_flip(x, 0, zero, zero, torch.zeros(4, dtype=torch.bool)), x)
    assert torch.equal(crop_flip(x, 0, zero, zero, torch.ones(4, dtype=torch.bool)), x.flip(-1))
    assert torch.equal(random_crop_flip(x, 0, torch.Generator().manual_seed(0), flip=False), x)
    g = torch.Generator().manual_seed(0)
    flipped = random_crop_flip(x, 0, g)  # pad 0: only the flip coins are drawn
    coins = torch.randint(0, 2, (4,), generator=torch.Generator().manual_seed(0)).bool()
    assert torch.equal(flipped, torch.where(coins.view(4, 1, 1, 1), x.flip(-1), x))
    corner = crop_flip(x, 2, zero + 4, zero + 4, torch.zeros(4, dtype=torch.bool))  # shifted fully down-right
    assert torch.equal(corner[:, :, :6, :6], x[:, :, 2:, 2:]) and corner[:, :, 6:].eq(0).all()


def test_color_jitter_matches_per_image_reference():
    x = images(n=5)
    out = color_jitter(x, 0.4, torch.Generator().manual_seed(3))
    factors = 1 + 0.4 * (2 * torch.rand((3, 5), generator=torch.Generator().manual_seed(3)) - 1)
    assert out.dtype == torch.float32
    for i in range(5):
        b, c, s = (float(f) for f in factors[:, i])
        expected = reference_colors(x[i].numpy().astype(np.float64) / 255, b, c, s)
        assert np.allclose(out[i].numpy(), expected, atol=1e-5), i
    unit = x.float() / 255
    assert torch.allclose(color_jitter(x, 0.0), unit)
    ones = torch.ones(5)
    saturated = adjust_colors(unit, ones, ones, torch.zeros(5))
    assert torch.allclose(saturated[:, 0], saturated[:, 2])  # saturation 0 is grey


def test_normalize_uint8_and_float():
    x = images(n=3)
    mean, std = (0.5, 0.25, 0.75), (0.2, 0.4, 0.1)
    mean_t, std_t = (torch.tensor(v, dtype=torch.float64).view(1, 3, 1, 1) for v in (mean, std))
    expected = (x.double() / 255 - mean_t) / std_t
    out = normalize(x, mean, std)
    assert out.dtype == torch.float32 and torch.allclose(out.double(), expected, atol=1e-5)
    unit = x.float() / 255
    before = unit.clone()
    assert torch.allclose(normalize(unit, mean, std).double(), expected, atol=1e-5)
    assert torch.equal(unit, before)  # the input is left alone


def test_num_batches():
    assert num_batches(10, 3) == 4 and num_batches(10, 3, drop_last=True) == 3
    assert num_batches(10, 2, world_size=3) == 2  # 4 per rank (wrapped)
    assert num_batches(10, 2, drop_last=True, world_size=3) == 1  # 3 per rank
    assert num_batches(0, 4) == 0


def test_eval_batches_are_ordered_and_exactly_normalised():
    x = images(n=10)
    data = ImageData(x, torch.arange(10))
    spec = spec_for()
    out = list(batches(data, spec, 4, train=False, shuffle=False, device="cpu"))
    assert [len(y) for _, y in out] == [4, 4, 2]
    assert torch.equal(torch.cat([y for _, y in out]), torch.arange(10))
    assert torch.allclose(torch.cat([b for b, _ in out]), normalize(x, spec.mean, spec.std))
    dropped = batches(data, spec, 4, train=False, shuffle=False, device="cpu", drop_last=True)
    assert [len(y) for _, y in dropped] == [4, 4]


def test_train_batches_are_reproducible_augmented_and_shuffled():
    x = images(n=20)
    data = ImageData(x, torch.arange(20))
    spec = spec_for(pad=2)

    def epoch(seed):
        return list(batches(data, spec, 8, train=True, shuffle=True, device="cpu",
                            generator=torch.Generator().manual_seed(seed)))

    first, again, other = epoch(1), epoch(1), epoch(2)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again))
    ids = torch.cat([y for _, y in first])
    assert sorted(ids.tolist()) == list(range(20)) and not torch.equal(ids, torch.arange(20))
    assert not torch.equal(ids, torch.cat([y for _, y in other]))
    # every image is a crop/flip of its source: redo the draws in the loader's order
    g = torch.Generator().manual_seed(1)
    order = torch.randperm(20, generator=g)
    for xb, yb in first:
        assert torch.equal(yb, order[:len(yb)])
        expected = normalize(random_crop_flip(x[yb], 2, g), spec.mean, spec.std)
        assert torch.allclose(xb, expected)
        order = order[len(yb):]


def test_jitter_follows_spec_and_channels_last():
    x = images(n=4, size=8)
    data = ImageData(x, torch.arange(4))
    plain = next(batches(data, spec_for(pad=0, flip=False), 4, train=True, shuffle=False, device="cpu"))[0]
    assert torch.allclose(plain, normalize(x, spec_for().mean, spec_for().std))
    jittered = next(batches(data, spec_for(pad=0, flip=False, jitter=True), 4, train=True, shuffle=False,
                            device="cpu", generator=torch.Generator().manual_seed(0)))[0]
    spec = spec_for()
    expected = normalize(color_jitter(x, JITTER_STRENGTH, torch.Generator().manual_seed(0)), spec.mean, spec.std)
    assert torch.allclose(jittered, expected) and not torch.allclose(jittered, plain)
    cl = next(batches(data, spec_for(), 4, train=False, shuffle=False, device="cpu", channels_last=True))[0]
    assert cl.is_contiguous(memory_format=torch.channels_last) and torch.allclose(cl, plain)


@pytest.mark.parametrize("n,world_size,drop_last", [(10, 3, False), (10, 3, True), (12, 4, False), (2, 4, False)])
def test_distributed_shards_share_one_permutation(n, world_size, drop_last):
    data = ImageData(images(n=n, size=4), torch.arange(n))
    spec = spec_for(size=4)
    seen = []
    for rank in range(world_size):
        got = [y for _, y in batches(data, spec, 2, train=False, shuffle=True, device="cpu", drop_last=drop_last,
                                     generator=torch.Generator().manual_seed(5), rank=rank, world_size=world_size)]
        assert len(got) == num_batches(n, 2, drop_last, world_size)
        seen.append(torch.cat(got).tolist() if got else [])
    flat = [i for ids in seen for i in ids]
    order = torch.randperm(n, generator=torch.Generator().manual_seed(5)).tolist()
    assert len({len(ids) for ids in seen}) == 1  # equal shares
    if drop_last:
        per_rank = num_batches(n, 2, True, world_size) * 2  # whole batches of the equal shares only
        assert len(flat) == len(set(flat)) == per_rank * world_size
        assert set(flat) <= set(order[: n - n % world_size])
    else:
        assert set(flat) == set(range(n))
        padded = (order * world_size)[: len(flat)]
        assert sorted(flat) == sorted(padded)  # each image once, plus the wrapped tail
    assert seen[0][0] == order[0] and (world_size == 1 or seen[1][0] == order[1])


def test_loader_bad_arguments():
    data = ImageData(images(n=2), torch.arange(2))
    for kwargs in (dict(batch_size=0), dict(batch_size=2, rank=2, world_size=2)):
        batch_size = kwargs.pop("batch_size")
        with pytest.raises(UserError):
            batches(data, spec_for(), batch_size, train=False, shuffle=False, device="cpu", **kwargs)
    assert list(batches(ImageData(images(n=0), torch.zeros(0, dtype=torch.long)), spec_for(), 2, train=True,
                        shuffle=True, device="cpu")) == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_augmentation_on_cuda_matches_cpu():
    x = images(n=64, size=32)
    g_cpu, g_cuda = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    cpu = random_crop_flip(x, 4, g_cpu)
    cuda = random_crop_flip(x.cuda(), 4, g_cuda)  # CPU generator, CUDA batch: draws move to the batch
    assert cuda.is_cuda and torch.equal(cuda.cpu(), cpu)
    factors = (torch.rand(3, 64) + 0.5)
    assert torch.allclose(adjust_colors(x.cuda().float() / 255, *factors.cuda()).cpu(),
                          adjust_colors(x.float() / 255, *factors), atol=1e-5)
    data = ImageData(x, torch.arange(64)).to("cuda")
    xb, yb = next(batches(data, spec_for(size=32), 16, train=True, shuffle=True, device="cuda",
                          generator=torch.Generator(device="cuda").manual_seed(0)))
    assert xb.is_cuda and yb.is_cuda and xb.shape == (16, 3, 32, 32)
