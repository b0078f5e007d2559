"""The run folder (docs/contracts.md §4): paths, atomic writes, status.json, the DONE marker.

    <runs>/<sweep>/<run_id>/
      config.yaml  provenance.json  status.json  metrics.csv  result.json  checkpoints/  logs/  DONE

Every JSON/YAML file is written to a temporary sibling and renamed into place, so a reader (the
sweep's status view, analysis) never sees half a file, and a kill at any instant leaves either
the old or the new version. DONE is written last, after result.json, and only by finish().
This module imports no torch: the sweep dispatcher and analysis can use it freely.
"""
from __future__ import annotations

import csv
import datetime as _dt
import json
import math
import os
from pathlib import Path
from typing import Any

CONFIG = "config.yaml"
PROVENANCE = "provenance.json"
STATUS = "status.json"
METRICS = "metrics.csv"
RESULT = "result.json"
DONE = "DONE"
CHECKPOINTS = "checkpoints"
LOGS = "logs"
LAST_CKPT = "last.ckpt"
RESULT_SCHEMA = 1


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _clean(x: Any) -> Any:
    """JSON-safe: NaN/inf -> null (strict JSON has no NaN), tuples -> lists, numpy scalars -> Python."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if hasattr(x, "item") and callable(x.item) and getattr(x, "ndim", 1) == 0:
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(_clean(obj), indent=2, allow_nan=False) + "\n")


def run_dir_for(runs_dir: str | Path, sweep: str, rid: str) -> Path:
    return Path(runs_dir) / sweep / rid


class RunStore:
    """One run folder."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    # paths
    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def last_ckpt(self) -> Path:
        return self.checkpoints / LAST_CKPT

    @property
    def logs(self) -> Path:
        return self.path / LOGS

    def create(self) -> None:
        for p in (self.path, self.checkpoints, self.logs):
            p.mkdir(parents=True, exist_ok=True)

    # state
    def is_done(self) -> bool:
        return (self.path / DONE).exists() and (self.path / RESULT).exists()

    def read_json(self, name: str) -> dict | None:
        p = self.path / name
        return json.loads(p.read_text()) if p.exists() else None

    def result(self) -> dict | None:
        return self.read_json(RESULT)

    def status(self) -> dict | None:
        return self.read_json(STATUS)

    def write_status(self, state: str, *, error: str | None = None, new_attempt: bool = False, **extra) -> dict:
        """state: running | done | failed. `attempts` counts starts of this run (resumes included)."""
        old = self.status() or {}
        attempts = int(old.get("attempts", 0)) + (1 if new_attempt else 0)
        status = {"state": state, "updated": now_iso(), "attempts": attempts, "error": error, **extra}
        if "jobs" in old and "jobs" not in extra:
            status["jobs"] = old["jobs"]    # scheduler job ids mirrored by the sweep dispatcher
        atomic_write_json(self.path / STATUS, status)
        return status

    def write_json(self, name: str, obj: Any) -> None:
        atomic_write_json(self.path / name, obj)

    def write_text(self, name: str, text: str) -> None:
        atomic_write_text(self.path / name, text)

    def finish(self, result: dict) -> None:
        """result.json, then status done, then DONE (last, atomically)."""
        self.write_json(RESULT, result)
        self.write_status("done")
        atomic_write_text(self.path / DONE, now_iso() + "\n")


class MetricsCsv:
    """metrics.csv in long form, one row per (step, metric): `step,metric,value,time`.

    Long form keeps appends valid whatever the metrics of a row are. On resume, rows logged after
    the checkpoint being resumed from (step > resume_step) are dropped, so the file of a resumed
    run matches that of an uninterrupted one (wall times aside)."""

    FIELDS = ("step", "metric", "value", "time")

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def truncate_after(self, step: int) -> None:
        if not self.path.exists():
            return
        with open(self.path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if int(r["step"]) <= step]
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, self.FIELDS)
            w.writeheader()
            w.writerows(rows)
        os.replace(tmp, self.path)

    def append(self, step: int, metrics: dict[str, float]) -> None:
        new = not self.path.exists()
        t = round(_dt.datetime.now().timestamp(), 3)
        with open(self.path, "a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(self.FIELDS)
            for k, v in metrics.items():
                w.writerow((step, k, repr(float(v)), t))

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        with open(self.path, newline="") as f:
            return [{"step": int(r["step"]), "metric": r["metric"], "value": float(r["value"])}
                    for r in csv.DictReader(f)]
