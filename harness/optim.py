"""Optimisers: AdamW (default) and the paper's pair (spec §1.6, in ByteDance Monolith's semantics).

"paper": one optimizer with two parameter groups, each with its own update rule,
  sparse (embedding tables, model.embedding_parameters()):  Adagrad
      acc <- acc + g^2            (acc starts at init_acc = 1.0)
      w   <- w - lr * g / sqrt(acc)                          lr = 0.1
  dense (everything else):  RMSPropV2
      v   <- beta * v + g^2       (no (1 - beta) factor, v starts at 0)
      w   <- w - lr * g / (sqrt(v) + eps)                    lr = 0.005, beta = 0.99999
  no weight decay, no LR schedule. (torch.optim.RMSprop scales g^2 by (1 - alpha): with
  alpha = 0.99999 its first steps are ~316x larger, so it is not a drop-in; hence our own rule.)
"adamw": torch AdamW over the same two groups (weight decay on dense weights only; the embedding
  group at lr x emb_lr_scale, 1.0 by default), optional linear warm-up.
Both: global-norm gradient clipping per group (dense 90, sparse 120 by default), applied by
clip_per_group() before each optimizer step.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable

import torch
from torch import nn

from harness.config import TrainConfig


class PaperOptimizer(torch.optim.Optimizer):
    """Adagrad or RMSPropV2 per parameter group (group["rule"] = "adagrad" | "rmspropv2")."""

    def __init__(self, groups: list[dict]):
        for g in groups:
            if g.get("rule") not in ("adagrad", "rmspropv2"):
                raise ValueError(
                    f"PaperOptimizer: group rule must be 'adagrad' or 'rmspropv2', got {g.get('rule')!r}"
                )
        super().__init__(
            groups, defaults={"lr": 0.0, "beta": 0.0, "eps": 0.0, "init_acc": 0.0, "clip": 0.0}
        )

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            if any(g.is_sparse for g in grads):
                raise RuntimeError(
                    "PaperOptimizer: sparse gradients are not supported; use dense embedding grads."
                )
            accs = []
            for p in params:
                state = self.state[p]
                if "acc" not in state:
                    fill = group["init_acc"] if group["rule"] == "adagrad" else 0.0
                    state["acc"] = torch.full_like(p, fill, memory_format=torch.preserve_format)
                accs.append(state["acc"])
            # one fused (foreach) update per group rather than a Python loop of small kernels
            if group["rule"] == "adagrad":
                torch._foreach_addcmul_(accs, grads, grads)  # acc += g^2
                denom = torch._foreach_sqrt(accs)
            else:
                torch._foreach_mul_(accs, group["beta"])  # v = beta v + g^2
                torch._foreach_addcmul_(accs, grads, grads)
                denom = torch._foreach_sqrt(accs)
                torch._foreach_add_(denom, group["eps"])
            torch._foreach_addcdiv_(params, grads, denom, value=-group["lr"])
        return loss


def split_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(dense, sparse) trainable parameters; sparse = model.embedding_parameters()."""
    emb = model.embedding_parameters() if hasattr(model, "embedding_parameters") else []
    emb_ids = {id(p) for p in emb}
    sparse = [p for p in emb if p.requires_grad]
    dense = [p for p in model.parameters() if p.requires_grad and id(p) not in emb_ids]
    return dense, sparse


def build_optimizer(model: nn.Module, cfg: TrainConfig, total_steps: int | None = None):
    """The optimizer (groups named "dense" / "sparse", each with its clip threshold) and an LR
    scheduler or None. `total_steps`: the run's optimiser steps, needed by `cfg.lr_decay`."""
    dense, sparse = split_parameters(model)
    if cfg.optimizer == "paper":
        groups = [
            {
                "name": "dense",
                "params": dense,
                "rule": "rmspropv2",
                "lr": cfg.dense_lr,
                "beta": cfg.dense_beta,
                "eps": cfg.dense_eps,
                "clip": cfg.clip_dense,
            },
            {
                "name": "sparse",
                "params": sparse,
                "rule": "adagrad",
                "lr": cfg.sparse_lr,
                "init_acc": cfg.sparse_init_acc,
                "clip": cfg.clip_sparse,
            },
        ]
        return PaperOptimizer([g for g in groups if g["params"]]), None
    groups = [
        {
            "name": "dense",
            "params": dense,
            "weight_decay": cfg.weight_decay,
            "clip": cfg.clip_dense,
        },
        {
            "name": "sparse",
            "params": sparse,
            "weight_decay": 0.0,
            "clip": cfg.clip_sparse,
            "lr": cfg.lr * cfg.emb_lr_scale,
        },
    ]
    # foreach=True: torch picks the per-tensor loop on CPU by default (one Python iteration per
    # parameter, ~6% of a laptop step); the foreach update does the same arithmetic in a few
    # multi-tensor kernels (bitwise-equal updates: tests/test_train_optim.py) and is torch's own
    # default on GPU already
    opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, foreach=True)
    if cfg.warmup_steps == 0 and cfg.lr_decay == "none":
        return opt, None
    if cfg.lr_decay != "none" and not total_steps:
        raise ValueError(
            f"train.lr_decay={cfg.lr_decay!r} needs the run's total steps (build_optimizer's "
            f"total_steps), got {total_steps!r}"
        )
    factor = functools.partial(
        lr_factor, warmup=cfg.warmup_steps, decay=cfg.lr_decay, total=total_steps or 0
    )
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def lr_factor(step: int, *, warmup: int, decay: str, total: int) -> float:
    """The AdamW rate's multiplier before optimiser step `step` (0-based): a linear warm-up over
    `warmup` steps times the decay to 0 at step `total` ("linear" or "cosine"; "none": 1)."""
    f = min(1.0, (step + 1) / warmup) if warmup else 1.0
    if decay == "none":
        return f
    done = min(step, total) / total
    return f * ((1.0 - done) if decay == "linear" else 0.5 * (1.0 + math.cos(math.pi * done)))


def clip_per_group(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """Clip each group's gradients to its own global norm (group["clip"]; 0 = no clipping).
    Returns the pre-clip norm per group name, as tensors (no host sync)."""
    norms = {}
    for g in optimizer.param_groups:
        params: Iterable[torch.Tensor] = [p for p in g["params"] if p.grad is not None]
        if not params:
            continue
        clip = g.get("clip", 0.0)
        if clip > 0:
            norms[g.get("name", "group")] = torch.nn.utils.clip_grad_norm_(
                params, clip, foreach=True
            )
        else:
            norms[g.get("name", "group")] = torch.nn.utils.get_total_norm(
                [p.grad for p in params], foreach=True
            )
    return norms
