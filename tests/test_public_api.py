"""The names the README documents resolve to their objects, read from the README itself; ``import shallowdeep``
gives them lazily (the package itself loads no torch)."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys

import pytest
import torch
from torch import nn

import shallowdeep
from conftest import REPO

README = (REPO / "README.md").read_text()
CODE = "\n".join(re.findall(r"```python\n(.*?)```", README, re.S))
DOTTED = sorted(set(re.findall(r"\bshallowdeep(?:\.[A-Za-z_]\w*)+", README)))  # shallowdeep.load, ...data.load_dataset
# the attributes Python blocks take from the package after `import shallowdeep` (not those of `from ... import`)
USED_IN_CODE = sorted(set(re.findall(r"^(?!from ).*?\bshallowdeep\.([A-Za-z_]\w*)", CODE, re.M)))
FROM_IMPORTS = sorted(set(re.findall(r"^from shallowdeep(?:\.\w+)* import [\w, ]+$", README, re.M)))


def resolve(dotted: str) -> object:
    """The object a dotted name stands for: the longest importable module path, then attributes."""
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        try:
            value = importlib.import_module(".".join(parts[:end]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[end:]:
            value = getattr(value, attribute)
        return value
    raise ModuleNotFoundError(dotted)


def test_the_readme_is_read():
    assert {"shallowdeep.attach", "shallowdeep.load", "shallowdeep.train_sdn"} <= set(DOTTED)
    assert {"attach", "early_exit", "models"} <= set(USED_IN_CODE)
    assert "from shallowdeep import runtime" in FROM_IMPORTS


@pytest.mark.parametrize("dotted", DOTTED)
def test_every_dotted_name_in_the_readme_resolves(dotted):
    value = resolve(dotted)
    name = dotted.rpartition(".")[2]
    assert getattr(value, "__name__", None) in (name, dotted)  # a function, a class, or a module


@pytest.mark.parametrize("name", USED_IN_CODE)
def test_every_name_the_readme_uses_after_import_shallowdeep_comes_from_the_package(name):
    value = shallowdeep.__getattr__(name)  # the package's own lookup, whatever was imported before
    assert getattr(value, "__name__", None) in (name, f"shallowdeep.{name}")
    assert name in dir(shallowdeep)


@pytest.mark.parametrize("line", FROM_IMPORTS)
def test_every_from_import_in_the_readme_runs(line):
    scope: dict = {}
    exec(line, scope)
    for name in line.partition(" import ")[2].split(","):
        assert getattr(scope[name.strip()], "__name__", "").rpartition(".")[2] == name.strip()


@pytest.mark.slow
def test_importing_the_package_loads_no_torch():
    code = "import sys, shallowdeep; assert 'torch' not in sys.modules and 'numpy' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


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
