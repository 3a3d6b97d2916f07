"""The small helpers every layer shares: exit names, the first line of an error, JSON with a one-line error,
eval mode for a while."""

from __future__ import annotations

import pytest
from torch import nn

from shallowdeep.errors import UserError, first_line
from shallowdeep.exit_outputs import exit_names
from shallowdeep.io import atomic_write_json, read_json
from shallowdeep.eval_mode import eval_mode


def test_exit_names_use_the_layers_when_they_name_every_ic():
    assert exit_names(3) == ["IC 1", "IC 2", "final"]
    assert exit_names(3, ["layer1.0", "layer2.0"]) == ["layer1.0", "layer2.0", "final"]
    assert exit_names(3, ["layer1.0"]) == ["IC 1", "IC 2", "final"]  # not one name per IC
    assert exit_names(1) == ["final"]
    assert exit_names(3, ("a", "b")) == ["a", "b", "final"]
    assert exit_names(3, "ab") == ["IC 1", "IC 2", "final"]  # an edited config's text is not a list of names


def test_first_line_of_an_error():
    assert first_line(RuntimeError("  shape mismatch\n  at layer 3\n")) == "shape mismatch"
    assert first_line(KeyError()) == "KeyError"


def test_read_json_names_the_damaged_file_and_the_remedy(tmp_path):
    atomic_write_json(tmp_path / "ok.json", {"a": [1, 2]})
    assert read_json(tmp_path / "ok.json") == {"a": [1, 2]}
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(UserError, match=r"bad\.json is damaged \(not valid JSON\); run it again$"):
        read_json(tmp_path / "bad.json", "run it again")
    with pytest.raises(UserError, match=r"is damaged \(not valid JSON\)$"):
        read_json(tmp_path / "bad.json")


@pytest.mark.parametrize("training", [True, False])
def test_eval_mode_restores_the_mode_even_after_an_error(training):
    net = nn.Sequential(nn.Linear(2, 2), nn.Dropout()).train(training)
    with eval_mode(net) as inside:
        assert inside is net and not any(m.training for m in net.modules())
    assert all(m.training == training for m in net.modules())
    with pytest.raises(ValueError), eval_mode(net):
        raise ValueError
    assert net.training == training
