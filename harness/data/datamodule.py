"""OneTransDataModule: any contract folder (docs/data-contract.md) -> batches of model/features.py.

Design (docs/data-module.md):
- Set-up reads the folder once, checks it (clear ContractError naming file, column, row and fix),
  joins the non-sequential features to every impression (vectorised), standardises numerics on
  the train split, and computes each request's as-of slice of the event log (sequences.py).
  Memory: O(events + impressions x features); sequences are gathered per batch, never stored.
- A dataset item is a whole collated batch (DataLoader(batch_size=None)): the sampler yields
  (epoch, batch number) and `BatchDataset[...]` gathers the batch with one fancy index per field.
- Requests stay whole: a batch holds R sequence rows and `req_index` maps impressions to them.
- Train order is shuffled per (seed, epoch) at request granularity; val/test (and train with
  chronological=True, the next-batch protocol) keep time order. Every process derives the same plan
  from (seed, epoch), so workers and DDP ranks agree without communication; rank k takes batches
  k, k + world, ... (train: truncated to an equal count per rank so DDP never waits on a missing one).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from harness.data.contract import (
    EVENTS,
    IMPRESSIONS,
    ITEMS,
    SPLITS,
    USERS,
    ContractError,
    Manifest,
    read_table,
    table_source,
)
from harness.data.sequences import EventStore, asof_offsets, gather_sequences
from harness.eval_sample import sample_requests
from model.features import FeatureSpec

Batching = Literal["requests", "fixed"]


# ---------------------------------------------------------------------------------------------
# loading and checking
# ---------------------------------------------------------------------------------------------
def _read(folder: Path, name: str, columns: list[str] | None = None) -> pd.DataFrame:
    path = table_source(folder, name)
    if path is None:
        raise ContractError(
            f"{folder / name}: missing. Every dataset folder needs {name}, or its part files "
            f"{name.removesuffix('.parquet')}/part-*.parquet (docs/data-contract.md)."
        )
    df = read_table(path).to_pandas()
    if columns:
        missing = [c for c in columns if c not in df.columns]
        if missing:
            raise ContractError(
                f"{path}: missing column(s) {missing}; present: {list(df.columns)}. "
                f"Add them (docs/data-contract.md)."
            )
    return df


def _int_column(df: pd.DataFrame, col: str, where: str) -> np.ndarray:
    s = df[col]
    if not pd.api.types.is_integer_dtype(s.dtype):
        raise ContractError(
            f"{where}: column '{col}' has dtype {s.dtype}; it must be an integer "
            f"(int64) column. Cast it, e.g. df['{col}'] = df['{col}'].astype('int64')."
        )
    return s.to_numpy(dtype=np.int64)


def _check_range(values: np.ndarray, lo: int, hi: int, where: str, col: str, fix: str) -> None:
    bad = np.flatnonzero((values < lo) | (values >= hi))
    if len(bad):
        i = int(bad[0])
        raise ContractError(
            f"{where}: column '{col}' has {len(bad)} value(s) outside [{lo}, {hi}), "
            f"e.g. row {i} = {values[i]}. {fix}"
        )


def _lookup(
    keys: np.ndarray, table_keys: np.ndarray, where: str, key: str, table: str
) -> np.ndarray:
    """Row of `table` for each key (vectorised join); every key must be present."""
    order = np.argsort(table_keys, kind="stable")
    sk = table_keys[order]
    if len(sk) > 1 and (np.diff(sk) == 0).any():
        dup = sk[np.flatnonzero(np.diff(sk) == 0)[0]]
        raise ContractError(f"{table}: {key} {dup} appears more than once; keep one row per {key}.")
    pos = np.searchsorted(sk, keys).clip(0, max(len(sk) - 1, 0))
    found = (sk[pos] == keys) if len(sk) else np.zeros(len(keys), bool)
    if not found.all():
        i = int(np.flatnonzero(~found)[0])
        raise ContractError(
            f"{where}: row {i} has {key} = {keys[i]} with no row in {table}; "
            f"add the missing {key}s to {table} or drop those rows."
        )
    return order[pos]


@dataclass(frozen=True, kw_only=True)
class PreparedData:
    """Everything batches are cut from (tensors, so DataLoader workers share them after fork)."""

    events: EventStore
    # per impression, in file order (ts, request_id): requests are contiguous runs
    imp: dict[str, torch.Tensor]
    imp_req: np.ndarray  # request row of each impression
    # per request
    req_lo: np.ndarray  # first impression
    req_hi: np.ndarray  # one past the last impression
    req_start: torch.Tensor  # as-of slice of the event arrays
    req_end: torch.Tensor
    req_ts: torch.Tensor
    split_requests: dict[str, np.ndarray]  # chronological request rows per split
    num_mean: np.ndarray
    num_std: np.ndarray


def prepare(folder: str | Path, manifest: Manifest) -> PreparedData:
    """Read, check and join a contract folder (see the module docstring): the events, the
    impressions grouped into requests, the non-sequential features joined to the impressions, and
    each request's as-of slice of the events."""
    folder = Path(folder)
    spec = manifest.feature_spec(1)
    # messages name the table where it is: the file, or the folder of parts (both looked up
    # first: a table that is both is refused before anything is read)
    ev_where, im_where = (str(table_source(folder, n) or folder / n) for n in (EVENTS, IMPRESSIONS))
    ev_user, ev_ts, events = _read_events(folder, manifest, spec, ev_where)
    req = _read_requests(folder, manifest, im_where)
    join = _FeatureJoin(folder, req)
    cand_side = join.categoricals(manifest, manifest.side_fields, spec.side_vocab)
    ns_cat = join.categoricals(manifest, spec.cat_names, spec.cat_vocab)
    ns_num, mean, std = _standardised_numerics(join, manifest, spec.num_names, req.split)
    imp = {
        "cand_item": _i32(req.item),
        "cand_side": _i32(cand_side),
        "ns_cat": _i32(ns_cat),
        "ns_num": torch.from_numpy(ns_num),
        **req.labels,
        "user_id": torch.from_numpy(req.user.copy()),
        "request_id": torch.from_numpy(req.rid.copy()),
        "ts": torch.from_numpy(req.ts.copy()),
        **_oracle(req, manifest),
    }
    lo = req.req_lo
    start, end = asof_offsets(ev_user, ev_ts, req.user[lo], req.ts[lo])
    req_split = req.split[lo]
    return PreparedData(
        events=events,
        imp=imp,
        imp_req=req.imp_req,
        req_lo=lo,
        req_hi=req.req_hi,
        req_start=torch.from_numpy(start),
        req_end=torch.from_numpy(end),
        req_ts=torch.from_numpy(req.ts[lo]),
        split_requests={s: np.flatnonzero(req_split == s) for s in SPLITS},
        num_mean=mean,
        num_std=std,
    )


def _read_events(
    folder: Path, manifest: Manifest, spec: FeatureSpec, where: str
) -> tuple[np.ndarray, np.ndarray, EventStore]:
    """events.parquet checked (sorted by (user_id, ts), ids inside their vocabularies) into the
    compact EventStore; returns (user ids, ts, store), the first two for the as-of offsets."""
    side = list(manifest.side_fields)
    ev = _read(folder, EVENTS, ["user_id", "ts", "behavior", "item_id", *side])
    ev_user, ev_ts = _int_column(ev, "user_id", where), _int_column(ev, "ts", where)
    if len(ev) > 1:
        du, dt = np.diff(ev_user), np.diff(ev_ts)
        bad = np.flatnonzero((du < 0) | ((du == 0) & (dt < 0)))
        if len(bad):
            raise ContractError(
                f"{where}: not sorted by (user_id, ts): row {bad[0] + 1} "
                f"(user {ev_user[bad[0] + 1]}, ts {ev_ts[bad[0] + 1]}) comes after "
                f"(user {ev_user[bad[0]]}, ts {ev_ts[bad[0]]}). Sort with "
                f"df.sort_values(['user_id', 'ts'], kind='stable')."
            )
    ev_item = _int_column(ev, "item_id", where)
    _check_range(
        ev_item,
        0,
        manifest.item_vocab,
        where,
        "item_id",
        "Raise manifest item_vocab or remap ids.",
    )
    ev_beh = _int_column(ev, "behavior", where)
    _check_range(
        ev_beh,
        1,
        spec.n_behaviors + 1,
        where,
        "behavior",
        "Behaviour ids are 1..n as declared in manifest 'behaviors'.",
    )
    ev_side = np.zeros((len(ev), len(side)), np.int64)
    for k, (name, vocab) in enumerate(zip(side, spec.side_vocab)):
        ev_side[:, k] = _int_column(ev, name, where)
        _check_range(
            ev_side[:, k],
            0,
            vocab,
            where,
            name,
            f"Raise vocab_size of '{name}' in the manifest.",
        )
    return ev_user, ev_ts, EventStore.from_numpy(ev_item, ev_side, ev_beh, ev_ts)


@dataclass(frozen=True, kw_only=True)
class _Requests:
    """The impressions in file order, checked, with their requests (contiguous runs of rows)."""

    im: pd.DataFrame
    where: str  # how messages name impressions.parquet
    rid: np.ndarray
    user: np.ndarray
    ts: np.ndarray
    item: np.ndarray
    split: np.ndarray  # str per impression
    labels: dict[str, torch.Tensor]  # click, conversion as float32
    req_lo: np.ndarray  # first impression of each request
    req_hi: np.ndarray  # one past its last
    imp_req: np.ndarray  # request row of each impression


def _read_requests(folder: Path, manifest: Manifest, where: str) -> _Requests:
    """impressions.parquet checked: item ids in range, each request one contiguous run with a
    single user, ts and split, split names from SPLITS, 0/1 labels."""
    im = _read(
        folder,
        IMPRESSIONS,
        ["request_id", "user_id", "ts", "item_id", "click", "conversion", "split"],
    )
    n = len(im)
    rid, user = _int_column(im, "request_id", where), _int_column(im, "user_id", where)
    ts, item = _int_column(im, "ts", where), _int_column(im, "item_id", where)
    _check_range(
        item, 0, manifest.item_vocab, where, "item_id", "Raise manifest item_vocab or remap ids."
    )
    new = np.ones(n, bool)
    new[1:] = rid[1:] != rid[:-1]
    req_lo = np.flatnonzero(new)
    req_hi = np.append(req_lo[1:], n)
    if len(np.unique(rid)) != len(req_lo):
        raise ContractError(
            f"{where}: the impressions of a request are not contiguous; sort the file "
            f"by (ts, request_id) so each request is one run of rows."
        )
    imp_req = np.cumsum(new) - 1
    split = im["split"].astype(str).to_numpy()
    for col, vals in (("user_id", user), ("ts", ts), ("split", split)):
        bad = np.flatnonzero(vals != vals[req_lo][imp_req])
        if len(bad):
            raise ContractError(
                f"{where}: request {rid[bad[0]]} (row {bad[0]}) mixes several '{col}' "
                f"values; every impression of a request shares user_id, ts and split."
            )
    unknown = sorted(set(np.unique(split)) - set(SPLITS))
    if unknown:
        raise ContractError(f"{where}: column 'split' has value(s) {unknown}; use {list(SPLITS)}.")
    labels = {}
    for col in ("click", "conversion"):
        v = im[col].to_numpy()
        if not np.isin(v, (0, 1)).all():
            i = int(np.flatnonzero(~np.isin(v, (0, 1)))[0])
            raise ContractError(f"{where}: column '{col}' must be 0/1, row {i} = {v[i]}.")
        labels[col] = torch.from_numpy(v.astype(np.float32))  # astype copies
    return _Requests(
        im=im,
        where=where,
        rid=rid,
        user=user,
        ts=ts,
        item=item,
        split=split,
        labels=labels,
        req_lo=req_lo,
        req_hi=req_hi,
        imp_req=imp_req,
    )


class _FeatureJoin:
    """The non-sequential features, one value per impression: columns of the impressions table,
    or users.parquet / items.parquet columns joined on user_id / item_id (each table read and
    joined once)."""

    def __init__(self, folder: Path, req: _Requests) -> None:
        self.folder, self.req = folder, req
        self.tables: dict[str, tuple[pd.DataFrame, np.ndarray, str]] = {}

    def column(self, table: str, name: str) -> tuple[np.ndarray, str]:
        """(values per impression, where they come from) of feature `name` of `table`."""
        req = self.req
        if table == "impressions":
            if name not in req.im.columns:
                raise ContractError(
                    f"{req.where}: missing column '{name}' declared in the manifest (table: impressions)."
                )
            return req.im[name].to_numpy(), req.where
        fname, key, keys = (
            (USERS, "user_id", req.user) if table == "users" else (ITEMS, "item_id", req.item)
        )
        if table not in self.tables:
            path = str(self.folder / fname)
            df = _read(self.folder, fname, [key])
            rows = _lookup(keys, _int_column(df, key, path), req.where, key, path)
            self.tables[table] = (df, rows, path)
        df, rows, where = self.tables[table]
        if name not in df.columns:
            raise ContractError(
                f"{where}: missing column '{name}' declared in the manifest (table: {table})."
            )
        return df[name].to_numpy()[rows], where

    def categorical(self, manifest: Manifest, name: str, vocab: int) -> np.ndarray:
        """A categorical feature as int64 ids checked against its vocabulary."""
        vals, where = self.column(manifest.feature(name).table, name)
        if not np.issubdtype(vals.dtype, np.integer):
            raise ContractError(
                f"{where}: categorical column '{name}' has dtype {vals.dtype}; store int64 ids in [0, {vocab})."
            )
        _check_range(
            vals,
            0,
            vocab,
            where,
            name,
            f"Raise vocab_size of '{name}' in the manifest or remap ids (0 = missing).",
        )
        return vals.astype(np.int64)

    def categoricals(self, manifest: Manifest, names, vocabs) -> np.ndarray:
        """Several categorical features stacked as columns, (impressions, len(names))."""
        if not names:
            return np.zeros((len(self.req.im), 0), np.int64)
        return np.stack([self.categorical(manifest, c, v) for c, v in zip(names, vocabs)], 1)


def _standardised_numerics(
    join: _FeatureJoin, manifest: Manifest, names, split: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The numeric features (finite, else an error) standardised by the train split's mean and
    std (all impressions when there is no train split); returns (float32 values, mean, std)."""
    nums = []
    for name in names:
        vals, where = join.column(manifest.feature(name).table, name)
        vals = vals.astype(np.float64)
        bad = np.flatnonzero(~np.isfinite(vals))
        if len(bad):
            raise ContractError(
                f"{where}: numeric column '{name}' has {len(bad)} NaN/infinite value(s) "
                f"(first at joined impression row {bad[0]}). Impute or drop them."
            )
        nums.append(vals)
    ns_num = np.stack(nums, 1) if nums else np.zeros((len(split), 0))
    is_train = split == "train"
    ref = ns_num[is_train] if is_train.any() else ns_num
    mean = ref.mean(0) if len(ref) else np.zeros(ns_num.shape[1])
    std = ref.std(0) if len(ref) else np.ones(ns_num.shape[1])
    std = np.where(std > 0, std, 1.0)  # a constant column standardises to 0, not NaN
    return ((ns_num - mean) / std).astype(np.float32), mean, std


def _oracle(req: _Requests, manifest: Manifest) -> dict[str, torch.Tensor]:
    """p_click / p_conversion per impression when the manifest says the dataset has them."""
    if not manifest.has_oracle:
        return {}
    out = {}
    for col in ("p_click", "p_conversion"):
        if col not in req.im.columns:
            raise ContractError(
                f"{req.where}: manifest has_oracle is true but column '{col}' is missing."
            )
        out[col] = torch.from_numpy(req.im[col].to_numpy(dtype=np.float32).copy())
    return out


def _i32(a: np.ndarray) -> torch.Tensor:
    """Compact storage of ids (int32 unless a value needs int64); batches are cast to int64."""
    return torch.from_numpy(
        np.ascontiguousarray(a.astype(np.int32 if a.size == 0 or a.max() < 2**31 - 1 else np.int64))
    )


# ---------------------------------------------------------------------------------------------
# batch plans, the batch dataset and the sampler
# ---------------------------------------------------------------------------------------------
def plan_batches(
    data: PreparedData,
    requests: np.ndarray,
    batch_size: int,
    *,
    batching: Batching,
    shuffle: bool,
    seed: int,
    epoch: int,
    drop_last: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """(impression order, batch boundaries) for one epoch of one split.

    batching="requests": whole requests, greedily packed to at most batch_size impressions.
    batching="fixed": exactly batch_size impressions; a request cut by a boundary appears in both
    batches with its own (identical) sequence row, so every impression still sees its exact history."""
    if shuffle:
        requests = requests[np.random.default_rng([seed, epoch]).permutation(len(requests))]
    sizes = data.req_hi[requests] - data.req_lo[requests]
    # expand request ranges into impression indices without a per-request loop
    offs = np.repeat(data.req_lo[requests] - np.concatenate([[0], np.cumsum(sizes)[:-1]]), sizes)
    order = np.arange(int(sizes.sum()), dtype=np.int64) + offs
    n = len(order)
    if batching == "fixed":
        bounds = np.arange(0, n + batch_size, batch_size).clip(max=n)
        bounds = np.unique(bounds)
    else:
        if len(sizes) and sizes.max() > batch_size:
            raise ContractError(
                f"a request has {sizes.max()} impressions, more than batch_size={batch_size}; "
                f"raise batch_size or use batching='fixed'."
            )
        cum = np.concatenate([[0], np.cumsum(sizes)])
        bounds, at = [0], 0
        while at < len(sizes):  # one step per batch, not per sample
            nxt = int(np.searchsorted(cum, cum[at] + batch_size, side="right")) - 1
            at = max(nxt, at + 1)
            bounds.append(int(cum[at]))
        bounds = np.asarray(bounds, np.int64)
    if (
        drop_last
        and len(bounds) > 1
        and bounds[-1] - bounds[-2] < batch_size
        and batching == "fixed"
    ):
        bounds = bounds[:-1]
    return order, bounds


class BatchDataset(Dataset):
    """Map-style dataset whose item (epoch, b) is the whole collated batch b of that epoch's plan."""

    def __init__(
        self,
        data: PreparedData,
        split: str,
        *,
        seq_len: int,
        batch_size: int,
        n_gap_buckets: int,
        batching: Batching,
        shuffle: bool,
        seed: int,
        drop_last: bool,
        requests: np.ndarray | None = None,
    ) -> None:
        self.data, self.split, self.seq_len, self.n_gap = data, split, seq_len, n_gap_buckets
        # the split's requests, or a subset of them (an evaluation on sampled users)
        self.requests = data.split_requests[split] if requests is None else requests
        self.kw = dict(
            batch_size=batch_size,
            batching=batching,
            shuffle=shuffle,
            seed=seed,
            drop_last=drop_last,
        )
        self._plan: tuple[int, np.ndarray, np.ndarray] | None = None

    def plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        if self._plan is None or self._plan[0] != epoch:  # cached: one plan per epoch per process
            order, bounds = plan_batches(self.data, self.requests, epoch=epoch, **self.kw)
            self._plan = (epoch, order, bounds)
        return self._plan[1], self._plan[2]

    def n_batches(self, epoch: int = 0) -> int:
        return len(self.plan(epoch)[1]) - 1

    def __len__(self) -> int:
        return self.n_batches(0)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        epoch, b = key
        order, bounds = self.plan(epoch)
        return self.batch(order[bounds[b] : bounds[b + 1]])

    def batch(self, imps: np.ndarray) -> dict[str, torch.Tensor]:
        """Collate the impressions `imps` (request-contiguous) into one batch."""
        d = self.data
        req = d.imp_req[imps]
        new = np.ones(len(req), bool)
        new[1:] = req[1:] != req[:-1]
        rows = torch.from_numpy(req[new])
        idx = torch.from_numpy(imps)
        out = gather_sequences(
            d.events, d.req_start[rows], d.req_end[rows], d.req_ts[rows], self.seq_len, self.n_gap
        )
        out["req_index"] = torch.from_numpy(np.cumsum(new) - 1)
        for k, v in d.imp.items():
            v = v.index_select(0, idx)
            out[k] = v.to(torch.int64) if v.dtype == torch.int32 else v
        return out


class EpochBatchSampler(DistributedSampler):
    """Yields (epoch, batch number) for this rank. A DistributedSampler subclass so Lightning keeps
    it under DDP (and calls set_epoch each epoch) instead of wrapping it in its own sampler."""

    def __init__(self, dataset: BatchDataset, *, rank: int, world_size: int, even: bool) -> None:
        # no super().__init__: it would require torch.distributed; we set what Lightning reads.
        self.dataset, self.rank, self.num_replicas, self.even = dataset, rank, world_size, even
        self.epoch, self.shuffle, self.seed, self.drop_last = (
            0,
            dataset.kw["shuffle"],
            dataset.kw["seed"],
            even,
        )

    def _mine(self) -> range:
        n = self.dataset.n_batches(self.epoch)
        if self.even:  # equal count per rank: DDP steps stay in lockstep
            n = n // self.num_replicas * self.num_replicas
        return range(self.rank, n, self.num_replicas)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter([(self.epoch, b) for b in self._mine()])

    def __len__(self) -> int:
        return len(self._mine())

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch


# ---------------------------------------------------------------------------------------------
# the LightningDataModule
# ---------------------------------------------------------------------------------------------
class OneTransDataModule(L.LightningDataModule):
    """Batches of model/features.py from a contract folder. See docs/data-module.md."""

    def __init__(
        self,
        folder: str | Path,
        *,
        seq_len: int,
        batch_size: int,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        n_gap_buckets: int = 32,
        batching: Batching = "requests",
        chronological: bool = False,
        drop_last: bool = True,
        rank: int | None = None,
        world_size: int | None = None,
        eval_sample_users: float = 0.0,
        eval_sample_seed: int = 0,
    ) -> None:
        super().__init__()
        if batching not in ("requests", "fixed"):
            raise ValueError(f"batching must be 'requests' or 'fixed', got {batching!r}")
        if seq_len < 1 or batch_size < 1:
            raise ValueError(f"seq_len and batch_size must be >= 1, got {seq_len}, {batch_size}")
        self.folder = Path(folder)
        self.manifest = Manifest.load(self.folder)
        self.seq_len, self.batch_size = seq_len, batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers, self.seed, self.n_gap_buckets = num_workers, seed, n_gap_buckets
        self.batching, self.chronological, self.drop_last = batching, chronological, drop_last
        self._rank, self._world = rank, world_size
        # val_dataloader / test_dataloader score a seeded sample of users (harness/eval_sample.py)
        self.eval_sample_users, self.eval_sample_seed = eval_sample_users, eval_sample_seed
        self.eval_sample: dict[str, dict[str, int]] = {}  # split -> counts, once sampled
        self.data: PreparedData | None = None

    @property
    def feature_spec(self):
        return self.manifest.feature_spec(self.seq_len, n_gap_buckets=self.n_gap_buckets)

    @property
    def has_oracle(self) -> bool:
        return self.manifest.has_oracle

    def setup(self, stage: str | None = None) -> None:
        if self.data is None:
            self.data = prepare(self.folder, self.manifest)

    def rank_and_world(self) -> tuple[int, int]:
        if self._rank is not None or self._world is not None:
            return int(self._rank or 0), int(self._world or 1)
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            return trainer.global_rank, trainer.world_size
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def sampled_requests(self, split: str) -> np.ndarray:
        """The split's requests of the seeded user sample (every request when not sampling)."""
        self.setup()
        requests = self.data.split_requests[split]
        if not self.eval_sample_users:
            return requests
        request_user = self.data.imp["user_id"].numpy()[self.data.req_lo]
        kept, self.eval_sample[split] = sample_requests(
            requests, request_user, self.eval_sample_users, self.eval_sample_seed, split
        )
        return kept

    def dataset(self, split: str, sampled: bool = False) -> BatchDataset:
        self.setup()
        train = split == "train"
        return BatchDataset(
            self.data,
            split,
            seq_len=self.seq_len,
            n_gap_buckets=self.n_gap_buckets,
            batch_size=self.batch_size if train else self.eval_batch_size,
            batching=self.batching,
            shuffle=train and not self.chronological,
            seed=self.seed,
            drop_last=train and self.drop_last,
            requests=self.sampled_requests(split) if sampled else None,
        )

    def loader(self, split: str, sampled: bool = False) -> DataLoader:
        ds = self.dataset(split, sampled)
        rank, world = self.rank_and_world()
        sampler = EpochBatchSampler(ds, rank=rank, world_size=world, even=split == "train")
        return DataLoader(
            ds,
            batch_size=None,
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self.loader("train")

    # the holdout passes; the next-batch protocol streams every split through loader() instead
    def val_dataloader(self) -> DataLoader:
        return self.loader("val", sampled=True)

    def test_dataloader(self) -> DataLoader:
        return self.loader("test", sampled=True)
