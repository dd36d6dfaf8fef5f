"""The paper's claims as checks over results on disk: one verdict per claim.

A `Claim` names the experiments (TOML files in experiments/) whose results it reads, a `check`
that turns those results into a `Verdict` (PASS/FAIL with the measured statistic and the
threshold), and a `figure` that draws them. Both only read run/sweep directories written by
`covsim.sweep` (never re-run anything), so a verdict is always computed from what is on disk.

    from covsim.claims import CLAIMS
    v = CLAIMS["horizon"].check({"horizon": Path("runs/quick/horizon")})
    print(v.line())

Claim modules (one per claim or family) register themselves with `register`; importing this
package imports them all.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

Dirs = Mapping[str, Path]  # experiment name -> its sweep directory


@dataclasses.dataclass(frozen=True)
class Verdict:
    """The outcome of one claim's check."""

    claim: str
    passed: bool | None  # None: a "report" claim, numbers without a PASS/FAIL
    statistic: str  # what was measured, with numbers, e.g. "KL slope 0.10/H, R² 0.99"
    threshold: str  # what it was compared to, e.g. "R² ≥ 0.9 and slope > 0"
    numbers: dict[str, Any] = dataclasses.field(default_factory=dict)  # for REPRODUCTION.md
    note: str = ""  # caveats (e.g. "quick profile too small to show X")

    def line(self) -> str:
        tag = "REPORT" if self.passed is None else "PASS" if self.passed else "FAIL"
        note = f" [{self.note}]" if self.note else ""
        return f"{tag} {self.claim}: {self.statistic} (threshold: {self.threshold}){note}"


#: What a verdict is evidence of (docs/claims.md):
#:   reproduction    a figure or experiment of the paper, redone
#:   theorem shape   an upper bound with unknown constants, tested by its shape (slopes,
#:                   orderings, flatness, one fitted constant)
#:   identity check  an inequality true for every pair of distributions, or a closed form:
#:                   PASS validates covsim's code, not the paper
#:   erratum         a statement whose printed form does not follow; the corrected one is tested
#:   report          a conjecture or a design question the paper leaves open: numbers are
#:                   measured and reported, with no PASS/FAIL (the verdict's passed is None)
KINDS = ("reproduction", "theorem shape", "identity check", "erratum", "report")


@dataclasses.dataclass(frozen=True)
class Claim:
    name: str  # CLI name, e.g. "horizon"
    title: str  # one line, e.g. "Sequence KL grows with H; Cov_N does not"
    paper_ref: str  # arXiv 2510.15020v2 numbering, e.g. "Fig. 2; Prop. 3.2 (App. G)"
    kind: str  # one of KINDS
    experiments: tuple[str, ...]  # experiment names = experiments/<name>.toml
    check: Callable[[Dirs], Verdict]
    figure: Callable[[Dirs, Path], list[Path]]  # draws into a folder, returns files written

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"claim {self.name!r}: kind must be one of {list(KINDS)}, "
                             f"got {self.kind!r}")


CLAIMS: dict[str, Claim] = {}


def register(claim: Claim) -> Claim:
    if claim.name in CLAIMS:
        raise ValueError(f"claim {claim.name!r} is registered twice")
    CLAIMS[claim.name] = claim
    return claim


def _load_all() -> None:
    for mod in pkgutil.iter_modules(__path__):
        if not mod.name.startswith("_"):
            importlib.import_module(f"{__name__}.{mod.name}")


_load_all()
