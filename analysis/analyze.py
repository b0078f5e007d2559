"""From a Collection to every fit the report shows.

A *series* is the finished runs of one (sweep, model, axis) whose swept value is numeric and takes
>= 2 distinct values (fits need >= 3: with 2 the series is shown and a note says why nothing is
fitted). Per series and metric we fit on the series' x (the sweep's `analysis.x` hint, else the swept
axis; 'params' = dense parameters) and on training FLOPs: the log-linear form always, the saturating
power law on loss-like metrics (logloss) with >= 5 x-values, and run the leave-largest-out check.
Configurations are identified by the swept value (seeds share it).

Flagged runs (analysis.quality: diverged or non-finite training loss, NaN metric, seed outlier) are
kept out of the fits by default; every fit they would change is also computed with them
(`with_flagged`), or without them when include_flagged=True (`without_flagged`).
"""

from __future__ import annotations

import dataclasses
import zlib
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from harness.power import line_noise, mde_per_doubling, seed_noise

from . import quality
from .collect import CollectError, Collection, metric_split
from .fit import (
    Fit,
    FitSettings,
    fit,
    flip_holdout,
    flipped,
    leave_largest_out,
    pooled_seed_sd,
    powerlaw_problem,
    saturation_point,
)
from .hints import Hints

METRICS = ("ctr_auc", "ctr_uauc", "ctr_logloss", "cvr_auc", "cvr_uauc", "cvr_logloss")
LOSS_LIKE = ("ctr_logloss", "cvr_logloss")  # the saturating form is fitted on these only
X_LABELS = {
    "train_flops": "training FLOPs",
    "params": "dense params",
    "seq_len": "sequence length",
    "n_layers": "depth (layers)",
    "d_model": "width (d_model)",
}


def x_label(x_name: str) -> str:
    return X_LABELS.get(x_name, x_name)


@dataclass(frozen=True, kw_only=True)
class SeriesFit:
    sweep: str
    model: str
    axis: str
    metric: str
    x_name: str  # the swept axis, "params" or "train_flops"
    fits: dict[str, Fit]  # form -> fit (on the runs used)
    skipped: dict[str, str]  # form -> why it was not fitted
    holdout: list[dict]  # leave-largest-out rows
    seed_sd: float  # pooled within-config sd of the runs used (NaN: one seed per config)
    oracle: float | None  # Bayes value on synthetic data (result.json "oracle")
    n_runs: int = 0  # runs fitted
    n_seeds: tuple[int, int] = (0, 0)
    excluded: tuple[
        str, ...
    ] = ()  # flagged run ids left out (or, with include_flagged, the flagged ones used)
    include_flagged: bool = False
    alt_fits: dict[str, Fit] = field(
        default_factory=dict
    )  # the same forms with the flagged runs switched
    failed: dict[str, str] = field(
        default_factory=dict
    )  # form -> why the fit must not be read as a law
    mde: dict = field(default_factory=dict)  # minimum detectable gain per doubling
    primary: bool = False  # the series' headline x (hint or swept axis)

    @property
    def key(self) -> str:
        return f"{self.sweep}/{self.model}/{self.axis}/{self.metric}@{self.x_name}"

    def usable(self) -> dict[str, Fit]:
        return {k: v for k, v in self.fits.items() if k not in self.failed}

    def best_form(self) -> str:
        """The usable form with the lower leave-one-config-out CV RMSE (log-linear when CV is not available)."""
        fits = self.usable()
        cv = {f: v.gof["cv_rmse"] for f, v in fits.items() if np.isfinite(v.gof["cv_rmse"])}
        return min(cv, key=cv.get) if len(cv) == len(fits) and len(cv) > 1 else "loglinear"

    def slope(self, fits: dict[str, Fit] | None = None) -> tuple[float, float, float] | None:
        f = (self.fits if fits is None else fits).get("loglinear")
        if f is None:
            return None
        return (f.params["b_per_doubling"], *f.ci["b_per_doubling"])


@dataclass(frozen=True, kw_only=True)
class Analysis:
    collection: Collection
    split: str
    settings: FitSettings
    series: list[SeriesFit] = field(default_factory=list)
    flags: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=quality.FLAG_COLUMNS))
    include_flagged: bool = False
    hints: dict[str, Hints] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # series shown without fits, and why
    metrics: tuple[str, ...] = METRICS
    # sweep label -> seq_len -> count-feature floor record (analysis.floor.find_floors)
    floors: dict[str, dict[int, dict]] = field(default_factory=dict)

    def floor_table(self) -> pd.DataFrame:
        """The model's mean beside the count-feature floor per configuration (analysis.floor)."""
        from .floor import floor_table

        return floor_table(
            self.collection.done, self.split, self.floors, self.flags, self.include_flagged
        )

    def points(self, sweep: str, model: str, axis: str) -> pd.DataFrame:
        d = self.collection.done
        return d[(d["sweep"] == sweep) & (d["model"] == model) & (d["axis"] == axis)]

    def used_points(self, s: SeriesFit) -> pd.DataFrame:
        """The runs a fit used (flagged ones left out unless include_flagged)."""
        pts = self.points(s.sweep, s.model, s.axis)
        if self.include_flagged:
            return pts
        return pts[~pts["run_id"].isin(quality.excluded_for(self.flags, s.metric))]

    def headline_metric(self, sweep: str | None = None) -> str:
        h = self.hints.get(sweep) if sweep else None
        fitted = [s.metric for s in self.series if sweep is None or s.sweep == sweep]
        if h and h.metrics:
            for m in h.metrics:
                if m in fitted:
                    return m
        return next(
            (m for m in ("ctr_uauc", "ctr_auc", "cvr_uauc") if m in fitted),
            fitted[0] if fitted else "ctr_uauc",
        )

    def fits_table(self) -> pd.DataFrame:
        rows = []
        for s in self.series:
            for form, f in s.fits.items():
                row = {
                    "sweep": s.sweep,
                    "model": s.model,
                    "axis": s.axis,
                    "x": s.x_name,
                    "metric": s.metric,
                    "form": form,
                    "n_configs": f.n_configs,
                    "seeds/config": "{}-{}".format(*f.seeds_per_config),
                    "n_runs": f.n_points,
                    "n_boot": f.n_boot,
                    "seed_sd": s.seed_sd,
                    "flagged_excluded" if not s.include_flagged else "flagged_included": len(
                        s.excluded
                    ),
                    "status": "failed: " + s.failed[form] if form in s.failed else "ok",
                }
                for p, v in f.params.items():
                    if p in ("x0", "A_at_x0", "a"):
                        continue
                    lo, hi = f.ci.get(p, (np.nan, np.nan))
                    row[p] = v
                    row[f"{p}_lo"], row[f"{p}_hi"] = lo, hi
                alt = s.alt_fits.get(form)
                if alt is not None and form == "loglinear":
                    tag = "with_flagged" if not s.include_flagged else "without_flagged"
                    row[f"b_per_doubling_{tag}"] = alt.params["b_per_doubling"]
                    row[f"b_per_doubling_{tag}_lo"], row[f"b_per_doubling_{tag}_hi"] = alt.ci[
                        "b_per_doubling"
                    ]
                if form == "loglinear":
                    row["mde_per_doubling"] = s.mde.get("mde", np.nan)
                    row["mde_sigma_source"] = s.mde.get("source", "")
                row.update(
                    {g: f.gof[g] for g in ("r2_means", "rmse_means", "aic", "bic", "cv_rmse")}
                )
                row["chosen"] = (
                    form == s.best_form() and len(s.usable()) > 1 and form not in s.failed
                )
                if form == "powerlaw":
                    row["fitted_on"] = f"1 - {s.metric}" if f.fitted_on == "1 - y" else s.metric
                    row["oracle"] = (
                        (1.0 - s.oracle if f.fitted_on == "1 - y" else s.oracle)
                        if s.oracle is not None
                        else None
                    )
                    row["x_saturation"] = (
                        saturation_point(f.params, s.seed_sd) if np.isfinite(s.seed_sd) else np.nan
                    )
                rows.append(row)
        return pd.DataFrame(rows, columns=None if rows else FITS_COLUMNS)

    def holdout_table(self) -> pd.DataFrame:
        rows = [
            {
                "sweep": s.sweep,
                "model": s.model,
                "axis": s.axis,
                "metric": s.metric,
                "x_name": s.x_name,
                **h,
            }
            for s in self.series
            for h in s.holdout
        ]
        return pd.DataFrame(rows, columns=None if rows else HOLDOUT_COLUMNS)


FITS_COLUMNS = [
    "sweep",
    "model",
    "axis",
    "x",
    "metric",
    "form",
    "n_configs",
    "seeds/config",
    "n_runs",
    "n_boot",
    "seed_sd",
    "status",
]
HOLDOUT_COLUMNS = [
    "sweep",
    "model",
    "axis",
    "metric",
    "x_name",
    "form",
    "x",
    "n_seeds",
    "observed",
    "predicted",
    "lo",
    "hi",
    "inside",
    "abs_rel_error",
    "fit_configs",
]


def series_keys(done: pd.DataFrame) -> list[tuple[str, str, str]]:
    keys = []
    for (sweep, model, axis), g in done.groupby(["sweep", "model", "axis"], dropna=True):
        col = f"axes.{axis}"
        if col in g and pd.to_numeric(g[col], errors="coerce").dropna().nunique() >= 2:
            keys.append((str(sweep), str(model), str(axis)))
    return keys


def _x_values(g: pd.DataFrame, axis: str, x_name: str) -> np.ndarray:
    if x_name == "train_flops":
        return pd.to_numeric(g["train_flops"], errors="coerce").to_numpy(float)
    if x_name == "params":
        col = "params.dense"
        return (
            pd.to_numeric(g[col], errors="coerce").to_numpy(float)
            if col in g
            else np.full(len(g), np.nan)
        )
    col = f"axes.{x_name}" if f"axes.{x_name}" in g else f"axes.{axis}"
    return pd.to_numeric(g[col], errors="coerce").to_numpy(float)


def series_mde(x, y, config, settings: FitSettings) -> dict:
    """Minimum detectable gain per doubling of x (harness.power) of the runs used by a fit."""
    sigma, dof, source = seed_noise(y, config)
    if dof < 1:
        sigma, dof, source = line_noise(x, y)
    mde = mde_per_doubling(x, sigma, dof)
    return {"mde": mde, "sigma": sigma, "dof": dof, "source": source}


def _fit_forms(forms, x, y, config, settings, oracle, flip: bool = False, metric: str = ""):
    """Fit each form; flip: the saturating law is fitted to 1 - y (a higher-is-better metric such as AUC,
    whose shortfall 1 - AUC decays to a floor), then expressed in y (analysis.fit.flipped)."""
    fits, skipped, failed = {}, {}, {}
    for form in forms:
        flip_this = flip and form == "powerlaw"
        try:
            f = fit(x, 1.0 - y if flip_this else y, config, form=form, settings=settings)
        except ValueError as err:
            skipped[form] = str(err)
            continue
        fits[form] = flipped(f) if flip_this else f
        if form == "powerlaw":
            floor = (1.0 - oracle if flip_this else oracle) if oracle is not None else None
            why = powerlaw_problem(f, floor, f"1 − {metric}" if flip_this else "")
            if why:
                failed[form] = why
    return fits, skipped, failed


def analyze(
    collection: Collection,
    *,
    settings: FitSettings = FitSettings(),
    metrics=None,
    split: str | None = None,
    hints: dict[str, Hints] | None = None,
    include_flagged: bool = False,
    floors: dict[str, dict[int, dict]] | None = None,
) -> Analysis:
    """Fit every series. metrics: default the sweep's hinted metrics, else METRICS; hints: per sweep name
    (analysis.hints; command-line overrides already applied)."""
    hints = hints or {}
    done = collection.done
    notes: list[str] = []
    try:
        split = (
            split or next((h.split for h in hints.values() if h.split), None) or metric_split(done)
        )
    except CollectError as err:  # nothing to fit: the report still lists what is there and why
        split = "test"
        notes.append(f"No fits: {err}.")
    all_metrics = tuple(
        dict.fromkeys(
            [*(metrics or METRICS), *[m for h in hints.values() for m in (h.metrics or ())]]
        )
    )
    flags = quality.flag_runs(done, split, [m for m in all_metrics if f"{split}.{m}" in done])
    out: list[SeriesFit] = []
    for sweep, model, axis in series_keys(done):
        h = hints.get(sweep) or Hints()
        g_all = done[(done["sweep"] == sweep) & (done["model"] == model) & (done["axis"] == axis)]
        primary_x = h.x if h.x and h.x not in ("variant", "model") else axis
        if primary_x != axis:
            xv = _x_values(g_all, axis, primary_x)
            if len(np.unique(xv[np.isfinite(xv)])) < 2:
                notes.append(
                    f"{sweep}/{model}: {x_label(primary_x)} (the x of its analysis hints) does not vary "
                    f"along {axis}; fitted on {axis} instead."
                )
                primary_x = axis
        x_names = list(dict.fromkeys([primary_x, "train_flops"]))
        fit_hint = h.fit or "default"
        series_metrics = metrics or h.metrics or METRICS
        n_x = pd.to_numeric(g_all[f"axes.{axis}"], errors="coerce").nunique()
        if n_x < settings.min_loglinear_x:
            notes.append(
                f"{sweep}/{model} along {axis}: {n_x} distinct values; no fit (a line through "
                f"{n_x} points tests nothing). Add configurations."
            )
        if fit_hint == "none":
            notes.append(
                f"{sweep}/{model}: no fits, as its sweep file asks (analysis.fit: none; "
                "override with --fit)."
            )
        for metric in series_metrics:
            col = f"{split}.{metric}"
            if col not in g_all or g_all[col].notna().sum() == 0:
                continue
            oracle_col = f"oracle.{split}.{metric}"
            oracle = (
                float(g_all[oracle_col].mean())
                if oracle_col in g_all and g_all[oracle_col].notna().any()
                else None
            )
            flagged = quality.excluded_for(flags, metric) & set(g_all["run_id"])
            use = g_all if include_flagged else g_all[~g_all["run_id"].isin(flagged)]
            other = g_all[~g_all["run_id"].isin(flagged)] if include_flagged else g_all
            for x_name in x_names:
                fits, skipped, failed, holdout, alt = {}, {}, {}, [], {}
                d = use[np.isfinite(use[col].to_numpy(float))]
                x, y = _x_values(d, axis, x_name), d[col].to_numpy(float)
                config = _x_values(d, axis, axis)
                ok = np.isfinite(x) & (x > 0)
                if not ok.all():
                    skipped["all"] = f"{int((~ok).sum())} runs have no positive {x_label(x_name)}"
                    x, y, config = x[ok], y[ok], config[ok]
                if len(np.unique(x)) < 2:
                    continue
                key_seed = zlib.crc32(f"{sweep}/{model}/{axis}/{metric}@{x_name}".encode())
                s_settings = dataclasses.replace(
                    settings,
                    seed=int(
                        np.random.SeedSequence([settings.seed, key_seed]).generate_state(1)[0]
                    ),
                )
                if fit_hint == "none":
                    forms = []
                elif fit_hint == "loglinear":
                    forms = ["loglinear"]
                else:
                    # the saturating law: loss-like metrics by default; with an explicit `fit: powerlaw`
                    # hint also higher-is-better metrics in (0, 1), fitted to their shortfall 1 - y
                    sat = x_name != "train_flops" and (
                        metric in LOSS_LIKE
                        or (fit_hint == "powerlaw" and np.all((y > 0) & (y < 1)))
                    )
                    forms = ["loglinear"] + (["powerlaw"] if sat else [])
                flip = metric not in LOSS_LIKE
                fits, sk, failed = _fit_forms(forms, x, y, config, s_settings, oracle, flip, metric)
                skipped.update(sk)
                for form in fits:
                    need = (
                        settings.min_loglinear_x if form == "loglinear" else settings.min_powerlaw_x
                    ) + 1
                    if len(np.unique(x)) >= need and form not in failed:
                        if form == "powerlaw" and flip:
                            holdout += flip_holdout(
                                leave_largest_out(
                                    x, 1.0 - y, config, form=form, settings=s_settings
                                )
                            )
                        else:
                            holdout += leave_largest_out(
                                x, y, config, form=form, settings=s_settings
                            )
                # the same fits with the flagged runs switched (included by default -> excluded, and back)
                switched = other[np.isfinite(other[col].to_numpy(float))]
                if fits and len(switched) != len(d) and len(switched):
                    xa, ya, ca = (
                        _x_values(switched, axis, x_name),
                        switched[col].to_numpy(float),
                        _x_values(switched, axis, axis),
                    )
                    oka = np.isfinite(xa) & (xa > 0)
                    alt, _, _ = _fit_forms(
                        list(fits), xa[oka], ya[oka], ca[oka], s_settings, oracle, flip, metric
                    )
                _, counts = np.unique(config, return_counts=True)
                out.append(
                    SeriesFit(
                        sweep=sweep,
                        model=model,
                        axis=axis,
                        metric=metric,
                        x_name=x_name,
                        fits=fits,
                        skipped=skipped,
                        holdout=holdout,
                        seed_sd=pooled_seed_sd(y, config) if counts.max() > 1 else float("nan"),
                        oracle=oracle,
                        n_runs=len(y),
                        n_seeds=(int(counts.min()), int(counts.max())),
                        excluded=tuple(sorted(flagged)),
                        include_flagged=include_flagged,
                        alt_fits=alt,
                        failed=failed,
                        mde=series_mde(x, y, config, settings),
                        primary=x_name == primary_x,
                    )
                )
    return Analysis(
        collection=collection,
        split=split,
        settings=settings,
        series=out,
        flags=flags,
        include_flagged=include_flagged,
        hints=hints,
        notes=notes,
        metrics=all_metrics,
        floors=floors or {},
    )
