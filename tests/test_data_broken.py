"""Datasets a run cannot learn from, and damaged files: validate, `harness.data stats` and the
trainer's up-front check each end in a message naming the file and the fix, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from harness.data.__main__ import main
from harness.data.contract import EVENTS, IMPRESSIONS, ContractError
from harness.data.validate import errors, validate
from harness.trainer_setup import validate_dataset
from tests.data_support import edit

# fixtures `clean` (a small synthetic world) and `folder` (a fresh copy to damage): tests/conftest.py


def _kinds(found) -> dict[str, object]:
    return {v.kind: v for v in found}


@pytest.mark.parametrize("name", [EVENTS, IMPRESSIONS])
def test_empty_files_are_errors_and_stop_training(folder, name, capsys):
    edit(folder, name, lambda df: df.iloc[:0])
    v = _kinds(validate(folder))["empty"]
    assert v.file == name and v.is_error and name in v.fix
    with pytest.raises(ContractError, match=f"{name}: empty"):
        validate_dataset(folder)  # train_run calls this before building anything
    assert main(["validate", str(folder)]) == 1
    assert main(["stats", str(folder)]) == 0  # statistics of an empty file: zeros, no crash
    assert "error" not in capsys.readouterr().err


def test_an_empty_split_is_an_error(folder):
    edit(folder, IMPRESSIONS, lambda df: df[df["split"] != "val"])
    found = validate(folder)
    v = next(x for x in found if x.kind == "empty_split")
    assert "'val'" in v.message and v.is_error


def test_exact_duplicate_events_are_a_warning(folder, capsys):
    def dup(df):
        return pd.concat([df, df.iloc[[3, 3, 10]]]).sort_values(["user_id", "ts"], kind="stable")

    edit(folder, EVENTS, dup)
    found = validate(folder)
    v = _kinds(found)["duplicate_event"]
    assert v.rows == 3 and not v.is_error and "drop_duplicates" in v.fix
    assert errors(found) == []
    validate_dataset(folder)  # a warning does not stop training
    assert main(["validate", str(folder)]) == 0
    assert "warning: events.parquet [item_id]: duplicate_event" in capsys.readouterr().out


def test_duplicates_across_row_groups(folder):
    df = pd.read_parquet(folder / EVENTS)
    df = (
        pd.concat([df, df.iloc[[5]]])
        .sort_values(["user_id", "ts"], kind="stable")
        .reset_index(drop=True)
    )
    row = int(df.index[(df.duplicated(keep="last"))][0])
    pq.write_table(
        pa.Table.from_pandas(df, preserve_index=False), folder / EVENTS, row_group_size=row + 1
    )
    assert pq.ParquetFile(folder / EVENTS).num_row_groups > 1
    assert _kinds(validate(folder))["duplicate_event"].rows == 1


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 40])


def _corrupt(path: Path) -> None:
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 4096] = bytes(4096)[: len(data[mid : mid + 4096])]
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [_truncate, _corrupt])
@pytest.mark.parametrize("name", [EVENTS, IMPRESSIONS])
def test_damaged_parquet_is_named_everywhere(folder, name, damage, capsys):
    damage(folder / name)
    found = validate(folder)
    bad = [v for v in found if v.file == name and v.is_error]
    assert bad, [str(v) for v in found]
    if damage is _truncate:
        assert bad[0].kind == "unreadable" and str(folder / name) in bad[0].message
    with pytest.raises(ContractError, match=name):
        validate_dataset(folder)
    capsys.readouterr()
    assert main(["validate", str(folder)]) == 1
    assert name in capsys.readouterr().out
    rc = main(["stats", str(folder)])
    err = capsys.readouterr().err
    if rc != 0:  # stats reads fewer columns: a corrupt page it never reads is not its business
        assert rc == 2 and name in err and "Traceback" not in err


def test_stats_and_validate_accept_dataset_names_like_configs(tmp_path, capsys, monkeypatch):
    cache = tmp_path / "cache"
    assert main(["validate", "synthetic:ci", "--cache-dir", str(cache)]) == 0
    out = capsys.readouterr().out
    assert "valid" in out and str(cache) in out
    assert main(["stats", "synthetic:ci", "--cache-dir", str(cache), "--stored"]) == 0
    assert "Bayes-optimal" in capsys.readouterr().out
    assert main(["stats", "synthetic:nope", "--cache-dir", str(cache)]) == 2
    assert "synthetic:laptop" in capsys.readouterr().err
