"""A grey 28x28 image folder from training to ``shallowdeep predict``: the run keeps 1 channel and its odd size,
``shallowdeep.load`` and the predict command read files as the data was read and answer as the stored outputs do."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import shallowdeep
from shallowdeep.cli import main
from shallowdeep.errors import UserError
from shallowdeep.outputs import load_outputs
from shallowdeep.run import open_run

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def grey_run(tmp_path_factory, one_thread):
    """A one-epoch ResNet-56 SDN on 28x28 grey images of two classes (dark and light), evaluated."""
    root = tmp_path_factory.mktemp("predict")
    rng = np.random.default_rng(0)
    for split, count in (("train", 6), ("test", 3)):
        for label, name in enumerate(("dark", "light")):
            (root / "data" / split / name).mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 128, (28, 28), dtype=np.uint8) + 127 * label
                Image.fromarray(pixels, "L").save(root / "data" / split / name / f"{i}.png")
    run = root / "run"
    assert main(["train", "--arch", "resnet56", "--mode", "sdn", "--dataset", "imagefolder", "--data-dir",
                 str(root / "data"), "--epochs", "1", "--limit", "8", "--batch-size", "8", "--out", str(run)]) == 0
    assert main(["evaluate", str(run)]) == 0
    return root


def test_load_reads_files_as_the_data_and_answers_as_the_stored_outputs(grey_run):
    run = grey_run / "run"
    config = json.loads((run / "config.json").read_text())
    assert config["data_record"]["input_shape"] == config["model"]["input_shape"] == [1, 28, 28]
    clf = shallowdeep.load(run)
    assert not clf.net.training and clf.input_shape == (1, 28, 28) and clf.class_names == ["dark", "light"]
    outputs = load_outputs(open_run(run), "test")  # what evaluate computed and stored
    final = clf.predict_files([grey_run / "data" / "test"])  # a folder, read recursively in the data's order
    assert [p.name for p in final.paths[:3]] == ["0.png", "1.png", "2.png"]
    assert np.array_equal(final.indices.numpy(), outputs.predictions[-1])
    first = clf.predict_files([grey_run / "data" / "test"], threshold=0.0, batch_size=4)  # all leave at IC 1
    assert np.array_equal(first.indices.numpy(), outputs.predictions[0]) and (first.exits == 0).all()
    x = clf.preprocess(clf.read_images([final.paths[0]])[1])
    assert shallowdeep.early_exit(clf.net, x, threshold=0.0)[0].tolist() == [outputs.predictions[0][0]]
    with pytest.raises(UserError, match=r"images of shape \(3, 28, 28\) given, but this network takes \(1, 28, 28\)"):
        clf.predict(torch.zeros(1, 3, 28, 28, dtype=torch.uint8))


def test_predict_command_writes_each_images_class_exit_and_cost(grey_run, capsys):
    run, test = grey_run / "run", grey_run / "data" / "test"
    outputs = load_outputs(open_run(run), "test")
    colour = grey_run / "colour.png"  # another size, in colour: read grey and resized, as the run's data
    Image.fromarray(np.full((40, 40, 3), 200, np.uint8)).save(colour)
    assert main(["predict", str(run), str(test / "dark" / "0.png"), str(colour), "--threshold", "0",
                 "--output", str(grey_run / "first.json")]) == 0
    rows = json.loads((grey_run / "first.json").read_text())
    exit_names = open_run(run).config["model"]["exits"]
    assert [r["path"] for r in rows] == [str(test / "dark" / "0.png"), str(colour)]
    assert rows[0]["class_index"] == outputs.predictions[0][0] and rows[0]["exit"] == 0
    assert rows[0]["exit_name"] == exit_names[0] and rows[0]["class"] in ("dark", "light") and rows[0]["flops"] > 0
    (run / "early-exit.json").write_text(json.dumps({"policy": "maxprob-per-exit", "threshold": [2.0] * 6}))
    assert main(["predict", str(run), str(test), "--from-early-exit", "--output", str(grey_run / "all.csv")]) == 0
    with open(grey_run / "all.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [int(r["class_index"]) for r in table] == outputs.predictions[-1].tolist()  # no IC is that sure
    assert {r["exit_name"] for r in table} == {"final"}
    capsys.readouterr()
    assert main(["predict", str(run), str(test / "dark" / "0.png")]) == 0
    assert "0.png" in capsys.readouterr().out


def test_an_unreadable_file_is_one_line_naming_it(grey_run, capsys):
    broken = grey_run / "broken.png"
    broken.write_bytes(b"not an image")
    assert main(["predict", str(grey_run / "run"), str(broken)]) == 2
    assert main(["predict", str(grey_run / "run"), str(grey_run / "absent")]) == 2
    assert main(["predict", str(grey_run / "run"), str(broken), "--policy", "entropy"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0].startswith("shallowdeep predict: error: cannot decode image") and "broken.png" in lines[0]
    assert lines[1:] == [f"shallowdeep predict: error: no file or folder {grey_run / 'absent'}",
                         "shallowdeep predict: error: --policy goes with --threshold"]


def test_a_grey_runs_weights_on_colour_images_are_one_line_naming_both_shapes(grey_run, capsys):
    for split in ("train", "test"):
        (grey_run / "colour" / split / "a").mkdir(parents=True)
        pixels = np.random.default_rng(0).integers(0, 256, (28, 28, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(grey_run / "colour" / split / "a" / "0.png")
    assert main(["train", "--mode", "ic-only", "--from", str(grey_run / "run"), "--dataset", "imagefolder",
                 "--data-dir", str(grey_run / "colour"), "--holdout-fraction", "0", "--out",
                 str(grey_run / "ic")]) == 2
    assert capsys.readouterr().err.strip() == (f"shallowdeep train: error: run {grey_run / 'run'} takes 1x28x28 images "
                                               "but the data's are 3x28x28; read the data as 1-channel images (--channels)")


def test_from_early_exit_names_the_result_it_applies_and_refuses_an_edited_one(grey_run, capsys):
    run, image = grey_run / "run", str(grey_run / "data" / "test" / "dark" / "0.png")
    latest = run / "early-exit.json"
    try:
        for threshold in (None, {"q": 0.5}, [0.5, 0.5]):  # edited: no number, a dict, a list for 2 of 6 ICs
            latest.write_text(json.dumps({"policy": "maxprob-per-exit" if isinstance(threshold, list) else "maxprob",
                                          "threshold": threshold}))
            assert main(["predict", str(run), image, "--from-early-exit"]) == 2
            err = capsys.readouterr().err.strip()
            assert len(err.splitlines()) == 1 and err.endswith(f"run shallowdeep early-exit {run} again")
        (run / "early-exit").mkdir()
        for q, key in ((0.0, "max-drop=0.01 maxprob holdout"), (2.0, "budget=0.5 maxprob holdout")):
            result = {"key": key, "policy": "maxprob", "threshold": q}
            (run / "early-exit" / f"{key.replace(' ', '_')}.json").write_text(json.dumps(result))
        latest.write_text(json.dumps(result))
        assert main(["predict", str(run), image, "--from-early-exit"]) == 0  # the latest: nothing exits early
        out = capsys.readouterr().out
        assert out.startswith("early exit: maxprob at 2 (early-exit result 'budget=0.5 maxprob holdout')\n")
        assert "final" in out
        assert main(["predict", str(run), image, "--early-exit", "max-drop=0.01 maxprob holdout"]) == 0
        out = capsys.readouterr().out
        assert out.startswith("early exit: maxprob at 0 (early-exit result 'max-drop=0.01 maxprob holdout')\n")
        assert "final" not in out
        assert main(["predict", str(run), image, "--early-exit", "nope"]) == 2
        assert main(["predict", str(run), image, "--early-exit", "nope", "--threshold", "0.5"]) == 2
        assert capsys.readouterr().err.splitlines() == [
            f"shallowdeep predict: error: {run} has no early-exit result 'nope'; it has: "
            "'budget=0.5 maxprob holdout'; 'max-drop=0.01 maxprob holdout'",
            "shallowdeep predict: error: --early-exit applies that result's threshold; leave out --threshold"]
    finally:
        latest.unlink(missing_ok=True)
        shutil.rmtree(run / "early-exit", ignore_errors=True)


def test_a_file_name_that_is_not_utf8_is_written_escaped(grey_run, capsys):
    folder = grey_run / "odd-names"
    folder.mkdir()
    name = os.fsdecode(b"caf\xe9.png")  # Latin-1, not UTF-8
    (folder / name).write_bytes((grey_run / "data" / "test" / "dark" / "0.png").read_bytes())
    for output in ("odd.csv", "odd.json"):
        assert main(["predict", str(grey_run / "run"), str(folder), "--output", str(grey_run / output)]) == 0
        text = (grey_run / output).read_text(encoding="utf-8")
        rows = json.loads(text) if output.endswith(".json") else list(csv.DictReader(io.StringIO(text)))
        assert rows[0]["path"] == str(folder / "caf\\xe9.png") and text.endswith("\n")
    assert main(["predict", str(grey_run / "run"), str(folder)]) == 0
    assert "caf\\xe9.png" in capsys.readouterr().out
