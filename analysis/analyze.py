"""From a Collection to every fit the report shows.

A *series* is the finished runs of one (sweep, model, axis) whose swept value is numeric and takes
>= 2 distinct values. Per series and metric we fit the log-linear form on the native axis and on
training FLOPs, the saturating power law on loss-like metrics (logloss) with >= 5 x-values, and run
the leave-largest-out check. Configurations are identified by the series' x-value (seeds share it).
"""
from __future__ import annotations

import dataclasses
import zlib
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .collect import Collection, metric_split
from .fit import Fit, FitSettings, fit, leave_largest_out, pooled_seed_sd, saturation_point

METRICS = ("ctr_auc", "ctr_uauc", "ctr_logloss", "cvr_auc", "cvr_uauc", "cvr_logloss")
LOSS_LIKE = ("ctr_logloss", "cvr_logloss")   # the saturating form is fitted on these only


@dataclass(frozen=True, kw_only=True)
class SeriesFit:
    sweep: str
    model: str
    axis: str
    metric: str
    x_name: str                     # the swept axis or "train_flops"
    fits: dict[str, Fit]            # form -> fit
    skipped: dict[str, str]         # form -> why it was not fitted
    holdout: list[dict]             # leave-largest-out rows
    seed_sd: float
    oracle: float | None            # Bayes value on synthetic data (result.json "oracle")

    @property
    def key(self) -> str:
        return f"{self.sweep}/{self.model}/{self.axis}/{self.metric}@{self.x_name}"

    def best_form(self) -> str:
        """The form with the lower leave-one-config-out CV RMSE (log-linear when CV is not available)."""
        cv = {f: v.gof["cv_rmse"] for f, v in self.fits.items() if np.isfinite(v.gof["cv_rmse"])}
        return min(cv, key=cv.get) if len(cv) == len(self.fits) and cv else "loglinear"


@dataclass(frozen=True, kw_only=True)
class Analysis:
    collection: Collection
    split: str
    settings: FitSettings
    series: list[SeriesFit] = field(default_factory=list)

    def points(self, sweep: str, model: str, axis: str) -> pd.DataFrame:
        d = self.collection.done
        return d[(d["sweep"] == sweep) & (d["model"] == model) & (d["axis"] == axis)]

    def fits_table(self) -> pd.DataFrame:
        rows = []
        for s in self.series:
            for form, f in s.fits.items():
                row = {"sweep": s.sweep, "model": s.model, "axis": s.axis, "x": s.x_name, "metric": s.metric,
                       "form": form, "n_configs": f.n_configs, "seeds/config": "%d-%d" % f.seeds_per_config,
                       "n_boot": f.n_boot, "seed_sd": s.seed_sd}
                for p, v in f.params.items():
                    if p in ("x0", "A_at_x0", "a"):
                        continue
                    lo, hi = f.ci.get(p, (np.nan, np.nan))
                    row[p] = v
                    row[f"{p}_lo"], row[f"{p}_hi"] = lo, hi
                row.update({g: f.gof[g] for g in ("r2_means", "rmse_means", "aic", "bic", "cv_rmse")})
                row["chosen"] = form == s.best_form() and len(s.fits) > 1
                if form == "powerlaw":
                    row["oracle"] = s.oracle
                    row["x_saturation"] = saturation_point(f.params, s.seed_sd)
                rows.append(row)
        return pd.DataFrame(rows)

    def holdout_table(self) -> pd.DataFrame:
        rows = [{"sweep": s.sweep, "model": s.model, "axis": s.axis, "metric": s.metric, "x_name": s.x_name, **h}
                for s in self.series for h in s.holdout]
        return pd.DataFrame(rows)


def series_keys(done: pd.DataFrame) -> list[tuple[str, str, str]]:
    keys = []
    for (sweep, model, axis), g in done.groupby(["sweep", "model", "axis"], dropna=True):
        col = f"axes.{axis}"
        if col in g and pd.to_numeric(g[col], errors="coerce").dropna().nunique() >= 2:
            keys.append((str(sweep), str(model), str(axis)))
    return keys


def analyze(collection: Collection, *, settings: FitSettings = FitSettings(), metrics=METRICS,
            split: str | None = None) -> Analysis:
    split = split or metric_split(collection.done)
    done = collection.done
    out: list[SeriesFit] = []
    for sweep, model, axis in series_keys(done):
        g = done[(done["sweep"] == sweep) & (done["model"] == model) & (done["axis"] == axis)]
        x_native = pd.to_numeric(g[f"axes.{axis}"], errors="coerce").to_numpy(float)
        config = x_native            # one configuration per swept value
        for metric in metrics:
            col = f"{split}.{metric}"
            if col not in g or g[col].notna().sum() == 0:
                continue
            y = g[col].to_numpy(float)
            oracle_col = f"oracle.{split}.{metric}"
            oracle = float(g[oracle_col].mean()) if oracle_col in g and g[oracle_col].notna().any() else None
            for x_name, x in ((axis, x_native), ("train_flops", g["train_flops"].to_numpy(float))):
                if not np.all(np.isfinite(x)) or len(np.unique(x)) < 2:
                    continue
                # each series gets its own replicate stream (derived from the user's seed), so that
                # replicates of independent series are independent when their slopes are compared
                key_seed = zlib.crc32(f"{sweep}/{model}/{axis}/{metric}@{x_name}".encode())
                s_settings = dataclasses.replace(
                    settings, seed=int(np.random.SeedSequence([settings.seed, key_seed]).generate_state(1)[0]))
                forms = ["loglinear"] + (["powerlaw"] if metric in LOSS_LIKE and x_name == axis else [])
                fits, skipped, holdout = {}, {}, []
                for form in forms:
                    try:
                        fits[form] = fit(x, y, config, form=form, settings=s_settings)
                    except ValueError as err:
                        skipped[form] = str(err)
                        continue
                    n_x = len(np.unique(x))
                    need = 4 if form == "loglinear" else settings.min_powerlaw_x + 1   # >= 3 configs left to fit
                    if n_x >= need:
                        holdout += leave_largest_out(x, y, config, form=form, settings=s_settings)
                out.append(SeriesFit(sweep=sweep, model=model, axis=axis, metric=metric, x_name=x_name, fits=fits,
                                     skipped=skipped, holdout=holdout, seed_sd=pooled_seed_sd(y, config),
                                     oracle=oracle))
    return Analysis(collection=collection, split=split, settings=settings, series=out)
