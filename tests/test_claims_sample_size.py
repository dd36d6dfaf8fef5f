"""covsim.claims.sample_size: the rare-prompts instance, the exact scores, the padded MLE, the
runner's design (nested datasets, paired prompts across H) and the check (PASS and FAIL)."""

from __future__ import annotations

import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from covsim import metrics as M
from covsim.claims import CLAIMS
from covsim.claims.sample_size import check
from covsim.config import load_config
from covsim.mle import fit_padded_mle as fit_mle
from covsim.results import RunResult, write_run
from covsim.runners.exact_mle import run_sample_size
from covsim.sweep import cell_config, expand_grid
from covsim.tasks.base import exact_joint
from covsim.tasks.linear import AutoregressiveLinear, iid_token_scores
from covsim.tasks.paper import expected_missing_mass, rare_prompts_task

ROOT = Path(__file__).resolve().parents[1]
TOML = ROOT / "experiments" / "sample_size.toml"
NS = [1.5, 2.0, 4.0, 16.0]


def _enumerated(task, theta, Ns):
    """Reference KL and Cov_N by brute force over X × V^H (float32 metrics), and min |r − log N|."""
    xs, ys, lj = exact_joint(task)
    lq = task.log_prob_theta(jnp.asarray(theta, jnp.float32), xs, ys)
    r = (lj - task.log_mu[xs[:, 0]]) - lq
    logN = np.log(np.asarray(Ns))
    margin = float(np.min(np.abs(np.asarray(r, np.float64)[:, None] - logN[None])))
    return float(M.kl_exact(lj, r)), np.asarray(M.coverage_exact(lj, r, jnp.asarray(Ns))), margin


@pytest.mark.parametrize("which", ["rare_prompts", "random_positional", "prop_3_2"])
def test_iid_token_scores_match_enumeration(which):
    """Grouping identical positions and summing Binomial counts must reproduce brute force.
    KL: float32 enumeration of ≤ 64 sequences per prompt, |r| ≤ 20: error ≲ 1e-5. Cov_N:
    equal when no response sits within 1e-3 nats of a threshold (asserted first)."""
    rng = np.random.default_rng(0)
    if which == "rare_prompts":
        task = rare_prompts_task(H=5, X_rare=3, q_min=0.01, q_max=0.2, B=2.0, b=1.0, k=2)
    elif which == "random_positional":  # every position its own group: 2^6 count vectors
        task = AutoregressiveLinear.random(
            jax.random.key(1), V=2, H=6, d=3, X=2, markov=False, positional=True
        )
    else:
        task = AutoregressiveLinear.prop_3_2(n=5, H=6, theta=0.7)
    theta = rng.uniform(-1, 1, task.d) / math.sqrt(task.d)
    kl, cov = iid_token_scores(task, theta, NS)
    kl_ref, cov_ref, margin = _enumerated(task, theta, NS)
    assert margin > 1e-3
    assert kl == pytest.approx(kl_ref, rel=1e-4, abs=1e-5)
    np.testing.assert_allclose(cov, cov_ref, atol=1e-5)
    assert np.all(np.diff(cov) <= 0)  # Cov_N is non-increasing in N


def test_iid_token_scores_refuses_markov_features():
    task = AutoregressiveLinear.random(jax.random.key(0), V=2, H=3, d=2, markov=True)
    with pytest.raises(ValueError, match="F.shape\\[2\\] == 1"):
        iid_token_scores(task, np.zeros(2), [2.0])


def test_rare_prompts_instance():
    t8, t16 = rare_prompts_task(H=8), rare_prompts_task(H=16)
    # prefix-consistent in H: the H = 8 instance is the first 8 positions of the H = 16 one
    np.testing.assert_array_equal(np.asarray(t8.F), np.asarray(t16.F)[:, :8])
    mu = np.exp(np.asarray(t8.log_mu, np.float64))
    q = mu[1:]
    np.testing.assert_allclose(np.diff(np.log(q)), np.log(1e4) / 31, rtol=1e-4)  # log-uniform
    # σ⋆² is carried by the k = 2 pivotal positions: b²(1 − tanh²(bθ)) each, with b = 8,
    # θ = 1/16; a near-deterministic token adds 4B²ε/(1+ε)², ε = e^{−16} (≈ 3e-5)
    piv = 2 * 64 * (1 - math.tanh(0.5) ** 2)
    det = 4 * 64 * math.exp(-16) / (1 + math.exp(-16)) ** 2
    assert float(t8.sigma_star_sq()) == pytest.approx(piv + 6 * det, rel=1e-4)
    assert float(t16.sigma_star_sq()) == pytest.approx(piv + 14 * det, rel=1e-4)
    e = [expected_missing_mass(t8.log_mu, n) for n in (128, 256)]
    assert e[0] / e[1] == pytest.approx(2.0, rel=0.05)  # ≈ d_eff/n in the designed range


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"q_min": 0.5, "q_max": 0.1}, "q_min"),
        ({"X_rare": 40, "q_min": 0.05, "q_max": 0.2}, "frequent prompt"),
        ({"k": 9}, "argument k"),
        ({"theta_piv": 1.5}, "theta_piv"),
    ],
)
def test_rare_prompts_validation(kw, match):
    with pytest.raises(ValueError, match=match):
        rare_prompts_task(H=8, **kw)


def test_fit_mle_padded_is_the_closed_form_mle():
    """On this instance the MLE separates by coordinate: an unseen prompt's parameter is flat
    (stays 0), a seen prompt's near-deterministic one rises to Θ's boundary (every observed
    token is the favoured one), and the shared pivotal one solves tanh(bθ) = z̄, z = ±1 the
    observed pivotal tokens in the favoured-sign frame. A fit on a zero-padded shape must
    return exactly that: padding only rescales the objective."""
    b = 4.0
    task = rare_prompts_task(H=5, X_rare=8, q_min=1e-3, q_max=0.1, B=4.0, b=b, k=2,
                             theta_piv=0.125)
    x, y = task.sample(jax.random.key(3), 24)
    th, info = fit_mle(task, x, y, n_pad=64, H_pad=7)
    assert info["converged"]
    th = np.asarray(th, np.float64)
    seen = np.zeros(task.X, bool)
    seen[np.asarray(x[:, 0])] = True
    assert not seen.all()
    np.testing.assert_array_equal(th[: task.X][~seen], 0.0)
    np.testing.assert_array_equal(th[: task.X][seen], 1.0)
    F = np.asarray(task.features(x, y))[:, :2, :, -1]  # pivotal features (n, k, V)
    z = np.take_along_axis(F, np.asarray(y)[:, :2, None], -1)[..., 0] / b
    ref = np.clip(np.arctanh(z.mean()) / b, -1, 1)
    # stopping rule: gradient mapping ≤ 1e-6·s (s ≈ H·B = 20, after the n/n_pad rescaling the
    # same relative rule), curvature k·b²(1 − z̄²) ≥ 3 along θ_piv: |Δθ| ≲ 1e-5 (+ float32)
    assert th[-1] == pytest.approx(ref, abs=1e-4)


def _cell(overrides, panel):
    cfg = load_config(TOML, "quick", overrides)
    cell = next(c for c in expand_grid(cfg.sweep.axes, cfg.sweep.seeds, vmap_seeds=True)
                if c.coords["task.panel"] == panel)
    return cell_config(cfg, cell), cell


# both panels fit on the padded shape (64, 7) of the test above: no new compile
SMALL = [
    "task.H=7", "task.n_grid=[24, 64]", "task.H_grid=[6, 7]", "train.n_train=64",
    "task.X_rare=8", "task.q_min=1e-3", "sweep.seeds=2", "train.Ns=[2, 4]",
]


def test_runner_nested_and_paired_datasets():
    recs_n = run_sample_size(*_cell(SMALL, "n")).records
    recs_H = run_sample_size(*_cell(SMALL, "H")).records
    assert len(recs_n) == len(recs_H) == 4
    for recs in (recs_n, recs_H):
        assert all(r["step"] == 0 and r["converged"] for r in recs)
        # unseen prompts are uncovered: r ≥ (H − k)·log 2 − O(pivotal error) > log 2 unless a
        # near-deterministic token takes its unfavoured value (probability ≤ H·e^{−2B} ≈ 1e-6)
        assert all(r["cov"][2.0] >= r["missing_mass"] * (1 - 1e-5) for r in recs)
    by = {(r["seed"], r["n"]): r["missing_mass"] for r in recs_n}
    for s in (0, 1):  # nested: the n = 64 dataset contains the n = 24 one
        assert by[(s, 64)] <= by[(s, 24)]
    mm = {(r["seed"], r["H"]): r["missing_mass"] for r in recs_H}
    for s in (0, 1):  # paired: the same prompts at every H
        assert mm[(s, 6)] == mm[(s, 7)]


# ---- the check on synthetic results ------------------------------------------------------------


def _records(n_slope=-1.0, H_slope=0.0, kl_slope=1.0, sigma_spread=0.0, seeds=24):
    rng = np.random.default_rng(0)
    recs = []
    Ns = [2.0, 4.0, 8.0, 16.0, 32.0]
    base = dict(step=0, d=34, d_eff=3.4, converged=True, iterations=10, grad_map=0.0)
    for s in range(seeds):
        noise = rng.lognormal(0, 0.3, 5)
        for i, n in enumerate([64, 128, 256, 512, 1024]):
            c = 3.4 * 64**-1 * (n / 64) ** n_slope * noise[i]
            recs.append({**base, "task.panel": "n", "seed": s, "n": n, "H": 8, "kl": 4 * c,
                         "cov": dict.fromkeys(Ns, c), "missing_mass": c,
                         "expected_missing_mass": 3.4 / n, "sigma2": 100.0})
        for j, H in enumerate([8, 16, 32, 64]):
            c = 0.013 * (H / 8) ** H_slope * noise[j]
            recs.append({**base, "task.panel": "H", "seed": s, "n": 256, "H": H,
                         "kl": 0.007 * H**kl_slope * noise[j], "cov": dict.fromkeys(Ns, c),
                         "missing_mass": c, "expected_missing_mass": 3.4 / 256,
                         "sigma2": 100.0 * (1 + sigma_spread * j)})
    return recs


def _write(tmp_path, recs):
    d = tmp_path / "run"
    write_run(d, load_config(TOML, "quick"), RunResult(recs))
    return {"sample_size": d}


def test_check_passes_on_the_predicted_behaviour(tmp_path):
    v = check(_write(tmp_path, _records()))
    assert v.passed, v.line()
    assert v.numbers["ratio_slope_vs_n"][2.0] == pytest.approx(0.0, abs=0.1)
    # the fitted constant: the largest E[Cov_N]·n/d over both panels (noise-free: 0.1)
    assert v.numbers["fitted_C"] == pytest.approx(0.1, rel=0.3)
    assert "fitted C" in v.statistic


@pytest.mark.parametrize(
    "kw, why",
    [
        ({"n_slope": -1.5}, "a faster decay than the bound's 1/n supports the upper bound"),
        ({"H_slope": -0.3}, "coverage falling with H is within an H-free upper bound"),
    ],
)
def test_check_passes_on_what_the_upper_bound_allows(tmp_path, kw, why):
    v = check(_write(tmp_path, _records(**kw)))
    assert v.passed, (why, v.line())


@pytest.mark.parametrize(
    "kw",
    [
        {"n_slope": -0.5},  # the √n rate would be a failure of the coarse-regime claim
        {"H_slope": 0.5},  # coverage growing with H
        {"kl_slope": 0.3},  # KL not growing linearly
        {"sigma_spread": 0.05},  # σ⋆² not held fixed
    ],
)
def test_check_fails(tmp_path, kw):
    v = check(_write(tmp_path, _records(**kw)))
    assert not v.passed, v.line()


def test_check_fails_when_coverage_increases_in_N(tmp_path):
    recs = _records()
    for r in recs:
        r["cov"] = {N: c * (1 + 0.1 * i) for i, (N, c) in enumerate(r["cov"].items())}
    v = check(_write(tmp_path, recs))
    assert not v.passed and v.numbers["monotone_in_N"] is False


def test_registered():
    c = CLAIMS["sample_size"]
    assert c.experiments == ("sample_size",)


@pytest.mark.slow
def test_quick_profile_end_to_end(tmp_path):
    from covsim.runners import run_cell
    from covsim.sweep import run_sweep

    out = tmp_path / "sample_size"
    run_sweep(load_config(TOML, "quick"), run_cell, out, progress=False)
    dirs = {"sample_size": out}
    v = CLAIMS["sample_size"].check(dirs)
    assert v.passed, v.line()
    files = CLAIMS["sample_size"].figure(dirs, tmp_path / "fig")
    assert all(f.is_file() for f in files)
