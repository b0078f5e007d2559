"""python -m analysis.report RUNS_DIR [RUNS_DIR ...] --out DIR [--n-boot N] [--seed S] [--wandb-project P]

Collects every run folder below the RUNS_DIRs, flags bad runs, fits, plots, writes DIR/{runs.csv,
fits.json, fits.csv, flagged.csv, predictions.csv, tables/, figures/, report.html, report.md}; also a W&B
report when --wandb-project is given and online credentials exist (otherwise says why and skips it;
the static report is always written).

The sweep files' `analysis:` hints (x, metrics, fit) are read from <sweep folder>/.sweep/sweep.yaml
(written by harness.sweep) or from --sweep-file; --x, --metrics and --fit override them.

Exit codes: 0 report written, every run folder readable; 1 report written but some run folder could
not be read (corrupt result.json/status.json: listed with its path); 2 bad input (nothing written).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harness.sweepfile import FIT_FORMS

from ..analyze import METRICS, analyze
from ..collect import CollectError, collect
from ..fit import FitSettings
from ..floor import find_floors
from ..hints import HintError, find_hints, override
from ..quality import summarise
from ..tuning import TuningError, tuned_points
from .build import build_report, conclusions, write_outputs
from .html import write_html
from .markdown import write_markdown


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m analysis.report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "runs", nargs="+", help="runs directories (a sweep folder or a parent of several)"
    )
    p.add_argument(
        "--out", required=True, help="output folder (created; existing files are overwritten)"
    )
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap replicates (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument(
        "--split",
        choices=["test", "val"],
        help="metrics split (default: the hints', else test if present)",
    )
    p.add_argument(
        "--metrics",
        default=None,
        help=f"comma-separated metric names (default: each sweep's hinted metrics, else {','.join(METRICS)})",
    )
    p.add_argument(
        "--x",
        default=None,
        help="x axis of every series: the swept axis name, 'params' (dense "
        "parameters) or 'flops' (training FLOPs); default: each sweep's analysis.x, else the swept axis",
    )
    p.add_argument(
        "--fit",
        choices=sorted(FIT_FORMS),
        default=None,
        help="fit forms (default: each sweep's analysis.fit, else log-linear + saturating on logloss)",
    )
    p.add_argument(
        "--sweep-file",
        action="append",
        default=[],
        metavar="FILE",
        help="a sweep YAML whose analysis: hints apply to its runs (repeatable)",
    )
    p.add_argument(
        "--include-flagged",
        action="store_true",
        help="fit flagged runs too (default: leave them out; both estimates are shown either way)",
    )
    p.add_argument(
        "--tune-fixed",
        default=None,
        metavar="VALUE",
        help="tuned sweeps (a `tune:` block): fit the law over every point's candidate at this one "
        "value (e.g. 0.001) instead of each point's best by its val metric, to see how much tuning "
        "moved the law",
    )
    p.add_argument("--title", default="OneTrans scaling report")
    p.add_argument(
        "--no-vector", action="store_true", help="skip the SVG twin of every figure (faster)"
    )
    p.add_argument(
        "--wandb-project", help="also publish a W&B report to this project (needs credentials)"
    )
    p.add_argument("--wandb-entity")
    a = p.parse_args(argv)
    if a.n_boot < 100:
        p.error("--n-boot must be >= 100 for 95% percentile intervals to mean anything")
    metrics = tuple(m.strip() for m in a.metrics.split(",") if m.strip()) if a.metrics else None
    try:
        coll = collect(a.runs)
        found, hint_warnings = find_hints(coll.runs["run_dir"], a.sweep_file)
        floors, floor_warnings = find_floors(coll.runs["run_dir"])
        hint_warnings += floor_warnings
        tuning, tune_warnings = tuned_points(
            coll, a.tune_fixed, FitSettings(n_boot=a.n_boot, seed=a.seed)
        )
        hint_warnings += tune_warnings
    except (CollectError, HintError, TuningError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if tuning is not None:  # the fits see each tuned point's chosen candidate only
        coll = tuning.selection.apply(coll)
    sweeps = {str(s) for s in coll.runs["sweep"].dropna().unique()} | set(found)
    hints = {
        name: override(found.get(name), x=a.x, metrics=metrics, fit=a.fit, split=a.split)
        # sorted: a set's order changes from one process to the next (string hashing), and the
        # hints' order reaches fits.json and the choice of the comparison's reference model
        for name in sorted(sweeps)
    }
    for w in hint_warnings:
        print(f"warning: {w}", file=sys.stderr)
    out = Path(a.out)
    try:
        an = analyze(
            coll,
            settings=FitSettings(n_boot=a.n_boot, seed=a.seed),
            split=a.split,
            metrics=metrics,
            hints=hints,
            include_flagged=a.include_flagged,
            floors=floors,
        )
    except CollectError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    flagged = summarise(an.flags)
    if len(flagged):
        print(
            f"{len(flagged)} flagged run(s), "
            + (
                "INCLUDED in the fits (--include-flagged):"
                if a.include_flagged
                else "left out of the fits (--include-flagged to use them):"
            )
        )
        for r in flagged.itertuples():
            print(
                f"  {r.sweep}/{r.name or r.run_id} ({r.run_id}): {r.reason} [{r.metrics}] {r.detail}"
            )
    problems = coll.problems
    if len(problems):
        print(f"{len(problems)} run folder(s) not finished or unreadable (not in any fit):")
        for r in problems.itertuples():
            print(f"  {r.status:<10} {r.run_dir}: {r.error}")
    write_outputs(an, out)
    spec = build_report(an, out, title=a.title, vector=not a.no_vector, tuning=tuning)
    if tuning is not None:
        for line in tuning.lines:
            print("- " + line.replace("**", ""))
    html_path, md_path = (
        write_html(spec, out / "report.html"),
        write_markdown(spec, out / "report.md"),
    )
    for line in conclusions(an):
        print("- " + line.replace("**", ""))
    for note in an.notes:
        print(f"note: {note}")
    n_bad = int((coll.runs["status"] != "done").sum())
    print(
        f"{len(coll.done)} finished runs ({len(flagged)} flagged), {n_bad} not finished or unreadable; "
        f"{len(an.series)} series fitted"
    )
    print(
        f"wrote {html_path} and {md_path} ({len(spec.figures())} figures, {len(spec.tables())} tables)"
    )
    if a.wandb_project:
        from .wandb_report import online_reason, publish

        reason = online_reason()
        if reason:
            print(f"W&B report skipped: {reason}")
        else:
            print(
                "W&B report:",
                publish(spec, entity=a.wandb_entity, project=a.wandb_project, group=out.name),
            )
    corrupt = problems[problems["status"] == "corrupt"]
    if len(corrupt):
        print(
            f"exit 1: {len(corrupt)} run folder(s) could not be read and were left out (listed above and in the "
            "report)",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
