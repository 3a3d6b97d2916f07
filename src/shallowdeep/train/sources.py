"""Where the training loop's batches come from, and how the network answers them.

- :class:`StreamedImages`: augmented images through the whole network (every mode, any number of
  processes).
- :class:`CachedMaps`: IC-only on one process: the frozen backbone's reduced maps of each augmented
  view of the training set are computed once (:mod:`shallowdeep.train.ic_cache`) and the ICs are
  trained on them, so a 25-epoch run costs a few backbone passes instead of 25.
- :class:`LoaderBatches`: the batches of a user's ``DataLoader``, already augmented and normalised, through
  the whole network (:func:`shallowdeep.train_sdn`).
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Iterable, Iterator, Mapping, Protocol

import torch
from torch import nn

from ..data import Splits
from ..data.loader import batches, num_batches
from ..errors import UserError
from ..eval_mode import eval_mode
from ..sdn import SDN
from .distributed import DistInfo
from .ensemble import streamed_ic_logits
from .ic_cache import FeatureCache, build_cache, cached_accuracies, cached_ic_logits, ic_logits
from .recipe import TrainConfig

Epoch = tuple[Iterator[tuple[Any, torch.Tensor]], int, dict[str, Any]]


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch of a run seeded ``seed``: its shuffling and augmentation, and its dropout."""
    return seed * 1_000_003 + epoch


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator of one epoch's shuffling and augmentation."""
    return torch.Generator().manual_seed(epoch_seed(seed, epoch))


class BatchSource(Protocol):
    """What the training loop asks of a source of batches."""

    def start(self, net: SDN, cfg: TrainConfig, device: torch.device, dist: DistInfo) -> None:
        """Get ready to train ``net``."""

    def epoch(self, epoch: int) -> Epoch:
        """The batches ``(inputs, labels)`` of ``epoch`` in a replayable order, their number, and what
        the metrics row records about them."""

    def outputs(self, inputs: Any) -> list[torch.Tensor]:
        """The logits of every exit trained on ``inputs`` (ICs, then the final head when streamed)."""

    def holdout_accuracies(self) -> list[float]:
        """What every exit answers, scored on the holdout split ([] without one)."""

    def ensemble_inputs(self) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Every IC's logits on the un-augmented training split, and its labels."""


class StreamedImages:
    """Augmented training images through the network, sharded over the processes of a distributed run."""

    def __init__(self, splits: Splits) -> None:
        self.splits = splits

    def start(self, net: SDN, cfg: TrainConfig, device: torch.device, dist: DistInfo) -> None:
        self.net, self.cfg, self.device, self.dist = net, cfg, device, dist
        self.channels_last = device.type == "cuda" and cfg.channels_last
        if self.channels_last:
            net.to(memory_format=torch.channels_last)
        model: nn.Module = dist.wrap(net, device)
        self.model = torch.compile(model) if cfg.compile else model
        use_amp = device.type == "cuda" and cfg.amp
        self.autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if use_amp else nullcontext
        self.batch_size = cfg.recipe.batch_size // dist.world_size

    def epoch(self, epoch: int) -> Epoch:
        d = self.dist
        stream = batches(self.splits.train, self.splits.spec, self.batch_size, train=True, shuffle=True,
                         device=self.device, generator=epoch_generator(self.cfg.seed, epoch), rank=d.rank,
                         world_size=d.world_size, channels_last=self.channels_last)
        steps = num_batches(len(self.splits.train), self.batch_size, drop_last=False, world_size=d.world_size)
        return stream, steps, {}

    def outputs(self, inputs: torch.Tensor) -> list[torch.Tensor]:
        with self.autocast():
            return self.model(inputs)

    def holdout_accuracies(self, batch_size: int = 512) -> list[float]:
        if not len(self.splits.holdout):
            return []
        return exit_accuracies(self.net, batches(self.splits.holdout, self.splits.spec, batch_size, train=False,
                                                 shuffle=False, device=self.device))

    def ensemble_inputs(self) -> tuple[list[torch.Tensor], torch.Tensor]:
        return streamed_ic_logits(self.net, self.splits.train, self.splits, self.device)


@torch.no_grad()
def exit_accuracies(net: SDN, stream: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> list[float]:
    """What share of the batches of ``stream`` every exit answers right (``net`` left in eval mode)."""
    net.eval()
    correct, total = None, 0
    for x, y in stream:
        hits = torch.stack([(o.argmax(1) == y).sum() for o in net.exit_logits(x)])
        correct = hits if correct is None else correct + hits
        total += len(y)
    return [] if correct is None else (correct.double() / total).tolist()


def checked_batch(batch: Any, classes: int | None = None, which: str = "training") -> tuple[torch.Tensor, torch.Tensor]:
    """``batch`` as the pair a user's ``which`` loader must give: float images (N, C, H, W) and N class indices
    (from 0 to ``classes`` - 1 when it is given); a one-line error saying what came instead."""
    if isinstance(batch, Mapping):
        raise UserError(f"the {which} loader must give (images, labels) batches, got a {type(batch).__name__} with "
                        f"keys {', '.join(map(str, batch))}")
    try:
        x, y = batch
    except (TypeError, ValueError):
        raise UserError(f"the {which} loader must give (images, labels) batches, got a {type(batch).__name__}") \
            from None
    if not (isinstance(x, torch.Tensor) and x.is_floating_point() and x.dim() == 4):
        raise UserError(f"the {which} loader's images must be a float tensor (N, C, H, W), got "
                        f"{type(x).__name__} {tuple(getattr(x, 'shape', ()))}")
    if not (isinstance(y, torch.Tensor) and not y.is_floating_point() and not y.is_complex()
            and y.shape == x.shape[:1]):
        raise UserError(f"the {which} loader's labels must be {len(x)} class indices, got "
                        f"{type(y).__name__} {tuple(getattr(y, 'shape', ()))}")
    if classes is not None and len(y):
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= classes:
            raise UserError(f"the {which} loader's labels go from {lo} to {hi}, but the network has {classes} "
                            f"classes (0 to {classes - 1})")
    return x, y


class LoaderBatches(StreamedImages):
    """The batches ``(images, labels)`` of a user's loaders, taken as they come (augmented and normalised by
    the user's pipeline) and moved to the device. An epoch's order is the loader's: drawn from the global
    random generator, which the training loop seeds per epoch, unless the loader has its own generator."""

    TRAINED_FROM = "dataloader"  # a run's config records it: the command line cannot replay these batches

    def __init__(self, train: Iterable, holdout: Iterable | None = None) -> None:
        try:
            self.steps = len(train)
        except TypeError:
            raise UserError("the training loader must have a length (a DataLoader over a data set with one)") from None
        self.train, self.holdout = train, holdout

    def epoch(self, epoch: int) -> Epoch:
        return self._moved(self.train), self.steps, {}

    def _moved(self, loader: Iterable, which: str = "training") -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        classes = self.net.ics[0].linear.out_features if self.net.ics else None
        for batch in loader:
            x, y = checked_batch(batch, classes, which)
            x = x.to(self.device, non_blocking=True)
            yield (x.contiguous(memory_format=torch.channels_last) if self.channels_last else x), \
                y.to(self.device, torch.long, non_blocking=True)

    def holdout_accuracies(self) -> list[float]:
        return [] if self.holdout is None else exit_accuracies(self.net, self._moved(self.holdout, "validation"))

    @torch.no_grad()
    def ensemble_inputs(self) -> tuple[list[torch.Tensor], torch.Tensor]:
        chunks: list[list[torch.Tensor]] = [[] for _ in self.net.ics]
        labels = []
        with eval_mode(self.net):
            for x, y in self._moved(self.train):
                for store, out in zip(chunks, self.net(x)[:-1]):
                    store.append(out.float())
                labels.append(y)
        return [torch.cat(c) for c in chunks], torch.cat(labels)


class CachedMaps:
    """IC-only batches from cached reduced maps. Epoch ``e`` uses view ``e % views``; while ``e < views``
    the view holds the samples in the order the streamed epoch ``e`` would see them, with the same
    augmentation, so with ``views == epochs`` and a float32 cache both sources train the same ICs."""

    def __init__(self, splits: Splits, dtype: torch.dtype = torch.float16) -> None:
        self.splits, self.dtype = splits, dtype
        self.views: dict[int, FeatureCache] = {}

    def start(self, net: SDN, cfg: TrainConfig, device: torch.device, dist: DistInfo) -> None:
        if dist.world_size > 1:
            raise ValueError("cached maps train on one process; stream the images in a distributed run")
        self.net, self.cfg, self.device = net, cfg, device
        self.holdout = build_cache(net, self.splits.holdout, self.splits, 512, device, self.dtype, None,
                                   train=False) if len(self.splits.holdout) else None

    def epoch(self, epoch: int) -> Epoch:
        view = epoch % self.cfg.cache_views
        if view not in self.views:  # building a view counts as part of its first epoch
            self.views[view] = build_cache(self.net, self.splits.train, self.splits, self.cfg.recipe.batch_size,
                                           self.device, self.dtype, epoch_generator(self.cfg.seed, view), train=True)
        self.cache = self.views[view]
        n, batch = len(self.cache.labels), self.cfg.recipe.batch_size
        order = torch.arange(n, device=self.device) if epoch < self.cfg.cache_views else \
            torch.randperm(n, generator=epoch_generator(self.cfg.seed, epoch)).to(self.device)
        steps = num_batches(n, batch, drop_last=False, world_size=1)
        stream = ((index, self.cache.labels[index]) for index in order.split(batch))
        return stream, steps, {"cached_view": view}

    def outputs(self, index: torch.Tensor) -> list[torch.Tensor]:
        return ic_logits(self.net, self.cache.maps, index)

    def holdout_accuracies(self) -> list[float]:
        return [] if self.holdout is None else cached_accuracies(self.net, self.holdout)

    def ensemble_inputs(self) -> tuple[list[torch.Tensor], torch.Tensor]:
        self.views.clear()  # room for the un-augmented pass the ensemble is fitted on
        plain = build_cache(self.net, self.splits.train, self.splits, 512, self.device, self.dtype, None, train=False)
        return cached_ic_logits(self.net, plain), plain.labels
