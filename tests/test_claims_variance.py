"""Claim variance: the pivotal instance (σ⋆² in closed form, prefix consistency, Θ and B as
Assumption 2.2 asks), the bound, the check on synthetic sweeps (PASS, a faster-than-bound decay
PASSes, and a FAIL for each way the statement can break), the figure, the "variance_mle" runner
on a tiny grid (nesting, exact KL, Wilson intervals), the generic "mle" runner, and (slow) the
quick profile end to end."""

from __future__ import annotations

import math
from pathlib import Path

import jax
import numpy as np
import pytest

from covsim.claims import CLAIMS
from covsim.claims import variance as V
from covsim.config import load_config
from covsim.mle import fit_loglinear_mle, fit_padded_mle
from covsim.results import RunResult, read_metrics
from covsim.sweep import run_sweep
from covsim.tasks.linear import AutoregressiveLinear, iid_token_kl, iid_token_scores
from covsim.tasks.paper import pivotal_task

ROOT = Path(__file__).resolve().parents[1]
TOML = ROOT / "experiments" / "variance.toml"
LINEAR_MLE = ROOT / "tests" / "configs" / "linear_mle.toml"
SEEDS = 12


# ---- the instance ------------------------------------------------------------------------------


def test_registered():
    assert CLAIMS["variance"].experiments == ("variance",) and TOML.is_file()
    assert CLAIMS["variance"].kind == "theorem shape"


@pytest.mark.parametrize("H, k", [(6, 2), (12, 12), (40, 8)])
def test_pivotal_sigma_star_sq_is_closed_form(H, k):
    """σ⋆² = k·b² (fair coins, feature ±b) + q·(H − k)·4B_rare²ε(1 − ε), ε = σ(−2B_rare θ_r)."""
    b, q, Br, tr = 0.5, 1 / 64, 3.0, 0.9
    task = pivotal_task(H=H, k=k, b=b, q=q, B_rare=Br, theta_rare=tr)
    eps = 1 / (1 + math.exp(2 * Br * tr))
    want = k * b**2 + q * (H - k) * 4 * Br**2 * eps * (1 - eps)
    assert float(task.sigma_star_sq()) == pytest.approx(want, rel=1e-5)
    assert task.ball == "l2" and task.R == 1.0 and task.B == max(b, Br)
    assert float(np.linalg.norm(np.asarray(task.theta))) <= 1.0
    assert float(np.max(np.linalg.norm(np.asarray(task.F), axis=-1))) <= task.B * (1 + 1e-6)


def test_pivotal_instance_is_prefix_consistent_in_H():
    """The H panel takes the first H positions of samples at H_max: exact only if the instance
    at H is the prefix of the instance at H_max (same features, same θ⋆)."""
    small, big = pivotal_task(H=10, k=4), pivotal_task(H=30, k=4)
    np.testing.assert_array_equal(np.asarray(big.F)[:, :10], np.asarray(small.F))
    np.testing.assert_array_equal(np.asarray(big.theta), np.asarray(small.theta))
    x, y = big.sample(jax.random.key(0), 64)
    np.testing.assert_allclose(small.log_prob(x, y[:, :10]),
                               big.log_prob_theta(big.theta, x, y)
                               - _suffix_log_prob(big, x, y, 10), rtol=1e-5, atol=1e-5)


def _suffix_log_prob(task, x, y, h0):
    lp = task.next_token_log_probs(x, y)  # (n, H, V)
    tok = np.take_along_axis(np.asarray(lp), np.asarray(y)[..., None], -1)[..., 0]
    return tok[:, h0:].sum(1)


@pytest.mark.parametrize("seed", [0, 1])
def test_iid_token_kl_matches_the_exact_scores(seed):
    """iid_token_kl (no enumeration) equals the KL of iid_token_scores (grouped exact sums)."""
    task = pivotal_task(H=9, k=5, q=0.1)
    theta = np.random.default_rng(seed).uniform(-0.4, 0.4, task.d)
    assert iid_token_kl(task, theta) == pytest.approx(iid_token_scores(task, theta, [2])[0],
                                                      rel=1e-12, abs=1e-15)
    assert iid_token_kl(task, task.theta) == pytest.approx(0.0, abs=1e-12)


def test_bound_is_thm_4_2_at_constant_one():
    assert V.bound(8.0, 256, 3.0, 2.0) == pytest.approx(
        math.sqrt(8 / (256 * math.log(2))) + 9 / 256, rel=1e-12)
    np.testing.assert_allclose(V.bound(8.0, 256, 3.0, np.array([2.0, 4.0])),
                               [V.bound(8.0, 256, 3.0, 2.0), V.bound(8.0, 256, 3.0, 4.0)])


# ---- the check on synthetic sweeps -------------------------------------------------------------

K_GRID, N_GRID, H_GRID = [8, 16, 32, 64, 128], [128, 256, 512, 1024], [40, 64, 128, 256]
NS = (2.0, 4.0, 8.0, 16.0)
B = 3.0


def _law(s2, n, H, N, *, n_pow=2.0, N_pow=2.0, s2_pow=1.5, H_pow=0.0):
    """A synthetic E[Cov_N] well under the bound: (σ⋆²/32)^s2_pow·(256/n)^n_pow·(log 2/log N)^
    N_pow·(H/40)^H_pow·0.1."""
    return (0.1 * (s2 / 32) ** s2_pow * (256 / n) ** n_pow * (math.log(2) / math.log(N)) ** N_pow
            * (H / 40) ** H_pow)


def _cell_fn(noise=0.1, point_noise=0.02, kl_H=1e-3, sigma_H=0.0, **law):
    """Synthetic panels: σ⋆² = k/4 (+ sigma_H·H), each seed's Cov_N the law times a lognormal
    factor exp(noise·z) shared across the panel's points (the runner nests data per seed) and
    one exp(point_noise·z') per point; KL = 0.05 + kl_H·H."""

    def fn(cfg, cell):
        p = cfg.task.params
        panel, H0, k0, n0 = p["panel"], cfg.task.H, p["k"], cfg.train.n_train
        points = {"sigma": [(k, n0, H0) for k in p["k_grid"]],
                  "n": [(k0, n, H0) for n in p["n_grid"]],
                  "H": [(k0, n0, H) for H in p["H_grid"]]}[panel]
        recs = []
        for s in cell.seeds:
            rng = np.random.default_rng(1000 * s + len(panel))
            z = rng.standard_normal()
            for k, n, H in points:
                s2 = k / 4 + sigma_H * H
                e = math.exp(noise * z + point_noise * rng.standard_normal())
                cov = {N: min(1.0, _law(s2, n, H, N, **law) * e) for N in cfg.train.Ns}
                recs.append({"seed": s, "step": 0, "k": k, "n": n, "H": H, "sigma2": s2, "B": B,
                             "kl": 0.05 + kl_H * H * math.exp(0.05 * rng.standard_normal()),
                             "cov": cov, "eval_samples": 1, "converged": True})
        return RunResult(recs, {})

    return fn


def _sweep(tmp_path, fn, over=()):
    out = tmp_path / "variance"
    cfg = load_config(TOML, "quick", [f"sweep.seeds={SEEDS}", *over])
    manifest = run_sweep(cfg, fn, out, progress=False)
    assert all(c["status"] == "done" for c in manifest["cells"])
    return {"variance": out}


def test_check_passes_under_the_bound(tmp_path):
    v = V.check(_sweep(tmp_path, _cell_fn()))
    assert v.passed, v.line()
    assert 0 < v.numbers["fitted_C"] < 1 and v.numbers["bound_max"] <= V.BOUND_MAX
    assert v.numbers["C_of_H_slope"] == pytest.approx(0.0, abs=0.05)
    assert "fitted C" in v.statistic and "C(H)" in v.statistic and "C(n)" in v.statistic


def test_a_faster_than_bound_decay_passes(tmp_path):
    """Cov_N ∝ n⁻⁴ and (log N)⁻⁴: far faster than √(σ⋆²/(n log N)), which supports the bound."""
    v = V.check(_sweep(tmp_path, _cell_fn(n_pow=4.0, N_pow=4.0)))
    assert v.passed, v.line()
    assert v.numbers["C_of_n_slope"] < -2 and v.numbers["C_of_N_slope"] < -2


@pytest.mark.parametrize(
    "kw, over, failing, why",
    [
        (dict(H_pow=0.3), (), "no_growth_in_H", "Cov_N grows with H at fixed σ⋆²"),
        (dict(n_pow=0.0), (), "no_growth_in_n", "Cov_N does not decay in n"),
        (dict(n_pow=0.3), (), "no_growth_in_n", "Cov_N decays slower than 1/√n"),
        (dict(N_pow=0.0), (), "no_growth_in_N", "Cov_N flat in N (the bound falls as 1/√log N)"),
        (dict(s2_pow=0.0), (), "grows_with_sigma2", "Cov_N does not grow with σ⋆²"),
        (dict(kl_H=0.0), (), "kl_grows_with_H", "KL flat in H: no contrast"),
        (dict(sigma_H=0.01), (), "sigma2_fixed_in_H", "σ⋆² moves with H: the panel's premise"),
        (dict(point_noise=1.0), (), "no_growth_in_H", "noise too large to tell: underpowered"),
        ({}, ("task.n_grid=[8, 16, 32]",), "bound_informative", "vacuous bound at n = 8"),
    ],
)
def test_check_fails(tmp_path, kw, over, failing, why):
    v = V.check(_sweep(tmp_path, _cell_fn(**kw), over))
    assert not v.passed, why
    assert not v.numbers["tests"][failing], (why, v.numbers["tests"])


def test_check_fails_on_a_missing_panel(tmp_path):
    v = V.check(_sweep(tmp_path, _cell_fn(), ['sweep.axes={"task.panel" = ["sigma", "n"]}']))
    assert not v.passed and "panel" in v.statistic


def test_figure(tmp_path):
    dirs = _sweep(tmp_path, _cell_fn())
    files = V.figure(dirs, tmp_path / "fig")
    assert [f.name for f in files] == ["variance.png"] and files[0].stat().st_size > 10_000


# ---- the runners -------------------------------------------------------------------------------

TINY = ["task.H=12", "task.k=4", "task.k_grid=[2, 4]", "task.n_grid=[16, 32]",
        "task.H_grid=[6, 12]", "task.q=0.05", "train.n_train=16", "train.eval_samples=512",
        "sweep.seeds=2"]


def test_variance_runner_nests_and_scores_exactly(tmp_path):
    """Tiny grid, two seeds: σ⋆² exact, Cov_N within its Wilson interval, KL equal to
    iid_token_kl of a direct padded fit of the same nested data (the first n rows, the first H
    positions of one draw at the panel's largest shape)."""
    from covsim.runners import run_cell
    from covsim.sweep import expand_grid

    cfg = load_config(TOML, "quick", TINY)
    out = tmp_path / "v"
    run_sweep(cfg, run_cell, out, progress=False)
    df = read_metrics(out)
    assert len(df) == 3 * 2 * 2 and df["converged"].all()
    for (k, H), g in df.groupby(["k", "H"]):
        np.testing.assert_allclose(g["sigma2"], float(pivotal_task(H=H, k=k, q=0.05)
                                                      .sigma_star_sq()), rtol=1e-6)
    assert (df["cov_lo@2"] <= df["cov@2"]).all() and (df["cov@2"] <= df["cov_hi@2"]).all()
    cells = expand_grid(cfg.sweep.axes, cfg.sweep.seeds, vmap_seeds=True)
    cell = next(c for c in cells if c.coords["task.panel"] == "H")
    big = pivotal_task(H=12, k=4, q=0.05)
    k_data, _ = jax.random.split(jax.random.key(cell.rng_seed(1)))
    x, y = big.sample(k_data, 16)
    small = pivotal_task(H=6, k=4, q=0.05)
    theta, _ = fit_padded_mle(small, x, y[:, :6], n_pad=16, H_pad=12)
    row = df[(df["task.panel"] == "H") & (df["seed"] == 1) & (df["H"] == 6)].iloc[0]
    assert row["kl"] == pytest.approx(iid_token_kl(small, theta), rel=1e-5)


def test_variance_runner_refuses_bad_panels(tmp_path):
    from covsim.runners.exact_mle import run_variance
    from covsim.sweep import cell_config, expand_grid

    cfg = load_config(TOML, "quick", [*TINY, "task.panel='k'", "sweep.axes={}"])
    cell = expand_grid(cfg.sweep.axes, cfg.sweep.seeds, vmap_seeds=True)[0]
    with pytest.raises(ValueError, match=r"^task.panel: must be one of \['sigma', 'n', 'H'\]"):
        run_variance(cell_config(cfg, cell), cell)
    cfg = load_config(TOML, "quick", [*TINY, "task.H_grid=[3]", "task.panel='H'",
                                      "sweep.axes={}"])
    with pytest.raises(ValueError, match=r"^task: k = 4 pivotal positions need H ≥ k"):
        run_variance(cell_config(cfg, cell), cell)


def test_mle_runner(tmp_path):
    """The generic runner "mle": records carry the exact σ⋆², Cov_N inside its Wilson
    interval, and θ̂ equal to a direct fit of the same data (the runner's keys)."""
    from covsim.runners import run_cell
    from covsim.sweep import cell_config, expand_grid

    over = ["task.H=4", "task.d=4", "task.pivotal=[0, 2]", "train.n_train=16",
            "train.eval_samples=256", "sweep.axes={}"]
    cfg = load_config(LINEAR_MLE, "quick", over)
    out = tmp_path / "v"
    run_sweep(cfg, run_cell, out, progress=False)
    df = read_metrics(out)
    assert len(df) == 2 and df["converged"].all()
    task = AutoregressiveLinear.random(jax.random.key(0), V=4, H=4, d=4, B=3.0,
                                       pivotal=[0, 2])
    np.testing.assert_allclose(df["sigma_star_sq"], float(task.sigma_star_sq()), rtol=1e-6)
    assert (df["cov_lo@2"] <= df["cov@2"]).all() and (df["cov@2"] <= df["cov_hi@2"]).all()
    cell = expand_grid(cfg.sweep.axes, cfg.sweep.seeds, vmap_seeds=True)[0]
    k_data, _ = jax.random.split(jax.random.key(cell.rng_seed(0)))
    x, y = task.sample(k_data, 16)
    theta, _ = fit_loglinear_mle(task, x, y, **cell_config(cfg, cell).runner.params)
    row = df[df["seed"] == 0].iloc[0]
    assert row["theta_norm"] == pytest.approx(float(np.linalg.norm(theta)), rel=1e-5)


def test_exact_runners_refuse_sections_they_do_not_read():
    """The learner is the task's own log-linear model: a [model] (or [optim]) would only
    pretend to choose it, so the config is refused before anything runs."""
    from covsim.config import ConfigError

    with pytest.raises(ConfigError, match=r"^model: runner 'mle' does not read \[model\]"):
        load_config(LINEAR_MLE, "quick", ["model.kind=tabular", "sweep.axes={}"])
    with pytest.raises(ConfigError, match=r"^model: runner 'variance_mle' does not read"):
        load_config(TOML, "quick", ["model.kind=tabular"])


@pytest.mark.slow
def test_quick_profile_end_to_end(tmp_path):
    from covsim.runners import run_cell

    out = tmp_path / "variance"
    run_sweep(load_config(TOML, "quick"), run_cell, out, progress=False)
    dirs = {"variance": out}
    v = CLAIMS["variance"].check(dirs)
    assert v.passed, v.line()
    assert all(f.is_file() for f in CLAIMS["variance"].figure(dirs, tmp_path / "fig"))
