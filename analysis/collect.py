"""Collect the run folders of one or more sweeps into one pandas table.

A run folder is any directory holding `result.json`, `status.json` or `config.yaml`
(docs/contracts.md §4). Finished runs (DONE + result.json) become rows with their metrics;
failed, running and incomplete runs become rows too, with `status` and `error` filled, so that
nothing is silently dropped: the report lists them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from harness.runstore import (
    CONFIG,
    RESULT,
    RUN_MARKERS,
    STATUS,
    MetricsCsv,
    RunStore,
    SweepStore,
)

SPLITS = ("test", "val")


class CollectError(ValueError):
    """A runs directory or result.json that cannot be read; the message names file, field and fix."""


@dataclass(frozen=True, kw_only=True)
class Collection:
    runs: pd.DataFrame  # one row per run folder (finished or not)
    roots: tuple[str, ...] = ()
    warnings: tuple[str, ...] = field(default_factory=tuple)

    @property
    def done(self) -> pd.DataFrame:
        return self.runs[self.runs["status"] == "done"]

    @property
    def problems(self) -> pd.DataFrame:
        return self.runs[self.runs["status"] != "done"]


def find_run_dirs(root: Path) -> list[Path]:
    """Every directory under root (root included) that looks like a run folder, sorted."""
    found = {p.parent for marker in RUN_MARKERS for p in root.rglob(marker)}
    # checkpoints/ or logs/ never hold these files, so no nested false positives to remove
    return sorted(found)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CollectError(
            f"{path}: not valid JSON ({err}); fix or delete the file and rerun the run"
        ) from err
    except OSError as err:
        raise CollectError(f"{path}: cannot be read ({err})") from err


def _flatten(result: dict, path: Path) -> dict:
    """One flat row from a result record (contracts.md §5)."""
    for key in ("run_id", "model", "metrics"):
        if key not in result:
            raise CollectError(
                f"{path}: field {key!r} missing; result.json must follow docs/contracts.md §5"
            )
    row: dict = {
        k: result.get(k)
        for k in ("run_id", "name", "sweep", "axis", "model", "size", "seed", "protocol")
    }
    row["status"] = "done"
    row["error"] = None
    for name, value in (result.get("axes") or {}).items():
        row[f"axes.{name}"] = value
    _variant_label(row)
    for split, metrics in (result.get("metrics") or {}).items():
        for name, value in (metrics or {}).items():
            row[f"{split}.{name}"] = _num(value)
    for split, metrics in (result.get("oracle") or {}).items():
        for name, value in (metrics or {}).items():
            row[f"oracle.{split}.{name}"] = _num(value)
    for group in ("params", "flops", "train", "throughput", "memory", "latency"):
        for name, value in (result.get(group) or {}).items():
            row[f"{group}.{name}"] = _num(value)
    row["mfu"] = _num(result.get("mfu"))
    row["wall_time_s"] = _num(result.get("wall_time_s"))
    # one training-FLOPs axis for every run (contracts.md §5: train_total, else per-example x samples)
    total = row.get("flops.train_total")
    if total is None or not np.isfinite(total):
        per_ex, samples = row.get("flops.train_per_example"), row.get("train.samples")
        total = per_ex * samples if per_ex is not None and samples is not None else np.nan
    row["train_flops"] = total
    return row


def _variant_label(row: dict) -> None:
    """Ablation/efficiency sweeps (axis 'variant') name runs '<variant>-s<seed>' (harness/sweepfile.py,
    zip column `_name`); result.json 'axes' holds only model sizes, so the variant comes from the name."""
    if row.get("axis") == "variant" and "axes.variant" not in row and row.get("name"):
        row["axes.variant"] = re.sub(r"-s\d+$", "", str(row["name"]))


def _num(value) -> float:
    return (
        float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else np.nan
    )


def _read_run(run_dir: Path) -> dict:
    """One row per run folder. A file that cannot be read never aborts the collection: the row gets
    status 'corrupt' and the error names the file (the report lists it, the CLI exit code says so)."""
    store = RunStore(run_dir)  # the run store defines the folder's files and what "done" is
    status_path, result_path = store / STATUS, store / RESULT
    status_error = None
    try:
        status = _read_json(status_path) if status_path.exists() else {}
        if not isinstance(status, dict):
            raise CollectError(
                f"{status_path}: expected a JSON object, got {type(status).__name__}"
            )
    except CollectError as err:
        status, status_error = {}, str(err)
    if store.marked_done():  # a damaged result.json beside DONE is listed as corrupt, named
        try:
            result = _read_json(result_path)
            if not isinstance(result, dict):
                raise CollectError(
                    f"{result_path}: expected a JSON object, got {type(result).__name__}"
                )
            row = _flatten(result, result_path)
        except (TypeError, AttributeError) as err:
            row = {
                "run_id": run_dir.name,
                "name": None,
                "status": "corrupt",
                "error": f"{result_path}: malformed record ({type(err).__name__}: {err}); "
                "result.json must follow docs/contracts.md §5",
            }
            row.update(_labels_from_config(store / CONFIG))
        except CollectError as err:
            row = {
                "run_id": run_dir.name,
                "name": None,
                "status": "corrupt",
                "error": str(err),
                "attempts": status.get("attempts"),
            }
            row.update(_labels_from_config(store / CONFIG))
            _variant_label(row)
    else:
        # not finished: keep the row, say why, take labels from whatever is there
        state = status.get("state") or ("incomplete" if result_path.exists() else "missing")
        if result_path.exists() and state == "done":
            state = "incomplete"
        reason = status.get("error") or (
            "result.json present but no DONE marker (run interrupted while writing)"
            if result_path.exists()
            else "no result.json" + ("" if status else " and no status.json")
        )
        row = {
            "run_id": run_dir.name,
            "name": None,
            "status": state,
            "error": reason,
            "attempts": status.get("attempts"),
        }
        row.update(_labels_from_config(store / CONFIG))
        _variant_label(row)
        if result_path.exists():
            try:
                partial = _read_json(result_path)
                row.update(
                    {
                        k: partial.get(k)
                        for k in ("name", "sweep", "axis", "model", "size", "seed")
                        if partial.get(k) is not None
                    }
                )
            except CollectError as err:
                row["error"] = f"{reason}; {err}"
    if status_error and row["status"] == "done":
        row["_warning"] = f"{status_error} (the run's result.json is fine and is used)"
    elif status_error:
        row["error"] = f"{row.get('error')}; {status_error}"
    if row["status"] != "done" and not row.get("sweep"):
        row["sweep"] = run_dir.parent.name  # runs land in <runs>/<sweep>/<run_id>/
    parent = run_dir.parent
    if SweepStore(parent).is_sweep_folder() and row.get("sweep") and row["sweep"] != parent.name:
        # A finished run copied into another sweep's folder (docs/sweeps.md: a tuned sweep reuses
        # the untuned sweep's runs of the same id). Its id says it is the same computation and the
        # driver counts it as done there, so the analysis must group it with that sweep too, not
        # under the label of the sweep that first trained it.
        row["copied_from_sweep"] = row["sweep"]
        row["sweep"] = parent.name
    row["run_dir"] = str(run_dir)
    return row


def _labels_from_config(path: Path) -> dict:
    """sweep / axis / model / seed labels of an unfinished run, read from its config.yaml if present."""
    if not path.exists():
        return {}
    import yaml

    try:
        cfg = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        return {}
    model = cfg.get("model") if isinstance(cfg.get("model"), dict) else {}
    out = {
        "sweep": cfg.get("sweep"),
        "axis": cfg.get("axis"),
        "name": cfg.get("name"),
        "seed": cfg.get("seed"),
        "model": model.get("name"),
        "size": model.get("size"),
    }
    return {k: v for k, v in out.items() if v is not None}


def collect(roots: list[str | Path]) -> Collection:
    """Read every run folder below each root. Raises CollectError if a root does not exist or is empty."""
    rows, warnings = [], []
    for root in map(Path, roots):
        if not root.is_dir():
            raise CollectError(
                f"{root}: not a directory; pass the runs folder of a sweep (e.g. runs/length)"
            )
        run_dirs = find_run_dirs(root)
        if not run_dirs:
            raise CollectError(
                f"{root}: no run folders (no result.json, status.json or config.yaml below it); "
                "is this the right runs directory?"
            )
        rows.extend(_read_run(d) for d in run_dirs)
    warnings += [r.pop("_warning") for r in rows if "_warning" in r]
    runs = pd.DataFrame(rows)
    for col in ("sweep", "axis", "model", "size", "name", "error", "seed"):
        if col not in runs:
            runs[col] = None
    dup = runs[runs["status"] == "done"].duplicated(["run_id"], keep="first")
    if dup.any():
        warnings.append(
            f"{int(dup.sum())} duplicate run ids (same run collected twice); kept the first of each"
        )
        runs = runs.drop(index=runs[runs["status"] == "done"].index[dup])
    order = ["sweep", "model", "axis", "run_id"]
    runs = runs.sort_values(order, na_position="last", key=lambda s: s.astype(str)).reset_index(
        drop=True
    )
    return Collection(runs=runs, roots=tuple(str(r) for r in roots), warnings=tuple(warnings))


def metric_split(runs: pd.DataFrame) -> str:
    """The split to analyse: test when finished runs have test metrics, else val."""
    for split in SPLITS:
        if any(c.startswith(f"{split}.") and runs[c].notna().any() for c in runs.columns):
            return split
    raise CollectError("no finished run has test or val metrics in result.json['metrics']")


def x_value(runs: pd.DataFrame, axis: str) -> pd.Series:
    """The x-values of an axis: 'train_flops', or a key of result.json['axes']."""
    col = axis if axis == "train_flops" else f"axes.{axis}"
    if col not in runs:
        raise CollectError(
            f"axis {axis!r}: no column {col!r}; result.json['axes'] must hold the swept value"
        )
    return pd.to_numeric(runs[col], errors="coerce")


def read_metrics_csv(path: Path) -> pd.DataFrame | None:
    """metrics.csv as a wide frame (step + one column per metric, the last value logged at each
    step). The run store reads the file (harness/runstore.py MetricsCsv.records: the harness's long
    form `step,metric,value,time`, or the wide form of Lightning's CSVLogger); a value that is not
    a number becomes NaN. None when the file cannot be read or has no step column (the report
    just omits the run's curves)."""
    records = MetricsCsv(path).records()
    if records is None:
        return None
    long = pd.DataFrame(
        [(step, metric, metric_value(v)) for step, metric, v in records],
        columns=["step", "metric", "value"],
    )
    if long.empty:
        return pd.DataFrame(columns=["step"])
    wide = long.pivot_table(
        index="step", columns="metric", values="value", aggfunc="last"
    ).reset_index()
    wide.columns.name = None
    return wide


def metric_value(text: str) -> float:
    """A logged value as written in metrics.csv; NaN when it is not a number (a damaged cell)."""
    try:
        return float(text)
    except ValueError:
        return float("nan")
