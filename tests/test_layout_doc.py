"""The README's layout list is the package's import order: it names every top-level module and package of
``shallowdeep`` bottom to top, and each imports (anywhere in its code, as ``test_import_graph`` reads it) only
those listed below it."""

from __future__ import annotations

import re
from pathlib import Path

from test_import_graph import PACKAGE, SRC, import_graph, without_allowed

README = Path(__file__).resolve().parents[1] / "README.md"


def layout_section(text: str) -> str:
    """The README's "## Layout" section."""
    return text.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]


def top_units(package: Path) -> set[str]:
    """The package's top-level modules and subpackages by name (its own ``__init__`` and ``__main__`` left out)."""
    modules = {p.stem for p in package.glob("*.py")} - {"__init__", "__main__"}
    return modules | {p.parent.name for p in package.glob("*/__init__.py")}


def listed(text: str, units: set[str]) -> list[str]:
    """The ``units`` in the order ``text`` first names them, as `name.py` or `name/`."""
    order: list[str] = []
    for name in re.findall(r"`(\w+)(?:\.py|/)`", text):
        if name in units and name not in order:
            order.append(name)
    return order


def unit_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The module graph folded onto top-level units: ``a`` -> ``b`` when a module of ``a`` imports one of ``b``.
    The package itself is no unit: it names the public API, imported on first use."""
    def unit(module: str) -> str | None:
        parts = module.split(".")
        return parts[1] if len(parts) > 1 and parts[1] != "__main__" else None

    folded: dict[str, set[str]] = {}
    for importer, imported in graph.items():
        a = unit(importer)
        if a is not None:
            folded.setdefault(a, set()).update(b for b in map(unit, imported) if b is not None and b != a)
    return folded


def upward_imports(order: list[str], graph: dict[str, set[str]]) -> list[str]:
    """'a imports b' for every listed ``a`` that imports a ``b`` not listed below it."""
    position = {u: i for i, u in enumerate(order)}
    return [f"{a} imports {b}" for a in order for b in sorted(graph.get(a, ()))
            if position.get(b, len(order)) >= position[a]]


def test_the_list_is_read_in_order_and_an_import_from_above_is_found():
    text = "`b.py` (about `inner.py`), `a/`, `c.py` and again `b.py`"
    assert listed(text, {"a", "b", "c", "d"}) == ["b", "a", "c"]
    graph = unit_graph({"p.b.x": {"p.a.y", "p.b"}, "p.a": {"p.c", "p"}, "p.c": {"p.b.x"}, "p.__main__": {"p.c"}})
    assert graph == {"b": {"a"}, "a": {"c"}, "c": {"b"}}
    assert upward_imports(["c", "a", "b"], graph) == ["c imports b"]
    assert upward_imports(["a", "b", "c"], graph) == ["a imports c"]
    assert upward_imports(["a", "b"], {"a": {"z"}}) == ["a imports z"]  # one not listed is not below


def test_every_module_and_package_is_in_the_readme_layout_list():
    units = top_units(SRC / PACKAGE)
    missing = sorted(units - set(listed(layout_section(README.read_text()), units)))
    assert not missing, f"the README's layout list does not name {missing}"


def test_every_name_in_the_readme_layout_list_is_a_file_or_folder_of_the_package():
    names = re.findall(r"`(\w+(?:\.py|/))`", layout_section(README.read_text()))
    package = SRC / PACKAGE
    stale = [n for n in names if not any(package.rglob(n.rstrip("/")))]
    assert not stale, f"the README's layout list names {stale}, which the package does not hold"


def test_each_module_in_the_readme_layout_list_imports_only_those_below_it():
    units = top_units(SRC / PACKAGE)
    order = listed(layout_section(README.read_text()), units)
    assert upward_imports(order, unit_graph(without_allowed(import_graph()))) == []
