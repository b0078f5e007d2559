"""data.storage=mapped (harness/data/mapped.py): the prepared arrays built batch by batch on disk and
memory-mapped are the in-memory set-up's arrays (ids, labels, offsets and events exactly; the
standardised numerics to float32 rounding), give the same batches and the same training run,
whatever the batch size of the build, single files or part files; bad input gets the in-memory
set-up's messages; a build is reused, rebuilt when the dataset changes, and an interrupted build
leaves nothing that is read as finished. Also the request-level epoch plan against the plain
per-impression plan it replaces."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import harness.data.keyed as keyed
from harness.config import apply_overrides, run_id
from harness.data import mapped
from harness.data.contract import ContractError, Manifest
from harness.data.datamodule import OneTransDataModule, plan_batches, plan_epoch
from harness.data.prepared import prepare
from harness.train import train_run
from tests import train_support as S
from tests.data_support import write_tiny_folder
from tests.test_data_module import _broken_copy
from tests.test_data_parts import split_into_parts


def entries(root: Path) -> list[Path]:
    """What a build left under its root, but the builders' lock files."""
    return sorted(p for p in root.iterdir() if not p.name.endswith(".lock"))


def assert_same_prepared(a, b) -> None:
    assert sorted(a.imp) == sorted(b.imp)
    for k in a.imp:
        x, y = a.imp[k].numpy(), b.imp[k].numpy()
        assert x.shape == y.shape, k
        if k == "ns_num":  # train mean/std summed by batch: equal up to float32 rounding
            np.testing.assert_allclose(x, y, rtol=0, atol=2e-6)
        else:
            assert np.array_equal(x, y), k
    for k in ("imp_req", "req_lo", "req_hi"):
        assert np.array_equal(getattr(a, k), getattr(b, k)), k
    for k in ("req_start", "req_end", "req_ts"):
        assert torch.equal(getattr(a, k), getattr(b, k)), k
    assert torch.equal(a.events.table, b.events.table)
    assert (a.events.ts_base, a.events.n_events) == (b.events.ts_base, b.events.n_events)
    for s in a.split_requests:
        assert np.array_equal(a.split_requests[s], b.split_requests[s]), s
    np.testing.assert_allclose(a.num_mean, b.num_mean, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(a.num_std, b.num_std, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("batch_rows", [5, 64, 1 << 20])
def test_mapped_arrays_equal_the_in_memory_ones(tmp_path, monkeypatch, seed, batch_rows):
    # fresh random folders; batches of 5 rows cut almost every request and user across batches
    folder = write_tiny_folder(
        tmp_path / "ds", seed=seed, n_users=9 + seed, n_events=300 + 50 * seed, max_per_request=5
    )
    m = Manifest.load(folder)
    ref = prepare(folder, m)
    monkeypatch.setattr(keyed, "BATCH_ROWS", batch_rows)
    assert_same_prepared(ref, mapped.prepare_mapped(folder, m, tmp_path / "prep", progress=False))


def test_part_files_and_a_synthetic_world(world, tmp_path, monkeypatch):
    monkeypatch.setattr(keyed, "BATCH_ROWS", 100)
    parted = split_into_parts(world, tmp_path / "parted")
    m = Manifest.load(world)
    ref = prepare(world, m)
    assert_same_prepared(ref, mapped.prepare_mapped(world, m, tmp_path / "prep", progress=False))
    assert_same_prepared(ref, mapped.prepare_mapped(parted, m, tmp_path / "prep", progress=False))


@pytest.mark.parametrize("batching", ["requests", "fixed"])
def test_same_batches_every_split(tmp_path, batching):
    folder = write_tiny_folder(tmp_path / "ds", seed=5)
    kw = dict(seq_len=6, batch_size=9, batching=batching, chronological=False)
    a = OneTransDataModule(folder, **kw)
    b = OneTransDataModule(folder, storage="mapped", mapped_dir=tmp_path / "prep", **kw)
    for split in ("train", "val", "test"):
        for epoch in (0, 1):
            la, lb = a.loader(split), b.loader(split)
            la.sampler.set_epoch(epoch)
            lb.sampler.set_epoch(epoch)
            ba, bb = list(la), list(lb)
            assert len(ba) == len(bb) > 0
            for x, y in zip(ba, bb):
                assert sorted(x) == sorted(y)
                for k in x:
                    if k == "ns_num":
                        torch.testing.assert_close(x[k], y[k], rtol=0, atol=2e-6)
                    else:
                        assert torch.equal(x[k], y[k]), (split, epoch, k)


@pytest.mark.usefixtures("stand_in")
def test_a_training_run_is_the_same(world, tmp_path):
    cfg = S.make_cfg(world, steps=4, ckpt_every=4, log_every=2, **{"data.cache_dir": str(tmp_path)})
    cfg_m = apply_overrides(cfg, {"data.storage": "mapped"})
    assert run_id(cfg) == run_id(cfg_m)  # how the data is held, not what the run computes
    a = train_run(cfg, tmp_path / "memory" / run_id(cfg))
    b = train_run(cfg_m, tmp_path / "mapped" / run_id(cfg))
    assert list((tmp_path / "prepared").iterdir())  # built under data.cache_dir/prepared
    assert a["train"]["samples"] == b["train"]["samples"]
    for k, v in a["metrics"].items():
        assert b["metrics"][k] == pytest.approx(v, abs=1e-6), k


def test_built_once_rebuilt_when_the_dataset_changes(tmp_path):
    folder = write_tiny_folder(tmp_path / "ds", seed=1)
    m, root = Manifest.load(folder), tmp_path / "prep"
    mapped.prepare_mapped(folder, m, root, progress=False)
    (built,) = entries(root)
    stamp = (built / "arrays.json").stat().st_mtime_ns
    mapped.prepare_mapped(folder, m, root, progress=False)
    assert [built] == entries(root)
    assert (built / "arrays.json").stat().st_mtime_ns == stamp  # opened, not rebuilt
    # a reconversion (here: one impression's label flipped) builds a new folder with it
    im = pd.read_parquet(folder / "impressions.parquet")
    im.loc[0, "click"] = 1 - im.loc[0, "click"]
    im.to_parquet(folder / "impressions.parquet", index=False)
    fresh = mapped.prepare_mapped(folder, m, root, progress=False)
    assert len(entries(root)) == 2
    assert_same_prepared(prepare(folder, m), fresh)


def test_an_interrupted_build_leaves_nothing_read_as_finished(tmp_path, monkeypatch):
    folder = write_tiny_folder(tmp_path / "ds", seed=2)
    m, root = Manifest.load(folder), tmp_path / "prep"

    def stop(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(mapped._Impressions, "write", stop)
    with pytest.raises(KeyboardInterrupt):
        mapped.prepare_mapped(folder, m, root, progress=False)
    assert entries(root) == []  # the temporary folder is gone, no finished one exists
    monkeypatch.undo()
    assert_same_prepared(prepare(folder, m), mapped.prepare_mapped(folder, m, root, progress=False))


def _split_a_request(d: pd.DataFrame) -> pd.DataFrame:
    """The last row of the first request with several rows moved to the end of the table: that
    request is no longer one run of rows (found across batches by the mapped build)."""
    sizes = d.groupby("request_id").size()
    last = d.index[d.request_id == sizes[sizes >= 2].index[0]][-1]
    return pd.concat([d.drop(index=last), d.loc[[last]]])


@pytest.mark.parametrize(
    "table,edit",
    [
        ("events.parquet", lambda d: d.iloc[::-1]),
        ("events.parquet", lambda d: d.assign(behavior=d.behavior.where(d.index % 7 != 1, 7))),
        ("events.parquet", lambda d: d.assign(item_id=d.item_id.where(d.index < 350, 10**6))),
        ("impressions.parquet", lambda d: d.assign(hour=d.hour.where(d.index != 130, 99))),
        ("impressions.parquet", lambda d: d.assign(click=d.click.where(d.index != 90, 2))),
        ("impressions.parquet", lambda d: d.assign(ts=d.ts.astype(float))),
        ("users.parquet", lambda d: d.iloc[1:]),
        ("users.parquet", lambda d: d.assign(activity=d.activity.where(d.index != 2, np.nan))),
        ("items.parquet", lambda d: d.assign(brand=d.brand + 50)),
        ("impressions.parquet", lambda d: _split_a_request(d)),
    ],
)
def test_bad_input_gets_the_in_memory_message(tmp_path, monkeypatch, table, edit):
    folder = _broken_copy(write_tiny_folder(tmp_path / "ds", seed=3), tmp_path, table, edit)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    m = Manifest.load(folder)
    with pytest.raises(ContractError) as ref:
        prepare(folder, m)
    monkeypatch.setattr(keyed, "BATCH_ROWS", 16)  # the fault lands in a later batch
    with pytest.raises(ContractError) as got:
        mapped.prepare_mapped(folder, m, tmp_path / "prep", progress=False)
    # the same message; an impression check counts the batch it stops in, and says so
    msg, note = str(got.value), " (counted in rows "
    if note in msg:
        assert msg.endswith("counts the whole table)") and "harness.data validate" in msg
        msg = msg[: msg.index(note)]
    assert re.sub(r"has \d+ ", "has N ", msg) == re.sub(r"has \d+ ", "has N ", str(ref.value))
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # destroys nothing
    assert entries(tmp_path / "prep") == []


@pytest.mark.parametrize("batching", ["requests", "fixed"])
@pytest.mark.parametrize(
    "shuffle,drop_last,block",
    [(True, True, 0), (True, False, 0), (False, False, 0), (True, True, 5)],
)
def test_epoch_plan_gives_the_plain_plans_batches(tmp_path, batching, shuffle, drop_last, block):
    folder = write_tiny_folder(tmp_path / "ds", seed=4, n_requests=90, max_per_request=6)
    data = prepare(folder, Manifest.load(folder))
    for split, requests in data.split_requests.items():
        for bs, epoch in ((6, 0), (7, 3), (1000, 1)):
            kw = dict(batching=batching, shuffle=shuffle, seed=11, epoch=epoch, drop_last=drop_last)
            kw |= dict(shuffle_block=block, shuffle_window=3)
            order, bounds = plan_batches(data, requests, bs, **kw)
            plan = plan_epoch(data, requests, bs, **kw)
            assert np.array_equal(plan.bounds, bounds), split
            for b in range(len(bounds) - 1):
                assert np.array_equal(plan.impressions(b), order[bounds[b] : bounds[b + 1]])


def test_a_full_disk_is_a_clear_error_and_keeps_nothing(tmp_path, monkeypatch):
    import errno

    from harness.runstore import RunStoreError

    folder = write_tiny_folder(tmp_path / "ds", seed=2)
    m, root = Manifest.load(folder), tmp_path / "prep"

    def full(self, name, values, dtype=None):
        raise OSError(errno.ENOSPC, "No space left on device", str(self.folder / f"{name}.bin"))

    monkeypatch.setattr(mapped._Writer, "add", full)
    with pytest.raises(RunStoreError) as e:
        mapped.prepare_mapped(folder, m, root, progress=False)
    msg = str(e.value)
    assert "No space left on device" in msg and "data.cache_dir" in msg and str(root) in msg
    assert entries(root) == []


def test_concurrent_openers_build_once(tmp_path, monkeypatch):
    # DDP ranks or parallel sweep runs set up the same dataset at once: one builds, all open it
    import threading
    import time

    folder = write_tiny_folder(tmp_path / "ds", seed=6)
    m, root = Manifest.load(folder), tmp_path / "prep"
    calls, real = [], mapped.build

    def slow_build(*a, **k):
        calls.append(1)
        time.sleep(0.3)  # the others arrive while it builds
        return real(*a, **k)

    monkeypatch.setattr(mapped, "build", slow_build)
    got: list = []
    threads = [
        threading.Thread(
            target=lambda: got.append(mapped.prepare_mapped(folder, m, root, progress=False))
        )
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(got) == 3 and len(entries(root)) == 1
    ref = prepare(folder, m)
    for g in got:
        assert_same_prepared(ref, g)


@pytest.mark.parametrize("harm", ["truncate", "remove", "manifest"])
def test_a_damaged_build_is_rebuilt(tmp_path, harm, capsys):
    folder = write_tiny_folder(tmp_path / "ds", seed=7)
    m, root = Manifest.load(folder), tmp_path / "prep"
    mapped.prepare_mapped(folder, m, root, progress=False)
    (built,) = entries(root)
    if harm == "truncate":
        with open(built / "imp_cand_item.bin", "r+b") as f:
            f.truncate(8)
    elif harm == "remove":
        (built / "req_end.bin").unlink()
    else:
        (built / "arrays.json").write_text("{not json")
    again = mapped.prepare_mapped(folder, m, root, progress=False)
    assert "rebuilding it" in capsys.readouterr().err
    assert entries(root) == [built]
    assert_same_prepared(prepare(folder, m), again)


def test_request_ids_in_no_order(tmp_path, monkeypatch):
    # hashed request ids (valid: each request still one run of rows) take the whole-table check
    folder = write_tiny_folder(tmp_path / "ds", seed=8)
    im = pd.read_parquet(folder / "impressions.parquet")
    ids = im.request_id.unique()
    shuffled = dict(zip(ids, np.random.default_rng(0).permutation(ids) * 7919 + 13))
    im["request_id"] = im.request_id.map(shuffled).astype("int64")
    im.to_parquet(folder / "impressions.parquet", index=False)
    m = Manifest.load(folder)
    monkeypatch.setattr(keyed, "BATCH_ROWS", 16)
    assert_same_prepared(prepare(folder, m), mapped.prepare_mapped(folder, m, tmp_path / "p"))


def _vm_flags(address: int) -> list[str]:
    """The kernel's VmFlags of the mapping of this process that holds ADDRESS (/proc/self/smaps)."""
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = re.match(r"^([0-9a-f]+)-([0-9a-f]+) ", line)
        if head:
            inside = int(head[1], 16) <= address < int(head[2], 16)
        elif inside and line.startswith("VmFlags:"):
            return line.split()[1:]
    raise AssertionError(f"no mapping holds {address:#x}")


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="reads Linux's /proc/self/smaps")
@pytest.mark.parametrize(
    "chronological, block, random_reads",
    [(False, 0, True), (False, 4, False), (True, 0, False)],
)
def test_a_uniform_epoch_maps_the_arrays_without_read_ahead(
    tmp_path, chronological, block, random_reads
):
    # a uniformly shuffled epoch advises MADV_RANDOM (VmFlags "rr": no read-around on a fault);
    # chronological and block-shuffled epochs read in runs and keep the kernel's read-ahead
    folder = write_tiny_folder(tmp_path / "ds", seed=3, n_users=9, n_events=300)
    dm = OneTransDataModule(
        folder,
        seq_len=8,
        batch_size=16,
        storage="mapped",
        mapped_dir=tmp_path / "prep",
        chronological=chronological,
        shuffle_block=block,
    )
    dm.setup()
    arrays = [dm.data.events.table, dm.data.req_start, *dm.data.imp.values()]
    for a in arrays:
        assert ("rr" in _vm_flags(a.data_ptr())) is random_reads
    ref = prepare(folder, Manifest.load(folder))  # the advice changes no value
    assert_same_prepared(ref, dm.data)
