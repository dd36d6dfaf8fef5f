"""Claim "signsgd_adam" (arXiv 2510.15020v2, end of §5.2): the authors conjecture that SignSGD
(Eq. 20, θ ← θ + η·sign(ĝ)) and Adam, close relatives of normalized SGD (per-coordinate rather
than global normalization), share its coverage benefit; the paper proves nothing about them.
Kind: report — covsim measures where they sit between plain and normalized SGD, without a
PASS/FAIL.

Experiment: the one-pass study (experiments/one_pass.toml, shared with sgd_horizon), whose
sweep runs every method of `covsim.runners.sgd.METHODS` on the same instance and budget of
fresh sequences. For each method, two curves on the reported seeds, each picked on the tune
seeds: tuned per H (its best setting at every H) and fixed (the one setting whose worst
time-averaged Cov_N over H is smallest). Reported: the means with 95% bootstrap intervals, the
log-log slopes in H with their intervals, and at every H the position of SignSGD and Adam on
the log scale between normalized SGD (0) and plain SGD (1), from the per-H tuned curves.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from covsim import plots
from covsim.claims import Claim, Dirs, Verdict, register
from covsim.results import read_metrics
from covsim.stats import argmin_mean_by, argmin_worst, mean_curve, nonfinite_as_worst

NAME = "signsgd_adam"
EXPERIMENT = "one_pass"
N_CHECK = 4
COV = f"cov@{N_CHECK}"
BOOT = 2000
#: method -> the setting columns a pick chooses among ("sgd" runs K = 1 on a grid of η·H·B).
KEYS = {"sgd": ["eta_HB"], "normalized_sgd": ["K", "eta", "lam"], "sign_sgd": ["K", "eta"],
        "adam": ["K", "eta"]}
LABELS = {"sgd": "plain SGD", "normalized_sgd": "normalized SGD", "sign_sgd": "SignSGD",
          "adam": "Adam"}


def method_curves(df: pd.DataFrame, method: str) -> dict[str, dict]:
    """{"tuned": curve, "fixed": curve, "fixed_pick": setting} of one method on the reported
    seeds (see the module docstring); a curve is `stats.mean_curve` over H."""
    rows = df[(df["method"] == method) & (df["setting"] == "grid")]
    tune, ev = rows[rows["role"] == "tune"], rows[rows["role"] == "eval"]
    keys = KEYS[method]

    def at(H, setting):
        sel = ev["H"] == H
        for k, v in zip(keys, setting, strict=True):
            sel &= np.isclose(ev[k].to_numpy(float), float(v))
        return ev[sel][COV]

    per_H = argmin_mean_by(tune, "H", keys, COV)
    fixed = argmin_worst(tune, "H", keys, COV)
    Hs = sorted(int(H) for H in per_H)
    return {"tuned": mean_curve(Hs, [at(H, per_H[H]) for H in Hs], BOOT),
            "fixed": mean_curve(Hs, [at(H, fixed) for H in Hs], BOOT),
            "tuned_picks": {int(H): tuple(float(v) for v in s) for H, s in per_H.items()},
            "fixed_pick": tuple(float(v) for v in fixed)}


def setting_text(method: str, pick: tuple) -> str:
    """A pick as "K=1, eta=0.3" in the method's setting columns."""
    return ", ".join(f"{k}={v:g}" for k, v in zip(KEYS[method], pick, strict=True))


def position(c: np.ndarray, normalized: np.ndarray, plain: np.ndarray) -> np.ndarray:
    """Where c sits on the log scale from normalized SGD (0) to plain SGD (1), per H (NaN where
    the two coincide): < 0 better than normalized, > 1 worse than plain."""
    with np.errstate(divide="ignore", invalid="ignore"):
        span = np.log(plain) - np.log(normalized)
        return np.where(np.abs(span) > 1e-12, (np.log(c) - np.log(normalized)) / span, math.nan)


def check(dirs: Dirs) -> Verdict:
    d = Path(dirs[EXPERIMENT])
    df = read_metrics(d)
    if df.empty or "method" not in df or COV not in df:
        return Verdict(NAME, None, "no results on disk", "a report: no threshold", note=str(d))
    missing = sorted(set(KEYS) - set(df["method"]))
    if missing:
        return Verdict(NAME, None, f"method(s) {missing} not run", "every method of the study")
    df = nonfinite_as_worst(df, [COV])
    cv = {m: method_curves(df, m) for m in KEYS}
    Hs = cv["sgd"]["tuned"]["x"]
    if any(c["tuned"]["x"] != Hs for c in cv.values()):
        return Verdict(NAME, None, "the methods have results at different H: "
                       + "; ".join(f"{m} {c['tuned']['x']}" for m, c in cv.items()),
                       "every method at the same H")
    tuned = {m: c["tuned"]["mean"] for m, c in cv.items()}
    pos = {m: position(tuned[m], tuned["normalized_sgd"], tuned["sgd"])
           for m in ("sign_sgd", "adam")}
    f4 = lambda xs: ", ".join(f"{x:.4f}" for x in xs)  # noqa: E731
    f2 = lambda xs: ", ".join(f"{x:+.2f}" for x in xs)  # noqa: E731
    parts = []
    for m, c in cv.items():
        t = c["tuned"]
        parts.append(f"{LABELS[m]} {f4(t['mean'])} (slope {t['slope']:+.2f} "
                     f"[{t['slope_lo']:+.2f}, {t['slope_hi']:+.2f}])")
    stat = (f"time-averaged Cov_{N_CHECK}, each method tuned per H, at H = "
            f"{', '.join(map(str, Hs))}: " + "; ".join(parts)
            + f"; position between normalized (0) and plain SGD (1): SignSGD {f2(pos['sign_sgd'])},"
            f" Adam {f2(pos['adam'])}")
    fixed = "; ".join(
        f"{LABELS[m]} {f4(c['fixed']['mean'])} at {setting_text(m, c['fixed_pick'])}"
        for m, c in cv.items())
    n_eval = int(df.loc[df["role"] == "eval", "seed"].nunique())
    note = (f"one H-independent setting per method: {fixed}; {n_eval} reported seeds, settings "
            "picked on separate seeds; a report of the paper's conjecture, no threshold")
    numbers = {
        "N": N_CHECK, "H": Hs,
        "tuned_mean": {m: c["tuned"]["mean"].tolist() for m, c in cv.items()},
        "tuned_lo": {m: c["tuned"]["lo"].tolist() for m, c in cv.items()},
        "tuned_hi": {m: c["tuned"]["hi"].tolist() for m, c in cv.items()},
        "tuned_slope": {m: [c["tuned"]["slope"], c["tuned"]["slope_lo"], c["tuned"]["slope_hi"]]
                        for m, c in cv.items()},
        "fixed_mean": {m: c["fixed"]["mean"].tolist() for m, c in cv.items()},
        "fixed_pick": {m: setting_text(m, c["fixed_pick"]) for m, c in cv.items()},
        "position": {m: p.tolist() for m, p in pos.items()},
    }
    return Verdict(NAME, None, stat, "a report (the paper states a conjecture, not a bound): "
                   "no threshold", numbers, note)


def figure(dirs: Dirs, out_folder: Path) -> list[Path]:
    """Time-averaged Cov_N against H for the four methods: tuned per H (solid, 95% bootstrap
    bands) and at one H-independent setting (dashed)."""
    df = nonfinite_as_worst(read_metrics(Path(dirs[EXPERIMENT])), [COV])
    fig, (ax,) = plots.panels(1)
    colors = {"sgd": "C3", "normalized_sgd": "C0", "sign_sgd": "C2", "adam": "C4"}
    for m in KEYS:
        if m not in set(df["method"]):
            continue
        c = method_curves(df, m)
        t, f = c["tuned"], c["fixed"]
        ax.plot(t["x"], t["mean"], "o-", color=colors[m], label=f"{LABELS[m]}, tuned per H")
        ax.fill_between(t["x"], t["lo"], t["hi"], color=colors[m], alpha=0.12)
        ax.plot(f["x"], f["mean"], "--", color=colors[m], lw=1,
                label=f"{LABELS[m]}, one setting ({setting_text(m, c['fixed_pick'])})")
    plots.loglog(ax, "sequence length H", f"time-averaged Cov_{N_CHECK}")
    plots.grid_ticks(ax, t["x"])
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title("§5.2's conjecture: SignSGD and Adam between plain and normalized SGD?\n"
                 "same instance and budget as sgd_horizon; settings picked on separate seeds")
    return [plots.save(fig, Path(out_folder) / f"{NAME}.png")]


register(Claim(
    name=NAME,
    title="SignSGD and Adam in the one-pass study: where they sit between plain and "
          "normalized SGD",
    paper_ref="arXiv 2510.15020v2, §5.2 (the conjecture after Thm. 5.1; Eq. 20)",
    kind="report",
    experiments=(EXPERIMENT,),
    check=check,
    figure=figure,
))
