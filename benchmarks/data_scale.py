"""Data path at scale: wall time and peak RSS of each step on a generated log of a public shape.

    python benchmarks/data_scale.py --rows 1000000                 # -> benchmarks/results/data_scale_1m.json
    python benchmarks/data_scale.py --rows 20000 --out /tmp/x.json # seconds (the tests run this)
    python benchmarks/data_scale.py --rows 10000000 --engine duckdb --steps convert,validate,stats
                                    # the streaming converter -> data_scale_10m_duckdb.json
    python benchmarks/data_scale.py --rows 3000000 --shape tmall --engine duckdb
                                    # a Tmall-shaped log -> data_scale_3m_tmall_duckdb.json

--shape taobao (the default) is shaped like Taobao UserBehavior (UserBehavior.csv:
user,item,category,behavior,ts, no header), at the public log's ratios (100,150,807 rows, 987,994
users, 4,162,024 items, 9,439 categories, 9 days from 2017-11-25 Beijing time): rows / 100 users
with log-normal activity, items = 4.16% of rows drawn with Zipf popularity (exponent --zipf), one
category per item, the public behaviour mix pv 89.58% / cart 5.52% / fav 2.88% / buy 2.01%, uniform
timestamps over the 9 days. --shape tmall writes t_alibaba_data.csv at the 2014 brand log's ratios
and --shape movielens ratings.dat, users.dat and movies.dat at MovieLens-1M's (their functions
below say which); each is converted by the converter of that name with its default neg_ratio
(4, 4 and 0). The log is written in blocks of users, so generating it holds one block.

Steps, each in its own subprocess whose peak RSS is the kernel's ru_maxrss of that child (os.wait4):
  convert     python -m harness.data convert SHAPE RAW --out DIR   (taobao: neg_ratio 4, as the sweeps;
              --engine duckdb adds --opt engine=duckdb: the bounded-memory streaming converter)
  validate    python -m harness.data validate DIR
  stats       python -m harness.data stats DIR
  prepare     --storage mapped only: the data module's out-of-core set-up (harness/data/mapped.py)
              building its memory-mapped arrays, which train_pass and eval_pass then open
  train_pass  the data module's set-up and one epoch of training batches (no model): the data side
              of a training epoch (--train-max-s T: its first T seconds, with the epoch's time
              extrapolated and labelled so; --order: the epoch's request order, shuffled uniformly
              (the default), in shuffled blocks (--order blocks: data.shuffle_block
              --shuffle-block, .shuffle_window --shuffle-window) or chronological, as data.shuffle:
              false and the paper train)
  eval_pass   the data module's set-up, then every val and test batch through an untrained
              onetrans-tiny (no grad) and the split metrics: the final evaluation of harness.train
              without Lightning
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# the public UserBehavior log (Tianchi dataset 649), for the generator's ratios
PUBLIC_ROWS = 100_150_807
ROWS_PER_USER = PUBLIC_ROWS / 987_994
ITEMS_PER_ROW = 4_162_024 / PUBLIC_ROWS
ITEMS_PER_CATEGORY = 4_162_024 / 9_439
BEHAVIOUR_MIX = {"pv": 0.8958, "cart": 0.0552, "fav": 0.0288, "buy": 0.0201}
START_TS = 1_511_539_200  # 2017-11-25 00:00 Beijing
DAYS = 9
TMALL_TYPE_MIX = {0: 0.9544, 1: 0.0382, 2: 0.0066, 3: 0.0008}  # click, buy, collect, cart
ML_RATING_MIX = {1: 0.0563, 2: 0.1104, 3: 0.2609, 4: 0.3498, 5: 0.2226}
ML_FIRST_TS, ML_LAST_TS = 956_703_932, 1_046_454_590
SHAPES = ("taobao", "tmall", "movielens")  # each converted by the converter of that name
CHUNK_ROWS = 5_000_000  # rows per block the generator writes
STEPS = ("convert", "validate", "stats", "prepare", "train_pass", "eval_pass")


def _blocks(rng: np.random.Generator, rows: int, n_users: int) -> list:
    """Rows per user (log-normal activity: a long tail of heavy users, as the public logs; one
    multinomial draw, the same law as drawing each row's user), then blocks of consecutive users
    holding about CHUNK_ROWS rows each: [(first user id, that block's rows per user)]."""
    activity = rng.lognormal(0.0, 1.0, n_users)
    per_user = rng.multinomial(rows, activity / activity.sum())
    cuts = np.unique(np.searchsorted(np.cumsum(per_user), np.arange(CHUNK_ROWS, rows, CHUNK_ROWS)))
    edges = [0, *cuts.tolist(), n_users]
    return [(lo + 1, per_user[lo:hi]) for lo, hi in zip(edges, edges[1:]) if hi > lo]


def _inverse_cdf(rng: np.random.Generator, cdf: np.ndarray, k: int) -> np.ndarray:
    """k draws of an index 0..len(cdf)-1 with the probabilities whose running sum is `cdf`."""
    return np.minimum(np.searchsorted(cdf, rng.random(k) * cdf[-1], side="right"), len(cdf) - 1)


def _zipf_sampler(rng: np.random.Generator, n: int, zipf: float):
    """Draws of ids 1..n where the id of popularity rank r has probability proportional to r^-zipf
    (ranks are not ids: a seeded permutation maps them)."""
    pop = np.arange(1, n + 1, dtype=np.float64) ** -zipf
    cdf = np.cumsum(pop / pop.sum())
    rank_to_id = rng.permutation(n) + 1
    return lambda k: rank_to_id[_inverse_cdf(rng, cdf, k)]


def _draw(rng: np.random.Generator, shares: dict, k: int) -> np.ndarray:
    """k draws of the index of `shares`' keys with those probabilities."""
    return _inverse_cdf(rng, np.cumsum(np.array(list(shares.values()), dtype=np.float64)), k)


def default_neg_ratio(shape: str) -> int:
    """The `neg_ratio` the converter of that name uses when not given (the benchmark's)."""
    import importlib
    import inspect

    convert = importlib.import_module(f"harness.data.converters.{shape}").convert
    return inspect.signature(convert).parameters["neg_ratio"].default


def _append(df, path: Path) -> None:
    df.to_csv(path, header=False, index=False, mode="a")


def generate_log(
    raw: Path, rows: int, *, seed: int = 0, zipf: float = 1.0, shape: str = "taobao"
) -> dict:
    """Write a log of `shape` with about `rows` rows into raw/; returns the shape it drew.

    Written in blocks of users (about CHUNK_ROWS rows each), so the 100M-row log holds one block,
    not the whole log (a one-shot frame of 100M rows with string behaviours and its sorted copy
    would need most of this machine's 23 GB)."""
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    return {"taobao": _taobao, "tmall": _tmall, "movielens": _movielens}[shape](
        raw, rows, rng, zipf
    ) | {"shape": shape}


def _taobao(raw: Path, rows: int, rng: np.random.Generator, zipf: float) -> dict:
    """UserBehavior.csv (user,item,category,behavior,ts; no header), grouped by user."""
    import pandas as pd

    n_users = max(2, round(rows / ROWS_PER_USER))
    n_items = max(10, round(rows * ITEMS_PER_ROW))
    n_cats = max(2, round(n_items / ITEMS_PER_CATEGORY))
    blocks = _blocks(rng, rows, n_users)
    items = _zipf_sampler(rng, n_items, zipf)
    category_of = rng.integers(1, n_cats + 1, n_items + 1)  # indexed by item id; one per item
    path = raw / "UserBehavior.csv"
    path.unlink(missing_ok=True)
    for first, counts in blocks:
        n = int(counts.sum())
        user = np.repeat(np.arange(first, first + len(counts)), counts)
        item_id, beh = items(n), _draw(rng, BEHAVIOUR_MIX, n)
        ts = START_TS + rng.integers(0, DAYS * 86_400, n)
        o = np.lexsort((ts, user))  # grouped by user, as the public file; time within a user
        df = pd.DataFrame(
            {"user": user[o], "item": item_id[o], "category": category_of[item_id[o]]}
        )
        df["behavior"] = pd.Categorical.from_codes(beh[o], list(BEHAVIOUR_MIX))
        df["ts"] = ts[o]
        _append(df, path)
    return {"rows": rows, "users": n_users, "items": n_items, "categories": n_cats, "zipf": zipf}


def _tmall(raw: Path, rows: int, rng: np.random.Generator, zipf: float) -> dict:
    """t_alibaba_data.csv (user_id,brand_id,type,visit_datetime "M-D", with a header) at the
    public file's ratios: 182,880 rows, 884 users, 9,531 brands, 15 April to 15 August 2014, the
    shared sample's type mix (click 95.44%, buy 3.82%, collect 0.66%, cart 0.08%)."""
    import pandas as pd

    from harness.data.converters.tmall import COLUMNS

    n_users = max(2, round(rows * 884 / 182_880))
    n_brands = max(10, round(rows * 9_531 / 182_880))
    days = pd.date_range("2014-04-15", "2014-08-15", freq="D")
    day_label = [f"{d.month}-{d.day}" for d in days]
    blocks = _blocks(rng, rows, n_users)
    brands = _zipf_sampler(rng, n_brands, zipf)
    path = raw / "t_alibaba_data.csv"
    pd.DataFrame(columns=list(COLUMNS)).to_csv(path, index=False)
    for first, counts in blocks:
        n = int(counts.sum())
        user = np.repeat(np.arange(first, first + len(counts)), counts)
        day = rng.integers(0, len(days), n)
        o = np.lexsort((day, user))
        df = pd.DataFrame({"user_id": user[o], "brand_id": brands(n)})
        df["type"] = _draw(rng, TMALL_TYPE_MIX, n)  # the keys are the types 0..3 in order
        df["visit_datetime"] = pd.Categorical.from_codes(day[o], day_label)
        _append(df, path)
    return {"rows": rows, "users": n_users, "items": n_brands, "zipf": zipf}


def _movielens(raw: Path, rows: int, rng: np.random.Generator, zipf: float) -> dict:
    """ratings.dat (user::movie::rating::ts), users.dat and movies.dat at MovieLens-1M's ratios
    (1,000,209 ratings, 6,040 users, 3,706 rated movies, 2000-04-25 to 2003-02-28; at least 1,000
    movies) and the shared subset's rating mix. A user rates a movie once: a user rates at most a
    quarter of the movies, and repeated (user, movie) draws are drawn again (up to 50 rounds, then
    dropped), so the log may have slightly fewer rows than asked (the count is returned)."""
    import pandas as pd

    from harness.data.converters.movielens import AGE_CODES, GENRES

    n_users = max(2, round(rows * 6_040 / 1_000_209))
    n_movies = max(1_000, round(rows * 3_706 / 1_000_209))
    blocks = _blocks(rng, rows, n_users)
    movies = _zipf_sampler(rng, n_movies, zipf)
    path = raw / "ratings.dat"
    path.unlink(missing_ok=True)
    written = 0
    for first, counts in blocks:
        want = np.minimum(counts, n_movies // 4)
        uid = np.arange(first, first + len(counts))
        keys = np.empty(0, dtype=np.int64)
        for _ in range(50):  # draw each user's missing ratings, keep the distinct pairs
            have = np.bincount(keys // (n_movies + 1) - first, minlength=len(counts))
            short = want - have
            if not short.any():
                break
            user = np.repeat(uid, short)
            # only the missing count is drawn, so no user ends above `want`
            keys = np.unique(np.concatenate([keys, user * (n_movies + 1) + movies(len(user))]))
        user, movie = keys // (n_movies + 1), keys % (n_movies + 1)
        ts = ML_FIRST_TS + rng.integers(0, ML_LAST_TS - ML_FIRST_TS, len(keys))
        o = np.lexsort((ts, user))
        rating = _draw(rng, ML_RATING_MIX, len(keys)) + 1
        df = pd.DataFrame({"u": user[o], "m": movie[o], "r": rating, "ts": ts[o]})
        # '::' separators: pandas writes one-character separators, so write '\t' and swap
        text = df.to_csv(header=False, index=False, sep="\t").replace("\t", "::")
        with path.open("a") as f:
            f.write(text)
        written += len(df)
    u = pd.DataFrame({"u": np.arange(1, n_users + 1)})
    u["g"] = np.where(rng.random(n_users) < 0.28, "F", "M")  # ML-1M: 28% of users are women
    u["a"] = rng.choice(AGE_CODES, n_users)
    u["o"] = rng.integers(0, 21, n_users)
    u["z"] = rng.integers(10_000, 99_999, n_users)
    (raw / "users.dat").write_text(
        "".join(f"{a}::{b}::{c}::{d}::{e}\n" for a, b, c, d, e in u.to_numpy())
    )
    g1 = rng.integers(0, len(GENRES), n_movies)
    g2 = rng.integers(0, len(GENRES), n_movies)
    year = rng.integers(1919, 2001, n_movies)
    (raw / "movies.dat").write_text(
        "".join(
            f"{i + 1}::Movie {i + 1} ({year[i]})::{GENRES[g1[i]]}|{GENRES[g2[i]]}\n"
            for i in range(n_movies)
        ),
        encoding="latin-1",
    )
    return {"rows": written, "asked_rows": rows, "users": n_users, "items": n_movies, "zipf": zipf}


# ---- the in-process steps (run as `data_scale.py --step NAME --folder DIR`) ------------------
def _datamodule(folder: str, seq_len: int, batch_size: int, opts: dict):
    from harness.data.datamodule import OneTransDataModule

    dm = OneTransDataModule(
        folder,
        seq_len=seq_len,
        batch_size=batch_size,
        eval_batch_size=4 * batch_size,
        storage=opts["storage"],
        mapped_dir=Path(folder).parent / "prepared",
        eval_sample_users=opts["eval_sample_users"],
        chronological=opts.get("order") == "chronological",
        shuffle_block=opts["shuffle_block"] if opts.get("order") == "blocks" else 0,
        shuffle_window=opts.get("shuffle_window", 16),
    )
    dm.setup()
    return dm


def memory_now() -> dict:
    """This process's resident memory split by kind (/proc/self/status, Linux): with mapped
    storage the peak RSS counts the mapped files' pages the batches touched, which are clean page
    cache the kernel drops under pressure (RssFile), not memory the process holds (RssAnon)."""
    out = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, val = line.partition(":")
            if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
                out[f"{key}_mb"] = round(int(val.split()[0]) / 1024, 1)
    except OSError:
        pass
    return out


def prepare(folder: str, seq_len: int, batch_size: int, opts: dict) -> dict:
    t = time.perf_counter()
    _datamodule(folder, seq_len, batch_size, opts)
    return {"setup_s": round(time.perf_counter() - t, 2), "memory_at_end": memory_now()}


def train_pass(folder: str, seq_len: int, batch_size: int, opts: dict) -> dict:
    t = time.perf_counter()
    dm = _datamodule(folder, seq_len, batch_size, opts)
    setup_s, t = time.perf_counter() - t, time.perf_counter()
    n = batches = 0
    loader = dm.train_dataloader()
    limit = opts.get("train_max_s") or float("inf")
    for b in loader:
        n += int(b["click"].shape[0])
        batches += 1
        if time.perf_counter() - t >= limit:
            break  # --train-max-s: a timed part of the epoch, reported as such
    took = time.perf_counter() - t
    out = {
        "impressions": n,
        "batches": batches,
        "of_batches": len(loader),
        "complete": batches == len(loader),
        "setup_s": round(setup_s, 2),
        "pass_s": round(took, 2),
        "impressions_per_s": round(n / max(took, 1e-9)),
        "memory_at_end": memory_now(),
    }
    if not out["complete"]:  # labelled: a linear extrapolation of the part, not a measurement
        out["epoch_s_extrapolated"] = round(took * len(loader) / max(batches, 1), 1)
    return out


def eval_pass(folder: str, seq_len: int, batch_size: int, opts: dict) -> dict:
    import torch

    from harness.metrics import split_metrics
    from model.registry import build_model

    torch.set_num_threads(1)  # a shared machine; the figure is per core
    t = time.perf_counter()
    dm = _datamodule(folder, seq_len, batch_size, opts)
    out: dict = {"setup_s": round(time.perf_counter() - t, 2)}
    t = time.perf_counter()
    torch.manual_seed(0)
    model = build_model("onetrans", dm.feature_spec, "onetrans-tiny").eval()
    with torch.no_grad():
        for split, loader in (("val", dm.val_dataloader()), ("test", dm.test_dataloader())):
            cols: dict[str, list] = {k: [] for k in ("ctr_logit", "cvr_logit", "click")}
            cols |= {"conversion": [], "user_id": []}
            for b in loader:
                pred = model(b)
                cols["ctr_logit"].append(pred["ctr"].float().numpy())
                cols["cvr_logit"].append(pred["cvr"].float().numpy())
                for k in ("click", "conversion", "user_id"):
                    cols[k].append(b[k].numpy())
            p = {k: np.concatenate(v) for k, v in cols.items()}
            out[split] = {"impressions": int(len(p["click"]))} | dm.eval_sample.get(split, {})
            out[split] |= {k: round(v, 4) for k, v in split_metrics(p).items() if "auc" in k}
    took = time.perf_counter() - t
    n = out["val"]["impressions"] + out["test"]["impressions"]
    return out | {
        "pass_s": round(took, 2),
        "impressions_per_s": round(n / max(took, 1e-9)),
        "memory_at_end": memory_now(),
    }


# ---- the driver ------------------------------------------------------------------------------
def run_step(cmd: list[str], log: Path) -> dict:
    """Run one step in a child process; its wall time and peak RSS (ru_maxrss of that child)."""
    t = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    rc = os.waitstatus_to_exitcode(status)
    if rc != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {rc}); its output: {log}")
    return {"wall_s": round(wall, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}


def convert_opts(engine: str, memory_limit: str | None) -> list[str]:
    """The converter options of the convert step: the engine, and DuckDB's memory limit if given."""
    if engine == "pandas":
        return []
    opts = ["--opt", f"engine={engine}"]
    return opts + (["--opt", f"memory_limit={memory_limit}"] if memory_limit else [])


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def bench(
    rows: int,
    work: Path,
    *,
    seed: int,
    seq_len: int,
    batch_size: int,
    zipf: float,
    engine: str = "pandas",
    memory_limit: str | None = None,
    run: tuple[str, ...] = STEPS,
    storage: str = "memory",
    eval_sample_users: float = 0.0,
    train_max_s: float = 0.0,
    shape: str = "taobao",
    order: str = "uniform",
    shuffle_block: int = 4096,
    shuffle_window: int = 16,
) -> dict:
    raw, folder = work / "raw", work / shape
    work.mkdir(parents=True, exist_ok=True)  # --work may name a new folder: the step logs go there
    py, me = sys.executable, str(Path(__file__).resolve())
    # the log is generated in a child too: Linux carries a process's peak RSS across exec into the
    # child it forks (vfork), so steps started by a parent that had held the generated log would
    # report at least that parent's peak, not their own
    gen = [py, me, "--step", "generate", "--raw", str(raw), "--rows", str(rows)]
    gen += ["--seed", str(seed), "--zipf", str(zipf), "--shape", shape]
    generated = run_step(gen, work / "generate.log")
    drawn = json.loads((work / "generate.log").read_text().strip().splitlines()[-1])
    drawn["generate_s"] = generated["wall_s"]
    inproc = ["--folder", str(folder), "--seq-len", str(seq_len), "--batch-size", str(batch_size)]
    inproc += ["--storage", storage, "--eval-sample-users", str(eval_sample_users)]
    inproc += ["--train-max-s", str(train_max_s), "--order", order]
    inproc += ["--shuffle-block", str(shuffle_block), "--shuffle-window", str(shuffle_window)]
    cmds = {
        "convert": [py, "-m", "harness.data", "convert", shape, str(raw), "--out", str(folder)]
        + convert_opts(engine, memory_limit),
        "validate": [py, "-m", "harness.data", "validate", str(folder)],
        "stats": [py, "-m", "harness.data", "stats", str(folder), "--json"],
        "prepare": [py, me, "--step", "prepare", *inproc],
        "train_pass": [py, me, "--step", "train_pass", *inproc],
        "eval_pass": [py, me, "--step", "eval_pass", *inproc],
    }
    steps = {}
    for name in run:
        load_before = _load()
        steps[name] = run_step(cmds[name], work / f"{name}.log") | {"load_1m_before": load_before}
        if name in ("prepare", "train_pass", "eval_pass"):
            steps[name]["result"] = json.loads(
                (work / f"{name}.log").read_text().strip().splitlines()[-1]
            )
    from harness.data.contract import Manifest

    stats = Manifest.load(folder).stats
    return {
        "benchmark": "data_scale",
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "log": drawn,
        "dataset": {k: stats.get(k) for k in ("users", "items", "events", "impressions")},
        "settings": {
            "seq_len": seq_len,
            "batch_size": batch_size,
            "neg_ratio": default_neg_ratio(shape),
            "engine": engine,
            "memory_limit": memory_limit if engine == "duckdb" else None,
            "convert_opts": convert_opts(engine, memory_limit),
            "storage": storage,
            "eval_sample_users": eval_sample_users,
            "train_max_s": train_max_s,
            "order": order,
        }
        | (
            {"shuffle_block": shuffle_block, "shuffle_window": shuffle_window}
            if order == "blocks"
            else {}
        ),
        "steps": steps,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rows", type=int, default=1_000_000, help="rows of the generated log")
    p.add_argument("--out", type=Path, help="JSON (default benchmarks/results/data_scale_<N>.json)")
    p.add_argument("--work", type=Path, help="where the log and dataset go (default: a temp dir)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--zipf", type=float, default=1.0, help="item popularity exponent")
    p.add_argument(
        "--shape",
        choices=SHAPES,
        default="taobao",
        help="the generated log's format and ratios, converted by the converter of that name",
    )
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument(
        "--engine",
        choices=["pandas", "duckdb"],
        default="pandas",
        help="the converter's engine (docs/converters.md, 'Large logs')",
    )
    p.add_argument(
        "--memory-limit", help="engine duckdb: its memory_limit (default the converter's)"
    )
    p.add_argument(
        "--storage",
        choices=["memory", "mapped"],
        default="memory",
        help="the data module's data.storage (mapped adds the prepare step)",
    )
    p.add_argument(
        "--eval-sample-users",
        type=float,
        default=0.0,
        help="eval_pass: score this fraction of users (eval.sample_users; 0: all)",
    )
    p.add_argument(
        "--train-max-s",
        type=float,
        default=0.0,
        help="train_pass: stop after this many seconds of batches and report the part with an "
        "extrapolated epoch time (0: the whole epoch)",
    )
    p.add_argument(
        "--order",
        choices=["uniform", "blocks", "chronological"],
        default="uniform",
        help="train_pass: the epoch's request order (data.shuffle, data.shuffle_block)",
    )
    p.add_argument(
        "--shuffle-block", type=int, default=4096, help="--order blocks: requests per block"
    )
    p.add_argument(
        "--shuffle-window", type=int, default=16, help="--order blocks: blocks shuffled together"
    )
    p.add_argument(
        "--steps",
        default=",".join(STEPS),
        help=f"comma-separated steps to run, in this order (default all: {','.join(STEPS)})",
    )
    p.add_argument(
        "--step", choices=["generate", "prepare", "train_pass", "eval_pass"], help=argparse.SUPPRESS
    )
    p.add_argument("--folder", help=argparse.SUPPRESS)
    p.add_argument("--raw", type=Path, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.step == "generate":  # a child: the raw log, its shape as the last line of stdout
        print(json.dumps(generate_log(a.raw, a.rows, seed=a.seed, zipf=a.zipf, shape=a.shape)))
        return 0
    if a.step:  # a child: one in-process step, its figures as the last line of stdout
        fn = {"prepare": prepare, "train_pass": train_pass, "eval_pass": eval_pass}[a.step]
        opts = {"storage": a.storage, "eval_sample_users": a.eval_sample_users}
        opts |= {"train_max_s": a.train_max_s, "order": a.order}
        opts |= {"shuffle_block": a.shuffle_block, "shuffle_window": a.shuffle_window}
        print(json.dumps(fn(a.folder, a.seq_len, a.batch_size, opts)))
        return 0
    steps = tuple(x for x in a.steps.split(",") if x)
    if a.storage == "memory":
        steps = tuple(x for x in steps if x != "prepare")  # the in-memory set-up has no build
    elif "prepare" not in steps and ("train_pass" in steps or "eval_pass" in steps):
        steps = (*steps, "prepare")  # built in its own step, so the passes open it
    if not steps or set(steps) - set(STEPS) or steps[0] != "convert":
        p.error(f"--steps {a.steps!r}: convert first, then any of {','.join(STEPS[1:])}")
    if a.rows < 1000:
        p.error(f"--rows {a.rows}: give at least 1000 (fewer leave splits without requests)")
    label = f"{a.rows // 1_000_000}m" if a.rows % 1_000_000 == 0 else str(a.rows)
    label += "" if a.shape == "taobao" else f"_{a.shape}"
    label += "" if a.engine == "pandas" else f"_{a.engine}"
    label += "" if a.storage == "memory" else f"_{a.storage}"
    label += "" if a.order == "uniform" else f"_{a.order}"
    out = a.out or REPO / "benchmarks" / "results" / f"data_scale_{label}.json"
    with tempfile.TemporaryDirectory(prefix="data_scale_") as tmp:
        work = a.work or Path(tmp)
        res = bench(
            a.rows,
            work,
            seed=a.seed,
            seq_len=a.seq_len,
            batch_size=a.batch_size,
            zipf=a.zipf,
            engine=a.engine,
            memory_limit=a.memory_limit,
            run=tuple(s for s in STEPS if s in steps),
            storage=a.storage,
            eval_sample_users=a.eval_sample_users,
            train_max_s=a.train_max_s,
            shape=a.shape,
            order=a.order,
            shuffle_block=a.shuffle_block,
            shuffle_window=a.shuffle_window,
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    for name, s in res["steps"].items():
        print(f"{name:11s} {s['wall_s']:8.1f} s  {s['peak_rss_mb']:8.0f} MB peak RSS")
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
