"""The history path end to end, over the planted-rule family (harness/data/rules.py) on two source
worlds: every rule, OneTrans (tiny, the history recipe) within 0.03 val CTR AUC of DCNv2+DIN (tiny)
at the same steps, at lr 1e-3 and 3e-3; the control (the same impressions and labels, the events
handed to other users) near 0.5; and one rule through the real run (`train_run`: Lightning, run
folder, checkpoints).

The family trains through harness/probe.py: the harness' data module, model registry, task loss,
optimiser and clipping in a plain loop, the batches collated once per world and replayed for the
four trainings (two models x two rates). The planted world logs one behaviour type, so its
behaviour rule is its side rule: that is checked (the relabelled impressions are identical) instead
of trained twice. Together the tests fail if the history is ever cut, mis-joined, ignored by a
model, or readable only at one rate. Marked slow (minutes): scripts/test.sh and .ci/run run it.
docs/learning-history.md sections 11, 14 and 15 have the diagnosis these guard.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from harness.config import apply_overrides, load_config
from harness.data.contract import IMPRESSIONS
from harness.data.planted import PlantedConfig, generate_planted
from harness.data.rules import Rule, relabel
from harness.data.synth import generate_preset
from harness.probe import ProbeModel, build, ctr_auc, fit, load
from harness.train import train_run

ROOT = Path(__file__).resolve().parents[1]

# about 4.5 min alone on 2 cores (6.6 min inside the whole suite): run by scripts/test.sh and
# .ci/run, left out of plain pytest
pytestmark = pytest.mark.slow

SEQ_LEN, WINDOW, BATCH = 16, 8, 64
RATES = (1e-3, 3e-3)
MARGIN = 0.03  # OneTrans may trail DCNv2+DIN by at most this much val CTR AUC

# every kind of the family; the recency rule reads a window a quarter of the model's history
RULES = {
    "item": Rule(kind="item", window=WINDOW),
    "side": Rule(kind="side", field="brand", window=WINDOW),
    "count": Rule(kind="count", field="category", window=WINDOW, k=3),
    # (the planted world logs one behaviour type: there this is the side rule; `ci` logs three)
    "behavior": Rule(kind="behavior", field="brand", window=WINDOW, behavior=1),
    "recency": Rule(kind="side", field="brand", window=WINDOW // 4),
    "context": Rule(kind="context", field="brand", window=WINDOW, context="hour"),
}
# steps (the same for both models): 300 on the `ci` world; the small planted world (11k train
# impressions, both models memorise) takes 600 to leave a clear margin (side rule at 3e-3: -0.030 at
# 300, -0.010 at 600), and counting k matches there 1200
STEPS = {"planted": 600, ("planted", "count"): 1200}
DEFAULT_STEPS = 300
# the one case that still fails, kept visible (strict: the test fails when it starts passing):
# docs/learning-history.md section 15, rows F2-F7
KNOWN_GAPS = {
    ("planted", "count", 1e-3): "OneTrans 0.804 against DCNv2+DIN 0.872 after 1,200 steps "
    "(counting: neither a null key nor unbounded logits closed it; learning-history section 15)",
}

# OneTrans's history recipe (docs/learning-history.md): candidate and history tokens matched at
# initialisation and tied (so a high rate cannot part them), normalised queries/keys, the time-gap
# embedding (recency: which events are the last W), the S side once per request
ONETRANS = ProbeModel(
    name="onetrans",
    size="onetrans-tiny",
    overrides={"match_init": True, "match_tie": True, "qk_norm": True, "gap_embedding": True},
    train={"request_level": True, "cvr_loss": "clicked_per_impression"},
)
DIN = ProbeModel(name="dcnv2_din", size="tiny", train={"cvr_loss": "clicked_per_impression"})


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("sources")
    return {
        "ci": generate_preset("ci", 0, base / "ci", progress=False),
        "planted": generate_planted(base / "planted", PlantedConfig(n_users=600), seed=1),
    }


def _with(spec: ProbeModel, lr: float) -> ProbeModel:
    return ProbeModel(spec.name, spec.size, spec.overrides, {**(spec.train or {}), "lr": lr})


def _data(folder: Path):
    return load(folder, seq_len=SEQ_LEN, batch_size=BATCH)


def _val_auc(dm, train, val, spec: ProbeModel, steps: int) -> float:
    model, cfg = build(dm, spec, seed=0)
    return ctr_auc(fit(model, cfg, train, steps), val)


@pytest.fixture(scope="module")
def worlds(sources, tmp_path_factory):
    """(source, rule) -> (data module, train batches, val batches), built once for both rates (the
    cases run rate after rate for one world, so only the latest world is kept in memory)."""
    cache: dict = {}

    def get(source: str, rule: str):
        if (source, rule) not in cache:
            cache.clear()
            out = tmp_path_factory.mktemp(f"{source}-{rule}") / "world"
            cache[source, rule] = _data(relabel(sources[source], out, RULES[rule], seed=0))
        return cache[source, rule]

    return get


# the planted world logs one behaviour type, so there the behaviour rule relabels exactly as the
# side rule does: checked once below instead of trained again (4 trainings of ~10 s)
SAME_AS_SIDE = {("planted", "behavior")}


def _cases():
    for rule in RULES:
        for source in ("ci", "planted"):
            if (source, rule) in SAME_AS_SIDE:
                continue
            for lr in RATES:
                gap = KNOWN_GAPS.get((source, rule, lr))
                marks = [pytest.mark.xfail(reason=gap, strict=True)] if gap else []
                yield pytest.param(source, rule, lr, marks=marks, id=f"{rule}-{source}-lr{lr:g}")


@pytest.mark.parametrize("source,rule,lr", list(_cases()))
def test_onetrans_reads_the_planted_rule_like_din(worlds, source, rule, lr):
    dm, train, val = worlds(source, rule)
    steps = STEPS.get((source, rule), STEPS.get(source, DEFAULT_STEPS))
    ot = _val_auc(dm, train, val, _with(ONETRANS, lr), steps)
    din = _val_auc(dm, train, val, _with(DIN, lr), steps)
    seen = f"onetrans {ot:.3f}, DCNv2+DIN {din:.3f} after {steps} steps at lr {lr:g}"
    assert din >= 0.75, f"{source}/{rule}: DCNv2+DIN does not learn the rule ({seen})"
    assert ot >= din - MARGIN, f"{source}/{rule}: OneTrans trails by more than {MARGIN} ({seen})"


@pytest.mark.parametrize("source", ["planted", "ci"])
def test_the_behaviour_rule_is_the_side_rule_only_on_one_behaviour_type(sources, tmp_path, source):
    """Why SAME_AS_SIDE may skip training: the planted world (one behaviour type) relabels the
    same under both rules; `ci` (three types) does not, so there the behaviour rule is trained."""
    read = {
        r: pq.read_table(relabel(sources[source], tmp_path / r, RULES[r], seed=0) / IMPRESSIONS)
        for r in ("behavior", "side")
    }
    same = read["behavior"].equals(read["side"])
    assert same == ((source, "behavior") in SAME_AS_SIDE), f"{source}: behaviour == side is {same}"


@pytest.mark.parametrize("source", ["ci", "planted"])
def test_control_with_mismatched_histories_stays_at_chance(sources, tmp_path, source):
    rule = Rule(kind="side", field="brand", window=WINDOW, control=True)
    dm, train, val = _data(relabel(sources[source], tmp_path / "control", rule, seed=0))
    for spec in (ONETRANS, DIN):
        auc = _val_auc(dm, train, val, _with(spec, 3e-3), DEFAULT_STEPS)
        assert 0.4 <= auc <= 0.6, (
            f"{source} control, {spec.name}: val CTR AUC {auc:.3f}; with other users' histories "
            f"only chance is possible"
        )


def test_the_run_itself_learns_a_planted_rule(sources, tmp_path):
    """The same recipe through train_run (Lightning, data module, run folder): the probe's loop
    is not the only path that reads the history."""
    folder = relabel(sources["planted"], tmp_path / "world", RULES["side"], seed=0)
    cfg = load_config(ROOT / "configs" / "tiny.yaml")
    over = {
        "data.dataset": str(folder),
        "data.seq_len": SEQ_LEN,
        "data.batch_size": BATCH,
        "data.eval_batch_size": 2048,
        "train.max_epochs": 2,
        "train.max_steps": -1,
        "train.optimizer": "adamw",
        "train.lr": 3e-3,
        "train.ckpt_every_n_steps": 10_000,
        "train.precision": "32-true",
        "model.name": "onetrans",
        "model.size": "onetrans-tiny",
        "logging.progress_bar": False,
        "logging.wandb": "disabled",
        **{f"model.overrides.{k}": v for k, v in ONETRANS.overrides.items()},
        **{f"train.{k}": v for k, v in ONETRANS.train.items()},
    }
    result = train_run(apply_overrides(cfg, over), tmp_path / "run")
    auc = result["metrics"]["val"]["ctr_auc"]
    assert auc >= 0.9, f"train_run: val CTR AUC {auc:.3f} on the planted side:brand W8 rule"


def test_planted_labels_follow_the_rule_exactly(tmp_path):
    """harness/data/planted.py's own world: click = the candidate's brand among the last 16 events."""
    folder = generate_planted(tmp_path / "planted", PlantedConfig(n_users=300), seed=0)
    ev = pq.read_table(folder / "events.parquet").to_pandas()
    imp = pq.read_table(folder / "impressions.parquet").to_pandas().iloc[:300]
    items = pq.read_table(folder / "items.parquet").to_pandas().set_index("item_id")
    for row in imp.itertuples():  # a plain per-row reference for the vectorised labeller
        past = ev[(ev.user_id == row.user_id) & (ev.ts < row.ts)].sort_values("ts").tail(16)
        assert row.click == int(items.loc[row.item_id, "brand"] in set(past.brand)), row
    assert 0.25 < imp.click.mean() < 0.5
    np.testing.assert_array_equal(imp.p_click.to_numpy(), imp.click.to_numpy())
