"""Shared fixtures: where ../shared is, and a third-party model loaded from examples/."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
AKAMASTER = SHARED / "weights" / "akamaster-resnet-cifar10"


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
