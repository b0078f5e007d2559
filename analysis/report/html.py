"""Self-contained HTML: figures embedded as base64 PNG, inline CSS, no external URL of any kind."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

import pandas as pd

from .spec import Figure, ReportSpec, Table, Text
from .text import format_frame, markdown_to_html

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0 auto;max-width:1320px;padding:16px 28px;
color:#222;line-height:1.45}
h1{border-bottom:2px solid #333;padding-bottom:6px}h2{margin-top:34px;border-bottom:1px solid #bbb;padding-bottom:4px}
nav ol{columns:2;font-size:14px}
figure{margin:14px 0}figure img{max-width:100%;height:auto;border:1px solid #ddd}
figcaption{font-size:13px;color:#444;margin-top:4px}
.tablewrap{overflow-x:auto;margin:10px 0 4px 0}
table{border-collapse:collapse;font-size:12.5px;font-variant-numeric:tabular-nums}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right;white-space:nowrap;vertical-align:top}
td.text{text-align:left}td.long{white-space:normal;min-width:22em;max-width:46em;overflow-wrap:anywhere}
th{background:#f1f1f1;position:sticky;top:0;text-align:center}td:first-child,th:first-child{text-align:left}
tr:nth-child(even) td{background:#fafafa}
.caption{font-size:13px;color:#444;margin:2px 0 12px 0}
code{background:#f3f3f3;padding:0 3px;border-radius:3px}
"""


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _figure(f: Figure) -> str:
    data = base64.b64encode(Path(f.png).read_bytes()).decode("ascii")
    return (
        f'<figure id="fig-{_slug(f.name)}"><img alt="{html.escape(f.name)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{html.escape(f.caption)}</figcaption></figure>"
    )


def _table(t: Table) -> str:
    if t.frame.empty:
        return f'<p class="caption">{html.escape(t.caption)} (empty)</p>'
    cells = format_frame(t.frame, t.float_format)
    cols = [t.frame.iloc[:, i] for i in range(t.frame.shape[1])]
    numeric = [pd.api.types.is_numeric_dtype(c) and not pd.api.types.is_bool_dtype(c) for c in cols]
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cells.columns)
    rows = []
    for r in cells.itertuples(index=False):
        tds = []
        for v, num in zip(r, numeric):
            cls = "" if num else (' class="text long"' if len(v) > 60 else ' class="text"')
            tds.append(f"<td{cls}>{html.escape(v)}</td>")
        rows.append("<tr>" + "".join(tds) + "</tr>")
    body = f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    return f'<div class="tablewrap">{body}</div><p class="caption">{html.escape(t.caption)}</p>'


def render_html(spec: ReportSpec) -> str:
    toc = "".join(
        f'<li><a href="#{_slug(s.title)}">{html.escape(s.title)}</a></li>' for s in spec.sections
    )
    parts = [
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(spec.title)}</title>'
        f"<style>{CSS}</style></head><body><h1>{html.escape(spec.title)}</h1><nav><ol>{toc}</ol></nav>"
    ]
    for s in spec.sections:
        parts.append(f'<section><h2 id="{_slug(s.title)}">{html.escape(s.title)}</h2>')
        for b in s.blocks:
            if isinstance(b, Text):
                parts.append(markdown_to_html(b.markdown))
            elif isinstance(b, Figure):
                parts.append(_figure(b))
            elif isinstance(b, Table):
                parts.append(_table(b))
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_html(spec: ReportSpec, path: Path) -> Path:
    path.write_text(render_html(spec), encoding="utf-8")
    return path
