"""The sweep files' `analysis:` hints (x axis, metrics, fit form), as the analysis uses them.

`python -m harness.sweep` copies the sweep file to `<runs>/<sweep>/.sweep/sweep.yaml`, so every sweep
folder says how it wants to be analysed. Hints are found there (or passed with --sweep-file) and
parsed by harness.sweepfile.parse_analysis (the one validator of the format). Command-line options
(--x, --metrics, --fit) override them for every sweep.

    x:        a dotted config key (data.seq_len, model.overrides.n_layers -> its last part: seq_len,
              n_layers), 'flops' (training FLOPs) or 'params' (dense parameters)
    metrics:  split.metric names (test.ctr_uauc); the first is the series' headline metric
    fit:      loglinear | powerlaw (also spelled saturating or power) | none; harness.sweepfile.FIT_FORMS
              maps each spelling to the form's one name
    trick:    switch keys crossed with a size or length axis (model.overrides.match_init, ...); the
              report's "Tricks across scale" section tests each one's gain across scale (analysis/tricks.py)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from harness.runstore import SweepStore
from harness.sweepfile import FIT_FORMS, SweepFileError, parse_analysis

X_ALIASES = {
    "flops": "train_flops",
    "train_flops": "train_flops",
    "params": "params",
    "dense_params": "params",
}


class HintError(ValueError):
    """A sweep file's analysis block, or a command-line override, that cannot be used."""


@dataclass(frozen=True, kw_only=True)
class Hints:
    x: str | None = None  # native axis name, 'params' or 'train_flops'
    metrics: tuple[str, ...] | None = None  # metric names (no split prefix)
    split: str | None = None
    fit: str | None = None  # loglinear | powerlaw | none
    baseline: str | None = None
    trick: tuple[str, ...] = ()  # switch keys of a trick sweep (analysis/tricks.py)
    source: str = ""  # where they came from (file path or 'command line')
    ignored: tuple[str, ...] = field(
        default_factory=tuple
    )  # hinted metrics that are not fit targets

    def describe(self) -> str:
        parts = [
            f"x={self.x}" if self.x else "",
            f"metrics={','.join(self.metrics)}" if self.metrics else "",
            f"fit={self.fit}" if self.fit else "",
            f"trick={','.join(self.trick)}" if self.trick else "",
        ]
        return " ".join(p for p in parts if p) + (f" (from {self.source})" if self.source else "")


def normalise_x(x: str) -> str:
    x = str(x).strip()
    return X_ALIASES.get(x, x.split(".")[-1])


def from_mapping(a, source: str) -> Hints | None:
    try:
        parsed = parse_analysis(a, source, None)
    except SweepFileError as err:
        raise HintError(str(err)) from err
    if parsed is None:
        return None
    metrics, split, ignored = [], None, []
    for m in parsed.metrics:
        head, _, tail = str(m).partition(".")
        if head in ("test", "val") and tail:
            split = split or head
            metrics.append(tail)
        else:
            ignored.append(str(m))  # e.g. throughput.samples_per_s: a table value, not a fit target
    return Hints(
        x=normalise_x(parsed.x),
        metrics=tuple(metrics) or None,
        split=split,
        fit=parsed.fit,
        baseline=parsed.baseline,
        trick=parsed.trick,
        source=source,
        ignored=tuple(ignored),
    )


def read_sweep_file(path: str | Path) -> tuple[str, Hints | None]:
    """(sweep name, hints) of one sweep file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise HintError(f"{path}: cannot read the sweep file ({err})") from err
    if not isinstance(data, dict) or "name" not in data:
        raise HintError(f"{path}: not a sweep file (a YAML mapping with 'name' and 'analysis')")
    return str(data["name"]), from_mapping(data.get("analysis"), str(path))


def find_hints(run_dirs, sweep_files=()) -> tuple[dict[str, Hints], list[str]]:
    """Hints per sweep label: explicit sweep files first, then `.sweep/sweep.yaml` beside the runs.

    Returns (hints by sweep label, warnings): keyed by the name inside the file and by the sweep folder's
    name (a preset's runs, in `<name>-<preset>/`, carry the folder's name as their sweep label)."""
    hints: dict[str, Hints] = {}
    warnings: list[str] = []
    for f in sweep_files:
        name, h = read_sweep_file(f)  # an explicit file that cannot be read is an error
        if h is not None:
            hints[name] = h
    for parent in sorted({Path(d).parent for d in run_dirs}):
        f = SweepStore(parent).sweep_file
        if not f.exists():
            continue
        try:
            name, h = read_sweep_file(f)
        except HintError as err:
            warnings.append(f"analysis hints not used: {err}")
            continue
        if h is not None:
            # runs of a preset land in <name>-<preset>/ and carry that folder's name as their sweep label
            for key in dict.fromkeys([name, parent.name]):
                hints.setdefault(key, h)
    return hints, warnings


def override(
    h: Hints | None,
    *,
    x: str | None = None,
    metrics=None,
    fit: str | None = None,
    split: str | None = None,
) -> Hints:
    """Command-line values replace the file's."""
    h = h or Hints()
    src = h.source
    if any(v is not None for v in (x, metrics, fit)):
        src = (src + " + " if src else "") + "command line"
    return Hints(
        x=normalise_x(x) if x else h.x,
        metrics=tuple(metrics) if metrics else h.metrics,
        split=split or h.split,
        fit=FIT_FORMS[fit] if fit else h.fit,
        baseline=h.baseline,
        trick=h.trick,
        source=src,
        ignored=h.ignored,
    )
