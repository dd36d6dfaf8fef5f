"""Claim sgd_horizon: the count-based exact scores against enumeration, the instance, one step
of the pure run against a hand computation (plain and normalized), traced hyperparameters, the
runner (roles, budgets, determinism), the check on synthetic result sets (PASS and each way to
FAIL), the figure, and (slow) the quick profile end to end."""

from __future__ import annotations

import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from covsim import metrics as M
from covsim import optim
from covsim.claims import CLAIMS
from covsim.claims import sgd_horizon as S
from covsim.config import load_config
from covsim.results import RunResult, read_metrics
from covsim.runners.sgd import one_pass_run
from covsim.sweep import run_sweep
from covsim.tasks.base import exact_joint
from covsim.tasks.linear import count_scores, multinomial_table
from covsim.tasks.paper import heterogeneous_mixture_task

ROOT = Path(__file__).resolve().parents[1]
TOML = ROOT / "experiments" / "one_pass.toml"


# ---- exact scores by counts --------------------------------------------------------------------


@pytest.mark.parametrize("H, V", [(0, 3), (1, 2), (5, 3), (4, 4)])
def test_multinomial_table_enumerates_every_count_vector(H, V):
    counts, log_coef = multinomial_table(H, V)
    assert counts.shape == (math.comb(H + V - 1, V - 1), V)
    assert np.all(counts.sum(1) == H) and len({tuple(c) for c in counts}) == len(counts)
    assert np.exp(log_coef).sum() == pytest.approx(V**H, rel=1e-12)  # Σ multinomial coefs


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_count_scores_match_enumeration(seed):
    """KL and Cov_N by counts equal brute force over X × V^H (H = 4: 81 responses a prompt)."""
    task = heterogeneous_mixture_task(H=4, B_A=3.0, b_R=2.0)
    theta = jnp.asarray(np.random.default_rng(seed).uniform(-0.5, 0.5, 3), jnp.float32)
    xs, ys, lj = exact_joint(task)
    lq = task.log_prob_theta(theta, xs, ys)
    r = (lj - task.log_mu[xs[:, 0]]) - lq
    Ns = jnp.asarray([1.5, 2.0, 4.0])
    margin = float(np.min(np.abs(np.asarray(r)[:, None] - np.log(np.asarray(Ns))[None])))
    assert margin > 1e-3  # no response within rounding of a threshold
    counts, log_coef = (jnp.asarray(a, jnp.float32) for a in multinomial_table(4, 3))
    kl, cov = count_scores(task.position_free_log_probs(task.theta),
                           task.position_free_log_probs(theta), task.log_mu, counts, log_coef,
                           jnp.log(Ns))
    assert float(kl) == pytest.approx(float(M.kl_exact(lj, r)), rel=1e-4)
    np.testing.assert_allclose(cov, M.coverage_exact(lj, r, Ns), atol=1e-5)


def test_heterogeneous_mixture_is_the_stated_instance():
    t = heterogeneous_mixture_task(H=8)
    p = np.exp(np.asarray(t.position_free_log_probs(t.theta)))
    assert p[0, 1] == pytest.approx(1 - 2 / (1 + math.exp(12)), rel=1e-5)  # A: margin 12
    assert p[1, 2] == pytest.approx(math.exp(5.1) / (math.exp(5.1) + 1 + math.exp(-5.1)),
                                    rel=1e-5)  # R: ≈ 0.994 on +1
    assert t.B == 48.0 and t.ball == "l2" and float(jnp.linalg.norm(t.theta)) <= 1.0
    assert float(t.sigma_star_sq()) == pytest.approx(8 * float(
        heterogeneous_mixture_task(H=1).sigma_star_sq()), rel=1e-5)  # σ⋆² ∝ H


# ---- the pure run ------------------------------------------------------------------------------


def _hand_step(task, theta, key, *, K, method, eta, lam):
    """One step by hand (numpy, float64) on the same draws as one_pass_run's first step."""
    k = jax.random.split(key, 1)[0]
    kx, kc, _ = jax.random.split(k, 3)
    x = np.asarray(jax.random.categorical(kx, task.log_mu, shape=(K,)))
    p = np.exp(np.asarray(task.position_free_log_probs(task.theta), np.float64))
    c = np.asarray(jax.random.multinomial(kc, task.H, jnp.asarray(p, jnp.float32)[x]), float)
    Phi = np.asarray(task.F[:, 0, 0], np.float64)
    z = Phi[x] @ np.asarray(theta, np.float64)
    q = np.exp(z - z.max(-1, keepdims=True))
    q /= q.sum(-1, keepdims=True)
    g_hat = np.mean([(c[i] - task.H * q[i]) @ Phi[x[i]] for i in range(K)], axis=0)
    step = eta * g_hat if method == "sgd" else eta * g_hat / (lam + np.linalg.norm(g_hat))
    new = np.asarray(theta, np.float64) + step
    return new / max(1.0, np.linalg.norm(new))


@pytest.mark.parametrize("method, K, eta, lam", [("sgd", 1, 0.002, 0.0),
                                                 ("sgd", 1, 0.5, 0.0),  # lands outside: projected
                                                 ("normalized_sgd", 4, 0.3, 2.0)])
def test_one_step_matches_a_hand_computation(method, K, eta, lam):
    task = heterogeneous_mixture_task(H=6)
    theta0 = jnp.asarray([0.0, 0.25, 0.433], jnp.float32)
    key = jax.random.key(3)
    counts, log_coef = (jnp.asarray(a, jnp.float32) for a in multinomial_table(6, 3))
    kl, cov, theta1 = one_pass_run(task.F[:, 0, 0], task.position_free_log_probs(task.theta),
                                   task.log_mu, theta0, key, eta, lam, method=method, K=K, T=1,
                                   counts=counts, log_coef=log_coef, log_N=jnp.log(4.0)[None])
    want = _hand_step(task, theta0, key, K=K, method=method, eta=eta, lam=lam)
    np.testing.assert_allclose(theta1, want, rtol=2e-5, atol=2e-6)
    assert float(jnp.linalg.norm(theta1)) <= 1.0 + 1e-6
    lq = task.position_free_log_probs(theta1)
    want_kl, want_cov = count_scores(task.position_free_log_probs(task.theta), lq, task.log_mu,
                                     counts, log_coef, jnp.log(4.0)[None])
    assert float(kl[0]) == pytest.approx(float(want_kl), rel=1e-5)
    assert float(cov[0, 0]) == pytest.approx(float(want_cov[0]), abs=1e-6)


def test_traced_step_sizes_match_concrete_ones():
    """The runner vmaps covsim.optim's transforms over a grid of η, λ: same updates."""
    g = jnp.asarray([0.3, -1.2, 2.0])
    etas, lams = jnp.asarray([0.1, 0.7]), jnp.asarray([0.0, 3.0])
    traced = jax.vmap(lambda e, v: optim.normalized_sgd(e, v).update(g, optax.EmptyState())[0])(
        etas, lams)
    for i in range(2):
        want = optim.normalized_sgd(float(etas[i]), float(lams[i])).update(
            g, optax.EmptyState())[0]
        np.testing.assert_allclose(traced[i], want, rtol=1e-6)
    with pytest.raises(ValueError, match=r"^argument eta must be in \(0.0, inf\)"):
        optim.normalized_sgd(0.0, 1.0)


# ---- the runner --------------------------------------------------------------------------------

TINY = ["task.H=4", "runner.eta_grid={sgd = [0.5, 1.5], normalized_sgd = [0.3]}",
        "runner.lam_grid=[10.0]", "runner.K_grid=[1, 4]", "runner.n_samples=40",
        "runner.tune_seeds=2", "runner.traj_points=5", "sweep.seeds=3",
        "sweep.axes={\"runner.method\" = [\"sgd\", \"normalized_sgd\"]}"]


def test_runner_roles_budgets_and_determinism(tmp_path):
    from covsim.runners import run_cell

    cfg = load_config(TOML, "quick", TINY)
    run_sweep(cfg, run_cell, tmp_path / "a", progress=False)
    df = read_metrics(tmp_path / "a")
    # sgd: 2 grid steps + the proof's, K = 1; normalized: (1 grid + proof) × K ∈ {1, 4}
    assert len(df[df["method"] == "sgd"]) == 3 * 5 and len(df[df["method"] == "normalized_sgd"]) \
        == 2 * 2 * 5
    assert set(df["role"]) == {"tune", "eval"} and set(df.loc[df["role"] == "eval", "seed"]) \
        == {0, 1, 2}
    assert set(df["K"] * df["T"]) == {40}  # every setting spends the same fresh sequences
    assert df["finite"].all() and (df["cov@4"].between(0, 1)).all()
    tune = df[df["role"] == "tune"].sort_values(["method", "K", "eta", "seed"])
    run_sweep(cfg, run_cell, tmp_path / "b", progress=False)
    again = read_metrics(tmp_path / "b")
    np.testing.assert_array_equal(df.sort_values(["method", "K", "eta", "role", "seed"])["kl"],
                                  again.sort_values(["method", "K", "eta", "role", "seed"])["kl"])
    assert not np.allclose(tune[tune["seed"] == -1]["kl"], tune[tune["seed"] == -2]["kl"])


def test_runner_refuses_an_unknown_method():
    from covsim.runners.sgd import run_one_pass
    from covsim.sweep import cell_config, expand_grid

    cfg = load_config(TOML, "quick", [*TINY[:-1], "runner.method='lbfgs'", "sweep.axes={}"])
    cell = expand_grid(cfg.sweep.axes, cfg.sweep.seeds, vmap_seeds=True)[0]
    with pytest.raises(ValueError, match=r"^runner.method: must be one of \['sgd', "):
        run_one_pass(cell_config(cfg, cell), cell)


# ---- the check on synthetic result sets -------------------------------------------------------

HS = [4, 8, 16, 32, 64]
GRID = [0.5, 1.0, 1.5, 2.0, 2.5]


def _cell_fn(plain_slope=1.0, norm_slope=0.0, norm_level=0.002, best_c=1.5, noise=0.1):
    """Synthetic cells: plain SGD's Cov = 0.001·(H/4)^plain_slope at its best step best_c (worse
    away from it); normalized SGD's = norm_level·(H/4)^norm_slope at (K = 4, η = 0.3, λ = 10),
    3× worse elsewhere; lognormal seed noise."""

    def fn(cfg, cell):
        method, H = cfg.runner.params["method"], cfg.task.H
        recs = []
        seeds = [("tune", -1 - i) for i in range(6)] + [("eval", s) for s in cell.seeds]
        rng = np.random.default_rng(H * 7 + len(method))
        if method == "sgd":
            settings = [(c, 0.0, 1, "grid") for c in GRID] + [(0.01, 0.0, 1, "proof")]
        else:
            settings = [(e, v, k, "grid") for e in (0.3, 0.6) for v in (10.0,) for k in (1, 4)]
            settings.append((1e-4, 500.0, 4, "proof"))
        for e, v, k, setting in settings:
            for role, s in seeds:
                if method == "sgd":
                    base = 0.001 * (H / 4) ** plain_slope * (1 + abs(e - best_c))
                    base = 0.5 if setting == "proof" else base
                else:
                    base = norm_level * (H / 4) ** norm_slope * (1 if (e, k) == (0.3, 4) else 3)
                cov = min(1.0, base * math.exp(noise * rng.standard_normal()))
                recs.append({"step": 2000 // k, "seed": s, "role": role, "method": method,
                             "K": k, "setting": setting, "eta": e / (H * 48) if method == "sgd"
                             else e, "eta_HB": e, "lam": v, "T": 2000 // k, "H": H, "B": 48.0,
                             "sigma2": 0.048 * H, "kl": 10 * cov, "kl_final": 0.0, "cov": {4: cov},
                             "cov_final": {4: cov / 100}, "traj_t": [1, 2], "traj_Ns": [4.0],
                             "traj_cov": [[1.0, cov]], "finite": True})
        return RunResult(recs, {})

    return fn


def _sweep(tmp_path, fn):
    out = tmp_path / "one_pass"
    cfg = load_config(TOML, "quick", ["sweep.seeds=12"])
    manifest = run_sweep(cfg, fn, out, progress=False)
    assert all(c["status"] == "done" for c in manifest["cells"])
    return {"one_pass": out}


def test_check_passes_when_plain_grows_and_normalized_is_flat(tmp_path):
    v = S.check(_sweep(tmp_path, _cell_fn()))
    assert v.passed, v.line()
    assert v.numbers["plain_picks"] == {H: 1.5 for H in HS}
    assert v.numbers["fixed_pick"] == {"K": 4, "eta": 0.3, "lam": 10.0}
    assert v.numbers["plain_slope"][0] == pytest.approx(1.0, abs=0.1)
    assert "proof" in v.note and "mini-batching" in v.note


@pytest.mark.parametrize(
    "kw, failing, why",
    [
        (dict(plain_slope=0.0), "plain_grows", "plain SGD flat in H: Prop. 5.1's effect absent"),
        (dict(norm_slope=1.0), "normalized_slower", "normalized SGD grows like plain SGD"),
        (dict(norm_slope=0.0, norm_level=0.02), "normalized_below_at_H_max",
         "normalized flat but above plain SGD at H_max"),
        (dict(best_c=2.5), "plain_pick_interior", "plain SGD's best step at the grid's edge"),
        (dict(norm_slope=0.6, plain_slope=2.0), "normalized_within_bound_shape",
         "normalized SGD grows faster than √σ⋆²: Thm 5.1's shape broken"),
    ],
)
def test_check_fails(tmp_path, kw, failing, why):
    v = S.check(_sweep(tmp_path, _cell_fn(**kw)))
    assert not v.passed, why
    assert not v.numbers["tests"][failing], (why, v.numbers["tests"])


def test_a_diverging_run_counts_as_uncovered(tmp_path):
    df = read_metrics(_sweep(tmp_path, _cell_fn())["one_pass"])
    bad = df.copy()
    bad.loc[bad.index[:3], "finite"] = False
    assert (S._runs(bad).loc[bad.index[:3], S.COV] == 1.0).all()


def test_figure(tmp_path):
    dirs = _sweep(tmp_path, _cell_fn())
    files = S.figure(dirs, tmp_path / "fig")
    assert [f.name for f in files] == ["sgd_horizon.png"] and files[0].stat().st_size > 10_000


@pytest.mark.slow
def test_quick_profile_end_to_end(tmp_path):
    """One quick one-pass sweep (≈ 6 CPU minutes) serves the three claims that read it."""
    from covsim.runners import run_cell

    out = tmp_path / "one_pass"
    run_sweep(load_config(TOML, "quick"), run_cell, out, progress=False)
    dirs = {"one_pass": out}
    for name in ("sgd_horizon", "distill_horizon"):
        v = CLAIMS[name].check(dirs)
        assert v.passed, v.line()
    report = CLAIMS["signsgd_adam"].check(dirs)
    assert report.passed is None and report.numbers["position"]["adam"]
    for name in ("sgd_horizon", "signsgd_adam", "distill_horizon"):
        assert all(f.is_file() for f in CLAIMS[name].figure(dirs, tmp_path / "fig"))


@pytest.mark.parametrize(
    "toml, over, message",
    [
        ("one_pass.toml", ["runner.method='lbfgs'"], "runner.method: must be one of ['sgd', "),
        ("one_pass.toml", ['runner.eta_grid={sgd = []}'], "runner.eta_grid.sgd: must be a "),
        ("one_pass.toml", ["runner.method='normalized_sgd'", "runner.K_grid=[0]"],
         "runner.K_grid[0]: "),
        ("ttt_horizon.toml", ["runner.checkpoints=0"], "runner.checkpoints: "),
        ("tournament.toml", ["runner.N=0.5"], "runner.N: "),
        ("variance.toml", ["task.panel='k'"], "task.panel: must be one of ['sigma', 'n', 'H']"),
    ],
)
def test_bad_runner_settings_are_one_line_errors_before_compute(tmp_path, capsys, toml, over,
                                                               message):
    """The §5–6 and exact runners check a cell's settings before anything runs: exit 2, one
    line naming the field, no traceback, nothing written."""
    from covsim.cli import main

    sets = [a for o in [*over, "sweep.axes={}"] for a in ("--set", o)]
    out = tmp_path / "o"
    assert main(["run", str(ROOT / "experiments" / toml), *sets, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1, err
    assert not out.exists()
