"""Train a network: the plain CNN, its internal classifiers alone (IC-only, backbone frozen), or the
whole SDN jointly with the paper's growing IC loss weights. Defaults are the paper's recipes.
Writes RUN/config.json, RUN/checkpoint.pt after every epoch and RUN/metrics.jsonl.
Under torchrun, trains with DistributedDataParallel (rank 0 writes)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import models
from ..data import DATASETS
from ..data.dataset import NORMALIZATIONS
from ..errors import UserError
from ..train import IC_LOSSES, MODES, Interrupted, TrainConfig, default_recipe, new_run, resume_run, scale_milestones
from ..train.distributed import init_from_env
from ._common import add_device_argument, add_model_arguments, model_spec, progress_bar, resolve_device

NAME = "train"
ORDER = 10
HELP = "train a CNN, its ICs (ic-only) or a whole SDN"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, type=Path, help="run folder to create (or to continue with --resume)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    p.add_argument("--mode", choices=MODES, default="cnn", help="what to train")
    add_model_arguments(p, "start from these backbone weights: a run folder or a checkpoint file")
    g = p.add_argument_group("data")
    g.add_argument("--dataset", choices=DATASETS, default="cifar10")
    g.add_argument("--data-dir", type=Path, help="folder holding the data set")
    g.add_argument("--download", action="store_true", help="download the data set when it is missing")
    g.add_argument("--holdout-fraction", type=float, default=0.1, help="share of the training set held out")
    g.add_argument("--limit", type=int, help="train on the first N training images only")
    g.add_argument("--normalization", choices=NORMALIZATIONS, default="paper",
                   help="input mean/std: the paper's per data set, ImageNet's, or the training split's own")
    g = p.add_argument_group("recipe (defaults: the paper's for --mode)")
    g.add_argument("--epochs", type=int)
    g.add_argument("--lr", type=float)
    g.add_argument("--batch-size", type=int)
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--momentum", type=float)
    g.add_argument("--milestones", help="comma-separated epochs where the learning rate drops x0.1")
    g.add_argument("--optimizer", choices=("sgd", "adam"))
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--ic-loss", choices=IC_LOSSES, default="growing",
                   help="sdn: the paper's IC loss weights growing over the epochs, or every exit weighted 1 "
                        "from the start (better when fine-tuning a trained network)")
    g = p.add_argument_group("speed")
    add_device_argument(g)
    g.add_argument("--no-amp", action="store_true", help="no bf16 mixed precision on CUDA")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument("--no-cache-features", action="store_true", help="ic-only: stream the backbone every epoch")
    g.add_argument("--cache-views", type=int, default=2, help="ic-only: augmented views of the training set cached")
    g.add_argument("--cache-budget-gb", type=float, default=4.0, help="ic-only: memory for cached features")


def _recipe(args: argparse.Namespace, weight_decay: float):
    recipe = default_recipe(args.mode, weight_decay)
    if args.epochs is not None:
        if args.epochs < 1:
            raise UserError("--epochs must be at least 1")
        recipe = scale_milestones(recipe, args.epochs)
    for name in ("lr", "batch_size", "weight_decay", "momentum", "optimizer"):
        if getattr(args, name) is not None:
            setattr(recipe, name, getattr(args, name))
    if args.milestones is not None:
        recipe.milestones = _ints(args.milestones, "--milestones")
    if recipe.lr <= 0 or recipe.batch_size < 1:
        raise UserError("--lr must be positive and --batch-size at least 1")
    return recipe


def _ints(text: str, option: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise UserError(f"{option} must be comma-separated integers, got '{text}'") from exc


def run(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    dist = init_from_env()
    log = (lambda row: print(_epoch_line(row), flush=True)) if dist.is_main else None
    try:
        if args.resume:
            metrics = resume_run(args.out, device=device, dist=dist, progress=progress_bar, on_epoch=log)
        else:
            metrics = _start(args, device, dist, log)
    except Interrupted as exc:
        print(f"{args.out}: {exc}; continue with --resume")
        return 130
    if dist.is_main and metrics:
        print(f"done: {args.out} ({len(metrics)} epochs)")
    return 0


def _start(args: argparse.Namespace, device, dist, log):
    if args.mode == "ic-only" and not args.pretrained:
        raise UserError("--mode ic-only needs a trained backbone: --from RUN_OR_WEIGHTS")
    if args.data_dir is None and args.dataset != "digits":
        raise UserError(f"--data-dir is required for --dataset {args.dataset}")
    model = model_spec(args)
    weight_decay = models.default_weight_decay(args.arch) if args.arch else 1e-4
    cfg = TrainConfig(mode=args.mode, recipe=_recipe(args, weight_decay), seed=args.seed,
                      cache_features=not args.no_cache_features, cache_views=args.cache_views,
                      cache_budget_gb=args.cache_budget_gb, amp=not args.no_amp, compile=args.compile,
                      ic_loss=args.ic_loss)
    data = {"name": args.dataset, "data_dir": str(args.data_dir) if args.data_dir else None,
            "holdout_fraction": args.holdout_fraction, "seed": args.seed, "limit": args.limit,
            "download": args.download, "normalization": args.normalization}
    return new_run(args.out, data, model, cfg, pretrained=args.pretrained, device=device, dist=dist,
                   progress=progress_bar, on_epoch=log)


def _epoch_line(row: dict) -> str:
    acc = row.get("holdout_acc")
    accs = " ".join(f"{a * 100:.1f}" for a in acc) if acc else "-"
    return f"epoch {row['epoch']:3d}  lr {row['lr']:.2e}  loss {row['train_loss']:.4f}  holdout acc per exit: {accs}"
