"""Claim "prop_3_2" (Prop 3.2; notes §3.2, §3.7): on the paper's d = 1 instance the sequence KL
of a proper estimator grows linearly in H, w.p. ≥ 1/4 over datasets, while Cov_N stays below
the rare prompt's mass 1/(2n) whatever H is.

Instance (`AutoregressiveLinear.prop_3_2`): X = {0, 1}, µ(1) = 1/(2n), V = {−1, +1}, d = 1,
ϕ(0, ·) = 0, ϕ(1, y_{1:h}) = y_h, Θ = [−1, 1], θ⋆ = ±theta. The prompt "1" is absent from the
n training sequences w.p. (1 − 1/(2n))^n ≈ e^{−1/2} ≈ 0.61; the likelihood is then flat in θ
and the exact MLE (`covsim.mle`, started at 0 in flat directions) returns θ̂ = 0. Its KL is
then exactly

    KL_unseen = µ(1) · H · kl(Ber(σ(2θ⋆)) ‖ Ber(½)) = c_inst · H/n,   c_inst = kl(σ(2)‖½)/2 ≈ 0.164

for |θ⋆| = 1, and θ̂ = 0 is the minimax guess against θ⋆ ∈ {−1, +1}: no proper estimator can
guarantee more on this instance. **The paper's constant (KL ≥ H/(4n), i.e. c = 0.25) is
therefore not attained by this instance as transcribed**; the check measures the literal
fraction and reports it, and passes or fails on the precisely stated weaker statement

    P[KL ≥ c_inst · H/n] ≥ 1/4 for every H   (c_inst computed from the instance),

together with the H-scaling of the KL quantile that this probability is about, and Cov_N ≤ 1/(2n).

KL and Cov_N are exact (tokens are i.i.d. given the prompt: `iid_token_scores`).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from covsim.claims import Claim, Dirs, Verdict, register
from covsim.results import read_metrics
from covsim.stats import cov_columns, wilson_interval

#: The probability in Prop 3.2.
PROB = 0.25
#: KL equal to the threshold up to float64 rounding counts as reaching it (the unseen case sits
#: exactly on c_inst·H/n).
REL_TIE = 1e-9
#: |slope of log q_{1−PROB}(KL) on log H − 1| must be ≤ this (exactly 0 in theory: the quantile
#: is KL_unseen ∝ H as long as P(unseen) > PROB); the slack covers float32 fits.
SLOPE_TOL = 0.05
#: Wilson interval level for the fractions.
Z = 1.96


# ---- the check -------------------------------------------------------------------------------




def fractions(df) -> dict[str, dict]:
    """Per H: the fraction of runs reaching each threshold, worst case over θ⋆ (the proposition:
    *some* π_D makes the estimator pay), with Wilson intervals; and the (1 − PROB)-quantile."""
    out: dict[str, dict] = {"paper": {}, "inst": {}, "q": {}}
    for H, g in df.groupby("H"):
        best = {"paper": None, "inst": None}
        for _, gt in g.groupby("theta_star"):
            m = len(gt)
            for name, col in (("paper", "kl_paper"), ("inst", "kl_unseen")):
                k = int(np.sum(gt["kl"] >= gt[col] * (1 - REL_TIE)))
                if best[name] is None or k / m > best[name][0]:
                    best[name] = (k / m, *wilson_interval(k, m, Z), m)
        out["paper"][int(H)], out["inst"][int(H)] = best["paper"], best["inst"]
        out["q"][int(H)] = float(np.quantile(g["kl"], 1 - PROB))
    return out


def check(dirs: Dirs) -> Verdict:
    df = read_metrics(dirs["prop_3_2"])
    if df.empty:
        return Verdict("prop_3_2", False, "no finished runs", "results on disk")
    n = int(df["n"].iloc[0])
    f = fractions(df)
    Hs = sorted(f["inst"])
    c_inst = float(df["kl_unseen"].iloc[0] / df["H"].iloc[0] * n)
    inst_ok = all(f["inst"][H][1] >= PROB for H in Hs)  # Wilson lower end
    q = np.array([f["q"][H] for H in Hs])
    slope = float(np.polyfit(np.log(Hs), np.log(q), 1)[0]) if np.all(q > 0) else math.nan
    slope_ok = abs(slope - 1) <= SLOPE_TOL
    cols = cov_columns(df)
    cov_max = float(max(df[c].max() for _, c in cols))
    mu1 = 1.0 / (2 * n)
    cov_ok = cov_max <= mu1 * (1 + 1e-6)
    paper = {H: f["paper"][H][0] for H in Hs}
    paper_holds = all(f["paper"][H][1] >= PROB for H in Hs)
    numbers = {
        "n": n,
        "H": Hs,
        "c_inst": c_inst,
        "frac_kl_ge_c_inst_H_over_n": {H: f["inst"][H][0] for H in Hs},
        "wilson_lo_inst": {H: f["inst"][H][1] for H in Hs},
        "frac_kl_ge_H_over_4n": paper,
        "kl_quantile_0.75_times_n_over_H": {H: f["q"][H] * n / H for H in Hs},
        "kl_quantile_slope_vs_H": slope,
        "cov_max": cov_max,
        "mu1": mu1,
        "median_cov": {
            N: {int(H): float(v) for H, v in df.groupby("H")[c].median().items()} for N, c in cols
        },
        "seeds_per_theta": int(df.groupby(["H", "theta_star"]).size().min()),
    }
    fr = ", ".join(f"{f['inst'][H][0]:.2f}" for H in Hs)
    stat = (
        f"H = {Hs}: P[KL ≥ {c_inst:.3f}·H/n] = {fr} (worst θ⋆; Wilson lower ends ≥ "
        f"{min(f['inst'][H][1] for H in Hs):.2f}); 75%-quantile of KL ∝ H^{slope:.3f} "
        f"(= {np.mean([f['q'][H] * n / H for H in Hs]):.3f}·H/n); max Cov_N = {cov_max:.2e}; "
        f"paper's P[KL ≥ H/(4n)] = {', '.join(f'{paper[H]:.3f}' for H in Hs)}"
    )
    thr = (
        f"the paper's statement: Wilson lower end of P[KL ≥ H/(4n)] ≥ {PROB} for every H; "
        f"also checked, the weaker statement: the same for P[KL ≥ c_inst·H/n], "
        f"c_inst = kl(Ber(σ(2|θ⋆|))‖Ber(½))/2 = {c_inst:.3f} from the instance; "
        f"|quantile slope − 1| ≤ {SLOPE_TOL}; Cov_N ≤ µ(1) = 1/(2n) = {mu1:.4f}"
    )
    weaker = "holds" if inst_ok and slope_ok and cov_ok else "does NOT hold"
    note = (
        "paper's constant 1/4 "
        + ("HOLDS" if paper_holds else "does NOT hold")
        + f" on this instance: with ϕ ∈ [−1, 1] and Θ = [−1, 1] the best proper guess θ̂ = 0 "
        f"costs only {c_inst:.3f}·H/n < H/(4n) when the rare prompt is unseen; the weaker "
        f"statement (same H/n scaling, constant {c_inst:.3f}, Cov_N ≤ 1/(2n)) {weaker}"
    )
    numbers["weaker_statement_holds"] = bool(inst_ok and slope_ok and cov_ok)
    passed = paper_holds and inst_ok and slope_ok and cov_ok
    return Verdict("prop_3_2", passed, stat, thr, numbers, note)


# ---- the figure ------------------------------------------------------------------------------


def figure(dirs: Dirs, out: Path) -> list[Path]:
    from covsim import plots

    plt = plots.plt
    df = read_metrics(dirs["prop_3_2"])
    n = int(df["n"].iloc[0])
    Hs = np.sort(df["H"].unique()).astype(float)
    seeds = len(df) // len(Hs)
    fig, axs = plt.subplots(1, 3, figsize=(15, 4.4))
    ax = axs[0]
    plots.band_plot(
        ax, df, "H", "kl", q=(0.25, 0.75), label="KL: median, 25–75% band", marker="o", color="C3"
    )
    q = df.groupby("H")["kl"].quantile(1 - PROB)
    ax.plot(q.index, q.values, "v", color="C3", ms=7, label="75% quantile (exceeded w.p. ¼)")
    plots.theory_line(ax, Hs, Hs / (4 * n), "H/(4n) (Prop 3.2 as stated)")
    ku = df.groupby("H")["kl_unseen"].first()
    plots.theory_line(
        ax,
        ku.index,
        ku.values,
        "c_inst·H/n (θ̂ = 0, prompt unseen)",
        ls=":",
        color="C0",
        lw=2.5,
        zorder=4,
    )
    ax.set(
        xlabel="sequence length H (tokens)",
        ylabel="sequence KL(π_D ‖ π̂) [nats]",
        title=f"exact MLE, n = {n}, {seeds} datasets (both θ⋆)",
    )
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7)
    ax = axs[1]
    f = fractions(df)
    for name, lab, col in (("inst", "KL ≥ c_inst·H/n", "C0"), ("paper", "KL ≥ H/(4n)", "C3")):
        fr = np.array([f[name][int(H)][:3] for H in Hs])
        ax.errorbar(
            Hs,
            fr[:, 0],
            yerr=[fr[:, 0] - fr[:, 1], fr[:, 2] - fr[:, 0]],
            marker="o",
            capsize=3,
            color=col,
            label=f"P[{lab}] (worst θ⋆, 95% Wilson)",
        )
    ax.axhline(PROB, color="0.25", ls="--", lw=1.5, label="¼ (Prop 3.2)")
    ax.set(
        xlabel="sequence length H (tokens)",
        ylabel="fraction of datasets",
        ylim=(-0.02, 1.02),
        title="probability of a large KL",
    )
    ax.legend(fontsize=7)
    ax = axs[2]
    for i, (N, c) in enumerate(cov_columns(df)):
        plots.band_plot(
            ax,
            df,
            "H",
            c,
            q=(0.25, 0.75),
            label=f"Cov_{N:g}: median, 25–75%",
            marker="os^"[i % 3],
            color=f"C{i}",
        )
    ax.axhline(1 / (2 * n), color="0.25", ls="--", lw=1.5, label="µ(1) = 1/(2n)")
    ax.set(
        xlabel="sequence length H (tokens)",
        ylabel="Cov_N (fraction of π_D mass)",
        title="coverage stays below the rare prompt's mass",
    )
    ax.set_ylim(bottom=0, top=1.3 / (2 * n))
    ax.legend(fontsize=7, loc="lower right")
    for a in axs:
        a.grid(alpha=0.3)
        a.set_xticks(Hs, [f"{H:g}" for H in Hs])
    return [plots.save(fig, Path(out) / "prop_3_2.png")]


register(
    Claim(
        name="prop_3_2",
        title="Prop 3.2 (d = 1 instance): KL ≥ H/(4n) w.p. ≥ ¼ for every H while Cov_N stays "
        "≤ 1/(2n); also the same with the instance's constant c_inst ≈ 0.164",
        paper_ref="Prop 3.2 (notes §3.2, §3.7)",
        experiments=("prop_3_2",),
        check=check,
        figure=figure,
    )
)
