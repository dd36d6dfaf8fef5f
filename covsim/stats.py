"""Host-side statistics of result frames, shared by the claims (float64 NumPy / pandas).

Intervals: `wilson_interval` (k of m), `wilson_half_width` (p from n draws), `mean_ci`.
Fits: `linear_fit`, `loglog_fit`, `log_log_slopes`, `mean_slope` (with a seed bootstrap).
Ranks: `spearman`. Checkpoint curves (Fig. 1): `u_shape`, `rank_strength_gap`,
`paired_gain`. Frames: `cov_columns`, `finals`, `per_class_arrays`, `per_class_medians`,
`length_stats` (a length sweep: KL's growth, Cov_N's spread, from a sweep directory).

The device-side Cov_N interval of every checkpoint is `covsim.metrics.coverage_profile`; the
Wilson score formula is the same one, `covsim.metrics.wilson_score` (float32 under jit there,
float64 here).
"""

from __future__ import annotations

import math
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd

from covsim.metrics import wilson_score
from covsim.results import read_config, read_metrics, read_summaries

# ---- intervals ---------------------------------------------------------------------------------


def z_value(alpha: float) -> float:
    """Φ⁻¹(1 − alpha/2), the two-sided normal quantile (float64)."""
    return -NormalDist().inv_cdf(alpha / 2)


def wilson_interval(k: int, m: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for k successes in m trials at normal quantile z; (0, 1) if m = 0
    (`covsim.metrics.wilson_score` in float64)."""
    if m == 0:
        return 0.0, 1.0
    lo, hi = wilson_score(np.float64(k / m), np.float64(m), np.float64(z), xp=np)
    return float(lo), float(hi)


def wilson_half_width(p: float, n: float, alpha: float) -> float:
    """Half-width of the two-sided 1 − alpha Wilson score interval for p from n draws."""
    lo, hi = wilson_score(np.float64(p), np.float64(n), np.float64(z_value(alpha)), xp=np)
    return float(hi - lo) / 2


def mean_ci(df, x: str, y: str, z: float = 1.96) -> tuple[np.ndarray, ...]:
    """Per value of x: mean of y over seeds and its normal-approximation CI: (xs, mean, lo, hi)."""
    g = df.groupby(x)[y]
    xs = np.asarray(g.mean().index, float)
    m = g.mean().to_numpy(float)
    se = (g.std(ddof=1) / np.sqrt(g.count())).to_numpy(float)
    return xs, m, m - z * se, m + z * se


# ---- fits ----------------------------------------------------------------------------------------


def _fit(x, y) -> tuple[float, float, float]:
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(
            f"arguments x and y must be 1-D of one length, got shapes {x.shape}, {y.shape}"
        )
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if x.size < 2 or np.ptp(x) == 0:
        return math.nan, math.nan, math.nan
    slope, icpt = np.polyfit(x, y, 1)
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    ss_res = float(np.sum((y - (slope * x + icpt)) ** 2))
    r2 = 1 - ss_res / ss_tot if ss_tot > 0 else math.nan
    return float(slope), float(icpt), r2


def linear_fit(x, y) -> tuple[float, float, float]:
    """Least squares y ≈ slope · x + intercept over the finite pairs: (slope, intercept, R²).

    Fewer than two distinct finite x give NaNs; R² is NaN when y is constant."""
    return _fit(np.asarray(x, np.float64).ravel(), np.asarray(y, np.float64).ravel())


def loglog_fit(x, y) -> tuple[float, float, float]:
    """Power law y ≈ e^intercept · x^slope by least squares on (log x, log y) over the pairs
    with both positive and finite: (slope, intercept, R² in log space)."""
    x, y = np.asarray(x, np.float64).ravel(), np.asarray(y, np.float64).ravel()
    ok = (x > 0) & (y > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return _fit(np.where(ok, np.log(x), np.nan), np.where(ok, np.log(y), np.nan))


def log_log_slopes(x, Y) -> np.ndarray:
    """Least-squares slopes of log Y[..., j] on log x[j] (vectorised over leading axes)."""
    lx = np.log(np.asarray(x, np.float64))
    lx = lx - lx.mean()
    ly = np.log(Y)
    return np.sum((ly - ly.mean(-1, keepdims=True)) * lx, -1) / np.sum(lx * lx)


def mean_slope(df, x: str, y: str, boot: int = 1000) -> tuple[float, float, np.ndarray]:
    """Slope of log(mean over seeds of y) on log x, with its bootstrap s.d. over seeds (seeds
    resampled jointly across x, which keeps the nesting of the datasets): (slope, sd, means)."""
    wide = df.pivot_table(index="seed", columns=x, values=y, aggfunc="first").sort_index(axis=1)
    xs = wide.columns.to_numpy(float)
    Y = wide.to_numpy(float)  # (seeds, len(xs))
    means = Y.mean(0)
    if np.any(~(means > 0)):
        return math.nan, math.nan, means
    rng = np.random.default_rng(0)
    bm = Y[rng.integers(0, Y.shape[0], (boot, Y.shape[0]))].mean(1)  # (boot, len(xs))
    bm = bm[np.all(bm > 0, axis=1)]
    sd = float(np.std(log_log_slopes(xs, bm))) if len(bm) else math.nan
    return float(log_log_slopes(xs, means)), sd, means


def bootstrap_ci(v, stat=np.mean, boot: int = 2000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float, float]:
    """stat(v) and its percentile-bootstrap interval at `level` (v resampled with replacement):
    (point, lo, hi)."""
    v = np.asarray(v, float)
    rng = np.random.default_rng(seed)
    b = stat(v[rng.integers(0, len(v), (boot, len(v)))], axis=1)
    q = 100 * (1 - level) / 2
    lo, hi = np.percentile(b, [q, 100 - q])
    return float(stat(v)), float(lo), float(hi)


def loglog_slope_ci(xs, per_x, stat=np.mean, boot: int = 2000, level: float = 0.95,
                    seed: int = 0) -> tuple[float, float, float]:
    """Least-squares slope of log stat(per_x[i]) on log xs[i] and its percentile-bootstrap
    interval, the samples resampled independently within each x (independent seeds per x):
    (slope, lo, hi). Bootstrap draws with a statistic ≤ 0 are dropped; NaN if none is left."""
    rng = np.random.default_rng(seed)
    point = np.array([stat(np.asarray(v, float)) for v in per_x])
    b = np.stack([stat(np.asarray(v, float)[rng.integers(0, len(v), (boot, len(v)))], axis=1)
                  for v in per_x], axis=1)  # (boot, len(xs))
    ok = np.all(b > 0, axis=1)
    slopes = log_log_slopes(xs, b[ok]) if ok.any() else np.array([math.nan])
    q = 100 * (1 - level) / 2
    lo, hi = np.percentile(slopes, [q, 100 - q])
    slope = float(log_log_slopes(xs, point)) if np.all(point > 0) else math.nan
    return slope, float(lo), float(hi)


def mean_curve_by(df: pd.DataFrame, x: str, col: str, boot: int = 2000) -> dict[str, Any]:
    """`mean_curve` of `col` with the rows of df grouped by the values of column x."""
    groups = {v: g[col] for v, g in df.groupby(x)}
    xs = sorted(groups)
    return mean_curve([int(v) if float(v).is_integer() else v for v in xs],
                      [groups[v] for v in xs], boot)


def nonfinite_as_worst(df: pd.DataFrame, cols: list[str], flag: str = "finite",
                       worst: float = 1.0) -> pd.DataFrame:
    """df with `cols` set to `worst` on rows whose `flag` column is false (a run that went
    non-finite), so that such a run can neither be picked as a best setting nor flatter a mean."""
    if flag not in df:
        return df
    bad = ~df[flag].astype(bool)
    return df.assign(**{c: df[c].where(~bad, worst) for c in cols})


def mean_curve(xs, per_x, boot: int = 2000) -> dict[str, Any]:
    """Per x: the mean of per_x[i] (independent samples, e.g. seeds) with its 95% bootstrap
    interval, and the log-log slope of the means on x with its interval: {"x", "mean", "lo",
    "hi", "slope", "slope_lo", "slope_hi", "per_x"}."""
    per = [np.asarray(v, float) for v in per_x]
    cis = np.array([bootstrap_ci(v, np.mean, boot) for v in per])
    slope, lo, hi = loglog_slope_ci(list(xs), per, np.mean, boot)
    return {"x": list(xs), "mean": cis[:, 0], "lo": cis[:, 1], "hi": cis[:, 2], "slope": slope,
            "slope_lo": lo, "slope_hi": hi, "per_x": per}


def horizon_separation(base: dict, treat: dict, bound_slope: float) -> dict[str, bool]:
    """The §5–6 comparison of two `mean_curve`s along H (the same H grid, 95% intervals): a
    baseline whose coverage grows with H against a treatment that an upper bound says may grow
    at most like x^bound_slope. {"grows": the baseline's slope interval lies above 0 and its
    intervals at the smallest and largest x are disjoint; "slower": the treatment's slope
    interval lies below the baseline's; "below_at_largest": at the largest x the treatment's
    interval lies below the baseline's; "within_bound_shape": the lower end of the treatment's
    slope interval is ≤ bound_slope, i.e. it does not grow significantly faster than the bound
    allows}. (An upper bound of slope bound_slope admits growth at exactly that slope: asking
    the whole interval to lie below it would fail a curve that matches the bound; the power
    against a horizon effect comes from "slower" and "below_at_largest".)"""
    return {
        "grows": bool(base["slope_lo"] > 0 and base["hi"][0] < base["lo"][-1]),
        "slower": bool(treat["slope_hi"] < base["slope_lo"]),
        "below_at_largest": bool(treat["hi"][-1] < base["lo"][-1]),
        "within_bound_shape": bool(treat["slope_lo"] <= bound_slope),
    }


def argmin_mean_by(df: pd.DataFrame, by: str, keys: list[str], col: str) -> dict[Any, tuple]:
    """For each value of `by`: the `keys` tuple whose rows have the smallest mean `col` (e.g.
    the best step size per H on tuning seeds)."""
    m = df.groupby([by, *keys])[col].mean()
    return {b: tuple(g.droplevel(0).idxmin()) if len(keys) > 1 else (g.droplevel(0).idxmin(),)
            for b, g in m.groupby(level=0)}


def argmin_worst(df: pd.DataFrame, by: str, keys: list[str], col: str) -> tuple:
    """The `keys` tuple whose worst (largest) mean `col` over the values of `by` is smallest:
    one setting for every `by` (a minimax pick)."""
    worst = df.groupby([*keys, by])[col].mean().groupby(level=list(range(len(keys)))).max()
    best = worst.idxmin()
    return tuple(best) if isinstance(best, tuple) else (best,)


# ---- ranks -------------------------------------------------------------------------------------


def spearman(x, y) -> float:
    """Spearman rank correlation with average ranks for ties (NaN if a side is constant)."""
    rx = pd.Series(np.asarray(x, float)).rank().to_numpy()
    ry = pd.Series(np.asarray(y, float)).rank().to_numpy()
    if np.ptp(rx) == 0 or np.ptp(ry) == 0:
        return math.nan
    return float(np.corrcoef(rx, ry)[0, 1])


# ---- checkpoint curves (Fig. 1) -----------------------------------------------------------------


def u_shape(curves, boot: int = 2000, level: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """Is the seed-mean curve U-shaped? curves (S, T): one curve per seed over T checkpoints.

    j* = argmin_j of the mean curve c̄; drop = c̄_0 − c̄_{j*} and rise = c̄_{T−1} − c̄_{j*},
    each with its percentile interval from resampling seeds, j* held fixed (re-minimising
    inside the bootstrap would make the rise ≥ 0 by construction). "u" holds when j* is
    interior (0 < j* < T − 1) and both lower ends are > 0: the start and the end both lie
    above the minimum by more than the seed-to-seed noise. Returns {"argmin", "start", "min",
    "final", "drop", "drop_lo", "drop_hi", "rise", "rise_lo", "rise_hi", "interior", "u"}."""
    c = np.asarray(curves, float)
    if c.ndim != 2 or c.shape[1] < 3 or c.shape[0] < 1:
        raise ValueError(f"argument curves must have shape (seeds, ≥ 3 checkpoints), "
                         f"got {c.shape}")
    m = c.mean(axis=0)
    j = int(np.argmin(m))
    rng = np.random.default_rng(seed)
    b = c[rng.integers(0, c.shape[0], (boot, c.shape[0]))].mean(axis=1)  # (boot, T)
    q = 100 * (1 - level) / 2
    drop_lo, drop_hi = np.percentile(b[:, 0] - b[:, j], [q, 100 - q])
    rise_lo, rise_hi = np.percentile(b[:, -1] - b[:, j], [q, 100 - q])
    interior = 0 < j < c.shape[1] - 1
    return {"argmin": j, "start": float(m[0]), "min": float(m[j]), "final": float(m[-1]),
            "drop": float(m[0] - m[j]), "drop_lo": float(drop_lo), "drop_hi": float(drop_hi),
            "rise": float(m[-1] - m[j]), "rise_lo": float(rise_lo), "rise_hi": float(rise_hi),
            "interior": bool(interior),
            "u": bool(interior and drop_lo > 0 and rise_lo > 0)}


def _avg_ranks(a: np.ndarray) -> np.ndarray:
    """Average ranks (1-based, ties share their mean rank) along the last axis."""
    less = (a[..., None, :] < a[..., :, None]).sum(-1)
    same = (a[..., None, :] == a[..., :, None]).sum(-1)
    return less + (same + 1) / 2


def _spearman_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Row-wise Spearman ρ of (..., T) arrays; NaN where a side is constant."""
    rx, ry = _avg_ranks(x), _avg_ranks(y)
    rx = rx - rx.mean(-1, keepdims=True)
    ry = ry - ry.mean(-1, keepdims=True)
    den = np.sqrt((rx**2).sum(-1) * (ry**2).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (rx * ry).sum(-1) / np.where(den > 0, den, 1), np.nan)


def rank_strength_gap(target, pred_a, pred_b, boot: int = 1000, level: float = 0.95,
                      seed: int = 0) -> dict[str, Any]:
    """Which predictor ranks the checkpoints by `target` better? Arrays (S, T): per seed, a
    curve over T checkpoints. Strength of a predictor on one seed: s = −Spearman(target,
    predictor) (a lower predictor value goes with a higher target; 0 when a side is constant:
    a constant predicts nothing). gap = mean over seeds of s_a − s_b, with a percentile
    bootstrap over seeds and, within each drawn seed, over its checkpoints. Returns {"s_a",
    "s_b" (per seed), "gap", "lo", "hi"}."""
    t, a, b_ = (np.asarray(v, float) for v in (target, pred_a, pred_b))
    if not (t.shape == a.shape == b_.shape and t.ndim == 2):
        raise ValueError(f"arguments target, pred_a, pred_b must share a shape (seeds, "
                         f"checkpoints), got {t.shape}, {a.shape}, {b_.shape}")
    S, T = t.shape

    def strengths(tt, aa, bb):
        return (-np.nan_to_num(_spearman_rows(tt, aa)), -np.nan_to_num(_spearman_rows(tt, bb)))

    s_a, s_b = strengths(t, a, b_)
    rng = np.random.default_rng(seed)
    si = rng.integers(0, S, (boot, S))[..., None]  # (boot, S, 1) seeds
    ci = rng.integers(0, T, (boot, S, T))  # checkpoints within each drawn seed
    ba, bb = strengths(t[si, ci], a[si, ci], b_[si, ci])  # (boot, S)
    gaps = (ba - bb).mean(axis=1)
    q = 100 * (1 - level) / 2
    lo, hi = np.percentile(gaps, [q, 100 - q])
    return {"s_a": s_a, "s_b": s_b, "gap": float((s_a - s_b).mean()), "lo": float(lo),
            "hi": float(hi)}


def paired_gain(gains, boot: int = 2000, level: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """Median of per-seed gains (e.g. Pass@N of one pick minus another's) with its percentile
    bootstrap interval over seeds, and the counts of wins (> 0), ties (== 0: the same
    checkpoint or the same value; a tie is not a win) and losses. Returns {"median", "lo",
    "hi", "wins", "ties", "losses"}."""
    g = np.asarray(gains, float)
    med, lo, hi = bootstrap_ci(g, np.median, boot, level, seed)
    return {"median": med, "lo": lo, "hi": hi, "wins": int((g > 0).sum()),
            "ties": int((g == 0).sum()), "losses": int((g < 0).sum())}


# ---- result frames -----------------------------------------------------------------------------


def cov_columns(df) -> list[tuple[float, str]]:
    """The (N, "cov@N") columns of a metrics frame, by increasing N."""
    cols = [(float(c[4:]), c) for c in df.columns if c.startswith("cov@")]
    return sorted(cols)


def finals(df: pd.DataFrame, by: str) -> pd.DataFrame:
    """The last evaluation of every (`by` value, seed): one row each."""
    last = df.groupby([by, "seed"])["step"].transform("max")
    return df[df["step"] == last].sort_values([by, "seed"])


def per_class_arrays(d: Path, by: str, N: int) -> dict[int, dict[str, Any]]:
    """`by` value -> the runner's per-class summary with the seeds of every finished cell at
    that value side by side: weights (K,), kl, kl_token and cov@N (K, S) arrays."""
    s = read_summaries(d)
    s = s[s["status"].isin(["done", "diverged"])]
    out: dict[int, dict[str, Any]] = {}
    for _, row in s.iterrows():
        kt = row.get("per_class.kl_token")
        if not isinstance(kt, list):
            continue
        cov = row.get("per_class.cov")
        covN = cov.get(N, cov.get(float(N))) if isinstance(cov, dict) else None
        parts = {"kl": row.get("per_class.kl"), "kl_token": kt, "cov": covN}
        cur = out.setdefault(int(row[by]), {"weights": np.asarray(row["per_class.weights"])})
        for k, v in parts.items():
            if v is None or (k in cur and cur[k] is None):
                cur[k] = None
                continue
            v = np.asarray(v, float)
            cur[k] = v if k not in cur else np.concatenate([cur[k], v], axis=1)
    return out


def per_class_medians(d: Path, by: str, N: int) -> dict[int, dict[str, Any]]:
    """`by` value -> per-class medians over seeds (kl_token, cov@N), from the summaries."""
    med = lambda a: None if a is None else [float(np.nanmedian(v)) for v in a]
    return {h: {"weights": a["weights"].tolist(), "kl_token": med(a["kl_token"]),
                "cov": med(a["cov"])}
            for h, a in per_class_arrays(d, by, N).items()}


def flatness_tolerance(half_width: float, mean: float, spread_mult: float,
                       rel_floor: float) -> tuple[float, str]:
    """The tolerance on the spread of a quantity that should not change along an axis: the
    larger of spread_mult × its pooled Wilson half-width (sampling noise) and rel_floor × its
    mean (an effect size below which "flat" is accepted, so that more samples do not turn a
    negligible change into a FAIL). Returns (tolerance, which bound: "noise" or "floor")."""
    noise, floor = spread_mult * half_width, rel_floor * abs(mean)
    return (noise, "noise") if noise >= floor else (floor, "floor")


def length_stats(d: Path, by: str, N: int, spread_mult: float,
                 rel_floor: float = 0.0) -> dict[str, Any] | None:
    """Final KL and Cov_N against a length axis `by` (a sweep column) in sweep directory d:
    per-value medians over seeds (and each value's final KL per seed, "kl_seeds"), the linear
    fit of KL, and the spread of the Cov_N medians
    with its tolerance (`flatness_tolerance`: spread_mult × the pooled Wilson half-width or
    rel_floor × the mean of the medians, the larger). None if no results."""
    df = read_metrics(d)
    col = f"cov@{N}"
    if df.empty or col not in df.columns or by not in df.columns:
        return None
    status = read_summaries(d)["status"]
    fin = finals(df, by)
    Hs = sorted(int(h) for h in fin[by].unique())
    kl_seeds = [fin.loc[fin[by] == h, "kl"].to_numpy(float) for h in Hs]
    kl_med = [float(np.nanmedian(v)) for v in kl_seeds]
    cov_med = [float(np.nanmedian(fin.loc[fin[by] == h, col])) for h in Hs]
    seeds = [int(fin.loc[fin[by] == h, "kl"].notna().sum()) for h in Hs]
    slope, icpt, r2 = linear_fit(Hs, kl_med)
    t = read_config(d).train
    m, alpha = t.eval_samples, t.interval_alpha
    hw = [wilson_half_width(float(np.nanmean(fin.loc[fin[by] == h, col])), s * m, alpha)
          for h, s in zip(Hs, seeds, strict=True)]
    tol, tol_by = flatness_tolerance(float(np.mean(hw)), float(np.mean(cov_med)), spread_mult,
                                     rel_floor)
    return {
        "H": Hs, "kl_med": kl_med, "kl_seeds": kl_seeds, "cov_med": cov_med, "seeds": seeds,
        "slope": slope, "icpt": icpt, "r2": r2,
        "expo": loglog_fit(Hs, kl_med)[0],
        "r2_sqrt": linear_fit(Hs, np.sqrt(Hs))[2],
        "tol": tol, "tol_by": tol_by,
        "spread": max(cov_med) - min(cov_med),
        "eval_samples": m, "alpha": alpha,
        "missing": int((~status.isin(["done", "diverged"])).sum()),
    }
