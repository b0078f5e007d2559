"""The prepared dataset in memory: a contract folder read, checked and joined once into the arrays
that batches are cut from (`PreparedData`, `prepare`). harness/data/datamodule.py cuts the batches;
harness/data/mapped.py builds the same arrays out of core, batch by batch, with the readers and
checks of this module.

Memory: O(events + impressions x features); sequences are gathered per batch, never stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

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
from harness.data.sequences import EventStore, asof_offsets
from model.features import FeatureSpec


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


def _check_range(
    values: np.ndarray, lo: int, hi: int, where: str, col: str, fix: str, row0: int = 0
) -> None:
    bad = np.flatnonzero((values < lo) | (values >= hi))
    if len(bad):
        i = int(bad[0])
        raise ContractError(
            f"{where}: column '{col}' has {len(bad)} value(s) outside [{lo}, {hi}), "
            f"e.g. row {row0 + i} = {values[i]}. {fix}"
        )


class _KeyIndex:
    """A table's key column sorted once (its rows looked up by key, batch after batch)."""

    def __init__(self, table_keys: np.ndarray, key: str, table: str) -> None:
        self.order = np.argsort(table_keys, kind="stable")
        self.sorted = table_keys[self.order]
        self.key, self.table = key, table
        sk = self.sorted
        if len(sk) > 1 and (np.diff(sk) == 0).any():
            dup = sk[np.flatnonzero(np.diff(sk) == 0)[0]]
            raise ContractError(
                f"{table}: {key} {dup} appears more than once; keep one row per {key}."
            )

    def rows(self, keys: np.ndarray, where: str, row0: int = 0) -> np.ndarray:
        """Row of the table for each key (vectorised join); every key must be present."""
        sk, key, table = self.sorted, self.key, self.table
        pos = np.searchsorted(sk, keys).clip(0, max(len(sk) - 1, 0))
        found = (sk[pos] == keys) if len(sk) else np.zeros(len(keys), bool)
        if not found.all():
            i = int(np.flatnonzero(~found)[0])
            raise ContractError(
                f"{where}: row {row0 + i} has {key} = {keys[i]} with no row in {table}; "
                f"add the missing {key}s to {table} or drop those rows."
            )
        return self.order[pos]


def _lookup(
    keys: np.ndarray, table_keys: np.ndarray, where: str, key: str, table: str
) -> np.ndarray:
    """Row of `table` for each key (vectorised join); every key must be present."""
    return _KeyIndex(table_keys, key, table).rows(keys, where)


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


REQUEST_COLUMNS = ["request_id", "user_id", "ts", "item_id", "click", "conversion", "split"]


def _read_requests(folder: Path, manifest: Manifest, where: str) -> _Requests:
    """impressions.parquet read whole and checked (`_requests_from`)."""
    return _requests_from(_read(folder, IMPRESSIONS, REQUEST_COLUMNS), manifest, where)


def _requests_from(im: pd.DataFrame, manifest: Manifest, where: str, row0: int = 0) -> _Requests:
    """Impression rows checked: item ids in range, each request one contiguous run with a single
    user, ts and split, split names from SPLITS, 0/1 labels. `row0`: the file row of im's first
    row (messages name file rows when im is one batch of a larger table)."""
    n = len(im)
    rid, user = _int_column(im, "request_id", where), _int_column(im, "user_id", where)
    ts, item = _int_column(im, "ts", where), _int_column(im, "item_id", where)
    _check_range(
        item,
        0,
        manifest.item_vocab,
        where,
        "item_id",
        "Raise manifest item_vocab or remap ids.",
        row0=row0,
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
                f"{where}: request {rid[bad[0]]} (row {row0 + bad[0]}) mixes several '{col}' "
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
            raise ContractError(f"{where}: column '{col}' must be 0/1, row {row0 + i} = {v[i]}.")
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

    def __init__(
        self,
        folder: Path,
        req: _Requests,
        tables: dict[str, tuple[pd.DataFrame, _KeyIndex, str]] | None = None,
        row0: int = 0,
    ) -> None:
        # `tables`: users / items read and indexed once, shared by the joins of successive
        # impression batches (harness/data/mapped.py); `row0`: the file row of req's first row
        self.folder, self.req, self.row0 = folder, req, row0
        self.tables = {} if tables is None else tables
        self.rows: dict[str, np.ndarray] = {}

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
            self.tables[table] = (df, _KeyIndex(_int_column(df, key, path), key, path), path)
        df, index, where = self.tables[table]
        if table not in self.rows:
            self.rows[table] = index.rows(keys, req.where, self.row0)
        rows = self.rows[table]
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
            row0=self.row0 if where == self.req.where else 0,
        )
        return vals.astype(np.int64)

    def categoricals(self, manifest: Manifest, names, vocabs) -> np.ndarray:
        """Several categorical features stacked as columns, (impressions, len(names))."""
        if not names:
            return np.zeros((len(self.req.im), 0), np.int64)
        return np.stack([self.categorical(manifest, c, v) for c, v in zip(names, vocabs)], 1)


def _raw_numerics(join: _FeatureJoin, manifest: Manifest, names) -> np.ndarray:
    """The numeric features as float64 columns (n impressions, len(names)); finite, else an error."""
    nums = []
    for name in names:
        vals, where = join.column(manifest.feature(name).table, name)
        vals = vals.astype(np.float64)
        bad = np.flatnonzero(~np.isfinite(vals))
        if len(bad):
            raise ContractError(
                f"{where}: numeric column '{name}' has {len(bad)} NaN/infinite value(s) "
                f"(first at joined impression row {join.row0 + bad[0]}). Impute or drop them."
            )
        nums.append(vals)
    return np.stack(nums, 1) if nums else np.zeros((len(join.req.im), 0))


def _standardised_numerics(
    join: _FeatureJoin, manifest: Manifest, names, split: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The numeric features (finite, else an error) standardised by the train split's mean and
    std (all impressions when there is no train split); returns (float32 values, mean, std)."""
    ns_num = _raw_numerics(join, manifest, names)
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
