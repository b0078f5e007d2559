"""Shared helpers of the static renderers: the small Markdown subset of Text blocks, table formatting."""

from __future__ import annotations

import html
import re

import numpy as np
import pandas as pd


def format_frame(frame: pd.DataFrame, float_format: str) -> pd.DataFrame:
    """Every cell as a string: floats with float_format, NaN/None as '', booleans as yes/no."""

    def cell(v):
        if v is None or (isinstance(v, float) and np.isnan(v)):
            return ""
        if isinstance(v, (bool, np.bool_)):
            return "yes" if v else "no"
        if isinstance(v, (float, np.floating)):
            return float_format.format(v)
        return str(v)

    return frame.apply(lambda col: col.map(cell)) if len(frame.columns) else frame


def inline_html(text: str) -> str:
    t = html.escape(text)
    t = re.sub(r"`([^`]+)`", r"<code>\1</code>", t)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", t)


def markdown_to_html(md: str) -> str:
    """Paragraphs and '- ' lists, `code` and **bold**: all that Text blocks use."""
    out, items = [], []
    for block in md.split("\n"):
        if block.startswith("- "):
            items.append(f"<li>{inline_html(block[2:])}</li>")
            continue
        if items:
            out.append("<ul>" + "".join(items) + "</ul>")
            items = []
        if block.strip():
            out.append(f"<p>{inline_html(block)}</p>")
    if items:
        out.append("<ul>" + "".join(items) + "</ul>")
    return "\n".join(out)
