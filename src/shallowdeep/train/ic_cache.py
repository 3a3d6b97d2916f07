"""The cache of IC-only training: with the backbone frozen, the reduced maps each IC reads (its
parameter-free :meth:`~shallowdeep.heads.ExitHead.reduce`) depend only on the input, so one pass
over an augmented view of a split serves several epochs (see :class:`shallowdeep.train.sources.CachedMaps`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data import ImageData, Splits
from ..data.loader import batches
from ..sdn import SDN
from .recipe import TrainConfig

PooledMaps = list[tuple[torch.Tensor, ...]]  # per IC: its reduced maps


@dataclass
class FeatureCache:
    """The pooled IC inputs of one pass over a split, its labels and the final head's hits, in the order of
    that pass."""

    maps: PooledMaps
    labels: torch.Tensor
    final_correct: torch.Tensor


def bytes_per_sample(net: SDN, input_shape: tuple[int, ...], dtype: torch.dtype) -> int:
    """Memory one sample takes in the cache."""
    device = next(net.parameters()).device
    with torch.no_grad():
        maps, _ = net.eval().features(torch.zeros(1, *input_shape, device=device))
    size = torch.tensor([], dtype=dtype).element_size()
    return sum(sum(t.numel() for t in ic.reduce(m)) for ic, m in zip(net.ics, maps)) * size


def fits_in_budget(net: SDN, splits: Splits, cfg: TrainConfig, dtype: torch.dtype) -> bool:
    """Whether all views of the training set and the holdout set fit in ``cfg.cache_budget_gb``."""
    shape = tuple(splits.train.images.shape[1:])
    samples = cfg.cache_views * len(splits.train) + len(splits.holdout)
    return samples * bytes_per_sample(net, shape, dtype) <= cfg.cache_budget_gb * 2**30


@torch.no_grad()
def build_cache(net: SDN, data: ImageData, splits: Splits, batch_size: int, device: torch.device,
                dtype: torch.dtype, generator: torch.Generator | None, train: bool) -> FeatureCache:
    """One pass of the frozen backbone over ``data`` (shuffled and augmented when ``train``)."""
    net.eval()
    chunks: list[list[list[torch.Tensor]]] | None = None
    labels, final_correct = [], []
    for x, y in batches(data, splits.spec, batch_size, train=train, shuffle=train, device=device,
                        generator=generator):
        maps, final = net.features(x)
        final_correct.append(final.argmax(1) == y)
        reduced = [ic.reduce(m) for ic, m in zip(net.ics, maps)]
        chunks = chunks or [[[] for _ in parts] for parts in reduced]
        for store, parts in zip(chunks, reduced):
            for part, t in zip(store, parts):
                part.append(t.to(dtype))
        labels.append(y)
    pooled = [tuple(torch.cat(part) for part in store) for store in chunks or []]
    return FeatureCache(pooled, torch.cat(labels), torch.cat(final_correct))


def ic_logits(net: SDN, maps: PooledMaps, index: torch.Tensor | slice) -> list[torch.Tensor]:
    """Every IC's logits for the cached samples at ``index`` (each cascading IC reads the one before)."""
    outputs: list[torch.Tensor] = []
    for ic, parts in zip(net.ics, maps):
        outputs.append(ic.classify(tuple(t[index].float() for t in parts), outputs[-1] if outputs else None))
    return outputs


@torch.no_grad()
def cached_ic_logits(net: SDN, cache: FeatureCache, batch_size: int = 1024) -> list[torch.Tensor]:
    """Every IC's logits (eval mode) on all samples of a cache, in its order."""
    net.ics.eval()
    n = len(cache.labels)
    parts = [ic_logits(net, cache.maps, slice(i, i + batch_size)) for i in range(0, n, batch_size)]
    return [torch.cat([p[k] for p in parts]) for k in range(len(net.ics))]


@torch.no_grad()
def cached_accuracies(net: SDN, cache: FeatureCache) -> list[float]:
    """What every exit answers, scored on a cached split: the ICs (or their ensemble), then the frozen
    final head."""
    answers = net.combine([*cached_ic_logits(net, cache), torch.empty(0)])[:-1]
    hits = [(out.argmax(1) == cache.labels).double().mean().item() for out in answers]
    return hits + [cache.final_correct.double().mean().item()]
