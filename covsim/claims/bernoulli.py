"""Claim "bernoulli" (arXiv 2510.15020v2, §3: the Bernoulli missing-mass example): the MLE's KL has
infinite mean at every n, yet w.p. ≥ 1 − δ its coverage is Cov_N ≲ log(1/δ)/n for all N ≥ 2.

Setting: Π = {Ber(p)}, p ∈ (0, ½) (the MLE is taken over the closure [0, ½]: p̂ = min(k/n, ½),
k = number of ones in n draws), π_D = Ber(p⋆). Everything per dataset is exact and closed form
(`covsim.tasks.bernoulli`): KL(Ber(p⋆) ‖ Ber(p̂)) = ∞ iff p̂ = 0, which has probability
(1 − p⋆)^n > 0 at every n, so E[KL] = ∞.

Coverage. For N ≥ 2 the y = 0 side never counts ((1−p⋆)/(1−p̂) < 2 since p̂ ≤ ½), so
Cov_N = p⋆ · 1{p⋆/p̂ ≥ N} ≤ p⋆ · 1{p̂ ≤ p⋆/2}. By the Chernoff bound,
P(p̂ ≤ p⋆/2) ≤ exp(−n·kl(p⋆/2 ‖ p⋆)) ≤ exp(−n p⋆ (1 − ln 2)/2), using
kl(a‖b) ≥ a ln(a/b) + b − a. Hence, with C = 2/(1 − ln 2) ≈ 6.52:
if n p⋆ ≥ C log(1/δ) then Cov_N = 0 w.p. ≥ 1 − δ, and otherwise Cov_N ≤ p⋆ < C log(1/δ)/n.
So the (1 − δ)-quantile of Cov_N over datasets is ≤ C·log(1/δ)/n for every n, δ and N ≥ 2 —
the case study's "Cov_N ≲ log(1/δ)/n" with its constant made explicit. The check compares
the empirical quantile over the simulated datasets with that bound.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from covsim.claims import Claim, Dirs, Verdict, register
from covsim.results import read_metrics
from covsim.stats import cov_columns, wilson_interval

#: The explicit constant of the bound (module docstring): C = 2 / (1 − ln 2).
C_BOUND = 2.0 / (1.0 - math.log(2.0))
#: The δ's at which the (1 − δ)-quantile of Cov_N is checked.
DELTAS = (0.1, 0.01)
#: Level of the interval that must contain the exact P(p̂ = 0) (a false alarm needs a 3.3σ
#: deviation at one of the n's: probability ≤ 1e-3 each).
Z_CHECK = 3.29
#: Datasets sampled per compiled call (bounds memory to CHUNK·n draws).
CHUNK = 256


# ---- the check -------------------------------------------------------------------------------


def upper_quantile(x, delta: float) -> float:
    """The (1 − δ)-quantile of a sample: the smallest value v with a fraction ≥ 1 − δ at or
    below it (no interpolation)."""
    return float(np.quantile(np.asarray(x, np.float64), 1 - delta, method="inverted_cdf"))


def quantile_table(df) -> dict[tuple[int, float, float], float]:
    """{(n, N, δ): empirical (1 − δ)-quantile of Cov_N over the datasets at n}."""
    out = {}
    for n, g in df.groupby("n"):
        for N, c in cov_columns(df):
            for delta in DELTAS:
                out[(int(n), N, delta)] = upper_quantile(g[c], delta)
    return out


def check(dirs: Dirs) -> Verdict:
    df = read_metrics(dirs["bernoulli"])
    if df.empty:
        return Verdict("bernoulli", False, "no finished runs", "results on disk")
    p_star = float(df["p_star"].iloc[0])
    ns = sorted(int(n) for n in df["n"].unique())
    cols = cov_columns(df)
    Ns = [N for N, _ in cols]
    q = quantile_table(df)
    # Cov_N: (1 − δ)-quantile ≤ C·log(1/δ)/n everywhere
    ratios = {key: v / (C_BOUND * math.log(1 / key[2]) / key[0]) for key, v in q.items()}
    worst = max(ratios, key=ratios.get)
    cov_ok = all(N >= 2 for N in Ns) and ratios[worst] <= 1.0
    # KL: P(p̂ = 0) = (1 − p⋆)^n > 0 (E[KL] = ∞) and the simulation agrees with it
    frac_inf, agree = {}, True
    for n, g in df.groupby("n"):
        m = len(g)
        k = int(np.sum(np.isinf(g["kl"])))
        lo, hi = wilson_interval(k, m, Z_CHECK)
        exact = float(g["p_zero_exact"].iloc[0])
        frac_inf[int(n)] = (k / m, exact)
        agree &= lo <= exact <= hi
    small = [n for n in ns if n <= 1 / p_star]
    large = [n for n in ns if n >= 10 / p_star]
    kl_ok = agree and all(frac_inf[n][0] > 0 for n in small) and all(frac_inf[n][1] > 0 for n in ns)
    grid_ok = bool(small) and bool(large)
    finite = df[np.isfinite(df["kl"])]
    numbers = {
        "p_star": p_star,
        "n": ns,
        "N": Ns,
        "deltas": list(DELTAS),
        "C": C_BOUND,
        "quantiles": {f"n={n},N={N:g},delta={d:g}": v for (n, N, d), v in q.items()},
        "worst_ratio_to_bound": ratios[worst],
        "worst_at": list(worst),
        "frac_kl_inf": {n: v[0] for n, v in frac_inf.items()},
        "p_zero_exact": {n: v[1] for n, v in frac_inf.items()},
        "finite_kl_q99": {
            int(n): float(np.quantile(g["kl"], 0.99)) for n, g in finite.groupby("n")
        },
        "datasets_per_n": int(df.groupby("n").size().min()),
    }
    fi = ", ".join(f"{frac_inf[n][0]:.3f}" for n in ns)
    stat = (
        f"p⋆ = {p_star:g}, n = {ns}: P(KL = ∞) = {fi} (exact (1−p⋆)^n > 0 at every n ⇒ "
        f"E[KL] = ∞; simulation within its {Z_CHECK}σ interval: {agree}); "
        f"max over n, N ∈ {[f'{N:g}' for N in Ns]}, δ ∈ {list(DELTAS)} of "
        f"q_(1−δ)(Cov_N) / (C·log(1/δ)/n) = {ratios[worst]:.3f} (at n={worst[0]}, "
        f"N={worst[1]:g}, δ={worst[2]:g})"
    )
    thr = (
        f"q_(1−δ)(Cov_N) ≤ C·log(1/δ)/n with C = 2/(1 − ln 2) = {C_BOUND:.2f} for every n, "
        f"N ≥ 2, δ; positive fraction of p̂ = 0 at every n ≤ 1/p⋆; grid has n ≤ 1/p⋆ and "
        f"n ≥ 10/p⋆"
    )
    note = "" if grid_ok else "the n grid does not span both n ≤ 1/p⋆ and n ≥ 10/p⋆"
    return Verdict("bernoulli", cov_ok and kl_ok and grid_ok, stat, thr, numbers, note)


# ---- the figure ------------------------------------------------------------------------------


def figure(dirs: Dirs, out: Path) -> list[Path]:
    from matplotlib.ticker import NullFormatter

    from covsim import plots

    df = read_metrics(dirs["bernoulli"])
    p_star = float(df["p_star"].iloc[0])
    ns = np.sort(df["n"].unique()).astype(float)
    m = int(df.groupby("n").size().min())
    fig, axs = plots.panels(3)
    ax = axs[0]
    fr = []
    for n in ns:
        g = df[df["n"] == n]
        k = int(np.sum(np.isinf(g["kl"])))
        fr.append((k / len(g), *wilson_interval(k, len(g))))
    fr = np.array(fr)
    ax.errorbar(
        ns,
        fr[:, 0],
        yerr=[fr[:, 0] - fr[:, 1], fr[:, 2] - fr[:, 0]],
        marker="o",
        capsize=3,
        ls="none",
        color="C3",
        label=f"simulated ({m} datasets, 95% CI)",
    )
    nn = np.geomspace(ns[0], ns[-1], 200)
    plots.theory_line(ax, nn, (1 - p_star) ** nn, "exact (1 − p⋆)^n")
    ax.axvline(1 / p_star, color="0.6", lw=1, ls=":", label="n = 1/p⋆")
    ax.set(
        xscale="log",
        xlabel="sample size n",
        ylabel="P(p̂ = 0) = P(KL = ∞)",
        title=f"Ber(p⋆ = {p_star:g}): E[KL] = ∞ at every n",
    )
    ax.legend(fontsize=7)
    ax = axs[1]
    top = None
    for i, lev in enumerate((0.5, 0.9, 0.99)):
        v = np.array([upper_quantile(df[df["n"] == n]["kl"], 1 - lev) for n in ns])
        ok = np.isfinite(v) & (v > 0)
        ax.plot(
            ns,
            np.where(ok, v, np.nan),
            marker="os^"[i],
            color=f"C{i}",
            label=f"{lev:.0%} quantile of KL (▲ = ∞)",
        )
        inf = np.isinf(v)
        if inf.any():  # drawn at the top edge: x in data, y in axes units
            ax.plot(
                ns[inf],
                np.full(inf.sum(), 0.97 - 0.04 * i),
                "^",
                color=f"C{i}",
                ms=8,
                transform=ax.get_xaxis_transform(),
                clip_on=False,
            )
        top = v[ok].max() if ok.any() and top is None else top
    plots.theory_line(ax, nn, 1 / (2 * nn), "1/(2n) (asymptotic KL of a 1-parameter MLE)")
    plots.loglog(
        ax,
        "sample size n",
        "KL(π_D ‖ π̂) [nats] over datasets",
        "KL quantiles: infinite while P(p̂ = 0) exceeds 1 − level",
    )
    ax.legend(fontsize=7, loc="lower left")
    ax = axs[2]
    q = quantile_table(df)
    floor = 0.3 * min(C_BOUND * math.log(1 / max(DELTAS)) / ns[-1], p_star / 10)
    for j, d in enumerate(DELTAS):
        color = f"C{3 + j}"
        for i, (N, _) in enumerate(cov_columns(df)):
            v = np.array([q[(int(n), N, d)] for n in ns])
            pos = v > 0
            shift = 1.04 ** (i - 1) * 1.12**j  # small offsets: the curves often coincide
            ax.plot(
                ns,
                np.where(pos, v, np.nan) * shift,
                marker="os^"[i % 3],
                color=color,
                label=f"Cov_{N:g}, δ = {d:g}",
            )
            ax.plot(
                ns[~pos],
                np.full((~pos).sum(), floor * 1.25 ** (3 * j + i)),
                marker="os^"[i % 3],
                ls="none",
                color=color,
                mfc="none",
            )
        plots.theory_line(
            ax, nn, math.log(1 / d) / nn, f"log(1/δ)/n, δ = {d:g}", color=color, ls=":"
        )
        plots.theory_line(
            ax,
            nn,
            C_BOUND * math.log(1 / d) / nn,
            f"C·log(1/δ)/n, C = {C_BOUND:.2f}, δ = {d:g}",
            color=color,
        )
    ax.axhline(p_star, color="0.5", lw=1, ls=":", label="p⋆ (Cov_N ≤ p⋆)")
    plots.loglog(
        ax,
        "sample size n",
        "(1 − δ)-quantile of Cov_N over datasets",
        "coverage quantiles (open markers at the bottom: = 0)",
    )
    ax.set_ylim(top=ax.get_ylim()[1] * 30)  # room for the legend above the theory lines
    ax.legend(fontsize=7, ncol=2, loc="upper right")
    for a in axs:
        a.grid(alpha=0.3, which="both")
        a.set_xticks(ns, [f"{n:g}" for n in ns])
        a.xaxis.set_minor_formatter(NullFormatter())
    return [plots.save(fig, Path(out) / "bernoulli.png")]


register(
    Claim(
        name="bernoulli",
        title="Bernoulli missing mass: E[KL] = ∞ at every n, yet the (1−δ)-quantile of Cov_N "
        "is ≤ C·log(1/δ)/n (C = 2/(1 − ln 2))",
        paper_ref="arXiv 2510.15020v2, §3 (Bernoulli missing-mass example)",
        kind="identity check",
        experiments=("bernoulli",),
        check=check,
        figure=figure,
    )
)
