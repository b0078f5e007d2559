"""The train-order decision: chronological epochs cut part-way by max_steps end on the log's oldest
impressions; the run warns (stderr) and provenance records it (docs/learning-history.md section 13)."""

from __future__ import annotations

from harness.config import RunConfig, apply_overrides
from harness.trainer_setup import train_order_decision


class _Loader:
    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n


def _cfg(**sets):
    return apply_overrides(RunConfig(), [f"{k}={v}" for k, v in sets.items()])


def test_chronological_epochs_cut_mid_epoch_warn(capsys):
    cfg = _cfg(**{"train.max_epochs": 3, "train.max_steps": 1600, "data.shuffle": "false"})
    d = train_order_decision(cfg, _Loader(1268), next_batch=False)
    assert d["value"] == "chronological"
    assert "332 batches into epoch 2" in d["warning"]
    assert "data.shuffle: true" in d["warning"]
    assert "warning: train order" in capsys.readouterr().err


def test_one_pass_whole_epochs_and_shuffled_orders_do_not_warn(capsys):
    cases = [
        ({"train.max_epochs": 1, "train.max_steps": 1600}, 1268, "chronological"),  # one pass
        ({"train.max_epochs": 2, "train.max_steps": -1}, 1268, "chronological"),  # whole epochs
        ({"train.max_epochs": 3, "train.max_steps": 2536}, 1268, "chronological"),  # = 2 epochs
        (
            {"train.max_epochs": 3, "train.max_steps": 1600, "data.shuffle": "true"},
            1268,
            "shuffled",
        ),
    ]
    for sets, n, order in cases:
        d = train_order_decision(_cfg(**sets), _Loader(n), next_batch=False)
        assert d["value"] == order, sets
        assert "warning" not in d, sets
    assert capsys.readouterr().err == ""
    d = train_order_decision(_cfg(), _Loader(10), next_batch=True)
    assert d["value"] == "chronological" and "next_batch" in d["reason"]
