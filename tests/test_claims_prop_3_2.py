"""covsim.claims.prop_3_2: the instance's exact unseen-prompt KL, the estimators the runner
fits, the erratum's arithmetic, and the check (PASS on the corrected statement for every
estimator, FAIL for each way it can break)."""

from __future__ import annotations

import math
from pathlib import Path

import jax
import numpy as np
import pytest

from covsim.claims import CLAIMS
from covsim.claims.prop_3_2 import C_CORRECTED, ESTIMATORS, KL_STEP, check
from covsim.config import load_config
from covsim.mle import fit_padded_mle as fit_mle
from covsim.results import RunResult, write_run
from covsim.runners.exact_mle import prop_3_2_posterior_mean, run_prop_3_2
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


def test_the_erratum_arithmetic():
    """The proof's last step needs kl(Ber(e/(e+e⁻¹)) ‖ Ber(½)) ≥ ½; it is 0.328, so the
    corrected constant is c = 0.164 < ¼."""
    assert KL_STEP == pytest.approx(_kl_half(1 / (1 + math.exp(-2))), rel=1e-12)
    assert KL_STEP == pytest.approx(0.3279, abs=1e-4) and KL_STEP < 0.5
    assert C_CORRECTED == KL_STEP / 2 and C_CORRECTED < 0.25


def test_posterior_mean_on_the_instance():
    """Uniform prior on [−1, 1], s tokens +1 of T: 0 when unseen, odd under s ↦ T − s,
    increasing in s, inside Θ, and equal to a direct quadrature on a finer grid."""
    assert prop_3_2_posterior_mean(0, 0) == 0.0
    for T in (1, 8, 64):
        means = [prop_3_2_posterior_mean(s, T) for s in range(T + 1)]
        assert all(-1 < m < 1 for m in means) and np.all(np.diff(means) > 0)
        assert means == pytest.approx([-m for m in means[::-1]], abs=1e-12)
    g = np.linspace(-1, 1, 200001)
    w = (1 / (1 + np.exp(-2 * g))) ** 5 * (1 / (1 + np.exp(2 * g))) ** 3
    w[[0, -1]] /= 2
    assert prop_3_2_posterior_mean(5, 8) == pytest.approx(np.sum(w * g) / np.sum(w), abs=1e-6)


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
        task = AutoregressiveLinear.prop_3_2(N_SMALL, r["H"], r["theta_star"])
        if r["m1"] == 0:  # the flat case: exactly the unseen-prompt KL
            assert r["theta_hat"] == 0.0 and r["theta_hat_posterior_mean"] == 0.0
            assert r["kl"] == pytest.approx(r["kl_unseen"], rel=1e-12)
            assert r["kl_posterior_mean"] == r["kl"]
            assert r["kl_tie_plus"] == 0.0  # θ⋆ = +1: the + tie-break is right
            assert r["kl_tie_minus"] == pytest.approx(
                iid_token_scores(task, np.array([-1.0]), [2.0])[0], rel=1e-12)
        else:  # seen: the tie-breaks do not apply
            assert r["kl_tie_plus"] == r["kl_tie_minus"] == pytest.approx(r["kl"], rel=1e-6)
    m1 = {(r["seed"], r["H"]): r["m1"] for r in recs}
    assert all(m1[(s, 4)] == m1[(s, 8)] for s in range(6))  # one dataset per seed, truncated


def test_runner_rejects_inconsistent_n():
    with pytest.raises(ValueError, match="train.n_train"):
        run_prop_3_2(*_cell([*SMALL, "train.n_train=30"]))


# ---- the check on synthetic results ------------------------------------------------------------

ESTIMATOR_COLUMNS = tuple(ESTIMATORS)


def _records(p_unseen=0.6, c=C_CORRECTED, kl_power=1.0, cov_scale=0.9, seeds=200, lazy=()):
    """Synthetic results shaped like the runner's: on an unseen dataset every estimator pays
    c·H/n·(H/8)^(kl_power − 1) at θ⋆ = +1 (θ̂ = 0 and the posterior mean at both signs, each
    tie-break at the sign it gets wrong), 1% of it when seen; estimators in `lazy` never pay."""
    rng = np.random.default_rng(0)
    n = 100
    recs = []
    for theta in (1.0, -1.0, 0.0):
        for s in range(seeds):
            unseen = rng.random() < p_unseen
            for H in (8, 16, 32, 64):
                pay = c * 8 * (H / 8) ** kl_power / n
                wrong = {"kl": theta != 0, "kl_posterior_mean": theta != 0,
                         "kl_tie_plus": theta < 0, "kl_tie_minus": theta > 0}
                kls = {k: pay if unseen and wrong[k] and k not in lazy else 0.01 * pay
                       for k in ESTIMATOR_COLUMNS}
                cov = cov_scale / (2 * n) if unseen else 0.0
                recs.append({"step": 0, "seed": s, "H": H, "n": n, "theta_star": theta,
                             "theta_hat": 0.0, "m1": 0 if unseen else 1, **kls,
                             "cov": {2.0: cov, 16.0: cov / 2}, "kl_paper": H / (4 * n),
                             "mu1": 1 / (2 * n), "converged": True})
    return recs


def _write(tmp_path, recs):
    d = tmp_path / "run"
    write_run(d, load_config(TOML, "quick"), RunResult(recs))
    return {"prop_3_2": d}


def test_check_passes_on_the_corrected_statement_and_reports_the_erratum(tmp_path):
    v = check(_write(tmp_path, _records()))
    assert v.passed, v.line()
    assert all(p["ok"] for p in v.numbers["estimators"].values())
    assert v.numbers["estimators"]["kl_tie_plus"]["worst_theta"] == {8: -1.0, 16: -1.0,
                                                                     32: -1.0, 64: -1.0}
    assert all(f == 0.0 for f in v.numbers["frac_kl_ge_H_over_4n"].values())
    assert "erratum" in v.note and "0.328" in v.note and "fails for" not in v.note
    assert v.numbers["estimators"]["kl"]["quantile_slope"] == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize(
    "kw, why",
    [
        ({"p_unseen": 0.15}, "a large KL too rarely"),
        ({"kl_power": 0.5}, "the large KLs grow like √H, not H"),
        ({"kl_power": 0.0}, "the large KLs do not grow with H"),
        ({"c": 0.9 * C_CORRECTED}, "the estimators pay 10% less than c·H/n: below the margin"),
        ({"cov_scale": 1.5}, "coverage above the rare prompt's mass (the identity breaks)"),
        ({"lazy": ("kl_posterior_mean",)}, "one estimator escapes at every θ⋆"),
    ],
)
def test_check_fails(tmp_path, kw, why):
    v = check(_write(tmp_path, _records(**kw)))
    assert not v.passed, (why, v.line())
    if "lazy" in kw:
        assert "fails for: posterior mean" in v.note


def test_a_payment_exactly_at_c_H_over_n_counts_and_the_printed_bound_is_not_reached(tmp_path):
    """θ̂ = 0 pays exactly c·H/n on unseen datasets: the margin makes that count without a
    float tie, and H/(4n) (> c·H/n) is never reached."""
    v = check(_write(tmp_path, _records(c=C_CORRECTED * (1 - 1e-7))))
    assert v.passed and min(v.numbers["estimators"]["kl"]["fraction"].values()) > 0.5
    assert max(v.numbers["frac_kl_ge_H_over_4n"].values()) == 0.0


def test_results_without_the_estimator_columns_fail_with_a_reason(tmp_path):
    recs = [{k: v for k, v in r.items() if k != "kl_tie_plus"} for r in _records(seeds=5)]
    v = check(_write(tmp_path, recs))
    assert not v.passed and "kl_tie_plus" in v.statistic


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
    # the corrected statement holds for every estimator; the printed H/(4n) is never reached
    assert v.passed and len(v.numbers["estimators"]) >= 3, v.line()
    assert max(v.numbers["frac_kl_ge_H_over_4n"].values()) == 0.0 and "erratum" in v.note
    assert all(f.is_file() for f in CLAIMS["prop_3_2"].figure(dirs, tmp_path / "fig"))
