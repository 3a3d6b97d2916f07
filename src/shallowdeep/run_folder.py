"""The run folder's file names and format tags (see :mod:`shallowdeep.run`), and the checks that need nothing
more: whether a folder is a run, and where a file the user names may be written. No torch: the torch-free
runtime's commands use these too."""

from __future__ import annotations

import json
from pathlib import Path

from .errors import UserError

CONFIG = "config.json"
CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
BACKBONE_COPY = "backbone.py"
LOCK = ".lock"
NEW_RUN = ".new-run"
RUN_FORMAT = "shallowdeep-run-1"
CHECKPOINT_FORMAT = "shallowdeep-checkpoint-1"


def is_run_folder(path: Path) -> bool:
    """Whether ``path`` is a folder of ours: it holds shallowdeep's ``config.json`` (with the run format tag, or
    the 'model' and 'data' sections of an untagged first-version run) or a new run's marker."""
    if (path / NEW_RUN).is_file():
        return True
    config_path = path / CONFIG
    if not config_path.is_file():
        return False
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(config, dict):
        return False
    found = config.get("format")
    if found is None:
        return isinstance(config.get("model"), dict) and isinstance(config.get("data"), dict)
    return isinstance(found, str) and found.startswith(RUN_FORMAT.rpartition("-")[0] + "-")


def check_output_file(path: Path, force: bool = False, option: str = "--output") -> None:
    """A one-line error unless a command may write the user-named file ``path`` (given as ``option``): never a
    folder, never anything inside a run folder (its files are the run's), and an existing file only with
    ``force``. Every command that writes a file the user names calls this first."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{option} {path} is a folder; name a file")
    for candidate in dict.fromkeys((path.absolute(), path.resolve())):
        for folder in candidate.parents:
            if is_run_folder(folder):
                raise UserError(f"{option} {path} lies in the run folder {folder}, whose files are the run's; "
                                "write it elsewhere")
    if path.exists() or path.is_symlink():
        if not force:
            raise UserError(f"{option} {path} exists; pass --force to replace it")
        if not path.is_file():
            raise UserError(f"{option} {path} is not a regular file; it is not replaced")
