"""IC-only training on cached features.

The backbone is frozen, so the reduced maps each IC reads (its parameter-free
:meth:`~shallowdeep.heads.ExitHead.reduce`: max and average pooled, before the learnable mix)
depend only on the input. They are computed once per augmented view of the
training set and the ICs are trained on them, so a 25-epoch IC-only run costs a few backbone
passes instead of 25. Epoch ``e`` uses view ``e % views``; while ``e < views`` the view holds
the samples in the order the streamed epoch ``e`` would see them, with the same augmentation, so
with ``views == epochs`` and a float32 cache both paths train the same ICs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from ..data import ImageData, Splits
from ..data.loader import batches, num_batches
from ..sdn import SDN
from .ensemble import fit_ensemble
from .recipe import TrainConfig
from .trainer import (
    Interrupted, Progress, State, check_finite, epoch_generator, make_optimizer, needs_ensemble, record_ensemble,
    restore, save_checkpoint, stop_on_signals,
)

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


def train_ics_cached(
    run_dir: Path,
    net: SDN,
    splits: Splits,
    cfg: TrainConfig,
    device: torch.device,
    *,
    dtype: torch.dtype = torch.float16,
    resume_from: dict[str, Any] | None = None,
    progress: Progress | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """IC-only training of ``net`` on cached pooled features; same checkpoints and metrics as streaming."""
    net.to(device).freeze_backbone()
    optimizer = make_optimizer(list(net.ics.parameters()), cfg)
    state = restore(resume_from, net, optimizer) if resume_from else State(metrics=[])
    batch = cfg.recipe.batch_size
    views: dict[int, FeatureCache] = {}
    holdout = build_cache(net, splits.holdout, splits, 512, device, dtype, None, train=False) \
        if len(splits.holdout) else None
    with stop_on_signals() as flag:
        for epoch in range(state.epoch, cfg.recipe.epochs):
            started = time.perf_counter()  # building a view's cache counts as part of its first epoch
            view = epoch % cfg.cache_views
            if view not in views:
                views[view] = build_cache(net, splits.train, splits, batch, device, dtype,
                                          epoch_generator(cfg.seed, view), train=True)
            cache = views[view]
            n = len(cache.labels)
            order = torch.arange(n, device=device) if epoch < cfg.cache_views else \
                torch.randperm(n, generator=epoch_generator(cfg.seed, epoch)).to(device)
            for group in optimizer.param_groups:
                group["lr"] = cfg.recipe.lr_at(epoch)
            net.train()
            loss_sum = torch.zeros((), device=device)
            total = num_batches(n, batch, drop_last=False, world_size=1)
            steps = range(total)
            if progress is not None:
                steps = progress(iter(steps), len(steps), f"epoch {epoch + 1}/{cfg.recipe.epochs} (cached)")
            for step in steps:
                index = order[step * batch:(step + 1) * batch]
                y = cache.labels[index]
                loss = sum(F.cross_entropy(out, y) for out in ic_logits(net, cache.maps, index))
                check_finite(loss, epoch, step)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum += loss.detach()
            row = {"epoch": epoch + 1, "lr": cfg.recipe.lr_at(epoch), "train_loss": loss_sum.item() / total,
                   "cached_view": view, "seconds": round(time.perf_counter() - started, 2)}
            if holdout is not None:
                row["holdout_acc"] = cached_accuracies(net, holdout)
            state.metrics.append(row)
            state.epoch = epoch + 1
            save_checkpoint(run_dir, net, optimizer, state)
            if on_epoch is not None:
                on_epoch(row)
            if flag["stop"] and epoch + 1 < cfg.recipe.epochs:
                raise Interrupted(f"stopped after epoch {epoch + 1}; checkpoint saved")
    if needs_ensemble(net, state, cfg.recipe.epochs):
        views.clear()  # room for the un-augmented pass the ensemble is fitted on, as in the streamed loop
        started = time.perf_counter()
        plain = build_cache(net, splits.train, splits, 512, device, dtype, None, train=False)
        loss = fit_ensemble(net, cached_ic_logits(net, plain), plain.labels)
        record_ensemble(run_dir, net, optimizer, state, loss, time.perf_counter() - started)
    return state.metrics

