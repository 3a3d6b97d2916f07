"""No surprises, part two: a user-named output never lands on a run's files or silently on an existing file, a
folder of the user's is never taken for a failed start, damaged checkpoints and edited outputs are caught,
impossible sizes and lists are refused, and the temporary files a killed process leaves are cleaned up. Each
bad input is one line (exit code 2 through the CLI) and destroys nothing."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from shallowdeep.cli import main
from shallowdeep.errors import UserError
from shallowdeep.io import _HOST, STALE_AFTER_S, atomic_write_bytes
from shallowdeep.model_spec import ModelSpec
from shallowdeep.outputs import load_outputs
from shallowdeep.run import CHECKPOINT_FORMAT, NEW_RUN, check_new_run_folder, create_run, open_run
from shallowdeep.train import Recipe, TrainConfig, config_to_dict, new_run, resume_run

from test_analysis import shared_tiny_run

pytestmark = pytest.mark.usefixtures("one_thread")
CPU = torch.device("cpu")
DATA = {"name": "digits", "data_dir": None, "holdout_fraction": 0.1, "seed": 0, "limit": 64}


@pytest.fixture
def run_dir(tmp_path_factory, tmp_path) -> Path:
    """A copy of the session's tiny trained run (digits, 3x16x16, three ICs), with its format tag."""
    path = tmp_path / "run"
    shutil.copytree(shared_tiny_run(tmp_path_factory), path)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({"format": "shallowdeep-run-1", **config}))
    return path


def one_line_error(capsys, code: int, *words: str) -> str:
    """Assert exit code 2 and one line of stderr holding every one of ``words``; return that line."""
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert all(word in err for word in words), err
    return err


# 1. a user-named output file


def test_predict_output_never_lands_on_a_runs_files_nor_replaces_a_file_unasked(run_dir, tmp_path, capsys):
    image = tmp_path / "digit.png"
    Image.fromarray(np.full((16, 16, 3), 90, np.uint8)).save(image)
    predict = ["predict", str(run_dir), str(image), "--output"]
    (run_dir / "early-exit.json").write_text('{"policy": "maxprob", "threshold": 0.9}')
    owned = {name: (run_dir / name).read_bytes() for name in ("config.json", "early-exit.json")}
    for name in owned:
        for force in ([], ["--force"]):
            one_line_error(capsys, main([*predict, str(run_dir / name), *force]), "lies in the run folder")
    one_line_error(capsys, main([*predict, str(run_dir / "outputs" / "new.csv")]), "lies in the run folder")
    (tmp_path / "link.json").symlink_to(run_dir / "config.json")  # through a link, too
    one_line_error(capsys, main([*predict, str(tmp_path / "link.json"), "--force"]), "lies in the run folder")
    assert owned == {name: (run_dir / name).read_bytes() for name in owned}
    assert not (run_dir / "outputs" / "new.csv").exists()

    (tmp_path / "folder.json").mkdir()
    one_line_error(capsys, main([*predict, str(tmp_path / "folder.json")]), "folder.json is a folder")
    mine = tmp_path / "mine.json"
    mine.write_text("my notes")
    one_line_error(capsys, main([*predict, str(mine)]), "mine.json exists; pass --force")
    assert mine.read_text() == "my notes"
    assert main([*predict, str(mine), "--force"]) == 0
    assert json.loads(mine.read_text())[0]["path"] == str(image)


@pytest.mark.slow
def test_the_output_check_and_atomic_writes_need_no_torch():
    """predict on an export folder runs without PyTorch, --output included."""
    import subprocess
    import sys

    code = ("import sys; from shallowdeep.run_folder import check_output_file; import shallowdeep.io; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# 2. a folder of the user's is not a failed start


def test_a_folder_of_the_users_own_config_and_backbone_is_never_taken_over(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "config.json").write_text('{"my": "settings"}')
    (folder / "backbone.py").write_text("# my network\n")
    with pytest.raises(UserError, match=r"is not empty \(backbone.py, config.json\)"):
        new_run(folder, DATA, ModelSpec(arch="resnet56"), TrainConfig("cnn", Recipe("sgd", 0.01, 1, [])), device=CPU)
    assert (folder / "config.json").read_text() == '{"my": "settings"}'
    assert (folder / "backbone.py").read_text() == "# my network\n"
    # a start of ours writes its marker before anything else, and only such a folder is taken over
    (tmp_path / "net.py").write_text("def make():\n    pass\n")
    create_run(tmp_path / "ours", ModelSpec(factory="net.py:make", base_dir=tmp_path), {"data": {}})
    assert sorted(p.name for p in (tmp_path / "ours").iterdir()) == [NEW_RUN, "backbone.py", "config.json"]
    check_new_run_folder(tmp_path / "ours")


# 3. damaged checkpoints


@pytest.mark.parametrize("damage, words", [
    ("link to text", "checkpoint.pt is not a PyTorch file"),
    ("no model", "has no 'model', not a state dict of tensors"),
    ("model list", "has a 'model' of type list"),
    ("epoch abc", "its 'epoch' is 'abc', not a whole number >= 0"),
    ("negative step", "its 'step' is -4, not a whole number >= 0"),
])
def test_a_damaged_checkpoint_is_one_line(run_dir, damage, words):
    path = run_dir / "checkpoint.pt"
    weights = open_run(run_dir).load_checkpoint()["model"]
    path.unlink()
    if damage == "link to text":
        path.symlink_to(run_dir / "backbone.py")
    else:
        content = {"no model": {}, "model list": {"model": [1, 2]}, "epoch abc": {"model": weights, "epoch": "abc"},
                   "negative step": {"model": weights, "epoch": 2, "step": -4}}[damage]
        torch.save({"format": CHECKPOINT_FORMAT, **content}, path)
    for use in (lambda: open_run(run_dir).load_net(), lambda: resume_run(run_dir, device=CPU)):
        with pytest.raises(UserError, match=words) as err:
            use()
        assert "\n" not in str(err.value)


def test_a_text_file_as_weights_is_one_line(tmp_path, capsys):
    (tmp_path / "weights.txt").write_text("these are not weights\n")
    code = main(["train", "--mode", "ic-only", "--arch", "resnet56", "--from", str(tmp_path / "weights.txt"),
                 "--dataset", "digits", "--out", str(tmp_path / "run")])
    one_line_error(capsys, code, "weights.txt is not a PyTorch file")
    assert (tmp_path / "weights.txt").read_text() == "these are not weights\n"


def test_a_checkpoint_past_the_end_of_its_epoch_is_refused(run_dir):
    """A checkpoint's batch counter beyond the batches of an epoch never resumes (nothing would be trained)."""
    ckpt = open_run(run_dir).load_checkpoint()
    net = open_run(run_dir).load_net()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    config = json.loads((run_dir / "config.json").read_text())
    cfg = TrainConfig("sdn", Recipe("sgd", 0.01, 2, [], batch_size=64), ic_weights=[1.0, 1.0, 1.0])
    (run_dir / "config.json").write_text(json.dumps({**config, "train": config_to_dict(cfg)}))
    torch.save({**ckpt, "optimizer": optimizer.state_dict(), "epoch": 0, "step": 1000}, run_dir / "checkpoint.pt")
    with pytest.raises(UserError, match="at batch 1000 of epoch 1, which has only"):
        resume_run(run_dir, device=CPU)


# 4. damaged or edited per-exit outputs


@pytest.mark.parametrize("tamper", ["truncated", "reversed logits", "shrunk exit flops"])
def test_truncated_or_edited_outputs_with_their_stamps_are_computed_again(run_dir, tamper):
    run = open_run(run_dir)
    true = load_outputs(run, "test")
    path = run_dir / "outputs" / "test.npz"
    if tamper == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        with np.load(path, allow_pickle=False) as f:
            arrays = dict(f)  # the stamps (checkpoint and data fingerprints, content hash) are kept
        if tamper == "reversed logits":
            arrays["logits"] = arrays["logits"][:, ::-1].copy()
        else:
            arrays["exit_flops"] = arrays["exit_flops"] // 2
        np.savez(path, **arrays)
    again = load_outputs(run, "test")
    assert np.array_equal(again.logits, true.logits) and np.array_equal(again.exit_flops, true.exit_flops)
    with np.load(path, allow_pickle=False) as f:  # and stored again, whole
        assert np.array_equal(f["logits"], true.logits)


# 6. sizes and lists that cannot be


def test_an_impossible_input_shape_is_one_line_before_anything_is_allocated(run_dir, capsys):
    code = main(["exits", "--arch", "resnet56", "--input-shape", "3,100000,100000"])
    one_line_error(capsys, code, "input shape 3x100000x100000 is too large")
    config = json.loads((run_dir / "config.json").read_text())
    config["model"]["input_shape"] = [3, 100000, 100000]
    (run_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="is too large"):
        open_run(run_dir).load_net()


@pytest.mark.parametrize("mode", ["ic-only", "sdn"])
def test_exits_naming_no_module_are_refused(tmp_path, capsys, mode):
    code = main(["train", "--mode", mode, "--arch", "resnet56", "--from", str(tmp_path / "w.pt"), "--exits", ",",
                 "--dataset", "digits", "--out", str(tmp_path / "run")])
    one_line_error(capsys, code, "--exits ',' names no module")
    with pytest.raises(UserError, match=f"mode {mode} trains internal classifiers, but no exit"):
        new_run(tmp_path / "run", DATA, ModelSpec(arch="resnet56", exits=()), TrainConfig(mode), device=CPU)
    assert not (tmp_path / "run").exists()


def test_more_threads_than_cores_are_capped_with_a_warning():
    from shallowdeep.cli._common import resolve_device

    cores = len(os.sched_getaffinity(0))
    before = torch.get_num_threads()
    try:
        with pytest.warns(UserWarning, match=f"--threads 10000 is more than the {cores} cores"):
            resolve_device("cpu", 10000)
        assert torch.get_num_threads() == cores
    finally:
        torch.set_num_threads(before)


# 13. temporary files left by a killed process


def test_temporaries_of_a_killed_writer_are_removed_and_nothing_else(run_dir):
    pid = os.fork()
    if pid == 0:  # a writer killed between writing its temporary file and renaming it
        try:
            os.replace = lambda *args: os._exit(9)
            atomic_write_bytes(run_dir / "checkpoint.pt", b"half of a checkpoint")
        finally:
            os._exit(1)
    assert os.waitpid(pid, 0)[1] != 0
    killed = [p.name for p in run_dir.glob(".checkpoint.pt.*.tmp")]
    assert len(killed) == 1 and f".sd-{_HOST}-{pid}-" in killed[0]
    (run_dir / "outputs").mkdir(exist_ok=True)
    old = time.time() - STALE_AFTER_S - 60
    names = {
        f".metrics.jsonl.sd-{_HOST}-{os.getpid()}-live1234.tmp": (None, True),  # a writer that still runs
        ".checkpoint.pt.sd-0badc0de-17-x.tmp": (None, True),  # another machine's, recent
        "outputs/.test.npz.sd-0badc0de-17-y.tmp": (old, False),  # another machine's, long ago
        ".checkpoint.pt.abc_12.tmp": (old, True),  # not mkstemp's 8 characters
        "outputs/.test.npz.ab12cd34.tmp": (old, False),  # an earlier version's, long ago
        ".config.json.ab12cd34.tmp": (None, True),  # an earlier version's, recent
        ".notes.tmp": (old, True),  # the user's
        "outputs/.x.ab12cd34.tmp": (old, True),  # not a kind of file shallowdeep writes
    }
    for name, (mtime, _) in names.items():
        (run_dir / name).write_text("x")
        if mtime:
            os.utime(run_dir / name, (mtime, mtime))
    open_run(run_dir)
    assert not (run_dir / killed[0]).exists()
    assert {name for name in names if (run_dir / name).exists()} == {n for n, (_, kept) in names.items() if kept}
    assert (run_dir / "checkpoint.pt").read_bytes()[:2] == b"PK"  # the real checkpoint is untouched
