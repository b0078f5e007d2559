"""The CVR loss modes of harness.system.task_losses on fresh random batches."""

from __future__ import annotations

import pytest
import torch

from harness.config import RunConfig, TrainConfig, run_id
from harness.system import cvr_metric_mode, task_losses


def _batch(seed: int, n: int = 64, click_rate: float = 0.15):
    g = torch.Generator().manual_seed(seed)
    click = (torch.rand(n, generator=g) < click_rate).float()
    click[0] = 1.0  # at least one click
    conv = click * (torch.rand(n, generator=g) < 0.5).float()
    out = {"ctr": torch.randn(n, generator=g), "cvr": torch.randn(n, generator=g)}
    return out, {"click": click, "conversion": conv}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_clicked_per_impression_is_the_clicked_mean_scaled_by_the_click_rate(seed):
    out, batch = _batch(seed)
    mean = task_losses(out, batch, TrainConfig(cvr_loss="clicked"))["cvr_loss"]
    per_imp = task_losses(out, batch, TrainConfig(cvr_loss="clicked_per_impression"))["cvr_loss"]
    rate = batch["click"].mean()
    torch.testing.assert_close(per_imp, mean * rate, rtol=1e-6, atol=1e-7)
    # plain reference: BCE of each clicked row, summed, over all rows
    p = torch.sigmoid(out["cvr"])
    y = batch["conversion"]
    bce = -(y * torch.log(p) + (1 - y) * torch.log(1 - p))
    ref = (bce * batch["click"]).sum() / len(y)
    torch.testing.assert_close(per_imp, ref, rtol=1e-5, atol=1e-6)
    # the CTR term is the same in both modes
    ctr = task_losses(out, batch, TrainConfig(cvr_loss="clicked"))["ctr_loss"]
    torch.testing.assert_close(
        task_losses(out, batch, TrainConfig(cvr_loss="clicked_per_impression"))["ctr_loss"], ctr
    )


def test_no_click_gives_zero_cvr_loss_in_both_clicked_modes():
    out, batch = _batch(3)
    batch["click"].zero_()
    batch["conversion"].zero_()
    for mode in ("clicked", "clicked_per_impression"):
        assert float(task_losses(out, batch, TrainConfig(cvr_loss=mode))["cvr_loss"]) == 0.0


def test_metric_modes_and_run_id_of_the_default():
    assert cvr_metric_mode("clicked") == cvr_metric_mode("clicked_per_impression") == "clicked"
    assert cvr_metric_mode("ctcvr") == "ctcvr"
    # a new loss mode is a new run (tests/test_sweep_files.py pins the ids of the default plans)
    base = RunConfig()
    other = RunConfig(train=TrainConfig(cvr_loss="clicked_per_impression"))
    assert run_id(base) != run_id(other)
