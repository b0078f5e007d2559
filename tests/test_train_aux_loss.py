"""The training system adds a model's auxiliary loss (RankMixer's Sparse-MoE routing penalty)."""

import torch

from harness.config import TrainConfig
from harness.system import RankingSystem, task_losses
from model.features import random_batch, tiny_spec
from model.registry import build_model


def test_moe_penalty_enters_the_training_loss_and_reaches_the_router():
    torch.manual_seed(0)
    spec = tiny_spec(seq_len=8)
    model = build_model("rankmixer_din", spec, "tiny", {"n_experts": 4})
    system = RankingSystem(model, TrainConfig())
    batch = random_batch(spec, n_requests=3, per_request=2)
    loss = system.training_step(dict(batch), 0)
    aux = model.aux_loss()
    assert aux is not None and aux.item() > 0
    aux_of_step = (
        aux.detach().clone()
    )  # a second forward recomputes it (and adapts the L1 coefficient)
    loss.backward()
    plain = task_losses(model(batch), batch, system.cfg)[
        "loss"
    ]  # the task outputs don't depend on the coefficient
    torch.testing.assert_close(loss.detach(), (plain + aux_of_step).detach(), rtol=1e-6, atol=1e-7)
    routers = [p for n, p in model.named_parameters() if "infer" in n]
    assert routers and any(p.grad is not None and p.grad.abs().sum() > 0 for p in routers)


def test_models_without_aux_loss_train_on_the_task_loss_alone():
    spec = tiny_spec(seq_len=8)
    model = build_model("onetrans", spec, "onetrans-tiny")
    assert model.aux_loss() is None
    system = RankingSystem(model, TrainConfig())
    batch = random_batch(spec, n_requests=3, per_request=2)
    loss = system.training_step(dict(batch), 0)
    torch.testing.assert_close(
        loss.detach(), task_losses(model(batch), batch, system.cfg)["loss"].detach()
    )
