"""Atomic file writes (a reader never sees a half-written file), file locks, and reading JSON with a one-line
error."""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import math
import os
import re
import socket
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .errors import UserError


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename. The temporary file,
    ``.<name>.sd-<host>-<pid>-<random>.tmp``, names its writer, so one a killed process left behind is known as
    ours and removed later (:func:`remove_stale_temporaries`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.sd-{_HOST}-{os.getpid()}-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes files private; use the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]  # the machine, in a file name
# ours: ``.<name>.sd-<host>-<pid>-<random>.tmp``; earlier versions wrote ``.<name>.<random>.tmp`` (8 characters)
_TEMPORARY = re.compile(r"\.(?P<name>.+)\.sd-(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-[a-z0-9_]+\.tmp")
_OLD_TEMPORARY = re.compile(r"\.(?P<name>.+\.(?:pt|json|jsonl|npz|png|html|csv))\.[a-z0-9_]{8}\.tmp")
STALE_AFTER_S = 3600  # a temporary of another machine's process, or of an older version, counts as left behind


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files of :func:`atomic_write_bytes` in ``folder`` whose writer is gone: a process of
    this machine that no longer runs or, for one of another machine (a shared file system) or of an earlier
    version, files older than :data:`STALE_AFTER_S`. Nothing else is touched; a file that cannot be removed is left.
    Returns the files removed."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        if not (entry.name.startswith(".") and entry.name.endswith(".tmp")):
            continue
        try:
            if entry.is_file(follow_symlinks=False) and _is_stale(entry):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            continue
    return removed


def _is_stale(entry: os.DirEntry) -> bool:
    ours = _TEMPORARY.fullmatch(entry.name)
    if ours and ours["host"] == _HOST:
        return not _process_runs(int(ours["pid"]))
    if ours or _OLD_TEMPORARY.fullmatch(entry.name):
        return time.time() - entry.stat(follow_symlinks=False).st_mtime > STALE_AFTER_S
    return False


def _process_runs(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # another user's process: leave its files alone
    except OSError:
        return True
    return True


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` made atomic; ``obj`` must be loadable with ``weights_only=True``."""
    import torch  # here only: the rest of this module serves the torch-free runtime too

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented, strict JSON, atomically: a NaN or infinite float (numpy's too) is written
    as null, since JSON has no such numbers."""
    atomic_write_bytes(path, (strict_json(obj, indent=2) + "\n").encode())


def strict_json(obj: Any, indent: int | None = None) -> str:
    """``obj`` as strict JSON text: NaN and infinite floats (numpy's too) become null."""
    return json.dumps(_json_safe(obj), indent=indent, allow_nan=False)


def _json_safe(value: Any) -> Any:
    """``value`` with numpy scalars made Python's and NaN or infinite floats made None, through nested dicts,
    lists and tuples."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def atomic_save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """``np.savez`` made atomic (plain arrays only, never object arrays)."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def file_lock(path: str | os.PathLike, busy: str | UserError | None = None) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created when missing) while the block runs: wait for another
    process that holds it or, when ``busy`` is given, raise it (a :class:`UserError` saying it) at once.
    The lock goes with the process, so a crash never leaves it held."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if busy is None else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise (busy if isinstance(busy, UserError) else UserError(busy)) from None
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def read_json(path: str | os.PathLike, remedy: str | None = None) -> Any:
    """The JSON value in ``path``; a one-line :class:`UserError` (ending in ``remedy``, if given) when it is
    not valid JSON."""
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is damaged (not valid JSON){'; ' + remedy if remedy else ''}") from exc
