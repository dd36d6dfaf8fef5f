"""Exact maximum likelihood for log-linear (AR linear) models over Θ = {‖θ‖ ≤ R}
(Assumption 2.2, §4).

    maximise  ℓ(θ) = (1/n) Σ_i Σ_h [⟨θ, ϕ(x_i, y_i,1:h)⟩ − logsumexp_v ⟨θ, ϕ(x_i, y_i,<h, v)⟩]
                     − (l2/2) ‖θ‖²          over θ ∈ Θ,

i.e. minimise f = −ℓ. f is convex and smooth; the solvers run to a stationarity tolerance, so
this is the paper's MLE π̂ (Thm 4.1/4.2), not an SGD approximation of it.

* R = inf: optax L-BFGS with zoom line search.
* R < inf: FISTA with a fixed step 1/L and gradient-based adaptive restart (O'Donoghue &
  Candès 2015), L an exact upper bound on the curvature of f (below). No function-value line
  search: in float32 f's rounding (~1e-7 |f|) would stall a backtracking search long before
  the gradient is small.

Stationarity is measured by the gradient mapping with unit step,
G(θ) = ‖θ − Proj_Θ(θ − ∇f(θ))‖, which is 0 exactly at the constrained optimum (KKT) and equals
‖∇f(θ)‖ at interior points. The loops stop when G ≤ tol · s, where s = (1/n) Σ_i Σ_h
max_v ‖ϕ(x_i, y_i,<h, v)‖ (≈ H·B) is the scale of a sequence score, so `tol` is relative and
reachable in float32. Both loops are `lax.while_loop`s inside `jit`: deterministic.

`fit_padded_mle` fits on a zero-padded dataset (one compile for every n and H of a study) from
a vertex of Θ, which the exact-MLE runners (`covsim.runners.exact_mle`) use.
"""

from __future__ import annotations

import math
import warnings
from functools import partial

import jax
import jax.numpy as jnp
import optax
from jax import lax

from covsim.checks import check_float, check_int, check_shape
from covsim.optim import BALLS, project_params

Array = jax.Array


def _pairwise_sum(a: Array) -> Array:
    """Σ over axis 0 by pairwise halving: float32 error O(ε log n), where XLA's CPU reduction
    is O(ε n) (measured 3e-5 on a gradient of n = 3200 sequences, above a 1e-6 tolerance)."""
    n = a.shape[0]
    m = 1 << max(0, (n - 1).bit_length())
    if m > n:
        a = jnp.concatenate([a, jnp.zeros((m - n, *a.shape[1:]), a.dtype)])
    while a.shape[0] > 1:
        a = a.reshape(a.shape[0] // 2, 2, *a.shape[1:]).sum(axis=1)
    return a[0]


def _per_sequence(theta, F, phi_y):
    """Sequence NLLs s_i = Σ_h [lse_v ⟨θ, ϕ_ihv⟩ − ⟨θ, ϕ_i,h,y⟩] (n,) and scores ∇s_i (n, d)."""
    z = F @ theta  # (n, H, V)
    lse = jax.nn.logsumexp(z, axis=-1)
    p = jnp.exp(z - lse[..., None])
    s = jnp.sum(lse - phi_y @ theta, axis=-1)
    g = jnp.sum(jnp.einsum("nhv,nhvd->nhd", p, F) - phi_y, axis=1)
    return s, g


@jax.custom_vjp
def _neg_loglik(theta, F, phi_y, l2):
    """f(θ) = −ℓ(θ): F (n, H, V, d), phi_y (n, H, d) = ϕ at the observed tokens. Its gradient
    (custom, for L-BFGS's line search too) sums per-sequence scores pairwise over n."""
    s, _ = _per_sequence(theta, F, phi_y)
    return _pairwise_sum(s) / F.shape[0] + 0.5 * l2 * (theta @ theta)


def _value_and_grad(theta, F, phi_y, l2):
    s, g = _per_sequence(theta, F, phi_y)
    n = F.shape[0]
    f = _pairwise_sum(s) / n + 0.5 * l2 * (theta @ theta)
    return f, _pairwise_sum(g) / n + l2 * theta


def _nll_bwd(g, ct):
    return ct * g, None, None, None  # data and l2 are never differentiated


_neg_loglik.defvjp(_value_and_grad, _nll_bwd)  # residual = the gradient


def _grad_map(theta, g, radius, ball):
    return jnp.linalg.norm(theta - project_params(theta - g, radius, ball))


@jax.jit
def _lbfgs(F, phi_y, l2, theta0, thresh, max_iter):
    fun = partial(_neg_loglik, F=F, phi_y=phi_y, l2=l2)
    opt = optax.lbfgs()
    vg = optax.value_and_grad_from_state(fun)

    def body(c):
        theta, state, k, _, _ = c
        value, g = vg(theta, state=state)
        upd, state = opt.update(g, state, theta, value=value, grad=g, value_fn=fun)
        new = optax.apply_updates(theta, upd)
        stalled = jnp.all(new == theta)  # the line search found no step at float32 precision
        return new, state, k + 1, jnp.linalg.norm(jax.grad(fun)(new)), stalled

    g0 = jnp.linalg.norm(jax.grad(fun)(theta0))
    c0 = (theta0, opt.init(theta0), jnp.int32(0), g0, jnp.bool_(False))
    cond = lambda c: (c[2] < max_iter) & (c[3] > thresh) & ~c[4]
    theta, _, k, G, _ = lax.while_loop(cond, body, c0)
    return theta, k, G


@partial(jax.jit, static_argnames=("ball",))
def _fista(F, phi_y, l2, theta0, L, radius, thresh, ball, max_iter):
    grad = jax.grad(partial(_neg_loglik, F=F, phi_y=phi_y, l2=l2))
    P = partial(project_params, radius=radius, ball=ball)

    def body(c):
        x, x_prev, t, k, _, _ = c
        t_next = 0.5 * (1.0 + jnp.sqrt(1.0 + 4.0 * t * t))
        y = x + ((t - 1.0) / t_next) * (x - x_prev)
        x_new = P(y - grad(y) / L)
        # gradient restart: momentum points uphill when the step undoes the last move
        restart = jnp.dot(y - x_new, x_new - x) > 0
        t_new = jnp.where(restart, 1.0, t_next)
        stalled = jnp.all(x_new == x)
        return x_new, x, t_new, k + 1, _grad_map(x_new, grad(x_new), radius, ball), stalled

    x0 = P(theta0)
    G0 = _grad_map(x0, grad(x0), radius, ball)
    c0 = (x0, x0, jnp.float32(1.0), jnp.int32(0), G0, jnp.bool_(False))
    cond = lambda c: (c[3] < max_iter) & (c[4] > thresh) & ~c[5]
    x, _, _, k, G, _ = lax.while_loop(cond, body, c0)
    return x, k, G


def curvature_bound(F: Array, l2=0.0) -> Array:
    """An upper bound L on the Hessian of f, valid at every θ: (F (n, H, V, d)) -> scalar.

    ∇²f(θ) = (1/n) Σ_i Σ_h Cov_{v~π_θ}[ϕ_ihv] + l2·I, and any covariance of points ϕ_ihv obeys
    Cov ⪯ E(ϕ − c)(ϕ − c)ᵀ ⪯ max_v ‖ϕ_ihv − c‖² I; c = the uniform mean over v."""
    c = jnp.mean(F, axis=-2, keepdims=True)
    r2 = jnp.max(jnp.sum((F - c) ** 2, axis=-1), axis=-1)  # (n, H)
    return jnp.sum(r2) / F.shape[0] + l2


def fit_loglinear_mle(
    task,
    prompts,
    responses,
    *,
    radius=None,
    ball: str | None = None,
    l2=0.0,
    tol=1e-6,
    max_iter: int = 5000,
    theta0=None,
):
    """Maximise the average sequence log-likelihood (minus (l2/2)‖θ‖²) of the data over Θ.

    task: anything with `features(prompts, responses) -> (n, H, V, d)` (the AR linear task's
    frozen ϕ), `R` and `ball` (Θ's radius and norm, used when radius / ball are None).
    prompts (n, P), responses (n, H). radius = inf → L-BFGS; finite → projected FISTA.
    theta0 (d,) starts the solver (default 0, projected onto Θ): where ℓ is flat in some
    direction (e.g. no data on the prompts that move θ), the answer keeps θ0's component
    there, so θ0 = 0 returns 0 in it.

    Returns (theta (d,), info) with info = {"iterations", "grad_map" (G(θ) above, absolute),
    "objective" (ℓ(θ), the maximised value), "converged" (G ≤ tol·s), "L" (FISTA's curvature
    bound, nan for L-BFGS)}. F = features costs n·H·V·d floats. Warns when not converged."""
    radius = float(task.R) if radius is None else radius
    radius = check_float("radius", radius, 0.0, None, low_open=True)
    ball = task.ball if ball is None else ball
    if ball not in BALLS:
        raise ValueError(f"argument ball must be one of {list(BALLS)}, got {ball!r}")
    l2 = check_float("l2", l2, 0.0)
    tol = check_float("tol", tol, 0.0, None, low_open=True)
    max_iter = check_int("max_iter", max_iter, 1)
    prompts = jnp.asarray(prompts, jnp.int32)
    responses = jnp.asarray(responses, jnp.int32)
    check_shape("prompts", prompts, (None, None))
    check_shape("responses", responses, (prompts.shape[0], None))
    if prompts.shape[0] == 0:
        raise ValueError("arguments prompts/responses must hold at least one sequence")

    F = jnp.asarray(task.features(prompts, responses), jnp.float32)  # (n, H, V, d)
    d = F.shape[-1]
    theta0 = jnp.zeros((d,), jnp.float32) if theta0 is None else jnp.asarray(theta0, jnp.float32)
    check_shape("theta0", theta0, (d,))
    phi_y = jnp.take_along_axis(F, responses[..., None, None], axis=-2)[..., 0, :]  # (n, H, d)
    scale = jnp.sum(jnp.max(jnp.linalg.norm(F, axis=-1), axis=-1)) / F.shape[0]
    thresh = tol * jnp.maximum(scale, 1e-30)

    if math.isinf(radius):
        theta, k, G = _lbfgs(F, phi_y, jnp.float32(l2), theta0, thresh, max_iter)
        L = jnp.float32(jnp.nan)
    else:
        L = curvature_bound(F, l2)
        L_safe = jnp.maximum(L, 1e-12)  # all-zero features: any step is exact
        theta, k, G = _fista(F, phi_y, jnp.float32(l2), theta0, L_safe, jnp.float32(radius),
                             thresh, ball, max_iter)
    objective = -_neg_loglik(theta, F, phi_y, l2)
    converged = bool(G <= thresh)
    if not converged:
        warnings.warn(
            f"fit_loglinear_mle stopped after {int(k)} iterations with gradient mapping "
            f"{float(G):.3g} > tol·s = {float(thresh):.3g} (max_iter or float32 floor)",
            RuntimeWarning,
            stacklevel=2,
        )
    info = {"iterations": k, "grad_map": G, "objective": objective, "converged": converged, "L": L}
    return theta, info


# ---- the exact MLE on a padded shape ---------------------------------------------------------


class _PaddedFeatures:
    """Stands in for the task in `fit_loglinear_mle`: fixed (padded) features, Θ's R and ball."""

    def __init__(self, F: jax.Array, R: float, ball: str):
        self.F, self.R, self.ball = F, R, ball

    def features(self, prompts, responses):
        return self.F


def fit_padded_mle(
    task,
    prompts,
    responses,
    n_pad: int | None = None,
    H_pad: int | None = None,
    tol: float = 1e-6,
    max_iter: int = 5000,
):
    """The exact MLE over Θ of n sequences of an AR linear `task` (anything with features,
    R, ball), fitted on a zero-padded (n_pad, H_pad) dataset, so that one compile serves every
    n ≤ n_pad and H ≤ H_pad of a study.

    Zero-feature rows/positions contribute a θ-independent constant (−log V per token) to the
    average log-likelihood, which is scaled by n/n_pad: the argmax, the FISTA iterates (step
    1/L with L scaled alike) and the relative stopping rule are those of the unpadded fit.
    The start is the vertex R·sign(−∇f(0)) of Θ (coordinatewise, projected): sequence
    likelihoods of near-deterministic tokens peak on Θ's boundary, which FISTA would reach only
    after thousands of steps from 0; coordinates with ∇f(0) = 0 (no data moves them, e.g. an
    unseen prompt's parameter) start, and therefore stay, at 0.
    Returns (theta (d,), info) as `fit_loglinear_mle`."""
    prompts = jnp.asarray(prompts, jnp.int32)
    responses = jnp.asarray(responses, jnp.int32)
    n, H = responses.shape
    n_pad = n if n_pad is None else check_int("n_pad", n_pad, n)
    H_pad = H if H_pad is None else check_int("H_pad", H_pad, H)
    F = task.features(prompts, responses)  # (n, H, V, d)
    F = jnp.pad(F, ((0, n_pad - n), (0, H_pad - H), (0, 0), (0, 0)))
    y = jnp.pad(responses, ((0, n_pad - n), (0, H_pad - H)))
    theta0 = _vertex_start(F, y, float(task.R), task.ball)
    return fit_loglinear_mle(
        _PaddedFeatures(F, task.R, task.ball),
        jnp.zeros((n_pad, prompts.shape[1]), jnp.int32),
        y,
        theta0=theta0,
        tol=tol,
        max_iter=max_iter,
    )


@jax.jit
def _neg_grad_at_zero(F, y):
    """−∇f(0) = (1/n) Σ_i Σ_h (ϕ_ihy − mean_v ϕ_ihv): (d,)."""
    phi_y = jnp.take_along_axis(F, y[..., None, None], axis=-2)[..., 0, :]
    return jnp.sum(phi_y - jnp.mean(F, axis=-2), axis=(0, 1)) / F.shape[0]


def _vertex_start(F, y, R: float, ball: str):
    s = jnp.sign(_neg_grad_at_zero(F, y))
    return R * s if ball == "linf" else R * s / jnp.maximum(1.0, jnp.linalg.norm(s))
