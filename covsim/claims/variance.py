"""Claim "variance" (Thm 4.2; notes §2.7, §3.3): at fixed H and n, the MLE's Cov_N grows with
the inherent variance σ⋆² — the "effective sequence length" that replaces H in the bound

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
import tomllib
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from covsim import plots
from covsim.claims import Claim, Dirs, Verdict, register
from covsim.claims.horizon import wilson_half_width
from covsim.config import Config
from covsim.evaluate import evaluate, make_eval_set
from covsim.experiment import build_task, runner
from covsim.mle import fit_loglinear_mle
from covsim.models.loglinear import REQUIRED
from covsim.results import RunResult, read_metrics, read_summaries
from covsim.sweep import Cell

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


# ---- runner ----------------------------------------------------------------------------------


@jax.jit
def _score(theta, task, eval_set, Ns):
    """KL and Cov_N (with Wilson interval) of π_θ on the eval set (jitted: one compile per
    task shape, reused by every cell and seed)."""
    model = lambda x, y: task.next_token_log_probs_theta(theta, x, y)
    ev = evaluate(task, model, eval_set, Ns=Ns)
    return ev.kl, ev.cov, ev.cov_lo, ev.cov_hi


@runner("mle")
def run_mle(cfg: Config, cell: Cell) -> RunResult:
    """For each seed: n = train.n_train samples, the exact MLE over Θ (`[optim]` may set l2,
    tol, max_iter), KL and Cov_N on train.eval_samples fresh samples. One record per seed."""
    if cfg.model.kind != "loglinear":
        raise ValueError(f"model.kind: runner 'mle' fits a 'loglinear' learner, got "
                         f"{cfg.model.kind!r}")
    unknown = sorted(set(cfg.optim.params) - set(SOLVER_KEYS))
    if unknown:
        raise ValueError(f"optim: unknown key(s) {unknown} for runner 'mle'; allowed: "
                         f"{', '.join(SOLVER_KEYS)}")
    if cfg.train.online or cfg.train.n_train is None:
        raise ValueError("train.n_train: runner 'mle' needs a fixed dataset size")
    task = build_task(cfg)
    missing = [a for a in (*REQUIRED, "features") if not hasattr(task, a)]
    if missing:
        raise ValueError(f"task.kind: runner 'mle' needs an AR linear task; "
                         f"{cfg.task.kind!r} lacks {missing}")
    n, m = cfg.train.n_train, cfg.train.eval_samples
    Ns = list(cfg.train.Ns)
    s2 = float(task.sigma_star_sq()) if hasattr(task, "sigma_star_sq") else math.nan
    records = []
    for seed in cell.seeds:
        k_data, k_eval = jax.random.split(jax.random.key(cell.rng_seed(seed)))
        x, y = task.sample(k_data, n)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # recorded as "converged" below
            theta, info = fit_loglinear_mle(task, x, y, **cfg.optim.params)
        kl, cov, lo, hi = _score(theta, task, make_eval_set(task, k_eval, m),
                                 jnp.asarray(Ns, jnp.float32))
        records.append({
            "seed": seed,
            "step": 1,  # one exact fit
            "sigma_star_sq": s2,
            "n": n,
            "kl": float(kl),
            "cov": dict(zip(Ns, np.asarray(cov).tolist(), strict=True)),
            "cov_lo": dict(zip(Ns, np.asarray(lo).tolist(), strict=True)),
            "cov_hi": dict(zip(Ns, np.asarray(hi).tolist(), strict=True)),
            "theta_norm": float(jnp.linalg.norm(theta)),
            "iterations": int(info["iterations"]),
            "converged": bool(info["converged"]),
        })
    return RunResult(records, {"sigma_star_sq": s2, "n": n})


# ---- check -----------------------------------------------------------------------------------


def spearman(x, y) -> float:
    """Spearman rank correlation with average ranks for ties (NaN if a side is constant)."""
    rx = pd.Series(np.asarray(x, float)).rank().to_numpy()
    ry = pd.Series(np.asarray(y, float)).rank().to_numpy()
    if np.ptp(rx) == 0 or np.ptp(ry) == 0:
        return math.nan
    return float(np.corrcoef(rx, ry)[0, 1])


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
    """(n, eval_samples, alpha, H) of the sweep in `d`, from its resolved config.toml."""
    cfg = tomllib.loads((d / "config.toml").read_text("utf-8"))
    t = cfg["train"]
    H = cfg["task"].get("H")
    return int(t["n_train"]), int(t["eval_samples"]), float(t.get("alpha", 0.05)), H


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
    paper_ref="Thm 4.2; σ⋆² (notes §2.7, §3.3)",
    experiments=(NAME,),
    check=check,
    figure=figure,
))
