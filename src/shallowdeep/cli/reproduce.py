"""Reproduce the paper's experiment on one backbone and data set, each step in its own run folder under --out:
the plain CNN (OUT/cnn); its ICs trained alone (OUT/ic-only); an SDN trained jointly (OUT/sdn); the mixed regime,
the trained CNN fine-tuned as a whole SDN with every exit weighted 1 (OUT/mixed); then, on each, evaluate, early
exit at a 1-point drop (calibrated on the holdout split, on a test half, and certified with confidence 0.9),
overthinking and confusion, written as those commands write them; optionally the backdoor study on the CNN
(OUT/backdoor). --scale quick trains with the short schedule and the same budget in epochs for cnn + ic-only, sdn
and cnn + mixed (4 + 1, 5, 4 + 1); --scale paper with the paper's recipes (100 epochs CNN and SDN, 25 IC-only; the
mixed regime 25 at lr 0.01). Run the same command again to skip what is finished and continue what was interrupted.
Writes OUT/tables.md and OUT/tables.json: every figure beside the paper's for the same cell, with its citation, or
"not stated", and the answer: at an equal training budget, does SDN training (or the mixed regime) beat IC-only
training on the early-exit cost at a 1-point drop and on final accuracy? Exit code 1 when a step failed."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UserError
from ..reproduce import DEFAULT_STEPS, SCALES, STEPS
from ._common import (add_cache_views_argument, add_data_arguments, add_device_argument, add_model_arguments,
                      add_seed_argument, data_settings, model_spec, open_fraction, progress_bar, resolve_device)

NAME = "reproduce"
ORDER = 8
HELP = "the paper's experiment on one backbone and data set, resumable, with tables beside the paper's figures"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, type=Path, help="folder of the reproduction (one run folder per step)")
    p.add_argument("--scale", choices=SCALES, default="quick",
                   help="quick: short schedule, equal budgets; paper: the paper's recipes")
    p.add_argument("--steps", type=_steps, default=",".join(DEFAULT_STEPS),
                   help=f"comma-separated steps to run, of {','.join(STEPS)} (each training with its analyses)")
    add_model_arguments(p, None)
    g = add_data_arguments(p, "folder holding the data set (on a rerun: where it is now)", holdout=open_fraction,
                           holdout_help="share of the training set held out (chooses early-exit thresholds)")
    g.add_argument("--download", action="store_true", help="download the data set when it is missing")
    g = p.add_argument_group("training")
    add_seed_argument(g, "seed of the data split and of every training")
    add_cache_views_argument(g)
    add_device_argument(p)


def _steps(text: str) -> tuple[str, ...]:
    names = tuple(s.strip() for s in text.split(",") if s.strip())
    unknown = [s for s in names if s not in STEPS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"must be comma-separated steps of {','.join(STEPS)}, got '{text}'")
    return names


def run(args: argparse.Namespace) -> int:
    from ..reproduce.steps import Context, Settings, run_reproduction
    from ..reproduce.tables import build_tables, write_tables
    from ..train import Interrupted

    model = model_spec(args)
    if not model.has_backbone:
        raise UserError("say which backbone to reproduce on: --arch NAME, --backbone FILE.py:FUNCTION or LIBRARY:NAME")
    data = data_settings(args, download=args.download).options()
    settings = Settings(args.out, data, model, args.scale, args.seed, args.cache_views)
    ctx = Context(resolve_device(args.device, args.threads), args.data_dir, args.cache_dir, progress_bar,
                  on_start=lambda lines: print("\n".join(lines), flush=True), on_epoch=_print_epoch,
                  raise_errors=args.debug)
    try:
        done = run_reproduction(settings, args.steps, ctx, log=lambda line: print(line, flush=True))
    except Interrupted as exc:
        print(f"{args.out}: {exc}; run the same command again to continue")
        return 130
    paths = write_tables(args.out, build_tables(settings, done.outcomes))
    for o in done.failed:
        print(f"step {o.name} {o.status}: {o.detail}")
    print(f"wrote {paths[1]} and {paths[0]}")
    return 1 if done.failed else 0


def _print_epoch(row: dict) -> None:
    acc = row.get("holdout_acc")
    shown = " ".join(f"{100 * a:.1f}" for a in acc) if acc else "-"
    print(f"  epoch {row['epoch']:3d}  {row['seconds']:.0f} s  loss {row['train_loss']:.4f}  holdout acc per exit: "
          f"{shown}", flush=True)
