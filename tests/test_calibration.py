"""Threshold calibration: honest test halves, Learn-then-Test guarantees, per-exit thresholds, budget tables."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from shallowdeep.cli import main
from shallowdeep.errors import UserError
from shallowdeep.exits import (ExitOutputs, MaxProb, PerExitMaxProb, best_at_budgets, calibrate, candidate_keys,
                               drop_p_value, exit_scores, index_hash, make_policy, simulate, split_halves, summarise)
from shallowdeep.outputs import load_outputs
from shallowdeep.run import open_run
from test_analysis import shared_tiny_run

pytestmark = pytest.mark.usefixtures("one_thread")


def random_outputs(seed: int, exits: int = 5, samples: int = 300, classes: int = 4) -> ExitOutputs:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, samples)
    logits = rng.normal(size=(exits, samples, classes)) * rng.uniform(0.5, 4, size=(exits, samples, 1))
    logits[np.arange(exits)[:, None], np.arange(samples), labels] += np.linspace(0.2, 2, exits)[:, None]
    flops = np.array([30, 50, 70, 90, 100][-exits:], np.int64)
    return ExitOutputs(logits.astype(np.float32), labels.astype(np.int64), flops, 93)


def population(n: int = 100_000, seed: int = 0, classes: int = 10) -> ExitOutputs:
    """Three ICs and a final head; each sample has a difficulty, and confidence grows with the margin of being right."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    margin = np.array([1.2, 1.8, 2.3, 2.8])[:, None] - 3 * rng.uniform(size=n) + rng.normal(0, 0.5, (4, n))
    wrong = (labels[None] + rng.integers(1, classes, (4, n))) % classes
    predicted = np.where(margin > 0, labels[None], wrong)
    logits = rng.normal(0, 1, (4, n, classes))
    np.put_along_axis(logits, predicted[..., None], (3 + 5 / (1 + np.exp(-2 * margin)))[..., None], axis=2)
    return ExitOutputs(logits.astype(np.float32), labels, np.array([20, 45, 70, 100]), 100)


def test_exit_outputs_check_their_shapes_and_take_subsets():
    outputs = random_outputs(0)
    with pytest.raises(UserError, match="disagree"):
        ExitOutputs(outputs.logits, outputs.labels[:-1], outputs.exit_flops, 93)
    with pytest.raises(UserError, match="disagree"):
        ExitOutputs(outputs.logits, outputs.labels, outputs.exit_flops[:-1], 93)
    part = outputs.subset(np.array([5, 2, 7]))
    np.testing.assert_array_equal(part.logits, outputs.logits[:, [5, 2, 7]])
    np.testing.assert_array_equal(part.correct, outputs.correct[:, [5, 2, 7]])


def test_halves_are_disjoint_cover_everything_and_follow_the_seed():
    calibration, evaluation = split_halves(1001, seed=4)
    assert calibration.size == 500 and evaluation.size == 501
    assert np.intersect1d(calibration, evaluation).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([calibration, evaluation])), np.arange(1001))
    again, _ = split_halves(1001, seed=4)
    other, _ = split_halves(1001, seed=5)
    assert index_hash(again) == index_hash(calibration) != index_hash(other)
    assert len(index_hash(calibration)) == 64
    with pytest.raises(UserError):
        split_halves(1)


def test_p_value_is_valid_at_the_null_boundary_and_powerful_below_it():
    """Paired losses in {-1, 0, 1} with an expected drop exactly max_drop = 0.01: rejected at most delta of
    the time; with a drop well below it (here -0.01, early exit better), nearly always."""
    rng = np.random.default_rng(0)
    draws, n, delta = 2000, 1000, 0.1
    for down, up in ((0.02, 0.03), (0.2, 0.21), (0.0, 0.01)):
        losses = rng.choice([-1, 0, 1], size=(draws, n), p=[down, 1 - down - up, up])
        rejected = (drop_p_value(losses, 0.01, seed=1) <= delta).mean()
        assert rejected <= delta + 3 * math.sqrt(delta * (1 - delta) / draws)
    losses = rng.choice([-1, 0, 1], size=(200, n), p=[0.03, 0.96, 0.01])
    assert (drop_p_value(losses, 0.01) <= delta).mean() >= 0.95
    assert drop_p_value(np.zeros(n), 0.01) < 0.01  # no disagreement at all is strong evidence
    assert drop_p_value(np.ones(n), 0.01) == 1.0


@pytest.mark.slow
def test_learn_then_test_bounds_the_true_drop_where_plain_calibration_does_not():
    """Calibrate on 200 random samples of 1,000 from a large population; the true drop of the chosen threshold
    (on the whole population) exceeds max_drop in at most 10 % of them with confidence 0.9, and far more often
    without."""
    pop = population(50_000)
    running = np.maximum.accumulate(exit_scores(pop, MaxProb), axis=0)
    final = pop.correct[-1].mean()

    def true_drop(policy) -> float:
        exits = (running < np.float32(policy.key)).sum(axis=0)
        return final - pop.correct[exits, np.arange(exits.size)].mean()

    rng = np.random.default_rng(1)
    violations = {}
    for confidence, draws in ((0.9, 200), (None, 100)):
        drops = [true_drop(calibrate(pop.subset(rng.choice(pop.labels.size, 1000, replace=False)),
                                     max_drop=0.01, confidence=confidence)) for _ in range(draws)]
        violations[confidence] = np.mean(np.array(drops) > 0.01)
    assert violations[0.9] <= 0.1 + 3 * math.sqrt(0.09 / 200)
    assert violations[None] >= 0.3


def test_certified_calibration_errors_and_the_cautious_fallback():
    outputs = random_outputs(1)
    with pytest.raises(UserError, match="budget"):
        calibrate(outputs, budget=0.5, confidence=0.9)
    with pytest.raises(UserError, match="confidence"):
        calibrate(outputs, max_drop=0.01, confidence=1.5)
    with pytest.raises(UserError, match="per-exit"):
        calibrate(outputs, max_drop=0.01, confidence=0.9, per_exit=True)
    # 300 samples cannot certify a drop of at most 0.001: nothing leaves early
    policy = calibrate(outputs, max_drop=0.001, confidence=0.9)
    assert simulate(outputs, policy).exits.min() == outputs.logits.shape[0] - 1


@pytest.mark.slow
def test_thresholds_are_measured_against_a_given_reference():
    outputs = population(20_000, seed=3)
    final = outputs.correct[-1]
    for options in ({}, {"confidence": 0.9}, {"per_exit": True}):
        assert calibrate(outputs, max_drop=0.01, reference=final, **options) == calibrate(outputs, max_drop=0.01,
                                                                                         **options)
    weaker = final & (np.arange(final.size) % 10 != 0)  # a reference about 8 points worse than the final head
    cheaper = calibrate(outputs, max_drop=0.01, reference=weaker)
    outcome = simulate(outputs, cheaper)
    assert (outcome.predictions == outputs.labels).mean() >= weaker.mean() - 0.01 - 1e-9
    assert outcome.flops.mean() < simulate(outputs, calibrate(outputs, max_drop=0.01)).flops.mean()
    with pytest.raises(UserError, match="boolean array"):
        calibrate(outputs, reference=np.ones(5, bool))


def test_certified_candidates_do_not_depend_on_the_data():
    from shallowdeep.exits.ltt import fixed_keys

    keys = fixed_keys(MaxProb, 6)
    assert np.all(np.diff(keys) > 0) and keys[0] == 0 and keys[-1] > 1 and 250 <= keys.size <= 310
    a, b = random_outputs(1), random_outputs(2)
    assert calibrate(a, max_drop=0.2, confidence=0.9).threshold in set(keys.astype(np.float32).tolist())
    assert calibrate(b, max_drop=0.2, confidence=0.9).threshold in set(keys.astype(np.float32).tolist())


def brute_per_exit(outputs: ExitOutputs, thresholds: tuple[float, ...]) -> tuple[list[int], list[int]]:
    exits, predictions = [], []
    for s in range(outputs.labels.size):
        for i, q in enumerate([*thresholds, None]):
            logits = torch.from_numpy(outputs.logits[i, s])
            if q is None or torch.softmax(logits, 0).max().item() >= np.float32(q):
                exits.append(i)
                predictions.append(int(logits.argmax()))
                break
    return exits, predictions


def test_per_exit_policy_simulates_as_a_per_sample_loop_and_steps_per_index():
    outputs = random_outputs(2)
    thresholds = (0.9, 0.5, 0.7, 0.6)
    policy = PerExitMaxProb(thresholds)
    outcome = simulate(outputs, policy)
    exits, predictions = brute_per_exit(outputs, thresholds)
    np.testing.assert_array_equal(outcome.exits, exits)
    np.testing.assert_array_equal(outcome.predictions, predictions)
    np.testing.assert_array_equal(outcome.flops, outputs.exit_flops[exits])
    for index in range(4):
        go_on, _ = policy.step(torch.from_numpy(outputs.logits[index]), (), index)
        expected = torch.softmax(torch.from_numpy(outputs.logits[index]), 1).amax(1) < np.float32(thresholds[index])
        assert torch.equal(go_on, expected)
    with pytest.raises(UserError, match="4 ICs"):
        simulate(outputs, PerExitMaxProb((0.5, 0.5)))
    with pytest.raises(UserError):
        PerExitMaxProb((0.5, float("nan")))


def test_per_exit_calibration_keeps_the_drop_and_costs_no_more_than_one_threshold():
    for seed in range(3):
        outputs = random_outputs(seed, samples=600)
        final = outputs.correct[-1].mean()
        single = summarise(outputs, simulate(outputs, calibrate(outputs, max_drop=0.03)))
        policy = calibrate(outputs, max_drop=0.03, per_exit=True)
        per_exit = summarise(outputs, simulate(outputs, policy))
        assert isinstance(policy, PerExitMaxProb) and len(policy.threshold) == 4
        assert final - per_exit.accuracy <= 0.03 + 1e-12
        assert per_exit.average_flops <= single.average_flops
    with pytest.raises(UserError, match="maxprob"):
        calibrate(outputs, "entropy", per_exit=True)


@pytest.mark.parametrize("name", ["maxprob", "entropy", "patience"])
def test_best_at_budget_equals_a_brute_force_over_thresholds(name):
    outputs = random_outputs(3)
    kind = type(make_policy(name, 1))
    table = best_at_budgets(outputs, kind, (0.3, 0.5, 0.75, 1.0))
    assert table[0]["accuracy"] is None and "cheapest" in table[0]["reason"]  # the first IC costs 30/93
    for entry in table[1:]:
        best = None
        for key in candidate_keys(outputs, kind):
            s = summarise(outputs, simulate(outputs, kind(kind.threshold_of_key(float(key)))))
            if s.flops_fraction <= entry["budget"] and (best is None or s.accuracy > best.accuracy or (
                    s.accuracy == best.accuracy and s.flops_fraction < best.flops_fraction)):
                best = s
        assert entry["accuracy"] == pytest.approx(best.accuracy)
        assert entry["flops_fraction"] == pytest.approx(best.flops_fraction)
        chosen = summarise(outputs, simulate(outputs, make_policy(name, entry["threshold"])))
        assert chosen.accuracy == pytest.approx(best.accuracy)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A private copy of the session's tiny run: these tests write early-exit.json, which other modules
    expect to be absent."""
    copy = tmp_path_factory.mktemp("calibration") / "run"
    shutil.copytree(shared_tiny_run(tmp_path_factory), copy)
    return copy


def early_exit_json(run: Path, *options: str) -> dict:
    assert main(["early-exit", str(run), "--device", "cpu", *options]) == 0
    return json.loads((run / "early-exit.json").read_text())


@pytest.mark.slow
def test_command_calibrates_on_one_test_half_and_reports_the_other(tiny_run, capsys):
    result = early_exit_json(tiny_run, "--calibrate-on", "test-half", "--split-seed", "3", "--max-drop", "0.05")
    test = load_outputs(open_run(tiny_run), "test")
    calibration, evaluation = split_halves(test.labels.size, 3)
    recorded = result["calibrated_on"]
    assert recorded["source"] == "test-half" and recorded["seed"] == 3 and recorded["split"] == "test"
    assert recorded["samples"] == calibration.size and recorded["evaluation_samples"] == evaluation.size
    assert recorded["calibration_indices_sha256"] == index_hash(calibration)
    assert "other half" in recorded["note"]
    policy = calibrate(test.subset(calibration), max_drop=0.05)
    assert result["threshold"] == policy.threshold
    half = test.subset(evaluation)
    assert result["test"]["samples"] == evaluation.size
    assert result["test"]["early_exit"] == summarise(half, simulate(half, policy)).as_dict()
    assert result["test"]["best_at_budget"] == best_at_budgets(half, MaxProb)
    assert [e["budget"] for e in result["calibration"]["best_at_budget"]] == [0.25, 0.5, 0.75, 1.0]
    out = capsys.readouterr().out
    assert "other half" in out and "seed 3" in out and "50 %" in out

    other = early_exit_json(tiny_run, "--calibrate-on", "test-half", "--max-drop", "0.05")["calibrated_on"]
    assert other["seed"] == 0 and other["calibration_indices_sha256"] != recorded["calibration_indices_sha256"]


@pytest.mark.slow
def test_command_certifies_and_fits_per_exit_thresholds(tiny_run, capsys):
    result = early_exit_json(tiny_run, "--calibrate-on", "test-half", "--max-drop", "0.05", "--confidence", "0.9")
    criterion = result["criterion"]
    assert criterion["max_drop"] == 0.05 and criterion["confidence"] == 0.9
    assert "learn-then-test" in criterion["method"] and 0 <= criterion["p_value"] <= 1
    assert criterion["certified"] == (criterion["p_value"] <= 0.1)
    result = early_exit_json(tiny_run, "--max-drop", "0.05", "--per-exit")
    assert result["policy"] == "maxprob-per-exit" and len(result["threshold"]) == 3 and result["criterion"]["per_exit"]
    assert main(["early-exit", str(tiny_run), "--budget", "0.5", "--confidence", "0.9", "--device", "cpu"]) == 2
    assert main(["early-exit", str(tiny_run), "--calibrate-on", "test-half", "--calibration-split", "train",
                 "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "test half" in err and "--calibrate-on" in err


@pytest.mark.slow
def test_report_shows_the_budget_table(tiny_run):
    early_exit_json(tiny_run, "--calibrate-on", "test-half", "--max-drop", "0.05")
    assert main(["report", str(tiny_run), "--device", "cpu", "--gradcam", "0", "--examples", "0"]) == 0
    page = (tiny_run / "report" / "index.html").read_text()
    assert "Best accuracy within a share of the backbone" in page and "figure is on the other half (seed 0)" in page
