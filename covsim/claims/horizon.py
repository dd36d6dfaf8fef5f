"""Claim "horizon" (arXiv 2510.15020v2: Fig. 2's mechanism, Prop. 3.2 and Remark 3.1):
sequence KL grows linearly in H while Cov_N does not depend on H.

Ground truth (experiments/horizon.toml; its design in docs/claims.md, "horizon"): a
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

Runner "train_tabular" (`covsim.runners.tabular`): the trainer (all seeds vmapped) with that
learner, plus each class's own KL and Cov_N for the final parameters (summary "per_class"), so
the check can confirm the design (the rare class's per-token KL must exceed RARE_TOKEN_KL_MIN
nats).
"""

from __future__ import annotations

import math
from pathlib import Path

from covsim import plots
from covsim.claims import Claim, Dirs, Verdict, register
from covsim.stats import length_stats, per_class_medians

NAME = "horizon"
H_COL = "task.H"
N_COV = 16  # the paper's Cov_{N=16}
#: Linear growth: best linear fits to √H, log H and H² on {8, 16, 32, 64} reach R² = 0.982,
#: 0.920 and 0.962, so R² ≥ 0.99 on the per-H medians separates "∝ H" from them.
KL_R2_MIN = 0.99
#: Flatness: the median of S runs has s.d. ≈ 1.2533 σ/√S ≈ 0.64 × the pooled 95% Wilson
#: half-width; the range of 4 normal draws exceeds 4.4 s.d. w.p. ≈ 1%: 4.4 · 0.64 ≈ 2.8 → 3.
COV_SPREAD_MULT = 3.0
#: ... unless 10% of the mean Cov_N is larger: an effect-size floor, so that a full profile
#: (more samples, a narrower interval) cannot fail on a change too small to matter.
COV_REL_FLOOR = 0.10
#: The rare class must be uncovered at every H: H_min · KL_token ≫ log N (docs/claims.md).
RARE_TOKEN_KL_MIN = 1.5
BAND = (1 / 16, 15 / 16)


# ---- check -----------------------------------------------------------------------------------


def check(dirs: Dirs) -> Verdict:
    d = Path(dirs[NAME])
    st = length_stats(d, H_COL, N_COV, COV_SPREAD_MULT, COV_REL_FLOOR)
    if st is None:
        return Verdict(NAME, False, "no results on disk", "results for every H", note=str(d))
    Hs, kl_med, cov_med, seeds = st["H"], st["kl_med"], st["cov_med"], st["seeds"]
    slope, icpt, r2, expo, r2_sqrt = st["slope"], st["icpt"], st["r2"], st["expo"], st["r2_sqrt"]
    tol, spread, m, alpha, missing = (st[k] for k in
                                      ("tol", "spread", "eval_samples", "alpha", "missing"))

    pc = per_class_medians(d, H_COL, N_COV)
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
    bound = ("the noise bound" if st["tol_by"] == "noise" else "the floor")
    threshold = (
        f"slope > 0 and R² ≥ {KL_R2_MIN} (√H would give {r2_sqrt:.3f}); Cov spread ≤ "
        f"max({COV_SPREAD_MULT:g} × pooled {1 - alpha:.0%} Wilson half-width, "
        f"{COV_REL_FLOOR:.0%} of mean Cov_{N_COV}) = {tol:.4f} ({bound}); "
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
        f"cov{N_COV}_tolerance_by": st["tol_by"],
        "rare_kl_token": rare_kl,
        "per_class": {str(h): pc[h] for h in Hs if h in pc},
    }
    return Verdict(NAME, passed, statistic, threshold, numbers, "; ".join(notes))


# ---- figure ----------------------------------------------------------------------------------


def figure(dirs: Dirs, out_folder: Path) -> list[Path]:
    """Fig. 2 analogue: KL, Cov_16 and KL/Cov_16 against training step, one line per H."""
    fig = plots.length_figure(
        Path(dirs[NAME]), H_COL, N_COV, "H = {value}", "training step (Adam)",
        f"Sequence KL grows with H, Cov_{N_COV} does not: mixture (0.94 learnable, 0.05 "
        "unlearnable per-prompt rule, 0.01 stochastic)",
        q=BAND,
    )
    return [plots.save(fig, Path(out_folder) / f"{NAME}.png")]


register(Claim(
    name=NAME,
    title="Sequence KL grows linearly in H; Cov_N does not depend on H",
    paper_ref="arXiv 2510.15020v2, Fig. 2's mechanism; Prop. 3.2, Remark 3.1",
    kind="theorem shape",
    experiments=(NAME,),
    check=check,
    figure=figure,
))
