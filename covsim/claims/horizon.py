"""Claim "horizon" (Fig. 2; the mechanism of Prop. 3.2 and Remark 3.1; notes §3.2, §5.3):
sequence KL grows linearly in H while Cov_N does not depend on H.

Ground truth (experiments/horizon.toml, DESIGN.md "Designing the horizon experiment"): a
prompt-identified Mixture of three stationary order-1 Markov classes over V = 8 tokens, weights
(0.94, 0.05, 0.01), the analogue of the paper's G_{H,1}, G_{H,2}, G_{H,3}:

    frequent    one prompt, moderately random rows (temperature 1): learned from ~0.94 n samples
    rare        4096 sub-prompts, each its own near-deterministic table (temperature 0.001): a
                test prompt is almost never in the ~0.05 n training sequences, so it is
                unlearnable; the learner stays uniform there and pays ≈ log V per token
    stochastic  one prompt, sparse Dirichlet(0.05) rows: random, yet learned from ~0.01 n samples

The learner is well specified: a Tabular order-1 table per (class, sub-prompt), indexed by the
class code (`covsim.models.tabular.class_radices`), trained with Adam on n fixed samples. Then

    KL     ≈ w_rare · H · (log V − entropy)        linear in H
    Cov_N  ≈ w_rare · P(test prompt unseen)         H-free, once H_min (log V − entropy) ≫ log N

Runner "train_tabular": the trainer (all seeds vmapped) with that learner, plus each class's
own KL and Cov_N for the final parameters (summary "per_class"), so the check can confirm the
design (the rare class's per-token KL must exceed RARE_TOKEN_KL_MIN nats).
"""

from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import Any

import jax
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from flax import nnx

from covsim import plots
from covsim.claims import Claim, Dirs, Verdict, register
from covsim.config import Config
from covsim.experiment import (  # noqa: F401  (class_log_ratios: re-exported for tests)
    class_log_ratios,
    runner,
    train_cell,
)
from covsim.models.tabular import Tabular, class_radices, prompt_radices
from covsim.results import RunResult, read_metrics, read_summaries
from covsim.sweep import Cell
from covsim.tasks.mixture import Mixture

NAME = "horizon"
H_COL = "task.H"
N_COV = 16  # the paper's Cov_{N=16}
#: Linear growth: best linear fits to √H, log H and H² on {8, 16, 32, 64} reach R² = 0.982,
#: 0.920 and 0.962, so R² ≥ 0.99 on the per-H medians separates "∝ H" from them.
KL_R2_MIN = 0.99
#: Flatness: the median of S runs has s.d. ≈ 1.2533 σ/√S ≈ 0.64 × the pooled 95% Wilson
#: half-width; the range of 4 normal draws exceeds 4.4 s.d. w.p. ≈ 1%: 4.4 · 0.64 ≈ 2.8 → 3.
COV_SPREAD_MULT = 3.0
#: The rare class must be uncovered at every H: H_min · KL_token ≫ log N (DESIGN.md).
RARE_TOKEN_KL_MIN = 1.5
BAND = (1 / 16, 15 / 16)


# ---- runner ----------------------------------------------------------------------------------


def tabular_model_fn(cfg: Config, task):
    """key -> Tabular learner for `task` with `[model]`'s parameters and a prompt code that
    fits the task (class code for a Mixture, per-position radices otherwise)."""
    if cfg.model.kind != "tabular":
        raise ValueError(f"model.kind: runner 'train_tabular' needs 'tabular', got "
                         f"{cfg.model.kind!r}")
    if isinstance(task, Mixture):
        code = {"class_radices": class_radices(task)}
    else:
        code = {"prompt_radices": prompt_radices(task)}
    kw = {**cfg.model.params, **code}

    def model_fn(key):
        return Tabular(task.V, task.H, P=task.P, prompt_vocab=task.prompt_vocab,
                       rngs=nnx.Rngs(key), **kw)

    try:
        model_fn(jax.random.key(0))  # validate now, outside any trace
    except (TypeError, ValueError) as e:
        raise ValueError(f"model: {e}") from None
    return model_fn


@runner("train_tabular")
def run_train_tabular(cfg: Config, cell: Cell) -> RunResult:
    """The "train" runner with a Tabular learner whose prompt code fits the task (see module
    doc); for a Mixture, the summary also holds each class's final KL and Cov_N per seed."""
    return train_cell(cfg, cell, tabular_model_fn)


# ---- reading results -------------------------------------------------------------------------


def _eval_setup(d: Path) -> tuple[int, float]:
    """(eval_samples, alpha) of the sweep in `d`, from its resolved config.toml."""
    cfg = tomllib.loads((d / "config.toml").read_text("utf-8"))
    return int(cfg["train"]["eval_samples"]), float(cfg["train"].get("alpha", 0.05))


def finals(df: pd.DataFrame, by: str = H_COL) -> pd.DataFrame:
    """The last evaluation of every (`by` value, seed): one row each."""
    last = df.groupby([by, "seed"])["step"].transform("max")
    return df[df["step"] == last].sort_values([by, "seed"])


def wilson_half_width(p: float, n: float, alpha: float) -> float:
    """Half-width of the two-sided 1 − alpha Wilson score interval for p from n draws."""
    z = _z(alpha)
    d = 1 + z * z / n
    return z / d * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))


def _z(alpha: float) -> float:
    """Φ⁻¹(1 − alpha/2) by bisection on erfc (no SciPy needed)."""
    lo, hi = 0.0, 40.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if math.erfc(mid / math.sqrt(2)) > alpha:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def per_class_arrays(d: Path, by: str = H_COL, N: int = N_COV) -> dict[int, dict[str, Any]]:
    """`by` value -> the runner's per-class summary with the seeds of every finished cell at
    that value side by side: weights (K,), kl, kl_token and cov@N (K, S) arrays."""
    s = read_summaries(d)
    s = s[s["status"].isin(["done", "diverged"])]
    out: dict[int, dict[str, Any]] = {}
    for _, row in s.iterrows():
        kt = row.get("per_class.kl_token")
        if not isinstance(kt, list):
            continue
        cov = row.get("per_class.cov")
        covN = cov.get(N, cov.get(float(N))) if isinstance(cov, dict) else None
        parts = {"kl": row.get("per_class.kl"), "kl_token": kt, "cov": covN}
        cur = out.setdefault(int(row[by]), {"weights": np.asarray(row["per_class.weights"])})
        for k, v in parts.items():
            if v is None or (k in cur and cur[k] is None):
                cur[k] = None
                continue
            v = np.asarray(v, float)
            cur[k] = v if k not in cur else np.concatenate([cur[k], v], axis=1)
    return out


def per_class_medians(d: Path, by: str = H_COL, N: int = N_COV) -> dict[int, dict[str, Any]]:
    """`by` value -> per-class medians over seeds (kl_token, cov@N), from the summaries."""
    med = lambda a: None if a is None else [float(np.nanmedian(v)) for v in a]
    return {h: {"weights": a["weights"].tolist(), "kl_token": med(a["kl_token"]),
                "cov": med(a["cov"])}
            for h, a in per_class_arrays(d, by, N).items()}


# ---- check -----------------------------------------------------------------------------------


def length_stats(d: Path, by: str, N: int) -> dict[str, Any] | None:
    """Final KL and Cov_N against a length axis `by` (a sweep column) in sweep directory d:
    per-value medians over seeds, the linear fit of KL, and the spread of the Cov_N medians
    with its tolerance (COV_SPREAD_MULT × the pooled Wilson half-width). None if no results."""
    df = read_metrics(d)
    col = f"cov@{N}"
    if df.empty or col not in df.columns or by not in df.columns:
        return None
    status = read_summaries(d)["status"]
    fin = finals(df, by)
    Hs = sorted(int(h) for h in fin[by].unique())
    kl_med = [float(np.nanmedian(fin.loc[fin[by] == h, "kl"])) for h in Hs]
    cov_med = [float(np.nanmedian(fin.loc[fin[by] == h, col])) for h in Hs]
    seeds = [int(fin.loc[fin[by] == h, "kl"].notna().sum()) for h in Hs]
    slope, icpt, r2 = plots.linear_fit(Hs, kl_med)
    m, alpha = _eval_setup(d)
    hw = [wilson_half_width(float(np.nanmean(fin.loc[fin[by] == h, col])), s * m, alpha)
          for h, s in zip(Hs, seeds, strict=True)]
    return {
        "H": Hs, "kl_med": kl_med, "cov_med": cov_med, "seeds": seeds,
        "slope": slope, "icpt": icpt, "r2": r2,
        "expo": plots.loglog_fit(Hs, kl_med)[0],
        "r2_sqrt": plots.linear_fit(Hs, np.sqrt(Hs))[2],
        "tol": COV_SPREAD_MULT * float(np.mean(hw)),
        "spread": max(cov_med) - min(cov_med),
        "eval_samples": m, "alpha": alpha,
        "missing": int((~status.isin(["done", "diverged"])).sum()),
    }


def check(dirs: Dirs) -> Verdict:
    d = Path(dirs[NAME])
    st = length_stats(d, H_COL, N_COV)
    if st is None:
        return Verdict(NAME, False, "no results on disk", "results for every H", note=str(d))
    Hs, kl_med, cov_med, seeds = st["H"], st["kl_med"], st["cov_med"], st["seeds"]
    slope, icpt, r2, expo, r2_sqrt = st["slope"], st["icpt"], st["r2"], st["expo"], st["r2_sqrt"]
    tol, spread, m, alpha, missing = (st[k] for k in
                                      ("tol", "spread", "eval_samples", "alpha", "missing"))

    pc = per_class_medians(d)
    rare_kl = [max(pc[h]["kl_token"]) for h in Hs if h in pc]
    rare_ok = len(rare_kl) == len(Hs) and min(rare_kl) >= RARE_TOKEN_KL_MIN

    kl_ok = len(Hs) >= 3 and slope > 0 and r2 >= KL_R2_MIN
    cov_ok = len(Hs) >= 3 and spread <= tol
    passed = bool(kl_ok and cov_ok and rare_ok and missing == 0)

    fmt = lambda xs, f: ", ".join(f"{x:{f}}" for x in xs)
    statistic = (
        f"final KL = {fmt(kl_med, '.2f')} at H = {fmt(Hs, 'd')}: KL ≈ {slope:.4f}·H "
        f"{icpt:+.3f} (R² {r2:.4f}, log-log exponent {expo:.2f}); Cov_{N_COV} = "
        f"{fmt(cov_med, '.4f')} (spread {spread:.4f}); rare-class KL/token "
        f"{min(rare_kl, default=math.nan):.2f} nats"
    )
    threshold = (
        f"slope > 0 and R² ≥ {KL_R2_MIN} (√H would give {r2_sqrt:.3f}); Cov spread ≤ "
        f"{COV_SPREAD_MULT:g} × pooled {1 - alpha:.0%} Wilson half-width = {tol:.4f}; "
        f"rare-class KL/token ≥ {RARE_TOKEN_KL_MIN} nats at every H"
    )
    span = f"{min(seeds)}" if min(seeds) == max(seeds) else f"{min(seeds)}–{max(seeds)}"
    notes = [f"median over {span} seeds, {m} eval samples each"]
    if missing:
        notes.append(f"{missing} cell(s) without results")
    if not rare_ok:
        notes.append("design invalid: the rare class is learnable or its KL too small")
    numbers = {
        "H": Hs, "seeds": seeds, "eval_samples": m,
        "kl_median": kl_med, "kl_slope": slope, "kl_intercept": icpt, "kl_r2": r2,
        "kl_loglog_exponent": expo, f"cov{N_COV}_median": cov_med,
        f"cov{N_COV}_spread": spread, f"cov{N_COV}_tolerance": tol,
        "rare_kl_token": rare_kl,
        "per_class": {str(h): pc[h] for h in Hs if h in pc},
    }
    return Verdict(NAME, passed, statistic, threshold, numbers, "; ".join(notes))


# ---- figure ----------------------------------------------------------------------------------


def length_figure(d: Path, by: str, N: int, label_fmt: str, xlabel: str, title: str,
                  fit_label: str = "final KL"):
    """Fig. 2's three panels from sweep directory d: KL, Cov_N and KL/Cov_N against training
    step, one line per value of the length axis `by` (median over seeds, band = 1/16–15/16
    quantiles), with the linear fit of the final KL; returns the matplotlib figure."""
    df = read_metrics(d)
    col = f"cov@{N}"
    df = df.assign(ratio=df["kl"] / df[col].where(df[col] > 0))
    fin = finals(df, by)
    Hs = sorted(int(h) for h in fin[by].unique())
    kl_med = [float(np.nanmedian(fin.loc[fin[by] == h, "kl"])) for h in Hs]
    slope, icpt, r2 = plots.linear_fit(Hs, kl_med)
    seeds = int(fin.groupby(by)["seed"].nunique().min())

    fig, axs = plt.subplots(1, 3, figsize=(14, 4.2))
    panels = [
        ("kl", "sequence KL(π_D ‖ π̂) [nats]", True),
        (col, f"Cov_{N} (π_D mass with π_D/π̂ ≥ {N})", False),
        ("ratio", f"KL / Cov_{N} [nats]", True),
    ]
    for ax, (y, label, logy) in zip(axs, panels, strict=True):
        plots.band_plot(ax, df, "step", y, by=by, q=BAND, label_fmt=label_fmt,
                        logy=logy, marker=".", ms=3)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, which="both")
    axs[1].set_ylim(0, 1)
    # the final plateau of Cov_N is what the claim is about: a zoomed inset
    ins = axs[1].inset_axes([0.38, 0.35, 0.58, 0.55])
    plots.band_plot(ins, df[df["step"] > 0], "step", col, by=by, q=BAND, marker=".", ms=2)
    ins.set_xlabel("")
    ins.set_ylabel("")
    ins.tick_params(labelsize=7)
    lo = float(np.nanquantile(fin[col], 0.0))
    hi = float(np.nanquantile(fin[col], 1.0))
    pad = max(0.01, hi - lo)
    ins.set_ylim(max(0.0, lo - pad), hi + pad)
    ins.set_title("zoom: steps > 0", fontsize=7)
    ins.grid(alpha=0.3)
    fit = f"{fit_label} ≈ {slope:.3f}·H {icpt:+.2f} (R² {r2:.3f})"
    axs[0].plot([], [], " ", label=fit)
    axs[0].legend(fontsize=7)
    axs[2].legend(fontsize=7)
    fig.suptitle(f"{title}; median over {seeds} seeds, band = 1/16–15/16 quantiles",
                 fontsize=9)
    return fig


def figure(dirs: Dirs, out_folder: Path) -> list[Path]:
    """Fig. 2 analogue: KL, Cov_16 and KL/Cov_16 against training step, one line per H."""
    fig = length_figure(
        Path(dirs[NAME]), H_COL, N_COV, "H = {value}", "training step (Adam)",
        f"Sequence KL grows with H, Cov_{N_COV} does not: mixture (0.94 learnable, 0.05 "
        "unlearnable per-prompt rule, 0.01 stochastic)",
    )
    return [plots.save(fig, Path(out_folder) / f"{NAME}.png")]


register(Claim(
    name=NAME,
    title="Sequence KL grows linearly in H; Cov_N does not depend on H",
    paper_ref="Fig. 2; Prop. 3.2, Remark 3.1 (notes §3.2, §5.3)",
    experiments=(NAME,),
    check=check,
    figure=figure,
))
