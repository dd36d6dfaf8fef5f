"""Claim "variance" (arXiv 2510.15020v2, Thm. 4.2; σ⋆² of Eq. 8): at fixed H and n, the MLE's
Cov_N grows with the inherent variance σ⋆² — the "effective sequence length" that replaces H
in the bound

    E[Cov_N(π̂)] ≲ √(σ⋆² / (n log N)) + B²/n.

Experiment (experiments/variance.toml): `AutoregressiveLinear.random` with k pivotal positions
out of H (the others near-deterministic, adding only (H − k)·4B²ε/(1+ε)² to σ⋆²), so σ⋆²
grows with k at fixed H, d, B; the sweep runs over the sets of pivotal positions. Each seed
draws n sequences, fits the exact projected MLE (`covsim.mle.fit_loglinear_mle`) and scores
it with `covsim.evaluate` on fresh samples. σ⋆² is exact (`sigma_star_sq`).

Runner "mle": exact MLE of a LogLinear learner on any task with features (AR linear), one
record per seed (step = 1: one fit).
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from covsim import plots
from covsim.claims import Claim, Dirs, Verdict, register
from covsim.results import read_config, read_metrics, read_summaries
from covsim.stats import spearman, wilson_half_width

NAME = "variance"
N_CHECK = 2  # the N whose Cov_N the check and the figure use (must be in train.Ns)
#: Rank correlation of the per-σ⋆² medians with σ⋆²: with 8 levels and no association,
#: P(Spearman ρ ≥ 0.9) < 0.5%.
RHO_MIN = 0.9
#: Largest-σ⋆² minus smallest-σ⋆² median Cov_N must exceed this many combined pooled 95%
#: Wilson half-widths (the median's s.d. is ≈ 0.64 half-width: 3 × ≈ 4.7 s.d.).
GAP_MULT = 3.0
BAND = (1 / 16, 15 / 16)
#: fit_loglinear_mle's keyword arguments that `[optim]` may set.
SOLVER_KEYS = ("l2", "tol", "max_iter")


# ---- check -----------------------------------------------------------------------------------




def per_level(df: pd.DataFrame, col: str) -> pd.DataFrame:
    """Median, band and mean of `col` over seeds at each σ⋆²: columns sigma_star_sq, median,
    lo, hi, mean, seeds."""
    s = plots.summarize(df, "sigma_star_sq", col, q=BAND)
    means = df.groupby("sigma_star_sq")[col].mean()
    return s.assign(mean=s["sigma_star_sq"].map(means), seeds=s["n"]).drop(columns="n")


def theory_constant(s2, cov, n: int, N: float) -> float:
    """Least-squares c in cov ≈ c·√(σ⋆²/(n log N)) over the finite points."""
    s = np.sqrt(np.asarray(s2, float) / (n * math.log(N)))
    y = np.asarray(cov, float)
    ok = np.isfinite(s) & np.isfinite(y)
    return float(np.sum(s[ok] * y[ok]) / np.sum(s[ok] ** 2))


def _setup(d: Path) -> tuple[int, int, float, int | None]:
    """(n, eval_samples, alpha, H) of the sweep in `d`, from its typed config."""
    cfg = read_config(d)
    t = cfg.train
    return int(t.n_train), t.eval_samples, t.interval_alpha, cfg.task.H


def check(dirs: Dirs) -> Verdict:
    d = Path(dirs[NAME])
    df = read_metrics(d)
    col = f"cov@{N_CHECK}"
    if df.empty or col not in df.columns or "sigma_star_sq" not in df.columns:
        return Verdict(NAME, False, "no results on disk", f"Cov_{N_CHECK} per σ⋆² level",
                       note=str(d))
    missing = int((~read_summaries(d)["status"].isin(["done", "diverged"])).sum())
    n, m, alpha, _ = _setup(d)
    lv = per_level(df, col)
    s2, med = lv["sigma_star_sq"].to_numpy(float), lv["median"].to_numpy(float)
    rho = spearman(s2, med)
    hw = [wilson_half_width(p, k * m, alpha)
          for p, k in zip(lv["mean"], lv["seeds"], strict=True)]
    gap = med[-1] - med[0]
    gap_tol = GAP_MULT * math.hypot(hw[0], hw[-1])
    c = theory_constant(s2, lv["mean"].to_numpy(float), n, N_CHECK)
    unconv = int((~df["converged"].astype(bool)).sum()) if "converged" in df else 0
    passed = bool(len(s2) >= 3 and rho >= RHO_MIN and gap > gap_tol and missing == 0)
    fmt = lambda xs, f: ", ".join(f"{x:{f}}" for x in xs)
    statistic = (
        f"median Cov_{N_CHECK} = {fmt(med, '.4f')} at σ⋆² = {fmt(s2, '.1f')} (n = {n}): "
        f"Spearman ρ = {rho:.3f}, largest − smallest = {gap:.4f}; means ≈ "
        f"{c:.3f}·√(σ⋆²/(n log N))"
    )
    threshold = (f"ρ ≥ {RHO_MIN} and gap > {GAP_MULT:g} × combined pooled {1 - alpha:.0%} "
                 f"Wilson half-widths = {gap_tol:.4f}")
    notes = [f"median over {int(lv['seeds'].min())} seeds, {m} eval samples each"]
    if missing:
        notes.append(f"{missing} cell(s) without results")
    if unconv:
        notes.append(f"{unconv} fit(s) stopped before the tolerance")
    numbers = {
        "N": N_CHECK, "n": n, "eval_samples": m, "sigma_star_sq": s2.tolist(),
        f"cov{N_CHECK}_median": med.tolist(), "spearman": rho, "gap": gap,
        "gap_tolerance": gap_tol, "theory_constant": c,
        "kl_median": per_level(df, "kl")["median"].tolist(),
    }
    return Verdict(NAME, passed, statistic, threshold, numbers, "; ".join(notes))


# ---- figure ----------------------------------------------------------------------------------


def figure(dirs: Dirs, out_folder: Path) -> list[Path]:
    """Cov_N against σ⋆²: median over seeds with the 1/16–15/16 band and the mean (E[Cov_N] is
    what Thm 4.2 bounds), with the shape c·√(σ⋆²/(n log N)) dashed, c fitted to the means.
    Left linear axes (zeros and bands visible), right log-log (the power law)."""
    d = Path(dirs[NAME])
    df = read_metrics(d)
    n, m, _, H = _setup(d)
    col = f"cov@{N_CHECK}"
    lv = per_level(df, col)
    s2 = lv["sigma_star_sq"].to_numpy(float)
    med, mean = lv["median"].to_numpy(float), lv["mean"].to_numpy(float)
    c = theory_constant(s2, mean, n, N_CHECK)
    seeds = int(lv["seeds"].min())
    xs = np.geomspace(s2.min(), s2.max(), 100)
    theory = c * np.sqrt(xs / (n * math.log(N_CHECK)))

    fig, axs = plt.subplots(1, 2, figsize=(11.5, 4.4))
    for ax, log in zip(axs, (False, True), strict=True):
        plots.band_plot(ax, df, "sigma_star_sq", col, q=BAND, logy=log, logx=log, marker="o",
                        label=f"median over {seeds} seeds, band 1/16–15/16")
        ok = mean > 0 if log else np.isfinite(mean)
        ax.plot(s2[ok], mean[ok], "s", mfc="none", color="C3", label="mean over seeds")
        plots.theory_line(ax, xs, theory,
                          f"Thm 4.2 shape c·√(σ⋆²/(n log N)), c = {c:.3f} fitted to the means")
        zero = med <= 0
        if log and zero.any():  # log axes cannot show 0: mark those levels on the bottom edge
            ax.plot(s2[zero], np.zeros(zero.sum()), "v", color="C0", ms=8, clip_on=False,
                    transform=ax.get_xaxis_transform(), label="median = 0 (on the axis)")
        ax.set_xlabel("inherent variance σ⋆² (exact; varied by the number of pivotal tokens)")
        ax.set_ylabel(f"Cov_{N_CHECK} (π_D mass with π_D/π̂ ≥ {N_CHECK})")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, loc="upper left")
    axs[0].set_ylim(bottom=0)
    axs[0].set_title("linear axes", fontsize=9)
    axs[1].set_title("log-log axes", fontsize=9)
    fig.suptitle(f"Cov_N grows with σ⋆² at fixed H = {H}: exact MLE, AR linear model, "
                 f"n = {n}, {m} eval samples per seed", fontsize=10)
    return [plots.save(fig, Path(out_folder) / f"{NAME}.png")]


register(Claim(
    name=NAME,
    title="Cov_N grows with the inherent variance σ⋆² at fixed H",
    paper_ref="arXiv 2510.15020v2, Thm. 4.2; σ⋆² of Eq. 8",
    kind="theorem shape",
    experiments=(NAME,),
    check=check,
    figure=figure,
))
