"""Claim prop_3_1 — arXiv 2510.15020v2, Prop. 3.1 (exact form Prop. D.1): Cov_N ≤ KL / log(N/e)
for every N > e. Kind: identity check (true for every pair of distributions).

Checked in its exact, tighter form (Prop. D.1), Cov_N ≤ KL / (log N − 1 + 1/N), which implies
the paper's statement, on every checkpoint of every training run of experiments/prop_3_1.toml
and every N > e of the grid.

Cov_N and KL are Monte-Carlo estimates on `eval_samples` fresh samples, so a pair
(checkpoint, N) counts as a violation only if the Wilson lower end of Cov_N (level
1 − train.alpha) exceeds the bound at KL + 3·kl_se. If the bound held with equality, each pair
would raise a false alarm with probability about alpha/2 + 0.0013 (one-sided Wilson and normal
tails); the bound is slack almost everywhere, so false alarms are far rarer than that. The
verdict also needs non-vacuous pairs (bound < 1), else the experiment would test nothing.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from covsim import metrics as M
from covsim import plots
from covsim.claims import Claim, Dirs, Verdict, register
from covsim.results import n_key, read_config, read_metrics

NAME = "prop_3_1"
EXPERIMENT = "prop_3_1"
KL_SES = 3.0  # KL is raised by this many standard errors before the bound is evaluated


def bound_f1(kl, N):
    """Prop. D.1: KL / (log N − 1 + 1/N) in float64 (`metrics.kl_coverage_bound`; N > 1)."""
    return M.kl_coverage_bound(kl, N, xp=np)


def pairs(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (checkpoint, N > e): the record's coordinates, N, cov, cov_lo, kl, kl_se,
    the bound at KL (`bound`), at KL + 3·kl_se (`bound_hi`), and `violation`
    (cov_lo > bound_hi). Checkpoints with NaN KL (diverged) are left out."""
    cols = [*df.columns, "N", "cov", "cov_lo", "bound", "bound_hi", "violation"]
    if "kl" not in df.columns:
        return pd.DataFrame(columns=cols)
    Ns = sorted(float(c[4:]) for c in df.columns if c.startswith("cov@"))
    Ns = [N for N in Ns if N > math.e]
    keep = [c for c in df.columns if not c.startswith(("cov", "pass@", "pos_"))]
    out = []
    for N in Ns:
        k = n_key(N)
        part = df[keep].copy()
        part["N"] = N
        part["cov"] = df[f"cov@{k}"].astype(float)
        part["cov_lo"] = df.get(f"cov_lo@{k}", df[f"cov@{k}"]).astype(float)
        out.append(part)
    if not out:
        return pd.DataFrame(columns=cols)
    p = pd.concat(out, ignore_index=True)
    kl = p["kl"].astype(float)
    se = p["kl_se"].astype(float) if "kl_se" in p else pd.Series(0.0, index=p.index)
    p = p[kl.notna() & p["cov"].notna()].copy()
    kl, se = kl[p.index], se[p.index].fillna(0.0)
    p["bound"] = bound_f1(kl, p["N"])
    p["bound_hi"] = bound_f1(kl + KL_SES * se, p["N"])
    p["violation"] = p["cov_lo"] > p["bound_hi"]
    return p


def check(dirs: Dirs) -> Verdict:
    d = Path(dirs[EXPERIMENT])
    df = read_metrics(d)
    p = pairs(df)
    n = len(p)
    viol = int(p["violation"].sum())
    nonvac = p[p["bound"] < 1]
    pos = nonvac[nonvac["cov"] > 0]
    tight = float((pos["bound"] / pos["cov"]).min()) if len(pos) else math.nan
    point_viol = int((p["cov"] > p["bound"]).sum())  # without Monte-Carlo slack, for the record
    diverged = int(df["kl"].isna().sum()) if "kl" in df else 0
    alpha = read_config(d).train.interval_alpha
    kl = p["kl"].astype(float)
    numbers = {
        "pairs": n,
        "violations": viol,
        "point_violations": point_viol,
        "non_vacuous_pairs": len(nonvac),
        "min_bound_over_cov": tight,
        "kl_min": float(kl.min()) if n else math.nan,
        "kl_max": float(kl.max()) if n else math.nan,
        "Ns": sorted(set(p["N"].tolist())),
        "checkpoints": int(len(df)),
        "diverged_checkpoints": diverged,
        "alpha": alpha,
    }
    passed = n > 0 and viol == 0 and len(nonvac) > 0
    stat = (
        f"{viol} violations in {n} (checkpoint, N) pairs ({len(nonvac)} with bound < 1); "
        f"KL {numbers['kl_min']:.3g}–{numbers['kl_max']:.3g} nats; "
        f"tightest bound/Cov_N = {tight:.3g}"
    )
    thr = (
        f"0 pairs with Wilson lower Cov_N (level {1 - alpha:g}) > KL_{{+{KL_SES:g}se}} / "
        "(log N − 1 + 1/N) (Prop. D.1, implies KL/log(N/e)), N > e; ≥ 1 non-vacuous pair"
    )
    notes = []
    if point_viol:
        notes.append(f"{point_viol} pairs exceed the bound at the point estimates")
    if diverged:
        notes.append(f"{diverged} diverged checkpoints skipped")
    if n and not len(nonvac):
        notes.append("bound never < 1: the runs do not exercise the claim")
    if not n:
        notes.append("no finished checkpoints with N > e")
    return Verdict(NAME, passed, stat, thr, numbers, "; ".join(notes))


def figure(dirs: Dirs, out_folder: Path) -> list[Path]:
    d = Path(dirs[EXPERIMENT])
    df = read_metrics(d)
    p = pairs(df)
    if p.empty:
        raise ValueError(f"{d}: no checkpoints with N > e to plot")
    by = "task.H" if "task.H" in p.columns else None
    fig, (a1, a2) = plots.panels(2)

    # (a) measured Cov_N against the bound at the measured KL, one colour per N.
    Ns = sorted(set(p["N"]))
    cmap = plt.get_cmap("viridis")
    # Cov_N = 0 is drawn at this level (below 1/eval_samples)
    floor = 0.5 / read_config(d).train.eval_samples
    lo_x = max(float(p["bound"][p["bound"] > 0].min()) if (p["bound"] > 0).any() else 1e-3, 1e-4)
    for i, N in enumerate(Ns):
        q = p[p["N"] == N]
        c = cmap(i / max(1, len(Ns) - 1))
        zero = q["cov"] <= 0
        a1.scatter(q["bound"][~zero], q["cov"][~zero], s=9, color=c, alpha=0.6, label=f"N={N:g}")
        a1.scatter(
            q["bound"][zero], np.full(zero.sum(), floor), s=9, color=c, marker="v", alpha=0.3
        )
    bad = p[p["violation"]]
    if len(bad):
        a1.scatter(
            bad["bound"], bad["cov"], s=40, facecolors="none", edgecolors="red", label="violation"
        )
    xs = np.geomspace(lo_x, max(1.0, float(p["bound"].max())), 50)
    plots.theory_line(a1, xs, np.minimum(xs, 1.0), "Cov_N = bound (y = x, capped at 1)")
    a1.axvline(1.0, color="0.6", lw=0.8, ls=":")
    a1.axhline(floor, color="0.8", lw=0.6)
    a1.set_xscale("log")
    a1.set_yscale("log")
    a1.set_xlabel("bound KL / (log N − 1 + 1/N) at the measured KL")
    a1.set_ylabel("measured Cov_N  (▼: Cov_N = 0)")
    a1.set_title("every checkpoint × N > e lies below y = x")
    a1.legend(fontsize=7, ncol=2, loc="lower right")
    a1.grid(alpha=0.3)

    # (b) how loose: bound / Cov_N against N over the non-vacuous pairs with Cov_N > 0.
    r = p[(p["bound"] < 1) & (p["cov"] > 0)].assign(ratio=lambda t: t["bound"] / t["cov"])
    if len(r):
        plots.band_plot(
            a2, r, "N", "ratio", by=by, logy=True, logx=True, marker="o", label="median"
        )
        mins = r.groupby("N")["ratio"].min()
        a2.plot(mins.index, mins.to_numpy(), "k.", ms=6, label="minimum (tightest)")
    a2.axhline(1.0, color="0.25", ls="--", lw=1.5, label="tight (Prop. D.2)")
    a2.set_xscale("log")
    a2.set_yscale("log")
    a2.set_xlabel("threshold N")
    a2.set_ylabel("bound / measured Cov_N  (≥ 1 when the bound holds)")
    a2.set_title("looseness over checkpoints with bound < 1 (median, 1/16–15/16 band)")
    a2.legend(fontsize=7, loc="upper right")
    a2.grid(alpha=0.3)
    fig.suptitle(
        f"Prop. 3.1 / D.1: Cov_N ≤ KL/(log N − 1 + 1/N) — {len(p)} (checkpoint, N) pairs, "
        f"{int(p['violation'].sum())} violations",
    )
    return [plots.save(fig, Path(out_folder) / f"{NAME}.png")]


register(
    Claim(
        name=NAME,
        title="KL bounds coverage: Cov_N ≤ KL / log(N/e) on every checkpoint",
        paper_ref="arXiv 2510.15020v2, Prop. 3.1; exact form Prop. D.1 (App. D)",
        kind="identity check",
        experiments=(EXPERIMENT,),
        check=check,
        figure=figure,
    )
)
