"""Two-level (cluster) bootstrap as count weights.

Seeds of one configuration are not independent x-points (anchors.md §3.3), so a replicate first
resamples configurations with replacement, then resamples seeds within each drawn configuration.
Every replicate is expressed as a vector of counts over the original points, so a weighted fit on
the original points equals a fit on the resampled data set, and linear fits vectorise over replicates.
"""

from __future__ import annotations

import numpy as np


def cluster_weights(
    config_of_point: np.ndarray,
    n_boot: int,
    seed: int,
    *,
    min_configs: int = 2,
    max_redraws: int = 50,
) -> np.ndarray:
    """(n_boot, n_points) resampling counts.

    config_of_point: config label of every point (any hashable values). Replicates that draw fewer
    than `min_configs` distinct configurations cannot identify the fit and are redrawn (up to
    max_redraws rounds; ValueError when the data cannot meet the minimum at all).
    """
    labels, config_idx = np.unique(np.asarray(config_of_point), return_inverse=True)
    k = len(labels)
    if k < min_configs:
        raise ValueError(
            f"cluster bootstrap needs at least {min_configs} distinct configurations, got {k}"
        )
    rng = np.random.default_rng(seed)
    members = [np.flatnonzero(config_idx == c) for c in range(k)]
    weights = np.zeros((n_boot, len(config_idx)))
    todo = np.arange(n_boot)
    for _ in range(max_redraws):
        # level 1: how often each configuration is drawn in each replicate
        config_counts = rng.multinomial(k, np.full(k, 1.0 / k), size=len(todo))
        ok = (config_counts > 0).sum(axis=1) >= min_configs
        for c, idx in enumerate(members):
            # level 2: every draw of config c resamples its n_c seeds; the total over draws is
            # Multinomial(draws * n_c, uniform), which lets us draw all replicates at once
            n_c = len(idx)
            weights[np.ix_(todo, idx)] = rng.multinomial(
                config_counts[:, c] * n_c, np.full(n_c, 1.0 / n_c)
            )
        todo = todo[~ok]
        if len(todo) == 0:
            return weights
    raise ValueError(
        f"could not draw replicates with >= {min_configs} distinct configurations "
        f"from {k} configurations; add configurations"
    )


def percentile_interval(
    samples: np.ndarray, level: float = 0.95, axis: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval over replicates (NaN replicates, i.e. failed refits, ignored)."""
    tail = (1.0 - level) / 2.0 * 100.0
    return (
        np.nanpercentile(samples, tail, axis=axis),
        np.nanpercentile(samples, 100.0 - tail, axis=axis),
    )
