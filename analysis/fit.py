"""Scaling-law fits with cluster-bootstrap confidence intervals (anchors.md §3.2-3.5).

Two forms:
  loglinear  m = a + b·log10(x)          any metric; b is the gain per decade, b·log10(2) per doubling.
                                           Least squares on all seeds (equal weight per run).
  powerlaw   y = E + A·x^(−α)             loss-like metrics only (y > 0), >= 5 distinct x-values.
                                           Fitted Epoch-style in log space: log y = LSE(e, a − α·u)
                                           with u = ln(x/x0), x0 the geometric mean of x (so a is
                                           well scaled), Huber loss (δ = 1e-3) on log residuals,
                                           L-BFGS-B from a grid of starts. E = exp(e), A = exp(a)·x0^α.
Intervals: percentile intervals over a two-level cluster bootstrap (analysis.bootstrap).
Model choice: AIC/BIC on configuration means (seeds of one config are not independent points) and
leave-one-config-out cross-validated RMSE of the config means; both are reported, CV decides.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from scipy.optimize import minimize

from .bootstrap import cluster_weights, percentile_interval

LOG10_2 = float(np.log10(2.0))


@dataclass(frozen=True, kw_only=True)
class FitSettings:
    n_boot: int = 1000  # bootstrap replicates (anchors.md §3.3: 1 000-4 000)
    seed: int = 0  # bootstrap RNG seed: same seed, same intervals
    level: float = 0.95  # interval level
    huber_delta: float = 1e-3  # Chinchilla / Epoch value, on log residuals
    min_powerlaw_x: int = 5  # a 3-parameter saturating law is not identified with fewer x-values
    min_loglinear_x: int = 3  # a line through 2 points always fits: no claim without a third
    boot_starts: int = 2  # starts per bootstrap refit (the best point-fit starts)
    grid_points: int = 60  # x-grid of the prediction band
    extrapolate: float = 2.0  # the band runs to max(x) * extrapolate


@dataclass(frozen=True, kw_only=True)
class Fit:
    form: str
    params: dict[str, float]
    ci: dict[str, tuple[float, float]]
    gof: dict[str, float]
    n_points: int
    n_configs: int
    seeds_per_config: tuple[int, int]
    n_boot: int
    n_boot_failed: int
    x_grid: np.ndarray
    pred: np.ndarray
    band: tuple[np.ndarray, np.ndarray]
    residuals: list[dict]  # per config: x, mean, fitted, residual
    boot: dict[str, np.ndarray] = field(repr=False)  # parameter replicates
    fitted_on: str = "y"  # "1 - y": a saturating law of a higher-is-better metric (1 - AUC);
    # params/ci are of 1 - y, pred/band/residuals/predict() of y

    def predict(self, x) -> np.ndarray:
        p = predict(self.form, self.params, np.asarray(x, dtype=float))
        return 1.0 - p if self.fitted_on == "1 - y" else p

    def to_dict(self) -> dict:
        return {
            "form": self.form,
            "fitted_on": self.fitted_on,
            "params": self.params,
            "ci": {k: list(v) for k, v in self.ci.items()},
            "gof": self.gof,
            "n_points": self.n_points,
            "n_configs": self.n_configs,
            "seeds_per_config": list(self.seeds_per_config),
            "n_boot": self.n_boot,
            "n_boot_failed": self.n_boot_failed,
            "residuals": self.residuals,
        }


def predict(form: str, params: dict[str, float], x: np.ndarray) -> np.ndarray:
    if form == "loglinear":
        return params["a"] + params["b"] * np.log10(x)
    return params["E"] + params["A"] * np.power(x, -params["alpha"])


# ----------------------------------------------------------------------------- log-linear


def loglinear_weighted(
    u: np.ndarray, y: np.ndarray, w: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Closed-form weighted least squares of y = a + b·u for every row of w at once: w is (R, n)."""
    sw, swu, swy = w.sum(1), w @ u, w @ y
    swuu, swuy = w @ (u * u), w @ (u * y)
    den = sw * swuu - swu * swu
    with np.errstate(invalid="ignore", divide="ignore"):
        b = np.where(den > 0, (sw * swuy - swu * swy) / den, np.nan)
        a = (swy - b * swu) / sw
    return a, b


# ----------------------------------------------------------------------------- power law


def _powerlaw_objective(
    theta: np.ndarray, u: np.ndarray, logy: np.ndarray, w: np.ndarray, delta: float
):
    e, a, alpha = theta
    t2 = a - alpha * u
    lse = np.logaddexp(e, t2)
    r = logy - lse
    absr = np.abs(r)
    # Huber loss, scaled by 1/delta so the optimiser's tolerances see O(|r|) values (Epoch found the
    # original Chinchilla fit stopped early because the raw loss was tiny)
    loss = np.where(absr <= delta, 0.5 * r * r / delta, absr - 0.5 * delta)
    dl = np.clip(r, -delta, delta) / delta
    sig_e = np.exp(e - lse)  # d lse / d e
    sig_a = 1.0 - sig_e  # d lse / d a
    sw = w.sum()
    grad = (
        np.array([-(w * dl * sig_e).sum(), -(w * dl * sig_a).sum(), (w * dl * sig_a * u).sum()])
        / sw
    )
    return float((w * loss).sum() / sw), grad


def _powerlaw_starts(y: np.ndarray) -> list[np.ndarray]:
    ymin, ymid = float(np.min(y)), float(np.median(y))
    starts = []
    for e_frac in (0.5, 0.9, 0.99):
        e = np.log(e_frac * ymin)
        for a_mult in (0.5, 1.0, 2.0):
            a = np.log(max(ymid - e_frac * ymin, 1e-9) * a_mult)
            for alpha in (0.25, 0.5, 1.0, 2.0):
                starts.append(np.array([e, a, alpha]))
    return starts


def powerlaw_fit_one(
    u: np.ndarray, y: np.ndarray, w: np.ndarray, starts: list[np.ndarray], delta: float
) -> tuple[np.ndarray, float, list[np.ndarray]]:
    """Best (e, a, alpha) over the starts, all starts at once on the fast path (powerlaw_fit_batch);
    also returns all optima sorted by loss (for reuse as starts)."""
    S = np.array(starts)
    theta, loss = powerlaw_fit_batch(u, y, np.repeat(w[None, :], len(S), 0), S, delta)
    order = np.argsort(loss)
    return theta[order[0]], float(loss[order[0]]), [theta[i] for i in order]


def powerlaw_fit_reference(
    u: np.ndarray, y: np.ndarray, w: np.ndarray, starts: list[np.ndarray], delta: float
) -> tuple[np.ndarray, float, list[np.ndarray]]:
    """The plain reference path: scipy L-BFGS-B from every start, one at a time (slow; parity tests)."""
    logy = np.log(y)
    hi = float(np.log(np.max(y))) + 1.0
    bounds = [(-30.0, hi), (-30.0, hi + 5.0), (0.0, 10.0)]
    results = []
    for s in starts:
        res = minimize(
            _powerlaw_objective,
            s,
            args=(u, logy, w, delta),
            jac=True,
            method="L-BFGS-B",
            bounds=bounds,
            options={"ftol": 1e-14, "gtol": 1e-10, "maxiter": 500},
        )
        results.append((float(res.fun), res.x))
    results.sort(key=lambda r: r[0])
    return results[0][1], results[0][0], [r[1] for r in results]


# ----------------------------------------------------------------------------- shared driver


def _config_stats(x: np.ndarray, y: np.ndarray, config: np.ndarray):
    labels, inv = np.unique(config, return_inverse=True)
    counts = np.bincount(inv)
    xm = np.bincount(inv, weights=x) / counts
    ym = np.bincount(inv, weights=y) / counts
    return labels, inv, counts, xm, ym


def _point_fit(form: str, x, y, w, settings: FitSettings, starts=None):
    """(params dict, raw vector, sorted optima) of one weighted fit."""
    if form == "loglinear":
        a, b = loglinear_weighted(np.log10(x), y, w[None, :])
        return {"a": float(a[0]), "b": float(b[0])}, None, None
    x0 = float(np.exp(np.mean(np.log(x))))
    u = np.log(x / x0)
    best, _, optima = powerlaw_fit_one(u, y, w, starts or _powerlaw_starts(y), settings.huber_delta)
    e, a, alpha = best
    return (
        {
            "E": float(np.exp(e)),
            "A": float(np.exp(a) * x0**alpha),
            "alpha": float(alpha),
            "x0": x0,
            "A_at_x0": float(np.exp(a)),
        },
        best,
        optima,
    )


def fit(
    x, y, config=None, *, form: str = "loglinear", settings: FitSettings = FitSettings()
) -> Fit:
    """Fit one form to points (x, y) grouped by configuration (default: by x-value).

    x > 0 required; for the power law y > 0 and >= settings.min_powerlaw_x distinct x-values.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    config = np.asarray(x if config is None else config)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y, config = x[keep], y[keep], config[keep]
    if form not in ("loglinear", "powerlaw"):
        raise ValueError(f"unknown fit form {form!r}; use 'loglinear' or 'powerlaw'")
    if np.any(x <= 0):
        raise ValueError("x-values must be > 0 for a fit on a log axis")
    n_x = len(np.unique(x))
    if form == "powerlaw":
        if np.any(y <= 0):
            raise ValueError("the saturating power law needs y > 0 (a loss-like metric)")
        if n_x < settings.min_powerlaw_x:
            raise ValueError(
                f"the saturating power law needs >= {settings.min_powerlaw_x} distinct x-values, "
                f"got {n_x}: 3 parameters are not identified; use the log-linear form"
            )
    elif n_x < settings.min_loglinear_x:
        raise ValueError(
            f"a log-linear fit needs >= {settings.min_loglinear_x} distinct x-values, got {n_x}: "
            "a line through 2 points fits exactly (R² = 1) and tests nothing; add configurations"
        )

    labels, inv, counts, xm, ym = _config_stats(x, y, config)
    params, raw, optima = _point_fit(form, x, y, np.ones_like(y), settings)
    min_configs = 2 if form == "loglinear" else 3
    W = cluster_weights(config, settings.n_boot, settings.seed, min_configs=min_configs)

    x_grid = np.geomspace(x.min(), x.max() * settings.extrapolate, settings.grid_points)
    if form == "loglinear":
        a_b, b_b = loglinear_weighted(np.log10(x), y, W)
        boot = {"a": a_b, "b": b_b, "b_per_doubling": b_b * LOG10_2}
        preds = a_b[:, None] + b_b[:, None] * np.log10(x_grid)[None, :]
        params["b_per_doubling"] = params["b"] * LOG10_2
    else:
        boot, preds = _powerlaw_bootstrap(x, y, W, params, optima, settings, x_grid)
    failed = int(np.sum(~np.isfinite(next(iter(boot.values())))))
    ci = {
        k: tuple(float(v) for v in percentile_interval(s, settings.level)) for k, s in boot.items()
    }
    lo, hi = percentile_interval(preds, settings.level)

    fitted_means = predict(form, params, xm)
    resid = ym - fitted_means
    gof = _goodness(form, xm, ym, fitted_means, y, predict(form, params, x), settings, x, config)
    residuals = [
        {
            "config": str(lab),
            "x": float(xx),
            "n_seeds": int(c),
            "mean": float(m),
            "fitted": float(f),
            "residual": float(r),
        }
        for lab, xx, c, m, f, r in zip(labels, xm, counts, ym, fitted_means, resid)
    ]
    return Fit(
        form=form,
        params=params,
        ci=ci,
        gof=gof,
        n_points=len(y),
        n_configs=len(labels),
        seeds_per_config=(int(counts.min()), int(counts.max())),
        n_boot=settings.n_boot,
        n_boot_failed=failed,
        x_grid=x_grid,
        pred=predict(form, params, x_grid),
        band=(lo, hi),
        residuals=residuals,
        boot=boot,
    )


def _huber_loss_batch(theta, u, logy, W, delta):
    """Huber objective (same scaling as _powerlaw_objective) for every row of theta/W: (R,)."""
    r = logy[None, :] - np.logaddexp(theta[:, :1], theta[:, 1:2] - theta[:, 2:3] * u[None, :])
    absr = np.abs(r)
    loss = np.where(absr <= delta, 0.5 * r * r / delta, absr - 0.5 * delta)
    return (W * loss).sum(1) / W.sum(1), r


def powerlaw_fit_batch(
    u: np.ndarray, y: np.ndarray, W: np.ndarray, theta0: np.ndarray, delta: float, iters: int = 200
) -> tuple[np.ndarray, np.ndarray]:
    """The fast path: the same Huber-in-log-space fit for R weight vectors at once.

    Levenberg-Marquardt on the iteratively reweighted (Huber) least-squares form, vectorised over
    replicates (a 3x3 solve per replicate per step, no Python loop over replicates). Parity with the
    L-BFGS-B reference path (powerlaw_fit_one) is tested in tests/test_analysis_fit.py.
    Returns (theta (R,3), loss (R,)).
    """
    logy = np.log(y)
    hi = float(np.log(np.max(y))) + 1.0
    lo_b, hi_b = np.array([-30.0, -30.0, 0.0]), np.array([hi, hi + 5.0, 10.0])
    theta = np.clip(np.array(theta0, dtype=float), lo_b, hi_b)
    lam = np.full(len(W), 1e-3)
    loss, r = _huber_loss_batch(theta, u, logy, W, delta)
    for _ in range(iters):
        t2 = theta[:, 1:2] - theta[:, 2:3] * u[None, :]
        sig_e = np.exp(theta[:, :1] - np.logaddexp(theta[:, :1], t2))
        sig_a = 1.0 - sig_e
        J = np.stack([-sig_e, -sig_a, sig_a * u[None, :]], axis=2)  # d r / d theta, (R,n,3)
        h = W * np.minimum(1.0, delta / np.maximum(np.abs(r), 1e-300))  # IRLS weights of Huber
        JtH = J.transpose(0, 2, 1) * h[:, None, :]
        A = JtH @ J
        g = (JtH @ r[:, :, None])[:, :, 0]
        diag = np.einsum("rii->ri", A)
        A_damped = A + (lam[:, None] * (diag + 1e-12))[:, :, None] * np.eye(3)[None]
        step = -np.linalg.solve(A_damped, g[:, :, None])[:, :, 0]
        cand = np.clip(theta + step, lo_b, hi_b)
        cand_loss, cand_r = _huber_loss_batch(cand, u, logy, W, delta)
        better = cand_loss < loss
        theta = np.where(better[:, None], cand, theta)
        r = np.where(better[:, None], cand_r, r)
        converged = np.abs(loss - cand_loss) <= 1e-13 * np.maximum(1.0, loss)
        loss = np.where(better, cand_loss, loss)
        lam = np.where(better, lam * 0.3, lam * 10.0).clip(1e-12, 1e12)
        if np.all(converged | (lam >= 1e12)):
            break
    return theta, loss


def _powerlaw_bootstrap(x, y, W, params, optima, settings: FitSettings, x_grid):
    x0 = params["x0"]
    u = np.log(x / x0)
    # every replicate starts from each of the best point-fit optima; the lowest loss wins
    best_theta, best_loss = None, None
    for start in optima[: settings.boot_starts]:
        theta, loss = powerlaw_fit_batch(
            u, y, W, np.repeat(start[None, :], len(W), 0), settings.huber_delta
        )
        if best_theta is None:
            best_theta, best_loss = theta, loss
        else:
            take = loss < best_loss
            best_theta = np.where(take[:, None], theta, best_theta)
            best_loss = np.where(take, loss, best_loss)
    out = np.where(np.isfinite(best_loss)[:, None], best_theta, np.nan)
    E, A0, alpha = np.exp(out[:, 0]), np.exp(out[:, 1]), out[:, 2]
    A = A0 * x0**alpha
    preds = E[:, None] + A0[:, None] * np.power(x_grid[None, :] / x0, -alpha[:, None])
    return {"E": E, "A": A, "alpha": alpha, "A_at_x0": A0}, preds


def _goodness(
    form, xm, ym, fitted_means, y, fitted_points, settings, x, config
) -> dict[str, float]:
    k = 2 if form == "loglinear" else 3
    n = len(ym)
    rss = float(np.sum((ym - fitted_means) ** 2))
    out = {
        "k_params": k,
        "rmse_points": float(np.sqrt(np.mean((y - fitted_points) ** 2))),
        "rmse_means": float(np.sqrt(rss / n)),
        "mae_means": float(np.mean(np.abs(ym - fitted_means))),
    }
    tss = float(np.sum((ym - ym.mean()) ** 2))
    out["r2_means"] = 1.0 - rss / tss if tss > 0 else float("nan")
    # Gaussian AIC/BIC on config means; with n close to k they are only indicative (stated in reports)
    ll_term = n * np.log(max(rss / n, 1e-300))
    out["aic"] = float(ll_term + 2 * k)
    out["bic"] = float(ll_term + k * np.log(n))
    out["cv_rmse"] = _loco_cv(form, x, y, config, settings)
    return out


def _loco_cv(form, x, y, config, settings: FitSettings) -> float:
    """Leave-one-config-out RMSE of the held-out config mean (NaN when too few configs remain)."""
    labels = np.unique(config)
    need = 3 if form == "loglinear" else settings.min_powerlaw_x
    if len(labels) - 1 < need:
        return float("nan")
    errs = []
    for lab in labels:
        held = config == lab
        if len(np.unique(x[~held])) < (2 if form == "loglinear" else 3):
            continue
        params, _, _ = _point_fit(form, x[~held], y[~held], np.ones(int((~held).sum())), settings)
        errs.append(
            float(np.mean(y[held])) - float(predict(form, params, np.array([np.mean(x[held])]))[0])
        )
    return float(np.sqrt(np.mean(np.square(errs)))) if errs else float("nan")


# ----------------------------------------------------------------------------- checks built on fits


def leave_largest_out(
    x,
    y,
    config=None,
    *,
    form: str = "loglinear",
    n_out: int = 1,
    settings: FitSettings = FitSettings(),
) -> list[dict]:
    """Fit without the n_out largest x-values and predict them (anchors.md §3.5).

    The interval is a prediction interval for the observed mean of the held-out config: the bootstrap
    spread of the fitted curve plus the seed noise of a mean of that config's seeds (pooled
    within-config seed variance of the training configs; zero when every config has one seed).
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    config = np.asarray(x if config is None else config)
    xs = np.unique(x)
    targets = xs[-n_out:]
    train = ~np.isin(x, targets)
    f = fit(x[train], y[train], config[train], form=form, settings=settings)
    if form == "loglinear":
        curves = f.boot["a"][:, None] + f.boot["b"][:, None] * np.log10(targets)[None, :]
    else:
        curves = f.boot["E"][:, None] + f.boot["A"][:, None] * np.power(
            targets[None, :], -f.boot["alpha"][:, None]
        )
    sd_seed = pooled_seed_sd(y[train], config[train])
    rng = np.random.default_rng(settings.seed + 1)
    out = []
    for j, t in enumerate(targets):
        held = x == t
        n_seeds = int(held.sum())
        noisy = curves[:, j] + rng.normal(0.0, sd_seed / np.sqrt(n_seeds), size=len(curves))
        lo, hi = percentile_interval(noisy, settings.level)
        obs = float(np.mean(y[held]))
        pred = float(f.predict(np.array([t]))[0])
        out.append(
            {
                "form": form,
                "x": float(t),
                "n_seeds": n_seeds,
                "observed": obs,
                "predicted": pred,
                "lo": float(lo),
                "hi": float(hi),
                "inside": bool(lo <= obs <= hi),
                "abs_rel_error": abs(pred - obs) / abs(obs) if obs != 0 else float("nan"),
                "fit_configs": f.n_configs,
            }
        )
    return out


def pooled_seed_sd(y: np.ndarray, config: np.ndarray) -> float:
    """Pooled within-configuration standard deviation (the seed-noise floor)."""
    labels, inv = np.unique(config, return_inverse=True)
    counts = np.bincount(inv)
    means = np.bincount(inv, weights=y) / counts
    ss = float(np.sum((y - means[inv]) ** 2))
    dof = int(np.sum(counts - 1))
    return float(np.sqrt(ss / dof)) if dof > 0 else 0.0


def saturation_point(params: dict[str, float], seed_sd: float) -> float:
    """x beyond which one more doubling gains less than the seed noise: A·x^-α·(1 − 2^-α) = sd."""
    gain_coef = params["A"] * (1.0 - 2.0 ** (-params["alpha"]))
    if seed_sd <= 0 or params["alpha"] <= 0 or gain_coef <= 0:
        return float("nan")
    return float((gain_coef / seed_sd) ** (1.0 / params["alpha"]))


def flipped(f: Fit) -> Fit:
    """A fit of 1 - y expressed in y: curve, band and residuals flipped; params stay those of 1 - y."""
    res = [
        {**r, "mean": 1.0 - r["mean"], "fitted": 1.0 - r["fitted"], "residual": -r["residual"]}
        for r in f.residuals
    ]
    return replace(
        f,
        pred=1.0 - f.pred,
        band=(1.0 - f.band[1], 1.0 - f.band[0]),
        residuals=res,
        fitted_on="1 - y",
    )


def flip_holdout(rows: list[dict]) -> list[dict]:
    """leave_largest_out rows of a fit of 1 - y, back in y."""
    out = []
    for r in rows:
        obs, pred = 1.0 - r["observed"], 1.0 - r["predicted"]
        out.append(
            {
                **r,
                "observed": obs,
                "predicted": pred,
                "lo": 1.0 - r["hi"],
                "hi": 1.0 - r["lo"],
                "abs_rel_error": abs(pred - obs) / abs(obs) if obs != 0 else float("nan"),
            }
        )
    return out


def powerlaw_problem(f: Fit, floor: float | None = None, quantity: str = "") -> str | None:
    """Why a saturating fit must not be read as a law: a parameter at its optimiser bound, or a fitted
    floor E whose whole 95% interval lies below the Bayes floor (impossible: no model beats it).
    `floor` is the Bayes value of the fitted quantity (the oracle logloss). None when the fit is usable."""
    p = f.params
    e, a0, alpha = np.log(max(p["E"], 1e-300)), np.log(max(p["A_at_x0"], 1e-300)), p["alpha"]
    if alpha >= 10.0 - 1e-3:
        return "α at its upper bound (10): the decay is not identified"
    if alpha <= 1e-3:
        return "α at its lower bound (0): no decay, the curve is a constant"
    if e <= -30.0 + 0.05:
        return "E at its lower bound (0): no floor identified"
    if a0 <= -30.0 + 0.05:
        return "A at its lower bound (0): no scaling term"
    if floor is not None and np.isfinite(floor) and f.ci["E"][1] < floor:
        return (
            f"fitted floor{' of ' + quantity if quantity else ''} E = {p['E']:.4g} [{f.ci['E'][0]:.4g}, "
            f"{f.ci['E'][1]:.4g}] lies below the Bayes floor {floor:.4g}: impossible"
        )
    return None
