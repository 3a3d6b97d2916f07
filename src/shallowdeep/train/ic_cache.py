"""IC-only training on cached features.

The backbone is frozen, so the pooled maps each IC reads (max and average pooled, before the
learnable mix) depend only on the input. They are computed once per augmented view of the
training set and the ICs are trained on them, so a 25-epoch IC-only run costs a few backbone
passes instead of 25. Epoch ``e`` uses view ``e % views``; while ``e < views`` the view holds
the samples in the order the streamed epoch ``e`` would see them, with the same augmentation, so
with ``views == epochs`` and a float32 cache both paths train the same ICs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from ..data import ImageData, Splits
from ..data.loader import batches, num_batches
from ..sdn import SDN
from .recipe import TrainConfig
from .trainer import (
    Interrupted, Progress, State, epoch_generator, make_optimizer, restore, save_checkpoint, stop_on_signals,
)

PooledMaps = list[tuple[torch.Tensor, torch.Tensor | None]]  # per IC: (max-pooled, avg-pooled or None)


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
    return sum(sum(t.numel() for t in ic.pool(m) if t is not None) for ic, m in zip(net.ics, maps)) * size


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
    chunks: list[list[list[torch.Tensor]]] = [[[], []] for _ in net.ics]
    labels, final_correct = [], []
    for x, y in batches(data, splits.spec, batch_size, train=train, shuffle=train, device=device,
                        generator=generator):
        maps, final = net.features(x)
        final_correct.append(final.argmax(1) == y)
        for store, ic, m in zip(chunks, net.ics, maps):
            for part, t in zip(store, ic.pool(m)):
                if t is not None:
                    part.append(t.to(dtype))
        labels.append(y)
    pooled = [(torch.cat(mx), torch.cat(av) if av else None) for mx, av in chunks]
    return FeatureCache(pooled, torch.cat(labels), torch.cat(final_correct))


def ic_logits(net: SDN, maps: PooledMaps, index: torch.Tensor | slice) -> list[torch.Tensor]:
    """Every IC's logits for the cached samples at ``index``."""
    return [ic.classify(mx[index].float(), None if av is None else av[index].float())
            for ic, (mx, av) in zip(net.ics, maps)]


@torch.no_grad()
def cached_accuracies(net: SDN, cache: FeatureCache) -> list[float]:
    """Every IC's accuracy on a cached split, then the (frozen) final head's."""
    net.ics.eval()
    hits = [(out.argmax(1) == cache.labels).double().mean().item() for out in ic_logits(net, cache.maps, slice(None))]
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
            steps = range(num_batches(n, batch, drop_last=False, world_size=1))
            if progress is not None:
                steps = progress(iter(steps), len(steps), f"epoch {epoch + 1}/{cfg.recipe.epochs} (cached)")
            for step in steps:
                index = order[step * batch:(step + 1) * batch]
                y = cache.labels[index]
                loss = sum(F.cross_entropy(out, y) for out in ic_logits(net, cache.maps, index))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum += loss.detach()
            row = {"epoch": epoch + 1, "lr": cfg.recipe.lr_at(epoch), "train_loss": loss_sum.item() / max(1, n // batch),
                   "cached_view": view}
            if holdout is not None:
                row["holdout_acc"] = cached_accuracies(net, holdout)
            state.metrics.append(row)
            state.epoch = epoch + 1
            save_checkpoint(run_dir, net, optimizer, state)
            if on_epoch is not None:
                on_epoch(row)
            if flag["stop"] and epoch + 1 < cfg.recipe.epochs:
                raise Interrupted(f"stopped after epoch {epoch + 1}; checkpoint saved")
    return state.metrics

