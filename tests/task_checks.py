"""Exactness checks that every `Task` family reuses in its tests.

Each `assert_*` helper raises AssertionError with the measured numbers. They need small
tasks: the exact joint enumerates prompt_support × V^H (as `exact_joint` does, with
`enumerate` compiled once per task).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from covsim.tasks.base import Task

#: float32 rounding: unit roundoff of one addition or of one log-prob entry.
U32 = 2.0**-24

# Compiled task methods (the task is a pytree argument): eager dispatch of many small ops
# dominates otherwise, and these compile once per task structure and shape.
jit_next_token = jax.jit(lambda t, x, y: t.next_token_log_probs(x, y))
jit_token = jax.jit(lambda t, x, y: t.token_log_probs(x, y))
jit_log_prob = jax.jit(lambda t, x, y: t.log_prob(x, y))
jit_sample = jax.jit(lambda t, k, n: t.sample(k, n), static_argnums=2)
jit_enumerate = jax.jit(lambda t, x: t.enumerate(x))


@jax.jit
def _scores(task: Task, x, y, noise):
    """Every score of a batch in one compiled call: next_token_log_probs (n, H, V),
    token_log_probs (n, H), log_prob (n,) and, for the chain rule, `sep` (H, n, V): row h is
    next_token_log_probs evaluated on its own input y_{<h} ++ noise[h]_{≥h}, read at h."""
    H = y.shape[1]

    def at(h):
        return task.next_token_log_probs(x, jnp.where(jnp.arange(H) < h, y, noise[h]))[:, h]

    sep = jax.vmap(at)(jnp.arange(H))
    return (task.next_token_log_probs(x, y), task.token_log_probs(x, y), task.log_prob(x, y),
            sep)


def random_batch(task: Task, seed: int, n: int) -> tuple[jax.Array, jax.Array]:
    """Arbitrary (not sampled) inputs: prompts drawn from prompt_support, responses uniform
    on [0, V)^H, so zero-probability responses and every context get exercised. NumPy
    draws: test inputs need no compiled PRNG."""
    rng = np.random.default_rng(seed)
    xs = np.asarray(task.prompt_support()[0])
    prompts = xs[rng.integers(0, xs.shape[0], n)]
    return jnp.asarray(prompts, jnp.int32), jnp.asarray(rng.integers(0, task.V, (n, task.H)),
                                                         jnp.int32)


def joint(task: Task) -> tuple[np.ndarray, np.ndarray]:
    """`exact_joint` with `enumerate` compiled once: rows [x, y] (K·M, P + H) and the joint
    log-probabilities log µ(x) + log π_D(y|x) (K·M,) float64."""
    xs, log_mu = task.prompt_support()
    rows, lps = [], []
    for x, lm in zip(np.asarray(xs), np.asarray(log_mu, np.float64), strict=True):
        ys, lp = jit_enumerate(task, jnp.asarray(x))
        rows.append(np.concatenate([np.broadcast_to(x, (ys.shape[0], task.P)), ys], axis=1))
        lps.append(np.asarray(lp, np.float64) + lm)
    return np.concatenate(rows), np.concatenate(lps)


def assert_normalised(task: Task, atol: float = 1e-5) -> None:
    """Σ_y π_D(y|x) = 1 over `enumerate` for every prompt of prompt_support, and the joint
    Σ_{x,y} µ(x) π_D(y|x) = 1 over prompt_support × enumerate, both within atol (float32
    sums of V^H ≤ a few thousand terms err by ≲ 1e-6)."""
    xs, log_mu = task.prompt_support()
    mu = np.exp(np.asarray(log_mu, np.float64))
    assert abs(mu.sum() - 1) <= atol, f"prompt weights sum to {mu.sum()}"
    for x in np.asarray(xs):
        ys, lp = jit_enumerate(task, jnp.asarray(x))
        assert ys.shape == (task.V**task.H, task.H)
        s = np.exp(np.asarray(lp, np.float64)).sum()
        assert abs(s - 1) <= atol, f"Σ_y π(y|x={x.tolist()}) = {s}"
    s = np.exp(joint(task)[1]).sum()
    assert abs(s - 1) <= atol, f"Σ_(x,y) µ(x)π(y|x) = {s}"


def assert_rows_normalised(task: Task, prompts, responses, atol: float = 1e-5) -> None:
    """Every row of next_token_log_probs (n, H, V) sums to 1 within atol (a float32 softmax
    or table row errs by ~V·U32)."""
    noise = jnp.zeros((task.H, *responses.shape), jnp.int32)
    lp = _scores(task, prompts, responses, noise)[0]
    assert lp.shape == (responses.shape[0], task.H, task.V), lp.shape
    assert lp.dtype == jnp.float32, lp.dtype
    s = np.exp(np.asarray(lp, np.float64)).sum(-1)
    assert np.all(np.abs(s - 1) <= atol), f"row sums in [{s.min()}, {s.max()}]"
    assert not np.any(np.isnan(np.asarray(lp))), "NaN in next_token_log_probs"


def assert_chain_rule(task: Task, prompts, responses, seed: int = 0) -> None:
    """log_prob(x, y) = Σ_h log π(y_h | x, y_{<h}) with each factor evaluated *separately*:
    for position h the response is y_{<h} followed by random tokens, so the factor may
    depend on the prefix only (causality) and the product must rebuild the sequence
    probability. The h-th factors must match `token_log_probs` up to 2 ulp; the sums up to
    the float32 summation bound H·U32·Σ_h |term_h| (+1e-6); −inf must match −inf."""
    n, H = responses.shape
    noise = jnp.asarray(np.random.default_rng(seed).integers(0, task.V, (H, n, H)), jnp.int32)
    _, tok, total, sep = _scores(task, prompts, responses, noise)
    y = np.asarray(responses)
    terms = np.take_along_axis(np.asarray(sep, np.float64), y.T[..., None], 2)[..., 0].T
    tok = np.asarray(tok, np.float64)
    _assert_close_inf("token_log_probs", tok, terms, 1e-6 + 4 * U32 * np.abs(terms))
    total = np.asarray(total, np.float64)
    want = terms.sum(1)
    finite = np.where(np.isfinite(terms), np.abs(terms), 0).sum(1)
    _assert_close_inf("log_prob", total, want, 1e-6 + H * U32 * finite)


def _assert_close_inf(name, got, want, tol) -> None:
    inf_g, inf_w = np.isneginf(got), np.isneginf(want)
    assert np.array_equal(inf_g, inf_w), f"{name}: −inf at {np.argwhere(inf_g != inf_w)[:5]}"
    assert not np.any(np.isnan(got)), f"{name}: NaN"
    with np.errstate(invalid="ignore"):  # −inf − (−inf) where both are −inf
        ok = inf_w | (np.abs(got - want) <= tol)
    assert np.all(ok), f"{name}: max error {np.max(np.where(ok, 0, np.abs(got - want)))}"


def assert_sampling_api(task: Task, key, n: int = 64, stochastic: bool = True) -> None:
    """`sample` under `jit` (the task passed as a pytree argument) returns int32
    ((n, P), (n, H)) with tokens in range, is deterministic given the key and (if
    stochastic) gives other draws for another key; sampled responses have finite log_prob."""
    x, y = jit_sample(task, key, n)
    assert x.shape == (n, task.P) and y.shape == (n, task.H), (x.shape, y.shape)
    assert x.dtype == jnp.int32 and y.dtype == jnp.int32, (x.dtype, y.dtype)
    assert np.all((np.asarray(y) >= 0) & (np.asarray(y) < task.V)), "token out of [0, V)"
    assert np.all((np.asarray(x) >= 0) & (np.asarray(x) < task.prompt_vocab)), "bad prompt"
    x2, y2 = jit_sample(task, key, n)
    assert np.array_equal(x, x2) and np.array_equal(y, y2), "sample is not deterministic"
    if stochastic:
        x3, y3 = jit_sample(task, jax.random.fold_in(key, 1), n)
        assert not (np.array_equal(x, x3) and np.array_equal(y, y3)), "key is ignored"
    lp = jit_log_prob(task, x, y)
    assert lp.shape == (n,) and np.all(np.isfinite(np.asarray(lp))), "sampled a null sequence"


def assert_samples_match_exact(task: Task, key, n: int = 200_000, alpha: float = 1e-4) -> None:
    """The empirical law of n draws of `sample` matches the exact joint (see `joint`).

    * No draw may fall outside the support or in a cell of exact probability 0.
    * Pearson chi-square goodness of fit over cells with p > 0, cells with expected count
      n·p < 5 pooled into one (merged with the smallest other cell while the pool is still
      < 5), so the χ²(cells − 1) approximation holds; fail if the p-value < alpha = 1e-4,
      i.e. a correct sampler fails with probability ≈ 1e-4 (keys are fixed, so a passing
      test stays passing).
    * TV(empirical, exact) ≤ ½ Σ_i sqrt(p_i(1 − p_i)/n) + sqrt(log(1/alpha) / (2n)): the
      first term bounds E[TV] (Jensen on each |p̂_i − p_i|), the second is McDiarmid's
      deviation (one draw moves TV by ≤ 1/n) exceeded with probability ≤ alpha.
    """
    support, L = joint(task)
    M = support.shape[0]
    p = np.exp(L)
    assert abs(p.sum() - 1) <= 1e-5, f"exact probabilities sum to {p.sum()}"
    p = p / p.sum()
    xs, ys = jit_sample(task, key, n)
    rows = np.concatenate([np.asarray(xs), np.asarray(ys)], axis=1)
    uniq, inv = np.unique(np.concatenate([support, rows]), axis=0, return_inverse=True)
    inv = inv.reshape(-1)
    assert uniq.shape[0] >= M and len(np.unique(inv[:M])) == M, "exact_joint repeats a cell"
    cell = np.full(uniq.shape[0], -1)
    cell[inv[:M]] = np.arange(M)
    cells = cell[inv[M:]]
    assert np.all(cells >= 0), f"sampled outside the support: {rows[cells < 0][:3].tolist()}"
    counts = np.bincount(cells, minlength=M).astype(np.float64)
    assert counts[p == 0].sum() == 0, "sampled a cell of exact probability 0"

    pos = p > 0
    obs, exp_ = _pool(counts[pos], n * p[pos])
    stat = float(np.sum((obs - exp_) ** 2 / exp_))
    df = len(obs) - 1
    pval = float(stats.chi2.sf(stat, df)) if df > 0 else 1.0
    assert pval >= alpha, f"chi-square {stat:.1f} on {df} dof: p-value {pval:.2e} < {alpha}"

    tv = 0.5 * np.abs(counts / n - p).sum()
    bound = 0.5 * np.sqrt(p * (1 - p) / n).sum() + math.sqrt(math.log(1 / alpha) / (2 * n))
    assert tv <= bound, f"TV {tv:.4g} > bound {bound:.4g}"


def _pool(obs: np.ndarray, exp_: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pool the cells with expected count < 5 (see assert_samples_match_exact)."""
    order = np.argsort(exp_)
    obs, exp_ = obs[order], exp_[order]
    k = int(np.searchsorted(exp_, 5.0))  # cells [0, k) are small
    while k > 0 and exp_[:k].sum() < 5 and k < len(exp_):
        k += 1
    if k <= 1:
        return obs, exp_
    return (np.concatenate([[obs[:k].sum()], obs[k:]]),
            np.concatenate([[exp_[:k].sum()], exp_[k:]]))


def check_task(task: Task, key, n_exact: int = 200_000, n_batch: int = 64,
               stochastic: bool = True) -> None:
    """Every check above on one small task (one compiled `sample` shape: n_exact)."""
    assert_normalised(task)
    prompts, responses = random_batch(task, 0, n_batch)
    assert_rows_normalised(task, prompts, responses)
    assert_chain_rule(task, prompts, responses, seed=1)
    assert_sampling_api(task, key, n_exact, stochastic)
    xs, ys = jit_sample(task, key, n_exact)
    assert_chain_rule(task, xs[:n_batch], ys[:n_batch], seed=2)
    assert_samples_match_exact(task, key, n_exact)
