"""Tables as folders of part files (events/part-*.parquet, as Spark, Hive or DuckDB write them):
validate, stats and training read them as one table with the same results as single files; an
empty parts folder, parts with different schemas or a table stored twice are clear errors; the
DuckDB recipe of docs/data-contract.md produces a valid contract folder."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from harness.config import run_id
from harness.data.contract import (
    EVENTS,
    IMPRESSIONS,
    ContractError,
    Manifest,
    read_table,
    table_files,
    table_source,
)
from harness.data.prepared import prepare
from harness.data.stats import compute_stats
from harness.data.validate import errors, validate
from harness.train import train_run
from tests import train_support as S

REPO = Path(__file__).resolve().parents[1]


def split_into_parts(src: Path, dst: Path, n_parts: int = 3) -> Path:
    """A copy of `src` whose events and impressions are folders of `n_parts` parts each, cut at
    arbitrary rows (a request or a user may straddle two parts, as in an engine's output), with
    the bookkeeping files engines write beside them."""
    shutil.copytree(src, dst)
    for name in (EVENTS, IMPRESSIONS):
        t = pq.read_table(dst / name)
        (dst / name).unlink()
        parts = dst / name.removesuffix(".parquet")
        parts.mkdir()
        cuts = np.linspace(0, t.num_rows, n_parts + 1).astype(int)
        for i, (a, b) in enumerate(zip(cuts[:-1], cuts[1:])):
            pq.write_table(t.slice(a, b - a), parts / f"part-{i:05d}-c000.snappy.parquet")
        (parts / "_SUCCESS").write_text("")  # Spark's marker: not data
        (parts / ".part-00000-c000.snappy.parquet.crc").write_bytes(b"x")  # Hadoop checksum
    return dst


@pytest.fixture(scope="module")
def parted(world, tmp_path_factory) -> Path:
    return split_into_parts(world, tmp_path_factory.mktemp("parted") / "tiny")


def test_parts_validate_and_give_the_same_stats_and_arrays(world, parted):
    assert table_source(parted, EVENTS) == parted / "events"
    assert len(table_files(parted / "events")) == 3
    assert errors(validate(parted)) == []
    assert compute_stats(parted) == compute_stats(world)
    m = Manifest.load(world)
    a, b = prepare(world, m), prepare(parted, m)
    assert np.array_equal(a.req_start.numpy(), b.req_start.numpy())
    for k in a.imp:
        assert np.array_equal(a.imp[k].numpy(), b.imp[k].numpy()), k


@pytest.mark.usefixtures("stand_in")
def test_parts_train_to_the_same_metrics(world, parted, tmp_path):
    results = []
    for folder in (world, parted):
        cfg = S.make_cfg(folder, steps=4, ckpt_every=4, log_every=2)
        results.append(train_run(cfg, tmp_path / run_id(cfg)))
    assert results[0]["metrics"] == results[1]["metrics"]
    assert results[0]["train"]["samples"] == results[1]["train"]["samples"]


def test_parts_are_read_in_natural_name_order(tmp_path):
    """DuckDB names parts data_0 .. data_10: string order would read data_10 before data_2."""
    parts = tmp_path / "events"
    parts.mkdir()
    for i in range(12):
        pq.write_table(pa.table({"x": [i]}), parts / f"data_{i}.parquet")
    assert read_table(parts).column("x").to_pylist() == list(range(12))


def test_empty_parts_folder_is_a_clear_error(world, tmp_path):
    ds = split_into_parts(world, tmp_path / "ds")
    for p in (ds / "impressions").glob("*.parquet"):
        p.unlink()
    v = [x for x in validate(ds) if x.kind == "parts"]
    assert len(v) == 1 and v[0].file == IMPRESSIONS
    assert "impressions/" in v[0].message and "without any *.parquet" in v[0].message
    assert "part-*.parquet" in v[0].fix
    with pytest.raises(ContractError, match=r"impressions/: a folder of parts without any"):
        prepare(ds, Manifest.load(ds))


def test_part_with_another_schema_is_named_with_the_fix(world, tmp_path):
    ds = split_into_parts(world, tmp_path / "ds")
    part = sorted((ds / "events").glob("part-*.parquet"))[1]
    t = pq.read_table(part)
    pq.write_table(t.set_column(t.schema.get_field_index("ts"), "ts", t["ts"].cast("double")), part)
    v = [x for x in validate(ds) if x.kind == "parts"]
    assert len(v) == 1 and v[0].file == EVENTS
    assert part.name in v[0].message and "'ts' is int64" in v[0].message
    assert "double here" in v[0].message and "CAST" in v[0].fix
    with pytest.raises(ContractError, match=re.escape(part.name)):
        compute_stats(ds)


def test_a_table_stored_as_file_and_parts_is_ambiguous(world, tmp_path):
    ds = split_into_parts(world, tmp_path / "ds")
    shutil.copy(world / EVENTS, ds / EVENTS)
    v = [x for x in validate(ds) if x.kind == "parts"]
    assert len(v) == 1 and "both events.parquet and events/" in v[0].message


def _recipe_sql() -> list[str]:
    """The SQL statements of the DuckDB recipe in docs/data-contract.md (the ```sql block)."""
    doc = (REPO / "docs" / "data-contract.md").read_text()
    block = re.search(r"```sql\n(.*?)```", doc, re.S)
    assert block, "docs/data-contract.md lost its DuckDB recipe"
    body = "\n".join(line for line in block.group(1).splitlines() if not line.startswith("--"))
    return [s.strip() for s in body.split(";") if s.strip()]


def test_duckdb_recipe_of_the_docs_writes_a_valid_contract(world, tmp_path, monkeypatch):
    """A warehouse-like table (one row per logged action, string behaviour names, raw ids, a
    shown-candidates table) turned into a contract folder by the documented SQL, run as is."""
    duckdb = pytest.importorskip("duckdb")
    ev = pq.read_table(world / EVENTS).to_pandas()
    im = pq.read_table(world / IMPRESSIONS).to_pandas()
    m = Manifest.load(world)
    names = dict(zip([b.id for b in m.behaviors], [b.name for b in m.behaviors]))
    con = duckdb.connect()
    con.execute("SET threads = 2")  # several threads, so PER_THREAD_OUTPUT writes several parts
    log = ev.assign(behavior_name=ev["behavior"].map(names), event_time=ev["ts"]).drop(
        columns=["behavior", "ts"]
    )
    shown = im.rename(columns={"ts": "request_time"}).drop(columns=["split"])
    con.register("log_df", log)
    con.register("shown_df", shown)
    con.execute("CREATE TABLE warehouse_log AS SELECT * FROM log_df")
    con.execute("CREATE TABLE warehouse_shown AS SELECT * FROM shown_df")
    out = tmp_path / "ds"
    out.mkdir()
    shutil.copy(world / "manifest.yaml", out / "manifest.yaml")
    for f in ("users.parquet", "items.parquet"):
        if (world / f).exists():
            shutil.copy(world / f, out / f)
    monkeypatch.chdir(out)  # the recipe writes relative to the dataset folder
    behaviors = ", ".join(f"('{b.name}', {b.id})" for b in m.behaviors)
    for sql in _recipe_sql():
        con.execute(
            sql.replace("VAL_START_TS", str(m.split.val_start_ts))
            .replace("TEST_START_TS", str(m.split.test_start_ts))
            .replace("('click', 1), ('cart', 2), ('purchase', 3)", behaviors)
        )
    assert table_source(out, EVENTS) == out / "events" and not (out / EVENTS).exists()
    assert errors(validate(out)) == []
    assert compute_stats(out) == compute_stats(world)
