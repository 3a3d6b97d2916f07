"""A self-contained HTML page: inline CSS, images embedded as base64 data URIs, nothing fetched."""

from __future__ import annotations

import base64
import re
from html import escape
from typing import Any, Sequence

# a table cell aligned right: a number, a percentage or a range of them (0.25, 1e-05, 97.2 %, 25.0–100.0 %), or none
NUMBER = re.compile(r"[-+]?[\d.]+(e[-+]?\d+)?(–[\d.]+)?(\u00a0%)?|–")

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1100px;
       padding: 24px; color: #222; background: #fff; line-height: 1.45; }
h1 { margin-bottom: 0; } h2 { border-bottom: 2px solid #ddd; padding-bottom: 4px; margin-top: 36px; }
.subtitle { color: #666; margin-top: 4px; }
.table { overflow-x: auto; } table { border-collapse: collapse; margin: 12px 0; font-size: 14px; }
th, td { border: 1px solid #ccc; padding: 4px 6px; text-align: right; }
th { background: #f3f3f3; } .text { text-align: left; } th[colspan] { text-align: center; }
figure { display: inline-block; margin: 8px 16px 8px 0; vertical-align: top; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 13px; color: #555; max-width: 640px; }
.gallery { margin: 4px 0 12px; } .gallery h3 { font-size: 15px; margin: 12px 0 2px; }
figure.thumb { margin: 4px 10px 4px 0; text-align: center; }
figure.thumb img { width: 72px; image-rendering: pixelated; }
figure.thumb figcaption { font-size: 12px; max-width: 96px; }
.note { background: #fff8e1; border-left: 4px solid #f0c040; padding: 8px 12px; }
"""


def data_uri(png: bytes) -> str:
    """A PNG as a ``data:`` URI."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def figure(png: bytes, caption: str, alt: str | None = None) -> str:
    """An embedded image with its caption."""
    return (f'<figure><img src="{data_uri(png)}" alt="{escape(alt or caption)}">'
            f"<figcaption>{escape(caption)}</figcaption></figure>")


def gallery(title: str, images: Sequence[tuple[bytes, str]], empty: str = "no sample") -> str:
    """One titled row of small images, each in its own figure with its caption beneath it (a caption's lines
    split at newlines)."""
    figures = "".join(_thumb(png, caption) for png, caption in images)
    return f'<div class="gallery"><h3>{escape(title)}</h3>{figures or paragraph(empty)}</div>'


def _thumb(png: bytes, caption: str) -> str:
    lines = caption.splitlines()
    return (f'<figure class="thumb"><img src="{data_uri(png)}" alt="{escape(", ".join(lines))}">'
            f"<figcaption>{'<br>'.join(escape(line) for line in lines)}</figcaption></figure>")


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]],
          groups: Sequence[tuple[str | None, int]] = ()) -> str:
    """A table of already formatted cells, in a box that scrolls sideways should it be wider than the page; a
    column of numbers (and percentages) aligned right, any other left.

    ``groups`` ((title, number of headers) each, over all the headers in order) puts a title over the headers
    it spans (a title of None: those headers stand two rows high)."""
    text = [any(not NUMBER.fullmatch(str(row[i])) for row in rows) for i in range(len(headers))]

    def cell(tag: str, i: int, value: Any, span: str = "") -> str:
        align = ' class="text"' if text[i] else ""
        return f"<{tag}{span}{align}>{escape(str(value))}</{tag}>"

    top, low, start = [], [], 0
    for title, count in groups or [(None, len(headers))]:
        columns = range(start, start + count)
        start += count
        if title is None:
            top += [cell("th", i, headers[i], ' rowspan="2"' if groups else "") for i in columns]
        else:
            top.append(f'<th colspan="{count}">{escape(title)}</th>')
            low += [cell("th", i, headers[i]) for i in columns]
    head = "".join(f"<tr>{''.join(cells)}</tr>" for cells in (top, low) if cells)
    body = "".join("<tr>" + "".join(cell("td", i, c) for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f'<div class="table"><table><thead>{head}</thead><tbody>{body}</tbody></table></div>'


def paragraph(text: str, note: bool = False) -> str:
    """A paragraph of plain text (a highlighted note when ``note``)."""
    return f'<p class="note">{escape(text)}</p>' if note else f"<p>{escape(text)}</p>"


def section(title: str, parts: Sequence[str], anchor: str) -> str:
    """A titled section made of HTML fragments."""
    return f'<section id="{escape(anchor)}"><h2>{escape(title)}</h2>' + "\n".join(parts) + "</section>"


def page(title: str, subtitle: str, sections: Sequence[str]) -> str:
    """The whole document."""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>"
        f"<h1>{escape(title)}</h1><p class=\"subtitle\">{escape(subtitle)}</p>\n"
        + "\n".join(sections)
        + "\n</body></html>\n"
    )
