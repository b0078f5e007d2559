"""Converters from public raw logs to the data contract (docs/converters.md).

convert("movielens", raw_dir, out_dir, neg_ratio=0)
convert("taobao", raw_dir, out_dir, neg_ratio=4)
convert("tmall", raw_dir, out_dir, neg_ratio=4)

The command line is in __main__.py (`python -m harness.data.converters`).
"""

from __future__ import annotations

from importlib import import_module
from pathlib import Path

SOURCES = {
    "movielens": "movielens",
    "movielens-1m": "movielens",
    "ml-1m": "movielens",
    "taobao": "taobao",
    "taobao-userbehavior": "taobao",
    "tmall": "tmall",
    "tmall-2014": "tmall",
}


def convert(source: str, raw: Path, out: Path, **opts) -> Path:
    """Convert the raw files in `raw` to a contract folder `out` (written atomically); returns `out`."""
    if source not in SOURCES:
        raise ValueError(
            f"unknown source {source!r}; choose one of {sorted(set(SOURCES.values()))}"
        )
    module = import_module(f"harness.data.converters.{SOURCES[source]}")
    return module.convert(Path(raw), Path(out), **opts)
