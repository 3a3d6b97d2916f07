"""The paper's figures (Kaya, Hong & Dumitraș, ICML 2019), each with its citation, read from ``paper_figures.json``:
the one place the project attributes a figure to the paper. A table cell with no figure there says "not stated"."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources

NOT_STATED = "not stated"


@dataclass(frozen=True)
class PaperFigure:
    """One figure of the paper: the table cell it belongs to, its value, how the paper words it and where."""

    cell: str
    value: float
    relation: str  # "below", "about": how the paper bounds or rounds the value
    text: str
    quote: str
    citation: str
    scope: str

    def cited(self) -> str:
        """The figure with its citation, as a table shows it."""
        return f"{self.text} ({self.citation})"


@cache
def paper_figures() -> dict[str, PaperFigure]:
    """Every figure of the data file, by the cell it belongs to."""
    data = json.loads(resources.files(__package__).joinpath("paper_figures.json").read_text(encoding="utf-8"))
    return {f["cell"]: PaperFigure(**f) for f in data["figures"]}


def paper_source() -> str:
    """The paper the figures come from."""
    return json.loads(resources.files(__package__).joinpath("paper_figures.json").read_text(encoding="utf-8"))["paper"]


def paper_cell(cell: str) -> str:
    """What the paper says for ``cell``, with its citation, or "not stated"."""
    figure = paper_figures().get(cell)
    return NOT_STATED if figure is None else figure.cited()
