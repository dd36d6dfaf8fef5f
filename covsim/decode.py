"""Decoding from a learner: ancestral sampling, temperature, Best-of-N / Pass@N by sampling.

A learner is any callable `model(prompts (n, P), responses (n, H)) -> (n, H, V)` of causal
next-token log-probs (covsim.models). Sampling fills the response left to right; position h's
distribution only depends on y_{<h}, so the not-yet-sampled tail can hold anything (zeros).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from covsim import metrics as M
from covsim.checks import check_float, check_int
from covsim.tasks.base import Task, exact_cdf, inverse_cdf, open_uniform

Array = jax.Array


def sample(model, prompts: Array, H: int, key: Array, temperature: float = 1.0) -> Array:
    """y ~ π̂(·|x) (tempered): prompts (n, P) -> responses (n, H) int32.

    One model call per position (O(H) forward passes; no cache): fine for the small learners
    here. Uniforms are pre-drawn and tokens chosen by inverse CDF
    (covsim.tasks.base.inverse_cdf)."""
    n = prompts.shape[0]
    u = open_uniform(key, (H, n))
    inv_t = 1.0 / check_float("temperature", temperature, 0.0, low_open=True)

    def body(h, y):
        lp = model(prompts, y)[:, h]  # (n, V)
        lp = jax.nn.log_softmax(lp * inv_t, axis=-1)
        tok = inverse_cdf(u[h], exact_cdf(jnp.exp(lp)))
        return y.at[:, h].set(tok)

    return jax.lax.fori_loop(0, H, body, jnp.zeros((n, H), jnp.int32))


def pass_at_n_sampled(
    model, task: Task, prompts: Array, N: int, k: int, key: Array, temperature: float = 1.0
) -> Array:
    """Pass@N per prompt from k ≥ N samples with the unbiased estimator (Chen et al. 2021).

    prompts (m, P) -> (m,) float32; the verifier is `task.reward`."""
    check_int("N", N, 1)
    check_int("k", k, N)
    m = prompts.shape[0]
    xs = jnp.repeat(prompts, k, axis=0)  # (m·k, P)
    ys = sample(model, xs, task.H, key, temperature)
    c = jnp.sum(task.reward(xs, ys).reshape(m, k) > 0, axis=1)
    return M.pass_at_k_jnp(k, c, N)


def best_of_n(
    model, task: Task, prompts: Array, N: int, key: Array, temperature: float = 1.0
) -> tuple[Array, Array]:
    """Best-of-N with the task's verifier: draw N responses per prompt, return the first one
    with the highest reward. prompts (m, P) -> (responses (m, H), rewards (m,))."""
    check_int("N", N, 1)
    m = prompts.shape[0]
    xs = jnp.repeat(prompts, N, axis=0)
    ys = sample(model, xs, task.H, key, temperature).reshape(m, N, task.H)
    r = task.reward(xs, ys.reshape(m * N, task.H)).reshape(m, N)
    best = jnp.argmax(r, axis=1)
    return ys[jnp.arange(m), best], r[jnp.arange(m), best]
