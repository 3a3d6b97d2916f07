"""The steps of a reproduction, each in its own run folder under ``OUT``, and how they run and resume.

Trainings: ``OUT/cnn`` (the plain CNN), ``OUT/ic-only`` (its ICs trained alone, backbone frozen), ``OUT/sdn`` (an SDN
trained jointly from scratch, the paper's growing IC weights), ``OUT/mixed`` (the trained CNN fine-tuned as a whole
SDN, every exit weighted 1). On each: ``evaluate`` (the CNN: only this), ``early-exit`` (maxprob at a 1-point drop,
calibrated on the holdout split, on a test half, and certified with confidence 0.9 on the holdout split),
``overthinking`` and ``confusion``, written where and as the commands of those names write them. ``OUT/backdoor``:
the backdoor study on the CNN (optional).

A step is finished when its run folder says so (a training: its checkpoint has all its recipe's epochs; an analysis:
its result files exist) and is then skipped; an interrupted training continues from its checkpoint. A failing step
is recorded by name and the steps that do not need it still run. ``OUT/reproduce.json`` records the settings, so a
rerun with other settings is refused.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Callable

import torch

from ..errors import UserError, first_line
from ..io import atomic_write_json, read_json
from ..model_spec import ModelSpec
from ..run import Run, open_run
from ..run_folder import CHECKPOINT, CONFUSION_JSON, OVERTHINKING_JSON, STUDY_JSON, evaluation_json
from ..run_results import backdoor_path, result_key, result_path
from ..train import Interrupted, TrainConfig, new_run, resume_run
from ..train.trainer import Progress
from . import SCALES, STEPS, TRAININGS

SETTINGS_JSON = "reproduce.json"
FORMAT = "shallowdeep-reproduce-1"
# epochs of each training; at the quick scale cnn + ic-only, sdn, and cnn + mixed get the same number of epochs,
# 5 over the training images (the time of each step on CIFAR-10: benchmarks/results/reproduce-resnet56-cifar10-quick)
EPOCHS = {"quick": {"cnn": 4, "ic-only": 1, "sdn": 5, "mixed": 1},
          "paper": {"cnn": 100, "ic-only": 25, "sdn": 100, "mixed": 25}}
MIXED_LR = 0.01  # the mixed regime fine-tunes a trained network: a tenth of the learning rate from scratch
BACKDOOR_EPOCHS = {"quick": 1, "paper": 3}  # the CNN fine-tuned on poisoned data (the backdoor command's 3)
MAX_DROP, CONFIDENCE, SPLIT_SEED = 0.01, 0.9, 0
CALIBRATIONS = ("holdout", "test-half", "certified")
BACKDOOR = "backdoor"


@dataclass(frozen=True)
class Settings:
    """What a reproduction trains: ``data`` as a run records it (see :func:`shallowdeep.train.new_run`), ``model``
    a backbone with its exits and IC design (classes and input shape come from the data)."""

    out: Path
    data: dict[str, Any]
    model: ModelSpec
    scale: str = "quick"
    seed: int = 0
    cache_views: int = 2

    def record(self) -> dict[str, Any]:
        """What a rerun must repeat (not where the data is, which may move), as JSON reads it back."""
        data = {k: v for k, v in self.data.items() if k not in ("data_dir", "cache_dir", "download")}
        record = {"format": FORMAT, "scale": self.scale, "seed": self.seed, "data": data,
                  "model": self.model.to_dict(), "epochs": EPOCHS[self.scale]}
        return json.loads(json.dumps(record))


@dataclass
class Context:
    """How the steps run: the device, where the data is now, and the training's callbacks."""

    device: torch.device
    data_dir: Path | None = None
    cache_dir: Path | None = None
    progress: Progress | None = None
    on_start: Callable[[list[str]], None] | None = None
    on_epoch: Callable[[dict], None] | None = None
    raise_errors: bool = False  # let a failing step's exception through (--debug)


@dataclass(frozen=True)
class Step:
    """One step: its name, the steps it needs, whether its run folder says it is finished, and its work."""

    name: str
    needs: tuple[str, ...]
    finished: Callable[[], bool]
    work: Callable[[], None]


@dataclass(frozen=True)
class Outcome:
    """What became of a step: "ran", "finished before" (skipped), "failed", "not run" (a step it needs did not
    finish) or "not asked" (not among the steps named, and not finished), with why."""

    name: str
    status: str
    detail: str = ""
    seconds: float | None = None


@dataclass
class Reproduction:
    """The steps run (or skipped) this time, in order."""

    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status in ("failed", "not run")]


def check_settings(settings: Settings) -> None:
    """Record the settings in a new ``OUT``, or refuse those that differ from the ones recorded there."""
    if settings.scale not in SCALES:
        raise UserError(f"unknown scale '{settings.scale}': choose one of {', '.join(SCALES)}")
    path, record = settings.out / SETTINGS_JSON, settings.record()
    if path.is_file():
        recorded = read_json(path, f"remove {path} only if {settings.out} holds no reproduction")
        differ = sorted(k for k in set(record) | set(recorded) if record.get(k) != recorded.get(k))
        if differ:
            raise UserError(f"{settings.out} holds a reproduction with other settings ({', '.join(differ)}); run it "
                            "again with the options it was started with, or choose another --out")
        return
    if settings.out.exists() and (not settings.out.is_dir() or any(settings.out.iterdir())):
        raise UserError(f"{settings.out} holds no reproduction and is not empty; choose a new or empty --out")
    atomic_write_json(path, record)


def run_reproduction(settings: Settings, steps: tuple[str, ...], ctx: Context,
                     log: Callable[[str], None] = lambda line: None) -> Reproduction:
    """Run the named ``steps`` (of :data:`STEPS`; each training with its analyses) in ``settings.out``: finished
    ones are skipped, interrupted ones continued; a failure is recorded and the steps that need it are not run.
    A signal that stops a training (:class:`~shallowdeep.train.Interrupted`) stops the whole reproduction."""
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        raise UserError(f"unknown step(s) {', '.join(unknown)}: choose from {', '.join(STEPS)}")
    check_settings(settings)
    plan = plan_steps(settings, ctx)
    by_name = {step.name: step for step in plan}
    done: dict[str, Outcome] = {}
    result = Reproduction()
    for step in plan:
        if step.name.split("/")[0] not in steps:  # recorded as its folder stands, never run
            finished = _ready(step, done, ctx)
            result.outcomes.append(Outcome(step.name, "finished before" if finished else "not asked"))
            continue
        missing = [n for n in step.needs if not _ready(by_name[n], done, ctx)]
        if missing:
            why = "; ".join(_missing(n, done, steps) for n in missing)
            outcome = Outcome(step.name, "not run", why)
        else:
            outcome = _run(step, ctx, log)
        done[step.name] = outcome
        result.outcomes.append(outcome)
        if outcome.status == "not run":
            log(f"[{step.name}] not run: {outcome.detail}")
    return result


def _ready(step: Step, done: dict[str, Outcome], ctx: Context) -> bool:
    """Whether ``step`` has finished: this time, or before (a step not asked for this time)."""
    if step.name in done:
        return done[step.name].status in ("ran", "finished before")
    try:
        return step.finished()
    except Exception:  # noqa: BLE001 - a damaged folder is simply not finished
        if ctx.raise_errors:
            raise
        return False


def _missing(name: str, done: dict[str, Outcome], asked: tuple[str, ...]) -> str:
    if name in done:
        return f"needs {name}, which {done[name].status.replace('not run', 'did not run')}"
    return f"needs {name}, which is not finished (add it to --steps)"


def _run(step: Step, ctx: Context, log: Callable[[str], None]) -> Outcome:
    """Skip ``step`` when finished, else run it; a failure is its outcome, with a one-line reason."""
    clock = time.perf_counter()
    try:
        if step.finished():
            log(f"[{step.name}] finished before; skipped")
            return Outcome(step.name, "finished before")
        log(f"[{step.name}] running")
        step.work()
    except Interrupted:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure of one step is reported, and the others go on
        if ctx.raise_errors:
            raise
        reason = first_line(exc) if isinstance(exc, (UserError, OSError)) else f"{type(exc).__name__}: {first_line(exc)}"
        log(f"[{step.name}] FAILED: {reason}")
        return Outcome(step.name, "failed", reason, round(time.perf_counter() - clock, 1))
    seconds = round(time.perf_counter() - clock, 1)
    log(f"[{step.name}] done in {seconds:.0f} s")
    return Outcome(step.name, "ran", seconds=seconds)


def plan_steps(settings: Settings, ctx: Context) -> list[Step]:
    """Every step of a reproduction, in the order they run."""
    data = _RunData(ctx)
    steps = []
    for name in TRAININGS:
        path = settings.out / name
        needs = ("cnn",) if name in ("ic-only", "mixed") else ()
        steps.append(Step(name, needs, lambda p=path: training_finished(p),
                          lambda n=name: train(settings, n, ctx)))
        for analysis in ("evaluate",) if name == "cnn" else ANALYSES:
            steps.append(Step(f"{name}/{analysis}", (name,), lambda p=path, a=analysis: analysis_finished(p, a),
                              lambda p=path, a=analysis: ANALYSES[a](open_run(p), data, ctx)))
    out = settings.out / BACKDOOR
    steps.append(Step(BACKDOOR, ("cnn",), lambda: backdoor_path(out).is_file(), lambda: backdoor(settings, ctx)))
    return steps


# --- training


def training_plan(settings: Settings, name: str) -> tuple[TrainConfig, dict[str, Any], ModelSpec, str | None]:
    """How the training ``name`` runs: its config, recipe changes (to the paper's recipe for its mode), model spec
    and the run it starts from."""
    mode = {"mixed": "sdn"}.get(name, name)
    epochs = EPOCHS[settings.scale][name]
    changes: dict[str, Any] = {"epochs": epochs, "schedule": "short"} if settings.scale == "quick" else {}
    if name == "mixed":
        changes = {**changes, "epochs": epochs, "lr": MIXED_LR}
    cfg = TrainConfig(mode, seed=settings.seed, ic_loss="uniform" if name == "mixed" else "growing",
                      cache_views=settings.cache_views)
    if name in ("ic-only", "mixed"):  # the backbone and its weights: the trained CNN's
        m = settings.model
        return cfg, changes, ModelSpec(exits=m.exits, fractions=m.fractions, ic=m.ic), str(settings.out / "cnn")
    return cfg, changes, settings.model, None


def training_finished(path: Path) -> bool:
    """Whether the run in ``path`` has trained all its recipe's epochs (and fitted a ZTW ensemble)."""
    if not (path / CHECKPOINT).is_file():
        return False
    run = open_run(path)
    ckpt = run.load_checkpoint()
    pending = "ensemble.bias" in ckpt.get("model", {}) and not ckpt.get("ensemble_trained")
    return int(ckpt.get("epoch", 0)) >= int(run.config["train"]["recipe"]["epochs"]) and not pending


def train(settings: Settings, name: str, ctx: Context) -> None:
    """Start the training ``name``, or continue it from its checkpoint."""
    path = settings.out / name
    hooks = {"device": ctx.device, "progress": ctx.progress, "on_start": ctx.on_start, "on_epoch": ctx.on_epoch}
    if (path / CHECKPOINT).is_file():
        resume_run(path, data_dir=ctx.data_dir, cache_dir=ctx.cache_dir, **hooks)
        return
    cfg, changes, model, pretrained = training_plan(settings, name)
    new_run(path, settings.data, model, cfg, recipe_changes=changes, pretrained=pretrained, **hooks)


# --- analyses, written as the commands of the same names write them


class _RunData:
    """Each run's data set, read once."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.splits = cache(self._load)

    def _load(self, path: Path):
        from ..outputs import load_run_data

        return load_run_data(open_run(path), self.ctx.data_dir, self.ctx.cache_dir)


def early_exit_keys() -> dict[str, str]:
    """The key of each early-exit result (see :func:`shallowdeep.run_results.result_key`), by calibration."""
    holdout, half = {"source": "run", "split": "holdout"}, {"source": "test-half", "seed": SPLIT_SEED}
    return {"holdout": result_key({"criterion": {"max_drop": MAX_DROP}, "policy": "maxprob", "calibrated_on": holdout}),
            "test-half": result_key({"criterion": {"max_drop": MAX_DROP}, "policy": "maxprob", "calibrated_on": half}),
            "certified": result_key({"criterion": {"max_drop": MAX_DROP, "confidence": CONFIDENCE},
                                     "policy": "maxprob", "calibrated_on": holdout})}


def analysis_files(path: Path, analysis: str) -> list[Path]:
    """The files an analysis leaves in the run folder ``path``."""
    if analysis == "early-exit":
        return [result_path(path, key) for key in early_exit_keys().values()]
    return [path / {"evaluate": evaluation_json("test"), "overthinking": OVERTHINKING_JSON,
                    "confusion": CONFUSION_JSON}[analysis]]


def analysis_finished(path: Path, analysis: str) -> bool:
    return all(p.is_file() for p in analysis_files(path, analysis))


def evaluate(run: Run, data: _RunData, ctx: Context) -> None:
    """Every exit's accuracy and cost on the test split (``RUN/eval-test.json``)."""
    from ..run_analyses import evaluation
    from ..run_results import write_evaluation

    write_evaluation(run.path, "test", {"run": str(run.path),
                                        **evaluation(run, "test", ctx.device, data.splits(run.path))})


def early_exit(run: Run, data: _RunData, ctx: Context) -> None:
    """Maxprob early exit at a 1-point drop, for each of :data:`CALIBRATIONS` (``RUN/early-exit/<key>.json``)."""
    from ..calibration_data import CalibrationData
    from ..run_analyses import early_exit as choose, tradeoff_png
    from ..run_results import write_early_exit

    splits = data.splits(run.path)
    for calibration in CALIBRATIONS:
        choice = CalibrationData("test-half", split_seed=SPLIT_SEED) if calibration == "test-half" else CalibrationData()
        confidence = CONFIDENCE if calibration == "certified" else None
        result = choose(run, choice, ctx.device, splits, max_drop=MAX_DROP, confidence=confidence,
                        data_dir=ctx.data_dir)
        write_early_exit(run.path, {"run": str(run.path), **result}, tradeoff_png)


def overthinking(run: Run, data: _RunData, ctx: Context) -> None:
    """Wasteful and destructive effects on the test split (``RUN/overthinking.json``)."""
    from ..run_analyses import overthinking as measure
    from ..run_results import write_overthinking

    write_overthinking(run.path, {"run": str(run.path), **measure(run, "test", ctx.device, data.splits(run.path))})


def confusion(run: Run, data: _RunData, ctx: Context) -> None:
    """The confusion score as an error indicator on the test split (``RUN/confusion.json``)."""
    from ..run_analyses import confusion as measure
    from ..run_results import write_confusion

    write_confusion(run.path, {"run": str(run.path), **measure(run, "test", ctx.device, data.splits(run.path))})


ANALYSES: dict[str, Callable[[Run, _RunData, Context], None]] = {
    "evaluate": evaluate, "early-exit": early_exit, "overthinking": overthinking, "confusion": confusion}


# --- the backdoor study


def backdoor(settings: Settings, ctx: Context) -> None:
    """The backdoor study in ``OUT/backdoor``: the CNN fine-tuned on poisoned data, its ICs trained on clean data,
    the CNN itself as the clean baseline (continued when interrupted)."""
    from ..backdoor import run_study

    out = settings.out / BACKDOOR
    study = None if (out / STUDY_JSON).is_file() else backdoor_settings(settings)
    run_study(out, study, ctx.device, progress=ctx.progress, on_epoch=ctx.on_epoch)


def backdoor_settings(settings: Settings):
    """The study's settings: a square trigger, 10 % of the training images poisoned to class 0; the CNN fine-tuned
    on them as the backdoor command fine-tunes (for :data:`BACKDOOR_EPOCHS`), its ICs trained as the ic-only step
    trains them."""
    from ..backdoor import DEFAULT_RATE, PoisonConfig, StudySettings, TriggerSpec
    from ..backdoor.study import cnn_recipe
    from ..train import paper_weight_decay, resolve_backbone, resolve_recipe

    cnn = str(settings.out / "cnn")
    weight_decay = paper_weight_decay(resolve_backbone(settings.model, cnn)[0])
    fine_tune = cnn_recipe(weight_decay, {"epochs": BACKDOOR_EPOCHS[settings.scale]}, fine_tuning=True)
    ic_cfg, ic_changes, _, _ = training_plan(settings, "ic-only")
    return StudySettings(
        data=settings.data, model=settings.model, poison=PoisonConfig(TriggerSpec(), 0, DEFAULT_RATE, settings.seed),
        cnn=TrainConfig("cnn", fine_tune, seed=settings.seed),
        ic=TrainConfig("ic-only", resolve_recipe("ic-only", weight_decay, ic_changes), seed=settings.seed,
                       cache_views=ic_cfg.cache_views),
        pretrained=cnn, clean_baseline="source")
