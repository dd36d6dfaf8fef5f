"""Fig. 1's four-part check and its figure, on a fine-tuning sweep (arXiv 2510.15020v2, Fig. 1,
App. C): every fine-tuning checkpoint of every seed scored against π_D (KL, Cov_N, exact
Pass@N) plus log π̂ of held-out π_D samples (select_logq.npy) for the tournament. The claims
`fig1` (the paper's graphs and transformer) and `fig1_mechanism` (the same mechanism on a
class-blind table, `covsim.tasks.rules`) run this check on their own sweeps.

The check, mechanism first (thresholds and why), on at least 4 seeds (the intervals are over
seeds):
1. start covered: at fine-tuning step 0, median Cov_4 ≤ 0.1 and median KL within 20% of
   the value a converged class-blind pre-trained model has (`rules.blind_start_kl`:
   log(12/5) for Fig. 1's weights). Cov_4, not Cov_2: that converged model puts 5/12 on each
   class's path (ratio 2.4), so its Cov_2 is 1 while it covers both classes from N = 2.4 on.
2. U-shape: for each N in U_NS the seed-mean Cov_N curve has its minimum at an interior
   checkpoint and lies above it at the start and at the end by more than the seed-bootstrap
   interval (`stats.u_shape`), while KL falls (median over seeds of Spearman(KL, step)
   ≤ −0.8). N = 2 is left out: a learner blind to the class puts a + b ≤ 1 on the two rule
   paths, so one class always has ratio ≥ 2 and Cov_2 ≥ 0.1 — the class-blind optimum's
   value — at every checkpoint: Cov_2 can fall to 0.1, never rise from below it.
3. predictors: per seed, the strength s = −Spearman(Pass@N, predictor) of Cov_{N/2} and of
   KL; the mean gap s_cov − s_kl must exceed 0 by more than its bootstrap interval over
   seeds and checkpoints (`stats.rank_strength_gap`) for the larger N (8, 12); N = 4 is
   reported (the paper: both predict small N comparably).
4. selection: Pass@N of the tournament's pick (Eq. 29 at threshold N/2 on the held-out π_D
   samples: no access to π_D's density) minus that of the min-KL checkpoint; its median over
   seeds must be > 0 with the lower end of its bootstrap interval > 0 for N = 8, 12
   (`stats.paired_gain`); ties (same checkpoint or same Pass@N) are counted apart: a tie is
   not a win. Where several checkpoints share the tournament's best score, it is scored at
   the worst of them (its tie-break is arbitrary).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from covsim import plots
from covsim.claims import Verdict
from covsim.results import artifact_paths, read_metrics, seed_order
from covsim.select import min_kl, tied_best, tournament
from covsim.stats import paired_gain, rank_strength_gap, spearman, u_shape

PASS_NS = (4, 8, 12)
LARGER_NS = (8, 12)
#: The paper's left-panel thresholds (Fig. 1, left: Cov2.0, 3.0, 4.0, 4.6, 5.7).
PROFILE_NS = (2.0, 3.0, 4.0, 4.6, 5.7)
#: The thresholds whose curve must be U-shaped (part 2; why not 2: module docstring).
U_NS = (3.0, 4.0, 4.6, 5.7)
START_N, START_COV_MAX, START_KL_REL = 4.0, 0.1, 0.2
#: Fewer seeds give no usable bootstrap interval over seeds.
MIN_SEEDS = 4
KL_RHO_MAX = -0.8
SELECT_FILE = "select_logq.npy"


def cov_col(N: float) -> str:
    return f"cov@{N:g}"


def finetune_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The main (fine-tuning) stage's records, sorted by (seed, step)."""
    if "stage" in df.columns:
        df = df[df["stage"] == "main"]
    return df.sort_values(["seed", "step"])


def seed_curves(d: Path) -> dict[str, Any]:
    """Per seed, the fine-tuning curves as (S, T) arrays: "kl", "cov@N", "pass@N", "step"
    (T,), "seeds", and "logq" (S, T, n) held-out log π̂ (None where a seed has no artifact or
    a different number of checkpoints)."""
    raw = read_metrics(d)
    df = finetune_rows(raw)
    logq: dict[int, np.ndarray] = {}
    for run, path in artifact_paths(d, SELECT_FILE).items():
        arr = np.load(path)
        # rows follow the cell's seed order, which is the order of its records (unsorted)
        for i, s in enumerate(seed_order(raw, run)):
            logq[int(s)] = arr[i]
    groups = [g.reset_index(drop=True) for _, g in df.groupby("seed")]
    T = min(len(g) for g in groups)
    cols = ["kl"] + [c for c in df.columns if c.startswith(("cov@", "pass@"))]
    out: dict[str, Any] = {c: np.stack([g[c].to_numpy(float)[:T] for g in groups])
                           for c in cols}
    out["step"] = groups[0]["step"].to_numpy()[:T]
    out["seeds"] = [int(g["seed"].iloc[0]) for g in groups]
    out["logq"] = [logq.get(s) if s in logq and logq[s].shape[0] == T else None
                   for s in out["seeds"]]
    return out


def picks(c: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """Per Pass@N: the min-KL and tournament (threshold N/2) checkpoint of every seed, and the
    checkpoints tied at the tournament's best score ("tied"; its tie-break, the earliest, is
    arbitrary)."""
    out = {}
    for N in PASS_NS:
        j_kl = [min_kl(k) for k in c["kl"]]
        j_t, tied = [], []
        for L in c["logq"]:
            if L is None:
                j_t.append(None)
                tied.append(None)
                continue
            j, scores = tournament(L, N / 2)
            j_t.append(j)
            tied.append(tied_best(scores))
        out[N] = {"min_kl": j_kl, "tournament": j_t, "tied": tied}
    return out


def check(d: Path, name: str, kl_start: float) -> Verdict:
    """The four-part check (module docstring) on the sweep in `d`; `kl_start` is the KL at
    which a converged class-blind pre-trained model starts fine-tuning."""
    df = read_metrics(d)
    need = ["kl"] + [f"pass@{N}" for N in PASS_NS] + [cov_col(N) for N in (*U_NS, 6.0)]
    if df.empty or any(c not in df.columns for c in need):
        return Verdict(name, False, "no results on disk", f"columns {need}", note=str(d))
    c = seed_curves(d)
    S, T = c["kl"].shape
    if T < 3:
        return Verdict(name, False, f"{T} checkpoints per seed", "at least 3 checkpoints",
                       note=str(d))
    med = lambda a: float(np.median(a))  # noqa: E731

    # 1. start covered
    cov0, kl0 = med(c[cov_col(START_N)][:, 0]), med(c["kl"][:, 0])
    start_ok = cov0 <= START_COV_MAX and abs(kl0 - kl_start) <= START_KL_REL * kl_start
    # 2. U-shape while KL falls
    us = {N: u_shape(c[cov_col(N)]) for N in U_NS}
    rho_kl = med([spearman(c["step"], k) for k in c["kl"]])
    u_ok = all(u["u"] for u in us.values()) and rho_kl <= KL_RHO_MAX
    # 3. predictors
    gaps = {N: rank_strength_gap(c[f"pass@{N}"], c[cov_col(N / 2)], c["kl"]) for N in PASS_NS}
    pred_ok = all(gaps[N]["lo"] > 0 for N in LARGER_NS)
    # 4. selection
    pk = picks(c)
    have_tour = all(L is not None for L in c["logq"])
    gains: dict[int, dict[str, Any]] = {}
    for N in PASS_NS:
        if not have_tour:
            break
        p = c[f"pass@{N}"]
        # the tournament at the worst of its tied checkpoints: its tie-break (the earliest)
        # would favour the early checkpoints, where this run's good ones are
        g = [min(p[s, j] for j in pk[N]["tied"][s]) - p[s, pk[N]["min_kl"][s]]
             for s in range(S)]
        gains[N] = paired_gain(g)
        gains[N]["tied_seeds"] = sum(len(t) > 1 for t in pk[N]["tied"])
    sel_ok = have_tour and all(gains[N]["median"] > 0 and gains[N]["lo"] > 0
                               for N in LARGER_NS)
    parts = {"seeds": S >= MIN_SEEDS, "start": start_ok, "u_shape": u_ok, "predictors": pred_ok,
             "selection": sel_ok}
    passed = all(parts.values())

    def curve(N):
        u = us[N]
        return (f"Cov_{N:g} {u['start']:.3f}→{u['min']:.3f}@{c['step'][u['argmin']]}→"
                f"{u['final']:.3f} (rise {u['rise']:+.3f} [{u['rise_lo']:+.3f}, "
                f"{u['rise_hi']:+.3f}])")

    statistic = "; ".join([
        f"(1) start: Cov_4 {cov0:.3f}, KL {kl0:.3f} vs converged {kl_start:.3f} "
        f"({(kl0 / kl_start - 1):+.0%})",
        "(2) " + ", ".join(curve(N) for N in U_NS)
        + f", Spearman(KL, step) {rho_kl:+.2f}",
        "(3) Cov_{N/2} − KL strength gap " + ", ".join(
            f"N={N}: {gaps[N]['gap']:+.2f} [{gaps[N]['lo']:+.2f}, {gaps[N]['hi']:+.2f}]"
            for N in PASS_NS),
        "(4) tournament − min-KL Pass@N, median " + (", ".join(
            f"N={N}: {gains[N]['median']:+.4f} [{gains[N]['lo']:+.4f}, {gains[N]['hi']:+.4f}]"
            f" (W/T/L {gains[N]['wins']}/{gains[N]['ties']}/{gains[N]['losses']}; "
            f"tied best in {gains[N]['tied_seeds']}/{S} seeds)"
            for N in PASS_NS) if gains else "not run"),
    ])
    threshold = (f"≥ {MIN_SEEDS} seeds; (1) Cov_4(0) ≤ {START_COV_MAX}, "
                 f"|KL(0)/converged − 1| ≤ {START_KL_REL:.0%}; "
                 f"(2) Cov_N U-shaped for N ∈ {{{', '.join(f'{N:g}' for N in U_NS)}}} "
                 f"(interior min, start and end above it beyond the seed bootstrap), "
                 f"Spearman(KL, step) ≤ {KL_RHO_MAX}; (3) gap interval > 0 for N ∈ {{8, 12}}; "
                 f"(4) median gain and its interval > 0 for N ∈ {{8, 12}}")
    failed = [k for k, ok in parts.items() if not ok]
    notes = [f"{S} seeds, {T} checkpoints each"]
    if failed:
        notes.append("fails: " + ", ".join(failed))
    if not have_tour:
        notes.append(f"no {SELECT_FILE} for some seed: tournament not run")
    numbers = {
        "seeds": S, "checkpoints": T, "parts": parts, "start_cov4": cov0, "start_kl": kl0,
        "final_kl": med(c["kl"][:, -1]),
        "converged_start_kl": kl_start, "kl_step_spearman": rho_kl,
        "u_shape": {f"{N:g}": us[N] for N in U_NS},
        "strength_gap": {N: {k: (v.tolist() if isinstance(v, np.ndarray) else v)
                             for k, v in gaps[N].items()} for N in PASS_NS},
        "tournament_gain": gains,
        "picks": {N: {"min_kl": pk[N]["min_kl"], "tournament": pk[N]["tournament"],
                      "tied": pk[N]["tied"]} for N in PASS_NS},
    }
    return Verdict(name, passed, statistic, threshold, numbers, "; ".join(notes))


def figure(d: Path, out: Path, title: str) -> Path:
    """Fig. 1's panels: left, Cov_N for the paper's five thresholds and KL (right axis) against
    the fine-tuning iteration (seed mean, band min–max over seeds); then Pass@N against
    Cov_{N/2} for N = 4, 8, 12, one point per checkpoint and seed, coloured by its KL, the
    tournament's pick (◆, its tie-break: the earliest of the checkpoints tied at its best
    score; the check scores the worst of them) and the min-KL pick (red ○) of each seed."""
    c = seed_curves(d)
    S = c["kl"].shape[0]
    pk = picks(c)
    x = c["step"]
    fig, axs = plots.panels(4)
    ax = axs[0]
    for i, N in enumerate(PROFILE_NS):
        col = cov_col(N)
        if col not in c:
            continue
        y = c[col]
        ax.plot(x, y.mean(0), color=f"C{i}", marker=".", ms=3, label=f"Cov{N:g}")
        ax.fill_between(x, y.min(0), y.max(0), color=f"C{i}", alpha=0.15, lw=0)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("fine-tuning iteration")
    ax.set_ylabel("Cov_N")
    axk = ax.twinx()
    axk.plot(x, c["kl"].mean(0), "k--", label="KL")
    axk.fill_between(x, c["kl"].min(0), c["kl"].max(0), color="k", alpha=0.08, lw=0)
    axk.set_ylabel("KL(π_D ‖ π̂) [nats]")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = axk.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="upper right")
    ax.set_title(f"mean over {S} seeds, band min–max")
    ax.grid(alpha=0.3)
    vmin, vmax = float(c["kl"].min()), float(c["kl"].max())
    for ax, N in zip(axs[1:], PASS_NS, strict=True):
        cc, pc = c[cov_col(N / 2)], c[f"pass@{N}"]
        sc = ax.scatter(cc.ravel(), pc.ravel(), c=c["kl"].ravel(), cmap="viridis", s=10,
                        vmin=vmin, vmax=vmax, label="checkpoint")
        for s in range(S):
            jk = pk[N]["min_kl"][s]
            ax.scatter(cc[s, jk], pc[s, jk], s=60, facecolors="none", edgecolors="red",
                       lw=1.3, label="min KL" if s == 0 else None)
            jt = pk[N]["tournament"][s]
            if jt is not None:
                ax.scatter(cc[s, jt], pc[s, jt], s=45, marker="D", facecolors="none",
                           edgecolors="k", lw=1.1, label="tournament" if s == 0 else None)
        ax.set_xlabel(f"Cov_{N / 2:g}")
        ax.set_ylabel(f"Pass@{N}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
    fig.colorbar(sc, ax=axs[-1], label="KL [nats]")
    fig.suptitle(title)
    return plots.save(fig, Path(out))
