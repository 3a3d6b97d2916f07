"""The training loop shared by the three modes (plain CNN, IC-only, SDN).

Every epoch draws its shuffling and augmentation from a generator seeded by (seed, epoch), so an
epoch can be replayed: a run resumed from a checkpoint ends with the same weights as one that
never stopped. A checkpoint is written atomically after every epoch, and also mid-epoch when
SIGTERM or Ctrl-C arrive (then the run stops cleanly and ``--resume`` continues from that batch).
"""

from __future__ import annotations

import json
import math
import signal
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..data import Splits
from ..data.loader import batches, num_batches
from ..errors import UserError
from ..io import atomic_torch_save, atomic_write_bytes
from ..run import CHECKPOINT, CHECKPOINT_FORMAT, METRICS
from ..sdn import SDN
from .distributed import DistInfo
from .ensemble import fit_ensemble, streamed_ic_logits
from .recipe import TrainConfig, sdn_ic_weights

Progress = Callable[[Iterator, int, str], Iterator]


class Interrupted(Exception):
    """Training stopped by a signal after saving a checkpoint."""


@dataclass
class State:
    """Where a run stands: finished epochs, batches done in the current epoch, metrics so far."""

    epoch: int = 0
    step: int = 0
    metrics: list[dict[str, Any]] | None = None
    rng: torch.Tensor | None = None  # the global RNG (dropout) at ``step``, for a mid-epoch resume
    ensemble_trained: bool = False  # ZTW: the exit ensemble was fitted after the last epoch


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator of one epoch's shuffling and augmentation."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def trainable_parameters(net: SDN, mode: str) -> list[nn.Parameter]:
    """The ICs' parameters in IC-only mode, else every parameter but the ensemble's (trained afterwards)."""
    if mode == "ic-only":
        return list(net.ics.parameters())
    return [p for name, p in net.named_parameters() if not name.startswith("ensemble.")]


def check_finite(loss: torch.Tensor, epoch: int, step: int) -> None:
    """A one-line error when the loss is NaN or infinite (the last checkpoint is kept)."""
    if not torch.isfinite(loss):
        raise UserError(
            f"the loss became {loss.item()} at epoch {epoch + 1}, batch {step + 1}; "
            "lower the learning rate (--lr); the last checkpoint is kept"
        )


def make_optimizer(params: list[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    r = cfg.recipe
    if r.optimizer == "sgd":
        return torch.optim.SGD(params, lr=r.lr, momentum=r.momentum, weight_decay=r.weight_decay)
    if r.optimizer == "adam":
        return torch.optim.Adam(params, lr=r.lr, weight_decay=r.weight_decay)
    raise UserError(f"unknown optimizer '{r.optimizer}': choose sgd or adam")


def exit_weights(cfg: TrainConfig, num_ics: int, epoch: int) -> list[float]:
    """Loss weight of every exit in ``epoch``: ICs then the final head."""
    if cfg.mode == "cnn":
        return [0.0] * num_ics + [1.0]
    if cfg.mode == "ic-only":
        return [1.0] * num_ics + [0.0]
    if cfg.ic_loss == "uniform":
        return [1.0] * (num_ics + 1)
    return sdn_ic_weights(epoch, cfg.recipe.epochs, cfg.ic_weights) + [1.0]


def weighted_loss(outputs: list[torch.Tensor], y: torch.Tensor, weights: list[float]) -> torch.Tensor:
    """Sum over exits of weight times cross-entropy (exits of weight 0 are skipped)."""
    return sum(w * F.cross_entropy(out.float(), y) for out, w in zip(outputs, weights) if w)


@contextmanager
def stop_on_signals() -> Iterator[dict[str, bool]]:
    """Turn SIGTERM and SIGINT into a flag the loop checks after every batch."""
    flag = {"stop": False}

    def handler(signum: int, frame: Any) -> None:
        flag["stop"] = True

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def save_checkpoint(run_dir: Path, net: SDN, optimizer: torch.optim.Optimizer, state: State) -> None:
    """Write the checkpoint, then the metrics log rebuilt from it (both atomically)."""
    atomic_torch_save(
        {"format": CHECKPOINT_FORMAT, "model": net.state_dict(), "optimizer": optimizer.state_dict(),
         "epoch": state.epoch, "step": state.step, "metrics": state.metrics or [],
         "rng": state.rng if state.rng is not None else torch.get_rng_state(),
         "ensemble_trained": state.ensemble_trained},
        run_dir / CHECKPOINT,
    )
    lines = "".join(json.dumps(m) + "\n" for m in state.metrics or [])
    atomic_write_bytes(run_dir / METRICS, lines.encode())


def restore(ckpt: dict[str, Any], net: SDN, optimizer: torch.optim.Optimizer) -> State:
    """Load a resumable checkpoint into ``net`` and ``optimizer``."""
    try:
        net.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
    except (KeyError, ValueError, RuntimeError) as exc:
        raise UserError(f"the checkpoint does not fit this run's model or optimiser ({exc!s:.200})") from exc
    return State(int(ckpt["epoch"]), int(ckpt["step"]), list(ckpt.get("metrics", [])), ckpt.get("rng"),
                 bool(ckpt.get("ensemble_trained", False)))


def needs_ensemble(net: SDN, state: State, epochs: int) -> bool:
    """Whether the run has finished its epochs but not yet fitted its exit ensemble."""
    return net.ensemble is not None and state.epoch >= epochs and not state.ensemble_trained


def record_ensemble(run_dir: Path, net: SDN, optimizer: torch.optim.Optimizer, state: State, loss: float,
                    seconds: float, is_main: bool = True) -> None:
    """Mark the ensemble as fitted (its loss and time in the last metrics row) and save the checkpoint."""
    state.ensemble_trained = True
    if state.metrics:
        state.metrics[-1].update(ensemble_loss=loss, ensemble_seconds=round(seconds, 2))
    if is_main:
        save_checkpoint(run_dir, net, optimizer, state)


@torch.no_grad()
def exit_accuracies(net: nn.Module, splits: Splits, device: torch.device, batch_size: int = 512) -> list[float]:
    """Top-1 accuracy of every exit on the holdout split."""
    net.eval()
    correct = None
    total = 0
    for x, y in batches(splits.holdout, splits.spec, batch_size, train=False, shuffle=False, device=device):
        hits = torch.stack([(o.argmax(1) == y).sum() for o in net.exit_logits(x)])
        correct = hits if correct is None else correct + hits
        total += len(y)
    return [] if correct is None else (correct.double() / max(1, total)).tolist()


def train(
    run_dir: Path,
    net: SDN,
    splits: Splits,
    cfg: TrainConfig,
    device: torch.device,
    *,
    resume_from: dict[str, Any] | None = None,
    dist: DistInfo | None = None,
    progress: Progress | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Train ``net`` in ``cfg.mode`` and return the metrics of every epoch.

    The run folder receives a checkpoint and the metrics log after every epoch (rank 0 only).
    """
    dist = dist or DistInfo()
    net.to(device)
    if cfg.mode == "ic-only":
        net.freeze_backbone()
    use_cuda = device.type == "cuda"
    if use_cuda and cfg.channels_last:
        net.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(trainable_parameters(net, cfg.mode), cfg)
    state = restore(resume_from, net, optimizer) if resume_from else State(metrics=[])
    model: nn.Module = dist.wrap(net, device)
    step_fn = torch.compile(model) if cfg.compile else model
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if use_cuda and cfg.amp else nullcontext()
    per_process = cfg.recipe.batch_size // dist.world_size
    steps = num_batches(len(splits.train), per_process, drop_last=False, world_size=dist.world_size)

    with stop_on_signals() as flag:
        for epoch in range(state.epoch, cfg.recipe.epochs):
            for group in optimizer.param_groups:
                group["lr"] = cfg.recipe.lr_at(epoch)
            weights = exit_weights(cfg, len(net.ics), epoch)
            started = time.perf_counter()
            torch.manual_seed(cfg.seed * 1_000_003 + epoch)  # dropout
            model.train()
            loss_sum = torch.zeros((), device=device)
            stream = batches(splits.train, splits.spec, per_process, train=True, shuffle=True, device=device,
                             generator=epoch_generator(cfg.seed, epoch), rank=dist.rank,
                             world_size=dist.world_size, channels_last=use_cuda and cfg.channels_last)
            if progress is not None and dist.is_main:
                stream = progress(stream, steps, f"epoch {epoch + 1}/{cfg.recipe.epochs}")
            for step, (x, y) in enumerate(stream):
                if step < state.step:
                    continue  # replaying the part of the epoch done before the interruption
                if step == state.step and state.rng is not None:
                    torch.set_rng_state(state.rng)
                with autocast:
                    loss = weighted_loss(step_fn(x), y, weights)
                check_finite(loss, epoch, step)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum += loss.detach()
                if flag["stop"]:
                    if dist.is_main:
                        save_checkpoint(run_dir, net, optimizer,
                                        State(epoch, step + 1, state.metrics, torch.get_rng_state()))
                    raise Interrupted(f"stopped at epoch {epoch + 1}, batch {step + 1}; checkpoint saved")
            if dist.world_size > 1:
                torch.distributed.all_reduce(loss_sum)
                loss_sum /= dist.world_size
            done_steps = max(1, steps - state.step)
            state.step, state.rng = 0, None
            row = {"epoch": epoch + 1, "lr": cfg.recipe.lr_at(epoch), "train_loss": loss_sum.item() / done_steps,
                   "loss_weights": weights, "seconds": round(time.perf_counter() - started, 2)}
            if len(splits.holdout):
                row["holdout_acc"] = exit_accuracies(net, splits, device)
            if not math.isfinite(row["train_loss"]):
                raise UserError(f"the loss became NaN in epoch {epoch + 1}; lower the learning rate (--lr)")
            state.metrics.append(row)
            state.epoch = epoch + 1
            if dist.is_main:
                save_checkpoint(run_dir, net, optimizer, state)
                if on_epoch is not None:
                    on_epoch(row)
    if needs_ensemble(net, state, cfg.recipe.epochs):
        started = time.perf_counter()
        logits, labels = streamed_ic_logits(net, splits.train, splits, device)
        loss = fit_ensemble(net, logits, labels)
        record_ensemble(run_dir, net, optimizer, state, loss, time.perf_counter() - started, dist.is_main)
    return state.metrics
