"""The engine's fast paths: channels-last feature maps stay channels-last through the drops and decide as
the simulation does, for every IC design; the heads' forward equals their definition bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from shallowdeep.surgery import attach
from shallowdeep.exit_outputs import ExitOutputs
from shallowdeep.exits import MaxProb, PerExitMaxProb, early_exit, simulate
from shallowdeep.heads import ConvHead, InternalClassifier

from conftest import load_example

pytestmark = pytest.mark.usefixtures("one_thread")
CHANNELS_LAST = torch.channels_last


def sharpened(design: str, seed: int):
    """A ResNet-20 SDN in eval mode whose heads are sharp enough to send samples to several exits."""
    torch.manual_seed(seed)
    net = attach(load_example().resnet20(), (3, 32, 32), 10, ic=design).eval()
    with torch.no_grad():
        for head in net.ics:
            head.linear.weight.mul_(40)
    return net


def spread_policy(net, x: torch.Tensor) -> tuple[PerExitMaxProb, ExitOutputs]:
    """Per-IC thresholds midway between two observed scores, sending about a fifth of the running samples out
    at each IC (midway: a threshold that does not hinge on the last bit of any score)."""
    with torch.no_grad():
        logits = torch.stack(net.exit_logits(x)).numpy()
    outputs = ExitOutputs(logits, np.zeros(len(x), np.int64), np.asarray(net.exit_flops, np.int64), net.backbone_flops)
    running, thresholds = torch.ones(len(x), dtype=torch.bool), []
    for score in MaxProb.scores(torch.from_numpy(logits[:-1])):
        observed = score[running].unique()
        j = int(0.8 * (len(observed) - 1))
        q = float((observed[j] + observed[j + 1]) / 2) if len(observed) > 1 else 2.0
        thresholds.append(q)
        running &= score < q
    return PerExitMaxProb(tuple(thresholds)), outputs


@pytest.mark.slow
@pytest.mark.parametrize("design", ("paper", "conv", "ztw"))
def test_channels_last_engine_stays_channels_last_and_equals_the_simulation(design):
    net = sharpened(design, 5).to(memory_format=CHANNELS_LAST)
    x = torch.randn(40, 3, 32, 32).contiguous(memory_format=CHANNELS_LAST)
    policy, outputs = spread_policy(net, x)
    formats = []
    hooks = [s.register_forward_pre_hook(lambda _, a: formats.append(a[0].is_contiguous(memory_format=CHANNELS_LAST)))
             for s in net.segments[1:]]
    predictions, exits, flops = early_exit(net, x, policy=policy)
    for h in hooks:
        h.remove()
    simulated = simulate(outputs, policy)
    assert exits.tolist() == simulated.exits.tolist() and predictions.tolist() == simulated.predictions.tolist()
    assert flops.tolist() == [net.exit_flops[e] for e in exits.tolist()]
    assert len(set(exits.tolist())) >= 4  # samples were dropped at several stages
    assert formats and all(formats)


def test_one_sample_and_everybody_leaving_answer_without_bookkeeping():
    net = sharpened("ztw", 6)
    x = torch.randn(6, 3, 32, 32)
    with torch.no_grad():
        answers = net.exit_logits(x)
    for i in range(len(x)):
        for threshold, stop in ((0.0, 0), (1.5, 6)):  # everybody leaves at the first IC / nobody leaves early
            predictions, exits, flops = early_exit(net, x[i:i + 1], threshold=threshold)
            assert exits.tolist() == [stop] and flops.tolist() == [net.exit_flops[stop]]
            assert predictions.tolist() == answers[stop][i:i + 1].argmax(1).tolist()


def test_heads_equal_their_definition_bit_for_bit():
    torch.manual_seed(7)
    x = torch.randn(3, 16, 32, 32)
    paper = InternalClassifier(16, 32, 32, 10).eval()
    with torch.no_grad():
        mixed = paper.alpha * F.max_pool2d(x, 8) + (1 - paper.alpha) * F.avg_pool2d(x, 8)
        by_hand = paper.linear(torch.lerp(F.avg_pool2d(x, 8), F.max_pool2d(x, 8), paper.alpha).flatten(1))
        assert torch.equal(paper(x), by_hand)
        assert torch.allclose(paper(x), paper.linear(mixed.flatten(1)), atol=1e-5)
    conv = ConvHead(16, 32, 32, 10, conv_width=8, cascade_classes=10).eval()
    prev = torch.randn(3, 10)
    with torch.no_grad():
        for m in conv.body:
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(), m.running_var.uniform_(0.5, 2)
        pooled = torch.lerp(F.avg_pool2d(x, 4), F.max_pool2d(x, 4), conv.alpha)
        features = torch.cat([conv.body(pooled).flatten(1), torch.softmax(prev, 1)], 1)
        assert torch.equal(conv(x, prev), conv.linear(features))
