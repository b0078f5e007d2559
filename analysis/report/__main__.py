"""python -m analysis.report RUNS_DIR [RUNS_DIR ...] --out DIR [--n-boot N] [--seed S] [--wandb-project P]

Collects every run folder below the RUNS_DIRs, fits, plots, writes DIR/{runs.csv, fits.json,
predictions.csv, tables/, figures/, report.html, report.md}; also a W&B report when --wandb-project
is given and online credentials exist (otherwise says why and skips it; the static report is always written).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..analyze import METRICS, analyze
from ..collect import CollectError, collect
from ..fit import FitSettings
from .build import build_report, write_outputs
from .html import write_html
from .markdown import write_markdown


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis.report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="runs directories (a sweep folder or a parent of several)")
    p.add_argument("--out", required=True, help="output folder (created; existing files are overwritten)")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap replicates (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--split", choices=["test", "val"], help="metrics split (default: test if present, else val)")
    p.add_argument("--metrics", default=",".join(METRICS), help="comma-separated metric names")
    p.add_argument("--title", default="OneTrans scaling report")
    p.add_argument("--no-vector", action="store_true", help="skip the SVG twin of every figure (faster)")
    p.add_argument("--wandb-project", help="also publish a W&B report to this project (needs credentials)")
    p.add_argument("--wandb-entity")
    a = p.parse_args(argv)
    if a.n_boot < 100:
        p.error("--n-boot must be >= 100 for 95% percentile intervals to mean anything")
    try:
        coll = collect(a.runs)
    except CollectError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = Path(a.out)
    an = analyze(coll, settings=FitSettings(n_boot=a.n_boot, seed=a.seed), split=a.split,
                 metrics=tuple(m.strip() for m in a.metrics.split(",") if m.strip()))
    write_outputs(an, out)
    spec = build_report(an, out, title=a.title, vector=not a.no_vector)
    html_path, md_path = write_html(spec, out / "report.html"), write_markdown(spec, out / "report.md")
    n_bad = int((coll.runs["status"] != "done").sum())
    print(f"{len(coll.done)} finished runs, {n_bad} not finished; {len(an.series)} series fitted")
    print(f"wrote {html_path} and {md_path} ({len(spec.figures())} figures, {len(spec.tables())} tables)")
    if a.wandb_project:
        from .wandb_report import online_reason, publish
        reason = online_reason()
        if reason:
            print(f"W&B report skipped: {reason}")
        else:
            print("W&B report:", publish(spec, entity=a.wandb_entity, project=a.wandb_project, group=out.name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
