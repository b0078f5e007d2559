"""Markdown report: pipe tables (own writer: DataFrame.to_markdown needs the optional tabulate) and
figure links relative to the report file."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from .spec import Figure, ReportSpec, Table, Text
from .text import format_frame


def _escape(cell: str) -> str:
    return cell.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def pipe_table(frame: pd.DataFrame, float_format: str = "{:.4g}") -> str:
    cells = format_frame(frame, float_format)
    header = "| " + " | ".join(_escape(str(c)) for c in cells.columns) + " |"
    rule = "|" + "|".join("---" for _ in cells.columns) + "|"
    rows = ["| " + " | ".join(_escape(v) for v in r) + " |" for r in cells.itertuples(index=False)]
    return "\n".join([header, rule, *rows])


def parse_pipe_table(text: str) -> pd.DataFrame:
    """Inverse of pipe_table (all cells as strings); used by the round-trip test and by readers."""

    def split(line: str) -> list[str]:
        cells, cur, i, body = [], "", 0, line.strip()[1:-1]
        while i < len(body):
            ch = body[i]
            if ch == "\\" and i + 1 < len(body):
                cur += body[i + 1]
                i += 2
                continue
            if ch == "|":
                cells.append(cur.strip())
                cur = ""
            else:
                cur += ch
            i += 1
        cells.append(cur.strip())
        return cells

    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return pd.DataFrame([split(ln) for ln in lines[2:]], columns=split(lines[0]))


def render_markdown(spec: ReportSpec, base: Path) -> str:
    out = [f"# {spec.title}", ""]
    out += [
        f"{i}. [{s.title}](#{s.title.lower().replace(' ', '-')})"
        for i, s in enumerate(spec.sections, 1)
    ] + [""]
    for s in spec.sections:
        out += [f"## {s.title}", ""]
        for b in s.blocks:
            if isinstance(b, Text):
                out += [b.markdown, ""]
            elif isinstance(b, Figure):
                rel = os.path.relpath(b.png, base)
                vec = f" ([vector]({os.path.relpath(b.vector, base)}))" if b.vector else ""
                out += [f"![{b.name}]({rel})", "", f"*{b.caption}*{vec}", ""]
            elif isinstance(b, Table):
                out += [
                    pipe_table(b.frame, b.float_format) if not b.frame.empty else "(empty)",
                    "",
                    f"*{b.caption}*",
                    "",
                ]
    return "\n".join(out)


def write_markdown(spec: ReportSpec, path: Path) -> Path:
    path.write_text(render_markdown(spec, path.parent), encoding="utf-8")
    return path
