"""Where the streaming converter's negatives phase spends its time, on a raw Taobao UserBehavior log:
seconds per SQL statement, in the sampler's draws and in the parquet writes, summed over the rounds.

    python benchmarks/negatives_profile.py RAW_DIR --memory-limit 8GB --out FILE.json

RAW_DIR holds UserBehavior.csv (e.g. the log `benchmarks/data_scale.py --work DIR` generates, in
DIR/raw). The log is read into a DuckDB database in a temporary folder beside FILE (removed at the
end), then `stream.sample_negatives` runs as `convert taobao --opt engine=duckdb` runs it
(neg_ratio 4, whole-log popularity, seed 0), its connection, `Sampler.draw` and `PartWriter.write`
wrapped in timers. docs/data-module.md ("The 100M-row log, measured") has the figures.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness.data.converters import stream, stream_logs  # noqa: E402
from harness.data.converters.taobao import BEHAVIORS, description  # noqa: E402


class Timers(dict):
    def add(self, key: str, seconds: float) -> None:
        self[key] = self.get(key, 0.0) + seconds

    def wrap(self, key: str, fn):
        def timed(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.add(key, time.perf_counter() - t)

        return timed


class TimedConnection:
    """The DuckDB connection, each `execute` timed under its statement's first 60 characters."""

    def __init__(self, con, timers: Timers):
        self.con, self.timers = con, timers

    def execute(self, sql: str, *args):
        key = "sql: " + " ".join(sql.split())[:60]
        return self.timers.wrap(key, self.con.execute)(sql, *args)

    def __getattr__(self, name):
        return getattr(self.con, name)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("raw", type=Path, help="folder with UserBehavior.csv")
    p.add_argument("--memory-limit", default="4GB", help="DuckDB's memory_limit (as --opt)")
    p.add_argument("--out", type=Path, required=True, help="JSON of the timings")
    a = p.parse_args(argv)
    csv = a.raw / "UserBehavior.csv"
    if not csv.is_file():
        p.error(f"{csv} not found: RAW_DIR must hold the raw UserBehavior.csv")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".negatives-profile.", dir=a.out.parent))
    timers = Timers()
    draw, write = stream.Sampler.draw, stream.PartWriter.write
    try:
        con = stream.connect(work, stream.settings_for("taobao", a.memory_limit, None, None))
        t = time.perf_counter()
        log = stream_logs.load_taobao(
            con, csv, BEHAVIORS, lambda n: description(a.raw, n, 4, "popularity", 0, True)
        )
        read_s = time.perf_counter() - t
        stream.Sampler.draw = timers.wrap("draw", stream.Sampler.draw)
        stream.PartWriter.write = timers.wrap("parquet write", stream.PartWriter.write)
        t = time.perf_counter()
        stream.sample_negatives(
            TimedConnection(con, timers),
            work,
            neg_ratio=4,
            negatives="popularity",
            n_items=log.n_items,
            seed=0,
        )
        total = time.perf_counter() - t
        rows = con.execute("SELECT count(*) FROM neg").fetchone()[0]
        con.close()
    finally:
        stream.Sampler.draw, stream.PartWriter.write = draw, write
        shutil.rmtree(work, ignore_errors=True)
    out = {
        "raw": str(csv),
        "memory_limit": a.memory_limit,
        "read_s": round(read_s, 1),
        "negatives_s": round(total, 1),
        "negative_rows": rows,
        "seconds": {k: round(v, 3) for k, v in sorted(timers.items(), key=lambda kv: -kv[1])},
    }
    a.out.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
