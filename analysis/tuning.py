"""Tuned points: which candidate of each grid point's inner search the law is fitted on.

A sweep file's `tune:` block (harness/sweepfile.py, docs/sweeps.md) runs every grid point once per
candidate value of one run-config key (e.g. train.lr). Each candidate is an ordinary run; this module
decides, per point, which candidate the point stands for:

- the *point* of a run is its run config without the searched key, the seed and the labels (so the
  candidates and seeds of one grid point share it, whatever the runs are named);
- each candidate's score is its `by` metric (val split only: the test split never chooses) averaged
  over its finished seeds; a candidate with no finished seed with a finite value is *failed* and
  cannot be chosen;
- the best score wins (highest for AUC-like metrics, lowest for loglosses); exact ties go to the
  candidate listed first in the tune block, so the file's author decides (list the safer value first);
- the point is flagged at an *edge* when its winner is the smallest or the largest searched value
  (numeric order): the optimum may lie outside the range, which was too narrow to show it;
- the spread is the best minus the worst candidate score (how much the choice mattered).

The law is then fitted over the chosen runs (all seeds of the winner); `fixed=VALUE` keeps instead
every point's candidate at one value, which is the same sweep untuned, to show how much tuning moved
the law. Torch-free: reads result.json / config.yaml beside each run and the sweep file's copy in
<sweep folder>/.sweep/sweep.yaml.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from harness.config import RUN_ID_EXCLUDED
from harness.runstore import CONFIG, RESULT, SweepStore
from harness.sweepfile import SweepFileError, TuneSpec, _fmt, _short, lookup, parse_tune

from .collect import Collection

LOWER_IS_BETTER = ("ctr_logloss", "cvr_logloss")
POINT_COLUMNS = [
    "sweep",
    "point",
    "key",
    "by",
    "chosen",
    "score",
    "spread",
    "edge",
    "candidates",
    "failed",
    "seeds",
    "scores",
]


class TuningError(ValueError):
    """A tuned sweep that cannot be read, or a --tune-fixed value that is not a candidate."""


@dataclass(frozen=True, kw_only=True)
class Selection:
    """Per tuned point: the chosen candidate and why; `keep`: run ids the fits use; `drop`: the
    finished candidates left out of them."""

    points: pd.DataFrame  # POINT_COLUMNS, one row per (sweep, point)
    searches: dict[str, TuneSpec]  # sweep label -> its search
    keep: frozenset[str] = frozenset()
    drop: frozenset[str] = frozenset()
    fixed: Any = None  # the value every point was pinned to (None: tuned)
    notes: tuple[str, ...] = field(default_factory=tuple)

    def apply(self, collection: Collection) -> Collection:
        """The collection without the finished candidates that were not chosen (unfinished rows
        stay: the report lists them as it lists any failure)."""
        runs = collection.runs
        out = runs[~runs["run_id"].isin(self.drop)].reset_index(drop=True)
        return Collection(runs=out, roots=collection.roots, warnings=collection.warnings)


# ------------------------------------------------------------------------------------ reading


def _preset_of(folder: str, name: str, presets: dict) -> str | None:
    """A preset's runs land in <name>-<preset>/ (harness.sweepfile.sweep_dir_name)."""
    if folder != name and folder.startswith(f"{name}-") and folder[len(name) + 1 :] in presets:
        return folder[len(name) + 1 :]
    return None


def find_searches(run_dirs) -> tuple[dict[str, TuneSpec], list[str]]:
    """The tune block of every sweep folder holding runs, keyed by the folder name (the runs' sweep
    label): the file's copy in .sweep/sweep.yaml, the preset's block replacing the file's."""
    searches: dict[str, TuneSpec] = {}
    warnings: list[str] = []
    for parent in sorted({Path(d).parent for d in run_dirs}):
        f = SweepStore(parent).sweep_file
        if not f.exists():
            continue
        try:
            data = yaml.safe_load(f.read_text())
        except (OSError, yaml.YAMLError) as err:
            warnings.append(f"{f}: cannot read the sweep file copy ({err}); no tuning read")
            continue
        if not isinstance(data, dict):
            continue
        presets = data.get("presets") if isinstance(data.get("presets"), dict) else {}
        preset = _preset_of(parent.name, str(data.get("name", "")), presets)
        raw, where_key = data.get("tune"), "tune"
        if preset and isinstance(presets.get(preset), dict) and "tune" in presets[preset]:
            raw, where_key = presets[preset]["tune"], f"presets.{preset}.tune"
        try:
            spec = parse_tune(raw, where_key, f)
        except SweepFileError as err:
            raise TuningError(str(err)) from None
        if spec is not None:
            searches[parent.name] = spec
    return searches, warnings


def _config_of(run_dir: Path) -> dict | None:
    """The run's config: result.json's copy of a finished run, else config.yaml."""
    try:
        rec = json.loads((run_dir / RESULT).read_text())
        if isinstance(rec, dict) and isinstance(rec.get("config"), dict):
            return rec["config"]
    except (OSError, ValueError):
        pass
    try:
        cfg = yaml.safe_load((run_dir / CONFIG).read_text())
        return cfg if isinstance(cfg, dict) else None
    except (OSError, yaml.YAMLError):
        return None


# a key absent from a config (None is a value a config can hold, so it cannot mean absent)
_MISSING = object()


def point_of(config: dict, key: str) -> str:
    """What the candidates and seeds of one grid point share: the config without the searched key,
    the seed and what the run id leaves out (labels, cadences, resources), hashed."""
    d = json.loads(json.dumps(config, default=str))
    for path in [*RUN_ID_EXCLUDED, ("seed",), tuple(key.split("."))]:
        node = d
        for part in path[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(path[-1], None)
    blob = json.dumps(d, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def same_value(a: Any, b: Any) -> bool:
    """Candidate equality as YAML spells values: 1e-3 written 0.001 or 1.0e-3 is one value."""
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return not isinstance(a, bool) and not isinstance(b, bool) and math.isclose(a, b)
    return a == b or str(a) == str(b)


def _label(name: Any, key: str, value: Any) -> str:
    """A readable point label: the run name without its seed and its candidate part (as
    harness.sweepfile.expand writes them: '<point>-<key leaf><value>-s<seed>')."""
    if not isinstance(name, str) or not name:
        return ""
    name = re.sub(r"-s\d+$", "", name)
    if value is not None:
        part = f"-{_short(key)}{_fmt(value)}"
        name = name[: -len(part)] if name.endswith(part) else name
    return name


def candidates(runs: pd.DataFrame, searches: dict[str, TuneSpec]) -> pd.DataFrame:
    """One row per run of a tuned sweep: its point, candidate value (None: not a candidate of the
    current search), seed, status and score (the `by` metric, NaN unless finished)."""
    rows = []
    for r in runs.to_dict("records"):
        spec = searches.get(str(r.get("sweep")))
        if spec is None:
            continue
        cfg = _config_of(Path(r["run_dir"])) or {}
        got = lookup(cfg, spec.key, _MISSING)
        value = next((v for v in spec.values if got is not _MISSING and same_value(v, got)), None)
        score = r.get(spec.by)
        rows.append(
            {
                "run_id": r["run_id"],
                "sweep": str(r["sweep"]),
                "point": point_of(cfg, spec.key) if cfg else f"unknown:{r['run_id']}",
                "label": _label(r.get("name"), spec.key, value),
                "value": value,
                "in_search": value is not None,
                "seed": r.get("seed"),
                "status": r["status"],
                "score": float(score)
                if r["status"] == "done" and isinstance(score, (int, float))
                else np.nan,
            }
        )
    return pd.DataFrame(
        rows,
        columns=[
            "run_id",
            "sweep",
            "point",
            "label",
            "value",
            "in_search",
            "seed",
            "status",
            "score",
        ],
    )


# ---------------------------------------------------------------------------------- selection


def _edge(spec: TuneSpec, value: Any) -> str:
    """'low' / 'high' when the value is the smallest / largest searched (numeric order; file order
    for values that are not numbers), '' inside the range."""
    vals = list(spec.values)
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals)
    order = sorted(vals) if numeric else vals
    if len(order) < 2:
        return "low+high"  # one candidate: nothing was searched
    if same_value(value, order[0]):
        return "low"
    if same_value(value, order[-1]):
        return "high"
    return ""


def choose(scores: dict[Any, float], spec: TuneSpec) -> Any:
    """The winning value: best finite mean score; exact ties go to the first value of the search.
    None when no candidate has a finite score."""
    sign = 1.0 if spec.metric in LOWER_IS_BETTER else -1.0
    best, best_key = None, None
    for v in spec.values:  # file order: a later equal score never displaces an earlier one
        s = scores.get(_key(v), np.nan)
        if not np.isfinite(s):
            continue
        k = sign * s
        if best_key is None or k < best_key:
            best, best_key = v, k
    return best


def _key(v: Any) -> str:
    return repr(float(v)) if isinstance(v, (int, float)) and not isinstance(v, bool) else repr(v)


def _natural(text: str) -> list:
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", text)]


def select(runs: pd.DataFrame, searches: dict[str, TuneSpec], *, fixed: Any = None) -> Selection:
    """Choose every tuned point's candidate (or pin them all to `fixed`)."""
    cands = candidates(runs, searches)
    cands["in_search"] = cands["in_search"].astype(bool)  # an empty frame's column is object
    notes: list[str] = []
    if fixed is not None:
        for sweep, spec in searches.items():
            if not any(same_value(v, fixed) for v in spec.values):
                raise TuningError(
                    f"--tune-fixed {fixed!r}: not a candidate of {sweep}'s search of {spec.key} "
                    f"(candidates: {', '.join(map(str, spec.values))})"
                )
    outside = cands[~cands["in_search"] & (cands["status"] == "done")]
    if len(outside):
        notes.append(
            f"{len(outside)} finished run(s) of a tuned sweep have a value of the searched key "
            "outside the current search; left out of the fits"
        )
    rows, keep, drop = [], set(), set(outside["run_id"])
    for (sweep, point), g in cands[cands["in_search"]].groupby(["sweep", "point"], sort=True):
        spec = searches[sweep]
        scores, seeds, failed = {}, {}, []
        for v in spec.values:
            gv = g[g["value"].map(lambda x, v=v: same_value(x, v))]
            ok = gv[(gv["status"] == "done") & np.isfinite(gv["score"].to_numpy(float))]
            scores[_key(v)] = float(ok["score"].mean()) if len(ok) else np.nan
            seeds[_key(v)] = len(ok)
            if len(gv) and not len(ok):
                failed.append(v)
        finite = [s for s in scores.values() if np.isfinite(s)]
        chosen = fixed if fixed is not None else choose(scores, spec)
        chosen = next((v for v in spec.values if same_value(v, chosen)), chosen)
        done = g[g["status"] == "done"]
        pick = (
            done["value"].map(lambda x, c=chosen: same_value(x, c))
            if chosen is not None
            else pd.Series(False, index=done.index)
        )
        keep |= set(done.loc[pick, "run_id"])
        drop |= set(done.loc[~pick, "run_id"])
        label = next((x for x in g["label"] if x), point)
        rows.append(
            {
                "sweep": sweep,
                "point": label,
                "key": spec.key,
                "by": spec.by,
                "chosen": chosen,
                "score": scores.get(_key(chosen), np.nan) if chosen is not None else np.nan,
                "spread": (max(finite) - min(finite)) if len(finite) >= 2 else np.nan,
                "edge": _edge(spec, chosen) if chosen is not None and fixed is None else "",
                "candidates": len(spec.values),
                "failed": ", ".join(map(str, failed)),
                "seeds": ", ".join(f"{v}: {seeds[_key(v)]}" for v in spec.values),
                "scores": ", ".join(
                    f"{v}: {scores[_key(v)]:.4f}" if np.isfinite(scores[_key(v)]) else f"{v}: -"
                    for v in spec.values
                ),
            }
        )
        if chosen is None:
            notes.append(
                f"{sweep} {label}: no candidate finished with a finite {spec.by}; the point is "
                "left out of the fits"
            )
    # points in reading order: by sweep, then the label's numbers as numbers (len8 before len12)
    rows.sort(key=lambda r: (r["sweep"], _natural(str(r["point"]))))
    return Selection(
        points=pd.DataFrame(rows, columns=POINT_COLUMNS),
        searches=searches,
        keep=frozenset(keep),
        drop=frozenset(drop),
        fixed=fixed,
        notes=tuple(notes),
    )


# ---------------------------------------------------------------------------------- reporting


def sentences(sel: Selection) -> list[str]:
    """What the report says about the search, one line per tuned sweep."""
    out = []
    for sweep, spec in sel.searches.items():
        pts = sel.points[sel.points["sweep"] == sweep]
        if sel.fixed is not None:
            out.append(
                f"{sweep}: {spec.key} pinned to {sel.fixed} at every point (--tune-fixed): the "
                f"law below is the untuned one at that value, not the tuned law."
            )
            continue
        chosen = ", ".join(f"{p.point}: {p.chosen}" for p in pts.itertuples())
        edges = pts[pts["edge"] != ""]
        line = (
            f"{sweep}: {spec.key} searched over [{', '.join(map(str, spec.values))}] at "
            f"{len(pts)} point(s), each point's candidate chosen by its mean {spec.by} over "
            f"seeds (ties to the first listed); chosen {chosen}."
        )
        if len(edges):
            line += (
                f" **{len(edges)} point(s) chose an edge of the search** ("
                + ", ".join(f"{p.point}: {p.chosen}, {p.edge}" for p in edges.itertuples())
                + "): the best value may lie outside the range; widen it there."
            )
        spreads = pts["spread"].dropna()
        if len(spreads):
            line += (
                f" The choice mattered by up to {spreads.max():.4f} {spec.metric} "
                f"(best minus worst candidate, median {spreads.median():.4f})."
            )
        out.append(line)
    return out + list(sel.notes)


def slope_shift(runs: pd.DataFrame, sel_by_value: dict[str, Selection], settings):
    """The log-linear law on training FLOPs of each tuned sweep's `by` metric (its test value when
    the runs have one) per selection (tuned, and each fixed value), per sweep and model: how much
    tuning moved the law. Rows: sweep, model, selection, slope per doubling and its CI."""
    from .fit import fit

    rows = []
    done = runs[runs["status"] == "done"]
    for label, sel in sel_by_value.items():
        for sweep, spec in sel.searches.items():
            metric = spec.metric
            d = done[(done["sweep"] == sweep) & done["run_id"].isin(sel.keep)]
            for model, g in d.groupby("model"):
                x = pd.to_numeric(g["train_flops"], errors="coerce").to_numpy(float)
                col = f"test.{metric}" if f"test.{metric}" in g else f"val.{metric}"
                if col not in g:
                    continue
                y = g[col].to_numpy(float)
                ok = np.isfinite(x) & np.isfinite(y) & (x > 0)
                if len(np.unique(x[ok])) < settings.min_loglinear_x:
                    continue
                try:
                    f = fit(x[ok], y[ok], x[ok], form="loglinear", settings=settings)
                except ValueError:
                    continue
                lo, hi = f.ci["b_per_doubling"]
                rows.append(
                    {
                        "sweep": sweep,
                        "model": model,
                        "selection": label,
                        "metric": col,
                        "per 2x FLOPs": f.params["b_per_doubling"],
                        "lo": lo,
                        "hi": hi,
                        "configs": f.n_configs,
                    }
                )
    return pd.DataFrame(
        rows,
        columns=["sweep", "model", "selection", "metric", "per 2x FLOPs", "lo", "hi", "configs"],
    )


@dataclass(frozen=True, kw_only=True)
class TuningReport:
    """What the report shows of the tuned sweeps: the selection the fits use, and the law under
    each selection (tuned, and every fixed value) to show how much tuning moved it."""

    selection: Selection
    shift: pd.DataFrame
    lines: list[str]


def parse_fixed(text: str | None) -> Any:
    """--tune-fixed as a number when it spells one (YAML would read 1e-3 as a string)."""
    if text is None:
        return None
    try:
        return float(text) if re.fullmatch(r"[-+0-9.eE]+", text.strip()) else yaml.safe_load(text)
    except ValueError:
        return text


def tuned_points(
    collection: Collection, fixed_text: str | None = None, settings=None
) -> tuple[TuningReport | None, list[str]]:
    """The tuned sweeps among the collected runs (None when there are none) and warnings."""
    from .fit import FitSettings

    settings = settings or FitSettings()
    runs = collection.runs
    searches, warnings = find_searches(runs["run_dir"])
    fixed = parse_fixed(fixed_text)
    if not searches:
        if fixed is not None:
            raise TuningError(
                "--tune-fixed: none of these sweeps has a `tune:` block (docs/sweeps.md); drop "
                "the option"
            )
        return None, warnings
    sel = select(runs, searches, fixed=fixed)
    variants = {"tuned": sel if fixed is None else select(runs, searches)}
    for spec in searches.values():
        for v in spec.values:
            label = f"fixed {v}"
            if label not in variants:
                variants[label] = select(runs, searches, fixed=v)
    shift = slope_shift(runs, variants, settings)
    lines = sentences(sel)
    for (sweep, model), g in shift.groupby(["sweep", "model"], sort=True):
        parts = [
            f"{r['selection']} {r['per 2x FLOPs']:+.4f} [{r['lo']:+.4f}, {r['hi']:+.4f}]"
            for r in g.to_dict("records")
        ]
        lines.append(
            f"{sweep}/{model}: {g['metric'].iloc[0]} per doubling of training FLOPs (log-linear, "
            f"95% CI) under each selection: {'; '.join(parts)}."
        )
    return TuningReport(selection=sel, shift=shift, lines=lines), warnings
