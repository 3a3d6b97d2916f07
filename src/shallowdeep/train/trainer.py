"""The one training loop of the three modes (plain CNN, IC-only, SDN), over any batch source
(:mod:`shallowdeep.train.sources`: streamed images, or IC-only's cached maps).

Every epoch draws its shuffling and augmentation from a generator seeded by (seed, epoch), so an
epoch can be replayed: a run resumed from a checkpoint ends with the same weights as one that
never stopped. A checkpoint is written atomically after every epoch, and also mid-epoch when
SIGTERM or Ctrl-C arrive (then the run stops cleanly and ``--resume`` continues from that batch).
"""

from __future__ import annotations

import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from ..run import write_checkpoint
from ..sdn import SDN
from .distributed import DistInfo
from .ensemble import fit_ensemble
from .recipe import TrainConfig, sdn_ic_weights
from .sources import BatchSource, epoch_seed

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
        return torch.optim.SGD(params, lr=r.lr, momentum=r.momentum, weight_decay=r.weight_decay,
                               nesterov=r.nesterov and r.momentum > 0)
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


def weighted_loss(outputs: list[torch.Tensor], y: torch.Tensor, weights: list[float],
                  label_smoothing: float = 0.0) -> torch.Tensor:
    """Sum over exits of weight times cross-entropy (exits of weight 0 are skipped)."""
    return sum(w * F.cross_entropy(out.float(), y, label_smoothing=label_smoothing)
               for out, w in zip(outputs, weights) if w)


@contextmanager
def stop_on_signals(enabled: bool = True) -> Iterator[dict[str, bool]]:
    """Turn SIGTERM and SIGINT into a flag the loop checks after every batch (when ``enabled``)."""
    flag = {"stop": False}
    if not enabled:
        yield flag
        return

    def handler(signum: int, frame: Any) -> None:
        flag["stop"] = True

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@contextmanager
def stop_at_once(message: str, enabled: bool = True) -> Iterator[None]:
    """While the block runs, SIGTERM and SIGINT raise :class:`Interrupted` with ``message`` at once (when
    ``enabled``): for work that saves nothing until it ends, so that it may stop anywhere."""
    if not enabled:
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise Interrupted(message)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def save_checkpoint(run_dir: Path, net: SDN, optimizer: torch.optim.Optimizer, state: State) -> None:
    """Write where the run stands into its folder (see :func:`shallowdeep.run.write_checkpoint`)."""
    write_checkpoint(run_dir, {"model": net.state_dict(), "optimizer": optimizer.state_dict(),
                               "epoch": state.epoch, "step": state.step,
                               "rng": state.rng if state.rng is not None else torch.get_rng_state(),
                               "ensemble_trained": state.ensemble_trained}, state.metrics or [])


def restore(ckpt: dict[str, Any], net: SDN, optimizer: torch.optim.Optimizer) -> State:
    """Load a resumable checkpoint into ``net`` and ``optimizer``."""
    try:
        net.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
    except (KeyError, ValueError, RuntimeError) as exc:
        raise UserError(f"the checkpoint does not fit this run's model or optimiser ({exc!s:.200})") from exc
    # the counters' types were checked when the checkpoint was read (shallowdeep.run.Run.load_checkpoint)
    return State(ckpt.get("epoch", 0), ckpt.get("step", 0), list(ckpt.get("metrics", [])), ckpt.get("rng"),
                 bool(ckpt.get("ensemble_trained", False)))


def needs_ensemble(net: SDN, state: State, epochs: int) -> bool:
    """Whether the run has finished its epochs but not yet fitted its exit ensemble."""
    return net.ensemble is not None and state.epoch >= epochs and not state.ensemble_trained


def train(
    run_dir: Path | None,
    net: SDN,
    source: BatchSource,
    cfg: TrainConfig,
    device: torch.device,
    *,
    resume_from: dict[str, Any] | None = None,
    dist: DistInfo | None = None,
    progress: Progress | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Train ``net`` in ``cfg.mode`` on the batches of ``source`` and return the metrics of every epoch.

    The run folder receives a checkpoint and the metrics log after every epoch (rank 0 only); without one
    (None) nothing is written and signals are left alone. The learning rate is set before every batch. A ZTW
    ensemble is fitted once the epochs are done, on IC logits the source computes.
    """
    dist = dist or DistInfo()
    net.to(device)
    if cfg.mode == "ic-only":
        net.freeze_backbone()
    optimizer = make_optimizer(trainable_parameters(net, cfg.mode), cfg)
    state = restore(resume_from, net, optimizer) if resume_from else State(metrics=[])
    source.start(net, cfg, device, dist)
    writes = run_dir is not None and dist.is_main
    recipe = cfg.recipe
    with stop_on_signals(run_dir is not None) as flag:
        for epoch in range(state.epoch, recipe.epochs):
            started = time.perf_counter()
            weights = exit_weights(cfg, len(net.ics), epoch)
            torch.manual_seed(epoch_seed(cfg.seed, epoch))  # dropout
            stream, steps, info = source.epoch(epoch)
            if state.step > steps:
                raise UserError(f"the checkpoint is at batch {state.step} of epoch {epoch + 1}, which has only "
                                f"{steps} batches; it does not belong to this run's data or recipe")
            if progress is not None and dist.is_main:
                stream = progress(stream, steps, f"epoch {epoch + 1}/{cfg.recipe.epochs}")
            net.train()
            loss_sum = torch.zeros((), device=device)
            for step, (inputs, y) in enumerate(stream):
                if step < state.step:
                    continue  # replaying the part of the epoch done before the interruption
                if step == state.step and state.rng is not None:
                    torch.set_rng_state(state.rng)
                for group in optimizer.param_groups:
                    group["lr"] = recipe.lr_at(epoch, step, steps)
                loss = weighted_loss(source.outputs(inputs), y, weights, recipe.label_smoothing)
                check_finite(loss, epoch, step)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum += loss.detach()
                if flag["stop"]:
                    if writes:
                        save_checkpoint(run_dir, net, optimizer,
                                        State(epoch, step + 1, state.metrics, torch.get_rng_state()))
                    raise Interrupted(f"stopped at epoch {epoch + 1}, batch {step + 1}; checkpoint saved")
            if dist.world_size > 1:
                torch.distributed.all_reduce(loss_sum)
                loss_sum /= dist.world_size
            done_steps = max(1, steps - state.step)
            state.step, state.rng = 0, None
            row = {"epoch": epoch + 1, "lr": recipe.lr_at(epoch, max(0, steps - 1), steps),
                   "train_loss": loss_sum.item() / done_steps,
                   "loss_weights": weights, **info, "seconds": round(time.perf_counter() - started, 2)}
            holdout = source.holdout_accuracies()
            if holdout:
                row["holdout_acc"] = holdout
            state.metrics.append(row)
            state.epoch = epoch + 1
            if writes:
                save_checkpoint(run_dir, net, optimizer, state)
            if dist.is_main and on_epoch is not None:
                on_epoch(row)
    if needs_ensemble(net, state, recipe.epochs):
        stopped = "stopped before the exit ensemble was fitted, after the last epoch; checkpoint saved"
        if flag["stop"]:  # a signal came after the last batch
            raise Interrupted(stopped)
        started = time.perf_counter()
        with stop_at_once(stopped, run_dir is not None):
            logits, labels = source.ensemble_inputs()
            loss = fit_ensemble(net, logits, labels)
        state.ensemble_trained = True
        state.metrics[-1].update(ensemble_loss=loss, ensemble_seconds=round(time.perf_counter() - started, 2))
        if writes:
            save_checkpoint(run_dir, net, optimizer, state)
    return state.metrics
