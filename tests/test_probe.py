"""harness/probe.py, the plain training loop of the planted-family tests: it steps the run's warm-up
schedule, adds the model's auxiliary loss, and refuses an empty train split clearly."""

from __future__ import annotations

import pytest
import torch

from harness.config import TrainConfig
from harness.optim import build_optimizer, clip_per_group
from harness.probe import fit
from harness.system import task_losses


class _Tiny(torch.nn.Module):
    """A two-logit model with an auxiliary loss, on batches of the contract's label keys."""

    def __init__(self, aux: float) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(2))
        self.aux = aux

    def embedding_parameters(self):
        return []

    def forward(self, b):
        n = b["click"].shape[0]
        return {"ctr": self.w[0].expand(n), "cvr": self.w[1].expand(n)}

    def aux_loss(self):
        return self.aux * self.w.pow(2).sum()


def _batch(n: int = 8) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    click = (torch.rand(n, generator=g) < 0.5).long()
    return {"click": click, "conversion": click * 0}


def test_fit_steps_the_warmup_schedule():
    model = _Tiny(aux=0.0)
    cfg = TrainConfig(lr=1e-2, warmup_steps=4)
    seen = []
    fit(model, cfg, [_batch()], steps=3, on_step=lambda step, loss: seen.append(step))
    assert seen == [1, 2, 3]
    # an optimiser built the same way, stepped by hand, ends on the same weights only with the schedule
    ref = _Tiny(aux=0.0)
    opt, sched = build_optimizer(ref, cfg)
    assert sched is not None
    for _ in range(3):
        loss = task_losses(ref(_batch()), _batch(), cfg)["loss"]
        opt.zero_grad()
        loss.backward()
        clip_per_group(opt)
        opt.step()
        sched.step()
    torch.testing.assert_close(model.w.detach(), ref.w.detach())


def test_fit_adds_the_auxiliary_loss():
    plain, penalised = _Tiny(aux=0.0), _Tiny(aux=10.0)
    for m in (plain, penalised):
        with torch.no_grad():
            m.w.fill_(1.0)
        fit(m, TrainConfig(lr=1e-2), [_batch()], steps=20)
    assert penalised.w.abs().sum() < plain.w.abs().sum()


def test_fit_refuses_an_empty_train_split():
    with pytest.raises(ValueError, match="no training batches"):
        fit(_Tiny(aux=0.0), TrainConfig(), [], steps=1)


def test_fit_refuses_a_used_up_iterator_instead_of_spinning():
    with pytest.raises(ValueError, match="after 1 of 2 steps"):
        fit(_Tiny(aux=0.0), TrainConfig(), iter([_batch()]), steps=2)
