"""Fetching an archive with a checksum, and extracting it without letting it write outside its folder."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
import tempfile
from pathlib import Path, PurePosixPath
from urllib.error import URLError
from urllib.request import urlopen

from shallowdeep.errors import UserError

_CHUNK = 1 << 20
# tarfile's own "data" filter (Python >= 3.10.12 / 3.11.4) as a second line of defence where available.
_SAFE_FILTER = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}


def fetch_verified(url: str, md5: str, hint: str) -> bytes:
    """The bytes at ``url``, checked against ``md5``; ``hint`` tells the user what to do when it fails."""
    digest = hashlib.md5()
    chunks = []
    try:
        with urlopen(url, timeout=60) as response:
            while chunk := response.read(_CHUNK):
                digest.update(chunk)
                chunks.append(chunk)
    except (URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise UserError(f"could not download {url} ({reason}); {hint}") from None
    if digest.hexdigest() != md5:
        raise UserError(f"checksum mismatch for {url}: md5 {digest.hexdigest()}, expected {md5}; {hint}")
    return b"".join(chunks)


def _check_member(member: tarfile.TarInfo) -> None:
    path = PurePosixPath(member.name)
    if path.is_absolute() or ".." in path.parts or member.name.startswith(("/", "\\")):
        raise UserError(f"refusing archive member with an unsafe path: {member.name}")
    if not (member.isfile() or member.isdir()):
        raise UserError(f"refusing archive member that is not a plain file or folder: {member.name}")


def extract_tar(data: bytes, dest: str | Path) -> None:
    """Extract the tar(.gz) archive ``data`` into ``dest``, refusing absolute paths, '..', and links.

    Extraction happens in a temporary folder inside ``dest``; each top-level entry is then moved into place,
    so a failed extraction leaves nothing behind.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest, prefix=".extract-"))
    try:
        try:
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
                members = tar.getmembers()
                for member in members:
                    _check_member(member)
                tar.extractall(tmp, members=members, **_SAFE_FILTER)
        except (tarfile.TarError, EOFError, OSError) as err:
            raise UserError(f"corrupt archive ({err}); delete it and download again") from None
        for entry in tmp.iterdir():
            os.replace(entry, dest / entry.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
