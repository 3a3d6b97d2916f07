"""Two processes under torchrun (gloo, CPU) train the same ICs as one process with the same global batch; IC-only
training moves every IC weight and leaves the CNN's backbone as it was."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch

from conftest import REPO

pytestmark = pytest.mark.slow  # torchrun starts two processes

COMMON = ["--dataset", "digits", "--limit", "128", "--batch-size", "64", "--epochs", "2"]


def run(args: list[str], cwd) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]


def weights(run_dir) -> dict[str, torch.Tensor]:
    """A run's weights, the backbone's named as in the backbone itself (without the ``segments.N.`` prefix)."""
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)["model"]
    return {re.sub(r"^segments\.\d+\.", "", k): v for k, v in state.items()}


def test_two_processes_match_one(tmp_path):
    cli = [sys.executable, "-m", "shallowdeep", "train"]
    run(cli + ["--arch", "resnet56", "--out", "cnn", *COMMON[:-1], "1"], tmp_path)
    run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "shallowdeep",
         "train", "--mode", "ic-only", "--from", "cnn", "--out", "ddp", *COMMON], tmp_path)
    run(cli + ["--mode", "ic-only", "--from", "cnn", "--out", "one", "--no-cache-features", *COMMON], tmp_path)
    run(cli + ["--mode", "ic-only", "--from", "cnn", "--out", "first", "--no-cache-features", *COMMON[:-1], "1"],
        tmp_path)
    ddp = torch.load(tmp_path / "ddp" / "checkpoint.pt", weights_only=True)
    one = torch.load(tmp_path / "one" / "checkpoint.pt", weights_only=True)
    assert ddp["epoch"] == one["epoch"] == 2
    for key, value in one["model"].items():
        assert torch.allclose(ddp["model"][key].float(), value.float(), atol=1e-6), key
    cnn, trained, after_one_epoch = weights(tmp_path / "cnn"), weights(tmp_path / "one"), weights(tmp_path / "first")
    ics = [k for k in trained if k.startswith("ics.")]
    assert ics and set(trained) == set(cnn) | set(ics)
    for key in cnn:  # the frozen backbone, batch-norm statistics included, is the CNN's to the bit
        assert torch.equal(trained[key], cnn[key]), key
    for key in ics:  # and training moves every IC weight: the second epoch changed each of them
        assert not torch.equal(trained[key], after_one_epoch[key]), key
    assert [m["train_loss"] for m in ddp["metrics"]] == [pytest.approx(m["train_loss"], rel=1e-5) for m in one["metrics"]]
