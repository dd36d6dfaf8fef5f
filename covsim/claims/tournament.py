"""Claim "tournament" (arXiv 2510.15020v2, Prop. E.1 with Thm. 6.3 and Thm. 6.4): under
misspecification the MLE can lose coverage, and tournaments do not.

Prop. E.1 (App. E) builds Π = {π_1, π_2}: π_1 is within α of π_D everywhere (Cov_N(π_1) = 0 for
N > e^α), π_2 fits the frequent prompt exactly but puts 1/(2M) on half of the rare prompt
(Cov_N(π_2) = p/2 for N ≤ M), and for every n the MLE picks π_2 with probability ≥ ¼. Thm. 6.3
(simple tournament, Eq. 29) gives Cov_{N^{1+a}}(π̂) ≲ min_π Cov_{N^a}(π) + N^{a−1} +
log(|Π|/δ)/n and Thm. 6.4 (offset tournament, Eq. 32) Cov_{2N^{1+a}}(π̂) ≲ log(|Π|/δ)/n: both
compete with π_1, so their chance of ending on π_2 must vanish as n grows. Kind: theorem shape
(a probability bound on the paper's own construction, and the 1/n decay of the tournaments').

Experiment (experiments/tournament.toml): `covsim.tasks.paper.prop_g2_instance`, datasets of n
draws from π_D (one per seed); runner "misspecified_selection" (`covsim.runners.selection`)
applies `covsim.select`'s MLE, tournament and offset tournament to each. A tournament's tie
(equal best scores; when no rare-prompt sample separates the candidates) is decided by its
tie-break, which the theorems do not fix, so the check counts every tie as a pick of π_2 (the
worst case) and reports ties apart.

Check (95% Wilson intervals over the datasets): at every n the MLE's frequency of π_2 has its
lower end ≥ ¼; at the largest n each tournament's worst-case frequency of π_2 has its upper end
below the MLE's lower end; and each tournament's worst-case frequency at the largest n lies
below (intervals disjoint) its frequency at the smallest n.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from covsim import plots
from covsim.claims import Claim, Dirs, Verdict, register
from covsim.results import read_metrics, read_summaries
from covsim.stats import wilson_interval

NAME = "tournament"
#: π_2, the candidate that loses coverage, is index 1 of `prop_g2_instance`'s class.
BAD = 1
#: Prop. E.1's bound on the MLE's probability of picking π_2.
P_MLE_MIN = 0.25
SELECTORS = {"mle": "MLE", "tournament": "simple tournament", "offset": "offset tournament"}


def frequencies(df: pd.DataFrame) -> dict[str, dict[int, dict[str, float]]]:
    """selector -> n -> {"p", "lo", "hi", "ties", "strict", "datasets"}: the frequency of picks
    of π_2 with ties counted as π_2 (worst case) and its Wilson interval, the tie frequency,
    and the frequency of strict (untied) picks of π_2."""
    out: dict[str, dict[int, dict[str, float]]] = {}
    for sel in SELECTORS:
        tie_col = f"{sel}_tie"
        out[sel] = {}
        for n, g in df.groupby("n"):
            ties = g[tie_col].astype(bool) if tie_col in g else pd.Series(False, index=g.index)
            strict = (g[sel] == BAD) & ~ties
            worst = int((strict | ties).sum())
            lo, hi = wilson_interval(worst, len(g))
            out[sel][int(n)] = {"p": worst / len(g), "lo": lo, "hi": hi,
                                "ties": float(ties.mean()), "strict": float(strict.mean()),
                                "datasets": len(g)}
    return out


def check(dirs: Dirs) -> Verdict:
    d = Path(dirs[NAME])
    df = read_metrics(d)
    if df.empty or not {"n", *SELECTORS} <= set(df.columns):
        return Verdict(NAME, False, "no results on disk", "picks per dataset", note=str(d))
    summ = read_summaries(d)
    missing = int((~summ["status"].isin(["done"])).sum())
    f = frequencies(df)
    ns = sorted(f["mle"])
    if len(ns) < 2:
        return Verdict(NAME, False, f"n = {ns}", "at least two sample sizes")
    lo_n, hi_n = ns[0], ns[-1]
    mle_lo_min = min(f["mle"][n]["lo"] for n in ns)
    tests = {
        "mle_loses_coverage": mle_lo_min >= P_MLE_MIN,
        **{f"{s}_below_mle_at_n_max": f[s][hi_n]["hi"] < f["mle"][hi_n]["lo"]
           for s in ("tournament", "offset")},
        **{f"{s}_decays_in_n": f[s][hi_n]["hi"] < f[s][lo_n]["lo"]
           for s in ("tournament", "offset")},
        "complete": missing == 0,
    }
    cov = _coverages(summ)
    N = float(df_first(summ, "N"))
    covN = cov.get(f"{N:g}", [math.nan, math.nan])
    fr = lambda s, k="p": ", ".join(f"{f[s][n][k]:.3f}" for n in ns)  # noqa: E731
    stat = (
        f"frequency of the coverage-losing π_2 (ties counted as π_2) at n = "
        f"{', '.join(map(str, ns))}: MLE {fr('mle')} (lowest Wilson lower end "
        f"{mle_lo_min:.3f}); simple tournament {fr('tournament')} (ties "
        f"{fr('tournament', 'ties')}); offset tournament "
        f"{fr('offset')}; Cov_{N:g}(π_1) = {covN[0]:.4f}, Cov_{N:g}(π_2) = {covN[1]:.4f}"
    )
    thr = (f"95% Wilson intervals over the datasets: the MLE's lower end ≥ {P_MLE_MIN} at every n "
           f"(Prop. E.1); at n = {hi_n} each tournament's upper end below the MLE's lower end, "
           f"and below its own lower end at n = {lo_n} (Thms 6.3, 6.4)")
    e_cov = {s: [f[s][n]["p"] * covN[BAD] for n in ns] for s in SELECTORS}
    failed = [t for t, ok in tests.items() if not ok]
    notes = [f"{int(f['mle'][ns[0]]['datasets'])} datasets per n; strict (untied) tournament "
             f"picks of π_2: {max(f['tournament'][n]['strict'] for n in ns):.3f} at most; "
             "E Cov_N of the pick (worst-case ties): "
             + "; ".join(f"{SELECTORS[s]} {', '.join(f'{v:.5f}' for v in e_cov[s])}"
                         for s in SELECTORS)]
    if failed:
        notes.append("failed: " + ", ".join(failed))
    numbers = {"n": ns, "frequencies": {s: {n: f[s][n] for n in ns} for s in SELECTORS},
               "coverage_of_candidates": cov, "expected_cov_of_pick": e_cov, "tests": tests}
    return Verdict(NAME, not failed, stat, thr, numbers, "; ".join(notes))


def df_first(summ: pd.DataFrame, key: str):
    """The value of a runner-summary key, from the first finished cell's summary."""
    return summ[key].dropna().iloc[0]


def _coverages(summ: pd.DataFrame) -> dict[str, list[float]]:
    """The runner's exact Cov_N' of each candidate, by N' (from the first cell's summary)."""
    pre = "coverage."
    return {c[len(pre):]: list(summ[c].dropna().iloc[0]) for c in summ.columns
            if c.startswith(pre)}


def figure(dirs: Dirs, out_folder: Path) -> list[Path]:
    """Frequency of the coverage-losing candidate against n for each selector (ties counted
    against the tournaments; Wilson bands), and the tournaments' tie frequency."""
    df = read_metrics(Path(dirs[NAME]))
    f = frequencies(df)
    ns = sorted(f["mle"])
    plt = plots.plt
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    for i, ((s, label), color) in enumerate(zip(SELECTORS.items(), ("C3", "C0", "C2"),
                                                   strict=True)):
        xs = np.asarray(ns, float) * 1.04**i  # shifted apart: the tournaments often coincide
        p = np.array([f[s][n]["p"] for n in ns])
        lo = np.array([f[s][n]["lo"] for n in ns])
        hi = np.array([f[s][n]["hi"] for n in ns])
        ax.plot(xs, p, "os^"[i] + "-", color=color, label=f"{label} (ties counted as π_2)")
        ax.fill_between(xs, lo, hi, color=color, alpha=0.15)
    ax.plot(ns, [f["tournament"][n]["ties"] for n in ns], ":", color="0.4",
            label="simple tournament: tied")
    ax.axhline(P_MLE_MIN, color="0.3", ls="--", lw=1, label="Prop. E.1: the MLE's P ≥ ¼")
    ax.set(xscale="log", xlabel="sample size n", ylabel="P(selected model = π_2)",
           ylim=(-0.03, 1.05))
    plots.grid_ticks(ax, ns)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="center right")
    ax.set_title("Prop. E.1's misspecified class: the MLE keeps the model that loses coverage;\n"
                 "tournaments (Eqs. 29, 32) leave it as n grows (95% Wilson bands)", fontsize=9)
    return [plots.save(fig, Path(out_folder) / f"{NAME}.png")]


register(Claim(
    name=NAME,
    title="Misspecified MLE loses coverage with probability ≥ ¼; tournaments do not",
    paper_ref="arXiv 2510.15020v2, Prop. E.1, Thm. 6.3, Thm. 6.4 (Eqs. 29, 32)",
    kind="theorem shape",
    experiments=(NAME,),
    check=check,
    figure=figure,
))
