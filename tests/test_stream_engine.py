"""The streaming engine: the same answers as the per-batch engine, every stage run on full batches."""

from __future__ import annotations

import pytest
import torch

from shallowdeep.errors import UserError
from shallowdeep.exits import POLICIES, early_exit, early_exit_stream, make_policy

from test_engine_paths import sharpened, spread_policy

pytestmark = pytest.mark.usefixtures("one_thread")


def uneven_chunks(x: torch.Tensor, sizes=(7, 3, 11, 5, 9)) -> list[torch.Tensor]:
    """``x`` cut into batches of uneven sizes (repeating ``sizes``)."""
    chunks, start, i = [], 0, 0
    while start < len(x):
        chunks.append(x[start:start + sizes[i % len(sizes)]])
        start, i = start + sizes[i % len(sizes)], i + 1
    return chunks


@pytest.mark.parametrize("design", ("paper", "ztw"))
def test_stream_answers_as_the_per_batch_engine_for_every_policy(design):
    net = sharpened(design, 3)
    x = torch.randn(60, 3, 32, 32)
    per_exit, _ = spread_policy(net, x)
    policies = [per_exit, make_policy("maxprob", min(per_exit.threshold)), make_policy("entropy", 0.5),
                make_policy("patience", 2)]
    assert {p.name for p in policies} >= set(POLICIES)
    for policy in policies:
        expected = early_exit(net, x, policy=policy)
        for batch_size in (None, 8):
            got = early_exit_stream(net, uneven_chunks(x), policy=policy, batch_size=batch_size)
            for e, g in zip(expected, got):
                assert g.tolist() == e.tolist(), (policy, batch_size)
    assert len(set(expected[1].tolist())) > 2


def test_every_stage_runs_on_full_batches_until_the_stream_ends():
    net = sharpened("paper", 4).to(memory_format=torch.channels_last)
    x = torch.randn(90, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    policy, _ = spread_policy(net, x)
    seen: list[list[int]] = [[] for _ in net.segments]
    layouts = []

    def record(stage):
        def hook(_, args):
            seen[stage].append(args[0].shape[0])
            layouts.append(args[0].is_contiguous(memory_format=torch.channels_last))
        return hook

    hooks = [s.register_forward_pre_hook(record(i)) for i, s in enumerate(net.segments)]
    _, exits, flops = early_exit_stream(net, x.split(10), policy=policy)
    for h in hooks:
        h.remove()
    for stage, sizes in enumerate(seen):
        reached = int((exits >= stage).sum())
        assert sum(sizes) == reached  # every sample that reached the stage ran it once
        assert all(s == 10 for s in sizes[:-1]) and (not sizes or 0 < sizes[-1] <= 10)  # full batches, then the rest
    assert all(layouts[1:])  # channels-last maps stay channels-last through drops and concatenation
    assert flops.tolist() == [net.exit_flops[e] for e in exits.tolist()]


def test_stream_rejects_bad_requests():
    net = sharpened("paper", 5)
    x = torch.randn(4, 3, 32, 32)
    with pytest.raises(UserError, match="no samples"):
        early_exit_stream(net, [], threshold=0.5)
    with pytest.raises(UserError, match="at least 1"):
        early_exit_stream(net, [x], threshold=0.5, batch_size=0)
    with pytest.raises(UserError, match="eval mode"):
        early_exit_stream(net.train(), [x], threshold=0.5)
