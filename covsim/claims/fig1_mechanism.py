"""Claim "fig1_mechanism" (arXiv 2510.15020v2, Fig. 1; setup in App. C): the mechanism behind
Fig. 1 on an instance a 2-core CPU runs in a minute — fine-tuning from a pre-trained model
that covers both classes, a learner that cannot read the class first covers them better and
then specialises to the majority class, so Cov_N is U-shaped while KL falls; Pass@N follows
Cov_{N/2}, not KL; the tournament over checkpoints picks a better Pass@N than min-KL.

Instance (experiments/fig1_mechanism.toml, task `covsim.tasks.rules`): Fig. 1's structure and
weights — two branching layers, G₁/G₂ two deterministic rules, G₃ uniform over the 4 valid
paths, pre-training G₁/G₂/G₃ = ⅓ each, fine-tuning G₁/G₂ = 0.9/0.1 — with the graph reduced
to an id and the parity feature to a class the learner (a table over the graph id) does not
read. Pre-training draws graphs from a Zipf law, so the start is converged on the frequent
graphs and not on the rarest (a fully converged class-blind start has Cov_N = 0 for every
N ≥ 2.4 and nothing to fall from: the U needs a start that fine-tuning can still improve).

Check: the four parts of `covsim.finetune_curves` (start covered, U-shape, predictors,
selection), with the converged start KL log(12/5) of `rules.blind_start_kl`.
"""

from __future__ import annotations

from pathlib import Path

from covsim import finetune_curves
from covsim.claims import Claim, Dirs, Verdict, register
from covsim.tasks.rules import blind_start_kl

NAME = "fig1_mechanism"


def check(dirs: Dirs) -> Verdict:
    return finetune_curves.check(Path(dirs[NAME]), NAME, blind_start_kl())


def figure(dirs: Dirs, out_folder: Path) -> list[Path]:
    title = ("Fig. 1's mechanism on two hidden-class rules (class-blind table): fine-tuning "
             "G₁/G₂ = 0.9/0.1 from a G₁/G₂/G₃ pre-trained model")
    return [finetune_curves.figure(Path(dirs[NAME]), Path(out_folder) / f"{NAME}.png", title)]


register(Claim(
    name=NAME,
    title="Fig. 1's mechanism (class-blind learner): Cov_N U-shaped while KL falls; Cov_{N/2} "
          "predicts Pass@N better than KL; tournament beats min-KL",
    paper_ref="arXiv 2510.15020v2, Fig. 1 (App. C); simple tournament Eq. 29 (§6.3)",
    kind="reproduction",
    experiments=(NAME,),
    check=check,
    figure=figure,
))
