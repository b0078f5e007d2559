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
import sys
from pathlib import Path

import yaml

from harness.data.contract import ContractError


def _convert(args: argparse.Namespace) -> int:
    # imported lazily: the converters are a separate module (and may pull optional parsers)
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


def _relabel(args: argparse.Namespace) -> int:
    from harness.data.contract import ContractError
    from harness.data.rules import Rule, relabel

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
    from harness.data.planted import PlantedConfig, generate_planted

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


def build_parser() -> argparse.ArgumentParser:
    from harness.data.stats import add_stats_args, main_stats
    from harness.data.synth import add_synth_args, main_synth
    from harness.data.validate import add_validate_args, main_validate

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
    add_validate_args(s)
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
    except (ContractError, FileExistsError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
