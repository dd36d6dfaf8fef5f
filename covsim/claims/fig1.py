"""Claim "fig1" (arXiv 2510.15020v2, Fig. 1; setup in App. C): during fine-tuning, Cov_N is
U-shaped while KL falls, the coverage profile predicts Pass@N better than KL does, and the
tournament over checkpoints picks a model with a better Pass@N than the minimum-KL checkpoint.

Setup (experiments/fig1.toml, runner "train" with a [pretrain] stage): layered graphs with
two branching layers. Pre-training on Fig. 1's pre-training mixture (G₁, G₂, G₃ with ⅓ each,
fixed dataset), then fine-tuning online on G₁/G₂ = 0.9/0.1, whose class shows only through a
hidden parity feature of the prompt. Every fine-tuning checkpoint is scored against π_D (KL,
Cov_N, exact Pass@N: the mass on π_D's path; the paper does not say how it measured it) and
gives log π̂ of held-out π_D samples (select_logq.npy), on which `covsim.select.tournament`
runs, as the paper does, without access to π_D's density.

Check: the four parts of `covsim.finetune_curves` — (1) the fine-tuning starts covered
(Cov_4 ≤ 0.1, KL within 20% of log(12/5), the converged value of a pre-trained model blind to
the parity feature), (2) Cov_N U-shaped for N = 3, 4, 4.6, 5.7 while KL falls, (3) Cov_{N/2}
a better rank predictor of Pass@N than KL for N = 8, 12, (4) the tournament's pick beats the
min-KL pick on Pass@8 and Pass@12. The verdict names the parts that fail. The same check on a
class-blind table (no graphs) is the claim `fig1_mechanism`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from covsim import finetune_curves
from covsim.claims import Claim, Dirs, Verdict, register
from covsim.results import read_summaries
from covsim.tasks.rules import blind_optimum_kl, blind_start_kl

NAME = "fig1"


def _final_per_class(d: Path) -> list[float]:
    """Median over seeds of each class's final sequence KL (the runner's "per_class")."""
    s = read_summaries(d)
    rows = [v for v in s.get("per_class.kl", pd.Series(dtype=object)) if isinstance(v, list)]
    if not rows:
        return []
    per_seed = np.concatenate([np.asarray(v, float) for v in rows], axis=1)  # (K, seeds)
    return [float(np.nanmedian(k)) for k in per_seed]


def diagnosis(numbers: dict) -> list[str]:
    """Why the mechanism cannot show, from the numbers: a start far from the converged
    class-blind value (pre-training too short), or a fine-tuning KL below the class-blind
    optimum h(0.9) (the transformer reads the class, so it need not specialise)."""
    out = []
    kl0, star = numbers.get("start_kl"), numbers.get("converged_start_kl")
    if kl0 is not None and star and kl0 > (1 + finetune_curves.START_KL_REL) * star:
        out.append(f"pre-training has not converged: fine-tuning starts at KL {kl0:.2f}, "
                   f"{kl0 / star - 1:+.0%} above a converged class-blind model's {star:.3f}")
    klT, floor = numbers.get("final_kl"), blind_optimum_kl()
    if klT is not None and klT < floor:
        out.append(f"the transformer reads the class: final KL {klT:.3f} is below {floor:.3f}, "
                   "the least a class-blind model reaches (h(0.9)), so fine-tuning need not "
                   "specialise to G₁ and Cov_N need not rise")
    return out


def check(dirs: Dirs) -> Verdict:
    d = Path(dirs[NAME])
    v = finetune_curves.check(d, NAME, blind_start_kl())
    statistic, notes = v.statistic, [v.note] if v.note else []
    pc = _final_per_class(d)
    if pc:
        v.numbers["final_per_class_kl"] = pc
        statistic += "; final per-class KL (G₁, G₂): " + ", ".join(f"{x:.2f}" for x in pc)
    if v.passed is False:
        notes += diagnosis(v.numbers)
    return Verdict(v.claim, v.passed, statistic, v.threshold, v.numbers, "; ".join(notes))


def figure(dirs: Dirs, out_folder: Path) -> list[Path]:
    title = ("Fig. 1, graph path finding: fine-tuning G₁/G₂ = 0.9/0.1 from a G₁/G₂/G₃ "
             "pre-trained transformer")
    return [finetune_curves.figure(Path(dirs[NAME]), Path(out_folder) / f"{NAME}.png", title)]


register(Claim(
    name=NAME,
    title="Graph task (Fig. 1): Cov_N U-shaped while KL falls; Cov_{N/2} predicts Pass@N "
          "better than KL; tournament beats the min-KL pick",
    paper_ref="arXiv 2510.15020v2, Fig. 1 (App. C); simple tournament Eq. 29 (§6.3)",
    kind="reproduction",
    experiments=(NAME,),
    check=check,
    figure=figure,
))
