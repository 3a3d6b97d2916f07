"""The name and path of every file a run folder holds, its format tags, and the checks that need nothing more:
whether a folder is a run or an export, and where a file the user names may be written. No torch: the torch-free
runtime's commands use these too. :mod:`shallowdeep.run` reads and writes the training state, :mod:`shallowdeep.outputs`
the per-exit outputs, :mod:`shallowdeep.run_results` what the analysis commands and the backdoor study write.
An export folder's contract is :mod:`shallowdeep.runtime.manifest`'s; only its name and tag, to know one, are here."""

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
OUTPUTS_DIR = "outputs"  # per-exit logits, one .npz per split (see shallowdeep.outputs)
OVERTHINKING_JSON = "overthinking.json"
CONFUSION_JSON = "confusion.json"
EARLY_EXIT_JSON = "early-exit.json"  # the latest early-exit result
EARLY_EXIT_PNG = "early-exit.png"  # its plot
EARLY_EXIT_DIR = "early-exit"  # every early-exit result under its key, with its plot
REPORT_DIR = "report"
REPORT_PAGE, REPORT_JSON = "index.html", "report.json"
# the backdoor study (its folder is the SDN's run; its CNNs are runs in sub-folders)
STUDY_JSON = "study.json"
BACKDOOR_JSON = "backdoor.json"
BACKDOOR_FIGURES = {"confusion": "backdoor-confusion.png", "exits": "backdoor-exits.png",
                    "examples": "backdoor-examples.png"}
BACKDOORED_CNN, CLEAN_CNN = "backdoored-cnn", "clean-cnn"
RUN_FORMAT = "shallowdeep-run-1"
# an export folder (written by shallowdeep.export, read by shallowdeep.runtime.manifest): its manifest and format tag
EXPORT_MANIFEST, EXPORT_FORMAT = "manifest.json", "shallowdeep-export-1"
CHECKPOINT_FORMAT = "shallowdeep-checkpoint-1"


def evaluation_json(split: str) -> str:
    """The name of the evaluation result of ``split`` (``eval-<split>.json``)."""
    return f"eval-{split}.json"


def outputs_path(run_path: Path, name: str) -> Path:
    """Where the per-exit outputs cached under ``name`` (a split's, or a sample's) are kept."""
    return Path(run_path) / OUTPUTS_DIR / f"{name}.npz"


def trigger_copy(pattern: str) -> str:
    """The name of a backdoored run's copy of the trigger image ``pattern``."""
    return f"trigger{Path(pattern).suffix.lower()}"


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
    return _of_family(found, RUN_FORMAT)


def _of_family(found: object, tag: str) -> bool:
    """Whether the format tag ``found`` is of ``tag``'s kind, whatever its version (``shallowdeep-run-*``)."""
    return isinstance(found, str) and found.startswith(tag.rpartition("-")[0] + "-")


def is_export(folder: str | Path) -> bool:
    """Whether ``folder`` holds an export (a manifest with the export format's tag, whatever its content)."""
    path = Path(folder) / EXPORT_MANIFEST
    try:
        return path.is_file() and _of_family(json.loads(path.read_text()).get("format"), EXPORT_FORMAT)
    except (OSError, ValueError, AttributeError):
        return False


def check_output_file(path: Path, force: bool = False, option: str = "--output") -> None:
    """A one-line error unless a command may write the user-named file ``path`` (given as ``option``): never a
    folder, never anything inside a run or export folder (its files are the run's or the export's), and an
    existing file only with ``force``. Every command that writes a file the user names calls this first."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{option} {path} is a folder; name a file")
    for candidate in dict.fromkeys((path.absolute(), path.resolve())):
        for folder in candidate.parents:
            for kind, ours in (("run", is_run_folder), ("export", is_export)):
                if ours(folder):
                    raise UserError(f"{option} {path} lies in the {kind} folder {folder}, whose files are the "
                                    f"{kind}'s; write it elsewhere")
    if path.exists() or path.is_symlink():
        if not force:
            raise UserError(f"{option} {path} exists; pass --force to replace it")
        if not path.is_file():
            raise UserError(f"{option} {path} is not a regular file; it is not replaced")
