"""Helpers of the training-run tests (not part of the package): a tiny stand-in ranking model, a
small synthetic world and the run config the tests start from. Imported as `from tests import
train_support as S`; its fixtures (`world`, `stand_in`) are in tests/conftest.py.

The stand-in answers the model protocol of model/base.py (so the harness can be tested without the
real models) and registers itself in model.registry under MODEL. It has dropout on purpose: the
resume test then also checks that RNG state survives a checkpoint.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from harness.config import RunConfig, apply_overrides
from model.base import RankingModel
from model.features import FeatureSpec

MODEL = "tiny_standin"


@dataclass(frozen=True, kw_only=True)
class Config:
    d_model: int = 8
    n_layers: int = 1
    dropout: float = 0.1
    nan_after_steps: int = (
        -1
    )  # >= 0: forward returns NaN logits once this many forwards ran in training
    sleep_s: float = 0.0  # per training forward: slows a run down so a test can kill it mid-way
    # >= 0: at this training forward the process sends itself SIGINT and then fails, as a data
    # worker that got the terminal's Ctrl-C too would make the next batch fail
    ctrl_c_then_fail_at: int = -1


SIZES = {"tiny": Config(), "wide": Config(d_model=16)}


class TinyModel(RankingModel):
    def __init__(self, spec: FeatureSpec, cfg: Config):
        super().__init__()
        self.spec, self.cfg = spec, cfg
        d = cfg.d_model
        self.item = nn.Embedding(spec.item_vocab, d, padding_idx=0)
        self.cats = nn.ModuleList(nn.Embedding(v, d) for v in spec.cat_vocab)
        n_in = d * (2 + spec.n_cat) + spec.n_num
        layers: list[nn.Module] = []
        for _ in range(cfg.n_layers):
            layers += [nn.Linear(n_in, d), nn.ReLU(), nn.Dropout(cfg.dropout)]
            n_in = d
        self.mlp = nn.Sequential(*layers)
        self.head = nn.Linear(d, 2)
        self.register_buffer("forwards", torch.zeros((), dtype=torch.long), persistent=False)

    def forward(self, batch):
        mask = batch["seq_mask"].unsqueeze(-1).float()
        hist = (self.item(batch["seq_item"]) * mask).sum(1) / mask.sum(1).clamp(min=1)
        x = [self.item(batch["cand_item"]), hist[batch["req_index"]]]
        x += [emb(batch["ns_cat"][:, i]) for i, emb in enumerate(self.cats)]
        x.append(batch["ns_num"])
        out = self.head(self.mlp(torch.cat(x, -1)))
        if self.training:
            if self.cfg.sleep_s:
                time.sleep(self.cfg.sleep_s)
            self.forwards += 1
            if int(self.forwards) == self.cfg.ctrl_c_then_fail_at:
                import os
                import signal

                os.kill(os.getpid(), signal.SIGINT)
                raise RuntimeError("DataLoader worker (pid 4242) exited unexpectedly")
            if 0 <= self.cfg.nan_after_steps < int(self.forwards):
                out = out * float("nan")
        return {"ctr": out[:, 0], "cvr": out[:, 1]}

    def flops_per_example(self):
        d, n_cat = self.cfg.d_model, self.spec.n_cat
        n_in = d * (2 + n_cat) + self.spec.n_num
        fwd = 2 * (n_in * d + (self.cfg.n_layers - 1) * d * d + 2 * d)
        return {"forward": float(fwd), "train": 3.0 * fwd}


def build(spec: FeatureSpec, cfg: Config) -> TinyModel:
    return TinyModel(spec, cfg)


def register_tiny_model(monkeypatch) -> None:
    from model import registry

    monkeypatch.setitem(registry.MODELS, MODEL, __name__)


def register_globally() -> None:
    """For subprocesses (no monkeypatch there)."""
    from model import registry

    registry.MODELS[MODEL] = __name__


def tiny_world(out: Path) -> Path:
    """A small synthetic world (a few seconds to generate) in the data contract."""
    from harness.data.synth import SynthConfig, generate

    cfg = SynthConfig(
        n_users=150,
        n_topics=16,
        n_interest_topics=4,
        days=12,
        events_median=60,
        events_max=400,
        requests_mean=4.0,
        user_chunk=150,
    )
    generate(cfg, out, seed=0, name="tiny-test-world", progress=False)
    return out


def make_cfg(world: Path, *, steps: int, ckpt_every: int, log_every: int, **over) -> RunConfig:
    """The stand-in model on `world` for `steps` steps (small batches, W&B off, sweep 'test'), with a
    checkpoint every `ckpt_every` steps; then the dotted overrides `over`."""
    base = RunConfig.from_dict(
        {
            "data": {
                "dataset": str(world),
                "seq_len": 16,
                "batch_size": 64,
                "eval_batch_size": 256,
            },
            "model": {"name": MODEL, "size": "tiny"},
            "train": {
                "max_steps": steps,
                "ckpt_every_n_steps": ckpt_every,
                "log_every_n_steps": log_every,
                "lr": 0.01,
            },
            "logging": {"wandb": "disabled", "progress_bar": False},
            "sweep": "test",
        }
    )
    return apply_overrides(base, over)


# the child process of the kill-and-resume test: python -m tests.train_support ARGS... (from the repo root)
if __name__ == "__main__":
    import sys

    from tests import train_support as me  # register under the importable module name

    me.register_globally()
    from harness.train import main

    sys.exit(main(sys.argv[1:]))
