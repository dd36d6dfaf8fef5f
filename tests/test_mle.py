"""covsim.mle: the exact (constrained) MLE of AR linear models.

Every check is against quantities computed independently here in float64 numpy from the task's
features: the gradient, the gradient mapping, the Hessian, the Fisher information. Shapes are
shared between tests (n ∈ {100, 1600}) so each solver compiles once per shape."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from covsim.mle import curvature_bound, fit_loglinear_mle
from covsim.tasks.linear import AutoregressiveLinear

EPS32 = float(np.finfo(np.float32).eps)
N_SMALL, N_LARGE, SEEDS = 100, 1600, 16


@pytest.fixture(scope="module")
def task():
    # θ⋆ well inside Θ (‖θ⋆‖ = 0.5, R = 1): the constrained MLE is the interior one w.h.p.
    return AutoregressiveLinear.random(jax.random.key(0), V=4, H=4, d=4, X=3, theta_norm=0.5)


def _data(task, seed, n):
    return task.sample(jax.random.fold_in(jax.random.key(1), seed), n)


def _f64(task, x, y):
    """Float64 features, observed-token features and a function θ -> (ℓ, ∇ℓ, ∇²ℓ) (no l2)."""
    F = np.asarray(task.features(x, y), np.float64)
    phi_y = np.take_along_axis(F, np.asarray(y)[..., None, None], axis=-2)[..., 0, :]
    n = F.shape[0]

    def ell(theta):
        z = F @ np.asarray(theta, np.float64)
        zm = z.max(-1, keepdims=True)
        lse = zm[..., 0] + np.log(np.exp(z - zm).sum(-1))
        p = np.exp(z - lse[..., None])
        mean = np.einsum("nhv,nhvd->nhd", p, F)
        val = (np.sum(phi_y @ theta) - lse.sum()) / n
        grad = (phi_y - mean).sum((0, 1)) / n
        hess = (np.einsum("nhv,nhvd,nhve->de", p, F, F) - np.einsum("nhd,nhe->de", mean, mean)) / n
        return val, grad, -hess

    scale = np.sum(np.max(np.linalg.norm(F, axis=-1), axis=-1)) / n
    return ell, scale


def _proj(theta, R, ball):
    return theta / max(1.0, np.linalg.norm(theta) / R) if ball == "l2" else np.clip(theta, -R, R)


# ---- first-order optimality ----------------------------------------------------------------


@pytest.mark.parametrize("ball,R,l2", [("l2", 0.2, 0.0), ("linf", 0.2, 0.05), ("l2", 1.0, 0.5)])
def test_kkt_first_order_optimality(task, ball, R, l2):
    """R = 0.2 < ‖θ⋆‖ = 0.5: the optimum sits on the boundary; R = 1 with a strong L2
    penalty: it is interior and ∇ℓ = l2·θ."""
    x, y = _data(task, 0, N_SMALL)
    tol = 1e-6
    theta, info = fit_loglinear_mle(task, x, y, radius=R, ball=ball, l2=l2, tol=tol)
    theta = np.asarray(theta, np.float64)
    ell, s = _f64(task, x, y)
    val, g, _ = ell(theta)
    g_f = -g + l2 * theta  # gradient of the minimised f
    G = np.linalg.norm(theta - _proj(theta - g_f, R, ball))
    # the solver stops at G32 ≤ tol·s; its float32 gradient (pairwise sums over n, then H
    # and V terms of size ≤ s) differs from float64 by ≲ ε32·(log2 n + H + V)·s
    slack = EPS32 * (math.log2(N_SMALL) + 4 + 4) * s
    assert info["converged"]
    assert G <= tol * s + slack
    assert abs(float(info["grad_map"]) - G) <= slack
    norm = np.linalg.norm(theta) if ball == "l2" else np.max(np.abs(theta))
    if R < 0.5:
        assert norm == pytest.approx(R, rel=1e-6)
    else:
        assert norm < 0.9 * R
    assert float(info["objective"]) == pytest.approx(val - 0.5 * l2 * theta @ theta, abs=1e-5)
    # no feasible point does better (a check of optimality that does not use the gradient)
    rng = np.random.default_rng(0)
    for _ in range(50):
        other = _proj(theta + rng.normal(scale=0.1, size=theta.shape), R, ball)
        assert ell(other)[0] - 0.5 * l2 * other @ other <= val - 0.5 * l2 * theta @ theta + 1e-9


def test_curvature_bound_dominates_the_hessian(task):
    x, y = _data(task, 0, N_SMALL)
    ell, _ = _f64(task, x, y)
    L = float(curvature_bound(task.features(x, y)))
    rng = np.random.default_rng(1)
    for _ in range(5):
        _, _, h = ell(rng.normal(size=task.d))
        assert np.max(np.linalg.eigvalsh(-h)) <= L * (1 + 1e-5)


# ---- Prop 3.2's d = 1 instance: closed form --------------------------------------------------


@pytest.mark.parametrize("q,n1", [(0.65, 40), (0.95, 40), (0.0, 40), (0.5, 0)])
def test_prop_3_2_mle_is_clipped_atanh(q, n1):
    """Tokens {0, 1} = y ∈ {−1, +1}; ϕ(1, y_{1:h}) = y_h, ϕ(0, ·) = 0. On prompt 1 the
    log-likelihood is Σ [θ y − log 2cosh θ], maximised at atanh(ȳ), clipped to Θ = [−1, 1].
    Without prompt-1 data ℓ is flat and the solver returns its start, θ = 0."""
    n, H = 64, 6
    task = AutoregressiveLinear.prop_3_2(n=n, H=H)
    rng = np.random.default_rng(int(100 * q) + n1)
    prompts = (np.arange(n) < n1).astype(np.int32)[:, None]
    responses = (rng.random((n, H)) < q).astype(np.int32)
    theta, info = fit_loglinear_mle(task, prompts, responses)
    if n1 == 0:
        assert float(theta[0]) == 0.0 and int(info["iterations"]) == 0
        return
    ybar = np.mean(2.0 * responses[:n1] - 1.0)
    want = float(np.clip(np.arctanh(ybar) if abs(ybar) < 1 else np.sign(ybar) * np.inf, -1, 1))
    if abs(want) == 1.0:
        assert float(theta[0]) == pytest.approx(want, abs=2 * EPS32)  # projected onto ±1
    else:
        # |θ̂ − θ*| ≤ G/µ with G ≤ tol·s, s = n1·H/n and f'' ≥ (n1·H/n)(1 − tanh² 1) on Θ:
        # ≤ 1e-6/0.42 ≈ 2.4e-6, plus the float32 gradient error (≲ 2e-6): 1e-5
        assert float(theta[0]) == pytest.approx(want, abs=1e-5)


# ---- consistency: the MLE approaches θ⋆ as n grows --------------------------------------------


def _chernoff_upper(lam, k, a):
    """P( (1/k) Σ_{s≤k} Σ_j λ_j Z_sj² ≥ a ) ≤ min_t e^{−tka} Π_j (1 − 2tλ_j)^{−k/2}."""
    t = np.linspace(0, 0.5 / lam.max(), 2001)[1:-1]
    logb = -t * k * a - 0.5 * k * np.log1p(-2 * t[:, None] * lam).sum(-1)
    return float(np.exp(logb.min()))


def _chernoff_lower(lam, k, b):
    """P( (1/k) Σ_s Σ_j λ_j Z_sj² ≤ b ) ≤ min_t e^{tkb} Π_j (1 + 2tλ_j)^{−k/2}."""
    t = np.linspace(0, 50 / lam.min(), 20001)[1:]
    logb = t * k * b - 0.5 * k * np.log1p(2 * t[:, None] * lam).sum(-1)
    return float(np.exp(logb.min()))


def test_mle_error_shrinks_with_n(task):
    """Asymptotically n‖θ̂_n − θ⋆‖² ~ W = Σ_j λ_j Z_j², λ = eig(I⁻¹), I the per-sequence
    Fisher information (computed below). The claim mse(16n) < mse(n)/2 over 16 seeds holds when
    W̄_large < 2.83 Σλ and W̄_small > 0.354 Σλ (2.83 < 8·0.354); the Chernoff bounds for these
    two events, with the task's own λ, are asserted below 1e-4: the threshold is not flaky."""
    # Fisher information: E Σ_h Cov_{π⋆}(ϕ | prefix), exact given 20000 sampled prefixes
    xs, ys = task.sample(jax.random.key(99), 20000)
    F = np.asarray(task.features(xs, ys), np.float64)
    p = np.exp(np.asarray(task.next_token_log_probs(xs, ys), np.float64))
    m = np.einsum("nhv,nhvd->nhd", p, F)
    info_mat = (np.einsum("nhv,nhvd,nhve->de", p, F, F) - np.einsum("nhd,nhe->de", m, m)) / len(F)
    lam = 1.0 / np.linalg.eigvalsh(info_mat)
    fail = _chernoff_upper(lam, SEEDS, 2.83 * lam.sum()) + _chernoff_lower(
        lam, SEEDS, 0.354 * lam.sum())
    assert fail < 1e-4

    theta_star = np.asarray(task.theta, np.float64)
    mse = {}
    for n in (N_SMALL, N_LARGE):
        errs = []
        for s in range(SEEDS):
            x, y = _data(task, s, n)
            theta, info = fit_loglinear_mle(task, x, y)
            assert info["converged"]
            errs.append(np.sum((np.asarray(theta, np.float64) - theta_star) ** 2))
        mse[n] = float(np.mean(errs))
    assert mse[N_LARGE] < mse[N_SMALL] / 2
    # and both sit in the window the asymptotics predict (same events as above)
    for n in (N_SMALL, N_LARGE):
        assert 0.354 * lam.sum() < n * mse[n] < 2.83 * lam.sum()


# ---- L-BFGS (unconstrained) = FISTA (constrained) at an interior optimum ----------------------


def test_lbfgs_agrees_with_projected_solver_inside(task):
    x, y = _data(task, 0, N_LARGE)
    tol = 1e-6
    th_c, info_c = fit_loglinear_mle(task, x, y, tol=tol)  # R = 1, FISTA
    th_u, info_u = fit_loglinear_mle(task, x, y, radius=math.inf, tol=tol)  # L-BFGS
    assert info_c["converged"] and info_u["converged"] and np.isnan(float(info_u["L"]))
    assert float(jnp.linalg.norm(th_c)) < 0.9  # interior
    ell, s = _f64(task, x, y)
    _, _, h = ell(np.asarray(th_u, np.float64))
    mu = np.min(np.linalg.eigvalsh(-h))
    # strong convexity near the optimum: ‖θ − θ̂‖ ≤ ‖∇f(θ)‖/µ for each, float32 slack as above
    slack = EPS32 * (math.log2(N_LARGE) + 4 + 4) * s
    bound = 2 * (tol * s + slack) / mu
    assert float(jnp.linalg.norm(th_c - th_u)) <= bound
    assert float(info_c["objective"]) == pytest.approx(float(info_u["objective"]), abs=1e-5)


# ---- small things ----------------------------------------------------------------------------


def test_validation_and_warning(task):
    x, y = _data(task, 0, N_SMALL)
    with pytest.raises(ValueError, match="argument ball"):
        fit_loglinear_mle(task, x, y, ball="l1")
    with pytest.raises(ValueError, match="argument radius"):
        fit_loglinear_mle(task, x, y, radius=0.0)
    with pytest.raises(ValueError, match="argument responses must have shape"):
        fit_loglinear_mle(task, x, y[:-1])
    with pytest.raises(ValueError, match="argument l2"):
        fit_loglinear_mle(task, x, y, l2=-1.0)
    with pytest.warns(RuntimeWarning, match="stopped after 1 iterations"):
        _, info = fit_loglinear_mle(task, x, y, max_iter=1)
    assert not info["converged"] and int(info["iterations"]) == 1

