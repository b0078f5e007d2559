"""The history path end to end, over the planted-rule family (harness/data/rules.py) on two source
worlds: every rule, OneTrans (tiny, the history recipe) within 0.03 val CTR AUC of DCNv2+DIN (tiny)
at the same steps, at lr 1e-3 and 3e-3; the control (the same impressions and labels, the events
handed to other users) near 0.5; and one rule through the real run (`train_run`: Lightning, run
folder, checkpoints).

The family trains through harness/probe.py: the harness' data module, model registry, task loss,
optimiser and clipping in a plain loop, every training submitted at once to two worker processes
(`probe.Pool`, one torch thread each: the tiny shapes cannot use a second core from one process),
each worker setting a world up once for its trainings on it. The planted world logs one behaviour
type, so its behaviour rule is its side rule: that is checked (the relabelled impressions are
identical) instead of trained twice. Together the tests fail if the history is ever cut, mis-joined, ignored by a
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
from harness.probe import ProbeModel
from harness.train import train_run

ROOT = Path(__file__).resolve().parents[1]

# minutes on 2 cores: run by scripts/test.sh and .ci/run, left out of plain pytest
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
# cases that still fail, kept visible (strict: the test fails when one starts passing). None since
# the recency bias (learning-history section 22): before it, counting on the planted world at 1e-3
# (OneTrans 0.804, DCNv2+DIN 0.872) was one, the readout unable to cut the last 8 of 16 events
KNOWN_GAPS: dict[tuple[str, str, float], str] = {}

# OneTrans's history recipe (docs/learning-history.md): candidate and history tokens matched at
# initialisation and tied (so a high rate cannot part them), normalised queries/keys, the time-gap
# embedding and the readout's bias by rank (recency: which events are the last W), the S side once
# per request
ONETRANS = ProbeModel(
    name="onetrans",
    size="onetrans-tiny",
    overrides={
        "match_init": True,
        "match_tie": True,
        "qk_norm": True,
        "gap_embedding": True,
        "recency_bias": True,
    },
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


def _steps(source: str, rule: str) -> int:
    return STEPS.get((source, rule), STEPS.get(source, DEFAULT_STEPS))


def _with(spec: ProbeModel, lr: float) -> ProbeModel:
    return ProbeModel(spec.name, spec.size, spec.overrides, {**(spec.train or {}), "lr": lr})


# the planted world logs one behaviour type, so there the behaviour rule relabels exactly as the
# side rule does: checked once below instead of trained again (4 trainings of ~10 s)
SAME_AS_SIDE = {("planted", "behavior")}
CONTROL = Rule(kind="side", field="brand", window=WINDOW, control=True)


def _cases():
    for rule in RULES:
        for source in ("ci", "planted"):
            if (source, rule) in SAME_AS_SIDE:
                continue
            for lr in RATES:
                gap = KNOWN_GAPS.get((source, rule, lr))
                marks = [pytest.mark.xfail(reason=gap, strict=True)] if gap else []
                yield pytest.param(source, rule, lr, marks=marks, id=f"{rule}-{source}-lr{lr:g}")


CASES = [p.values for p in _cases()]


@pytest.fixture(scope="module")
def trainings(sources, probe_pool, tmp_path_factory) -> dict:
    """Every training of this file's family and controls, submitted at once to two worker
    processes (harness.probe.Pool, one torch thread each), world by world so a worker sets a world
    up once: (source, rule, lr, model name) -> Future of the val CTR AUC. The tests below wait
    for their own."""
    jobs: dict = {}
    base = tmp_path_factory.mktemp("worlds")
    for source, rule in dict.fromkeys((s, r) for s, r, _ in CASES):
        folder = relabel(sources[source], base / f"{source}-{rule}", RULES[rule], seed=0)
        steps = _steps(source, rule)
        for lr in RATES:
            for spec in (ONETRANS, DIN):
                jobs[source, rule, lr, spec.name] = probe_pool.val_auc(
                    folder, _with(spec, lr), steps, seq_len=SEQ_LEN, batch_size=BATCH
                )
    for source in sources:
        folder = relabel(sources[source], base / f"{source}-control", CONTROL, seed=0)
        for spec in (ONETRANS, DIN):
            jobs[source, "control", 3e-3, spec.name] = probe_pool.val_auc(
                folder, _with(spec, 3e-3), DEFAULT_STEPS, seq_len=SEQ_LEN, batch_size=BATCH
            )
    return jobs


@pytest.mark.parametrize("source,rule,lr", list(_cases()))
def test_onetrans_reads_the_planted_rule_like_din(trainings, source, rule, lr):
    steps = _steps(source, rule)
    ot = trainings[source, rule, lr, ONETRANS.name].result()
    din = trainings[source, rule, lr, DIN.name].result()
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
def test_control_with_mismatched_histories_stays_at_chance(trainings, source):
    """The side rule with each user's events handed to another user (`Rule(control=True)`): the
    same impressions and labels, at the higher rate, trained in `trainings`."""
    for spec in (ONETRANS, DIN):
        auc = trainings[source, "control", 3e-3, spec.name].result()
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
