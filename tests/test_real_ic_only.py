"""IC-only training of the third-party ResNet-56 (akamaster weights) on the real CIFAR-10 JPEG copy,
through the command line, shortened to what CI affords: every IC above chance, the deepest IC better than
the first, and the final head exactly the pretrained network."""

from __future__ import annotations

import json
import tarfile

import pytest
import torch

from shallowdeep.build import extract_state_dict, load_checkpoint_file
from shallowdeep.data import load_dataset
from shallowdeep.data.loader import batches

from conftest import AKAMASTER, REPO, cli, load_example


@pytest.mark.slow
@pytest.mark.realdata
def test_ic_only_on_third_party_resnet56(shared, tmp_path):
    with tarfile.open(shared / "data" / "cifar10-jpeg.tar.gz") as tar:
        tar.extractall(tmp_path, filter="data")
    data = tmp_path / "cifar10-jpeg"
    weights = AKAMASTER / "resnet56-4bfd9763.th"
    run = tmp_path / "run"
    r = cli("train", "--mode", "ic-only", "--backbone", f"{REPO / 'examples' / 'akamaster_resnet.py'}:resnet56",
            "--from", str(weights), "--dataset", "cifar10", "--data-dir", str(data), "--limit", "3000",
            "--holdout-fraction", "0.04", "--epochs", "3", "--cache-views", "1", "--out", str(run))
    assert r.returncode == 0, r.stderr
    r = cli("evaluate", str(run), "--split", "holdout")
    assert r.returncode == 0, r.stderr
    exits = json.loads((run / "eval-holdout.json").read_text())["exits"]
    accuracies = [e["top1"] for e in exits]
    assert len(accuracies) == 7 and all(a > 0.2 for a in accuracies[:-1]), accuracies  # chance is 0.1
    assert accuracies[5] > accuracies[0] + 0.1, accuracies

    # the final head against the pretrained network run independently on the same holdout images
    model = load_example().resnet56()
    model.load_state_dict({**model.state_dict(), **extract_state_dict(load_checkpoint_file(weights))})
    model.eval()
    splits = load_dataset("cifar10", data, holdout_fraction=0.04, limit=3000)
    hits = 0
    with torch.no_grad():
        for x, y in batches(splits.holdout, splits.spec, 500, train=False, shuffle=False, device="cpu"):
            hits += (model(x).argmax(1) == y).sum().item()
    assert exits[-1]["top1"] == pytest.approx(hits / len(splits.holdout), abs=1e-9)
    assert exits[-1]["top1"] > 0.8
