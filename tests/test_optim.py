"""covsim.optim: projection, the paper's optimizers, theory step sizes, token-level SGD, and the
truncated distillation gradient. Reference values are written independently here (numpy loops,
explicit formulas); float32 tolerances are a few ulps of the quantities compared."""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from covsim import metrics, optim
from covsim.tasks.base import gather_tokens
from covsim.tasks.linear import AutoregressiveLinear

EPS32 = float(np.finfo(np.float32).eps)


def _tree(key, scale=1.0):
    """A small params pytree of mixed shapes."""
    k1, k2, k3 = jax.random.split(key, 3)
    return {
        "w": scale * jax.random.normal(k1, (3, 2)),
        "b": scale * jax.random.normal(k2, (4,)),
        "s": {"c": scale * jax.random.normal(k3, ())},
    }


def _flat(t) -> np.ndarray:
    return np.concatenate([np.ravel(np.asarray(a, np.float64)) for a in jax.tree.leaves(t)])


def _step(tx, grads, params):
    upd, _ = tx.update(grads, tx.init(params), params)
    return upd


# ---- projection ----------------------------------------------------------------------------


@pytest.mark.parametrize("ball", ["l2", "linf"])
def test_project_lands_in_ball_and_matches_closed_form(ball):
    R = 0.7
    tx = optim.project(R, ball)
    for i in range(6):
        params = _tree(jax.random.key(i), 0.3)
        u = _tree(jax.random.key(100 + i), 2.0 ** (i - 3))
        new = optax.apply_updates(params, _step(tx, u, params))
        z = _flat(params) + _flat(u)
        want = z / max(1.0, np.linalg.norm(z) / R) if ball == "l2" else np.clip(z, -R, R)
        got = _flat(new)
        # θ + (p − θ) in float32 is p up to a few ulps of the entries
        np.testing.assert_allclose(got, want, rtol=0, atol=8 * EPS32)
        norm = np.linalg.norm(got) if ball == "l2" else np.max(np.abs(got))
        assert norm <= R * (1 + 8 * EPS32)


@pytest.mark.parametrize("ball", ["l2", "linf"])
def test_project_is_identity_inside(ball):
    params = _tree(jax.random.key(0), 0.05)  # global norm < 0.3 < R
    u = _tree(jax.random.key(1), 0.01)
    upd = _step(optim.project(1.0, ball), u, params)
    np.testing.assert_allclose(_flat(upd), _flat(u), rtol=0, atol=4 * EPS32)
    same = optim.project_params(params, math.inf, ball)
    np.testing.assert_array_equal(_flat(same), _flat(params))


def test_project_composes_with_sgd():
    R, eta = 1.0, 0.5
    params, g = _tree(jax.random.key(2), 0.5), _tree(jax.random.key(3), 1.0)
    tx = optax.chain(optim.sgd(eta), optim.project(R))
    new = optax.apply_updates(params, _step(tx, g, params))
    z = _flat(params) - eta * _flat(g)  # descent on the loss = ascent on log-likelihood
    want = z / max(1.0, np.linalg.norm(z) / R)
    assert np.linalg.norm(z) > R  # the projection is active
    np.testing.assert_allclose(_flat(new), want, rtol=0, atol=8 * EPS32)


def test_project_validation():
    with pytest.raises(ValueError, match="ball"):
        optim.project(1.0, "l1")
    with pytest.raises(ValueError, match="radius"):
        optim.project(0.0)
    tx = optim.project(1.0)
    with pytest.raises(ValueError, match="params"):
        tx.update({"a": jnp.ones(2)}, tx.init(None))


# ---- normalized SGD, SignSGD, Adam ---------------------------------------------------------------


@pytest.mark.parametrize("lam", [0.0, 0.3, 5.0])
def test_normalized_sgd_formula(lam):
    eta = 0.2
    for i in range(3):
        g = _tree(jax.random.key(10 + i), 3.0 ** i)
        upd = _step(optim.normalized_sgd(eta, lam), g, g)
        want = -eta * _flat(g) / (lam + np.linalg.norm(_flat(g)))
        np.testing.assert_allclose(_flat(upd), want, rtol=4 * EPS32, atol=1e-12)
    zero = jax.tree.map(jnp.zeros_like, g)
    assert np.all(_flat(_step(optim.normalized_sgd(eta, lam), zero, zero)) == 0)


def test_sign_sgd_formula():
    g = _tree(jax.random.key(4))
    g["b"] = g["b"].at[0].set(0.0)
    upd = _step(optim.sign_sgd(0.3), g, g)
    np.testing.assert_array_equal(_flat(upd), (-0.3 * np.sign(_flat(g))).astype(np.float32))


def test_adam_wrapper_matches_optax():
    p, g = _tree(jax.random.key(5)), _tree(jax.random.key(6))
    ours = _step(optim.adam(1e-2, weight_decay=0.1, b1=0.8), g, p)
    ref = _step(optax.adamw(1e-2, b1=0.8, weight_decay=0.1), g, p)
    np.testing.assert_array_equal(_flat(ours), _flat(ref))
    np.testing.assert_array_equal(_flat(_step(optim.adam(1e-2), g, p)),
                                  _flat(_step(optax.adam(1e-2), g, p)))
    with pytest.raises(ValueError, match="b2"):
        optim.adam(1e-3, b2=1.0)


# ---- theory step sizes ---------------------------------------------------------------------


@pytest.mark.parametrize("B,H,T,s2,N", [(1.0, 8, 1000, 2.0, 16.0), (3.0, 64, 10**6, 0.5, 1e4),
                                        (1.0, 2, 10, 50.0, 3.0), (2.0, 4, 100, 0.0, 8.0)])
def test_theory_step_sizes_match_the_formulas(B, H, T, s2, N):
    inf = float("inf")
    M = np.log(N)
    # written out from the proofs (Prop. 5.1, Thms 5.1, 6.1, 6.2), numpy's inf for σ⋆² = 0
    with np.errstate(divide="ignore"):
        sgd = min(1 / (2 * H * B * B), np.sqrt(np.float64(2) / (s2 * T)))
        ns_eta = min(1 / (128 * B), (M / np.float64(s2 * T)) ** 0.25)
        tok = min(1 / (2 * B * B), np.float64(s2 * T) ** -0.5)
        dist = min(1 / ((64 * M + 2) * B * B), np.float64(T * s2 * M) ** -0.5)
    kw = dict(B=B, H=H, T=T, sigma2=s2, N=N)
    assert optim.theory_step_size("sgd", **kw) == pytest.approx(sgd, rel=1e-12)
    eta, lam = optim.theory_step_size("normalized_sgd", **kw)
    assert eta == pytest.approx(ns_eta, rel=1e-12)
    assert lam == pytest.approx(M / (16 * ns_eta), rel=1e-12)
    assert lam >= 8 * B * M * (1 - 1e-12) and lam * eta / M <= 1 / 16 + 1e-12  # proof's needs
    assert optim.theory_step_size("token_sgd", **kw) == pytest.approx(tok, rel=1e-12)
    assert optim.theory_step_size("distill_sgd", **kw) == pytest.approx(dist, rel=1e-12)
    assert sgd < inf and dist < inf


def test_theory_sgd_minimises_the_prop_5_1_bound():
    B, H, T, s2 = 0.1, 2, 1000, 3.0  # loose smoothness cap: the interior minimiser is chosen
    eta = optim.theory_step_size("sgd", B=B, H=H, T=T, sigma2=s2)
    bound = lambda e: 4 / (e * T) + 2 * e * s2
    assert eta < 1 / (2 * H * B * B)
    assert bound(eta) <= min(bound(eta * 0.99), bound(eta * 1.01))


def test_theory_step_size_validation():
    with pytest.raises(ValueError, match=r"needs argument\(s\) \['H'\]"):
        optim.theory_step_size("sgd", B=1.0, T=10, sigma2=1.0)
    with pytest.raises(ValueError, match="name must be one of"):
        optim.theory_step_size("adam", B=1.0, T=10, sigma2=1.0)
    with pytest.raises(ValueError, match="argument K must be 1"):
        optim.theory_step_size("token_sgd", B=1.0, T=10, sigma2=1.0, K=4)
    with pytest.raises(ValueError, match="argument N"):
        optim.theory_step_size("normalized_sgd", B=1.0, T=10, sigma2=1.0, N=1.0)


# ---- make_optimizer ------------------------------------------------------------------------


def test_make_optimizer_builds_the_named_transform():
    p, g = _tree(jax.random.key(7), 0.6), _tree(jax.random.key(8))
    spec = {"name": "normalized_sgd", "eta": 0.1, "lam": 1.0,
            "project": {"radius": 1.0, "ball": "l2"}}
    new = optax.apply_updates(p, _step(optim.make_optimizer(spec), g, p))
    z = _flat(p) - 0.1 * _flat(g) / (1.0 + np.linalg.norm(_flat(g)))
    np.testing.assert_allclose(_flat(new), z / max(1.0, np.linalg.norm(z)), atol=8 * EPS32)

    theory = dict(B=1.0, H=8, T=100, sigma2=2.0, N=16.0)
    s = optim.resolve_spec({"name": "normalized_sgd", "eta": "theory"}, theory)
    assert (s["eta"], s["lam"]) == optim.theory_step_size("normalized_sgd", **theory)
    s = optim.resolve_spec({"name": "normalized_sgd", "eta": "theory", "lam": 2.0}, theory)
    assert s["lam"] == 2.0
    s = optim.resolve_spec({"name": "sgd", "eta": "theory"},
                           {**theory, "rule": "distill_sgd", "N": 64.0})
    assert s["eta"] == optim.theory_step_size("distill_sgd", **{**theory, "N": 64.0})
    s = optim.resolve_spec({"name": "sgd", "eta": "theory"}, {**theory, "rule": "token_sgd"})
    assert s["eta"] == optim.theory_step_size("token_sgd", **theory)
    with pytest.raises(ValueError, match=r"no rule for 'token_sgd' training; allowed: "
                                         r"\['normalized_sgd'\]"):
        optim.resolve_spec({"name": "normalized_sgd", "eta": "theory"},
                           {**theory, "rule": "token_sgd"})
    upd = _step(optim.make_optimizer({"name": "sign_sgd", "eta": 0.5}), g, p)
    np.testing.assert_array_equal(_flat(upd), (-0.5 * np.sign(_flat(g))).astype(np.float32))


@pytest.mark.parametrize("spec,theory,match", [
    ({"name": "sgdd", "eta": 1.0}, None, r"field 'name' must be one of \['sgd', "),
    ({"name": "sgd", "eta": 1.0, "lr": 2.0}, None, "'eta' and 'lr' are the same step size"),
    ({"name": "sgd", "eta": 1.0, "b1": 2.0}, None, r"unknown field 'b1'; allowed fields: \["),
    ({"name": "normalized_sgd", "eta": 1.0}, None, "needs field 'lam'"),
    ({"name": "sgd", "eta": -1.0}, None, r"optimizer\.eta must be in \(0.0, inf\)"),
    ({"name": "sgd", "eta": "fast"}, None, "field 'eta' must be a number"),
    ({"name": "adam", "lr": 1e-3, "b1": 1.5}, None, r"optimizer\.b1 must be in \[0.0, 1.0\)"),
    ({"name": "sign_sgd", "eta": "theory"}, {}, "'eta' may be 'theory' only for"),
    ({"name": "sgd", "eta": "theory"}, None, r"needs argument\(s\)"),
    ({"name": "sgd", "eta": "theory"}, {"B": 1.0, "Q": 2}, "bad theory arguments"),
    ({"name": "normalized_sgd", "eta": 0.1, "lam": "theory"}, {}, "only when 'eta' is"),
    ({"name": "sgd", "eta": 0.1, "project": {"radius": 1.0, "ball": "l1"}}, None,
     r"optimizer\.project\.ball must be one of \['l2', 'linf'\]"),
    ({"name": "sgd", "eta": 0.1, "project": {"R": 1.0}}, None, "unknown key 'R'"),
    ({"name": "sgd", "eta": 0.1, "project": {"radius": 0.0}}, None,
     r"optimizer\.project\.radius"),
])
def test_make_optimizer_validation_names_the_field(spec, theory, match):
    with pytest.raises(ValueError, match=match):
        optim.make_optimizer(spec, theory)


# ---- token-level SGD and TTT (AR linear task) ----------------------------------------------


@pytest.fixture(scope="module")
def ar_task():
    return AutoregressiveLinear.random(jax.random.key(0), V=4, H=5, d=3, X=2, B=2.0,
                                       theta_norm=0.8)


def test_token_level_sgd_matches_an_explicit_loop(ar_task):
    task = ar_task
    xs, ys = task.sample(jax.random.key(1), 3)
    eta, R = 0.7, 0.9
    proj = partial(optim.project_params, radius=R, ball="l2")

    def token_lp(theta, x, y, h):
        return task.next_token_log_probs_theta(theta, x[None], y[None])[0, h, y[h]]

    epoch = jax.jit(lambda th, x, y: optim.token_level_sgd_epoch(
        optim.linear_logp_next(task, x, y), th, y, eta, proj))
    ttt = jax.jit(lambda th, x, y: optim.ttt_log_prob(
        optim.linear_logp_next(task, x, y), th, y, eta, proj))
    theta0 = 0.5 * task.theta[::-1]
    for x, y in zip(xs, ys, strict=True):
        th, lps = theta0, []
        for h in range(task.H):  # Eq. 21 written out
            lps.append(float(token_lp(th, x, y, h)))
            th = th + eta * jax.grad(token_lp)(th, x, y, h)
            th = th / max(1.0, float(jnp.linalg.norm(th)) / R)
        got_th, got_lp = epoch(theta0, x, y)
        np.testing.assert_allclose(got_th, th, rtol=0, atol=1e-5)
        np.testing.assert_allclose(got_lp, lps, rtol=0, atol=1e-5)
        assert float(ttt(theta0, x, y)) == pytest.approx(float(jnp.sum(got_lp)), abs=1e-6)
    # vmapped over sequences = one at a time
    many = jax.vmap(ttt, in_axes=(None, 0, 0))(theta0, xs, ys)
    np.testing.assert_allclose(many, [ttt(theta0, x, y) for x, y in zip(xs, ys, strict=True)],
                               rtol=0, atol=1e-5)


def test_token_level_sgd_without_projection_is_plain_ascent(ar_task):
    task = ar_task
    xs, ys = task.sample(jax.random.key(2), 1)
    x, y = xs[0], ys[0]
    th, lps = optim.token_level_sgd_epoch(optim.linear_logp_next(task, x, y), task.theta, y, 0.0)
    # η = 0: every token is scored by θ itself, so the TTT log-prob is log π_θ(y|x)
    np.testing.assert_array_equal(th, task.theta)
    want = task.log_prob_theta(task.theta, xs, ys)[0]
    assert float(jnp.sum(lps)) == pytest.approx(float(want), abs=1e-5)


# ---- truncated distillation ----------------------------------------------------------------


def _alpha_loop(eps, A):
    """The truncation weights of Eqs. 24–25 by an explicit loop, in float64."""
    S, out = 0.0, []
    for e in eps:
        w = 1.0 if S + e <= A else (max(0.0, (A - S) / e) if S < A else 0.0)
        out.append(w)
        S += e
    return np.array(out)


def test_truncation_weights_identity_and_loop():
    rng = np.random.default_rng(0)
    H = 12
    eps = rng.exponential(0.5, size=(200, H)).astype(np.float32)
    eps[rng.random(eps.shape) < 0.3] = 0.0  # exact zeros, including on would-be crossings
    A = rng.uniform(0, 6, size=(200, 1)).astype(np.float32)
    A[:5] = 0.0
    a = np.asarray(optim.truncation_weights(jnp.asarray(eps), jnp.asarray(A)))
    assert np.all(np.isfinite(a)) and np.all((a >= 0) & (a <= 1))
    assert np.all(np.diff(a, axis=-1) <= 0)  # 1 … 1, fraction, 0 … 0
    lhs = np.sum(a.astype(np.float64) * eps, axis=-1)
    rhs = np.minimum(A[:, 0].astype(np.float64), eps.astype(np.float64).sum(-1))
    # float32 running sums of H terms: error ≤ H·ε32·Σε (each partial sum, plus the fraction)
    tol = 2 * H * EPS32 * eps.astype(np.float64).sum(-1) + 1e-12
    assert np.all(np.abs(lhs - rhs) <= tol)
    for i in range(20):
        np.testing.assert_allclose(a[i], _alpha_loop(eps[i].astype(np.float64), float(A[i, 0])),
                                   rtol=0, atol=1e-5)


def test_truncation_weights_infinite_kl_is_not_nan():
    eps = jnp.array([0.5, jnp.inf, 0.2, 0.0])
    np.testing.assert_array_equal(optim.truncation_weights(eps, 1.0), [1.0, 0.0, 0.0, 0.0])
    np.testing.assert_array_equal(optim.truncation_weights(eps, 0.25), [0.5, 0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="argument A"):
        optim.truncation_weights(eps, -1.0)


def test_truncated_distillation_gradient(ar_task):
    task = ar_task
    xs, ys = task.sample(jax.random.key(3), 4)
    theta = 0.3 * task.theta[::-1]
    teacher = task.next_token_log_probs(xs, ys)
    model = task.next_token_log_probs_theta(theta, xs, ys)

    pD, pM = np.exp(np.asarray(teacher, np.float64)), np.exp(np.asarray(model, np.float64))
    eps_ref = np.sum(pD * (np.log(pD) - np.log(pM)), axis=-1)
    eps = np.asarray(metrics.token_kl(teacher, model))
    np.testing.assert_allclose(eps, eps_ref, rtol=1e-4, atol=1e-6)
    zero = jnp.log(jnp.array([0.0, 0.5, 0.5]))
    assert float(metrics.token_kl(zero, jnp.log(jnp.array([0.2, 0.4, 0.4])))) == pytest.approx(
        np.log(0.5 / 0.4), abs=1e-6)

    A = float(np.median(eps.sum(-1)))  # some sequences truncated, some not
    loss = lambda th: jnp.sum(optim.truncated_distillation_loss(
        teacher, task.next_token_log_probs_theta(th, xs, ys), ys, A))
    g = np.asarray(jax.grad(loss)(theta), np.float64)
    # −ĝ = −Σ_i Σ_h α_ih (ϕ(y_ih) − E_{π_θ} ϕ), the log-linear gradient identity
    F = np.asarray(task.features(xs, ys), np.float64)
    phi_y = np.take_along_axis(F, np.asarray(ys)[..., None, None], axis=-2)[..., 0, :]
    score = phi_y - np.einsum("nhv,nhvd->nhd", pM, F)
    alpha = np.array([_alpha_loop(e, A) for e in eps_ref])
    assert 0 < np.sum(alpha < 1) < alpha.size
    np.testing.assert_allclose(g, -np.einsum("nh,nhd->d", alpha, score), rtol=0, atol=2e-5)
    # A ≥ Σ ε: no truncation, the plain sequence NLL gradient
    full = lambda th: -jnp.sum(gather_tokens(task.next_token_log_probs_theta(th, xs, ys), ys))
    big = lambda th: jnp.sum(optim.truncated_distillation_loss(
        teacher, task.next_token_log_probs_theta(th, xs, ys), ys, 1e6))
    np.testing.assert_allclose(jax.grad(big)(theta), jax.grad(full)(theta), rtol=0, atol=1e-5)
