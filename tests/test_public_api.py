"""``import shallowdeep`` gives the public API, lazily: the package itself loads no torch."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

import shallowdeep


def test_importing_the_package_loads_no_torch():
    code = "import sys, shallowdeep; assert 'torch' not in sys.modules and 'numpy' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


@pytest.mark.parametrize("name", shallowdeep.__all__)
def test_every_public_name_resolves_to_its_object(name):
    value = getattr(shallowdeep, name)
    assert getattr(value, "__name__", None) in (name, f"shallowdeep.{name}")  # a function or class, or a subpackage


def test_attach_is_the_function_even_after_its_module_is_imported():
    import shallowdeep.build  # noqa: F401 - imports the module attach lives in

    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 10)).eval()
    net = shallowdeep.attach(model, (3, 16, 16), 10).eval()
    x = torch.randn(2, 3, 16, 16)
    assert isinstance(net, shallowdeep.SDN) and torch.equal(net(x)[-1], model(x))
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        shallowdeep.nothing
