"""Claim fig1: registration, the check read through the claim (the four-part check itself is
tested in test_finetune_curves.py on synthetic sweeps), the per-class note, Spearman's ρ
against SciPy, and the quick profile end to end (slow)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from covsim import finetune_curves
from covsim.claims import CLAIMS, fig1
from covsim.config import load_config
from covsim.stats import spearman
from covsim.sweep import run_sweep

ROOT = Path(__file__).resolve().parents[1]
TOML = ROOT / "experiments" / "fig1.toml"


def test_registered():
    c = CLAIMS["fig1"]
    assert c.experiments == ("fig1",) and TOML.is_file() and c.kind == "reproduction"
    assert c.check is fig1.check and c.figure is fig1.figure


def test_check_is_the_four_part_check_with_the_per_class_note(tmp_path, monkeypatch):
    """fig1.check = finetune_curves.check at log(12/5), plus the final per-class KL read from
    the runner's summaries."""
    seen = {}

    def fake(d, name, kl_start):
        seen.update(d=d, name=name, kl_start=kl_start)
        return finetune_curves.Verdict(name, True, "stat", "thr", {}, "")

    monkeypatch.setattr(finetune_curves, "check", fake)
    monkeypatch.setattr(fig1, "read_summaries", lambda d: pd.DataFrame(
        {"per_class.kl": [[[0.1], [2.0]], [[0.3], [2.2]]]}))
    v = fig1.check({"fig1": tmp_path})
    assert seen == {"d": tmp_path, "name": "fig1", "kl_start": pytest.approx(math.log(12 / 5))}
    assert v.passed and v.numbers["final_per_class_kl"] == pytest.approx([0.2, 2.1])
    assert v.statistic == "stat; final per-class KL (G₁, G₂): 0.20, 2.10"


def test_diagnosis_names_why_the_mechanism_cannot_show():
    star = math.log(12 / 5)
    assert fig1.diagnosis({"start_kl": 0.9, "converged_start_kl": star, "final_kl": 0.4}) == []
    slow = fig1.diagnosis({"start_kl": 1.72, "converged_start_kl": star, "final_kl": 0.4})
    assert len(slow) == 1 and "pre-training has not converged" in slow[0] and "+96%" in slow[0]
    reads = fig1.diagnosis({"start_kl": 0.9, "converged_start_kl": star, "final_kl": 0.21})
    assert len(reads) == 1 and "reads the class" in reads[0] and "0.325" in reads[0]
    assert len(fig1.diagnosis({"start_kl": 2.0, "converged_start_kl": star,
                               "final_kl": 0.2})) == 2


def test_a_failing_verdict_carries_the_diagnosis(tmp_path, monkeypatch):
    monkeypatch.setattr(finetune_curves, "check", lambda d, name, kl_start: (
        finetune_curves.Verdict(name, False, "stat", "thr", {
            "start_kl": 2.0, "converged_start_kl": kl_start, "final_kl": 0.5}, "fails: start")))
    monkeypatch.setattr(fig1, "read_summaries", lambda d: pd.DataFrame())
    v = fig1.check({"fig1": tmp_path})
    assert not v.passed and v.note.startswith("fails: start; pre-training has not converged")


def test_spearman_matches_scipy_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        a = rng.integers(0, 5, 30)  # many ties
        b = a + rng.integers(-3, 4, 30)
        want = stats.spearmanr(a, b).statistic
        assert spearman(a, b) == pytest.approx(want, abs=1e-12)
        # a pandas Series with a shuffled index is ranked by position, as arrays are
        sa = pd.Series(a, index=rng.permutation(30))
        assert spearman(sa, b) == pytest.approx(want, abs=1e-12)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))


@pytest.mark.slow
def test_quick_profile_end_to_end(tmp_path):
    """The quick profile on a 2-core CPU: both stages run, every fine-tuning checkpoint has
    Pass@N, Cov_{N/2} and a tournament pick, the four parts are evaluated and the figure is
    drawn. The verdict itself is not asserted: at this scale the claim does not hold
    (REPRODUCTION.md and docs/claims.md say which parts fail and why)."""
    from covsim.runners import run_cell

    out = tmp_path / "fig1"
    cfg = load_config(TOML, "quick")
    run_sweep(cfg, run_cell, out, progress=False)
    dirs = {"fig1": out}
    v = CLAIMS["fig1"].check(dirs)
    n = v.numbers
    assert n["seeds"] == len(cfg.sweep.seeds) and set(n["parts"]) == {
        "seeds", "start", "u_shape", "predictors", "selection"}
    for N in finetune_curves.PASS_NS:
        assert math.isfinite(n["strength_gap"][N]["gap"])
        assert all(j is not None for j in n["picks"][N]["tournament"])
    assert len(n["final_per_class_kl"]) == 2
    assert all(f.is_file() for f in CLAIMS["fig1"].figure(dirs, tmp_path / "fig"))
