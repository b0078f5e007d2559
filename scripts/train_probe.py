"""A quick learning probe: train a model on a dataset folder with the harness' data module, model
registry, loss and optimiser (no Lightning, no checkpoints, no run folder) and print the CTR AUC on a
train sample and on the val split every few steps. For experiment rows (docs/learning-history.md),
not for figures a report quotes: those come from `python -m harness.train` / `harness.sweep`.

    python scripts/train_probe.py DIR [--model onetrans --size onetrans-tiny] [--seq-len 64]
        [--batch 256] [--steps 1600] [--every 400] [--lr 1e-3]
        [--set match_init=true ...]      model Config overrides (JSON values)
        [--tset request_level=true ...]  TrainConfig fields (JSON values, else strings), the
                                         execution switches (request_level, attention, recompute,
                                         compile) included: the run config's train.* keys
        [--out rows.json]

An execution switch given with --set (`--set request_level=true`, the spelling from before
request_level moved to train.request_level) is read as the --tset of the same name, with a note.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from itertools import islice
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from harness.config import MOVED_TO_TRAIN, ConfigError  # noqa: E402
from harness.data.datamodule import OneTransDataModule  # noqa: E402
from harness.metrics import window_aucs  # noqa: E402
from harness.probe import ProbeModel, build, fit, window_scores  # noqa: E402


def parse_sets(items: list[str], strings_ok: bool) -> dict:
    out = {}
    for item in items:
        key, _, raw = item.partition("=")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            if not strings_ok:
                raise SystemExit(
                    f'--set {item}: the value must be JSON (true, 3, 0.5, "x")'
                ) from None
            out[key] = raw
    return out


def split_moved(sets: dict) -> tuple[dict, dict]:
    """(model overrides, TrainConfig fields): --set keys that are execution switches now living in
    train.* (request_level) move to the TrainConfig, with a note of the new spelling."""
    overrides, moved = {}, {}
    for key, value in sets.items():
        if key in MOVED_TO_TRAIN:
            new = MOVED_TO_TRAIN[key]
            print(
                f"note: --set {key}=... is the run config's train.{new} now; read as --tset "
                f"{new}=... (write that)",
                file=sys.stderr,
            )
            moved[new] = value
        else:
            overrides[key] = value
    return overrides, moved


class Epochs:
    """The train loader, one epoch per pass; with `reshuffle` each pass is the sampler's next epoch
    (set_epoch, as Lightning calls it), without it every pass repeats epoch 0's order."""

    def __init__(self, dm: OneTransDataModule, reshuffle: bool) -> None:
        self.dm, self.reshuffle, self.epoch = dm, reshuffle, 0

    def __iter__(self):
        loader = self.dm.train_dataloader()
        if self.reshuffle:
            loader.sampler.set_epoch(self.epoch)
        self.epoch += 1
        return iter(loader)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--model", default="onetrans")
    ap.add_argument("--size", default="onetrans-tiny")
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=1600)
    ap.add_argument("--every", type=int, default=400)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--train-batches",
        type=int,
        default=20,
        help="train batches in the train AUC (0: the whole train split)",
    )
    ap.add_argument("--set", action="append", default=[], help="model override KEY=JSON")
    ap.add_argument(
        "--tset",
        action="append",
        default=[],
        help="TrainConfig field KEY=VALUE (train.KEY of a run config), e.g. request_level=true",
    )
    ap.add_argument(
        "--freeze",
        action="append",
        default=[],
        help="keep parameters whose name starts with this at their initial values (a diagnostic: "
        "e.g. item_emb, to ask whether memorising item ids is what the model learns)",
    )
    ap.add_argument(
        "--threads", type=int, default=1, help="torch threads (a harness run takes the cores)"
    )
    ap.add_argument(
        "--seed-like-harness",
        action="store_true",
        help="seed as harness.train does (Lightning's seed_everything after the data module is "
        "set up) instead of torch.manual_seed before it",
    )
    ap.add_argument(
        "--reshuffle",
        action="store_true",
        help="a new train order every epoch (the sampler's set_epoch, as Lightning calls it); "
        "without it every epoch repeats epoch 0's order",
    )
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    if not a.seed_like_harness:
        torch.manual_seed(a.seed)
    dm = OneTransDataModule(
        a.folder, seq_len=a.seq_len, batch_size=a.batch, eval_batch_size=2048, seed=a.seed
    )
    dm.prepare_data()
    dm.setup("fit")
    if a.seed_like_harness:
        import lightning as L  # only for this switch

        L.seed_everything(a.seed, workers=True, verbose=False)
    overrides, moved = split_moved(parse_sets(a.set, False))
    spec = ProbeModel(a.model, a.size, overrides, {"lr": a.lr, **moved, **parse_sets(a.tset, True)})
    # the execution switches (train.request_level, ...) reach the model as in a run (harness.probe
    # builds it through harness.resolved.execution, which refuses one the model lacks); torch is
    # seeded above, as the experiment rows were
    try:
        model, cfg = build(dm, spec, seed=None)
    except ConfigError as e:  # a user's mistake: the message, not a traceback
        raise SystemExit(f"error: {e}") from None
    frozen = [n for n, p in model.named_parameters() if any(n.startswith(f) for f in a.freeze)]
    if a.freeze and not frozen:
        ap.error(f"--freeze {a.freeze}: no parameter name starts with it")
    for n, p in model.named_parameters():
        p.requires_grad_(n not in frozen)

    def evaluate(split: str, max_batches: int | None) -> dict[str, float]:
        """CTR AUC over the split (or its first max_batches), and the same AUC split by whether the
        candidate item is among the impression's seq_len history events (harness.metrics
        window_aucs: `auc_in`, `auc_out`, `share_in`)."""
        y, s, hit = window_scores(model, islice(dm.loader(split), max_batches))
        out = window_aucs(y, s, hit)
        return {k: round(float(v), 4) for k, v in out.items()}

    rows, t0 = [], time.time()

    def report(step: int, loss: torch.Tensor) -> None:
        if step % a.every and step != a.steps:
            return
        tr = evaluate("train", a.train_batches if a.train_batches > 0 else None)
        va = evaluate("val", None)
        row = {
            "step": step,
            "loss": round(float(loss.detach()), 4),
            "train_auc": tr["auc"],
            "val_auc": va["auc"],
            **{f"train_{k}": v for k, v in tr.items() if k != "auc"},
            **{f"val_{k}": v for k, v in va.items() if k != "auc"},
            "seconds": round(time.time() - t0),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)

    fit(model, cfg, Epochs(dm, a.reshuffle), a.steps, on_step=report)
    if a.out:
        a.out.write_text(
            json.dumps(
                {"args": {**vars(a), "folder": str(a.folder), "out": str(a.out)}, "rows": rows},
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
