"""OneTransDataModule: batch layout, as-of sequences, joins, ordering, shards, workers, bad input."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from harness.data.contract import ContractError
from harness.data.datamodule import OneTransDataModule
from harness.data.sequences import reference_sequences
from model.features import IMPRESSION_KEYS, LABEL_KEYS, SEQ_KEYS
from tests.data_support import write_tiny_folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return write_tiny_folder(tmp_path_factory.mktemp("tiny") / "ds", seed=3)


def all_batches(dm: OneTransDataModule, split: str, epoch: int = 0) -> list[dict]:
    dl = dm.loader(split)
    dl.sampler.set_epoch(epoch)
    return list(dl)


def check_layout(b: dict, spec) -> None:
    R, L = b["seq_item"].shape
    B = b["req_index"].shape[0]
    assert L == spec.seq_len
    for k in (*SEQ_KEYS, *IMPRESSION_KEYS, *LABEL_KEYS, "user_id", "request_id", "ts"):
        assert k in b, k
    assert b["seq_side"].shape == (R, L, spec.n_side) and b["seq_mask"].dtype == torch.bool
    for k in (
        "seq_item",
        "seq_side",
        "seq_type",
        "seq_gap",
        "req_index",
        "cand_item",
        "cand_side",
        "ns_cat",
    ):
        assert b[k].dtype == torch.int64, k
    assert b["ns_num"].shape == (B, spec.n_num) and b["ns_num"].dtype == torch.float32
    assert torch.isfinite(b["ns_num"]).all()
    assert b["seq_item"].max() < spec.item_vocab and b["cand_item"].max() < spec.item_vocab
    assert b["seq_type"].max() <= spec.n_behaviors and b["seq_gap"].max() < spec.n_gap_buckets
    for j, v in enumerate(spec.side_vocab):
        assert b["seq_side"][..., j].max() < v and b["cand_side"][:, j].max() < v
    for j, v in enumerate(spec.cat_vocab):
        assert 0 <= b["ns_cat"][:, j].min() and b["ns_cat"][:, j].max() < v
    # padding is zero, masks are left-padded (once True, stays True)
    assert (b["seq_item"][~b["seq_mask"]] == 0).all() and (b["seq_gap"][~b["seq_mask"]] == 0).all()
    assert (b["seq_mask"].int().diff(dim=1) >= 0).all()
    # req_index non-decreasing, covers every row, one request per row
    ri = b["req_index"]
    assert (ri.diff() >= 0).all() and ri[0] == 0 and ri[-1] == R - 1 and (ri.diff() <= 1).all()
    for col in ("request_id", "user_id", "ts"):
        first = b[col][torch.searchsorted(ri, torch.arange(R))]
        assert (b[col] == first[ri]).all(), col


def test_layout_sequences_and_joins(tiny):
    dm = OneTransDataModule(tiny, seq_len=6, batch_size=9)
    spec = dm.feature_spec
    ev = pd.read_parquet(tiny / "events.parquet")
    im = pd.read_parquet(tiny / "impressions.parquet")
    users = pd.read_parquet(tiny / "users.parquet").set_index("user_id")
    items = pd.read_parquet(tiny / "items.parquet").set_index("item_id")
    train = im[im.split == "train"]
    j_train = train.join(users, on="user_id").join(items, on="item_id")
    seen = []
    for split in ("train", "val", "test"):
        for b in all_batches(dm, split):
            check_layout(b, spec)
            # sequences equal the slow reference for each request row
            R = b["seq_item"].shape[0]
            first = torch.searchsorted(b["req_index"], torch.arange(R))
            ref = reference_sequences(
                ev.user_id.to_numpy(),
                ev.ts.to_numpy(),
                ev.item_id.to_numpy(),
                ev[["category", "brand"]].to_numpy(),
                ev.behavior.to_numpy(),
                b["user_id"][first].numpy(),
                b["ts"][first].numpy(),
                6,
                spec.n_gap_buckets,
            )
            for k, v in ref.items():
                np.testing.assert_array_equal(b[k].numpy(), v, err_msg=k)
            # joined features equal a pandas join
            rows = im.set_index("request_id").loc[b["request_id"].unique().numpy()].reset_index()
            seen.append(b["request_id"].numpy())
            jj = rows.join(users, on="user_id").join(items, on="item_id")
            assert sorted(b["cand_item"].tolist()) == sorted(jj.item_id.tolist())
            for j, name in enumerate(spec.cat_names):
                assert sorted(b["ns_cat"][:, j].tolist()) == sorted(jj[name].tolist()), name
            for j, name in enumerate(spec.num_names):
                mu, sd = j_train[name].mean(), j_train[name].std(ddof=0)
                np.testing.assert_allclose(
                    sorted(b["ns_num"][:, j].numpy()),
                    sorted((jj[name] - mu) / sd),
                    rtol=1e-5,
                    atol=1e-5,
                )
            assert "p_click" in b and dm.has_oracle
    # every impression exactly once across the three splits (no drop: request batching)
    assert sorted(np.concatenate(seen).tolist()) == sorted(im.request_id.tolist())


def test_train_numerics_standardised(tiny):
    dm = OneTransDataModule(tiny, seq_len=4, batch_size=8, drop_last=False)
    ns = torch.cat([b["ns_num"] for b in all_batches(dm, "train")])
    np.testing.assert_allclose(ns.mean(0).numpy(), 0, atol=1e-4)
    np.testing.assert_allclose(ns.std(0, unbiased=False).numpy(), 1, atol=1e-4)


def test_shuffle_deterministic_per_seed_epoch_and_chronological_eval(tiny):
    def order(seed, epoch, **kw):
        dm = OneTransDataModule(tiny, seq_len=4, batch_size=8, seed=seed, **kw)
        return torch.cat([b["request_id"] for b in all_batches(dm, "train", epoch)]).tolist()

    assert order(0, 0) == order(0, 0)
    assert order(0, 0) != order(0, 1) and order(0, 0) != order(1, 0)
    assert sorted(order(0, 0)) == sorted(order(0, 1))  # same impressions, new order
    chrono = OneTransDataModule(tiny, seq_len=4, batch_size=8, chronological=True)
    ts = torch.cat([b["ts"] for b in all_batches(chrono, "train", epoch=5)])
    assert (ts.diff() >= 0).all()
    dm = OneTransDataModule(tiny, seq_len=4, batch_size=8)
    for split in ("val", "test"):
        ts = torch.cat([b["ts"] for b in all_batches(dm, split, epoch=3)])
        assert (ts.diff() >= 0).all()


def test_request_batches_keep_requests_whole(tiny):
    dm = OneTransDataModule(tiny, seq_len=4, batch_size=5)
    im = pd.read_parquet(tiny / "impressions.parquet")
    size = im.groupby("request_id").size()
    for b in all_batches(dm, "train"):
        assert b["req_index"].shape[0] <= 5
        counts = pd.Series(b["request_id"].numpy()).value_counts()
        assert (counts == size.loc[counts.index]).all()


def test_fixed_batching_static_batch_size(tiny):
    dm = OneTransDataModule(tiny, seq_len=4, batch_size=7, batching="fixed")
    batches = all_batches(dm, "train")
    assert batches and all(b["req_index"].shape[0] == 7 for b in batches)
    for b in batches:
        check_layout(b, dm.feature_spec)


def test_ddp_shards_are_disjoint_and_even(tiny):
    seen = []
    for rank in range(2):
        dm = OneTransDataModule(tiny, seq_len=4, batch_size=6, rank=rank, world_size=2)
        seen.append([b["request_id"] for b in all_batches(dm, "train", epoch=2)])
    assert len(seen[0]) == len(seen[1]) > 0
    a, b = (set(torch.cat(s).tolist()) for s in seen)
    assert not a & b
    single = OneTransDataModule(tiny, seq_len=4, batch_size=6)
    full = all_batches(single, "train", epoch=2)
    # rank k holds batches k, k+2, ... of the single-process plan
    for k in range(2):
        for got, want in zip(seen[k], full[k::2]):
            assert torch.equal(got, want["request_id"])


def test_workers_give_identical_batches(tiny):
    a = all_batches(
        OneTransDataModule(tiny, seq_len=8, batch_size=8, num_workers=0), "train", epoch=1
    )
    b = all_batches(
        OneTransDataModule(tiny, seq_len=8, batch_size=8, num_workers=1), "train", epoch=1
    )
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def _broken_copy(tiny: Path, tmp: Path, table: str, edit) -> Path:
    out = tmp / "broken"
    shutil.copytree(tiny, out)
    df = pd.read_parquet(out / table)
    edit(df).to_parquet(out / table, index=False)
    return out


@pytest.mark.parametrize(
    "table,edit,needle",
    [
        (
            "users.parquet",
            lambda d: d.assign(activity=d.activity.where(d.index != 2, np.nan)),
            "activity",
        ),
        ("items.parquet", lambda d: d.assign(brand=d.brand + 50), "brand"),
        ("impressions.parquet", lambda d: d.assign(hour=d.hour.where(d.index != 0, 99)), "hour"),
        ("events.parquet", lambda d: d.iloc[::-1], "not sorted by (user_id, ts)"),
        (
            "events.parquet",
            lambda d: d.assign(behavior=d.behavior.where(d.index != 1, 7)),
            "behavior",
        ),
        ("impressions.parquet", lambda d: d.assign(ts=d.ts.astype(float)), "dtype"),
        ("users.parquet", lambda d: d.iloc[1:], "no row in"),
    ],
)
def test_bad_input_clear_error(tiny, tmp_path, table, edit, needle):
    folder = _broken_copy(tiny, tmp_path, table, edit)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with pytest.raises(ContractError) as e:
        OneTransDataModule(folder, seq_len=4, batch_size=8).setup()
    msg = str(e.value)
    assert needle in msg and str(folder) in msg, msg
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # destroys nothing


def test_synthetic_ci_world(tmp_path_factory):
    synth = pytest.importorskip("harness.data.synth")
    folder = synth.ensure_synthetic("ci", 0, tmp_path_factory.mktemp("synth"), progress=False)
    dm = OneTransDataModule(folder, seq_len=32, batch_size=256)
    dm.setup()
    spec = dm.feature_spec
    n = 0
    for split in ("train", "val"):
        for i, b in enumerate(all_batches(dm, split)):
            check_layout(b, spec)
            n += 1
            if i >= 3:
                break
    assert n > 0 and dm.has_oracle == ("p_click" in b)


def test_lightning_trainer_keeps_sampler_and_sets_epoch(tiny, tmp_path):
    """Under a real Trainer the sampler is kept (not wrapped) and each epoch gets a new order."""
    import lightning as L

    seen: dict[int, list[int]] = {}

    class Probe(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def training_step(self, batch, _):
            seen.setdefault(self.current_epoch, []).extend(batch["request_id"].tolist())
            return (self.w * batch["click"]).sum() + self.w.square().sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    dm = OneTransDataModule(tiny, seq_len=4, batch_size=8, seed=7)
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(Probe(), datamodule=dm)
    want = [
        torch.cat(
            [
                b["request_id"]
                for b in all_batches(
                    OneTransDataModule(tiny, seq_len=4, batch_size=8, seed=7), "train", e
                )
            ]
        ).tolist()
        for e in (0, 1)
    ]
    assert seen[0] == want[0] and seen[1] == want[1] and want[0] != want[1]


# ---- data.shuffle_block: a shuffled order with locality (datamodule.block_shuffle) ------------
@pytest.mark.parametrize("n,block,window", [(1, 4, 2), (10, 3, 2), (1000, 7, 3), (1003, 16, 1)])
def test_block_shuffle_is_a_permutation_of_whole_blocks_mixed_a_window_at_a_time(n, block, window):
    from harness.data.datamodule import block_shuffle

    p = block_shuffle(n, block, window, np.random.default_rng(n))
    assert np.array_equal(np.sort(p), np.arange(n))
    assert np.array_equal(p, block_shuffle(n, block, window, np.random.default_rng(n)))
    # walking the output, the blocks it has entered: at most `window` at a time, and each run of
    # `window` blocks (fewer at the end) is complete before the next block starts
    blocks = p // block
    sizes = np.bincount(blocks)
    entered, seen, runs = set(), 0, 0
    for x in blocks.tolist():
        entered.add(x)
        seen += 1
        assert len(entered) <= window
        if len(entered) == window and seen == sizes[list(entered)].sum():
            entered, seen, runs = set(), 0, runs + 1
    assert seen == sizes[list(entered)].sum()  # the last run is whole too
    assert runs == len(sizes) // window


def test_shuffle_block_orders_with_locality_deterministically_and_shards_the_same(tmp_path):
    folder = write_tiny_folder(tmp_path / "ds", seed=5, n_requests=400, max_per_request=3)
    block, window = 8, 2

    def batches(seed=0, epoch=0, **kw):
        dm = OneTransDataModule(
            folder,
            seq_len=4,
            batch_size=6,
            seed=seed,
            shuffle_block=block,
            shuffle_window=window,
            **kw,
        )
        return dm, all_batches(dm, "train", epoch)

    dm, got = batches()
    order = [b["request_id"] for b in got]
    rid = pd.read_parquet(folder / "impressions.parquet").drop_duplicates("request_id")
    train = dm.data.split_requests["train"]
    # a request's place in the split's (chronological) rows, and so its block
    place = {
        int(r): i for i, r in enumerate(dm.data.imp["request_id"].numpy()[dm.data.req_lo[train]])
    }
    assert len(place) == len(train) and set(rid.request_id) >= set(place)
    for r in order:  # each batch reads from at most 2 windows of blocks
        assert len({place[int(x)] // block for x in r.unique()}) <= 2 * window
    flat = torch.cat(order).tolist()
    uniform = torch.cat(
        [
            b["request_id"]
            for b in all_batches(OneTransDataModule(folder, seq_len=4, batch_size=6), "train")
        ]
    ).tolist()
    assert flat != uniform and sorted(flat) == sorted(uniform)  # same impressions, another order
    assert (
        flat == torch.cat([b["request_id"] for b in batches()[1]]).tolist()
    )  # (seed, epoch) decide
    assert flat != torch.cat([b["request_id"] for b in batches(epoch=1)[1]]).tolist()
    assert flat != torch.cat([b["request_id"] for b in batches(seed=1)[1]]).tolist()
    for k in range(2):  # DDP: rank k holds batches k, k+2, ... of the one-process plan
        mine = batches(rank=k, world_size=2)[1]
        assert len(mine) == len(got) // 2
        for a, b in zip(mine, got[k::2]):
            assert torch.equal(a["request_id"], b["request_id"])


def test_shuffle_block_config_checks_and_run_id():
    from harness.config import ConfigError, RunConfig, run_id

    base = RunConfig.from_dict({"data": {"shuffle": True}})
    off = RunConfig.from_dict({"data": {"shuffle": True, "shuffle_block": 0, "shuffle_window": 4}})
    on = RunConfig.from_dict({"data": {"shuffle": True, "shuffle_block": 64}})
    assert run_id(base) == run_id(off)  # off: every earlier run id stays valid
    assert run_id(on) != run_id(base)
    wider = RunConfig.from_dict(
        {"data": {"shuffle": True, "shuffle_block": 64, "shuffle_window": 4}}
    )
    assert run_id(wider) != run_id(on)
    for bad, needle in (
        ({"shuffle": True, "shuffle_block": -1}, "shuffle_block must be >= 0"),
        ({"shuffle": True, "shuffle_block": 8, "shuffle_window": 0}, "shuffle_window must be >= 1"),
        ({"shuffle": False, "shuffle_block": 8}, "Set data.shuffle: true"),
    ):
        with pytest.raises(ConfigError, match=needle):
            RunConfig.from_dict({"data": bad})
    with pytest.raises(ValueError, match="shuffle_block"):
        OneTransDataModule(Path("."), seq_len=4, batch_size=4, shuffle_block=-1)
