"""Claim ttt_horizon: the TTT sampler's teacher-forced log-prob equals the one recorded while
sampling; π^TTT's Monte Carlo scores reduce to the exact ancestral ones as η → 0; the runner's
budgets; and the check on synthetic result sets (PASS and each way to FAIL), the figure."""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from covsim import optim
from covsim.claims import CLAIMS
from covsim.claims import ttt_horizon as T
from covsim.config import load_config
from covsim.results import RunResult, read_metrics
from covsim.sweep import run_sweep
from covsim.tasks.linear import AutoregressiveLinear

ROOT = Path(__file__).resolve().parents[1]
MIX = ROOT / "experiments" / "ttt_horizon.toml"
RARE = ROOT / "experiments" / "ttt_rare.toml"


@pytest.mark.parametrize("eta", [0.0, 0.3, 2.0])
def test_ttt_sampler_log_prob_matches_teacher_forcing(eta):
    """Sampling from π^TTT and recording log π_{ϑ_{h−1}}(y_h) gives exactly what ttt_log_prob
    recomputes along the sampled response (a Markov task: the next-token law depends on the
    prefix, so the two code paths index it differently)."""
    task = AutoregressiveLinear.random(jax.random.key(2), V=3, H=7, d=4, X=2, markov=True)
    proj = partial(optim.project_params, radius=1.0, ball="l2")
    x = jnp.asarray([1])
    theta = jnp.asarray([0.2, -0.4, 0.1, 0.3])

    def logp_prefix(th, h, y):  # features of position h depend on y_{<h} only
        return jax.nn.log_softmax(task.features(x[None], y[None])[0, h] @ th)

    for seed in range(3):
        y, recorded = optim.ttt_sample(logp_prefix, theta, jax.random.key(seed), task.H, eta,
                                       proj)
        forced = optim.ttt_log_prob(optim.linear_logp_next(task, x, y), theta, y, eta, proj)
        assert float(forced) == pytest.approx(float(recorded), abs=1e-5)
        if eta == 0.0:  # no adaptation: π^TTT is π_θ itself
            assert float(forced) == pytest.approx(float(task.log_prob_theta(theta, x[None],
                                                                           y[None])[0]), abs=1e-5)


def test_ttt_scores_reduce_to_the_exact_ancestral_ones_as_eta_vanishes(tmp_path):
    """At a tiny step the TTT decoder is the ancestral model: its stratified Monte Carlo KL
    (M responses per prompt) matches the exact KL within Monte Carlo error."""
    from covsim.runners import run_cell

    cfg = load_config(RARE, "quick", ["task.H=8", "runner.eta_grid={token_sgd = [1e-6]}",
                                      "runner.n_samples=40", "runner.checkpoints=4",
                                      "runner.eval_samples=4096", "runner.tune_seeds=1",
                                      "sweep.seeds=2", "sweep.axes={}"])
    run_sweep(cfg, run_cell, tmp_path / "r", progress=False)
    df = read_metrics(tmp_path / "r")
    assert len(df) == 3 and set(df["T"]) == {40}
    # θ ≈ 0 throughout: exact KL = µ(1)·H·kl(Ber(σ(2)) ‖ ½)
    p = 1 / (1 + math.exp(-2))
    want = (1 / 2000) * 8 * (p * math.log(2 * p) + (1 - p) * math.log(2 * (1 - p)))
    np.testing.assert_allclose(df["kl"], want, rtol=1e-3)
    np.testing.assert_allclose(df["kl_ttt"], want, rtol=0.05)


# ---- the check on synthetic result sets -------------------------------------------------------

HS = [4, 8, 16, 32, 64]


def _mix_fn(seq_slope=1.0, ttt_slope=-0.3, best_c=1.5):
    def fn(cfg, cell):
        method, H = cfg.runner.params["method"], cfg.task.H
        rng = np.random.default_rng(H + len(method))
        seeds = [("tune", -1 - i) for i in range(6)] + [("eval", s) for s in cell.seeds]
        grid = [0.5, 1.0, 1.5, 2.0, 2.5] if method == "sgd" else [1.0, 4.0, 16.0]
        recs = []
        for e in grid:
            for role, s in seeds:
                z = math.exp(0.1 * rng.standard_normal())
                if method == "sgd":
                    kl = 0.03 * (H / 4) ** seq_slope * (1 + abs(e - best_c)) * z
                    rec = {"kl": kl, "cov": {4: kl / 10}}
                else:
                    kl = 0.01 * (H / 4) ** ttt_slope * (1 if e == 4.0 else 3) * z
                    rec = {"kl": kl, "kl_ttt": 0.95 * kl, "cov": {4: kl / 10},
                           "cov_ttt": {4: kl / 11}}
                recs.append({"step": 2000, "seed": s, "role": role, "method": method,
                             "eta_scaled": e, "H": H, "sigma2": 0.048 * H, "finite": True,
                             **rec})
        return RunResult(recs, {})

    return fn


def _rare_fn(anc_slope=1.0, ttt_slope=0.3):
    def fn(cfg, cell):
        H = cfg.task.H
        rng = np.random.default_rng(H)
        recs = []
        for e in (0.25, 1.0):
            for role, s in [("tune", -1), ("tune", -2), *[("eval", q) for q in cell.seeds]]:
                z = math.exp(0.1 * rng.standard_normal())
                worse = 1 if e == 0.25 else 2
                recs.append({"step": 1000, "seed": s, "role": role, "method": "token_sgd",
                             "eta_scaled": e, "H": H, "sigma2": 2e-4 * H, "finite": True,
                             "kl": 6e-4 * (H / 4) ** anc_slope * z,
                             "kl_ttt": 3e-4 * (H / 4) ** ttt_slope * worse * z,
                             "cov": {4: 4e-4}, "cov_ttt": {4: 4e-4}})
        return RunResult(recs, {})

    return fn


def _sweep(tmp_path, mix_fn, rare_fn):
    dirs = {}
    for name, toml, fn in (("ttt_horizon", MIX, mix_fn), ("ttt_rare", RARE, rare_fn)):
        out = tmp_path / name
        run_sweep(load_config(toml, "quick", ["sweep.seeds=12"]), fn, out, progress=False)
        dirs[name] = out
    return dirs


def test_registered():
    assert CLAIMS["ttt_horizon"].experiments == ("ttt_horizon", "ttt_rare")


def test_check_passes(tmp_path):
    v = T.check(_sweep(tmp_path, _mix_fn(), _rare_fn()))
    assert v.passed, v.line()
    assert v.numbers["token_picks"] == {H: 4.0 for H in HS}
    assert v.numbers["token_fixed_pick"] == 4.0
    assert v.numbers["sequence_picks"] == {H: 1.5 for H in HS}
    assert v.numbers["bound_slopes"]["mixture"] == pytest.approx(0.5)


@pytest.mark.parametrize(
    "mix, rare, failing, why",
    [
        (dict(seq_slope=0.0), {}, "mixture_grows", "sequence-level SGD flat: nothing to beat"),
        (dict(ttt_slope=1.0), {}, "mixture_slower", "TTT grows like sequence-level SGD"),
        (dict(seq_slope=2.0, ttt_slope=0.7), {}, "mixture_within_bound_shape",
         "TTT grows faster than √σ⋆²"),
        (dict(best_c=2.5), {}, "sequence_sgd_pick_interior", "the baseline's pick at the edge"),
        ({}, dict(ttt_slope=1.0), "rare_slower", "TTT pays KL ∝ H like a proper estimator"),
        ({}, dict(anc_slope=0.0), "rare_grows", "the ancestral KL does not grow"),
    ],
)
def test_check_fails(tmp_path, mix, rare, failing, why):
    v = T.check(_sweep(tmp_path, _mix_fn(**mix), _rare_fn(**rare)))
    assert not v.passed, why
    assert not v.numbers["tests"][failing], (why, v.numbers["tests"])


def test_figure(tmp_path):
    files = T.figure(_sweep(tmp_path, _mix_fn(), _rare_fn()), tmp_path / "fig")
    assert files[0].name == "ttt_horizon.png" and files[0].stat().st_size > 10_000


@pytest.mark.slow
def test_quick_profile_end_to_end(tmp_path):
    from covsim.runners import run_cell

    dirs = {}
    for name, toml in (("ttt_horizon", MIX), ("ttt_rare", RARE)):
        run_sweep(load_config(toml, "quick"), run_cell, tmp_path / name, progress=False)
        dirs[name] = tmp_path / name
    v = CLAIMS["ttt_horizon"].check(dirs)
    assert v.passed, v.line()
