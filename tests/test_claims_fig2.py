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
CFG = load_config(TOML, "quick")
LS = tuple(CFG.sweep.axes["task.L"])  # the quick profile's lengths
SEEDS = len(CFG.sweep.seeds)
M_EVAL = CFG.train.eval_samples


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


def _linear(L):  # ∝ L: G_{H,2}'s weight 0.05 × (L/2) log 2 nats, plus 1% of it
    return 1.01 * 0.05 * 0.5 * L * math.log(2)


def _flat(L):
    return 0.05


def test_registered():
    c = CLAIMS["fig2"]
    assert c.experiments == ("fig2",) and TOML.is_file()
    assert c.check is fig2.check and c.figure is fig2.figure


def _wilson_hw(p: float, n: int, z: float = 1.959964) -> float:
    d = 1 + z * z / n
    return z / d * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))


def test_check_passes_on_linear_kl_and_flat_coverage(tmp_path):
    """The stratified per-class estimate decides (G_{H,2}, G_{H,3} uncovered, G_{H,1} covered:
    Cov_16 = 0.06 at every L). Its flatness tolerance is the larger of 3 combined Wilson
    half-widths (G_{H,1}'s Cov is 0 of S·m, weighted 0.94; the others 1 of S·m, weighted 0.05
    and 0.01) and 10% of the mean Cov_16 (0.006)."""
    v = fig2.check(_sweep(tmp_path, kl_of_L=_linear, cov_of_L=_flat))
    assert v.passed, v.line()
    n = v.numbers
    assert n["H"] == list(LS) and n["seeds"] == [SEEDS] * len(LS) and n["eval_samples"] == M_EVAL
    assert n["kl_slope"] == pytest.approx(1.01 * 0.025 * math.log(2), rel=0.1)
    lo, hi = n["kl_exponent_ci"]
    assert fig2.EXPONENT_RANGE[0] <= lo <= n["kl_loglog_exponent"] <= hi <= fig2.EXPONENT_RANGE[1]
    assert n["estimate"] == "stratified"
    hw = _wilson_hw(0.0, SEEDS * M_EVAL)
    noise = 3 * math.sqrt((0.94 * hw) ** 2 + (0.05 * hw) ** 2 + (0.01 * hw) ** 2)
    floor = 0.1 * float(np.mean(n["cov16_median"]))
    assert n["cov16_tolerance"] == pytest.approx(max(noise, floor), rel=1e-3)
    assert n["cov16_tolerance_by"] == ("noise" if noise > floor else "floor")
    assert n["cov16_spread"] <= n["cov16_tolerance"]
    assert max(n["cov16_median"]) <= fig2.LEARNED_COV_MAX
    # the per-class medians reach the verdict, keyed by L
    assert set(n["per_class"]) == {str(L) for L in LS}
    L = LS[-1]
    pc = n["per_class"][str(L)]
    assert pc["weights"] == [0.94, 0.05, 0.01]
    assert pc["cov"] == [0.0, 1.0, 1.0]
    # G_{H,2} carries KL − 0.0114 at weight 0.05; the seed noise (3% of KL) moves it ≲ 4%
    want = (_linear(L) - 0.0114) / 0.05 / (L + 2)
    assert pc["kl_token"][1] == pytest.approx(want, rel=0.05)
    assert "per class" in v.statistic and f"H={L}" in v.statistic
    # H = 8 is in the sweep: the class overlap there is stated
    assert (8 in LS) == ("G_(8,2) and G_(8,3) are the same graphs" in v.note)


@pytest.mark.parametrize(
    "kw, why",
    [
        ({"kl_of_L": _linear, "cov_of_L": lambda L: 0.03 + 0.01 * (L - 8)}, "Cov grows with L"),
        ({"kl_of_L": lambda L: 0.8, "cov_of_L": _flat, "kl_noise": 0.0}, "KL flat in L"),
        ({"kl_of_L": lambda L: 1.2 - 0.05 * L, "cov_of_L": _flat}, "KL falls with L"),
        ({"kl_of_L": lambda L: 0.1 * math.sqrt(L), "cov_of_L": _flat}, "KL ∝ √L: exponent 0.5"),
        ({"kl_of_L": lambda L: 0.002 * L**2, "cov_of_L": _flat}, "KL ∝ L²: exponent 2"),
        ({"kl_of_L": lambda L: 0.78 + 0.0025 * L, "cov_of_L": _flat, "kl_noise": 0.0},
         "negligible growth over a large offset: exponent ≈ 0.04"),
    ],
)
def test_check_fails(tmp_path, kw, why):
    v = fig2.check(_sweep(tmp_path, **kw))
    assert not v.passed, why


def test_noisy_seeds_widen_the_exponent_interval_until_it_fails(tmp_path):
    """A linear KL whose seeds scatter by 40%: the point exponent may sit in range, but its
    bootstrap interval over seeds does not fit inside [0.75, 1.25]: FAIL, not a lucky PASS."""
    v = fig2.check(_sweep(tmp_path, kl_of_L=_linear, cov_of_L=_flat, kl_noise=0.4))
    lo, hi = v.numbers["kl_exponent_ci"]
    assert not v.passed and (lo < fig2.EXPONENT_RANGE[0] or hi > fig2.EXPONENT_RANGE[1])


def test_cov_growth_is_what_fails(tmp_path):
    """Cov_16 ≈ 0.06 + 0.03 per unit of L: a spread far beyond the tolerance, while KL is
    fine: the verdict fails on flatness alone."""
    v = fig2.check(_sweep(tmp_path, kl_of_L=_linear, cov_of_L=lambda L: 0.06 + 0.03 * (L - 8)))
    n = v.numbers
    assert not v.passed
    assert n["cov16_spread"] > 2 * n["cov16_tolerance"]
    lo, hi = n["kl_exponent_ci"]
    assert fig2.EXPONENT_RANGE[0] <= lo and hi <= fig2.EXPONENT_RANGE[1]


def test_check_fails_when_not_learned(tmp_path):
    """Cov_16 ≈ 0.99 at every L is flat (spread within tolerance) and KL is linear, but the
    majority class is not learned: FAIL, said in the note."""
    v = fig2.check(_sweep(tmp_path, kl_of_L=_linear, cov_of_L=lambda L: 0.99))
    n = v.numbers
    assert not v.passed
    assert n["cov16_spread"] <= n["cov16_tolerance"]
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
    """The quick profile on a 2-core CPU: at least 4 seeds and a ×1.5 range of H (×2 does not
    fit a CPU budget: experiments/fig2.toml gives the measurement); the
    transformer learns the majority class at every H and the stratified KL grows with H; the
    figure is drawn. The verdict is recorded whichever it is: a FAIL of the linearity or
    flatness test at this budget is a finding (an expected failure here, with its numbers),
    not a test error."""
    from covsim.runners import run_cell

    cfg = load_config(TOML, "quick")
    assert len(cfg.sweep.seeds) >= 4 and max(LS) >= 1.5 * min(LS)
    out = tmp_path / "fig2"
    run_sweep(cfg, run_cell, out, progress=False)
    dirs = {"fig2": out}
    v = CLAIMS["fig2"].check(dirs)
    n = v.numbers
    assert max(n["cov16_median"]) <= fig2.LEARNED_COV_MAX, v.line()  # the majority is learned
    kl = n["kl_median"]
    assert all(b > a for a, b in zip(kl, kl[1:], strict=False)), v.line()
    assert all(f.is_file() for f in CLAIMS["fig2"].figure(dirs, tmp_path / "fig"))
    if not v.passed:
        pytest.xfail(f"quick-profile verdict FAIL: {v.statistic}")


def test_one_cell_per_seed_pools_the_per_class_summaries(tmp_path):
    """The full profile runs one seed per cell: the per-class summaries of a length's cells
    are pooled, so the stratified estimate still sees every seed."""
    cfg = load_config(TOML, "quick", ["sweep.vmap_seeds=false"])
    v = fig2.check(_sweep(tmp_path, cfg=cfg, kl_of_L=_linear, cov_of_L=_flat))
    assert v.passed, v.line()
    assert v.numbers["estimate"] == "stratified" and v.numbers["seeds"] == [SEEDS] * len(LS)
