"""The baselines of the paper's Table 2 (spec §4), each an encode-then-interaction model that takes
the same batch as OneTrans and answers the same RankingModel calls. See docs/baselines.md."""

from __future__ import annotations

# registry name -> dense params (M) and training TFLOPs @ batch 2048 reported in Table 2
TABLE2: dict[str, tuple[float, float]] = {
    "dcnv2_din": (10.0, 0.06),
    "wukong_din": (28.0, 0.54),
    "hiformer_din": (108.0, 1.35),
    "rankmixer_din": (107.0, 1.31),
    "rankmixer_stackdin": (108.0, 1.43),
    "rankmixer_longer": (109.0, 1.87),
    "rankmixer_transformer": (109.0, 2.51),
}
BASELINES: tuple[str, ...] = tuple(TABLE2)
