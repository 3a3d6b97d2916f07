"""Short runs: the short schedule is chosen for few epochs (or named), its learning rate is set batch by batch,
the paper's milestones never collapse, and a run on the short schedule resumes to the same weights."""

from __future__ import annotations

import re
import warnings

import pytest
import torch

from conftest import sigterm_in, write_tiny_cnn
from shallowdeep.choices import PAPER_RECIPES
from shallowdeep.errors import UserError
from shallowdeep.model_spec import ModelSpec
from shallowdeep.run import open_run
from shallowdeep.train import Interrupted, TrainConfig, config_from_dict, new_run, resume_run
from shallowdeep.train.recipe import describe_recipe, resolve_recipe

DATA = {"name": "digits", "data_dir": None, "holdout_fraction": 0.1, "seed": 0, "limit": 96}
CPU = torch.device("cpu")

pytestmark = pytest.mark.usefixtures("one_thread")


def test_few_epochs_take_the_short_schedule_unless_the_paper_is_named_or_milestones_given():
    short = resolve_recipe("cnn", 1e-4, {"epochs": 4})
    assert (short.schedule, short.milestones, short.nesterov, short.label_smoothing) == ("short", [], True, 0.2)
    assert (short.lr, short.batch_size, short.weight_decay) == (0.1, 16, 5e-4)
    assert "4 epochs are well below the paper's 100; --schedule paper keeps the paper's" == short.note
    assert "short schedule: lr up over the first 20 % of the batches, then down to 0" in describe_recipe(short)
    assert resolve_recipe("cnn", 1e-4, {"epochs": 30}).schedule == "paper"
    assert resolve_recipe("cnn", 1e-4, {"epochs": 4, "milestones": [3]}).milestones == [3]
    assert resolve_recipe("ic-only", 1e-4, {"epochs": 4}).optimizer == "adam"
    assert resolve_recipe("cnn", 1e-4, {"schedule": "short"}).epochs == 100
    with pytest.raises(UserError, match="the short schedule has none"):
        resolve_recipe("cnn", 1e-4, {"schedule": "short", "milestones": [2]})
    with pytest.raises(UserError, match=re.escape("milestones [3, 3] is out of range: it must be distinct")):
        resolve_recipe("cnn", 1e-4, {"epochs": 5, "milestones": [3, 3]})


def test_the_short_batch_is_the_largest_that_still_gives_the_run_enough_steps():
    # hand counts against 4,000 steps: 6,000 images x 4 epochs is 1,500 steps even at batch 16, the most steps
    small = resolve_recipe("cnn", 1e-4, {"epochs": 4}, train_images=6000)
    assert small.batch_size == 16 and "batch 16: none of 16, 32, 64, 128 gives 4,000 steps" in small.note
    # 45,000 x 10: 7,040 steps at batch 64, 3,520 at 128
    cifar = resolve_recipe("sdn", 1e-4, {"epochs": 10}, train_images=45000)
    assert cifar.batch_size == 64 and "batch 64: the largest of 16, 32, 64, 128 giving 4,000 steps" in cifar.note
    assert resolve_recipe("cnn", 1e-4, {"epochs": 12}, train_images=45000).batch_size == 128  # 4,224 steps
    assert resolve_recipe("cnn", 1e-4, {"epochs": 10, "batch_size": 32}, train_images=45000).batch_size == 32
    assert resolve_recipe("cnn", 1e-4, {"epochs": 10, "schedule": "paper"}, train_images=45000).batch_size == 128
    assert resolve_recipe("ic-only", 1e-4, {"epochs": 4}, train_images=45000).batch_size == 128
    assert resolve_recipe("cnn", 1e-4, {"epochs": 10}).batch_size == 16  # the data's size unknown


def test_the_short_schedule_warms_up_then_decays_to_zero_batch_by_batch():
    r = resolve_recipe("sdn", 1e-4, {"epochs": 2})
    rates = [r.lr_at(epoch, step, 5) / r.lr for epoch in range(2) for step in range(5)]
    assert rates == pytest.approx([0.5, 1, 1, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125])
    assert max(rates) == 1 and min(rates) > 0


@pytest.mark.parametrize("mode", sorted(PAPER_RECIPES))
def test_the_paper_milestones_never_collapse_or_repeat_for_any_number_of_epochs(mode):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for epochs in range(1, 3 * PAPER_RECIPES[mode]["epochs"]):
            m = resolve_recipe(mode, 1e-4, {"epochs": epochs, "schedule": "paper"}).milestones
            assert m == sorted(set(m)) and all(1 <= e < epochs for e in m), (epochs, m)
        squeezed = resolve_recipe("cnn", 1e-4, {"epochs": 2, "schedule": "paper"})
    assert squeezed.milestones == [1] and "do not fit apart into 2 epochs: lr x0.1 at epoch 1" in squeezed.note
    assert any("do not fit apart" in str(w.message) for w in caught)


def test_a_short_run_says_why_and_resumes_to_the_same_weights(tmp_path):
    model = ModelSpec(factory=write_tiny_cnn(tmp_path), exits=("2", "5"))
    cfg = TrainConfig("sdn", seed=1)
    changes = {"epochs": 2, "batch_size": 32}
    seen = []
    new_run(tmp_path / "whole", DATA, model, cfg, recipe_changes=changes, device=CPU,
            on_start=seen.append)
    assert "schedule: short (2 epochs are well below the paper's 100; --schedule paper keeps the paper's)" in seen[0]
    sized = []
    new_run(tmp_path / "sized", DATA, model, cfg, recipe_changes={"epochs": 1}, device=CPU, on_start=sized.append)
    why = r"schedule: short \(.*; batch 16: none of 16, 32, 64, 128 gives 4,000 steps over 1 epoch of \d+ images"
    assert re.search(why, "\n".join(sized[0]))

    with pytest.raises(Interrupted):
        new_run(tmp_path / "cut", DATA, model, cfg, recipe_changes=changes, device=CPU, progress=sigterm_in(2))
    resume_run(tmp_path / "cut", device=CPU)
    whole, cut = (open_run(tmp_path / name).load_checkpoint()["model"] for name in ("whole", "cut"))
    assert all(torch.equal(whole[k], cut[k]) for k in whole)
    recipe = open_run(tmp_path / "cut").config["train"]["recipe"]
    assert (recipe["schedule"], recipe["warmup"], recipe["label_smoothing"]) == ("short", 0.2, 0.2)
    rates = [row["lr"] for row in open_run(tmp_path / "cut").read_metrics()]
    assert rates[1] < rates[0] < recipe["lr"]


def test_a_run_recorded_before_schedules_keeps_the_paper_schedule():
    old = {"mode": "cnn", "recipe": {"optimizer": "sgd", "lr": 0.1, "epochs": 4, "milestones": [1, 2, 3]}}
    recipe = config_from_dict(old).recipe
    assert (recipe.schedule, recipe.label_smoothing, recipe.nesterov) == ("paper", 0.0, False)
    assert recipe.lr_at(2, 7, 10) == pytest.approx(0.001)


def test_the_command_line_names_the_options_behind_a_recipe_refusal(tmp_path, capsys):
    from shallowdeep.cli import main

    code = main(["train", "--arch", "resnet56", "--dataset", "digits", "--schedule", "short", "--milestones", "2",
                 "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].endswith("the short schedule has none (--milestones, --schedule)")
    assert not (tmp_path / "run").exists()
    # refused before the data is read: a missing folder would be reported otherwise
    code = main(["train", "--arch", "resnet56", "--dataset", "imagefolder", "--data-dir", str(tmp_path / "none"),
                 "--schedule", "short", "--milestones", "2", "--out", str(tmp_path / "run")])
    assert code == 2 and "the short schedule has none" in capsys.readouterr().err
