"""Claim "fig1" (arXiv 2510.15020v2, Fig. 1; setup in App. C): during fine-tuning, the
coverage profile predicts Pass@N better than KL does, and the tournament over checkpoints
picks a model with Pass@N at least that of the minimum-KL checkpoint.

Setup (experiments/fig1.toml, runner "train" with a [pretrain] stage): L = 8 layered graphs
with two branching layers. Pre-training on Fig. 1's pre-training mixture (G₁, G₂, G₃ with 1/3
each, fixed dataset), then fine-tuning online on G₁/G₂ = 0.9/0.1, whose class shows only
through a hidden parity feature of the prompt. Every fine-tuning checkpoint is scored against
π_D (KL, Cov_N, exact Pass@N: the mass on π_D's path; the paper does not say how it
measured it) and gives log π̂ of held-out π_D samples (select_logq.npy), on which
`covsim.select.tournament` runs, as the paper does, without access to π_D's density.

Checks, per seed, over the fine-tuning checkpoints (the pre-trained model is checkpoint 0):
* strength of the rank correlation: s_cov(N) = −Spearman(Pass@N, Cov_{N/2}) and s_kl(N) =
  −Spearman(Pass@N, KL) (positive = a lower value predicts a higher Pass@N; 0 when one side
  is constant). Median over seeds; the claim needs s_cov > s_kl for the larger N (8 and 12).
* selection: Pass@N of the tournament's pick (at threshold N/2; the paper does not state
  which N it used) minus Pass@N of the min-KL pick; the claim needs its median over
  seeds ≥ 0 for every N.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from covsim import plots
from covsim.claims import Claim, Dirs, Verdict, register
from covsim.results import artifact_paths, read_metrics, read_summaries
from covsim.select import min_kl, tournament
from covsim.stats import spearman

NAME = "fig1"
PASS_NS = (4, 8, 12)
LARGER_NS = (8, 12)
#: The paper's left-panel thresholds (Fig. 1, left: Cov2.0, 3.0, 4.0, 4.6, 5.7).
PROFILE_NS = (2.0, 3.0, 4.0, 4.6, 5.7)
BAND = (1 / 16, 15 / 16)
SELECT_FILE = "select_logq.npy"
#: Diagnosis only (the note of a FAIL): with Cov_2 above this when fine-tuning starts, the
#: pre-trained model does not cover the classes whose loss of coverage the figure is about.
START_COV_MAX = 0.5


def _cov_col(N: float) -> str:
    return f"cov@{N:g}"


def finetune_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The main (fine-tuning) stage's records, sorted by (seed, step)."""
    if "stage" in df.columns:
        df = df[df["stage"] == "main"]
    return df.sort_values(["seed", "step"])


def per_seed(d: Path) -> list[dict]:
    """For each seed: its fine-tuning curve and both picks for every N in PASS_NS."""
    raw = read_metrics(d)
    df = finetune_rows(raw)
    logq = {}  # seed -> (checkpoints, samples)
    for run, path in artifact_paths(d, SELECT_FILE).items():
        arr = np.load(path)
        # rows follow the cell's seed order, which is the order of its records (unsorted)
        seeds = list(dict.fromkeys(raw.loc[raw["run"] == run, "seed"]))
        for i, s in enumerate(seeds):
            logq[int(s)] = arr[i]
    out = []
    for s, g in df.groupby("seed"):
        g = g.reset_index(drop=True)
        rec = {"seed": int(s), "rows": g, "s_cov": {}, "s_kl": {}, "tour": {}, "minkl": {}}
        j_kl = min_kl(g["kl"].to_numpy())
        for N in PASS_NS:
            p = g[f"pass@{N}"].to_numpy()
            # a constant predictor (NaN ρ) predicts nothing: strength 0
            rec["s_cov"][N] = -np.nan_to_num(spearman(p, g[_cov_col(N / 2)]))
            rec["s_kl"][N] = -np.nan_to_num(spearman(p, g["kl"]))
            rec["minkl"][N] = (j_kl, float(p[j_kl]))
            if int(s) in logq and logq[int(s)].shape[0] == len(g):
                j, _ = tournament(logq[int(s)], N / 2)
                rec["tour"][N] = (j, float(p[j]))
        out.append(rec)
    return out


def _final_per_class(d: Path) -> list[float]:
    """Median over seeds of each class's final sequence KL (the runner's "per_class")."""
    s = read_summaries(d)
    rows = [v for v in s.get("per_class.kl", pd.Series(dtype=object)) if isinstance(v, list)]
    if not rows:
        return []
    per_seed = np.concatenate([np.asarray(v, float) for v in rows], axis=1)  # (K, seeds)
    return [float(np.nanmedian(k)) for k in per_seed]


def check(dirs: Dirs) -> Verdict:
    d = Path(dirs[NAME])
    df = read_metrics(d)
    need = [f"pass@{N}" for N in PASS_NS] + [_cov_col(N / 2) for N in PASS_NS]
    if df.empty or any(c not in df.columns for c in need):
        return Verdict(NAME, False, "no results on disk", f"columns {need}", note=str(d))
    seeds = per_seed(d)
    med = lambda xs: float(np.nanmedian(xs)) if len(xs) else float("nan")
    s_cov = {N: med([r["s_cov"][N] for r in seeds]) for N in PASS_NS}
    s_kl = {N: med([r["s_kl"][N] for r in seeds]) for N in PASS_NS}
    have_tour = all(len(r["tour"]) == len(PASS_NS) for r in seeds)
    gain = {N: med([r["tour"][N][1] - r["minkl"][N][1] for r in seeds if N in r["tour"]])
            for N in PASS_NS}
    pass_t = {N: med([r["tour"][N][1] for r in seeds if N in r["tour"]]) for N in PASS_NS}
    pass_k = {N: med([r["minkl"][N][1] for r in seeds]) for N in PASS_NS}
    corr_ok = all(s_cov[N] > s_kl[N] for N in LARGER_NS)
    tour_ok = have_tour and all(gain[N] >= 0 for N in PASS_NS)
    passed = bool(corr_ok and tour_ok)

    fin = finetune_rows(df)
    first, last = fin.groupby("seed").head(1), fin.groupby("seed").tail(1)
    def trend(c: str) -> str:  # start → minimum of the median curve → end
        lowest = np.nanmin(fin.groupby("step")[c].median())
        return f"{np.nanmedian(first[c]):.3f}→{lowest:.3f}→{np.nanmedian(last[c]):.3f}"

    statistic = (
        "rank-correlation strength with Pass@N, Cov_{N/2} vs KL: "
        + ", ".join(f"N={N}: {s_cov[N]:+.2f} vs {s_kl[N]:+.2f}" for N in PASS_NS)
        + "; Pass@N of tournament vs min-KL pick: "
        + ", ".join(f"N={N}: {pass_t[N]:.3f} vs {pass_k[N]:.3f}" for N in PASS_NS)
        + f"; fine-tuning (start→min→end, medians): KL {trend('kl')}, "
        + ", ".join(f"Cov_{N:g} {trend(_cov_col(N))}" for N in (2.0, 4.0))
    )
    pc = _final_per_class(d)
    if pc:
        statistic += "; final per-class KL (G₁, G₂): " + ", ".join(f"{v:.2f}" for v in pc)
    threshold = ("Cov strength > KL strength for N ∈ {8, 12}; median Pass@N gain of the "
                 "tournament pick over the min-KL pick ≥ 0 for N ∈ {4, 8, 12}")
    notes = [f"{len(seeds)} seeds, {fin.groupby('seed').size().min()} checkpoints each"]
    if not have_tour:
        notes.append(f"no {SELECT_FILE} for some seed: tournament not run")
    start_cov = float(np.nanmedian(first[_cov_col(2.0)]))
    if not passed and start_cov > START_COV_MAX:
        # the paper's mechanism needs a pre-trained model that covers both classes
        notes.append(
            f"fine-tuning starts from a model that leaves {start_cov:.0%} of π_D uncovered at "
            "N = 2 (a converged feature-blind pre-trained model puts 5/12 on each class's path, "
            "covering all of it): fine-tuning then mostly teaches path following and KL, Cov "
            "and Pass@N move together; the pre-training is too short for the paper's effect "
            "(its is 200k steps)")
    numbers = {
        "seeds": len(seeds), "s_cov": s_cov, "s_kl": s_kl, "pass_tournament": pass_t,
        "pass_min_kl": pass_k, "tournament_gain": gain,
        "final_per_class_kl": pc,
        "picks": {r["seed"]: {"tournament": {N: r["tour"][N][0] for N in r["tour"]},
                              "min_kl": r["minkl"][PASS_NS[0]][0]} for r in seeds},
    }
    return Verdict(NAME, passed, statistic, threshold, numbers, "; ".join(notes))


def figure(dirs: Dirs, out_folder: Path) -> list[Path]:
    """The paper's Fig. 1: Cov_N for several N and KL against fine-tuning iteration (median
    over seeds, 1/16–15/16 band), then Pass@N against Cov_{N/2} (bottom axis) and KL (top
    axis) for every checkpoint, the tournament's pick (◆) and the min-KL pick (red) marked."""
    d = Path(dirs[NAME])
    df = finetune_rows(read_metrics(d))
    seeds = per_seed(d)
    fig, axs = plt.subplots(1, 4, figsize=(18, 4.4))
    ax = axs[0]
    long = pd.concat([
        df.assign(value=df[_cov_col(N)], N=f"Cov{N:g}") for N in PROFILE_NS
        if _cov_col(N) in df.columns
    ])
    plots.band_plot(ax, long, "step", "value", by="N", q=BAND, label_fmt="{value}",
                    marker=".", ms=3)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("fine-tuning iteration")
    ax.set_ylabel("Cov_N")
    axk = ax.twinx()
    plots.band_plot(axk, df, "step", "kl", q=BAND, label="KL", color="k", ls="--")
    axk.set_ylabel("KL(π_D ‖ π̂) [nats]")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = axk.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="upper right")
    ax.grid(alpha=0.3)

    for ax, N in zip(axs[1:], PASS_NS, strict=True):
        cc = _cov_col(N / 2)
        axt = ax.twiny()
        for r in seeds:
            g = r["rows"]
            ax.scatter(g[cc], g[f"pass@{N}"], s=12, c="C0", alpha=0.6,
                       label=f"Pass@{N} vs Cov_{N / 2:g}" if r is seeds[0] else None)
            axt.scatter(g["kl"], g[f"pass@{N}"], s=12, marker="x", c="C2", alpha=0.5,
                        label=f"Pass@{N} vs KL" if r is seeds[0] else None)
            jk = r["minkl"][N][0]
            ax.scatter(g[cc][jk], g[f"pass@{N}"][jk], s=70, facecolors="none",
                       edgecolors="red", lw=1.5,
                       label="model w/ min. KL" if r is seeds[0] else None)
            if N in r["tour"]:
                jt = r["tour"][N][0]
                ax.scatter(g[cc][jt], g[f"pass@{N}"][jt], s=60, marker="D", c="none",
                           edgecolors="k", lw=1.2,
                           label="selected (tournament)" if r is seeds[0] else None)
        ax.set_xlabel(f"Cov_{N / 2:g} (bottom, ●)")
        axt.set_xlabel("KL [nats] (top, ×)")
        ax.set_ylabel(f"Pass@{N}")
        ax.grid(alpha=0.3)
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = axt.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, fontsize=6, loc="lower left")
    fig.suptitle(
        f"Fig. 1, graph path finding: fine-tuning G₁/G₂ = 0.9/0.1 from a G₁/G₂/G₃ "
        f"pre-trained model; {len(seeds)} seeds (left: median, band = 1/16–15/16 "
        f"quantiles; right: every checkpoint of every seed)", fontsize=9)
    fig.tight_layout()
    return [plots.save(fig, Path(out_folder) / f"{NAME}.png")]


register(Claim(
    name=NAME,
    title="Graph task (Fig. 1): Cov_N predicts Pass@N better than KL; tournament ≥ min-KL pick",
    paper_ref="arXiv 2510.15020v2, Fig. 1 (App. C); simple tournament Eq. 29 (§6.3)",
    kind="reproduction",
    experiments=(NAME,),
    check=check,
    figure=figure,
))
