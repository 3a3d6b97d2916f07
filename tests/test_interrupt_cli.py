"""A training run killed from outside (SIGKILL mid-epoch, or SIGTERM) resumes with --resume to exactly the
weights of a run that was never interrupted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import torch

from conftest import REPO

ARGS = ["train", "--arch", "resnet56", "--mode", "sdn", "--dataset", "digits", "--limit", "192", "--batch-size", "32",
        "--epochs", "3", "--lr", "0.02", "--threads", "1"]  # two runs at once: one core each
ENV = {**os.environ, "PYTHONPATH": str(REPO / "src")}


def start(out, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "shallowdeep", *ARGS, "--out", str(out), *extra], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_epoch(proc: subprocess.Popen, epoch: int) -> None:
    for line in proc.stdout:
        if line.startswith(f"epoch {epoch:3d}"):
            return
    pytest.fail(f"the run ended before epoch {epoch}: {proc.stderr.read()[-1000:]}")


def weights(run) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoint.pt", weights_only=True)["model"]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_run_resumes_to_the_same_weights(tmp_path, sig):
    whole = start(tmp_path / "whole")
    cut = start(tmp_path / "cut")
    wait_for_epoch(cut, 1)  # the signal lands early in epoch 2
    cut.send_signal(sig)
    cut.wait(timeout=300)
    if sig == signal.SIGTERM:
        assert cut.returncode == 130  # saved a checkpoint and stopped cleanly
        assert torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)["step"] > 0
    resumed = subprocess.run([sys.executable, "-m", "shallowdeep", "train", "--out", str(tmp_path / "cut"), "--resume",
                              "--threads", "1"],
                             env=ENV, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert whole.wait(timeout=600) == 0
    a, b = weights(tmp_path / "whole"), weights(tmp_path / "cut")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    lines = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3
