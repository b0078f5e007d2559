"""Reports: one neutral ReportSpec (spec.py) built from an Analysis (build.py), rendered to a
self-contained HTML file and Markdown (always) and to a W&B report (only with online credentials).

    python -m analysis.report RUNS_DIR [RUNS_DIR ...] --out DIR
"""

from .spec import Figure, ReportSpec, Section, Table, Text

__all__ = ["Figure", "ReportSpec", "Section", "Table", "Text"]
