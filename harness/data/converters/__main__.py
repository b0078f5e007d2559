"""python -m harness.data.converters {movielens,taobao,tmall} RAW_DIR OUT_DIR [--neg-ratio N] ...

The converters' command line (`python -m harness.data convert` is the same with --opt KEY=VALUE)."""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from harness.data.converters import convert
from harness.data.converters.common import NEGATIVES


def add_convert_args(p) -> None:
    """Arguments of `convert` for an argparse (sub)parser."""
    p.add_argument("source", choices=["movielens", "taobao", "tmall"], help="raw format")
    p.add_argument("raw", type=Path, help="folder holding the raw files")
    p.add_argument(
        "out", type=Path, help="contract folder to write (must not exist unless --overwrite)"
    )
    p.add_argument(
        "--neg-ratio",
        type=int,
        help="sampled negatives per positive (default: 0 movielens, 4 others)",
    )
    p.add_argument(
        "--negatives",
        choices=list(NEGATIVES),
        help="taobao/tmall negative sampling (popularity: whole-log counts; "
        "popularity_asof: counts before the request)",
    )
    p.add_argument("--val-frac", type=float, default=0.1)
    p.add_argument("--test-frac", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--no-item-pop",
        dest="item_pop",
        action="store_false",
        help="leave out the item_pop impression feature (the item's events so far; docs/converters.md)",
    )
    p.add_argument("--overwrite", action="store_true")


def main_convert(args) -> int:
    opts = {
        "val_frac": args.val_frac,
        "test_frac": args.test_frac,
        "seed": args.seed,
        "item_pop": args.item_pop,
        "overwrite": args.overwrite,
    }
    if args.neg_ratio is not None:
        opts["neg_ratio"] = args.neg_ratio
    if args.negatives is not None:
        if args.source == "movielens":
            raise SystemExit("--negatives applies to taobao and tmall only")
        opts["negatives"] = args.negatives
    out = convert(args.source, args.raw, args.out, **opts)
    stats = yaml.safe_load((out / "manifest.yaml").read_text())["stats"]
    print(
        f"wrote {out}: {stats['events']:,} events, {stats['users']:,} users, {stats['items']:,} items, "
        f"{stats['impressions']:,} impressions in {stats['requests']:,} requests"
    )
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m harness.data.converters", description=__doc__)
    add_convert_args(parser)
    raise SystemExit(main_convert(parser.parse_args()))
