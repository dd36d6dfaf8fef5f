"""Claim fig2: the check on synthetic sweeps over `task.L` (PASS and each way to FAIL), the
per-class summary in the verdict, the figure and the registration."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from covsim.claims import CLAIMS, fig2
from covsim.config import load_config
from covsim.results import RunResult
from covsim.sweep import run_sweep

ROOT = Path(__file__).resolve().parents[1]
TOML = ROOT / "experiments" / "fig2.toml"
CFG = load_config(TOML, "quick")  # L ∈ {8, 10, 12}, 2 vmapped seeds, 1024 eval samples
LS = (8, 10, 12)


def _cell_fn(kl_of_L, cov_of_L, kl_noise=0.03):
    """A sweep cell function writing synthetic training curves for the cell's seeds: final
    KL = kl_of_L(L) with relative seed noise `kl_noise`, final Cov_16 = Binomial(m,
    cov_of_L(L)) / m for the config's m eval samples (a real run's estimation noise), reached
    at the last step from KL + L and Cov_16 = 1 at step 0; plus the runner's per-class
    summary (3 classes)."""

    def fn(cfg, cell):
        L, m = cfg.task.L, cfg.train.eval_samples
        steps = range(0, cfg.train.steps + 1, cfg.train.eval_every)
        rng = np.random.default_rng(L)
        recs, S = [], len(cell.seeds)
        finals = []
        for s in cell.seeds:
            kl = kl_of_L(L) * (1 + kl_noise * rng.standard_normal())
            finals.append(kl)
            cov = rng.binomial(m, cov_of_L(L)) / m
            for step in steps:
                decay = (1 - step / cfg.train.steps) ** 2
                c = cov + (1 - cov) * decay
                recs.append({"seed": s, "step": step, "kl": kl + L * decay,
                             "cov": {16: c}, "cov_lo": {16: c}, "cov_hi": {16: c}})
        # per-class sets of m samples each (the paper's stratified evaluation): G_{H,2} and
        # G_{H,3} uncovered, G_{H,1} carries the rest of cov_of_L; G_{H,2} the rest of KL
        H, w = L + 2, np.array([0.94, 0.05, 0.01])
        p1 = min(1.0, max(0.0, (cov_of_L(L) - 0.06) / 0.94))
        cov1 = [rng.binomial(m, p1) / m for _ in range(S)]
        kl2 = [(k - 0.94 * 0.01 - 0.01 * 0.2) / 0.05 for k in finals]
        per_class = {
            "weights": w.tolist(),
            "kl": [[0.01] * S, kl2, [0.2] * S],
            "kl_token": [[0.01 / H] * S, [k / H for k in kl2], [0.2 / H] * S],
            "cov": {16: [cov1, [1.0] * S, [1.0] * S]},
        }
        return RunResult(recs, {"per_class": per_class})

    return fn


def _sweep(tmp_path, cfg=CFG, **kw):
    out = tmp_path / "fig2"
    manifest = run_sweep(cfg, _cell_fn(**kw), out, progress=False)
    assert sorted({c["coords"]["task.L"] for c in manifest["cells"]}) == list(LS)
    assert all(c["status"] == "done" for c in manifest["cells"])
    return {"fig2": out}


def _linear(L):  # G_{H,2}'s weight 0.05 × (L/2) log 2 nats, plus a little
    return 0.05 * 0.5 * L * math.log(2) + 0.02


def _flat(L):
    return 0.05


def test_registered():
    c = CLAIMS["fig2"]
    assert c.experiments == ("fig2",) and TOML.is_file()
    assert c.check is fig2.check and c.figure is fig2.figure


def test_check_passes_on_linear_kl_and_flat_coverage(tmp_path):
    """The stratified per-class estimate decides (G_{H,2}, G_{H,3} uncovered, G_{H,1} covered:
    Cov_16 = 0.06 at every L). The mixture eval set's tolerance: the pooled 95% Wilson
    half-width at p = 0.05 from 2 × 1024 samples is ≈ 0.0094, so 3× it is ≈ 0.028."""
    v = fig2.check(_sweep(tmp_path, kl_of_L=_linear, cov_of_L=_flat))
    assert v.passed, v.line()
    n = v.numbers
    assert n["H"] == list(LS) and n["seeds"] == [2, 2, 2] and n["eval_samples"] == 1024
    assert n["kl_slope"] == pytest.approx(0.025 * math.log(2), rel=0.1)
    assert n["kl_r2"] >= fig2.KL_R2_MIN
    assert n["estimate"] == "stratified"
    # G_{H,1}'s Cov is 0 of 2 × 1024: its Wilson half-width 0.00094, weighted by 0.94, × 3
    assert n["cov16_spread"] <= n["cov16_tolerance"] == pytest.approx(0.0026, abs=0.0002)
    assert n["mixture_eval_set"]["tol"] == pytest.approx(0.028, abs=0.003)
    assert max(n["cov16_median"]) <= fig2.LEARNED_COV_MAX
    # the per-class medians reach the verdict, keyed by L
    assert set(n["per_class"]) == {"8", "10", "12"}
    pc = n["per_class"]["12"]
    assert pc["weights"] == [0.94, 0.05, 0.01]
    assert pc["cov"] == [0.0, 1.0, 1.0]
    # G_{H,2} carries KL − 0.0114 at weight 0.05; the seed noise (3% of KL) moves it ≲ 4%
    assert pc["kl_token"][1] == pytest.approx((6 * math.log(2) + 0.172) / 14, rel=0.05)
    assert "per class" in v.statistic and "H=12" in v.statistic


@pytest.mark.parametrize(
    "kw, why",
    [
        ({"kl_of_L": _linear, "cov_of_L": lambda L: 0.03 + 0.01 * (L - 8)}, "Cov grows with L"),
        ({"kl_of_L": lambda L: 0.8, "cov_of_L": _flat, "kl_noise": 0.0}, "KL flat in L"),
        ({"kl_of_L": lambda L: 1.2 - 0.05 * L, "cov_of_L": _flat}, "KL falls with L"),
    ],
)
def test_check_fails(tmp_path, kw, why):
    v = fig2.check(_sweep(tmp_path, **kw))
    assert not v.passed, why


def test_cov_growth_is_what_fails(tmp_path):
    """Cov_16 ≈ 0.06, 0.12, 0.18: spread 0.12 ≫ the tolerance (< 0.03), while KL is fine:
    the verdict fails on flatness alone."""
    v = fig2.check(_sweep(tmp_path, kl_of_L=_linear, cov_of_L=lambda L: 0.06 + 0.03 * (L - 8)))
    n = v.numbers
    assert not v.passed
    assert n["cov16_spread"] > 2 * n["cov16_tolerance"]
    assert n["kl_r2"] >= fig2.KL_R2_MIN and n["kl_slope"] > 0


def test_check_fails_on_negligible_kl_growth(tmp_path):
    """KL = 0.80, 0.81, 0.82 nats at L = 8, 12, 16 (exact, no seed noise): increasing with
    R² = 1, yet 2.5% growth over a doubling of L is not "KL grows ∝ L" (an intercept of 0.78
    nats carries it): the log-log exponent (0.04) is below fig2.EXPONENT_MIN."""
    v = fig2.check(_sweep(tmp_path, kl_of_L=lambda L: 0.78 + 0.0025 * L, cov_of_L=_flat,
                          kl_noise=0.0))
    assert not v.passed


def test_check_fails_when_not_learned(tmp_path):
    """Cov_16 ≈ 0.99 at every L is flat (spread within tolerance) and KL is linear, but the
    majority class is not learned: FAIL, said in the note."""
    v = fig2.check(_sweep(tmp_path, kl_of_L=_linear, cov_of_L=lambda L: 0.99))
    n = v.numbers
    assert not v.passed
    assert n["cov16_spread"] <= n["cov16_tolerance"]
    assert n["kl_r2"] >= fig2.KL_R2_MIN
    assert min(n["cov16_median"]) > fig2.LEARNED_COV_MAX
    assert "not learned" in v.note


def test_check_fails_without_results(tmp_path):
    def broken(cfg, cell):
        raise RuntimeError("boom")

    run_sweep(CFG, broken, tmp_path / "f", progress=False)
    v = fig2.check({"fig2": tmp_path / "f"})
    assert not v.passed and v.statistic == "no results on disk"


def test_figure(tmp_path):
    dirs = _sweep(tmp_path, kl_of_L=_linear, cov_of_L=_flat)
    files = CLAIMS["fig2"].figure(dirs, tmp_path / "fig")
    assert [f.name for f in files] == ["fig2.png"] and files[0].stat().st_size > 10_000


@pytest.mark.slow
def test_quick_profile_end_to_end(tmp_path):
    """The quick profile on a 2-core CPU (≈ 10 min): the transformer learns the majority
    class at every H and the stratified KL grows with H; the figure is drawn.

    The verdict itself is FAIL at this budget (measured at 70cbfdd and since: with 2 seeds
    at H = 8, 10, 12 the stratified Cov_16 medians 0.0669, 0.0600, 0.0614 spread by 0.0069,
    over the 0.0062 tolerance of 3 pooled Wilson half-widths): the quick profile's flatness
    check needs the redesign of the issue on verdicts (more seeds, a wider H range, an
    effect-size floor). Recorded as an expected failure, with the numbers, until then."""
    from covsim.runners import run_cell

    out = tmp_path / "fig2"
    run_sweep(load_config(TOML, "quick"), run_cell, out, progress=False)
    dirs = {"fig2": out}
    v = CLAIMS["fig2"].check(dirs)
    n = v.numbers
    assert max(n["cov16_median"]) <= fig2.LEARNED_COV_MAX, v.line()  # the majority is learned
    kl = n["kl_median"]
    assert all(b > a for a, b in zip(kl, kl[1:], strict=False)), v.line()
    assert n["kl_r2"] >= fig2.KL_R2_MIN and n["kl_loglog_exponent"] >= fig2.EXPONENT_MIN
    assert all(f.is_file() for f in CLAIMS["fig2"].figure(dirs, tmp_path / "fig"))
    if not v.passed:
        pytest.xfail(f"quick-profile verdict FAIL (known, see docstring): {v.statistic}")


def test_one_cell_per_seed_pools_the_per_class_summaries(tmp_path):
    """The full profile runs one seed per cell: the per-class summaries of a length's cells
    are pooled, so the stratified estimate still sees every seed."""
    cfg = load_config(TOML, "quick", ["sweep.vmap_seeds=false"])
    v = fig2.check(_sweep(tmp_path, cfg=cfg, kl_of_L=_linear, cov_of_L=_flat))
    assert v.passed, v.line()
    assert v.numbers["estimate"] == "stratified" and v.numbers["seeds"] == [2, 2, 2]
    assert v.numbers["cov16_tolerance"] == pytest.approx(0.0026, abs=0.0002)
