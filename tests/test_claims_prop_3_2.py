"""covsim.claims.prop_3_2: the instance's exact unseen-prompt KL, the MLE the runner fits, and
the check (FAIL when the paper's H/(4n) fraction is below ¼ even though the weaker statement
holds, PASS when both hold, FAIL cases of the weaker statement)."""

from __future__ import annotations

import math
from pathlib import Path

import jax
import numpy as np
import pytest

from covsim.claims import CLAIMS
from covsim.claims.prop_3_2 import check
from covsim.config import load_config
from covsim.mle import fit_padded_mle as fit_mle
from covsim.results import RunResult, write_run
from covsim.runners.exact_mle import run_prop_3_2
from covsim.sweep import cell_config, expand_grid
from covsim.tasks.linear import AutoregressiveLinear, iid_token_scores

ROOT = Path(__file__).resolve().parents[1]
TOML = ROOT / "experiments" / "prop_3_2.toml"
N_SMALL, H_SMALL = 20, [4, 8]


def _kl_half(p: float) -> float:
    """kl(Ber(p) ‖ Ber(½)) = log 2 − h(p)."""
    return math.log(2) + p * math.log(p) + (1 - p) * math.log(1 - p)


@pytest.mark.parametrize("theta", [1.0, -1.0, 0.4])
def test_unseen_kl_closed_form(theta):
    """θ̂ = 0 on the instance: KL = µ(1)·H·kl(Ber(σ(2θ⋆)) ‖ Ber(½)) (float64, exact)."""
    n, H = 50, 16
    task = AutoregressiveLinear.prop_3_2(n, H, theta)
    kl, cov = iid_token_scores(task, np.zeros(1), [2.0])
    p = 1 / (1 + math.exp(-2 * theta))
    assert kl == pytest.approx(H / (2 * n) * _kl_half(p), rel=1e-6)
    assert 0 < cov[0] <= 1 / (2 * n)


def test_instance_constant_is_below_one_quarter():
    """The reason the paper's 1/4 is not attained: c_inst = kl(σ(2)‖½)/2 ≈ 0.164."""
    c = _kl_half(1 / (1 + math.exp(-2))) / 2
    assert c == pytest.approx(0.1639, abs=1e-4)
    assert c < 0.25


def _cell(overrides, theta_index=0):
    cfg = load_config(TOML, "quick", overrides)
    cell = expand_grid(cfg.sweep.axes, cfg.sweep.seeds, vmap_seeds=True)[theta_index]
    return cell_config(cfg, cell), cell


SMALL = [f"task.n={N_SMALL}", f"train.n_train={N_SMALL}", f"task.H_grid={H_SMALL}",
         "sweep.seeds=6"]


def test_fit_matches_closed_form_mle():
    """d = 1: the likelihood's stationarity condition is tanh θ = ȳ over the prompt-1 tokens
    (y ∈ {−1, +1}), so the MLE on [−1, 1] is clip(atanh ȳ); with no prompt-1 data it is flat
    and the fit keeps θ̂ = 0. Tolerance: stopping rule 1e-6·s over curvature 1 − ȳ² (≥ 0.1
    here) plus float32 rounding: 1e-4."""
    task = AutoregressiveLinear.prop_3_2(N_SMALL, H_SMALL[-1], 1.0)
    hits = {"seen": 0, "unseen": 0}
    for s in range(12):
        x, y = task.sample(jax.random.key(s), N_SMALL)
        th, info = fit_mle(task, x, y)
        assert info["converged"]
        ones = np.asarray(x[:, 0]) == 1
        if not ones.any():
            hits["unseen"] += 1
            assert float(th[0]) == 0.0
            continue
        hits["seen"] += 1
        ybar = np.mean(2.0 * np.asarray(y)[ones] - 1)
        ref = np.clip(np.arctanh(np.clip(ybar, -1 + 1e-12, 1 - 1e-12)), -1, 1)
        assert float(th[0]) == pytest.approx(ref, abs=1e-4)
    assert hits["seen"] and hits["unseen"]


def test_runner_records():
    recs = run_prop_3_2(*_cell(SMALL)).records
    assert len(recs) == 6 * len(H_SMALL)
    for r in recs:
        assert r["step"] == 0 and r["n"] == N_SMALL and r["converged"]
        assert max(r["cov"].values()) <= r["mu1"] * (1 + 1e-9)
        assert r["kl_paper"] == r["H"] / (4 * N_SMALL)
        if r["m1"] == 0:  # the flat case: exactly the unseen-prompt KL
            assert r["theta_hat"] == 0.0
            assert r["kl"] == pytest.approx(r["kl_unseen"], rel=1e-12)
    m1 = {(r["seed"], r["H"]): r["m1"] for r in recs}
    assert all(m1[(s, 4)] == m1[(s, 8)] for s in range(6))  # one dataset per seed, truncated


def test_runner_rejects_inconsistent_n():
    with pytest.raises(ValueError, match="train.n_train"):
        run_prop_3_2(*_cell([*SMALL, "train.n_train=30"]))


# ---- the check on synthetic results ------------------------------------------------------------


def _records(p_unseen=0.6, c=0.1639, kl_power=1.0, cov_scale=0.9, seeds=200):
    rng = np.random.default_rng(0)
    n = 100
    recs = []
    for theta in (1.0, -1.0):
        for s in range(seeds):
            unseen = rng.random() < p_unseen
            for H in (8, 16, 32, 64):
                ku = c * H / n
                kl = c * 8 * (H / 8) ** kl_power / n if unseen else 0.01 * ku
                cov = cov_scale / (2 * n) if unseen else 0.0
                recs.append({"step": 0, "seed": s, "H": H, "n": n, "theta_star": theta,
                             "theta_hat": 0.0, "m1": 0 if unseen else 1, "kl": kl,
                             "cov": {2.0: cov, 16.0: cov / 2}, "kl_paper": H / (4 * n),
                             "kl_unseen": ku, "mu1": 1 / (2 * n), "converged": True})
    return recs


def _write(tmp_path, recs):
    d = tmp_path / "run"
    write_run(d, load_config(TOML, "quick"), RunResult(recs))
    return {"prop_3_2": d}


def test_check_fails_on_the_paper_constant_but_reports_the_weaker_statement(tmp_path):
    v = check(_write(tmp_path, _records()))
    assert not v.passed, v.line()
    assert v.numbers["weaker_statement_holds"]
    assert all(f == 0.0 for f in v.numbers["frac_kl_ge_H_over_4n"].values())
    assert "does NOT hold" in v.note
    assert v.numbers["kl_quantile_slope_vs_H"] == pytest.approx(1.0, abs=1e-9)


def test_check_reports_when_the_paper_constant_holds(tmp_path):
    v = check(_write(tmp_path, _records(c=0.3)))
    assert v.passed and "HOLDS" in v.note
    assert all(f > 0.5 for f in v.numbers["frac_kl_ge_H_over_4n"].values())


@pytest.mark.parametrize(
    "kw",
    [
        {"p_unseen": 0.15},  # a large KL too rarely
        {"kl_power": 0.5},  # KL ∝ √H, not H
        {"cov_scale": 1.5},  # coverage above the rare prompt's mass
    ],
)
def test_check_fails(tmp_path, kw):
    v = check(_write(tmp_path, _records(**kw)))
    assert not v.passed, v.line()


def test_registered():
    assert CLAIMS["prop_3_2"].experiments == ("prop_3_2",)


@pytest.mark.slow
def test_quick_profile_end_to_end(tmp_path):
    from covsim.runners import run_cell
    from covsim.sweep import run_sweep

    out = tmp_path / "prop_3_2"
    run_sweep(load_config(TOML, "quick"), run_cell, out, progress=False)
    dirs = {"prop_3_2": out}
    v = CLAIMS["prop_3_2"].check(dirs)
    # on this instance the paper's constant 1/4 is out of reach (see the claim's note): the
    # verdict is FAIL, while the H/n scaling with the instance's constant holds
    assert not v.passed and v.numbers["weaker_statement_holds"], v.line()
    assert set(v.numbers["frac_kl_ge_H_over_4n"]) == set(v.numbers["H"])
    assert all(f.is_file() for f in CLAIMS["prop_3_2"].figure(dirs, tmp_path / "fig"))
