"""The neutral report description: sections of text, figures and tables (anchors.md §4.3).

Renderers (html.py, markdown.py, wandb_report.py) only map these blocks; they compute nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd


@dataclass(frozen=True, kw_only=True)
class Text:
    markdown: str  # a small Markdown subset: paragraphs, `code`, **bold**, "- " lists


@dataclass(frozen=True, kw_only=True)
class Figure:
    name: str  # unique key (file stem; W&B media key)
    png: str  # path of the PNG (embedded in HTML, linked from Markdown)
    caption: str
    vector: str | None = None  # path of the SVG/PDF twin


@dataclass(frozen=True, kw_only=True)
class Table:
    name: str
    frame: pd.DataFrame
    caption: str
    float_format: str = "{:.4g}"


Block = Text | Figure | Table


@dataclass(frozen=True, kw_only=True)
class Section:
    title: str
    blocks: list[Block] = field(default_factory=list)


@dataclass(frozen=True, kw_only=True)
class ReportSpec:
    title: str
    sections: list[Section]
    provenance: dict[str, str] = field(default_factory=dict)

    def figures(self) -> list[Figure]:
        return [b for s in self.sections for b in s.blocks if isinstance(b, Figure)]

    def tables(self) -> list[Table]:
        return [b for s in self.sections for b in s.blocks if isinstance(b, Table)]
