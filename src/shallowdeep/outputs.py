"""Per-exit outputs: the logits of every exit on a data split, computed once per checkpoint.

Stored as ``RUN/outputs/<split>.npz`` (plain arrays, read with ``allow_pickle=False``) together
with fingerprints of the checkpoint and of the data they came from and a hash of the arrays themselves; a newer
checkpoint, changed data or a damaged, truncated or edited file makes them computed again (one process at a time; another waits and reads
them), and data of other classes or image shape than the run's is refused.
Every analysis reads these instead of running the network again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import zipfile
from pathlib import Path

import numpy as np
import torch

from .choices import SPLITS
from .data import ImageData, Splits, load_dataset
from .data.fingerprint import check_same_data, check_same_task, split_fingerprint
from .data.loader import batches
from .data.poison import PoisonConfig, poison_splits
from .errors import SettingError, UserError
from .exit_outputs import ExitOutputs
from .io import atomic_save_npz, file_lock, file_sha256
from .run import Run
from .run_folder import CONFIG, LOCK, outputs_path
from .sdn import SDN


@torch.no_grad()
def compute_outputs(net: SDN, data: ImageData, splits: Splits, device: str | torch.device = "cpu",
                    batch_size: int = 256) -> ExitOutputs:
    """Run ``net`` (eval mode, no augmentation) over ``data`` and collect every exit's logits."""
    net.eval()
    chunks: list[list[torch.Tensor]] = [[] for _ in range(net.num_exits)]
    for x, _ in batches(data, splits.spec, batch_size, train=False, shuffle=False, device=device):
        for store, out in zip(chunks, net.exit_logits(x)):
            store.append(out.float().cpu())
    logits = np.stack([torch.cat(c).numpy() for c in chunks]) if len(data.labels) else np.zeros((net.num_exits, 0, splits.spec.num_classes), np.float32)
    return ExitOutputs(logits, data.labels.numpy().astype(np.int64), np.asarray(net.exit_flops, np.int64), net.backbone_flops)


def load_run_data(run: Run, data_dir: str | Path | None = None, cache_dir: str | Path | None = None) -> Splits:
    """The data set a run was trained on, as its config records it; from ``data_dir`` when given (where the data
    is now: each split must still be the one the run recorded), with decoded images cached under ``cache_dir`` when
    given (else where the run's config says, by default beside the data)."""
    options = run.data_options
    recorded = options.get("data_dir")
    if data_dir is None and recorded and not options.get("download") and not Path(recorded).expanduser().is_dir():
        raise SettingError(f"{run.path} was trained on the data in {recorded}, which does not exist here; say where "
                           "that data is now", "data_dir")
    overrides = {key: value for key, value in (("data_dir", data_dir), ("cache_dir", cache_dir)) if value is not None}
    splits = load_dataset(**{**options, **overrides})
    if data_dir is not None:  # a poisoned run recorded its poisoned training split
        names = ("holdout", "test") if run.config.get("poison") else ("train", "holdout", "test")
        check_same_data(run.config.get("data_record"), splits, names, f"run {run.path}", str(data_dir))
    return splits


def load_training_data(run: Run, data_dir: str | Path | None = None, cache_dir: str | Path | None = None) -> Splits:
    """The data ``run`` was trained on, rebuilt from its config: :func:`load_run_data`'s, poisoned as the run
    records when it was (a backdoor study's CNN)."""
    splits = load_run_data(run, data_dir, cache_dir)
    return _poisoned(run, splits)[0] if run.config.get("poison") else splits


def poisoned_run_data(run: Run) -> tuple[Splits, torch.Tensor]:
    """The data a backdoored run was trained on, rebuilt from its config: the clean splits with the recorded
    poisoning applied, and the poisoned indices of the training split."""
    if not run.config.get("poison"):
        raise UserError(f"{run.path} was not trained on poisoned data (its {CONFIG} has no 'poison' record)")
    return _poisoned(run, load_dataset(**run.data_options))


def _poisoned(run: Run, splits: Splits) -> tuple[Splits, torch.Tensor]:
    return poison_splits(splits, PoisonConfig.from_dict(run.config["poison"]), run.path)


def checkpoint_fingerprint(run: Run) -> str:
    """A short hash of the checkpoint file's bytes."""
    return file_sha256(run.checkpoint_path)[:16]


def load_outputs(run: Run, split: str, device: str | torch.device = "cpu", splits: Splits | None = None,
                 name: str | None = None) -> ExitOutputs:
    """The per-exit outputs of ``run`` on ``split`` ('train' is un-augmented), computed once and cached.

    ``splits`` gives another data source (e.g. a separate calibration set); ``name`` is the file
    name its outputs are cached under (default: the split's name).
    """
    if split not in SPLITS:
        raise UserError(f"unknown split '{split}': choose one of {', '.join(SPLITS)}")
    path = outputs_path(run.path, name or split)
    if not run.checkpoint_path.is_file():
        raise UserError(f"{run.path} has no {run.checkpoint_path.name}; train it first")
    fingerprint = checkpoint_fingerprint(run)
    splits = splits or load_run_data(run)
    check_same_task(run.config.get("data_record"), splits, f"run {run.path}")
    data = getattr(splits, split)
    stamp = {"fingerprint": fingerprint, "data_fingerprint": split_fingerprint(data)}
    exits = run.model.exits
    expected = (None if exits is None else len(exits) + 1, len(data), splits.spec.num_classes)
    cached = _read_cached(path, stamp, expected, data.labels.numpy())
    if cached is not None:
        return cached
    path.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(path.parent / LOCK):  # a second process waits, then reads what the first wrote
        cached = _read_cached(path, stamp, expected, data.labels.numpy())
        if cached is not None:
            return cached
        outputs = compute_outputs(run.load_net(device), data, splits, device)
        arrays = {"logits": outputs.logits, "labels": outputs.labels, "exit_flops": outputs.exit_flops,
                  "backbone_flops": np.int64(outputs.backbone_flops)}
        atomic_save_npz(path, **arrays, **{k: np.str_(v) for k, v in stamp.items()},
                        content_sha256=np.str_(_content_hash(arrays)))
    return outputs


def load_train_sample(run: Run, samples: int, seed: int = 0, device: str | torch.device = "cpu",
                      splits: Splits | None = None) -> ExitOutputs:
    """The per-exit outputs of a seeded random sample of ``samples`` images of the run's un-augmented training
    split (all of it when ``samples`` is 0 or the split holds no more), computed once and cached as
    ``RUN/outputs/train-sample-<samples>-seed-<seed>.npz``."""
    splits = splits or load_run_data(run)
    count = len(splits.train)
    if samples == 0 or samples >= count:
        return load_outputs(run, "train", device, splits)
    index = np.sort(np.random.default_rng(seed).choice(count, samples, replace=False))
    sample = dataclasses.replace(splits, train=splits.train.subset(torch.from_numpy(index)))
    return load_outputs(run, "train", device, sample, name=f"train-sample-{samples}-seed-{seed}")


def _content_hash(arrays: dict[str, np.ndarray]) -> str:
    """The sha256 of the cached arrays: each one's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}:{a.dtype.str}:{a.shape};".encode())
        digest.update(a.tobytes())
    return digest.hexdigest()


def _read_cached(path: Path, stamp: dict[str, str], shape: tuple[int | None, int, int],
                 labels: np.ndarray) -> ExitOutputs | None:
    """The outputs cached in ``path`` when they were computed from this checkpoint and data and still hold
    what that gives (logits of ``shape``, exits None when unknown; these ``labels``; finite values); None
    otherwise (recompute). The arrays must still have the hash written with them: an edit is a change too."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            if any(str(f[key]) != value for key, value in stamp.items()):
                return None
            arrays = {key: f[key] for key in ("logits", "labels", "exit_flops", "backbone_flops")}
            if str(f["content_sha256"]) != _content_hash(arrays):
                return None
            outputs = ExitOutputs(arrays["logits"], arrays["labels"], arrays["exit_flops"],
                                  int(arrays["backbone_flops"]))
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile, UserError):
        return None  # damaged or truncated: recompute
    exits, samples, classes = shape
    intact = (outputs.logits.shape[1:] == (samples, classes) and exits in (None, outputs.logits.shape[0])
              and np.array_equal(outputs.labels, labels)
              and np.isfinite(outputs.logits).all() and (outputs.exit_flops > 0).all())
    return outputs if intact else None
