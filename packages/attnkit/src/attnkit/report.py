"""A small, dependency-free HTML report: headings, paragraphs, tables and PNG figures
(embedded as base64, so ``report.html`` is one self-contained file to open or send)."""

from __future__ import annotations

import base64
import html
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Report", "Section"]

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 70em; margin: 2em auto; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.5em 0; }
code, pre { background: #f6f6f6; padding: 0.1em 0.3em; } .muted { color: #777; font-size: 0.9em; }
"""


@dataclass
class Section:
    """One part of the report: a heading, then paragraphs, tables and figures in that order."""

    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[tuple[Sequence[str], Sequence[Sequence[Any]]]] = field(default_factory=list)
    figures: list[str | os.PathLike[str]] = field(default_factory=list)


@dataclass
class Report:
    """Collects sections and writes ``report.html`` and ``results.json`` into ``folder``."""

    folder: Path
    title: str
    sections: list[Section] = field(default_factory=list)
    results: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.folder = Path(self.folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def add(self, section: Section) -> Section:
        self.sections.append(section)
        return section

    def write(self) -> Path:
        parts = [
            "<!doctype html><html><head><meta charset='utf-8'>",
            f"<title>{html.escape(self.title)}</title><style>{_STYLE}</style></head><body>",
            f"<h1>{html.escape(self.title)}</h1>",
        ]
        for s in self.sections:
            parts.append(f"<h2>{html.escape(s.title)}</h2>")
            parts.extend(f"<p>{html.escape(p)}</p>" for p in s.paragraphs)
            for header, rows in s.tables:
                parts.append("<table><tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in header) + "</tr>")
                for row in rows:
                    parts.append("<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in row) + "</tr>")
                parts.append("</table>")
            for fig in s.figures:
                data = base64.b64encode(Path(fig).read_bytes()).decode("ascii")
                alt = html.escape(Path(fig).name)
                parts.append(f"<div><img alt='{alt}' src='data:image/png;base64,{data}'></div>")
        parts.append("<p class='muted'>results.json in this folder holds every number above.</p></body></html>")
        out = self.folder / "report.html"
        out.write_text("\n".join(parts), encoding="utf-8")
        (self.folder / "results.json").write_text(json.dumps(self.results, indent=1, default=str), encoding="utf-8")
        return out


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e4 else f"{value:,.0f}"
    return str(value)
