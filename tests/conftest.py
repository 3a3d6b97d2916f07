"""Shared fixtures and helpers: where ../shared is, a third-party model loaded from examples/, the command line
in a subprocess or in this process, a tiny CNN written as a user's backbone file, and a progress hook that
interrupts a training run."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Callable, Iterable, Iterator

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
AKAMASTER = SHARED / "weights" / "akamaster-resnet-cifar10"
TINY_CNN = """
from torch import nn

def make():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 16, 3, padding=1, stride=2), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 16, 3, padding=1, stride=2), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
"""


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``python -m shallowdeep ARGS`` in a fresh interpreter (seconds: it imports torch), its output as text."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.run([sys.executable, "-m", "shallowdeep", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """The command line's ``main`` in this process, with what it prints (its warnings included, as the command
    line shows them) and its exit code, as :func:`cli` returns them."""
    from shallowdeep.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: err.write(
            warnings.formatwarning(message, category, filename, lineno, line))
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse: --help, or a usage error
            code = 0 if exc.code is None else exc.code if isinstance(exc.code, int) else 1
    return subprocess.CompletedProcess(["shallowdeep", *args], code, out.getvalue(), err.getvalue())


def assert_one_line_error(result: subprocess.CompletedProcess, *words: str) -> None:
    """Exit code 2 and one line of stderr that holds every one of ``words`` (at least one)."""
    assert words, "say which words the message must hold"
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for word in words:
        assert word in lines[0], lines[0]


def write_tiny_cnn(folder: Path, name: str = "tiny.py", source: str = TINY_CNN) -> str:
    """Write a backbone file (``TINY_CNN``: 3 channels in, 10 classes) to ``folder``; return its factory, PATH:make."""
    (folder / name).write_text(source)
    return f"{folder / name}:make"


def sigterm_in(epoch: int, batch: int = 1) -> Callable[[Iterable, int, str], Iterator]:
    """A training progress hook that sends this process SIGTERM at ``batch`` (from 0) of ``epoch``."""

    def progress(stream: Iterable, total: int, desc: str) -> Iterator:
        for i, item in enumerate(stream):
            if desc.startswith(f"epoch {epoch}") and i == batch:
                os.kill(os.getpid(), signal.SIGTERM)
            yield item

    return progress


def load_example(name: str = "akamaster_resnet"):
    """The module examples/<name>.py, imported from its file as a user's file would be."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", REPO / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def shared() -> Path:
    if not SHARED.is_dir():
        pytest.skip("../shared is absent")
    return SHARED


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread: tiny tensors avoid thread-pool stalls on a busy two-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
