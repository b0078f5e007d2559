"""The data contract: one dataset = one folder (documented in docs/data-contract.md).

    manifest.yaml          this module's `Manifest`
    events.parquet         user_id, ts, behavior, item_id, <side fields>; sorted by (user_id, ts)
    impressions.parquet    request_id, user_id, ts, item_id, <impression features>, click,
                           conversion, split [, p_click, p_conversion]; sorted by (ts, request_id)
    users.parquet          optional: user_id, <user features>
    items.parquet          optional: item_id, <item features> (incl. the side fields)

Each table may instead be a folder of part files, `events/part-*.parquet` (as Spark, Hive or DuckDB
write a table), read as one table in name order: `table_source` and `read_table` below are the one
place that resolves "file or folder of parts"; every reader goes through them.

Conventions: ts is int64 seconds; categorical ids are int64 in [0, vocab_size) with 0 reserved for
padding / missing; behaviour ids are 1..n (0 never appears in events); labels are 0/1 integers.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import yaml

CONTRACT_VERSION = 1
MANIFEST = "manifest.yaml"
EVENTS = "events.parquet"
IMPRESSIONS = "impressions.parquet"
USERS = "users.parquet"
ITEMS = "items.parquet"
SPLITS = ("train", "val", "test")

FeatureKind = Literal["categorical", "numeric"]
FeatureGroup = Literal["user", "item", "context"]
FeatureTable = Literal["impressions", "users", "items"]


class ContractError(ValueError):
    """A dataset that breaks the contract; the message names the file, the field and the fix."""


@dataclass(frozen=True, kw_only=True)
class Feature:
    name: str
    kind: FeatureKind
    group: FeatureGroup
    table: FeatureTable  # where the column lives (joined by user_id / item_id)
    vocab_size: int | None = None  # categorical only: ids in [0, vocab_size)
    description: str = ""


@dataclass(frozen=True, kw_only=True)
class Behavior:
    name: str
    id: int  # 1..n, as stored in events.behavior


@dataclass(frozen=True, kw_only=True)
class SplitRule:
    rule: Literal["chronological"] = "chronological"
    val_start_ts: int  # impressions with ts >= val_start_ts are val (or test)
    test_start_ts: int  # impressions with ts >= test_start_ts are test


@dataclass(frozen=True, kw_only=True)
class Manifest:
    name: str
    source: str
    item_vocab: int  # item ids (events.item_id, impressions.item_id) in [0, item_vocab)
    side_fields: tuple[str, ...]  # item side fields present in events.parquet AND as item features
    features: tuple[Feature, ...]  # every non-sequential feature (side fields included, group=item)
    behaviors: tuple[Behavior, ...]
    intent_order: tuple[str, ...]  # behaviour names, highest intent first
    split: SplitRule
    labels: dict[str, Any] = field(
        default_factory=lambda: {
            "click": "click",
            "conversion": "conversion",
            "conversion_requires_click": True,
        }
    )
    has_oracle: bool = False  # impressions carry p_click / p_conversion
    stats: dict[str, Any] = field(default_factory=dict)
    contract_version: int = CONTRACT_VERSION
    notes: str = ""

    # ---- lookups -------------------------------------------------------------------------
    def feature(self, name: str) -> Feature:
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(name)

    def behavior_names(self) -> tuple[str, ...]:
        return tuple(b.name for b in sorted(self.behaviors, key=lambda b: b.id))

    # ---- YAML in / out -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["side_fields"] = list(self.side_fields)
        d["intent_order"] = list(self.intent_order)
        d["features"] = [
            {k: v for k, v in asdict(f).items() if v not in (None, "")} for f in self.features
        ]
        d["behaviors"] = [asdict(b) for b in self.behaviors]
        return d

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / MANIFEST
        tmp = path.with_suffix(".yaml.tmp")
        tmp.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))
        tmp.replace(path)
        return path

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = MANIFEST) -> Manifest:
        def need(obj: dict, key: str, ctx: str) -> Any:
            if key not in obj:
                raise ContractError(
                    f"{where}: missing field '{ctx}{key}'. Add it (see docs/data-contract.md)."
                )
            return obj[key]

        if not isinstance(d, dict):
            raise ContractError(
                f"{where}: expected a mapping at the top level, got {type(d).__name__}."
            )
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ContractError(
                f"{where}: unknown field(s) {unknown}; valid fields are {sorted(known)}."
            )
        feats = []
        for i, f in enumerate(need(d, "features", "")):
            ctx = f"features[{i}]."
            kind, group, table = need(f, "kind", ctx), need(f, "group", ctx), need(f, "table", ctx)
            if kind not in ("categorical", "numeric"):
                raise ContractError(
                    f"{where}: {ctx}kind = {kind!r}; use 'categorical' or 'numeric'."
                )
            if group not in ("user", "item", "context"):
                raise ContractError(
                    f"{where}: {ctx}group = {group!r}; use 'user', 'item' or 'context'."
                )
            if table not in ("impressions", "users", "items"):
                raise ContractError(
                    f"{where}: {ctx}table = {table!r}; use 'impressions', 'users' or 'items'."
                )
            vocab = f.get("vocab_size")
            if kind == "categorical" and (not isinstance(vocab, int) or vocab < 2):
                raise ContractError(
                    f"{where}: {ctx}vocab_size must be an integer >= 2 for categorical "
                    f"feature {f.get('name')!r}, got {vocab!r}."
                )
            feats.append(
                Feature(
                    name=need(f, "name", ctx),
                    kind=kind,
                    group=group,
                    table=table,
                    vocab_size=vocab,
                    description=f.get("description", ""),
                )
            )
        behaviors = tuple(
            Behavior(
                name=need(b, "name", f"behaviors[{i}]."), id=int(need(b, "id", f"behaviors[{i}]."))
            )
            for i, b in enumerate(need(d, "behaviors", ""))
        )
        ids = sorted(b.id for b in behaviors)
        if ids != list(range(1, len(ids) + 1)):
            raise ContractError(f"{where}: behaviors ids must be 1..n without gaps, got {ids}.")
        names = [b.name for b in behaviors]
        intent = tuple(d.get("intent_order") or reversed(names))
        if sorted(intent) != sorted(names):
            raise ContractError(
                f"{where}: intent_order {list(intent)} must list each behaviour name {names} once."
            )
        split = need(d, "split", "")
        split_rule = SplitRule(
            rule=split.get("rule", "chronological"),
            val_start_ts=int(need(split, "val_start_ts", "split.")),
            test_start_ts=int(need(split, "test_start_ts", "split.")),
        )
        if split_rule.rule != "chronological":
            raise ContractError(
                f"{where}: split.rule = {split_rule.rule!r}; only 'chronological' is supported."
            )
        if split_rule.val_start_ts > split_rule.test_start_ts:
            raise ContractError(f"{where}: split.val_start_ts must be <= split.test_start_ts.")
        side = tuple(d.get("side_fields", ()))
        fnames = {f.name for f in feats}
        for s in side:
            if s not in fnames:
                raise ContractError(
                    f"{where}: side field {s!r} must also be declared in 'features' "
                    f"(group: item, kind: categorical) so candidates carry it."
                )
        return cls(
            name=str(need(d, "name", "")),
            source=str(d.get("source", "")),
            item_vocab=int(need(d, "item_vocab", "")),
            side_fields=side,
            features=tuple(feats),
            behaviors=behaviors,
            intent_order=intent,
            split=split_rule,
            labels=d.get("labels") or cls.__dataclass_fields__["labels"].default_factory(),
            has_oracle=bool(d.get("has_oracle", False)),
            stats=d.get("stats") or {},
            contract_version=int(d.get("contract_version", CONTRACT_VERSION)),
            notes=d.get("notes", ""),
        )

    @classmethod
    def load(cls, folder: str | Path) -> Manifest:
        path = Path(folder) / MANIFEST
        if not Path(folder).is_dir():
            raise ContractError(
                f"{folder}: not a dataset folder. Create one with "
                f"`python -m harness.data synth --preset ci --out {folder}`, or convert a public "
                f"log: `python -m harness.data convert {{movielens,taobao,tmall}} RAW_DIR --out "
                f"{folder}` (docs/converters.md)."
            )
        if not path.exists():
            raise ContractError(
                f"{path}: missing. A dataset folder needs manifest.yaml (docs/data-contract.md)."
            )
        try:
            d = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise ContractError(f"{path}: not valid YAML: {e}") from e
        return cls.from_dict(d, where=str(path))

    # ---- model-facing description --------------------------------------------------------
    def feature_spec(self, seq_len: int, n_gap_buckets: int = 32):
        """The model.features.FeatureSpec for this dataset: side fields feed seq_side/cand_side,
        the remaining categoricals (item_id excluded: it is cand_item) feed ns_cat, numerics ns_num."""
        # imported here: model.features imports torch, which the schema's other readers (the
        # validator, converters, analysis) never need
        from model.features import FeatureSpec

        cats = [
            f
            for f in self.features
            if f.kind == "categorical" and f.name not in self.side_fields and f.name != "item_id"
        ]
        nums = [f for f in self.features if f.kind == "numeric"]
        return FeatureSpec(
            item_vocab=self.item_vocab,
            side_names=self.side_fields,
            side_vocab=tuple(self.feature(s).vocab_size for s in self.side_fields),
            cat_names=tuple(f.name for f in cats),
            cat_vocab=tuple(f.vocab_size for f in cats),
            cat_groups=tuple(f.group for f in cats),
            num_names=tuple(f.name for f in nums),
            num_groups=tuple(f.group for f in nums),
            behavior_names=self.behavior_names(),
            intent_order=self.intent_order,
            n_gap_buckets=n_gap_buckets,
            seq_len=seq_len,
        )


def new_dataset_folder(out: str | Path) -> Path:
    """Create `out` for a generator to write a dataset into; refuse one that already holds a dataset
    (nothing there is overwritten)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if any((out / f).exists() for f in (EVENTS, IMPRESSIONS, MANIFEST)):
        raise FileExistsError(f"{out}: already holds a dataset; choose an empty --out folder.")
    return out


# ---------------------------------------------------------------------------------------------
# a table = one parquet file or a folder of part files
# ---------------------------------------------------------------------------------------------
PARTS_FIX = (
    "write the table as one file DIR/{single}, or as part files DIR/{parts}/part-*.parquet with "
    "the same columns and types (docs/data-contract.md, 'Part files')"
)


def table_source(folder: str | Path, name: str) -> Path | None:
    """Where table `name` (EVENTS, IMPRESSIONS, USERS, ITEMS) of a contract folder lives: the file
    DIR/events.parquet, a folder of parts DIR/events/ (Spark, Hive, DuckDB), or DIR/events.parquet/
    (a folder of parts under the file's name, accepted since contract version 1). None when absent.
    Both a file and a parts folder is ambiguous (which one is the table?) and refused."""
    folder = Path(folder)
    single, parts = folder / name, folder / name.removesuffix(".parquet")
    if single.exists() and parts.is_dir():
        raise ContractError(
            f"{folder}: both {single.name} and {parts.name}/ exist, so the table is ambiguous; "
            f"keep one of them (move the other out of the folder)."
        )
    if single.exists():
        return single
    return parts if parts.is_dir() else None


def _natural_key(path: Path) -> list[Any]:
    # DuckDB names its parts data_0 .. data_10: plain string order would put data_10 before data_2
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


def table_files(path: Path) -> list[Path]:
    """The parquet files of a table in read order: [path] for a file, else the folder's *.parquet
    parts in natural name order. Names starting with '_' or '.' (Spark's _SUCCESS, .crc checksum
    files) are the engines' bookkeeping, not data, and are skipped as pyarrow.dataset does."""
    if not path.is_dir():
        return [path]
    files = sorted(
        (p for p in path.glob("*.parquet") if not p.name.startswith(("_", "."))), key=_natural_key
    )
    if not files:
        single = path.name if path.name.endswith(".parquet") else f"{path.name}.parquet"
        raise ContractError(
            f"{path}/: a folder of parts without any *.parquet file (an export that wrote nothing, "
            f"or failed?). Fix: "
            + PARTS_FIX.format(single=single, parts=single.removesuffix(".parquet"))
            + ", or remove the empty folder."
        )
    return files


def table_schema(path: Path) -> pa.Schema:
    """The table's schema, after checking that every part has the same column names and types
    (footers only, no data read): a part written by another query would otherwise fail deep in a
    reader, or silently change a dtype."""
    files = table_files(path)
    first = pq.read_schema(files[0])
    for f in files[1:]:
        other = pq.read_schema(f)
        if other.names == first.names and other.types == first.types:
            continue
        a = {n: str(t) for n, t in zip(first.names, first.types)}
        b = {n: str(t) for n, t in zip(other.names, other.types)}
        diff = [
            f"'{c}' is {a.get(c, 'absent')} in {files[0].name} but {b.get(c, 'absent')} here"
            for c in dict.fromkeys([*a, *b])
            if a.get(c) != b.get(c)
        ] or [f"columns in another order: {other.names} vs {first.names}"]
        single = path.name if path.name.endswith(".parquet") else f"{path.name}.parquet"
        raise ContractError(
            f"{f}: this part's schema differs from the first part's ({'; '.join(diff[:3])}). Fix: "
            + PARTS_FIX.format(single=single, parts=single.removesuffix(".parquet"))
            + "; e.g. CAST the column in the query that writes the parts."
        )
    return first


def read_table(path: Path, columns: list[str] | None = None) -> pa.Table:
    """The whole table (or some columns) from a file or a folder of parts, parts concatenated in
    table_files order (the row order the contract's sort rules apply to)."""
    table_schema(path)
    files = table_files(path)
    if len(files) == 1:
        return pq.read_table(files[0], columns=columns)
    return pads.dataset([str(f) for f in files], format="parquet").to_table(columns=columns)


def n_rows(path: Path) -> int:
    """Rows of a table from the parquet footers (no data read)."""
    return int(sum(pq.read_metadata(f).num_rows for f in table_files(path)))
