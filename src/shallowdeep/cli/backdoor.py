"""The backdoor study (SDN paper, section 6): does a BadNets backdoor make the network overthink?

Poisons a share of the training images (a trigger stamped on, relabelled to the target class),
trains a CNN on them from scratch (--arch, the paper's recipe: a GPU job) or fine-tunes pretrained
weights (--from, SGD lr 0.01 for 3 epochs: fits a CPU), trains the same recipe on clean data as the
un-poisoned twin, turns the backdoored CNN into an SDN by IC-only training on CLEAN data, and measures:
clean accuracy and attack success rate (ASR) of the backdoored CNN; on triggered test inputs outside the
target class, the accuracy against their true labels of the CNN and of early exit at a threshold chosen
on clean held-out data; the confusion score of triggered and clean inputs (normalised on the clean
training split) and its AUROC as a trigger detector. OUT is the SDN's run folder; the CNNs are runs in
OUT/backdoored-cnn and OUT/clean-cnn. Writes OUT/backdoor.json and OUT/backdoor-*.png, which
`shallowdeep report OUT` shows. An interrupted study continues with --resume.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from ..choices import BASELINES, DEFAULT_MAX_DROP, DEFAULT_RATE, PLACES, POLICY_NAMES
from ._common import (add_cache_views_argument, add_data_arguments, add_device_argument, add_model_arguments,
                      add_recipe_arguments, add_seed_argument, data_settings, fraction, model_spec, open_fraction,
                      positive_int, progress_bar, resolve_device, table)

if TYPE_CHECKING:
    from ..backdoor import StudySettings
    from ..data import Splits

NAME = "backdoor"
ORDER = 70
HELP = "BadNets backdoor: attack success, early-exit recovery, confusion as a detector"

IC_EPOCHS = 25


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, type=Path, help="study folder to create (the SDN's run folder)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted study in --out")
    add_model_arguments(p, "fine-tune these weights (a run folder or a checkpoint file) instead of training from scratch")
    g = add_data_arguments(p, "folder holding the data set", holdout=open_fraction,
                           holdout_help="share of the training set held out (clean; chooses the early-exit threshold)",
                           normalization_help="input mean/std: the paper's per data set, ImageNet's (e.g. for "
                                              "the akamaster weights on --dataset imagefolder), or the training "
                                              "split's own")
    g.add_argument("--test-limit", type=positive_int, help="evaluate on N test images drawn at random (seeded) only")
    g = p.add_argument_group("trigger and poisoning")
    g.add_argument("--pattern", default="square", metavar="square|checkerboard|IMAGE",
                   help="trigger pattern: a white square, a checkerboard, or an image file")
    g.add_argument("--trigger-size", type=positive_int,
                   help="side of the trigger in pixels (default: 5/32 of the image side)")
    g.add_argument("--position", default="bottom-right", metavar="PLACE|ROW,COL",
                   help=f"where the trigger goes: {', '.join(PLACES)}, or the pixel of its top-left corner")
    g.add_argument("--target", default="0", help="target class (index or name)")
    g.add_argument("--poison-rate", type=fraction, default=DEFAULT_RATE, help="share of the training images poisoned")
    g = p.add_argument_group("recipe (fine-tuning: SGD lr 0.01, 3 epochs; from scratch: the paper's CNN recipe, "
                             "or the short schedule for few --epochs, as in train)")
    add_recipe_arguments(g)
    g.add_argument("--ic-epochs", type=positive_int, default=IC_EPOCHS, help="epochs of IC-only training")
    add_cache_views_argument(g)
    add_seed_argument(g, "seed of the data split, the poisoning and training")
    g = p.add_argument_group("evaluation")
    g.add_argument("--clean-baseline", choices=BASELINES, default="train",
                   help="the un-poisoned network: train a clean twin with the same recipe, use the --from "
                        "network as it is (source), or none")
    g.add_argument("--policy", choices=POLICY_NAMES, default="maxprob", help="early-exit policy")
    g.add_argument("--max-drop", type=fraction, default=DEFAULT_MAX_DROP,
                   help="early exit: largest clean holdout accuracy drop below the final head (0.01 = one point)")
    add_device_argument(p)


def run(args: argparse.Namespace) -> int:
    from ..backdoor import run_study
    from ..run_results import backdoor_path
    from ..train import Interrupted

    device = resolve_device(args.device, args.threads)
    settings, splits = (None, None) if args.resume else _settings(args)
    try:
        result = run_study(args.out, settings, device, progress=progress_bar, on_epoch=_print_epoch,
                           log=lambda line: print(line, flush=True), splits=splits)
    except Interrupted as exc:
        print(f"{args.out}: {exc}; continue with --resume")
        return 130
    _print(result)
    print(f"wrote {backdoor_path(args.out)} and {args.out}/backdoor-*.png")
    return 0


def _settings(args: argparse.Namespace) -> tuple[StudySettings, Splits | None]:
    """A new study's settings from the command line, and its data when sizing the CNN's batch read it already."""
    from ..backdoor import PoisonConfig, StudySettings, TriggerSpec
    from ..backdoor.study import check_new, cnn_recipe
    from ..data import load_dataset
    from ..train import TrainConfig, paper_weight_decay, resolve_backbone, resolve_recipe

    check_new(args.out)
    data = data_settings(args).options()
    model = model_spec(args)
    weight_decay = args.weight_decay if args.weight_decay is not None else \
        paper_weight_decay(resolve_backbone(model, args.pretrained)[0])
    target = int(args.target) if args.target.lstrip("-").isdigit() else args.target
    poison = PoisonConfig(TriggerSpec(args.pattern, args.trigger_size, args.position), target, args.poison_rate,
                          args.seed)
    ic = resolve_recipe("ic-only", weight_decay, {"epochs": args.ic_epochs})
    changes = {"epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size}
    cnn, splits = cnn_recipe(weight_decay, changes, bool(args.pretrained)), None
    if cnn.schedule == "short" and args.batch_size is None:  # its batch follows the training images' count
        splits = load_dataset(**data)
        cnn = cnn_recipe(weight_decay, changes, bool(args.pretrained), len(splits.train))
    settings = StudySettings(
        data=data, model=model, poison=poison, pretrained=args.pretrained,
        cnn=TrainConfig("cnn", cnn, seed=args.seed),
        ic=TrainConfig("ic-only", ic, seed=args.seed, cache_views=args.cache_views),
        clean_baseline=args.clean_baseline, test_limit=args.test_limit, policy=args.policy, max_drop=args.max_drop)
    return settings, splits


def _print_epoch(row: dict) -> None:
    acc = row.get("holdout_acc")
    shown = " ".join(f"{100 * a:.1f}" for a in acc) if acc else "-"
    print(f"  epoch {row['epoch']:3d}  loss {row['train_loss']:.4f}  clean holdout acc per exit: {shown}", flush=True)


def _print(r: dict) -> None:
    def pct(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.2f}"

    baseline = r["clean_baseline"]
    rows = [
        ("clean test accuracy, backdoored CNN", pct(r["clean"]["accuracy_cnn"])),
        (f"clean test accuracy, un-poisoned ({baseline['network'] if baseline else 'none'})",
         pct(baseline["accuracy"] if baseline else None)),
        ("clean test accuracy, early-exit SDN", pct(r["clean"]["accuracy_early_exit"])),
        ("attack success rate, backdoored CNN", pct(r["attack"]["success_rate"])),
        ("attack success rate, early-exit SDN", pct(r["attack"]["success_rate_early_exit"])),
        ("triggered accuracy (true labels), CNN", pct(r["triggered"]["accuracy_cnn"])),
        ("triggered accuracy (true labels), early-exit SDN", pct(r["triggered"]["accuracy_early_exit"])),
        ("confusion AUROC, triggered vs clean", pct(r["detection"]["auroc"])),
        ("1 - max softmax AUROC, triggered vs clean", pct(r["detection"]["auroc_confidence"])),
    ]
    print(table(["figure", "%"], rows))
    e = r["early_exit"]
    print(f"{e['policy']} threshold {e['threshold']:.4g} chosen on {e['calibrated_on']['samples']} clean holdout "
          f"images (max drop {e['criterion']['max_drop']}); cost on triggered inputs "
          f"{100 * e['triggered_test']['flops_fraction']:.1f}% of the backbone, on clean "
          f"{100 * e['clean_test']['flops_fraction']:.1f}%")
    t = r["targets"]
    drop = t["clean_accuracy_drop_points"]
    print(f"backdoor targets: ASR >= {100 * t['attack_success_rate_at_least']:.0f}%: "
          f"{'met' if t['attack_success_rate_met'] else 'NOT met'}; clean accuracy within "
          f"{t['clean_accuracy_within_points']:g} points of the un-poisoned network: "
          + ("no baseline" if drop is None else f"{'met' if t['clean_accuracy_met'] else 'NOT met'} "
                                                f"({drop:+.2f} points)"))
    print(f"{r['poison']['poisoned_images']} of {r['poison']['train_images']} training images poisoned; "
          f"{r['test_images']} clean and {r['triggered']['samples']} triggered test images; seconds per stage: "
          + ", ".join(f"{k} {v:.0f}" for k, v in r["seconds"].items()))
