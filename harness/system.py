"""The Lightning system: loss, metrics and optimiser around a model from model/ (kept thin).

Loss: BCE on the CTR logit over every impression, plus the CVR term:
  cvr_loss = "clicked"  BCE of conversion on the CVR logit over clicked impressions (the paper's
                        CVR = conversion | click; non-clicked impressions carry no CVR signal)
  cvr_loss = "clicked_per_impression"
                        the same BCE over clicked impressions, summed and divided by the batch's
                        impressions instead of its clicks: the CVR term's gradient then scales with
                        the click rate, as every other per-impression term does. With few clicks per
                        batch the plain mean gives each clicked row 1/clicks of the weight, a noisy,
                        large gradient on the shared trunk (docs/learning-history.md section 11:
                        OneTrans stalls at lr 3e-3 with "clicked" and learns with this). The CVR
                        metrics are the same as "clicked" (conversion | click on clicked rows).
  cvr_loss = "ctcvr"    BCE of conversion on P(click) * P(conversion | click) over every impression
                        (ESMM-style; computed in log space, no saturation)
weighted by train.ctr_weight / train.cvr_weight.

Evaluation protocols (train.protocol):
  holdout     validation/test steps collect predictions; at the end of each evaluation the exact
              metrics of harness.metrics are computed over the whole split (all ranks gathered).
  next_batch  every training batch is first predicted in eval mode (no grad), the predictions are
              kept, then the model trains on it; figures are per-day macro averages (spec §3).

A NaN/inf loss is detected without a per-step host sync: the first bad step is kept in a device
tensor and checked every log_every_n_steps and before every checkpoint save (so no checkpoint
is ever written after it).
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

from harness.callbacks import SPLIT_KEY
from harness.config import EvalConfig, TrainConfig
from harness.eval_sample import bootstrap_ci
from harness.metrics import daily_macro, split_metrics
from harness.optim import build_optimizer, clip_per_group

PRED_KEYS = ("click", "conversion", "user_id", "ts")
ORACLE_KEYS = ("p_click", "p_conversion")


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, accurate on both sides of -ln 2."""
    x = x.clamp(max=-1e-7)
    return torch.where(x > -math.log(2), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def cvr_metric_mode(cvr_loss: str) -> str:
    """The CVR metric a loss mode is judged by: ctcvr scores P(click) * P(conversion | click) over
    every impression, both clicked modes conversion | click on clicked impressions."""
    return "ctcvr" if cvr_loss == "ctcvr" else "clicked"


def task_losses(
    out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], cfg: TrainConfig
) -> dict[str, torch.Tensor]:
    ctr_logit, cvr_logit = out["ctr"].float(), out["cvr"].float()
    click, conv = batch["click"].float(), batch["conversion"].float()
    ctr = F.binary_cross_entropy_with_logits(ctr_logit, click)
    if cfg.cvr_loss in ("clicked", "clicked_per_impression"):
        per = F.binary_cross_entropy_with_logits(cvr_logit, conv, reduction="none")
        denom = (
            click.sum().clamp(min=1.0)
            if cfg.cvr_loss == "clicked"
            else click.new_tensor(float(click.numel() or 1))
        )
        cvr = (per * click).sum() / denom  # over clicked rows; 0 if none
    else:
        log_p = F.logsigmoid(ctr_logit) + F.logsigmoid(cvr_logit)
        cvr = -(conv * log_p + (1 - conv) * _log1mexp(log_p)).mean()
    return {"loss": cfg.ctr_weight * ctr + cfg.cvr_weight * cvr, "ctr_loss": ctr, "cvr_loss": cvr}


class RankingSystem(L.LightningModule):
    def __init__(
        self,
        model: torch.nn.Module,
        cfg: TrainConfig,
        *,
        has_oracle: bool = False,
        eval_cfg: EvalConfig | None = None,
    ):
        super().__init__()
        self.model = model
        self.cfg = cfg
        # with eval.sample_users the holdout metrics come with a bootstrap CI over users
        self.eval_cfg = eval_cfg if eval_cfg is not None and eval_cfg.sampled else None
        self.has_oracle = has_oracle
        self._preds: dict[str, list[dict[str, torch.Tensor]]] = defaultdict(list)
        self.results: dict[str, dict[str, Any]] = {}  # split -> {"metrics", "oracle", "step"}
        self.register_buffer("first_bad_step", torch.tensor(-1, dtype=torch.long), persistent=False)

    # ---- training ----------------------------------------------------------------------------
    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.model(batch)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        split = batch.pop(SPLIT_KEY, "train")
        if self.cfg.protocol == "next_batch":
            self.model.eval()
            with torch.no_grad():
                self._record(split, batch, self.model(batch))
            self.model.train()
        losses = task_losses(self.model(batch), batch, self.cfg)
        aux = self.model.aux_loss() if hasattr(self.model, "aux_loss") else None
        if aux is not None:  # e.g. RankMixer's Sparse-MoE L1 routing penalty
            losses["aux_loss"] = aux
            losses["loss"] = losses["loss"] + aux
        loss = losses["loss"]
        bad = ~torch.isfinite(loss.detach())
        self.first_bad_step.copy_(
            torch.where(
                bad & (self.first_bad_step < 0),
                torch.full_like(self.first_bad_step, self.global_step),
                self.first_bad_step,
            )
        )
        if self._logs_this_step():
            n = int(batch["click"].shape[0])
            for k, v in losses.items():
                self.log(
                    f"train/{k}",
                    v.detach(),
                    on_step=True,
                    on_epoch=False,
                    prog_bar=(k == "loss"),
                    batch_size=n,
                )
        return loss

    def _logs_this_step(self) -> bool:
        """Whether the trainer writes this step's on_step values to the loggers. Lightning keeps
        only the latest on_step value and flushes it when (optimizer steps so far + 1) is a multiple
        of log_every_n_steps, or when the run is stopping; a self.log call on any other step is
        overwritten unseen but still costs its bookkeeping (measured: about a fifth of a laptop
        run's wall time at 45 steps/s). Logging on the flushed steps only writes the same
        metrics.csv (tests/test_system_logging.py)."""
        trainer = self._trainer  # None when a step is called outside a Trainer (tests, probes)
        if trainer is None:
            return False  # self.log would have nowhere to write
        every = trainer.log_every_n_steps
        return every > 0 and ((self.global_step + 1) % every == 0 or trainer.should_stop)

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        if self.global_step % self.cfg.log_every_n_steps == 0:
            self.check_finite()

    def on_train_end(self) -> None:
        self.check_finite()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.check_finite()  # raising here stops the save: the last good checkpoint stays
        if self.cfg.protocol == "next_batch":
            # the predictions logged so far are part of the run's result: a resumed run needs them
            checkpoint["next_batch_predictions"] = {
                split: {k: torch.cat([r[k] for r in rows]).cpu() for k in rows[0]}
                for split, rows in self._preds.items()
                if rows
            }

        if "val" in self.results:
            # the latest validation (plain floats: checkpoints load weights-only): a run resumed
            # from its final checkpoint then validates again only if an uninterrupted run would
            # have (train.py), so its metrics.csv gets no extra validation rows
            checkpoint["eval_results"] = {"val": _plain(self.results["val"])}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.results.update(checkpoint.get("eval_results", {}))
        saved = checkpoint.get("next_batch_predictions", {})
        self._preds = defaultdict(
            list,
            {
                split: [{k: v.to(self.device) for k, v in row.items()}]
                for split, row in saved.items()
            },
        )

    def check_finite(self) -> None:
        step = int(self.first_bad_step)  # the one host sync, at log cadence
        if step >= 0:
            raise NonFiniteLossError(
                f"training loss became NaN/inf at optimizer step {step} (checked every "
                f"{self.cfg.log_every_n_steps} steps and before each checkpoint). The last good checkpoint "
                f"is kept. Try a lower learning rate (train.lr / train.dense_lr), tighter clipping "
                f"(train.clip_dense), or precision 32-true."
            )

    def configure_optimizers(self):
        # the decay ends at the run's last step: Lightning's count from max_steps, or epochs x
        # batches per epoch (this rank's, after the sampler's split)
        total = (
            int(self.trainer.estimated_stepping_batches) if self.cfg.lr_decay != "none" else None
        )
        opt, sched = build_optimizer(self.model, self.cfg, total)
        if sched is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_before_optimizer_step(self, optimizer) -> None:
        norms = clip_per_group(optimizer)
        if not self._logs_this_step():
            return
        for name, norm in norms.items():
            self.log(f"train/grad_norm_{name}", norm, on_step=True, on_epoch=False)
        for g in optimizer.param_groups:
            self.log(
                f"train/lr_{g.get('name', 'group')}", float(g["lr"]), on_step=True, on_epoch=False
            )

    # ---- evaluation --------------------------------------------------------------------------
    def _record(
        self, split: str, batch: dict[str, torch.Tensor], out: dict[str, torch.Tensor]
    ) -> None:
        row = {"ctr_logit": out["ctr"].detach().float(), "cvr_logit": out["cvr"].detach().float()}
        for k in PRED_KEYS + (ORACLE_KEYS if self.has_oracle else ()):
            row[k] = batch[k].detach()
        self._preds[split].append(row)

    def validation_step(self, batch, batch_idx) -> None:
        batch.pop(SPLIT_KEY, None)
        self._record("val", batch, self.model(batch))

    def test_step(self, batch, batch_idx) -> None:
        batch.pop(SPLIT_KEY, None)
        self._record("test", batch, self.model(batch))

    def _gathered(self, split: str) -> dict[str, np.ndarray]:
        rows = self._preds.pop(split, [])
        keys = ("ctr_logit", "cvr_logit") + PRED_KEYS + (ORACLE_KEYS if self.has_oracle else ())
        local = {
            k: torch.cat([r[k] for r in rows]) if rows else torch.empty(0, device=self.device)
            for k in keys
        }
        if self.trainer.world_size > 1:
            local = {k: self._all_gather_var(v) for k, v in local.items()}
        return {k: v.cpu().numpy() for k, v in local.items()}

    def _all_gather_var(self, t: torch.Tensor) -> torch.Tensor:
        """all_gather of 1-D tensors whose length differs per rank (pad, gather, trim)."""
        n = torch.tensor([t.shape[0]], device=self.device)
        sizes = self.all_gather(n).reshape(-1)
        pad = int(sizes.max()) - t.shape[0]
        full = self.all_gather(F.pad(t, (0, pad)))
        return torch.cat([full[r, : int(sizes[r])] for r in range(full.shape[0])])

    def evaluate_split(self, split: str, p: dict[str, np.ndarray]) -> dict[str, Any]:
        if self.cfg.protocol == "next_batch":
            w = self.cfg.next_batch_warmup_days if split == "train" else 0
            metrics = daily_macro(p, cvr_metric_mode(self.cfg.cvr_loss), warmup_days=w)
            oracle = (
                daily_macro(p, cvr_metric_mode(self.cfg.cvr_loss), oracle=True, warmup_days=w)
                if self.has_oracle
                else {}
            )
        else:
            metrics = (
                split_metrics(p, cvr_metric_mode(self.cfg.cvr_loss)) if len(p["click"]) else {}
            )
            oracle = (
                split_metrics(p, cvr_metric_mode(self.cfg.cvr_loss), oracle=True)
                if self.has_oracle and len(p["click"])
                else {}
            )
        out = {
            "metrics": metrics,
            "oracle": oracle,
            "step": int(self.global_step),
            "n": int(len(p["click"])),
        }
        if self.eval_cfg is not None and self.cfg.protocol == "holdout" and len(p["click"]):
            e = self.eval_cfg
            out["ci"] = bootstrap_ci(
                p,
                cvr_metric_mode(self.cfg.cvr_loss),  # as the point metrics
                n_boot=e.bootstrap,
                seed=e.sample_seed,
                level=e.ci_level,
                split=split,
            )
        return out

    def _finish_eval(self, split: str) -> None:
        if self.trainer.sanity_checking:
            self._preds.pop(split, None)
            return
        res = self.evaluate_split(split, self._gathered(split))
        self.results[split] = res
        logged = {f"{split}/{k}": v for k, v in res["metrics"].items()}
        logged |= {f"{split}_oracle/{k}": v for k, v in res["oracle"].items()}
        for k, v in logged.items():
            self.log(k, float(v), on_step=False, on_epoch=True, prog_bar=k.endswith("ctr_auc"))

    def on_validation_epoch_end(self) -> None:
        self._finish_eval("val")

    def on_test_epoch_end(self) -> None:
        self._finish_eval("test")

    def next_batch_results(self) -> dict[str, dict[str, Any]]:
        """next_batch protocol: per-split figures of the predictions logged during training."""
        out = {}
        for split in ("train", "val", "test"):
            if split in self._preds:
                out[split] = self.evaluate_split(split, self._gathered(split))
        return out


def _plain(x: Any) -> Any:
    """Numbers as Python floats/ints, containers as dicts/lists (what a weights-only load accepts)."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, (bool, int, float, str)) or x is None:
        return x
    if hasattr(x, "item"):
        return x.item()
    return float(x)
