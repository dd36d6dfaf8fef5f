"""Claim "variance" (arXiv 2510.15020v2, Thm. 4.2; σ⋆² of Eq. 8; Prop. K.1): for AR linear
models with Θ the ℓ2 unit ball and ‖ϕ‖ ≤ B (any dimension), the MLE obeys

    E[Cov_N(π̂)] ≲ √(σ⋆² / (n log N)) + B²/n,

with no explicit H: the inherent variance σ⋆² plays the role of the sequence length, and
Prop. K.1 shows the dependence on it is necessary. Kind: theorem shape. An upper bound with an
unknown constant is tested by its shape:

* one constant C over the whole grid: C = max Cov_N / bound, stated (bound = the right-hand side
  at constant 1, which must be informative: ≤ BOUND_MAX everywhere);
* the constant a point needs, C(point) = max_N Cov_N / bound_N, does not grow with H at fixed
  σ⋆² (the axis the theorem says is irrelevant) nor with n (Cov_N decays at least as fast as
  the bound; a faster decay passes), and C_N = max over points of Cov_N / bound_N does not
  grow with N (Cov_N falls at least like the bound's 1/√log N);
* Cov_N grows with σ⋆² at fixed n and H (the dependence Prop. K.1 says is necessary);
* for contrast, the KL of the same fits grows with H.

Experiment (experiments/variance.toml): the "pivotal" instance (`covsim.tasks.paper.
pivotal_task`, whose docstring derives it), three panels from one base point: "sigma" (k
pivotal positions, σ⋆² = k·b²), "n", and "H" (σ⋆² fixed). Runner "variance_mle"
(`covsim.runners.exact_mle`): exact projected MLE, exact KL, Cov_N on fresh responses with
exact log-probabilities (Monte Carlo over responses only).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from covsim import plots
from covsim.claims import Claim, Dirs, Verdict, register
from covsim.results import read_metrics, read_summaries
from covsim.stats import cov_columns, log_log_slopes

NAME = "variance"
#: The bound at constant 1 must stay ≤ this on every grid point: an informative bound (with
#: a constant up to 2 it would still exclude Cov_N = 1), not the vacuous regime σ⋆² ≳ n log N.
BOUND_MAX = 0.5
#: The needed constant C(x) may grow along x ∈ {H, n} and C_N along N at most like x^FLAT_TOL
#: (a factor ≤ 1.23 over the quick grid's ×6.4 in H, ×8 in n and in N): the bound has no H at
#: all, decays like 1/√n or faster in n and like 1/√log N in N, so an upper-bound-respecting
#: Cov_N gives a slope ≤ 0 up to sampling noise; 0.1 leaves room for that noise.
FLAT_TOL = 0.1
#: Every test is one-sided at Z bootstrap s.d. over seeds (97.7%): "no growth" needs the upper
#: end slope + Z·s.d. ≤ FLAT_TOL (an underpowered check FAILs instead of passing by noise; a
#: faster decay passes), "grows" needs the lower end slope − Z·s.d. > 0 (Cov_N with σ⋆², and
#: for contrast KL with H).
Z = 2.0
#: The H panel's premise: σ⋆² within this relative spread of its mean.
SIGMA_RTOL = 0.02
BOOTSTRAP = 1000
AXIS = {"sigma": "sigma2", "n": "n", "H": "H"}


# ---- the bound and the constants ---------------------------------------------------------------


def bound(sigma2, n, B, N):
    """Thm 4.2's right-hand side at constant 1: √(σ⋆²/(n log N)) + B²/n (broadcasts)."""
    sigma2, n, B, N = (np.asarray(a, float) for a in (sigma2, n, B, N))
    return np.sqrt(sigma2 / (n * np.log(N))) + B**2 / n


def _with_bounds(df: pd.DataFrame, Ns: list[float]) -> pd.DataFrame:
    """df with a column bound@N (the bound at constant 1 of each record) for every N."""
    return df.assign(**{f"bound@{N:g}": bound(df["sigma2"], df["n"], df["B"], N) for N in Ns})


def _panel(df: pd.DataFrame, panel: str) -> pd.DataFrame:
    return df[df["task.panel"] == panel]


def _wide(df: pd.DataFrame, x: str, cols: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per-seed values of `cols` at each x: (xs (P,), Y (seeds, P, len(cols))); seeds missing a
    point are dropped (the panels nest their data per seed, so seeds are paired along x)."""
    pts = []
    for c in cols:
        w = df.pivot_table(index="seed", columns=x, values=c, aggfunc="first").sort_index(axis=1)
        pts.append(w)
    keep = pts[0].dropna().index
    xs = pts[0].columns.to_numpy(float)
    return xs, np.stack([w.loc[keep].to_numpy(float) for w in pts], axis=-1)


def _boot_means(Y: np.ndarray, boot: int = BOOTSTRAP) -> np.ndarray:
    """Means over seeds of B bootstrap resamples of the seeds: (boot, ...) from Y (seeds, ...)."""
    rng = np.random.default_rng(0)
    return Y[rng.integers(0, Y.shape[0], (boot, Y.shape[0]))].mean(1)


def _slope_with_sd(xs: np.ndarray, values: np.ndarray, boots: np.ndarray) -> tuple[float, float]:
    """Log-log slope of `values` (P,) on xs and its bootstrap s.d. from `boots` (B, P); NaN if a
    value is ≤ 0 (bootstrap draws with a value ≤ 0 are dropped)."""
    if not np.all(values > 0):
        return math.nan, math.nan
    ok = boots[np.all(boots > 0, axis=1)]
    sd = float(np.std(log_log_slopes(xs, ok))) if len(ok) > 1 else math.nan
    return float(log_log_slopes(xs, values)), sd


def needed_constant(df: pd.DataFrame, x: str, Ns: list[float]) -> dict:
    """C(x) = max_N E[Cov_N]/bound_N at each x of a panel, its log-log slope on x with the
    bootstrap s.d. over seeds: {"x", "C", "slope", "sd", "ratio" (P, len(Ns))}."""
    cols = [f"cov@{N:g}" for N in Ns]
    xs, Y = _wide(_with_bounds(df, Ns), x, [*cols, *(f"bound@{N:g}" for N in Ns)])
    cov, b = Y[..., : len(Ns)], Y[0, :, len(Ns):]  # (seeds, P, N), (P, N): b is seed-free
    ratio = cov.mean(0) / b
    boot = (_boot_means(cov) / b).max(-1)  # (boot, P)
    C = ratio.max(-1)
    slope, sd = _slope_with_sd(xs, C, boot)
    return {"x": xs, "C": C, "slope": slope, "sd": sd, "ratio": ratio, "bound": b}


def mean_slope_paired(df: pd.DataFrame, x: str, col: str) -> tuple[float, float, np.ndarray]:
    """Log-log slope of the mean over seeds of `col` on x, bootstrap s.d. (seeds resampled
    jointly across x), means: (slope, sd, means (P,))."""
    xs, Y = _wide(df, x, [col])
    m = Y[..., 0].mean(0)
    s, sd = _slope_with_sd(xs, m, _boot_means(Y[..., 0]))
    return s, sd, m


# ---- the check ---------------------------------------------------------------------------------


def check(dirs: Dirs) -> Verdict:
    d = Path(dirs[NAME])
    df = read_metrics(d)
    need = {"task.panel", "sigma2", "n", "H", "B", "kl"}
    if df.empty or not need <= set(df.columns):
        return Verdict(NAME, False, "no results on disk", "panels sigma, n and H", note=str(d))
    missing = int((~read_summaries(d)["status"].isin(["done"])).sum())
    panels = {p: _panel(df, p) for p in AXIS}
    if any(g.empty for g in panels.values()):
        absent = [p for p, g in panels.items() if g.empty]
        return Verdict(NAME, False, f"panel(s) {absent} have no results", "panels sigma, n, H")
    Ns = [N for N, _ in cov_columns(df)]
    if len(Ns) < 2:
        return Verdict(NAME, False, f"Cov_N at N = {Ns} only", "at least two N")
    N0 = f"cov@{Ns[0]:g}"
    # one constant over the grid, and the bound at constant 1 (informative?)
    b_all = bound(df["sigma2"], df["n"], df["B"], np.asarray(Ns)[:, None])  # (N, rows)
    bound_max = float(np.max(b_all))
    consts = {p: needed_constant(g, AXIS[p], Ns) for p, g in panels.items()}
    C = float(max(np.max(c["ratio"]) for c in consts.values()))
    # C_N over every point of every panel: no growth in N
    C_N = np.max(np.concatenate([c["ratio"] for c in consts.values()]), axis=0)  # (N,)
    boots_N = []
    for p, g in panels.items():
        cols = [f"cov@{N:g}" for N in Ns]
        _, Y = _wide(g, AXIS[p], [*cols])
        boots_N.append(_boot_means(Y) / consts[p]["bound"][None])  # (boot, P, N)
    boot_CN = np.concatenate(boots_N, axis=1).max(1)  # (boot, N)
    N_slope, N_sd = _slope_with_sd(np.asarray(Ns), C_N, boot_CN)
    # growth with σ⋆² (Prop. K.1) and, for contrast, KL with H
    s_slope, s_sd, s_means = mean_slope_paired(panels["sigma"], "sigma2", N0)
    kl_slope, kl_sd, kl_means = mean_slope_paired(panels["H"], "H", "kl")
    sig_H = panels["H"].groupby("H")["sigma2"].first()
    sig_dev = float(np.max(np.abs(sig_H / sig_H.mean() - 1)))

    def flat(slope, sd):
        return bool(np.isfinite(slope) and np.isfinite(sd) and slope + Z * sd <= FLAT_TOL)

    def grows(slope, sd):
        return bool(np.isfinite(slope) and np.isfinite(sd) and slope - Z * sd > 0)

    tests = {
        "bound_informative": bound_max <= BOUND_MAX,
        "no_growth_in_H": flat(consts["H"]["slope"], consts["H"]["sd"]),
        "no_growth_in_n": flat(consts["n"]["slope"], consts["n"]["sd"]),
        "no_growth_in_N": flat(N_slope, N_sd),
        "grows_with_sigma2": grows(s_slope, s_sd),
        "kl_grows_with_H": grows(kl_slope, kl_sd),
        "sigma2_fixed_in_H": sig_dev <= SIGMA_RTOL,
        "complete": missing == 0,
    }
    cH, cn = consts["H"], consts["n"]
    fmt = lambda xs, f=".3f": ", ".join(f"{v:{f}}" for v in xs)  # noqa: E731
    stat = (
        f"Cov_N ≤ C·(√(σ⋆²/(n log N)) + B²/n) on the whole grid with fitted C = {C:.3f} "
        f"(bound at constant 1 ≤ {bound_max:.3f}); needed constant C(H) = {fmt(cH['C'])} at "
        f"H = {fmt(cH['x'], 'g')} (σ⋆² = {sig_H.mean():.2f} ±{100 * sig_dev:.1f}%): slope "
        f"{cH['slope']:+.3f} ± {cH['sd']:.3f}; C(n) = {fmt(cn['C'])} at n = {fmt(cn['x'], 'g')}: "
        f"slope {cn['slope']:+.3f} ± {cn['sd']:.3f}; C_N = {fmt(C_N)} at N = {fmt(Ns, 'g')}: "
        f"slope {N_slope:+.3f} ± {N_sd:.3f}; Cov_{Ns[0]:g} vs σ⋆²: slope {s_slope:+.2f} ± "
        f"{s_sd:.2f} ({fmt(s_means, '.4f')}); KL vs H: slope {kl_slope:+.2f} ± {kl_sd:.2f} "
        f"({fmt(kl_means)})"
    )
    thr = (
        f"Thm 4.2's shape: bound at constant 1 ≤ {BOUND_MAX} everywhere; slopes of C(H), C(n), "
        f"C_N: slope + {Z:g} bootstrap s.d. ≤ {FLAT_TOL} (faster decay passes); Cov_N grows "
        f"with σ⋆² (Prop. K.1: slope − {Z:g} s.d. > 0); for contrast KL grows with H "
        f"(slope − {Z:g} s.d. > 0) at σ⋆² fixed within {100 * SIGMA_RTOL:g}%"
    )
    failed = [t for t, ok in tests.items() if not ok]
    notes = [f"{int(df['seed'].nunique())} seeds, {int(df['eval_samples'].iloc[0])} eval "
             "responses per fit" if "eval_samples" in df else ""]
    if failed:
        notes.append("failed: " + ", ".join(failed))
    if "converged" in df and not df["converged"].all():
        notes.append(f"{int((~df['converged'].astype(bool)).sum())} fit(s) stopped before the "
                     "tolerance")
    numbers = {
        "fitted_C": C,
        "bound_max": bound_max,
        "N": Ns,
        "C_of_H": dict(zip(cH["x"].tolist(), cH["C"].tolist(), strict=True)),
        "C_of_H_slope": cH["slope"], "C_of_H_sd": cH["sd"],
        "C_of_n": dict(zip(cn["x"].tolist(), cn["C"].tolist(), strict=True)),
        "C_of_n_slope": cn["slope"], "C_of_n_sd": cn["sd"],
        "C_of_N": dict(zip(Ns, C_N.tolist(), strict=True)),
        "C_of_N_slope": N_slope, "C_of_N_sd": N_sd,
        "sigma2": panels["sigma"].groupby("sigma2").size().index.tolist(),
        f"cov{Ns[0]:g}_vs_sigma2": s_means.tolist(),
        "cov_vs_sigma2_slope": s_slope, "cov_vs_sigma2_sd": s_sd,
        "kl_vs_H": kl_means.tolist(), "kl_vs_H_slope": kl_slope, "kl_vs_H_sd": kl_sd,
        "sigma2_rel_dev_H": sig_dev,
        "tests": tests,
    }
    return Verdict(NAME, not failed, stat, thr, numbers, "; ".join(n for n in notes if n))


# ---- the figure --------------------------------------------------------------------------------


def figure(dirs: Dirs, out_folder: Path) -> list[Path]:
    """Four panels: Cov_N against σ⋆², n and H (means over seeds with 95% bootstrap bands,
    the fitted C·bound dashed), and the KL against H on the same fits."""
    d = Path(dirs[NAME])
    df = read_metrics(d)
    Ns = [N for N, _ in cov_columns(df)]
    C = check(dirs).numbers.get("fitted_C", math.nan)
    fig, axs = plots.panels(4)
    labels = {"sigma": "inherent variance σ⋆² (exact; k pivotal positions)",
              "n": "sample size n (sequences)", "H": "sequence length H (σ⋆² fixed)"}
    for ax, p in zip(axs[:3], AXIS, strict=True):
        g = _panel(df, p)
        x = AXIS[p]
        for i, N in enumerate(Ns):
            xs, Y = _wide(_with_bounds(g, [N]), x, [f"cov@{N:g}", f"bound@{N:g}"])
            m = Y[..., 0].mean(0)
            lo, hi = np.percentile(_boot_means(Y[..., 0]), [2.5, 97.5], axis=0)
            ok = m > 0
            (line,) = ax.plot(xs[ok], m[ok], marker="os^D"[i % 4], ms=4, label=f"Cov_{N:g}")
            # a log axis cannot show a band end at 0: lower ends are drawn at ≥ mean/10
            ax.fill_between(xs[ok], np.maximum(lo[ok], m[ok] / 10), hi[ok], alpha=0.15,
                            color=line.get_color())
            ax.plot(xs, C * Y[0, :, 1], "--", lw=1, color=line.get_color())
        plots.loglog(ax, labels[p], "Cov_N (π_D mass with π_D/π̂ ≥ N)")
        plots.grid_ticks(ax, xs, ".4g")
        ax.grid(alpha=0.3, which="both")
    axs[0].set_title("grows with σ⋆² (Prop. K.1)")
    axs[1].set_title("decays at least like the bound in n")
    axs[2].set_title("no growth with H at fixed σ⋆²")
    axs[0].legend(fontsize=7, title=f"dashed: C·bound_N, C = {C:.3f}", title_fontsize=7)
    g = _panel(df, "H")
    xs, Y = _wide(g, "H", ["kl"])
    m = Y[..., 0].mean(0)
    lo, hi = np.percentile(_boot_means(Y[..., 0]), [2.5, 97.5], axis=0)
    axs[3].plot(xs, m, "o-", color="C3", label="sequence KL (exact), mean over seeds")
    axs[3].fill_between(xs, lo, hi, color="C3", alpha=0.15)
    plots.loglog(axs[3], "sequence length H (σ⋆² fixed)", "KL(π_D ‖ π̂) [nats]")
    axs[3].set_title("same fits: KL grows with H")
    plots.grid_ticks(axs[3], xs, ".4g")
    axs[3].grid(alpha=0.3, which="both")
    axs[3].legend(fontsize=7)
    seeds = int(df["seed"].nunique())
    fig.suptitle(f"Thm 4.2: exact MLE on an AR linear model (ℓ2 ball, B = {df['B'].iloc[0]:g}), "
                 f"{seeds} seeds; bands: 95% bootstrap over seeds")
    return [plots.save(fig, Path(out_folder) / f"{NAME}.png")]


register(Claim(
    name=NAME,
    title="Exact MLE: Cov_N under one C·(√(σ⋆²/(n log N)) + B²/n), growing with σ⋆², not "
          "with H",
    paper_ref="arXiv 2510.15020v2, Thm. 4.2; σ⋆² of Eq. 8; Prop. K.1",
    kind="theorem shape",
    experiments=(NAME,),
    check=check,
    figure=figure,
))
