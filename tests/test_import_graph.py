"""The package's import graph is one-way: no module imports, anywhere in its code (inside functions and under
``TYPE_CHECKING`` too), one that imports it back, but for the few edges ``ALLOWED`` names with their reason; and
every module imports on its own in a fresh interpreter."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "shallowdeep"

# (importer, imported): an import, wherever it stands, that may close a cycle, with the reason it is deliberate.
# Each must still exist and still close one. None now: sdn -> exits (inside SDN.early_exit) and
# mode_graphs -> surgery (CutPoint under TYPE_CHECKING) were removed under issue 21.
ALLOWED: dict[tuple[str, str], str] = {}


def module_names() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by the name of its ``__init__``)."""
    names = {}
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def imports(name: str, source: str, known: set[str], is_package: bool = False) -> set[str]:
    """The modules of ``known`` that the module ``name`` imports anywhere in ``source``: at its top, inside
    functions and classes, under ``TYPE_CHECKING`` and in ``try`` blocks alike."""
    package = name if is_package else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in known else base)
    return {m for m in found if m in known and m != name}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in graph:
        if v not in index:
            connect(v)
    return found


def import_graph() -> dict[str, set[str]]:
    names = module_names()
    return {name: imports(name, path.read_text(), set(names), path.name == "__init__.py")
            for name, path in names.items()}


def without_allowed(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    return {a: {b for b in targets if (a, b) not in ALLOWED} for a, targets in graph.items()}


def test_the_cycle_finder_finds_a_cycle_and_a_two_way_dependency():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": {"a"}}) == [["a", "b"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_imports_inside_functions_under_type_checking_and_relative_ones_are_seen():
    known = {"p", "p.a", "p.b", "p.c", "p.d", "p.sub", "p.sub.e"}
    source = (
        "from typing import TYPE_CHECKING\n"
        "import os\n"
        "from . import a\n"
        "if TYPE_CHECKING:\n"
        "    from .b import Thing\n"
        "def f():\n"
        "    import p.c\n"
        "class K:\n"
        "    def m(self):\n"
        "        from .sub.e import g\n"
        "try:\n"
        "    from ..d import h\n"
        "except ImportError:\n"
        "    pass\n"
    )
    assert imports("p.x", source.replace("..d", ".d"), known) == {"p.a", "p.b", "p.c", "p.d", "p.sub.e"}
    assert imports("p.sub.x", "def f():\n    from ..d import h\n", known) == {"p.d"}
    assert imports("p.sub", "from . import e\n", known, is_package=True) == {"p.sub.e"}


def test_the_graph_sees_relative_imports():
    graph = import_graph()
    assert f"{PACKAGE}.sdn" in graph[f"{PACKAGE}.surgery"]
    assert f"{PACKAGE}.train.trainer" in graph[f"{PACKAGE}.train"]


def test_no_module_imports_one_that_imports_it_back():
    assert cycles(without_allowed(import_graph())) == []


def test_every_allowed_edge_still_exists_and_still_closes_a_cycle():
    graph = import_graph()
    for (importer, imported), reason in ALLOWED.items():
        assert reason and imported in graph[importer], f"{importer} no longer imports {imported}: remove it"
        alone = without_allowed(graph)
        alone[importer].add(imported)
        assert any(importer in c and imported in c for c in cycles(alone)), f"{importer} -> {imported}: remove it"


def test_the_model_at_the_bottom_imports_nothing_above_it():
    graph = without_allowed(import_graph())
    bottom = {f"{PACKAGE}.{m}" for m in ("choices", "errors", "eval_mode", "heads", "model_spec", "sdn", "flops",
                                                "exit_outputs", "trace_options")}
    for module in bottom:
        assert graph[module] <= bottom, f"{module} imports {sorted(graph[module] - bottom)}"


@pytest.mark.slow
def test_every_module_imports_on_its_own():
    # one interpreter with torch loaded, forked afresh for every module of the package
    script = (
        "import os, sys, traceback, torch, numpy\n"
        "bad = []\n"
        "for name in sys.argv[1:]:\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        "        try:\n"
        "            __import__(name)\n"
        "        except BaseException:\n"
        "            print(name + ': ' + traceback.format_exc().strip().splitlines()[-1], flush=True)\n"
        "            os._exit(1)\n"
        "        os._exit(0)\n"
        "    bad.append(os.waitpid(pid, 0)[1] != 0)\n"
        "sys.exit(1 if any(bad) else 0)\n"
    )
    names = sorted(n for n in module_names() if not n.endswith("__main__"))  # that one runs the CLI
    workers = [subprocess.Popen([sys.executable, "-c", script, *names[i::2]], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for i in range(2)]  # two at once: two cores
    for worker in workers:
        out, err = worker.communicate()
        assert worker.returncode == 0, out + err[-2000:]
