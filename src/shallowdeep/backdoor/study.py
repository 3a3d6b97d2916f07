"""The backdoor study end to end: a backdoored CNN, its SDN, and the figures.

Layout of a study folder ``OUT`` (every ``*-cnn`` folder and ``OUT`` itself are ordinary runs)::

    OUT/study.json              the study's settings (enough to resume it)
    OUT/backdoored-cnn/         the CNN trained or fine-tuned on poisoned data (config.json records "poison")
    OUT/clean-cnn/              the same recipe on clean data: the un-poisoned twin (clean baseline "train")
    OUT/config.json, checkpoint.pt   the SDN: ICs trained on CLEAN data, the backdoored backbone frozen
    OUT/backdoor.json, OUT/backdoor-*.png   the figures (the HTML report shows them)

(names and files: :mod:`shallowdeep.run_folder` and :mod:`shallowdeep.run_results`). Every stage is skipped when
finished and continued from its checkpoint when interrupted.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from ..build import build_sdn
from ..choices import BASELINES
from ..data import ImageData, Splits, load_dataset
from ..errors import SettingError, UserError
from ..exits import make_policy, simulate
from ..model_spec import ModelSpec
from ..exit_outputs import ExitOutputs, exit_names
from ..outputs import compute_outputs, load_outputs
from ..run import Run, open_run
from ..run_folder import BACKDOORED_CNN, CHECKPOINT, CLEAN_CNN, CONFIG
from ..run_results import (holds_study, read_study_settings, recorded_study_seconds, study_settings_damaged,
                           write_backdoor, write_backdoor_figures, write_study_settings, write_trigger_copy)
from ..train import (Recipe, TrainConfig, config_from_dict, config_to_dict, load_pretrained, new_run, resolve_recipe,
                     resume_run)
from ..train.trainer import Progress
from .metrics import accuracy, backdoor_figures
from ..data.poison import PoisonConfig, check_target, choose_poisoned, poison_splits, triggered_inputs
from ..data.trigger import build_trigger

FORMAT = "shallowdeep-backdoor-1"
TARGET_ASR, TARGET_CLEAN_POINTS = 0.9, 2.0
FINE_TUNE = {"lr": 0.01, "epochs": 3, "milestones": []}  # constant-rate SGD: fits a CPU

Log = Callable[[str], None]


@dataclass
class StudySettings:
    """Everything a study needs; ``model`` is a model spec without classes and input shape, ``data`` the
    keyword arguments of :func:`shallowdeep.data.load_dataset`."""

    data: dict[str, Any]
    model: ModelSpec
    poison: PoisonConfig
    cnn: TrainConfig  # the backdoored CNN's recipe (and its clean twin's)
    ic: TrainConfig  # IC-only training on clean data
    pretrained: str | None = None  # start the CNN from these weights (fine-tuning) instead of from scratch
    clean_baseline: str = "train"  # train: a clean twin; source: the pretrained network; none
    test_limit: int | None = None  # evaluate on N test images drawn at random (seeded) only
    policy: str = "maxprob"
    max_drop: float = 0.01

    def to_dict(self) -> dict[str, Any]:
        return {"data": self.data, "model": self.model.to_dict(), "poison": self.poison.to_dict(),
                "cnn": config_to_dict(self.cnn), "ic": config_to_dict(self.ic), "pretrained": self.pretrained,
                "clean_baseline": self.clean_baseline, "test_limit": self.test_limit, "policy": self.policy,
                "max_drop": self.max_drop}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StudySettings:
        try:
            return cls(d["data"], ModelSpec.from_dict(d["model"]), PoisonConfig.from_dict(d["poison"]), config_from_dict(d["cnn"]),
                       config_from_dict(d["ic"]), d["pretrained"], d["clean_baseline"], d["test_limit"], d["policy"],
                       d["max_drop"])
        except (KeyError, TypeError) as exc:
            raise study_settings_damaged(exc) from exc


def cnn_recipe(weight_decay: float, changes: Mapping[str, Any], fine_tuning: bool,
               train_images: int | None = None) -> Recipe:
    """The backdoored CNN's recipe (and its twin's) with the ``changes`` given (None: the recipe's own): when
    ``fine_tuning`` pretrained weights, constant-rate SGD (:data:`FINE_TUNE`); from scratch, the paper's CNN recipe
    (or the short schedule for few epochs, its batch sized to ``train_images``)."""
    given = {k: v for k, v in changes.items() if v is not None}
    return resolve_recipe("cnn", weight_decay, {**FINE_TUNE, **given} if fine_tuning else dict(changes),
                          train_images)


def class_index(target: int | str, classes: list[str]) -> int:
    """The index of ``target``, given as an index or a class name."""
    if isinstance(target, int) or str(target).lstrip("-").isdigit():
        return int(target)
    if target not in classes:
        raise UserError(f"target class '{target}' is not one of {', '.join(classes[:20])}"
                        f"{' ...' if len(classes) > 20 else ''}")
    return classes.index(target)


def run_study(out: Path, settings: StudySettings | None, device: torch.device, progress: Progress | None = None,
              on_epoch: Callable[[dict], None] | None = None, log: Log = lambda line: None,
              splits: Splits | None = None) -> dict[str, Any]:
    """Start a study in ``out`` with ``settings`` (None: continue the study already there) and run every stage,
    on ``splits`` when the caller has read the settings' data already.

    Returns what ``OUT/backdoor.json`` holds. Its ``seconds`` give the wall-clock time of each stage when it ran
    (a stage finished by an earlier call keeps the time recorded then, when there is one).
    """
    out = Path(out)
    resuming = settings is None
    settings = read_settings(out) if resuming else settings
    splits = splits or load_dataset(**settings.data)
    if not resuming:
        settings = start(out, settings, splits)
    previous = recorded_study_seconds(out)
    seconds: dict[str, float] = {}

    def timed(stage: str, message: str, work: Callable[[], bool]) -> None:
        log(message)
        clock = time.perf_counter()
        if work():
            seconds[stage] = round(time.perf_counter() - clock, 1)
        elif stage in previous:
            seconds[stage] = previous[stage]

    poisoned, index = poison_splits(splits, settings.poison, out / BACKDOORED_CNN)
    epochs = settings.cnn.recipe.epochs
    timed("backdoored_cnn", f"poisoned {len(index)} of {len(splits.train)} training images -> class "
          f"{settings.poison.target}; training {out / BACKDOORED_CNN} ({epochs} epochs)",
          lambda: train_cnn(out / BACKDOORED_CNN, settings, poisoned, settings.poison, device, progress, on_epoch))
    if settings.clean_baseline == "train":
        timed("clean_cnn", f"training the clean twin {out / CLEAN_CNN} (same recipe, no poison)",
              lambda: train_cnn(out / CLEAN_CNN, settings, splits, None, device, progress, on_epoch))
    timed("ic_only", f"IC-only training on clean data -> {out} ({settings.ic.recipe.epochs} epochs)",
          lambda: train_sdn(out, settings, device, progress, on_epoch))
    clock = time.perf_counter()
    log("computing the outputs of every exit on clean and triggered data")
    result = evaluate_study(out, settings, splits, len(index), device)
    result["seconds"] = {**seconds, "evaluation": round(time.perf_counter() - clock, 1)}
    write_backdoor(out, result)
    return result


def check_new(out: Path) -> None:
    """A one-line error when ``out`` already holds a study."""
    if holds_study(out):
        raise SettingError(f"{out} already holds a study; resume it or choose another folder", "resume", "out")


def start(out: Path, settings: StudySettings, splits: Splits) -> StudySettings:
    """Check the settings against the data, copy a trigger image into the study, record the settings."""
    check_new(out)
    if settings.clean_baseline not in BASELINES:
        raise UserError(f"clean baseline '{settings.clean_baseline}' must be one of {', '.join(BASELINES)}")
    if settings.clean_baseline == "source" and settings.pretrained is None:
        raise SettingError("the clean baseline 'source' needs pretrained weights", "clean_baseline", "pretrained")
    if settings.test_limit is not None and settings.test_limit < 1:
        raise UserError(f"the test limit must be a positive number of images, got {settings.test_limit}")
    target = class_index(settings.poison.target, splits.spec.classes)
    poison = replace(settings.poison, target=target)
    check_target(target, splits)
    choose_poisoned(splits.train.labels, target, poison.rate, poison.seed)  # fail before anything is written
    trigger = poison.trigger
    build_trigger(trigger, splits.spec.input_size, channels=splits.spec.channels)
    if trigger.is_file:
        copy = write_trigger_copy(out / BACKDOORED_CNN, Path(trigger.pattern))
        poison = replace(poison, trigger=replace(trigger, pattern=copy))
    settings = replace(settings, poison=poison)
    write_study_settings(out, settings.to_dict())
    return settings


def read_settings(out: Path) -> StudySettings:
    """The settings of the study in ``out``."""
    return StudySettings.from_dict(read_study_settings(out))


def _checkpoint(run_dir: Path) -> dict[str, Any] | None:
    """The checkpoint of the run in ``run_dir``, None when it has none yet."""
    return open_run(run_dir).load_checkpoint() if (run_dir / CHECKPOINT).is_file() else None


def _done(ckpt: dict[str, Any] | None, cfg: TrainConfig) -> bool:
    return ckpt is not None and int(ckpt.get("epoch", 0)) >= cfg.recipe.epochs


def train_cnn(run_dir: Path, settings: StudySettings, splits: Splits, poison: PoisonConfig | None,
              device: torch.device, progress: Progress | None = None,
              on_epoch: Callable[[dict], None] | None = None) -> bool:
    """Train (or finish training) a plain CNN of the study in ``run_dir`` on ``splits``: poisoned with ``poison``
    for the backdoored CNN, clean (``poison`` None) for its twin. The run's config records ``poison``.
    Returns False when the run had finished already."""
    ckpt = _checkpoint(run_dir)
    if _done(ckpt, settings.cnn):
        return False
    if ckpt is None:
        new_run(run_dir, settings.data, settings.model, settings.cnn,
                pretrained=settings.pretrained, device=device, progress=progress, on_epoch=on_epoch, splits=splits,
                extra_config={"poison": poison.to_dict() if poison else None}, require_empty=False)
    else:
        resume_run(run_dir, splits, device=device, progress=progress, on_epoch=on_epoch)
    return True


def train_sdn(out: Path, settings: StudySettings, device: torch.device, progress: Progress | None = None,
              on_epoch: Callable[[dict], None] | None = None) -> bool:
    """IC-only training on CLEAN data of the backdoored CNN's SDN, in ``out`` (or finish it); False when it had
    finished already."""
    ckpt = _checkpoint(out)
    if _done(ckpt, settings.ic):
        return False
    if ckpt is None:
        (out / CONFIG).unlink(missing_ok=True)  # a start that stopped before its first checkpoint
        model = ModelSpec(exits=settings.model.exits, fractions=settings.model.fractions, ic=settings.model.ic)
        new_run(out, settings.data, model, settings.ic, pretrained=str(out / BACKDOORED_CNN), device=device,
                progress=progress, on_epoch=on_epoch, require_empty=False)
    else:
        resume_run(out, device=device, progress=progress, on_epoch=on_epoch)
    return True


def evaluate_study(out: Path, settings: StudySettings, splits: Splits, poisoned_images: int,
                   device: torch.device) -> dict[str, Any]:
    """The study's figures (see :func:`shallowdeep.backdoor.metrics.backdoor_figures`) and its PNG figures."""
    sdn = open_run(out)
    test = random_subset(splits.test, settings.test_limit, settings.data.get("seed", 0))
    tested = replace(splits, test=test)
    name = "test" if settings.test_limit is None else f"test-sample{len(test)}"
    trigger = build_trigger(settings.poison.trigger, splits.spec.input_size, out / BACKDOORED_CNN, splits.spec.channels)
    triggered = triggered_inputs(test, trigger, settings.poison.target)
    key = hashlib.sha256(json.dumps(settings.poison.to_dict(), sort_keys=True).encode()).hexdigest()[:8]
    outputs = {
        "train": load_outputs(sdn, "train", device, splits=splits),
        "holdout": load_outputs(sdn, "holdout", device, splits=splits),
        "clean": load_outputs(sdn, "test", device, splits=tested, name=name),
        "triggered": load_outputs(sdn, "test", device, splits=replace(splits, test=triggered),
                                  name=f"{name}-triggered-{key}"),
    }
    figures = backdoor_figures(outputs["train"], outputs["holdout"], outputs["clean"], outputs["triggered"],
                               settings.poison.target, settings.policy, settings.max_drop)
    baseline = _clean_baseline(out, settings, tested, name, device)
    result = {
        "format": FORMAT,
        "runs": {"sdn": str(out), "backdoored_cnn": str(out / BACKDOORED_CNN),
                 "clean_cnn": str(out / CLEAN_CNN) if settings.clean_baseline == "train" else None},
        "poison": {**settings.poison.to_dict(), "target_name": splits.spec.classes[settings.poison.target],
                   "poisoned_images": poisoned_images, "train_images": len(splits.train)},
        "dataset": splits.spec.name, "test_images": len(test),
        **figures,
        "clean_baseline": baseline,
        "targets": _targets(figures, baseline),
        "settings": settings.to_dict(),
    }
    from .plots import detection_histogram, exit_plot  # matplotlib is loaded only when figures are drawn

    names = exit_names(len(outputs["clean"].exit_flops), sdn.model.exits)
    write_backdoor_figures(out, confusion=detection_histogram(result["detection"]),
                           exits=exit_plot(result, names, outputs["clean"].exit_flops),
                           examples=_examples(test, triggered, outputs["triggered"], result, splits.spec.classes))
    return result


def _examples(test: ImageData, triggered: ImageData, outputs: ExitOutputs, result: dict[str, Any],
              classes: list[str], count: int = 6) -> bytes:
    """A few test images without and with the trigger, with the CNN's and the early-exit SDN's answers."""
    from ..report.plots import image_grid  # matplotlib is loaded only when figures are drawn

    early = simulate(outputs, make_policy(result["early_exit"]["policy"], result["early_exit"]["threshold"]))
    labels = triggered.labels.numpy()
    shown = [int(np.flatnonzero(labels == c)[0]) for c in np.unique(labels)[:count]]  # one image of each class
    clean = test.images[test.labels != result["poison"]["target"]]
    return image_grid(
        [list(clean[shown].numpy()), list(triggered.images[shown].numpy())],
        ["clean\n(true class)", "triggered\n(CNN | early exit)"],
        [[classes[labels[i]] for i in shown],
         [f"{classes[outputs.predictions[-1, i]]} | {classes[early.predictions[i]]}" for i in shown]])


def random_subset(data: ImageData, limit: int | None, seed: int) -> ImageData:
    """``limit`` samples of ``data`` drawn at random (seeded, kept in their order), or all of them when ``limit``
    is None; drawn at random because a split may be ordered by class (an image folder's test split is)."""
    if limit is None or limit >= len(data):
        return data
    index = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:limit].sort().values
    return data.subset(index)


def _clean_baseline(out: Path, settings: StudySettings, tested: Splits, name: str,
                    device: torch.device) -> dict[str, Any] | None:
    """The clean test accuracy of the un-poisoned network: the clean twin, or the pretrained source."""
    if settings.clean_baseline == "train":
        outputs = load_outputs(open_run(out / CLEAN_CNN), "test", device, splits=tested, name=name)
        return {"network": "clean twin (same recipe, no poison)", "accuracy": accuracy(outputs.predictions[-1],
                                                                                         outputs.labels)}
    if settings.clean_baseline == "source":
        outputs = _source_outputs(open_run(out / BACKDOORED_CNN), settings, tested.test, tested, device)
        return {"network": f"pretrained source {settings.pretrained}",
                "accuracy": accuracy(outputs.predictions[-1], outputs.labels)}
    return None


def _source_outputs(cnn: Run, settings: StudySettings, data: ImageData, splits: Splits,
                    device: torch.device) -> ExitOutputs:
    """The outputs of the pretrained network the backdoored CNN was fine-tuned from."""
    weights, _ = load_pretrained(settings.pretrained)
    net = build_sdn(cnn.model, weights, f"weights {settings.pretrained}")
    return compute_outputs(net.to(device), data, splits, device)


def _targets(figures: dict[str, Any], baseline: dict[str, Any] | None) -> dict[str, Any]:
    """Whether the backdoor is real: ASR at least 90 % and clean accuracy within 2 points of the baseline."""
    drop = None if baseline is None else 100 * (baseline["accuracy"] - figures["clean"]["accuracy_cnn"])
    return {"attack_success_rate_at_least": TARGET_ASR,
            "attack_success_rate_met": figures["attack"]["success_rate"] >= TARGET_ASR,
            "clean_accuracy_within_points": TARGET_CLEAN_POINTS,
            "clean_accuracy_drop_points": drop,
            "clean_accuracy_met": None if drop is None else drop <= TARGET_CLEAN_POINTS}
