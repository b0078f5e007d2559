"""`python -m harness.data`: synth, stats, validate (exit codes) and convert dispatch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from harness.data.__main__ import main
from harness.data.contract import IMPRESSIONS, Manifest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ci_folder(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "ci"
    assert main(["synth", "--preset", "ci", "--seed", "1", "--out", str(out), "--no-progress"]) == 0
    return out


def test_synth_writes_a_folder_and_refuses_to_overwrite(ci_folder, capsys):
    assert Manifest.load(ci_folder).stats["impressions"] > 10_000
    capsys.readouterr()
    assert (
        main(["synth", "--preset", "ci", "--seed", "1", "--out", str(ci_folder), "--no-progress"])
        == 2
    )
    assert "already holds a dataset" in capsys.readouterr().err


def test_stats_prints_table_and_json(ci_folder, capsys):
    assert main(["stats", str(ci_folder)]) == 0
    text = capsys.readouterr().out
    assert "Bayes-optimal" in text and "ctr_uauc" in text and "prior events/imp" in text
    assert main(["stats", str(ci_folder), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["oracle"] == Manifest.load(ci_folder).stats["oracle"]
    assert set(stats["splits"]) == {"train", "val", "test"}


def test_validate_exit_codes(ci_folder, tmp_path, capsys):
    assert main(["validate", str(ci_folder)]) == 0
    assert "valid" in capsys.readouterr().out
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "manifest.yaml").write_text((ci_folder / "manifest.yaml").read_text())
    df = pd.read_parquet(ci_folder / IMPRESSIONS)
    df.loc[0, "click"] = 5
    df.to_parquet(bad / IMPRESSIONS, index=False)
    assert main(["validate", str(bad)]) == 1
    out = capsys.readouterr().out
    assert "events.parquet: missing_file" in out and "[click]: label" in out
    assert main(["validate", str(tmp_path / "nowhere")]) == 1
    assert "not a dataset folder" in capsys.readouterr().out


def test_convert_dispatches_to_converters(monkeypatch, tmp_path, capsys):
    import harness.data.converters as conv

    calls = []
    monkeypatch.setattr(
        conv,
        "convert",
        lambda source, raw, out, **opts: calls.append((source, raw, out, opts)) or out,
    )
    assert (
        main(
            [
                "convert",
                "taobao",
                str(tmp_path / "raw"),
                "--out",
                str(tmp_path / "o"),
                "--opt",
                "negatives=4",
                "--opt",
                "name=x",
            ]
        )
        == 0
    )
    assert calls == [("taobao", tmp_path / "raw", tmp_path / "o", {"negatives": 4, "name": "x"})]
    assert main(["convert", "taobao", "r", "--out", "o", "--opt", "novalue"]) == 2


def test_module_entry_point_runs():
    r = subprocess.run(
        [sys.executable, "-m", "harness.data", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0 and "validate" in r.stdout and "synth" in r.stdout
