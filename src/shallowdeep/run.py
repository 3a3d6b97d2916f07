"""The run folder format, written and read here only: everything a training run leaves, enough for
every later command.

Layout::

    RUN/config.json      how the run was made: format tag, data set, model spec, mode, recipe
    RUN/checkpoint.pt    the latest state (model, optimiser, progress), written atomically
    RUN/metrics.jsonl    one JSON line per finished epoch
    RUN/backbone.py      a copy of the user's backbone file, when one was given
    RUN/.new-run         written first when a run starts, removed with its first checkpoint: a folder holding
                         it is a start of ours that failed, which a new run may take over
    RUN/outputs/*.npz    per-exit logits of each split (see shallowdeep.outputs)
    RUN/*.json, *.png    what the analysis commands write
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch

from .build import build_sdn, check_finite_weights, load_checkpoint_file
from .choices import TRUST_CODE
from .errors import SettingError, UserError, first_line
from .io import (atomic_torch_save, atomic_write_bytes, atomic_write_json, file_lock, file_sha256, read_json,
                 remove_stale_temporaries, strict_json)
from .model_spec import ModelSpec
from .run_folder import (BACKBONE_COPY, CHECKPOINT, CHECKPOINT_FORMAT, CONFIG, LOCK, METRICS, NEW_RUN,
                         RUN_FORMAT)
from .sdn import SDN



@dataclass
class Run:
    """An existing run folder and its configuration."""

    path: Path
    config: dict[str, Any]

    @property
    def checkpoint_path(self) -> Path:
        return self.path / CHECKPOINT

    @property
    def model(self) -> ModelSpec:
        """The network this run trains. A user's backbone file must lie in the run folder and, unless
        ``SHALLOWDEEP_TRUST_CODE=1`` (``--trust-code``), be the file the run was made with: it is
        imported, so it runs."""
        spec = ModelSpec.from_dict(self.config["model"], self.path)
        if spec.factory:
            path = spec.factory_path
            if not path.resolve().is_relative_to(self.path.resolve()):
                raise UserError(f"{self.path / CONFIG} names a backbone file outside the run folder ({path}); "
                                "refusing to run code from it")
            recorded = self.config.get("code", {}).get(path.name)
            if recorded and path.is_file() and file_sha256(path) != recorded and os.environ.get(TRUST_CODE) != "1":
                raise SettingError(f"{path} changed since the run was made; if you changed it on purpose, set "
                                   f"{TRUST_CODE}=1", "trust_code")
        return spec

    @property
    def data_options(self) -> dict[str, Any]:
        """The arguments of ``load_dataset`` that give this run's data. An image folder is read with the recorded
        ``channels`` (None: the folder's own); a run of an earlier version, which read every folder as RGB and
        recorded no channels, reads it with its network's channel count."""
        data = dict(self.config["data"])
        if "name" not in data:
            raise UserError(f"{self.path} was trained from Python on your own loader and names no data set; pass "
                            "data={'name': ..., 'data_dir': ...} to train_sdn so that its commands can read one")
        shape = self.config["model"].get("input_shape")
        if data.get("name") == "imagefolder" and "channels" not in data and shape:
            data["channels"] = shape[0]
        return data

    def load_checkpoint(self) -> dict[str, Any]:
        """The checkpoint dict, checked for its format."""
        if not self.checkpoint_path.exists():
            raise UserError(f"{self.path} has no {CHECKPOINT}: the run stopped before its first epoch ended; "
                            "start it again with the same command (the folder is reused)")
        ckpt = load_checkpoint_file(self.checkpoint_path)
        if not isinstance(ckpt, dict) or "format" not in ckpt:
            raise UserError(f"{self.checkpoint_path} is not a shallowdeep checkpoint")
        _check_format(self.checkpoint_path, ckpt["format"], CHECKPOINT_FORMAT)
        _check_checkpoint(self.checkpoint_path, ckpt)
        return ckpt

    def load_net(self, device: str | torch.device = "cpu") -> SDN:
        """The trained SDN of this run, in eval mode on ``device``; a ZTW run whose ensemble is not fitted yet is
        refused."""
        ckpt = self.load_checkpoint()
        if not ckpt.get("ensemble_trained", True) and any(k.startswith("ensemble.") for k in ckpt["model"]):
            raise UserError(f"the exit ensemble of {self.path} is not fitted yet (its training has not ended), so its "
                            f"exits would answer wrongly; finish it with shallowdeep train --out {self.path} --resume")
        check_finite_weights(ckpt["model"], f"the weights in {self.checkpoint_path}")
        net = build_sdn(self.model)
        try:
            net.load_state_dict(ckpt["model"])
        except RuntimeError as exc:
            raise UserError(f"{self.checkpoint_path} does not match the model in {CONFIG}: {first_line(exc)}") from exc
        return net.to(device).eval()

    def read_metrics(self) -> list[dict[str, Any]]:
        """The metrics log, one dict per epoch; a damaged line is an error naming it."""
        path = self.path / METRICS
        if not path.exists():
            return []
        rows = []
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise UserError(f"{path} line {number} is not valid JSON; delete or repair that line") from exc
        return rows


def open_run(path: str | Path) -> Run:
    """Open an existing run folder, with one-line errors for missing or damaged files."""
    path = Path(path)
    config_path = path / CONFIG
    if not path.is_dir():
        what = "is a file, not a folder" if path.exists() else "does not exist"
        raise UserError(f"run folder {path} {what}")
    if not config_path.is_file():
        raise UserError(f"{path} is not a run folder: {CONFIG} is missing")
    config = read_json(config_path)
    if not isinstance(config, dict) or not all(isinstance(config.get(k), dict) for k in ("model", "data")):
        raise UserError(f"{config_path} lacks the 'model' or 'data' section")
    _check_format(config_path, config.get("format", RUN_FORMAT), RUN_FORMAT)  # 0.1 runs had no tag
    remove_left_behind(path)
    return Run(path, config)


def remove_left_behind(run_dir: Path) -> None:
    """Remove the temporary files that a killed process of ours left in ``run_dir`` and its sub-folders."""
    remove_stale_temporaries(run_dir)
    try:
        folders = [p for p in run_dir.iterdir() if p.is_dir() and not p.is_symlink()]
    except OSError:
        return
    for folder in folders:
        remove_stale_temporaries(folder)


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir`` for this process while the block runs (created when missing). A second process
    gets a one-line error at once; the lock goes with the process, so a crash never leaves it held."""
    if run_dir.exists() and not run_dir.is_dir():
        raise SettingError(f"{run_dir} is a file, not a run folder; choose another folder", "out")
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    busy = f"{run_dir} is in use by another shallowdeep process; wait for it or choose another folder"
    with file_lock(run_dir / LOCK, SettingError(busy, "out")):
        try:
            yield
        finally:
            left = {p.name for p in run_dir.iterdir()}
            if created and left <= {LOCK, NEW_RUN}:  # a start that wrote nothing but its marker
                for name in left:
                    (run_dir / name).unlink()
                run_dir.rmdir()


def check_new_run_folder(run_dir: Path, require_empty: bool = True) -> None:
    """A one-line error unless ``run_dir`` can take a new run: no run in it yet and, with
    ``require_empty``, nothing else either (so no file of the user's is ever overwritten). A folder
    becomes a run with its first checkpoint: the config and backbone copy of a start that failed before are
    replaced, when the folder holds that start's marker (:data:`NEW_RUN`), which only :func:`create_run` writes."""
    if (run_dir / CHECKPOINT).exists() or (run_dir / CHECKPOINT).is_symlink():
        raise SettingError(f"{run_dir} already holds a run; resume it or choose another folder", "resume", "out")
    if run_dir.is_dir():
        remove_left_behind(run_dir)
    failed_start = (run_dir / NEW_RUN).is_file()
    ours = {LOCK, NEW_RUN, CONFIG, BACKBONE_COPY} if failed_start else {LOCK}
    others = sorted(p.name for p in run_dir.iterdir() if p.name not in ours) if run_dir.is_dir() else []
    if require_empty and others:
        shown = ", ".join(others[:3]) + (" ..." if len(others) > 3 else "")
        raise UserError(f"{run_dir} is not empty ({shown}); a new run needs a new or empty folder")


def create_run(run_dir: Path, model: ModelSpec, sections: dict[str, Any]) -> ModelSpec:
    """Write the config of a new run: its format tag, ``model`` and the other ``sections`` (data,
    train, ...). A user's backbone file is copied into the run; returns the spec as the run reads it. The
    folder's marker of a new run is written first (see :func:`check_new_run_folder`)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if not (run_dir / CHECKPOINT).exists():
        atomic_write_json(run_dir / NEW_RUN, {"pid": os.getpid()})
    saved = replace(model, base_dir=run_dir)
    if model.factory:
        if model.factory_path.resolve() != (run_dir / BACKBONE_COPY).resolve():
            shutil.copyfile(model.factory_path, run_dir / BACKBONE_COPY)
        saved = replace(saved, factory=f"{BACKBONE_COPY}:{model.factory.rpartition(':')[2]}")
        sections = {**sections, "code": {BACKBONE_COPY: file_sha256(run_dir / BACKBONE_COPY)}}
    atomic_write_json(run_dir / CONFIG, {"format": RUN_FORMAT, **sections, "model": saved.to_dict()})
    return saved


def write_checkpoint(run_dir: Path, checkpoint: dict[str, Any], metrics: list[dict[str, Any]]) -> None:
    """Write the checkpoint with its format tag, then the metrics log (each atomically)."""
    atomic_torch_save({"format": CHECKPOINT_FORMAT, **checkpoint, "metrics": metrics}, run_dir / CHECKPOINT)
    atomic_write_bytes(run_dir / METRICS, "".join(strict_json(m) + "\n" for m in metrics).encode())
    (run_dir / NEW_RUN).unlink(missing_ok=True)  # the folder is a run now


def _check_checkpoint(path: Path, ckpt: dict[str, Any]) -> None:
    """A one-line error naming what of a shallowdeep checkpoint is damaged: its weights, progress counters,
    optimiser state, random state or metrics."""
    model = ckpt.get("model")
    if not isinstance(model, Mapping) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                 for k, v in model.items()):
        what = "has no 'model'" if model is None else f"has a 'model' of type {type(model).__name__}"
        raise UserError(f"{path} is damaged: it {what}, not a state dict of tensors")
    for key in ("epoch", "step"):
        if key in ckpt and not (type(ckpt[key]) is int and ckpt[key] >= 0):
            raise UserError(f"{path} is damaged: its '{key}' is {ckpt[key]!r:.40}, not a whole number >= 0")
    kinds = {"optimizer": dict, "metrics": list, "ensemble_trained": bool}
    for key, kind in kinds.items():
        if key in ckpt and not isinstance(ckpt[key], kind):
            raise UserError(f"{path} is damaged: its '{key}' is of type {type(ckpt[key]).__name__}, "
                            f"not {kind.__name__}")
    rng = ckpt.get("rng")
    if rng is not None and not (isinstance(rng, torch.Tensor) and rng.dtype == torch.uint8 and rng.dim() == 1):
        raise UserError(f"{path} is damaged: its 'rng' is not a random generator state")


def _check_format(path: Path, found: Any, expected: str) -> None:
    if found != expected:
        raise UserError(f"{path} is in format '{found}', which this version of shallowdeep does not read "
                        f"(it reads '{expected}')")
