"""The command line imports only what the command it runs needs: building the parser and every
``--help`` load neither torch nor matplotlib nor captum, and no command loads matplotlib or captum
before it draws. Each check runs in a fresh interpreter, whose ``sys.modules`` start empty."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import REPO
from shallowdeep.choices import ARCHS, POLICY_NAMES
from shallowdeep.cli import _command_modules

pytestmark = pytest.mark.slow  # each check runs in a fresh interpreter
COMMANDS = [m.NAME for m in _command_modules()]
HEAVY = ("torch", "matplotlib", "captum")


def fresh(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)


def loaded_after(code: str) -> set[str]:
    """Which of the heavy modules a fresh interpreter holds after running ``code``."""
    probe = f"{code}\nimport sys\nprint('LOADED', *[m for m in {HEAVY!r} if m in sys.modules])"
    r = fresh(probe)
    assert r.returncode == 0, r.stderr
    return set(r.stdout.strip().splitlines()[-1].split()[1:])


def test_every_command_is_found():
    assert {"demo", "train", "evaluate", "early-exit", "overthinking", "confusion", "report", "backdoor"} <= set(
        COMMANDS)


def test_parser_and_every_help_import_nothing_heavy():
    code = f"""
from shallowdeep.cli import build_parser, main
build_parser()
for argv in [["--help"]] + [[c, "--help"] for c in {COMMANDS!r}]:
    try:
        main(argv)
    except SystemExit as exc:
        assert exc.code == 0, (argv, exc.code)
    else:
        raise AssertionError(f"{{argv}} did not exit")
"""
    assert loaded_after(code) == set()


@pytest.mark.parametrize("module", ["shallowdeep", "shallowdeep.train", "shallowdeep.report", "shallowdeep.analysis",
                                    "shallowdeep.backdoor", "shallowdeep.exits", "shallowdeep.outputs"])
def test_library_imports_load_no_plotting(module):
    assert not loaded_after(f"import {module}") & {"matplotlib", "captum"}


def test_train_runs_without_plotting(tmp_path):
    """The train command up to a user error: its library is imported, matplotlib and captum are not."""
    code = f"""
from shallowdeep.cli import main
code = main(["train", "--arch", "resnet56", "--backbone", "x.py:f", "--dataset", "digits", "--device", "cpu",
             "--out", {str(tmp_path / "run")!r}])
assert code == 2, code
"""
    assert loaded_after(code) == {"torch"}


@pytest.mark.parametrize("command", COMMANDS)
def test_command_help(command):
    r = subprocess.run([sys.executable, "-m", "shallowdeep", command, "--help"], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(REPO / "src")}, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"usage: shallowdeep {command}")


def test_help_shows_the_real_defaults():
    text = " ".join(fresh("from shallowdeep.cli import main; main(['train', '--help'])").stdout.split())
    for shown in ("what to train (default: cnn)", "ztw heads (default: 64)", "(default: growing)"):
        assert shown in text


def test_choices_name_what_the_library_registers():
    from shallowdeep import models
    from shallowdeep.exits import POLICIES

    assert tuple(models.available()) == ARCHS
    assert tuple(POLICIES) == POLICY_NAMES
