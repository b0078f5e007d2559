"""`python -m harness.data {synth,stats,validate,convert} ...`: the data command line.

synth     --preset {ci,laptop,paper} --seed N --out DIR   write a synthetic contract folder
stats     DIR [--json] [--stored]                         sizes, history lengths, label rates, oracle
          [--floor L ...]                                 + the count-feature floor at windows L (floor.py)
validate  DIR                                             every contract violation; exit 1 if any
convert   {movielens,taobao,tmall} RAW_DIR --out DIR      public logs -> contract folder
planted   --out DIR [--window 16 --n-brands 32 --control]  click = a planted history rule (a sanity world)
          --from SRC --rule KIND[:FIELD] --out DIR  relabel any dataset folder by a planted rule
                                                    (harness/data/rules.py: item, side, count,
                                                    behavior, context; --window --k --behavior
                                                    --context --positive-share --control)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pyarrow as pa
import yaml

from harness.data.contract import ContractError, Manifest
from harness.data.planted import PlantedConfig, generate_planted
from harness.data.resolve import ensure_dataset
from harness.data.rules import Rule, relabel
from harness.data.stats import compute_stats, format_stats
from harness.data.synth import PRESETS, generate_preset
from harness.data.validate import errors, unreadable_files, validate
from harness.runstore import RunStoreError


# ---- synth -----------------------------------------------------------------------------------
def add_synth_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", choices=sorted(PRESETS), default="ci")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--no-progress", action="store_true")


def main_synth(args: argparse.Namespace) -> int:
    t = time.perf_counter()
    out = generate_preset(args.preset, args.seed, args.out, progress=not args.no_progress)
    m = Manifest.load(out)
    s = m.stats
    print(
        f"wrote {out} in {time.perf_counter() - t:.1f}s: {s['users']} users, {s['items']} items, "
        f"{s['events']} events, {s['impressions']} impressions"
    )
    return 0


# ---- a dataset named on the command line -----------------------------------------------------
def add_folder_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "folder",
        help="dataset folder, or a dataset name as in run configs: synthetic:ci, "
        "synthetic:laptop (the cached built-in world, generated on first use)",
    )
    p.add_argument(
        "--cache-dir",
        default="data_cache",
        help="where synthetic:<preset> worlds are cached (data.cache_dir; default ./data_cache)",
    )
    p.add_argument(
        "--data-seed",
        type=int,
        default=0,
        help="seed of a synthetic:<preset> world (data.data_seed)",
    )


def folder_of(args: argparse.Namespace) -> Path:
    """The folder of the dataset the command names (a synthetic world generated on first use)."""
    return ensure_dataset(args.folder, args.data_seed, args.cache_dir, progress=True)


# ---- stats -----------------------------------------------------------------------------------
def add_stats_args(p: argparse.ArgumentParser) -> None:
    add_folder_args(p)
    p.add_argument("--json", action="store_true", help="print the statistics as JSON")
    p.add_argument(
        "--stored", action="store_true", help="print manifest.stats without reading the data"
    )
    p.add_argument(
        "--floor",
        type=int,
        nargs="+",
        metavar="L",
        help="also fit the count-feature floor at these windows (e.g. --floor 8 16 32): a logistic "
        "regression on history counts, its val/test AUC and coefficients (harness/data/floor.py); "
        "cached in DIR/.floor.json",
    )
    p.add_argument(
        "--no-floor-cache",
        action="store_true",
        help="recompute the floor even if DIR/.floor.json holds it (and do not write the cache)",
    )


def main_stats(args: argparse.Namespace) -> int:
    folder = folder_of(args)
    manifest = Manifest.load(folder)
    if args.stored and manifest.stats:
        stats = manifest.stats
    else:
        try:
            stats = compute_stats(folder, manifest)
        except (pa.ArrowException, OSError) as err:
            bad = unreadable_files(folder)
            raise ContractError(
                "\n".join(str(v) for v in bad)
                if bad
                else f"{folder}: cannot read the dataset: "
                f"{err}; check it with: python -m harness.data validate {folder}"
            ) from None
    floor = None
    if args.floor:
        # imported here: the floor pulls scipy (and torch for its as-of offsets), which the other
        # commands never need
        from harness.data.floor import compute_floor, format_floor

        if min(args.floor) < 1:
            raise ContractError(f"--floor: windows must be >= 1, got {args.floor}")
        floor = compute_floor(folder, args.floor, manifest=manifest, cache=not args.no_floor_cache)
    if args.json:
        print(json.dumps(stats if floor is None else {**stats, "floor": floor}, indent=2))
    else:
        print(format_stats(manifest, stats))
        if floor is not None:
            print(format_floor(floor))
    return 0


# ---- validate --------------------------------------------------------------------------------
def main_validate(args: argparse.Namespace) -> int:
    folder = folder_of(args)
    found = validate(folder)
    bad, warn = errors(found), [v for v in found if not v.is_error]
    if not bad:
        print(
            f"{folder}: valid (contract v{Manifest.load(folder).contract_version})"
            + (f", {len(warn)} warning(s)" if warn else "")
        )
    else:
        print(f"{folder}: {len(bad)} violation(s)" + (f", {len(warn)} warning(s)" if warn else ""))
    for v in bad + warn:
        print(f"- {v}")
    return 1 if bad else 0


# ---- convert ---------------------------------------------------------------------------------
def _convert(args: argparse.Namespace) -> int:
    # imported here: the converters pull pandas and the raw-format parsers, which no other command
    # needs (and an install without them still has synth/stats/validate)
    try:
        from harness.data.converters import convert
    except ImportError as e:
        print(f"convert: harness.data.converters is not available ({e})", file=sys.stderr)
        return 2
    opts = {}
    for kv in args.opt:
        if "=" not in kv:
            print(
                f"convert: --opt {kv!r} must look like KEY=VALUE (e.g. --opt negatives=4)",
                file=sys.stderr,
            )
            return 2
        key, value = kv.split("=", 1)
        opts[key] = yaml.safe_load(value)  # "4" -> 4, "true" -> True, "a" -> "a"
    out = convert(args.source, args.raw, args.out, **opts)
    print(f"wrote {out}; check it with: python -m harness.data validate {out}")
    return 0


# ---- planted ---------------------------------------------------------------------------------
def _relabel(args: argparse.Namespace) -> int:
    try:
        rule = Rule.parse(
            args.rule,
            window=args.window,
            k=args.k,
            behavior=args.behavior,
            context=args.context,
            positive_share=args.positive_share,
            control=args.control,
        )
        out = relabel(args.source, args.out, rule, seed=args.seed)
    except (ValueError, FileExistsError, FileNotFoundError, ContractError) as e:
        print(f"planted: {e}", file=sys.stderr)
        return 2
    print(
        f"wrote {out} ({rule.name} on {args.source}); train on it with: python -m harness.train "
        f"--config configs/tiny.yaml --set data.dataset={out}"
    )
    return 0


def _planted(args: argparse.Namespace) -> int:
    if args.source is not None:
        return _relabel(args)
    if args.rule is not None:
        print("planted: --rule relabels an existing dataset: add --from DIR", file=sys.stderr)
        return 2

    if args.window < 1 or args.n_brands < 2:
        print("planted: --window must be >= 1 and --n-brands >= 2", file=sys.stderr)
        return 2
    try:
        out = generate_planted(
            args.out,
            PlantedConfig(window=args.window, n_brands=args.n_brands, mismatch_users=args.control),
            seed=args.seed,
        )
    except FileExistsError as e:
        print(f"planted: {e}", file=sys.stderr)
        return 2
    print(
        f"wrote {out}; train on it with: python -m harness.train --config configs/tiny.yaml "
        f"--set data.dataset={out} --set train.lr=0.001 --set train.max_epochs=3"
    )
    return 0


# ---- the parser ------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m harness.data",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("synth", help="generate a synthetic world (docs/synthetic-world.md)")
    add_synth_args(s)
    s.set_defaults(func=main_synth)
    s = sub.add_parser("stats", help="dataset statistics and Bayes-optimal scores")
    add_stats_args(s)
    s.set_defaults(func=main_stats)
    s = sub.add_parser(
        "validate", help="check a folder against the data contract (docs/data-contract.md)"
    )
    add_folder_args(s)
    s.set_defaults(func=main_validate)
    s = sub.add_parser(
        "planted", help="a world whose click is a known history rule (harness/data/planted.py)"
    )
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument(
        "--window", type=int, default=16, help="the rule reads this many most recent events"
    )
    s.add_argument("--n-brands", type=int, default=32)
    s.add_argument(
        "--control",
        action="store_true",
        help="hand every user's events to another user (labels kept)",
    )
    s.add_argument(
        "--from", dest="source", type=Path, help="relabel this dataset folder instead (--rule)"
    )
    s.add_argument("--rule", help="with --from: item | side:F | count:F | behavior:F | context:F")
    s.add_argument("--k", type=int, default=2, help="count rule: matches needed")
    s.add_argument("--behavior", type=int, default=1, help="behavior rule: the type id read")
    s.add_argument("--context", default="hour", help="context rule: the impressions column")
    s.add_argument(
        "--positive-share",
        type=float,
        default=0.5,
        help="with --from: share of candidates drawn from the events the rule reads",
    )
    s.set_defaults(func=_planted)
    s = sub.add_parser(
        "convert", help="convert a public log to the contract (harness/data/converters)"
    )
    s.add_argument("source", choices=["movielens", "taobao", "tmall"])
    s.add_argument("raw", type=Path, help="folder with the raw files")
    s.add_argument("--out", type=Path, required=True)
    s.add_argument(
        "--opt",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="converter option (repeatable), passed as a keyword argument (value parsed as YAML)",
    )
    s.set_defaults(func=_convert)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ContractError, FileExistsError, FileNotFoundError, RunStoreError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
