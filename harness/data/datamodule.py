"""OneTransDataModule: any contract folder (docs/data-contract.md) -> batches of model/features.py.

Design (docs/data-module.md):
- Set-up reads the folder once, checks it (clear ContractError naming file, column, row and fix),
  joins the non-sequential features to every impression (vectorised), standardises numerics on
  the train split, and computes each request's as-of slice of the event log (sequences.py):
  `prepared.prepare` in memory (storage="memory"), or `mapped.prepare_mapped` built once on disk
  and memory-mapped (storage="mapped", for logs larger than memory). Sequences are gathered per
  batch, never stored.
- A dataset item is a whole collated batch (DataLoader(batch_size=None)): the sampler yields
  (epoch, batch number) and `BatchDataset[...]` gathers the batch with one fancy index per field.
- Requests stay whole: a batch holds R sequence rows and `req_index` maps impressions to them.
- Train order is shuffled per (seed, epoch) at request granularity; val/test (and train with
  chronological=True, the next-batch protocol) keep time order. `shuffle_block` > 0 shuffles with
  locality instead (`block_shuffle`: blocks of consecutive requests, mixed a window at a time), for
  mapped arrays larger than the page cache, where a uniform order reads the disk at random. Every
  process derives the same plan from (seed, epoch), so workers and DDP ranks agree without
  communication; rank k takes batches k, k + world, ... (train: truncated to an equal count per
  rank so DDP never waits on a missing one).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from harness.data.contract import ContractError, Manifest
from harness.data.prepared import PreparedData, prepare
from harness.data.sequences import gather_sequences
from harness.eval_sample import sample_requests

Batching = Literal["requests", "fixed"]
Storage = Literal["memory", "mapped"]


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
    shuffle_block: int = 0,
    shuffle_window: int = 16,
) -> tuple[np.ndarray, np.ndarray]:
    """(impression order, batch boundaries) for one epoch of one split: the plain form of
    `plan_epoch` (the reference its parity test compares against), one index per impression.

    batching="requests": whole requests, greedily packed to at most batch_size impressions.
    batching="fixed": exactly batch_size impressions; a request cut by a boundary appears in both
    batches with its own (identical) sequence row, so every impression still sees its exact history."""
    requests = _epoch_requests(requests, shuffle, seed, epoch, shuffle_block, shuffle_window)
    sizes = data.req_hi[requests] - data.req_lo[requests]
    # expand request ranges into impression indices without a per-request loop
    offs = np.repeat(data.req_lo[requests] - np.concatenate([[0], np.cumsum(sizes)[:-1]]), sizes)
    order = np.arange(int(sizes.sum()), dtype=np.int64) + offs
    return order, _batch_bounds(sizes, batch_size, batching, drop_last)


def _epoch_requests(
    requests: np.ndarray, shuffle: bool, seed: int, epoch: int, block: int = 0, window: int = 16
) -> np.ndarray:
    if not shuffle:
        return requests
    rng = np.random.default_rng([seed, epoch])
    if block <= 0:  # uniform: the default, and the order of every run before shuffle_block
        return requests[rng.permutation(len(requests))]
    return requests[block_shuffle(len(requests), block, window, rng)]


def block_shuffle(n: int, block: int, window: int, rng: np.random.Generator) -> np.ndarray:
    """A permutation of range(n) with locality, for arrays read from disk (data.shuffle_block):
    positions cut into blocks of `block` consecutive ones, the blocks in random order, and the
    positions of each run of `window` consecutive blocks of that order shuffled together (a
    shuffle buffer of window x block requests, as streaming loaders keep). A batch then reads from
    at most 2 x window stretches of the arrays, each `block` requests long, instead of one
    stretch per request; the price is that `window x block / batch` consecutive batches share the
    same few stretches (docs/data-module.md has both measured)."""
    n_blocks = -(-n // block)
    starts = rng.permutation(n_blocks).astype(np.int64) * block
    lens = np.minimum(block, n - starts)
    ends = np.cumsum(lens)
    # the blocks laid end to end in their new order, without a loop per position
    pos = np.repeat(starts - (ends - lens), lens) + np.arange(n, dtype=np.int64)
    for g in range(0, n_blocks, window):  # one step per window of blocks, not per position
        lo, hi = ends[g] - lens[g], ends[min(g + window, n_blocks) - 1]
        pos[lo:hi] = pos[lo:hi][rng.permutation(hi - lo)]
    return pos


def _batch_bounds(
    sizes: np.ndarray, batch_size: int, batching: Batching, drop_last: bool
) -> np.ndarray:
    """Batch boundaries, in impression positions of the epoch's request order."""
    n = int(sizes.sum())
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
    return bounds


@dataclass(frozen=True)
class EpochPlan:
    """One epoch of one split, held per request, not per impression (8 + 8 bytes per request
    instead of 8 per impression: a 450M-impression log's plan is about 1.4 GB, not 3.6 GB plus
    the temporaries that build it). `impressions(b)` gives batch b's impression rows, the same as
    plan_batches' order[bounds[b]:bounds[b + 1]]."""

    requests: np.ndarray  # request rows in epoch order
    cum: np.ndarray  # impressions before each of them, and the total at the end (len R + 1)
    req_lo: np.ndarray  # the data's first impression of each request row
    bounds: np.ndarray  # batch boundaries in impression positions
    first: np.ndarray  # per batch: the epoch-order index of the request holding its first row
    stop: np.ndarray  # per batch: one past the index of the last request it overlaps

    def impressions(self, b: int) -> np.ndarray:
        k0, k1 = self.first[b], self.stop[b]
        c = self.cum[k0 : k1 + 1]
        # the rows of requests k0..k1-1 in order (a batch's few requests expanded at once),
        # then the batch's part of them (fixed batching may cut the first and the last request)
        rows = np.repeat(self.req_lo[self.requests[k0:k1]] - c[:-1], np.diff(c))
        rows += np.arange(c[0], c[-1], dtype=np.int64)
        return rows[self.bounds[b] - c[0] : self.bounds[b + 1] - c[0]]


def plan_epoch(
    data: PreparedData,
    requests: np.ndarray,
    batch_size: int,
    *,
    batching: Batching,
    shuffle: bool,
    seed: int,
    epoch: int,
    drop_last: bool,
    shuffle_block: int = 0,
    shuffle_window: int = 16,
) -> EpochPlan:
    """The batches of one epoch (same batches as plan_batches, held per request)."""
    requests = _epoch_requests(requests, shuffle, seed, epoch, shuffle_block, shuffle_window)
    sizes = data.req_hi[requests] - data.req_lo[requests]
    cum = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
    bounds = _batch_bounds(sizes, batch_size, batching, drop_last)
    return EpochPlan(
        requests=requests,
        cum=cum,
        req_lo=data.req_lo,
        bounds=bounds,
        first=np.searchsorted(cum, bounds[:-1], side="right") - 1,
        stop=np.searchsorted(cum, bounds[1:], side="left"),
    )


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
        shuffle_block: int = 0,
        shuffle_window: int = 16,
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
            shuffle_block=shuffle_block,
            shuffle_window=shuffle_window,
        )
        self._plan: tuple[int, EpochPlan] | None = None

    def plan(self, epoch: int) -> EpochPlan:
        if self._plan is None or self._plan[0] != epoch:  # cached: one plan per epoch per process
            self._plan = (epoch, plan_epoch(self.data, self.requests, epoch=epoch, **self.kw))
        return self._plan[1]

    def n_batches(self, epoch: int = 0) -> int:
        return len(self.plan(epoch).bounds) - 1

    def __len__(self) -> int:
        return self.n_batches(0)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        epoch, b = key
        return self.batch(self.plan(epoch).impressions(b))

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
        storage: Storage = "memory",
        mapped_dir: str | Path | None = None,
        shuffle_block: int = 0,
        shuffle_window: int = 16,
    ) -> None:
        super().__init__()
        if batching not in ("requests", "fixed"):
            raise ValueError(f"batching must be 'requests' or 'fixed', got {batching!r}")
        if storage not in ("memory", "mapped"):
            raise ValueError(f"storage must be 'memory' or 'mapped', got {storage!r}")
        # "mapped": the prepared arrays built once under mapped_dir and memory-mapped
        # (harness/data/mapped.py; bounded memory for logs larger than RAM)
        self.storage = storage
        self.mapped_dir = (
            Path(mapped_dir) if mapped_dir is not None else self.folder_default_mapped(folder)
        )
        if shuffle_block < 0 or shuffle_window < 1:
            raise ValueError(
                f"shuffle_block must be >= 0 and shuffle_window >= 1, got {shuffle_block}, "
                f"{shuffle_window}"
            )
        # train order with locality (block_shuffle); 0: uniform
        self.shuffle_block, self.shuffle_window = shuffle_block, shuffle_window
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

    @staticmethod
    def folder_default_mapped(folder: str | Path) -> Path:
        """Where mapped arrays go when no directory is given: beside the dataset folder."""
        return Path(folder).resolve().parent / ".prepared"

    def setup(self, stage: str | None = None) -> None:
        if self.data is None:
            if self.storage == "mapped":
                from harness.data.mapped import prepare_mapped  # on use

                # a uniformly shuffled epoch reads the arrays in no order: no read-ahead
                uniform = not self.chronological and self.shuffle_block == 0
                self.data = prepare_mapped(
                    self.folder, self.manifest, self.mapped_dir, random_access=uniform
                )
            else:
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
            shuffle_block=self.shuffle_block,
            shuffle_window=self.shuffle_window,
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
