"""Bounded-memory helpers for checks and statistics that read a table batch by batch.

`table_batches` yields a table (a file or a folder of parts) in row order, a bounded number of
rows at a time. `KeyPartitions` groups rows by an integer key when the rows of one key need not be
contiguous (a request_id written at two timestamps, request ids in no particular order): rows go to
one of K partitions by a hash of the key, on disk when the table is longer than one partition, so
every row of a key lands in the same partition, in row order, and each partition is then read back
alone. Memory is one batch, or one partition, whatever the table's length.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from harness.data.contract import table_files

# Rows per batch read: a few columns of 1M rows are tens of MB, and the per-batch overhead of the
# vectorised checks is negligible beside it (a 22M-row table is 21 batches).
BATCH_ROWS = 1 << 20

# Rows per partition on average: 4M rows of a few int64 columns is about 130 MB held at once.
PARTITION_ROWS = 1 << 22


def table_batches(
    path: Path, columns: list[str], batch_rows: int | None = None
) -> Iterator[pa.Table]:
    """The table's rows in table_files order (the order read_table concatenates them in), about
    batch_rows (default BATCH_ROWS, read at the call) at a time, only `columns`: consecutive row
    groups read together up to batch_rows, a larger row group read in slices of batch_rows.

    Whole row groups rather than ParquetFile.iter_batches over the file: measured on a 13M-row
    impressions file (13 row groups of 1M rows), iter_batches held more the longer
    the file (peak RSS 281 MB above the interpreter at 4.5M rows, 405 MB at 13M), reading row
    groups did not (171 MB, 176 MB)."""
    size = batch_rows or BATCH_ROWS
    for f in table_files(path):
        pf = pq.ParquetFile(f)
        group: list[int] = []
        rows = 0
        for rg in range(pf.num_row_groups):
            n = pf.metadata.row_group(rg).num_rows
            if group and rows + n > size:
                yield pf.read_row_groups(group, columns=columns)
                group, rows = [], 0
            if n > size:
                sliced = pq.ParquetFile(f, pre_buffer=False)
                for b in sliced.iter_batches(batch_size=size, row_groups=[rg], columns=columns):
                    yield pa.Table.from_batches([b])
            elif n:
                group.append(rg)
                rows += n
        if group:
            yield pf.read_row_groups(group, columns=columns)


def _mix(key: np.ndarray, k: int) -> np.ndarray:
    """The partition of each key: a multiplicative hash, so ids that share a stride (every id a
    multiple of k, say) still spread over all k partitions."""
    h = key.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    return ((h >> np.uint64(32)) % np.uint64(k)).astype(np.int64)


class KeyPartitions:
    """Rows (int64 columns, the first one the key) grouped by key into partitions.

    `add(columns)` appends a batch; `partitions()` then yields each partition as a dict of arrays,
    its rows in the order they were added. One partition (in memory) up to `rows_per_partition`
    expected rows (default PARTITION_ROWS), else ceil(n_rows / rows_per_partition) temporary files, removed by `close()`
    (or on leaving a `with` block)."""

    def __init__(
        self, n_rows: int, names: tuple[str, ...], rows_per_partition: int | None = None
    ) -> None:
        self.names = names
        self.dtype = np.dtype([(n, np.int64) for n in names])
        self.k = max(1, -(-n_rows // (rows_per_partition or PARTITION_ROWS)))
        self._mem: list[np.ndarray] = []
        self._dir: tempfile.TemporaryDirectory | None = None
        self._files: list = []
        if self.k > 1:
            self._dir = tempfile.TemporaryDirectory(prefix="harness-partitions-")
            self._files = [open(Path(self._dir.name) / f"{i}.bin", "wb") for i in range(self.k)]

    def __enter__(self) -> KeyPartitions:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def add(self, *columns: np.ndarray) -> None:
        rec = np.empty(len(columns[0]), self.dtype)
        for name, col in zip(self.names, columns, strict=True):
            rec[name] = col
        if self.k == 1:
            self._mem.append(rec)
            return
        part = _mix(rec[self.names[0]], self.k)
        order = np.argsort(part, kind="stable")  # stable: rows of a partition stay in row order
        bounds = np.searchsorted(part[order], np.arange(self.k + 1))
        for i in range(self.k):
            if bounds[i + 1] > bounds[i]:
                rec[order[bounds[i] : bounds[i + 1]]].tofile(self._files[i])

    def partitions(self) -> Iterator[dict[str, np.ndarray]]:
        if self.k == 1:
            rec = np.concatenate(self._mem) if self._mem else np.empty(0, self.dtype)
            self._mem = []
            yield {n: rec[n] for n in self.names}
            return
        for i, f in enumerate(self._files):
            f.close()
            rec = np.fromfile(Path(self._dir.name) / f"{i}.bin", dtype=self.dtype)
            yield {n: rec[n] for n in self.names}

    def close(self) -> None:
        for f in self._files:
            f.close()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None
