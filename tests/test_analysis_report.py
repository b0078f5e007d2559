"""The report renders every section from a small fixture of run folders (failed runs included),
as self-contained HTML and Markdown; the W&B renderer builds its blocks with the API mocked."""

from __future__ import annotations

import json
import re

import pytest

from analysis.analyze import analyze
from analysis.collect import collect
from analysis.fit import FitSettings
from analysis.report.__main__ import main
from analysis.report.build import build_report, write_outputs
from analysis.report.html import render_html
from analysis.report.markdown import parse_pipe_table, pipe_table, render_markdown
from tests.fixtures.make_runs import make_runs

SECTIONS = [
    "Conclusions",
    "Flagged and left-out runs",
    "Figure 3: which axis buys the most per FLOP",
    "Scaling along each axis",
    "All series on training FLOPs",
    "Fit diagnostics",
    "Bayes ceiling vs fitted floor",
    "Paper tables (ours beside the paper's)",
    "Training curves",
    "Per-configuration results",
    "Methods",
    "Provenance",
]
METRICS = ("ctr_uauc", "ctr_logloss")  # two metrics keep the test fast; the CLI default is all six
SETTINGS = FitSettings(n_boot=200, seed=3)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    for sweep in ("length", "depth", "main", "ablation", "systems"):
        make_runs(runs, only=sweep)
    out = tmp_path_factory.mktemp("report")
    an = analyze(collect([runs]), settings=SETTINGS, metrics=METRICS)
    write_outputs(an, out)
    spec = build_report(an, out, vector=False)
    return runs, out, an, spec, render_html(spec), render_markdown(spec, out)


def test_every_section_renders(rendered):
    _, _, _, spec, html, md = rendered
    assert [s.title for s in spec.sections] == SECTIONS
    for title in SECTIONS:
        assert f">{title.replace(chr(39), '&#x27;')}</h2>" in html
        assert f"## {title}" in md
    # every section has real content, not only a "nothing here" note
    for s in spec.sections:
        assert s.blocks, s.title
    # figures: every one embedded once in HTML and linked in Markdown
    figs = spec.figures()
    assert len(figs) >= 9
    assert html.count('<img alt="') == len(figs) == md.count("![")
    for name in (
        "scaling_length_onetrans_seq_len",
        "figure3a",
        "holdout_parity",
        "ablation_bars",
        "curves_length",
    ):
        assert any(f.name == name for f in figs), name
    for t in (
        "table2",
        "table3",
        "table5",
        "problems",
        "fits_powerlaw",
        "floor_vs_oracle",
        "configs",
    ):
        assert any(tb.name == t for tb in spec.tables()), t


def test_failed_runs_are_listed_not_dropped(rendered):
    runs, out, an, spec, html, md = rendered
    problems = an.collection.problems
    assert sorted(problems["status"]) == ["failed", "incomplete", "running"]
    for run_id in problems["run_id"]:
        assert run_id in html and run_id in md
    assert "out of memory" in html
    doc = json.loads((out / "fits.json").read_text())
    assert {r["status"] for r in doc["excluded_runs"]} == {"failed", "incomplete", "running"}


def test_html_is_self_contained(rendered):
    html = rendered[4]
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert "<link" not in html and "<script" not in html
    assert html.count("data:image/png;base64,") == len(rendered[3].figures())


def test_markdown_tables_round_trip(rendered):
    spec = rendered[3]
    for t in spec.tables():
        if t.frame.empty:
            continue
        back = parse_pipe_table(pipe_table(t.frame, t.float_format))
        assert list(back.columns) == [str(c) for c in t.frame.columns]
        assert back.shape == t.frame.shape
    tricky = __import__("pandas").DataFrame({"a|b": ["x|y", "back\\slash"], "n": [1.5, None]})
    back = parse_pipe_table(pipe_table(tricky))
    assert back.columns.tolist() == ["a|b", "n"] and back["a|b"].tolist() == ["x|y", "back\\slash"]
    assert back["n"].tolist() == ["1.5", ""]


def test_paper_tables_show_ours_and_paper(rendered):
    spec = rendered[3]
    t2 = next(t for t in spec.tables() if t.name == "table2").frame
    base = t2[t2["model"] == "dcnv2_din"].iloc[0]
    assert base["ctr_uauc rel%"] == pytest.approx(0.0) and base[
        "ctr_uauc paper abs"
    ] == pytest.approx(0.71927)
    ot = t2[t2["model"] == "onetrans"].iloc[0]
    assert ot["ctr_uauc paper%"] == pytest.approx(1.77)  # OneTrans-S row of the paper
    assert ot["ctr_uauc rel%"] == pytest.approx(
        (ot["ctr_uauc abs"] / base["ctr_uauc abs"] - 1) * 100
    )
    assert ot["ctr_uauc pts"] == pytest.approx((ot["ctr_uauc abs"] - base["ctr_uauc abs"]) * 100)
    t3 = next(t for t in spec.tables() if t.name == "table3").frame
    assert t3.iloc[0]["variant"] == "reference"
    assert t3.set_index("variant").loc["shared_params", "ctr_uauc paper%"] == pytest.approx(-0.29)
    t5 = next(t for t in spec.tables() if t.name == "table5").frame.set_index("variant")
    assert t5.loc["flash", "train_ms Δ% (ours)"] == pytest.approx(-50.0)  # fixture: 2x throughput
    assert t5.loc["flash", "train_ms paper"] == pytest.approx(-50.1)


def test_outputs_deterministic_under_seed(rendered, tmp_path):
    runs, out, an, *_ = rendered
    an2 = analyze(collect([runs]), settings=SETTINGS, metrics=METRICS)
    write_outputs(an2, tmp_path)
    assert (tmp_path / "fits.json").read_text() == (out / "fits.json").read_text()
    assert (tmp_path / "predictions.csv").read_text() == (out / "predictions.csv").read_text()
    doc = json.loads((out / "fits.json").read_text())
    assert doc["bootstrap"]["seed"] == 3 and doc["bootstrap"]["n_boot"] == 200
    length = [
        f
        for f in doc["fits"]
        if f["sweep"] == "length" and f["x"] == "seq_len" and f.get("form") == "powerlaw"
    ]
    assert length and length[0]["oracle"] == pytest.approx(0.395)


def test_cli_writes_everything(tmp_path):
    runs = make_runs(tmp_path / "runs", only="width")
    out = tmp_path / "out"
    assert main([str(runs), "--out", str(out), "--n-boot", "100", "--metrics", "ctr_auc"]) == 0
    for name in ("runs.csv", "fits.json", "predictions.csv", "report.html", "report.md"):
        assert (out / name).stat().st_size > 0, name
    assert list((out / "figures").glob("*.svg")), "vector twins are written by default"
    assert main([str(tmp_path / "missing"), "--out", str(out)]) == 2


def test_metrics_csv_long_and_wide_form(tmp_path):
    from analysis.plots import read_metrics_csv

    (tmp_path / "long.csv").write_text(
        "step,metric,value,time\n0,train/loss,0.9,0.1\n0,val/auc,0.6,0.1\n10,train/loss,0.5,1.0\n"
    )
    (tmp_path / "wide.csv").write_text("step,epoch,train/loss\n0,0,0.9\n10,0,0.5\n")
    (tmp_path / "bad.csv").write_text("nothing,here\n1,2\n")
    long, wide = read_metrics_csv(tmp_path / "long.csv"), read_metrics_csv(tmp_path / "wide.csv")
    assert long["train/loss"].tolist() == [0.9, 0.5] and long["val/auc"].iloc[0] == 0.6
    assert wide["train/loss"].tolist() == [0.9, 0.5]
    assert read_metrics_csv(tmp_path / "bad.csv") is None


def test_wandb_renderer_with_api_mocked(rendered, monkeypatch):
    """Like wandb-workspaces' own tests: _get_api and the GraphQL call are faked; no network."""
    iface = pytest.importorskip("wandb_workspaces.reports.v2.interface")
    import wandb_workspaces.reports.v2 as wr

    from analysis.report import wandb_report

    calls = []

    class FakeApi:
        default_entity = "team"

    def fake_graphql(api, query, variables):
        calls.append(variables)
        return {"project": {"internalId": "UHJvamVjdDox"}}

    monkeypatch.setattr(iface, "_get_api", lambda: FakeApi())
    monkeypatch.setattr(iface, "execute_graphql", fake_graphql)
    spec = rendered[3]
    report = wandb_report.build_wandb_report(spec, entity="team", project="onetrans", group="g1")
    kinds = [type(b).__name__ for b in report.blocks]
    assert kinds.count("H2") == len(spec.sections)
    grids = [b for b in report.blocks if isinstance(b, wr.PanelGrid)]
    assert len(grids) == len(spec.figures())
    assert {p.media_keys[0] for g in grids for p in g.panels} == {f.name for f in spec.figures()}
    assert all(g.runsets[0].query == "analysis-g1" for g in grids)
    assert kinds.count("MarkdownBlock") >= len(spec.tables())
    model = report._to_model()  # the payload save() would send, built offline
    assert model is not None and calls and calls[0]["projectName"] == "onetrans"


def test_wandb_is_skipped_without_credentials(monkeypatch):
    from analysis.report import wandb_report

    monkeypatch.setenv("WANDB_MODE", "offline")
    assert "WANDB_MODE=offline" in wandb_report.online_reason()
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", "/nonexistent")
    assert "credentials" in wandb_report.online_reason()
