"""Each update rule of harness.optim against a hand computation (numbers worked out below)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from harness.config import ConfigError, RunConfig, TrainConfig, run_id, semantic_dict
from harness.optim import PaperOptimizer, build_optimizer, clip_per_group, split_parameters


def _param(values):
    return nn.Parameter(torch.tensor(values, dtype=torch.float64))


def test_adagrad_monolith_form_by_hand():
    # acc0 = 1.0 (initial accumulator), lr = 0.1; grads 3 then 4 on w0 = 1
    # step 1: acc = 1 + 9 = 10;  w = 1 - 0.1*3/sqrt(10)
    # step 2: acc = 10 + 16 = 26; w -= 0.1*4/sqrt(26)
    p = _param([1.0])
    opt = PaperOptimizer([{"params": [p], "rule": "adagrad", "lr": 0.1, "init_acc": 1.0}])
    expected = 1.0
    for g, acc in ((3.0, 10.0), (4.0, 26.0)):
        p.grad = torch.tensor([g], dtype=torch.float64)
        opt.step()
        expected -= 0.1 * g / math.sqrt(acc)
        assert p.item() == pytest.approx(expected, abs=1e-15)
        assert opt.state[p]["acc"].item() == pytest.approx(acc)


def test_rmspropv2_no_one_minus_beta_by_hand():
    # v0 = 0, beta = 0.5 (to make the leak visible), lr = 0.01, eps = 1e-8; grads 2 then -1
    # step 1: v = 0.5*0 + 4 = 4;       w = 1 - 0.01*2/(2 + 1e-8)
    # step 2: v = 0.5*4 + 1 = 3;       w -= 0.01*(-1)/(sqrt(3) + 1e-8)
    p = _param([1.0])
    opt = PaperOptimizer(
        [{"params": [p], "rule": "rmspropv2", "lr": 0.01, "beta": 0.5, "eps": 1e-8}]
    )
    w = 1.0
    for g, v in ((2.0, 4.0), (-1.0, 3.0)):
        p.grad = torch.tensor([g], dtype=torch.float64)
        opt.step()
        w -= 0.01 * g / (math.sqrt(v) + 1e-8)
        assert p.item() == pytest.approx(w, abs=1e-15)
        assert opt.state[p]["acc"].item() == pytest.approx(v)


def test_paper_defaults_differ_from_torch_rmsprop():
    # torch's RMSprop(alpha=0.99999) scales g^2 by 1e-5: its first step is ~316x ours.
    p1, p2 = _param([0.0]), _param([0.0])
    ours = PaperOptimizer(
        [{"params": [p1], "rule": "rmspropv2", "lr": 0.005, "beta": 0.99999, "eps": 1e-8}]
    )
    theirs = torch.optim.RMSprop([p2], lr=0.005, alpha=0.99999, eps=1e-8)
    for p in (p1, p2):
        p.grad = torch.tensor([1.0], dtype=torch.float64)
    ours.step(), theirs.step()
    assert p1.item() == pytest.approx(-0.005, rel=1e-6)
    assert p2.item() / p1.item() == pytest.approx(1 / math.sqrt(1e-5), rel=1e-3)


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(5, 2)
        self.lin = nn.Linear(2, 1)

    def embedding_parameters(self):
        return [self.emb.weight]


def test_build_paper_groups_and_values():
    m = Tiny()
    opt, sched = build_optimizer(m, TrainConfig(optimizer="paper"))
    assert sched is None
    groups = {g["name"]: g for g in opt.param_groups}
    assert (
        groups["sparse"]["rule"] == "adagrad"
        and groups["sparse"]["lr"] == 0.1
        and groups["sparse"]["init_acc"] == 1.0
    )
    assert (
        groups["dense"]["rule"] == "rmspropv2"
        and groups["dense"]["lr"] == 0.005
        and groups["dense"]["beta"] == 0.99999
    )
    assert groups["dense"]["clip"] == 90.0 and groups["sparse"]["clip"] == 120.0
    assert [id(p) for p in groups["sparse"]["params"]] == [id(m.emb.weight)]
    dense, sparse = split_parameters(m)
    assert {id(p) for p in dense} == {id(m.lin.weight), id(m.lin.bias)} and len(sparse) == 1


def test_adamw_groups_no_decay_on_embeddings_and_warmup():
    m = Tiny()
    opt, sched = build_optimizer(
        m, TrainConfig(optimizer="adamw", lr=0.01, weight_decay=0.1, warmup_steps=4)
    )
    groups = {g["name"]: g for g in opt.param_groups}
    assert groups["dense"]["weight_decay"] == 0.1 and groups["sparse"]["weight_decay"] == 0.0
    lrs = []
    for _ in range(5):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.0025, 0.005, 0.0075, 0.01, 0.01])


def test_adamw_embedding_rate_scale_and_its_warmup():
    m = Tiny()
    opt, sched = build_optimizer(m, TrainConfig(lr=0.01, emb_lr_scale=0.25, warmup_steps=2))
    groups = {g["name"]: g for g in opt.param_groups}
    seen = []
    for _ in range(3):
        seen.append((groups["dense"]["lr"], groups["sparse"]["lr"]))
        opt.step()
        sched.step()
    # the warm-up scales each group's own rate
    assert [x for pair in seen for x in pair] == pytest.approx(
        [0.005, 0.00125, 0.01, 0.0025, 0.01, 0.0025]
    )
    opt, _ = build_optimizer(m, TrainConfig(lr=0.01))
    assert {g["name"]: g["lr"] for g in opt.param_groups} == {"dense": 0.01, "sparse": 0.01}


def test_adamw_foreach_updates_equal_the_per_tensor_loop_bitwise():
    # build_optimizer asks for torch's multi-tensor AdamW (faster on CPU, where torch's default is
    # the per-tensor loop); it must not change a run's numbers: fp32, decay on, 30 random steps
    torch.manual_seed(0)
    m = nn.Sequential(nn.Embedding(50, 8), nn.Linear(8, 8), nn.Linear(8, 1)).float()
    ref = [p.detach().clone().requires_grad_(True) for p in m.parameters()]
    opt, _ = build_optimizer(m, TrainConfig(optimizer="adamw", lr=3e-3, weight_decay=0.1))
    assert all(g["foreach"] for g in opt.param_groups)
    decay = {id(p) for g in opt.param_groups if g["weight_decay"] for p in g["params"]}
    loop = torch.optim.AdamW(
        [
            {
                "params": [r for r, p in zip(ref, m.parameters()) if id(p) in decay],
                "weight_decay": 0.1,
            },
            {
                "params": [r for r, p in zip(ref, m.parameters()) if id(p) not in decay],
                "weight_decay": 0.0,
            },
        ],
        lr=3e-3,
        foreach=False,
    )
    g = torch.Generator().manual_seed(1)
    for _ in range(30):
        for p, r in zip(m.parameters(), ref):
            p.grad = torch.randn(p.shape, generator=g)
            r.grad = p.grad.clone()
        opt.step()
        loop.step()
    for p, r in zip(m.parameters(), ref):
        assert torch.equal(p.detach(), r.detach())


def test_emb_lr_scale_enters_the_run_id_only_when_set():
    base = RunConfig()
    assert "emb_lr_scale" not in json.dumps(semantic_dict(base))
    assert run_id(RunConfig(train=TrainConfig(emb_lr_scale=1.0))) == run_id(base)
    assert run_id(RunConfig(train=TrainConfig(emb_lr_scale=0.3))) != run_id(base)
    with pytest.raises(ConfigError, match="emb_lr_scale"):
        TrainConfig(emb_lr_scale=0.0)


def test_clip_per_group_uses_each_groups_own_global_norm():
    # dense grads (3, 4) -> norm 5 clipped to 1; sparse grad (0, 6, 8) -> norm 10 clipped to 2
    d, s = _param([0.0, 0.0]), _param([0.0, 0.0, 0.0])
    opt = PaperOptimizer(
        [
            {
                "name": "dense",
                "params": [d],
                "rule": "rmspropv2",
                "lr": 1.0,
                "beta": 1.0,
                "eps": 0.0,
                "clip": 1.0,
            },
            {
                "name": "sparse",
                "params": [s],
                "rule": "adagrad",
                "lr": 1.0,
                "init_acc": 1.0,
                "clip": 2.0,
            },
        ]
    )
    d.grad = torch.tensor([3.0, 4.0], dtype=torch.float64)
    s.grad = torch.tensor([0.0, 6.0, 8.0], dtype=torch.float64)
    norms = clip_per_group(opt)
    assert norms["dense"].item() == pytest.approx(5.0) and norms["sparse"].item() == pytest.approx(
        10.0
    )
    assert d.grad.tolist() == pytest.approx([0.6, 0.8], rel=1e-5)
    assert s.grad.tolist() == pytest.approx([0.0, 1.2, 1.6], rel=1e-5)
    # a group with clip 0 is left alone
    opt.param_groups[0]["clip"] = 0.0
    d.grad = torch.tensor([30.0, 40.0], dtype=torch.float64)
    assert clip_per_group(opt)["dense"].item() == pytest.approx(50.0) and d.grad.tolist() == [
        30.0,
        40.0,
    ]


def test_lr_decay_factor_linear_cosine_and_with_warmup():
    from harness.optim import lr_factor

    lin = [lr_factor(s, warmup=0, decay="linear", total=4) for s in range(6)]
    assert lin == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0, 0.0])  # held at 0 past the end
    cos = [lr_factor(s, warmup=0, decay="cosine", total=4) for s in range(5)]
    assert cos == pytest.approx([1.0, 0.8535534, 0.5, 0.1464466, 0.0])
    warm = [lr_factor(s, warmup=2, decay="linear", total=4) for s in range(4)]
    assert warm == pytest.approx([0.5, 0.75, 0.5, 0.25])
    assert [lr_factor(s, warmup=0, decay="none", total=0) for s in range(3)] == [1.0] * 3


def test_lr_decay_steps_every_group_and_needs_the_total():
    m = Tiny()
    cfg = TrainConfig(lr=0.01, emb_lr_scale=0.5, lr_decay="linear")
    with pytest.raises(ValueError, match="total steps"):
        build_optimizer(m, cfg)
    opt, sched = build_optimizer(m, cfg, total_steps=4)
    seen = []
    for _ in range(4):
        seen.append({g["name"]: g["lr"] for g in opt.param_groups})
        opt.step()
        sched.step()
    assert [s["dense"] for s in seen] == pytest.approx([0.01, 0.0075, 0.005, 0.0025])
    assert [s["sparse"] for s in seen] == pytest.approx([0.005, 0.00375, 0.0025, 0.00125])


def test_lr_decay_config_checks_and_run_id():
    from harness.config import ConfigError, RunConfig, run_id

    base = RunConfig.from_dict({})
    assert run_id(base) == run_id(RunConfig.from_dict({"train": {"lr_decay": "none"}}))
    assert run_id(base) != run_id(RunConfig.from_dict({"train": {"lr_decay": "linear"}}))
    with pytest.raises(ConfigError, match="lr_decay"):
        RunConfig.from_dict({"train": {"lr_decay": "step"}})
    with pytest.raises(ConfigError, match="AdamW only"):
        RunConfig.from_dict({"train": {"lr_decay": "cosine", "optimizer": "paper"}})
