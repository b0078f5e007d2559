"""harness.train end to end on a small synthetic world with the stand-in model: the run folder,
idempotence, failure handling, the next-batch protocol, W&B offline, resume after a real kill."""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from harness.config import ConfigError, RunConfig, apply_overrides, load_config, run_id
from harness.data.contract import ContractError
from harness.runstore import MetricsCsv, RunStore
from harness.system import NonFiniteLossError
from harness.train import describe, train_run
from tests import train_support as S

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
RESULT_KEYS = {
    "schema",
    "run_id",
    "name",
    "sweep",
    "axis",
    "model",
    "size",
    "config",
    "axes",
    "seed",
    "status",
    "metrics",
    "oracle",
    "params",
    "flops",
    "train",
    "throughput",
    "mfu",
    "wall_time_s",
    "protocol",
}
METRIC_KEYS = {f"{t}_{m}" for t in ("ctr", "cvr") for m in ("auc", "uauc", "logloss")}


pytestmark = pytest.mark.usefixtures("stand_in")  # tests/conftest.py; `world` is there too


def make_cfg(world: Path, **over) -> RunConfig:
    return S.make_cfg(world, steps=8, ckpt_every=4, log_every=2, **over)


def test_run_folder_contract_and_idempotence(world, tmp_path):
    cfg = make_cfg(world, **{"train.eval_every_n_steps": 4})
    run_dir = tmp_path / "runs" / "test" / run_id(cfg)
    result = train_run(cfg, run_dir)
    names = {p.name for p in run_dir.iterdir()}
    assert {
        "config.yaml",
        "provenance.json",
        "status.json",
        "metrics.csv",
        "result.json",
        "checkpoints",
        "logs",
        "DONE",
    } <= names
    assert load_config(run_dir / "config.yaml") == cfg
    assert (
        RESULT_KEYS <= set(result)
        and result["run_id"] == run_id(cfg)
        and result["status"] == "done"
    )
    assert json.loads((run_dir / "result.json").read_text()) == json.loads(json.dumps(result))
    for split in ("val", "test"):
        assert set(result["metrics"][split]) == METRIC_KEYS == set(result["oracle"][split])
        assert 0.0 <= result["metrics"][split]["ctr_auc"] <= 1.0
    # the synthetic world's true probabilities beat an 8-step model
    assert result["oracle"]["test"]["ctr_auc"] > result["metrics"]["test"]["ctr_auc"]
    assert result["train"]["steps"] == 8 and result["train"]["samples"] > 0
    assert result["flops"]["train_total"] == pytest.approx(
        result["flops"]["train_per_example"] * result["train"]["samples"]
    )
    assert (
        result["throughput"]["samples_per_s"] > 0 and result["mfu"] is None
    )  # CPU: no stated peak
    assert result["params"]["total"] == result["params"]["dense"] + result["params"]["embedding"]
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "done" and status["attempts"] == 1 and status["error"] is None
    prov = json.loads((run_dir / "provenance.json").read_text())
    assert prov["git"]["sha"] and isinstance(prov["git"]["dirty"], bool)
    for key in ("precision", "compile", "wandb", "attention", "threads", "recompute"):
        assert prov["decisions"][key]["reason"], key
    assert prov["decisions"]["precision"]["value"] == "32-true" and prov["packages"]["torch"]
    rows = pd.read_csv(run_dir / "metrics.csv")
    assert {"train/loss", "train/grad_norm_dense", "val/ctr_auc", "val_oracle/ctr_auc"} <= set(
        rows.metric
    )
    assert rows[rows.metric == "val/ctr_auc"].step.nunique() == 2  # eval_every_n_steps = 4 of 8
    assert rows[rows.metric == "val/ctr_auc"].value.iloc[-1] == pytest.approx(
        result["metrics"]["val"]["ctr_auc"], abs=1e-6
    )
    assert (run_dir / "checkpoints" / "last.ckpt").exists()
    # DONE: a second call returns the record without training again
    before = (run_dir / "result.json").stat().st_mtime_ns
    assert train_run(cfg, run_dir) == json.loads((run_dir / "result.json").read_text())
    assert (run_dir / "result.json").stat().st_mtime_ns == before


def test_folder_of_another_run_is_refused(world, tmp_path):
    cfg = make_cfg(world)
    RunStore(tmp_path).create()
    (tmp_path / "config.yaml").write_text(apply_overrides(cfg, {"seed": 9}).to_yaml())
    with pytest.raises(ConfigError, match="holds run"):
        train_run(cfg, tmp_path)
    assert load_config(tmp_path / "config.yaml").seed == 9  # nothing overwritten


def _attempt_fails_after_the_config_step(cfg, run_dir):
    """An attempt that stops right after train_run's config.yaml step: its dataset is absent."""
    with pytest.raises(ContractError, match="not a dataset folder"):
        train_run(cfg, run_dir)


def test_config_yaml_is_written_once_and_left_untouched_when_unchanged(world, tmp_path):
    cfg = make_cfg(world, **{"data.dataset": str(tmp_path / "nope")})
    run_dir = tmp_path / "run"
    _attempt_fails_after_the_config_step(cfg, run_dir)  # absent: written
    path = run_dir / "config.yaml"
    assert load_config(path) == cfg
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))  # a stamp no rewrite could keep
    _attempt_fails_after_the_config_step(cfg, run_dir)  # the same content: not rewritten
    assert path.stat().st_mtime_ns == 1_000_000_000
    assert not (run_dir / "logs" / "jobs.jsonl").exists()  # nothing changed, nothing recorded


def test_config_yaml_takes_an_attempts_settings_outside_the_id_and_records_them(
    world, tmp_path, capsys
):
    cfg = make_cfg(world, **{"data.dataset": str(tmp_path / "nope")})
    run_dir = tmp_path / "run"
    _attempt_fails_after_the_config_step(cfg, run_dir)
    again = apply_overrides(cfg, {"train.log_every_n_steps": 5, "logging.progress_bar": True})
    assert run_id(again) == run_id(cfg)  # settings outside the id: the same run
    _attempt_fails_after_the_config_step(again, run_dir)
    # config.yaml is what harness.launch trains the folder with: this attempt's settings
    assert load_config(run_dir / "config.yaml") == again
    [line] = RunStore(run_dir).attempts()
    assert line["config_changed"] == {
        "logging.progress_bar": {"was": False, "now": True},
        "train.log_every_n_steps": {"was": 2, "now": 5},
    }
    assert "train.log_every_n_steps" in capsys.readouterr().err


def test_describe_matches_the_built_model(world):
    cfg = make_cfg(world)
    from harness.data.contract import Manifest
    from model.registry import build_model

    spec = Manifest.load(world).feature_spec(16)
    m = build_model(S.MODEL, spec, "tiny")
    d = describe(cfg)
    assert d["params"] == m.param_counts()
    assert d["flops"]["train_per_example"] == m.flops_per_example()["train"]


def test_nan_loss_stops_with_clear_error_and_keeps_last_good_checkpoint(world, tmp_path):
    cfg = make_cfg(
        world,
        **{
            "model.overrides.nan_after_steps": 6,
            "train.max_steps": 20,
            "train.ckpt_every_n_steps": 2,
            "train.log_every_n_steps": 5,
        },
    )
    with pytest.raises(NonFiniteLossError, match="NaN/inf at optimizer step 6"):
        train_run(cfg, tmp_path)
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["state"] == "failed" and "NaN/inf" in status["error"]
    assert not (tmp_path / "DONE").exists() and not (tmp_path / "result.json").exists()
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 6  # the checkpoint after step 6 (NaN) was refused
    assert all(
        torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point()
    )


def test_missing_dataset_fails_before_training(tmp_path, world):
    cfg = make_cfg(world, **{"data.dataset": str(tmp_path / "nope")})
    with pytest.raises(ContractError, match="not a dataset folder"):
        train_run(cfg, tmp_path / "run")
    assert json.loads((tmp_path / "run" / "status.json").read_text())["state"] == "failed"
    assert not any((tmp_path / "run" / "checkpoints").iterdir())


def test_contract_breaking_dataset_fails_before_training_and_is_left_intact(tmp_path, world):
    bad = tmp_path / "bad"
    shutil.copytree(world, bad)
    imp = pd.read_parquet(bad / "impressions.parquet")
    imp.loc[3, "click"] = 2
    imp.to_parquet(bad / "impressions.parquet")
    before = (bad / "impressions.parquet").read_bytes()
    cfg = make_cfg(world, **{"data.dataset": str(bad)})
    with pytest.raises(ContractError) as e:
        train_run(cfg, tmp_path / "run")
    assert "impressions.parquet" in str(e.value) and "click" in str(e.value)
    assert (bad / "impressions.parquet").read_bytes() == before
    assert not (tmp_path / "run" / "metrics.csv").exists()


def test_next_batch_protocol_reports_daily_macro_per_split(world, tmp_path):
    cfg = make_cfg(
        world, **{"train.protocol": "next_batch", "train.max_steps": -1, "train.cvr_loss": "ctcvr"}
    )
    result = train_run(cfg, tmp_path)
    assert set(result["metrics"]) == {"train", "val", "test"} == set(result["oracle"])
    for m in result["metrics"].values():
        assert METRIC_KEYS <= set(m) and m["n_days"] >= 1
    # one pass over the whole stream: every train, val and test batch was predicted, then trained on
    assert result["train"]["epochs"] == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="one chronological pass"):
        train_run(apply_overrides(cfg, {"train.max_epochs": 2}), tmp_path / "other")


# ---- W&B offline ------------------------------------------------------------------------------


def read_wandb_records(path: Path):
    """Records of a .wandb file: LevelDB-log framing (7-byte header ':W&B' + magic/version, 32 KiB
    blocks, 7-byte record headers: crc32, length, type FULL=1/FIRST=2/MIDDLE=3/LAST=4) around
    protobuf wandb_internal_pb2.Record messages (infra.md §5)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, out, buf = 7, 32768, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        buf = chunk if kind in (1, 2) else buf + chunk
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(buf)
            out.append(rec)
    return out


def test_wandb_offline_run_holds_the_logged_metrics(world, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = make_cfg(world, **{"logging.wandb": "auto", "logging.tags": ["t1"], "axis": "seq_len"})
    train_run(cfg, tmp_path)
    prov = json.loads((tmp_path / "provenance.json").read_text())
    assert prov["decisions"]["wandb"] == {"value": "offline", "reason": "auto: WANDB_MODE=offline"}
    files = list((tmp_path / "logs").rglob(f"run-{run_id(cfg)}.wandb"))
    assert len(files) == 1 and "offline-run-" in str(files[0])
    recs = read_wandb_records(files[0])
    run = next(r.run for r in recs if r.WhichOneof("record_type") == "run")
    assert (
        run.run_id == run_id(cfg)
        and run.run_group == "test"
        and run.job_type == "seq_len"
        and list(run.tags) == ["t1"]
    )
    cfg_items = {i.key: i.value_json for i in run.config.update}
    assert json.loads(cfg_items["train"])["max_steps"] == 8
    history = [
        {i.key or ".".join(i.nested_key): i.value_json for i in r.history.item}
        for r in recs
        if r.WhichOneof("record_type") == "history"
    ]
    losses = [float(h["train/loss"]) for h in history if "train/loss" in h]
    csv_losses = [
        r["value"]
        for r in MetricsCsv(tmp_path / "metrics.csv").read()
        if r["metric"] == "train/loss"
    ]
    assert losses and losses == pytest.approx(csv_losses)  # the mirror matches the source of truth
    assert any("val/ctr_auc" in h for h in history)


def test_wandb_mode_is_decided_before_init(monkeypatch, tmp_path):
    from harness.tracking import decide_mode

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    cfg = RunConfig.from_dict({"model": {"name": S.MODEL, "size": "tiny"}})
    assert decide_mode(cfg)[0] == "offline"
    assert decide_mode(apply_overrides(cfg, {"logging.wandb": "disabled"}))[0] == "disabled"
    with pytest.raises(ConfigError, match="wandb login"):
        decide_mode(apply_overrides(cfg, {"logging.wandb": "online"}))
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert decide_mode(cfg) == ("online", "auto: WANDB_API_KEY is set")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert decide_mode(cfg)[0] == "disabled"


def test_slurm_environment_hands_requeue_to_submitit(monkeypatch):
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    from harness.provenance import decide_threads
    from harness.trainer_setup import trainer_plugins

    monkeypatch.delenv("SLURM_NTASKS", raising=False)
    assert not any(isinstance(p, SLURMEnvironment) for p in trainer_plugins())
    monkeypatch.setenv("SLURM_NTASKS", "1")
    envs = [p for p in trainer_plugins() if isinstance(p, SLURMEnvironment)]
    assert len(envs) == 1 and envs[0].auto_requeue is False
    old = torch.get_num_threads()
    monkeypatch.delenv("HARNESS_NUM_THREADS", raising=False)
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")
    try:
        assert decide_threads() == (1, "SLURM_CPUS_PER_TASK") and torch.get_num_threads() == 1
        # data workers take their cores out of the budget (never below one thread)
        monkeypatch.setenv("SLURM_CPUS_PER_TASK", "4")
        assert decide_threads(num_workers=1) == (3, "SLURM_CPUS_PER_TASK minus 1 data worker(s)")
        assert decide_threads(num_workers=8)[0] == 1
        monkeypatch.setenv("HARNESS_NUM_THREADS", "2")
        assert decide_threads() == (2, "HARNESS_NUM_THREADS")
    finally:
        torch.set_num_threads(old)


# ---- kill and resume ------------------------------------------------------------------------------


def _child(cfg_path: Path, run_dir: Path) -> subprocess.Popen:
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.train_support",
            "--config",
            str(cfg_path),
            "--run-dir",
            str(run_dir),
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def _wait_for_step(run_dir: Path, step: int, proc: subprocess.Popen, timeout: float = 240) -> None:
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    t0 = time.time()
    while time.time() - t0 < timeout:
        if ckpt.exists():
            try:
                if torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"] >= step:
                    return
            except Exception:  # pragma: no cover (the file is renamed into place whole)
                pass
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        time.sleep(0.2)
    raise AssertionError("the child run never reached its checkpoint")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_killed_run_resumes_to_the_same_result(world, tmp_path, sig):
    # 2 epochs of ~15 batches, checkpoint every 3 steps, killed mid-epoch-1, resumed -> bitwise equal;
    # the SIGKILL case orders its epochs with data.shuffle_block (the resumed run must recompute the
    # same block order), the SIGTERM case uniformly
    cfg = make_cfg(
        world,
        **{
            "train.max_steps": -1,
            "train.max_epochs": 2,
            "data.batch_size": 256,
            "train.ckpt_every_n_steps": 3,
            "data.shuffle": True,
            "data.shuffle_block": 16 if sig == signal.SIGKILL else 0,
            "data.shuffle_window": 2,
            "model.overrides.sleep_s": 0.15,
        },
    )
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(cfg.to_yaml())
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "run"
    ref = _child(cfg_path, ref_dir)
    proc = _child(cfg_path, run_dir)
    _wait_for_step(run_dir, 5, proc)
    proc.send_signal(sig)
    proc.wait(timeout=60)
    assert not (run_dir / "DONE").exists()
    status = json.loads((run_dir / "status.json").read_text())
    # a catchable signal: the run says so (interrupted, not failed); SIGKILL leaves "running"
    if sig == signal.SIGTERM:
        assert proc.returncode == 128 + signal.SIGTERM
        assert status["state"] == "interrupted" and "SIGTERM" in status["error"]
    killed_at = torch.load(
        run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True
    )["global_step"]
    resumed = _child(cfg_path, run_dir)
    assert resumed.wait(timeout=400) == 0, resumed.stdout.read().decode()[-3000:]
    assert ref.wait(timeout=400) == 0, ref.stdout.read().decode()[-3000:]
    a, b = (json.loads((d / "result.json").read_text()) for d in (ref_dir, run_dir))
    assert 0 < killed_at < a["train"]["steps"]
    assert (
        b["metrics"] == a["metrics"] and b["train"] == a["train"]
    )  # bitwise: exact float equality
    wa, wb = (
        torch.load(d / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)[
            "state_dict"
        ]
        for d in (ref_dir, run_dir)
    )
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    la, lb = (
        [
            (r["step"], r["value"])
            for r in MetricsCsv(d / "metrics.csv").read()
            if r["metric"] == "train/loss"
        ]
        for d in (ref_dir, run_dir)
    )
    assert la == lb
    st = json.loads((run_dir / "status.json").read_text())
    assert st["state"] == "done" and st["attempts"] == 2
    prov = json.loads((run_dir / "provenance.json").read_text())
    assert prov["decisions"]["resumed_from_step"] == killed_at


def test_real_onetrans_trains_and_records_its_attention_decision(world, tmp_path):
    cfg = make_cfg(
        world,
        **{
            "model.name": "onetrans",
            "model.size": "onetrans-tiny",
            "train.max_steps": 3,
            "train.optimizer": "paper",
            "train.attention": "sdpa",
        },
    )
    result = train_run(cfg, tmp_path)
    assert result["axes"]["n_layers"] == 2 and result["axes"]["seq_len"] == 16
    prov = json.loads((tmp_path / "provenance.json").read_text())
    assert prov["decisions"]["attention"] == {"value": "sdpa", "reason": "requested"}
    assert set(result["metrics"]["test"]) == METRIC_KEYS
