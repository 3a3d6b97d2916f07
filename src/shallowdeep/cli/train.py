"""Train a network: the plain CNN, its internal classifiers alone (IC-only, backbone frozen), or the
whole SDN jointly with the paper's growing IC loss weights. Defaults are the paper's recipes.
Writes RUN/config.json, RUN/checkpoint.pt after every epoch and RUN/metrics.jsonl.
Under torchrun, trains with DistributedDataParallel (rank 0 writes)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..choices import (CACHE_BUDGET_GB, IC_LOSS, IC_LOSSES, MODES, PAPER_RECIPES, SCHEDULES, SHORT_BATCH_SIZES,
                       SHORT_BELOW, SHORT_MIN_STEPS, SHORT_RECIPES)
from ..errors import UserError
from ._common import (add_cache_views_argument, add_data_arguments, add_device_argument, add_model_arguments,
                      add_recipe_arguments, add_seed_argument, data_settings, fraction, model_spec, non_negative_float,
                      positive_ints, progress_bar, resolve_device)

NAME = "train"
ORDER = 10
HELP = "train a CNN, its ICs (ic-only) or a whole SDN"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, type=Path, help="run folder to create (or to continue with --resume)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    p.add_argument("--mode", choices=MODES, default="cnn", help="what to train")
    add_model_arguments(p, "start from these backbone weights: a run folder or a checkpoint file")
    p.add_argument("--pretrained", dest="library_weights", action="store_true",
                   help="a torchvision:NAME or timm:NAME backbone starts from the library's own pretrained weights "
                        "(fetched by the library)")
    g = add_data_arguments(p, "folder holding the data set (recorded as an absolute path; with --resume: where the "
                              "run's data is now, if it moved)")
    g.add_argument("--download", action="store_true", help="download the data set when it is missing")
    g = p.add_argument_group("recipe", "Defaults: the paper's recipe for --mode. " + _paper_recipes() +
                             " Batch 128, momentum 0.9; weight decay 5e-4 for vgg16_bn and wrn32_4, 1e-4 for the others "
                             "and your own. "
                             "A shorter --epochs moves the milestones in proportion; well below the paper's epochs "
                             f"(under {SHORT_BELOW:.0%} of them) the short schedule runs instead. " + _short_recipes())
    g.add_argument("--schedule", choices=SCHEDULES,
                   help="the paper's (lr x0.1 at the milestones) or the short one (default: short when --epochs is "
                        "well below the paper's and no --milestones are given, else the paper's)")
    add_recipe_arguments(g)
    g.add_argument("--momentum", type=fraction)
    g.add_argument("--milestones", type=positive_ints, help="comma-separated epochs where the learning rate drops x0.1")
    g.add_argument("--optimizer", choices=("sgd", "adam"))
    add_seed_argument(g)
    g.add_argument("--ic-loss", choices=IC_LOSSES, default=IC_LOSS,
                   help="sdn: the paper's IC loss weights growing over the epochs, or every exit weighted 1 "
                        "from the start (better when fine-tuning a trained network)")
    g = p.add_argument_group("speed")
    add_device_argument(g)
    g.add_argument("--no-amp", action="store_true", help="no bf16 mixed precision on CUDA")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument("--no-cache-features", action="store_true", help="ic-only: stream the backbone every epoch")
    add_cache_views_argument(g)
    g.add_argument("--cache-budget-gb", type=non_negative_float, default=CACHE_BUDGET_GB,
                   help="ic-only: memory for cached features")


def _paper_recipes() -> str:
    return " ".join(f"{mode}: {r['optimizer']} lr {r['lr']:g}, {r['epochs']} epochs, lr x0.1 at epochs "
                    f"{','.join(map(str, r['milestones']))}." for mode, r in PAPER_RECIPES.items())


def _short_recipes() -> str:
    def one(mode: str, r: dict) -> str:
        nesterov = ", Nesterov" if r.get("nesterov") else ""
        decay = f", weight decay {r['weight_decay']:g}" if "weight_decay" in r else ""
        smoothing = f", label smoothing {r['label_smoothing']:g}" if r.get("label_smoothing") else ""
        return (f"{mode}: {r['optimizer']} lr {r['lr']:g}{nesterov}{decay}, up over the first "
                f"{r['warmup']:.0%} of the batches then down to 0{smoothing}.")

    batch = (f"The cnn and sdn batch: the largest of {', '.join(map(str, SHORT_BATCH_SIZES))} that gives the run "
             f"{SHORT_MIN_STEPS:,} steps or more (else the smallest).")
    return "Short: " + " ".join(one(mode, r) for mode, r in SHORT_RECIPES.items()) + " " + batch


def _recipe_changes(args: argparse.Namespace) -> dict:
    """The recipe settings the user gave (the rest are the recipe's)."""
    return {name: getattr(args, name) for name in ("schedule", "epochs", "lr", "batch_size", "weight_decay", "momentum",
                                                   "milestones", "optimizer")}


def run(args: argparse.Namespace) -> int:
    from ..train import Interrupted, resume_run
    from ..train.distributed import init_from_env

    device = resolve_device(args.device, args.threads)
    dist = init_from_env()
    log = (lambda row: print(_epoch_line(row), flush=True)) if dist.is_main else None
    try:
        if args.resume:
            metrics = resume_run(args.out, device=device, dist=dist, progress=progress_bar, on_start=_print_lines,
                                 on_epoch=log, data_dir=args.data_dir, cache_dir=args.cache_dir)
        else:
            metrics = _start(args, device, dist, log)
    except Interrupted as exc:
        print(f"{args.out}: {exc}; continue with --resume")
        return 130
    if dist.is_main and metrics:
        print(f"done: {args.out} ({len(metrics)} epochs)")
    return 0


def _start(args: argparse.Namespace, device, dist, log):
    from ..train import TrainConfig, new_run

    data = data_settings(args, download=args.download).options()
    model = model_spec(args)
    if args.library_weights and not model.library:
        raise UserError("--pretrained applies to torchvision:NAME and timm:NAME backbones; for others use --from")
    cfg = TrainConfig(mode=args.mode, seed=args.seed,
                      cache_features=not args.no_cache_features, cache_views=args.cache_views,
                      cache_budget_gb=args.cache_budget_gb, amp=not args.no_amp, compile=args.compile,
                      ic_loss=args.ic_loss)
    return new_run(args.out, data, model, cfg, recipe_changes=_recipe_changes(args), pretrained=args.pretrained,
                   device=device, dist=dist, progress=progress_bar, on_start=_print_lines, on_epoch=log,
                   library_weights=args.library_weights)


def _print_lines(lines: list[str]) -> None:
    print("\n".join(lines), flush=True)


def _epoch_line(row: dict) -> str:
    acc = row.get("holdout_acc")
    accs = " ".join(f"{a * 100:.1f}" for a in acc) if acc else "-"
    return (f"epoch {row['epoch']:3d}  {row['seconds']:.0f} s  lr {row['lr']:.2e}  loss {row['train_loss']:.4f}  "
            f"holdout acc per exit: {accs}")
