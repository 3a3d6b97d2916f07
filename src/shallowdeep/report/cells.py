"""Formatting values for the report's tables."""

from __future__ import annotations

from typing import Any

PERCENT = "\u00a0%"  # a no-break space before the sign: a table never wraps % onto a line of its own


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one level with dotted keys; lists of plain values kept, other lists summarised."""
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(data, list) and not all(isinstance(v, (int, float, str, bool)) or v is None for v in data):
        return {prefix: f"[{len(data)} entries]"}
    return {prefix: data}


def fmt(value: Any) -> str:
    """A value formatted for a table cell."""
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k.replace('_', ' ')} {fmt(v)}" for k, v in value.items())
    if isinstance(value, list):
        shown = ", ".join(fmt(v) for v in value[:12])
        return f"[{shown}{', …' if len(value) > 12 else ''}]"
    return str(value)


def pct(value: float | None) -> str:
    """A share as a percentage with one decimal."""
    return "–" if value is None else f"{100 * value:.1f}{PERCENT}"
