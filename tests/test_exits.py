"""Early exit: policies against their definitions written out by hand, the batched engine against
one-sample-at-a-time evaluation and against the simulation on stored logits, the exact sweep and the
calibration against brute force."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from shallowdeep import models
from shallowdeep.surgery import attach
from shallowdeep.errors import UserError
from shallowdeep.exits import (POLICIES, MaxProb, calibrate, candidate_keys, curve, earliest_correct_exit, early_exit,
                               make_policy, oracle, run_backbone, simulate, summarise, sweep)
from shallowdeep.exit_outputs import ExitOutputs

from conftest import load_example

pytestmark = pytest.mark.usefixtures("one_thread")


# --- a CIFAR ResNet as third parties write it: option-A shortcuts (subsample + zero-pad channels) -------------


BasicBlock = load_example().BasicBlock  # the third-party block: subsample + zero-padded channels


class OptionAResNet(nn.Module):
    """A smaller layout of that block than examples/ builds: 8/16/32 channels, two blocks per stage."""

    def __init__(self, blocks=2, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        layers, cin = [], 8
        for cout, stride in ((8, 1), (16, 2), (32, 2)):
            for b in range(blocks):
                layers.append(BasicBlock(cin, cout, stride if b == 0 else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.linear = nn.Linear(32, num_classes)

    def forward(self, x):
        out = self.layers(F.relu(self.bn1(self.conv1(x))))
        out = F.avg_pool2d(out, out.size()[3])
        return self.linear(out.view(out.size(0), -1))


def randomised(net, seed: int = 0):
    """``net`` in eval mode with random batch-norm statistics and sharpened ICs, so that samples spread
    over the exits instead of all looking alike."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
        for ic in net.ics:
            ic.linear.weight.mul_(20)
    return net.eval()


def tiny_sequential(classes: int = 5) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, classes))


def outputs_of(net, x: torch.Tensor, labels: torch.Tensor) -> ExitOutputs:
    with torch.no_grad():
        logits = torch.stack(net(x)).numpy()
    return ExitOutputs(logits, labels.numpy(), np.asarray(net.exit_flops, np.int64), net.backbone_flops)


def spread_threshold(outputs: ExitOutputs, name: str) -> float:
    """A threshold between two observed scores that sends the samples to as many different exits as any."""
    kind = POLICIES[name]
    thresholds = [kind.threshold_of_key(float(k)) for k in candidate_keys(outputs, kind)]
    return max(thresholds, key=lambda t: len(set(simulate(outputs, kind(t)).exits.tolist())))


# --- the definitions, one sample at a time in plain Python ----------------------------------------------------


def direct_exit(logits: np.ndarray, name: str, threshold: float) -> int:
    """Exit of one sample (logits: exits x classes) by the policy's definition."""
    num_ics, classes = logits.shape[0] - 1, logits.shape[1]
    run, previous = 0, None
    for i in range(num_ics):
        row = [float(v) for v in logits[i]]
        top = max(row)
        probs = [math.exp(v - top) for v in row]
        probs = [p / sum(probs) for p in probs]
        if name == "maxprob" and max(probs) >= threshold:
            return i
        if name == "entropy" and -sum(p * math.log(p) for p in probs if p > 0) / math.log(classes) <= threshold:
            return i
        if name == "patience":
            prediction = row.index(top)
            run = run + 1 if prediction == previous else 1
            previous = prediction
            if run >= threshold:
                return i
    return num_ics


def random_outputs(seed: int, exits: int = 5, samples: int = 300, classes: int = 4) -> ExitOutputs:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, samples)
    logits = rng.normal(size=(exits, samples, classes)) * rng.uniform(0.5, 4, size=(exits, samples, 1))
    logits[np.arange(exits)[:, None], np.arange(samples), labels] += np.linspace(0.2, 2, exits)[:, None]
    flops = np.cumsum(rng.integers(10, 100, exits)).astype(np.int64)
    return ExitOutputs(logits.astype(np.float32), labels.astype(np.int64), flops, int(flops[-1]) - 7)


@pytest.mark.parametrize("name,thresholds", [("maxprob", [0.3, 0.55, 0.8]), ("entropy", [0.2, 0.5, 0.9]),
                                             ("patience", [1, 2, 3, 5])])
def test_simulation_follows_each_policys_definition(name, thresholds):
    outputs = random_outputs(1)
    for threshold in thresholds:
        outcome = simulate(outputs, make_policy(name, threshold))
        expected = [direct_exit(outputs.logits[:, n], name, threshold) for n in range(outputs.labels.size)]
        assert outcome.exits.tolist() == expected
        assert len(set(expected)) > 1 or name == "patience" and threshold in (1, 5)
        n = np.arange(outputs.labels.size)
        assert (outcome.predictions == outputs.logits[outcome.exits, n].argmax(-1)).all()
        assert (outcome.flops == outputs.exit_flops[outcome.exits]).all()


def test_patience_one_leaves_at_the_first_ic_and_beyond_the_ics_never_early():
    outputs = random_outputs(2)
    assert (simulate(outputs, make_policy("patience", 1)).exits == 0).all()
    assert (simulate(outputs, make_policy("patience", 5)).exits == 4).all()


@pytest.mark.parametrize("name", list(POLICIES))
def test_sweep_equals_simulating_every_threshold(name):
    outputs = random_outputs(3)
    kind = POLICIES[name]
    keys = candidate_keys(outputs, kind)
    exact = np.unique(kind.scores(torch.from_numpy(outputs.logits[:-1])).numpy())[::10].astype(np.float64)
    keys = np.concatenate([keys[::max(1, len(keys) // 60)], exact])  # and keys equal to observed scores
    accuracy, flops = sweep(outputs, kind, keys)
    for key, acc, cost in zip(keys, accuracy, flops):
        summary = summarise(outputs, simulate(outputs, kind(kind.threshold_of_key(float(key)))))
        assert acc == pytest.approx(summary.accuracy, abs=1e-12)
        assert cost == pytest.approx(summary.average_flops, rel=1e-12)
    accuracy, flops = sweep(outputs, kind, candidate_keys(outputs, kind)[[0, -1]])
    assert accuracy[0] == pytest.approx(outputs.correct[0].mean())  # lowest key: everyone leaves at the first IC
    assert flops[1] == pytest.approx(outputs.exit_flops[-1])  # above every score: nobody leaves early


def test_curve_on_an_even_grid_of_q_follows_the_engines_float32_rule():
    outputs = random_outputs(6)
    outputs.logits[:-1, :5] *= 200  # a few ICs so sure that their float32 confidence is exactly 1
    q = np.linspace(0, 1, 11)
    swept = curve(outputs, MaxProb, q)
    confidence = MaxProb.scores(torch.from_numpy(outputs.logits[:-1])).numpy()
    assert (confidence == 1).any()
    n, num_ics = outputs.labels.size, len(outputs.exit_flops) - 1
    for i, threshold in enumerate(q):
        exits = [next((e for e in range(num_ics) if confidence[e, s] >= np.float32(threshold)), num_ics)
                 for s in range(n)]
        right = sum(outputs.correct[e, s] for s, e in enumerate(exits))
        assert swept.accuracy[i] == pytest.approx(right / n, abs=1e-12)
        assert swept.flops_fraction[i] == pytest.approx(outputs.exit_flops[exits].mean() / outputs.backbone_flops)
    assert swept.thresholds.tolist() == q.tolist()
    assert swept.flops_fraction[0] == pytest.approx(outputs.exit_flops[0] / outputs.backbone_flops)  # q = 0
    assert swept.flops_fraction[-1] < outputs.exit_flops[-1] / outputs.backbone_flops  # q = 1: the sure ones leave


def test_summary_counts_exit_shares_and_cost():
    outputs = random_outputs(4)
    outcome = simulate(outputs, make_policy("maxprob", 0.6))
    summary = summarise(outputs, outcome)
    n = outputs.labels.size
    assert summary.exit_shares == [float((outcome.exits == e).sum() / n) for e in range(5)]
    assert summary.average_flops == pytest.approx(sum(outputs.exit_flops[e] for e in outcome.exits) / n)
    assert summary.flops_fraction == pytest.approx(summary.average_flops / outputs.backbone_flops)


def test_oracle_leaves_at_the_earliest_correct_exit_and_pays_full_cost_otherwise():
    outputs = random_outputs(5)
    correct, flops = outputs.correct, outputs.exit_flops
    right, cost, firsts = 0, 0, []
    for n in range(outputs.labels.size):
        first = next((e for e in range(correct.shape[0]) if correct[e, n]), None)
        firsts.append(-1 if first is None else first)
        right += first is not None
        cost += flops[first] if first is not None else flops[-1]
    assert earliest_correct_exit(correct).tolist() == firsts
    assert -1 in firsts and len(set(firsts)) > 2
    summary = oracle(outputs)
    assert summary.accuracy == pytest.approx(right / outputs.labels.size)
    assert summary.average_flops == pytest.approx(cost / outputs.labels.size)
    assert summary.flops_fraction == pytest.approx(cost / outputs.labels.size / outputs.backbone_flops)


@pytest.mark.parametrize("name", list(POLICIES))
def test_calibration_meets_the_accuracy_drop_at_the_lowest_cost(name):
    outputs = random_outputs(6)
    final = outputs.correct[-1].mean()
    policy = calibrate(outputs, name, max_drop=0.02)
    chosen = summarise(outputs, simulate(outputs, policy))
    assert final - chosen.accuracy <= 0.02 + 1e-12
    # brute force over thresholds placed between and beyond all observed scores
    for threshold in brute_thresholds(outputs, name):
        s = summarise(outputs, simulate(outputs, make_policy(name, threshold)))
        if final - s.accuracy <= 0.02 + 1e-12:
            assert s.average_flops >= chosen.average_flops - 1e-9


@pytest.mark.parametrize("name", list(POLICIES))
def test_calibration_under_a_budget_is_the_most_accurate(name):
    outputs = random_outputs(7)
    budget = 0.6
    policy = calibrate(outputs, name, budget=budget)
    chosen = summarise(outputs, simulate(outputs, policy))
    assert chosen.average_flops <= budget * outputs.backbone_flops
    for threshold in brute_thresholds(outputs, name):
        s = summarise(outputs, simulate(outputs, make_policy(name, threshold)))
        if s.average_flops <= budget * outputs.backbone_flops:
            assert s.accuracy <= chosen.accuracy + 1e-12


def brute_thresholds(outputs: ExitOutputs, name: str) -> list[float]:
    if name == "patience":
        return [1, 2, 3, 4, 5, 6]
    probs = torch.softmax(torch.from_numpy(outputs.logits[:-1]).double(), -1)
    if name == "maxprob":
        values = np.unique(probs.amax(-1).numpy())
    else:
        values = -np.unique((-(probs * probs.log()).sum(-1) / math.log(outputs.logits.shape[-1])).numpy())
    return [*np.sort(values)[::20].tolist(), -0.5, 1.5]


def test_calibration_errors_are_one_line_user_errors():
    outputs = random_outputs(8)
    with pytest.raises(UserError, match="budget"):
        calibrate(outputs, budget=1e-6)
    with pytest.raises(UserError, match="policy"):
        calibrate(outputs, "nonsense")
    with pytest.raises(UserError, match="either"):
        calibrate(outputs, max_drop=0.01, budget=0.5)


# --- the engine ----------------------------------------------------------------------------------------------


def backbone(name: str) -> tuple[nn.Module, int]:
    """A backbone and its input size: a third-party-style ResNet, a plain Sequential, or a built-in one."""
    if name == "option-A resnet":
        return OptionAResNet(), 16
    if name == "sequential":
        return tiny_sequential(10), 8
    return models.create(name, 10, 16), 16


@pytest.mark.slow
@pytest.mark.parametrize("backbone_name",
                         ["option-A resnet", "sequential", "resnet56", "vgg16_bn", "mobilenet", "wrn32_4"])
def test_engine_equals_one_sample_at_a_time_and_the_simulation(backbone_name):
    torch.manual_seed(0)
    model, size = backbone(backbone_name)
    net = randomised(attach(model, (3, size, size), 10))
    x = torch.randn(24, 3, size, size)
    outputs = outputs_of(net, x, torch.zeros(24, dtype=torch.long))
    for policy in (make_policy(name, spread_threshold(outputs, name)) for name in POLICIES):
        predictions, exits, flops = early_exit(net, x, policy=policy)
        alone = [early_exit(net, x[i:i + 1], policy=policy) for i in range(len(x))]
        assert predictions.tolist() == [int(p) for p, _, _ in alone]
        assert exits.tolist() == [int(e) for _, e, _ in alone]
        assert flops.tolist() == [net.exit_flops[e] for e in exits.tolist()]
        simulated = simulate(outputs, policy)
        assert exits.tolist() == simulated.exits.tolist()
        assert predictions.tolist() == simulated.predictions.tolist()
        if policy.name != "patience" or backbone_name in ("option-A resnet", "sequential"):  # random ICs rarely agree
            assert len(set(exits.tolist())) > 1, f"{policy}: every sample left at one exit; the test would prove little"


def test_engine_really_stops_computing_samples_that_left():
    torch.manual_seed(1)
    net = randomised(attach(OptionAResNet(), (3, 16, 16), 10))
    x = torch.randn(40, 3, 16, 16)
    seen = []
    hooks = [seg.register_forward_pre_hook(lambda _, args: seen.append(args[0].shape[0])) for seg in net.segments]
    threshold = spread_threshold(outputs_of(net, x, torch.zeros(40, dtype=torch.long)), "maxprob")
    seen.clear()
    _, exits, _ = early_exit(net, x, threshold=threshold)
    for h in hooks:
        h.remove()
    expected = [int((exits >= i).sum()) for i in range(net.num_exits)]
    expected = [n for n in expected if n > 0]
    assert seen == expected and seen[-1] < 40


def test_engine_extremes_and_a_network_without_ics():
    torch.manual_seed(2)
    net = randomised(attach(tiny_sequential(), (3, 8, 8), 5))
    x = torch.randn(10, 3, 8, 8)
    final = run_backbone(net, x).argmax(1)
    predictions, exits, flops = early_exit(net, x, threshold=1.01)  # above every probability: nobody leaves early
    assert predictions.tolist() == final.tolist() and (exits == len(net.ics)).all()
    assert (flops == net.exit_flops[-1]).all()
    predictions, exits, _ = early_exit(net, x, threshold=0.0)  # everybody leaves at the first IC
    with torch.no_grad():
        assert predictions.tolist() == net(x)[0].argmax(1).tolist() and (exits == 0).all()
    plain = attach(tiny_sequential(), (3, 8, 8), 5, exits=[]).eval()
    predictions, exits, flops = early_exit(plain, x, threshold=0.5)
    assert predictions.tolist() == run_backbone(plain, x).argmax(1).tolist()
    assert (exits == 0).all() and (flops == plain.exit_flops[0]).all()
    empty = early_exit(net, x[:0], threshold=0.5)
    assert [t.shape[0] for t in empty] == [0, 0, 0]


def test_engine_rejects_bad_requests():
    net = attach(tiny_sequential(), (3, 8, 8), 5)
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(UserError, match="eval mode"):
        early_exit(net.train(), x, threshold=0.5)
    net.eval()
    with pytest.raises(UserError, match="threshold"):
        early_exit(net, x)
    with pytest.raises(UserError, match="unknown exit policy"):
        early_exit(net, x, threshold=0.5, policy="bogus")
    with pytest.raises(UserError, match="not both"):
        early_exit(net, x, threshold=0.5, policy=make_policy("entropy", 0.3))
    with pytest.raises(UserError, match="whole number"):
        make_policy("patience", 1.5)
    with pytest.raises(UserError, match="number"):
        make_policy("maxprob", float("nan"))


@pytest.mark.parametrize("policy, threshold", [("maxprob", 0.5), ("maxprob", float("inf")), ("entropy", 0.9),
                                               ("patience", 2)])
def test_nan_inputs_never_leave_early_in_the_engine_or_the_simulation(policy, threshold):
    torch.manual_seed(0)
    net = attach(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                                     torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(),
                                     torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.Flatten(),
                                     torch.nn.Linear(8 * 8 * 8, 4)), (3, 8, 8), 4, fractions=(0.3, 0.6)).eval()
    x = torch.randn(6, 3, 8, 8)
    x[2] = float("nan")
    _, exits, _ = early_exit(net, x, threshold=threshold, policy=policy)
    assert exits[2] == len(net.ics)
    with torch.no_grad():
        logits = np.stack([z.numpy() for z in net.exit_logits(x)])
    outputs = ExitOutputs(logits, np.zeros(6, np.int64), np.asarray(net.exit_flops), net.backbone_flops)
    simulated = simulate(outputs, make_policy(policy, threshold))
    assert simulated.exits[2] == len(net.ics) and np.array_equal(simulated.exits, exits.numpy())
