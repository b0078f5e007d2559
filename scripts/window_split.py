"""CTR AUC of a finished run (or of the count-feature floor) split by whether the candidate item is
among the impression's last L history events, on the val and test splits:

    auc       the split's CTR AUC
    auc_in    the positives whose candidate is in the window ranked against every negative (how well
              an exact match is read)
    auc_out   the AUC over the impressions whose candidate is not in the window (what everything
              else gives: popularity, user, time)
    share_in  the share of positives whose candidate is in the window

    python scripts/window_split.py RUN_DIR [RUN_DIR ...] [--zero-numerics]
    python scripts/window_split.py --floor DATASET_DIR L

--zero-numerics scores the run with every NS numeric at its train mean (0 after standardisation):
how much the model leans on them. Reads the run's config.yaml and checkpoints/last.ckpt (weights
only). For experiment rows (docs/learning-history.md sections 12 and 19)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from harness.config import load_config  # noqa: E402
from harness.data.datamodule import OneTransDataModule  # noqa: E402
from harness.data.floor import FloorFeatures, floor_scores  # noqa: E402
from harness.metrics import window_aucs  # noqa: E402
from harness.probe import ProbeModel, build, window_scores  # noqa: E402

SPLITS = ("val", "test")


def _rounded(out: dict[str, float]) -> dict[str, float]:
    return {k: round(float(v), 4) for k, v in out.items()}


def floor_split(folder: Path, L: int) -> dict[str, dict[str, float]]:
    """The floor of harness/data/floor.py (its fit on train at window L), split."""
    f = FloorFeatures(folder, [L])
    score, _ = floor_scores(f, L)
    hit = f.counts(L)[:, f.names.index("item_in_window")] > 0
    return {
        s: _rounded(window_aucs(f.click[f.split == s], score[f.split == s], hit[f.split == s]))
        for s in SPLITS
    }


def run_split(run: Path, zero_numerics: bool) -> dict[str, dict[str, float]]:
    cfg = load_config(run / "config.yaml", stored=True)
    dm = OneTransDataModule(
        cfg.data.dataset,
        seq_len=cfg.data.seq_len,
        batch_size=cfg.data.batch_size,
        eval_batch_size=cfg.data.eval_batch_size,
        seed=cfg.data.data_seed,
    )
    dm.prepare_data()
    dm.setup("fit")
    spec = ProbeModel(
        cfg.model.name,
        cfg.model.size,
        dict(cfg.model.overrides),
        {"request_level": cfg.train.request_level, "cvr_loss": cfg.train.cvr_loss},
    )
    model, _ = build(dm, spec, seed=0)
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    state = {
        k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")
    }
    model.load_state_dict(state)

    def batches(split: str):
        for b in dm.loader(split):
            yield dict(b, ns_num=torch.zeros_like(b["ns_num"])) if zero_numerics else b

    return {s: _rounded(window_aucs(*window_scores(model, batches(s)))) for s in SPLITS}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", type=Path, nargs="*", help="finished run folders")
    ap.add_argument("--floor", nargs=2, metavar=("DATASET_DIR", "L"))
    ap.add_argument("--zero-numerics", action="store_true")
    a = ap.parse_args()
    if not a.runs and not a.floor:
        ap.error("give run folders, or --floor DATASET_DIR L")
    if a.floor:
        print(
            "floor",
            a.floor[0],
            "L",
            a.floor[1],
            json.dumps(floor_split(Path(a.floor[0]), int(a.floor[1]))),
        )
    for run in a.runs:
        if not (run / "checkpoints" / "last.ckpt").is_file():
            ap.error(f"{run}: no checkpoints/last.ckpt (a finished run folder is needed)")
        tag = " (numerics zeroed)" if a.zero_numerics else ""
        print(f"{run}{tag}", json.dumps(run_split(run, a.zero_numerics)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
