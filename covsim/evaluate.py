"""Score a learner against the exact π_D on a fixed evaluation set: the checkpoint metrics.

    eval_set = make_eval_set(task, key, n)          # (prompts, responses, log π_D(y|x))
    ev = evaluate(task, model, eval_set, Ns=...)    # EvalMetrics of arrays, jit-able

`model` is any callable `(prompts (n, P), responses (n, H)) -> (n, H, V)` of teacher-forced
next-token log-probs (covsim.models). The coverage itself is `covsim.metrics.coverage_profile`
of the log-ratios r = log π_D(y|x) − log π̂(y|x) computed here.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from covsim import metrics as M
from covsim.models.base import token_log_probs
from covsim.tasks.base import Task, gather_tokens

Array = jax.Array


class EvalMetrics(NamedTuple):
    """One checkpoint's scores (a trainer stacks them along a leading checkpoint axis)."""

    kl: Array  # ()  sequence KL, Monte-Carlo mean of r = log π_D − log π̂
    kl_se: Array  # ()  its standard error
    kl_tokens: Array  # ()  Σ_h exact token KL along the eval prefixes (lower-variance KL)
    ce: Array  # ()  sequence cross-entropy E[−log π̂(y|x)]
    cov: Array  # (k,) Cov_N for the N grid
    cov_lo: Array  # (k,) Wilson interval, lower end
    cov_hi: Array  # (k,) upper end
    pos_ce: Array  # (H,) per-position cross-entropy
    pos_kl: Array  # (H,) per-position exact token KL
    pass_at: Array  # (m,) exact Pass@N at the sizes evaluate(pass_at=...) asked (empty if none)
    # (s,) log π̂(y|x) of held-out selection samples (empty unless the trainer asks for them)
    select_logq: Array = np.zeros((0,), np.float32)


def make_eval_set(task: Task, key: Array, n: int) -> tuple[Array, Array, Array]:
    """n fresh samples from π_D with their exact log-probabilities: ((n, P), (n, H), (n,))."""
    x, y = task.sample(key, n)
    return x, y, task.log_prob(x, y)


def evaluate(
    task: Task,
    model,
    eval_set: tuple[Array, Array, Array],
    *,
    Ns: Array,
    pass_at: tuple[int, ...] = (),
    alpha: float = 0.05,
    chunk: int = 1024,
) -> EvalMetrics:
    """All checkpoint metrics of `model` on `eval_set`, chunked over samples to bound memory.

    Pass@N is exact, 1 − (1 − π̂(S_x|x))^N averaged over the eval prompts, for tasks that
    expose their good set S_x as `task.good_set(prompts) -> ((n, G, H), mask (n, G))`.
    Items of `eval_set` after the first three (the trainer's selection set) are ignored."""
    ex, ey, lp_true = eval_set[:3]

    def one_chunk(x, y):
        q = model(x, y)  # (c, H, V)
        tok_q = gather_tokens(q, y)
        good = p_good(task, model, x) if pass_at else jnp.zeros((x.shape[0],))
        return jnp.sum(tok_q, -1), tok_q, M.token_kl(task.next_token_log_probs(x, y), q), good

    lq, tok_q, tkl, good = chunked(one_chunk, ex, ey, chunk=chunk)
    r = M.log_ratio(lp_true, lq)
    prof = M.coverage_profile(r, Ns, alpha=alpha)
    kl, kl_se = M.kl_with_se(r)
    pos_kl = jnp.mean(tkl, axis=0)
    if pass_at:
        pass_vals = M.pass_at_n_exact(good, jnp.asarray(pass_at, jnp.float32))
    else:
        pass_vals = jnp.zeros((0,))
    return EvalMetrics(
        kl=kl,
        kl_se=kl_se,
        kl_tokens=jnp.sum(pos_kl),
        ce=M.cross_entropy(lq),
        cov=prof.cov,
        cov_lo=prof.lo,
        cov_hi=prof.hi,
        pos_ce=M.per_position_ce(tok_q),
        pos_kl=pos_kl,
        pass_at=pass_vals,
    )


def p_good(task: Task, model, x: Array) -> Array:
    """π̂(S_x | x): the model's mass on the task's good set, (n,). Needs `task.good_set`."""
    G, mask = task.good_set(x)  # (n, G, H), (n, G)
    c, g, H = G.shape
    ys = G.reshape(c * g, H)
    lq = jnp.sum(token_log_probs(model, jnp.repeat(x, g, axis=0), ys), -1)
    return jnp.sum(jnp.where(mask, jnp.exp(lq.reshape(c, g)), 0.0), axis=-1)


def chunked(f, *arrays: Array, chunk: int):
    """f over row chunks of `arrays` (n, ...) with `lax.map`, outputs concatenated back to n
    rows: bounds memory to one chunk (the last one is padded, its padding dropped)."""
    n = arrays[0].shape[0]
    c = min(chunk, n)
    n_chunks = math.ceil(n / c)
    pad = n_chunks * c - n

    def split(a):
        a = jnp.pad(a, ((0, pad),) + ((0, 0),) * (a.ndim - 1))
        return a.reshape(n_chunks, c, *a.shape[1:])

    out = jax.lax.map(lambda xs: f(*xs), tuple(split(a) for a in arrays))
    return jax.tree.map(lambda a: a.reshape(n_chunks * c, *a.shape[2:])[:n], out)


def chunked_log_prob(model, x: Array, y: Array, *, chunk: int = 1024) -> Array:
    """log π̂(y|x) of every row, (n, P), (n, H) -> (n,), computed `chunk` rows at a time."""
    return chunked(lambda xc, yc: jnp.sum(token_log_probs(model, xc, yc), -1), x, y,
                   chunk=chunk)
