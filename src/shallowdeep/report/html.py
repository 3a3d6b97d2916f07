"""A self-contained HTML page: inline CSS, images embedded as base64 data URIs, nothing fetched."""

from __future__ import annotations

import base64
from html import escape
from typing import Any, Sequence

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1100px;
       padding: 24px; color: #222; background: #fff; line-height: 1.45; }
h1 { margin-bottom: 0; } h2 { border-bottom: 2px solid #ddd; padding-bottom: 4px; margin-top: 36px; }
.subtitle { color: #666; margin-top: 4px; }
table { border-collapse: collapse; margin: 12px 0; font-size: 14px; }
th, td { border: 1px solid #ccc; padding: 4px 10px; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
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


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A table of already formatted cells."""
    head = "".join(f"<th>{escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


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
