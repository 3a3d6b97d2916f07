"""The package's import graph is one-way: no module imports, at module level, one that imports it back,
and every module imports on its own in a fresh interpreter."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "shallowdeep"


def module_names() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by the name of its ``__init__``)."""
    names = {}
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def module_level_imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that ``name`` imports when it is imported (function-local and
    ``TYPE_CHECKING`` imports left out)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, (ast.If, ast.Try)):
                visit(node.body + node.orelse + getattr(node, "finalbody", []) +
                      [s for h in getattr(node, "handlers", []) for s in h.body])
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name in known)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    found.add(sub if sub in known else base)
    visit(ast.parse(path.read_text()).body)
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
    return {name: module_level_imports(name, path, set(names)) for name, path in names.items()}


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_sees_relative_imports():
    graph = import_graph()
    assert f"{PACKAGE}.sdn" in graph[f"{PACKAGE}.surgery"]
    assert f"{PACKAGE}.train.trainer" in graph[f"{PACKAGE}.train"]


def test_no_module_imports_one_that_imports_it_back():
    assert cycles(import_graph()) == []


def test_the_model_at_the_bottom_imports_nothing_above_it():
    graph = import_graph()
    bottom = {f"{PACKAGE}.{m}" for m in ("choices", "errors", "eval_mode", "heads", "model_spec", "sdn", "flops",
                                                "exit_outputs")}
    for module in bottom:
        assert graph[module] <= bottom, f"{module} imports {sorted(graph[module] - bottom)}"


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
