"""Does a model size read the history? The planted-rule family (harness/data/rules.py) on one source
world, each rule learned by several model variants at the same steps, val CTR AUC per (rule,
variant). Issue #20 item 4: OneTrans-S with the paper's defaults against OneTrans-S with the
history recipe, beside the tiny sizes the tests hold (tests/test_planted_history.py uses the same
world sizes, window and steps).

    python scripts/planted_sizes.py --out /tmp/planted_sizes.json              # every variant, every rule
    python scripts/planted_sizes.py --variants s-paper,s-recipe --rules item,count --steps 300

Prints one row per (rule, variant) as it finishes, with the wall time of the training, and writes
the rows as JSON. Trains through harness/probe.py (the harness' data module, model, loss, optimiser
and clipping in a plain loop), so a row is an experiment figure, not a run a report reads.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402  (after the repo root is on the path)

from harness.data.planted import PlantedConfig, generate_planted  # noqa: E402
from harness.data.rules import Rule, relabel  # noqa: E402
from harness.data.synth import generate_preset  # noqa: E402
from harness.probe import ProbeModel, load, train_val_auc  # noqa: E402
from model.onetrans import HISTORY_RECIPE  # noqa: E402

WINDOW = 8
RULES = {  # the test family (tests/test_planted_history.py)
    "item": Rule(kind="item", window=WINDOW),
    "side": Rule(kind="side", field="brand", window=WINDOW),
    "count": Rule(kind="count", field="category", window=WINDOW, k=3),
    "behavior": Rule(kind="behavior", field="brand", window=WINDOW, behavior=1),
    "recency": Rule(kind="side", field="brand", window=WINDOW // 4),
    "context": Rule(kind="context", field="brand", window=WINDOW, context="hour"),
}
# the history recipe's switches beyond the two learnability switches the tiny sizes already have
RECIPE = {
    k: v for k, v in HISTORY_RECIPE.items() if k not in ("shared_side_tables", "tokenizer_skip")
}
RECIPE_TRAIN = {"request_level": True, "cvr_loss": "clicked_per_impression"}
VARIANTS = {
    # OneTrans-S as the paper defines it: no learnability switch (model/onetrans.py SIZES)
    "s-paper": ProbeModel("onetrans", "onetrans-s", {}, {"request_level": True}),
    # OneTrans-S with the two learnability switches only
    "s-switches": ProbeModel(
        "onetrans",
        "onetrans-s",
        {"shared_side_tables": True, "tokenizer_skip": True},
        {"request_level": True},
    ),
    # OneTrans-S with the history recipe: the size the paper-scale sweeps run by default
    # (model/onetrans.py SIZES: the paper size + HISTORY_RECIPE)
    "s-recipe": ProbeModel("onetrans", "onetrans-s-recipe", {}, RECIPE_TRAIN),
    # the same with the readout's bias by rank (docs/learning-history.md section 22), which the
    # paper-scale sizes keep off
    "s-recipe-rbias": ProbeModel(
        "onetrans", "onetrans-s-recipe", {"recency_bias": True}, RECIPE_TRAIN
    ),
    "tiny-recipe": ProbeModel("onetrans", "onetrans-tiny", RECIPE, RECIPE_TRAIN),
    "din-tiny": ProbeModel("dcnv2_din", "tiny", {}, {"cvr_loss": "clicked_per_impression"}),
}


def _source(name: str, folder: Path) -> Path:
    if name == "planted":
        return generate_planted(folder, PlantedConfig(n_users=600), seed=1)
    return generate_preset(name, 0, folder, progress=False)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--source", default="ci", help="source world: a synthetic preset or 'planted'")
    p.add_argument("--rules", default=",".join(RULES), help=f"comma list of {', '.join(RULES)}")
    p.add_argument(
        "--variants", default=",".join(VARIANTS), help=f"comma list of {', '.join(VARIANTS)}"
    )
    p.add_argument("--seq-len", type=int, default=16)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, help="write the rows as JSON here")
    a = p.parse_args(argv)
    rules = [r.strip() for r in a.rules.split(",") if r.strip()]
    variants = [v.strip() for v in a.variants.split(",") if v.strip()]
    for name, known in (("rule", RULES), ("variant", VARIANTS)):
        bad = [x for x in (rules if name == "rule" else variants) if x not in known]
        if bad:
            p.error(f"unknown {name} {', '.join(bad)}; choose from {', '.join(known)}")
    torch.set_num_threads(a.threads)
    rows = []
    with tempfile.TemporaryDirectory(prefix="planted_sizes-") as tmp:
        source = _source(a.source, Path(tmp) / "source")
        for rule in rules:
            world = relabel(source, Path(tmp) / rule, RULES[rule], seed=0)
            dm, train, val = load(world, seq_len=a.seq_len, batch_size=a.batch)
            for v in variants:
                spec = VARIANTS[v]
                spec = ProbeModel(spec.name, spec.size, spec.overrides, {**spec.train, "lr": a.lr})
                t0 = time.perf_counter()
                auc = train_val_auc(dm, train, val, spec, a.steps, seed=a.seed)
                row = {
                    "source": a.source,
                    "rule": rule,
                    "variant": v,
                    "val_ctr_auc": round(auc, 4),
                    "steps": a.steps,
                    "batch": a.batch,
                    "seq_len": a.seq_len,
                    "lr": a.lr,
                    "seed": a.seed,
                    "wall_s": round(time.perf_counter() - t0, 1),
                }
                rows.append(row)
                print(
                    f"{a.source:8s} {rule:9s} {v:12s} val CTR AUC {auc:.4f}  ({row['wall_s']} s)",
                    flush=True,
                )
                if a.out:  # after every row: an interrupted sweep keeps what it measured
                    a.out.write_text(json.dumps(rows, indent=1))
    if a.out:
        print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
