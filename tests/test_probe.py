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


def test_pool_gives_the_in_process_figure_and_raises_a_jobs_error(tmp_path):
    """probe.Pool (worker processes, one torch thread each) against the same training in this
    process on one thread: the same val CTR AUC, bit for bit; two worlds interleaved (the worker's
    world cache swaps), and a job's error raised by its Future, the pool still serving after it."""
    from harness.data.planted import PlantedConfig, generate_planted
    from harness.probe import Pool, ProbeModel, build, ctr_auc, load

    folders = [
        generate_planted(tmp_path / f"w{s}", PlantedConfig(n_users=80), seed=s) for s in (0, 1)
    ]
    spec = ProbeModel("dcnv2_din", "tiny", train={"lr": 3e-3})
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        expected = []
        for folder in folders:
            dm, train, val = load(folder, seq_len=8, batch_size=32)
            model, cfg = build(dm, spec, seed=3)
            expected.append(ctr_auc(fit(model, cfg, train, 12), val))
    finally:
        torch.set_num_threads(n)
    with Pool(workers=1) as pool:
        jobs = [pool.val_auc(f, spec, 12, seq_len=8, batch_size=32, seed=3) for f in folders]
        bad = pool.val_auc(
            folders[0], ProbeModel("no_such_model", "tiny"), 1, seq_len=8, batch_size=32
        )
        again = pool.val_auc(folders[0], spec, 12, seq_len=8, batch_size=32, seed=3)
        assert [j.result() for j in jobs] == expected
        with pytest.raises(Exception, match="no_such_model"):
            bad.result()
        assert again.result() == expected[0]
