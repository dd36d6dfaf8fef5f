"""Learners: normalised teacher-forced log-probs, causality, pytree plumbing, closed forms.

Compilation dominates on this CPU, so the whole file shares one set of sizes, model calls go
through one jitted `run` per model structure, and random tables come from numpy.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from covsim.models import (
    LogLinear,
    Tabular,
    Transformer,
    flops_per_token,
    log_prob,
    make_model,
    nll,
    token_log_probs,
)
from covsim.tasks.base import gather_tokens, gathered_log_softmax
from covsim.tasks.linear import AutoregressiveLinear

V, H, X, D, n = 4, 5, 3, 6, 7
TINY = dict(layers=2, heads=2, width=32)
KINDS = ["loglinear", "tabular", "transformer"]


@pytest.fixture(scope="module")
def task():
    """A Markov, position-dependent linear task with unit-norm features and ‖θ⋆‖ = 1/2."""
    rng = np.random.default_rng(0)
    F = rng.normal(size=(X, H, V + 1, V, D))
    F /= np.linalg.norm(F, axis=-1, keepdims=True)
    theta = rng.normal(size=D)
    return AutoregressiveLinear.create(F, 0.5 * theta / np.linalg.norm(theta), H)


@pytest.fixture(scope="module")
def batch():
    """Prompts (n, 1) covering every prompt value, random responses (n, H)."""
    y = np.random.default_rng(1).integers(0, V, (n, H))
    return jnp.asarray(np.arange(n)[:, None] % X, jnp.int32), jnp.asarray(y, jnp.int32)


def random_tabular(seed=0, **kw):
    """A Tabular (V, H, P=1) with N(0, 1) logits drawn by numpy (no PRNG compile)."""
    m = Tabular(V, H, **{"P": 1, "prompt_vocab": X, **kw}, rngs=nnx.Rngs(0))
    shape = m.table[...].shape
    m.table[...] = jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)
    return m


@pytest.fixture(scope="module")
def models(task):
    ll = LogLinear(task, rngs=nnx.Rngs(0))
    ll.theta[...] = jnp.asarray(np.random.default_rng(2).normal(size=D) / 2, jnp.float32)
    return {
        "loglinear": ll,
        "tabular": random_tabular(),
        "transformer": Transformer(V, H, 1, X, **TINY, rngs=nnx.Rngs(0)),
    }


@partial(jax.jit, static_argnums=0)
def _apply(g, state, x, y):
    return nnx.merge(g, state)(x, y)


def run(m, x, y):
    """m(x, y) through one jitted function per model structure."""
    g, state = nnx.split(m)
    return _apply(g, state, x, y)


@partial(jax.jit, static_argnums=0)
def loss_and_grad(g, params, rest, x, y):
    """A jitted function of (params, x, y): mean sequence NLL and its gradient."""
    return jax.value_and_grad(lambda p: nll(nnx.merge(g, p, rest), x, y))(params)


# ---- the common interface ------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_normalised_log_probs(models, batch, kind):
    x, y = batch
    lp = run(models[kind], x, y)
    assert lp.shape == (n, H, V) and lp.dtype == jnp.float32
    # float32 logsumexp of V = 4 terms: a few ulps of log V ≪ 1e-5
    np.testing.assert_allclose(jax.nn.logsumexp(lp, axis=-1), 0.0, atol=1e-5)


@pytest.mark.parametrize("kind", ["tabular", "transformer"])
def test_causal(models, batch, kind):
    """Changing y_h leaves outputs at positions ≤ h (which predict y_0..y_h) unchanged."""
    x, y = batch
    m, h = models[kind], 2
    y2 = y.at[:, h].set((y[:, h] + 1) % V)
    a, b = np.asarray(run(m, x, y)), np.asarray(run(m, x, y2))
    # masked attention weights are exactly 0, so equality holds up to float reassociation
    np.testing.assert_allclose(a[:, : h + 1], b[:, : h + 1], atol=1e-6)
    assert np.abs(a[:, h + 1] - b[:, h + 1]).max() > 1e-3  # y_h is used at position h + 1
    if kind == "tabular":  # order 1: y_h is forgotten one step later
        np.testing.assert_array_equal(a[:, h + 2 :], b[:, h + 2 :])


@pytest.mark.parametrize("kind", KINDS)
def test_prompt_changes_outputs(models, batch, kind):
    x, y = batch
    lp, lp2 = run(models[kind], x, y), run(models[kind], (x + 1) % X, y)
    assert np.abs(np.asarray(lp - lp2)).max(axis=(0, 2)).min() > 1e-3  # at every position


@pytest.mark.parametrize("kind", KINDS)
def test_split_merge_and_jit(models, batch, kind):
    x, y = batch
    m = models[kind]
    g, params, rest = nnx.split(m, nnx.Param, ...)
    is_var = lambda v: isinstance(v, nnx.Variable)
    assert all(isinstance(v, nnx.Param) for v in jax.tree.leaves(params, is_leaf=is_var))
    lp = run(m, x, y)
    np.testing.assert_array_equal(run(nnx.merge(g, params, rest), x, y), lp)
    val, grads = loss_and_grad(g, params, rest, x, y)
    tok = np.take_along_axis(np.asarray(lp), np.asarray(y)[..., None], -1)[..., 0]
    np.testing.assert_allclose(val, -tok.sum(1).mean(), rtol=1e-5)
    assert jax.tree.structure(grads) == jax.tree.structure(params)
    assert all(np.all(np.isfinite(v)) for v in jax.tree.leaves(grads))


def test_token_log_probs_and_nll(models, batch):
    x, y = batch
    m = models["tabular"]
    lp = np.asarray(m(x, y))
    tok = lp[np.arange(n)[:, None], np.arange(H)[None], np.asarray(y)]
    np.testing.assert_allclose(token_log_probs(m, x, y), tok, rtol=1e-6)
    np.testing.assert_allclose(log_prob(m, x, y), tok.sum(1), rtol=1e-5)
    np.testing.assert_allclose(nll(m, x, y), -tok.sum(1).mean(), rtol=1e-5)
    np.testing.assert_allclose(nll(m, x, y, reduction="token"), -tok.mean(), rtol=1e-5)
    with pytest.raises(ValueError, match="reduction"):
        nll(m, x, y, reduction="mean")


@pytest.mark.parametrize("scale", [1.0, 80.0])
def test_gathered_log_softmax_is_log_softmax_gathered_bit_for_bit(scale):
    """Values and gradient equal to the last bit, on logits (3, 5, 13) (the gradient of a
    weighted sum of them, one program each: a reduction XLA might reorder is not involved)."""
    rng = np.random.default_rng(7)
    z = jnp.asarray(scale * rng.normal(size=(3, 5, 13)), jnp.float32)
    t = jnp.asarray(rng.integers(0, 13, (3, 5)), jnp.int32)
    w = jnp.asarray(rng.normal(size=(3, 5)), jnp.float32)
    ref = lambda z: jnp.sum(w * gather_tokens(jax.nn.log_softmax(z, axis=-1), t))
    own = lambda z: jnp.sum(w * gathered_log_softmax(z, t))
    a = jax.jit(lambda z: gather_tokens(jax.nn.log_softmax(z, axis=-1), t))(z)
    np.testing.assert_array_equal(np.asarray(jax.jit(gathered_log_softmax)(z, t)), np.asarray(a))
    np.testing.assert_array_equal(np.asarray(jax.jit(jax.grad(own))(z)),
                                  np.asarray(jax.jit(jax.grad(ref))(z)))


@pytest.mark.parametrize("kw", [{}, {"positional": True, "order": 2},
                                {"prompt_conditioned": False}])
def test_tabular_token_log_probs_are_its_gathered_call_bit_for_bit(batch, kw):
    """Tabular's own `token_log_probs` (no (n, H, V) log-softmax) gives the call's entries
    at the tokens to the last bit, and the loss through it the same value and gradient."""
    x, y = batch
    m = random_tabular(seed=4, **kw)
    m.table[...] = m.table[...] * 30.0  # logits far from 0: the max shift matters
    g, params, rest = nnx.split(m, nnx.Param, ...)

    @jax.jit
    def both(params):
        mm = nnx.merge(g, params, rest)
        return mm.token_log_probs(x, y), gather_tokens(mm(x, y), y)

    own, gathered = both(params)
    np.testing.assert_array_equal(np.asarray(own), np.asarray(gathered))
    assert np.asarray(token_log_probs(m, x, y)).tolist() == np.asarray(own).tolist()

    def loss(params, via_call):
        mm = nnx.merge(g, params, rest)
        tok = gather_tokens(mm(x, y), y) if via_call else mm.token_log_probs(x, y)
        return -jnp.mean(jnp.sum(tok, -1))

    # the loss's sum is over the same floats, but XLA may order it differently in another
    # program: float32 rounding of a sum of n·H = 35 terms (≲ 35 ulps ≈ 4e-6 relative)
    vg = jax.jit(jax.value_and_grad(loss), static_argnums=1)
    (l0, g0), (l1, g1) = vg(params, True), vg(params, False)
    np.testing.assert_allclose(float(l1), float(l0), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1), strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-7)


def test_token_log_probs_uses_a_learners_own_method_else_gathers(batch):
    """`token_log_probs` dispatches to a learner's method (it must, or the method is dead
    code) and falls back to gathering the call of a plain callable."""
    x, y = batch

    class Own:
        def __call__(self, prompts, responses):
            return jnp.zeros((*responses.shape, V))

        def token_log_probs(self, prompts, responses):
            return jnp.full(responses.shape, -7.0)

    assert np.all(np.asarray(token_log_probs(Own(), x, y)) == -7.0)
    plain = lambda prompts, responses: jnp.broadcast_to(
        jnp.log(jnp.arange(1, V + 1) / (V * (V + 1) / 2)), (*responses.shape, V))
    want = np.log((np.asarray(y) + 1) / (V * (V + 1) / 2))
    np.testing.assert_allclose(token_log_probs(plain, x, y), want, rtol=1e-6)


def _ensemble(make, members):
    """Ensembles by vmapping init: params with a leading member axis."""
    g, _, rest = nnx.split(make(jax.random.key(0)), nnx.Param, ...)
    # threefry (default) keys: an "rbg" key draws different numbers under vmap
    keys = jax.random.split(jax.random.key(3), members)
    params = jax.jit(jax.vmap(lambda k: nnx.split(make(k), nnx.Param, ...)[1]))(keys)
    return g, params, rest, keys


@pytest.mark.parametrize("kind", ["loglinear", "transformer"])
def test_vmap_ensemble(task, batch, kind):
    x, y = batch
    if kind == "loglinear":
        make = lambda k: LogLinear(task, init="random", rngs=nnx.Rngs(k))
    else:
        make = lambda k: Transformer(V, H, 1, X, **TINY, rngs=nnx.Rngs(k))
    g, params, rest, keys = _ensemble(make, 3)
    out = jax.jit(jax.vmap(lambda p: nnx.merge(g, p, rest)(x, y)))(params)
    assert out.shape == (3, n, H, V)
    for i in range(3):
        # member i alone: equal up to float reassociation under vmap
        p_i = jax.tree.map(lambda a, i=i: a[i], params)
        np.testing.assert_allclose(out[i], run(nnx.merge(g, p_i, rest), x, y), atol=1e-5)
    assert np.abs(np.asarray(out[0] - out[1])).max() > 1e-4  # members differ
    # and the vmapped init draws what a single init with that key draws
    one = nnx.split(make(keys[1]), nnx.Param, ...)[1]
    for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(params), strict=True):
        np.testing.assert_allclose(a, b[1], rtol=1e-6, atol=1e-7)


# ---- LogLinear -----------------------------------------------------------------------------


def test_loglinear_task_not_trained(task):
    m = LogLinear(task, rngs=nnx.Rngs(0))
    g, params, rest = nnx.split(m, nnx.Param, ...)
    assert [a.shape for a in jax.tree.leaves(params)] == [(D,)]
    m2 = nnx.merge(g, params, rest)
    assert isinstance(m2.task, AutoregressiveLinear)
    np.testing.assert_array_equal(m2.task.F, task.F)
    assert (m2.d, m2.radius, m2.ball) == (D, task.R, task.ball)


def test_loglinear_at_truth_is_the_teacher(task, batch):
    x, y = batch
    m = LogLinear(task, rngs=nnx.Rngs(0))
    np.testing.assert_allclose(m(x, y), np.full((n, H, V), -math.log(V)), rtol=1e-6)
    m.theta[...] = task.theta
    np.testing.assert_array_equal(m(x, y), task.next_token_log_probs(x, y))
    np.testing.assert_array_equal(log_prob(m, x, y), task.log_prob(x, y))


def test_loglinear_random_init_is_feasible(task):
    for seed in range(4):
        th = LogLinear(task, init="random", init_scale=5.0, rngs=nnx.Rngs(seed)).theta[...]
        assert float(jnp.linalg.norm(th)) == pytest.approx(task.R, rel=1e-6)  # projected
    th = LogLinear(task, init="random", init_scale=0.1, rngs=nnx.Rngs(0)).theta[...]
    assert 0 < float(jnp.linalg.norm(th)) < task.R


# ---- Tabular -------------------------------------------------------------------------------


def test_tabular_unconditioned_positional(batch):
    x, y = batch
    m = random_tabular(prompt_conditioned=False, positional=True)
    assert m.logits.shape == (1, H, V + 1, V)
    np.testing.assert_array_equal(run(m, x, y), run(m, (x + 1) % X, y))
    y0 = jnp.zeros_like(y)  # the same context at positions 1 and 2 uses different rows
    lp = np.asarray(run(m, x, y0))
    assert np.abs(lp[:, 1] - lp[:, 2]).max() > 1e-3


@pytest.mark.parametrize("kw", [{}, {"positional": True, "order": 2},
                                {"prompt_conditioned": False}])
def test_tabular_flat_table_is_its_4d_logits(batch, kw):
    """The flat parameter, read through `rows`, is the (Kx, Kh, Kc, V) table indexed by
    `contexts`; and a random init draws the same logits as one drawn in the 4-D shape."""
    x, y = batch
    m = random_tabular(seed=3, **kw)
    assert m.table[...].shape == (int(np.prod(m.table_shape)),)
    ix, ih, ic = m.contexts(x, y)
    want = jax.nn.log_softmax(m.logits[ix, ih, ic], axis=-1)
    np.testing.assert_array_equal(np.asarray(m(x, y)), np.asarray(want))
    r = Tabular(V, H, P=1, prompt_vocab=X, init="random", rngs=nnx.Rngs(5), **kw)
    drawn = 0.1 * jax.random.normal(nnx.Rngs(5).params(), r.table_shape, jnp.float32)
    np.testing.assert_array_equal(np.asarray(r.logits), np.asarray(drawn))


def _hand_fit(xs, ys, Vt, order, positional, alpha):
    """Add-α frequencies from Python counters: a function (x, h, y) -> probs (V,)."""
    cnt = Counter()
    for x, y in zip(xs, ys, strict=True):
        pad = [Vt] * order + list(y)
        for h in range(len(y)):
            cnt[(tuple(x), h if positional else 0, tuple(pad[h : h + order]), y[h])] += 1

    def probs(x, h, y):
        pad = [Vt] * order + list(y)
        ctx = (tuple(x), h if positional else 0, tuple(pad[h : h + order]))
        c = np.array([cnt[(*ctx, v)] for v in range(Vt)], float)
        tot = c.sum() + alpha * Vt
        return np.full(Vt, 1.0 / Vt) if tot == 0 else (c + alpha) / tot

    return probs


def test_fit_counts_by_hand():
    # V = 3, H = 3, one prompt token over 2 values, bigram (order 1), not positional
    xs = np.array([[0], [0], [1], [0]], np.int32)
    ys = np.array([[0, 1, 2], [0, 1, 1], [2, 2, 2], [1, 0, 1]], np.int32)
    base = Tabular(3, 3, P=1, prompt_vocab=2, order=1, rngs=nnx.Rngs(0))
    m0 = base.fit_counts(xs, ys, alpha=0.0)
    p = np.exp(np.asarray(m0(jnp.array([[0]]), jnp.array([[0, 1, 0]]))))[0]
    # prompt 0 counts: BOS -> {0: 2, 1: 1}; 0 -> {1: 3}; 1 -> {2: 1, 1: 1, 0: 1}
    np.testing.assert_allclose(p[0], [2 / 3, 1 / 3, 0], atol=1e-7)
    np.testing.assert_allclose(p[1], [0, 1, 0], atol=1e-7)
    np.testing.assert_allclose(p[2], [1 / 3, 1 / 3, 1 / 3], atol=1e-7)
    # prompt 1 after token 0: unseen context -> uniform at α = 0
    p1 = np.exp(np.asarray(m0(jnp.array([[1]]), jnp.array([[0, 0, 0]]))))[0]
    np.testing.assert_allclose(p1[1], [1 / 3] * 3, atol=1e-7)
    # α = 1/2, prompt 0, after BOS: (2 + .5, 1 + .5, .5) / (3 + 1.5)
    pa = np.exp(np.asarray(base.fit_counts(xs, ys, alpha=0.5)(xs[:1], ys[:1])))[0, 0]
    np.testing.assert_allclose(pa, np.array([2.5, 1.5, 0.5]) / 4.5, rtol=1e-6)
    np.testing.assert_array_equal(base.table[...], 0.0)  # self is left alone


def test_fit_counts_without_prompt():
    x = jnp.zeros((3, 0), jnp.int32)  # P = 0
    y = jnp.array([[0, 1, 2], [1, 1, 1], [2, 0, 1]], jnp.int32)
    p = np.exp(np.asarray(Tabular(3, 3, rngs=nnx.Rngs(0)).fit_counts(x, y)(x, y)))[0]
    # after BOS: {0, 1, 2} once each; after 0: {1: 2}; after 1: {2: 1, 1: 2}
    np.testing.assert_allclose(p, [[1 / 3] * 3, [0, 1, 0], [0, 2 / 3, 1 / 3]], atol=1e-7)


@pytest.mark.parametrize(
    "order,positional,alpha", [(0, True, 0.0), (1, False, 0.3), (2, True, 0.0)]
)
def test_fit_counts_matches_counters(order, positional, alpha):
    """Every (x, y) of a small space against Python counters (P = 2: mixed-radix prompts)."""
    Vt, Ht, pv = 3, 3, 2
    rng = np.random.default_rng(0)
    xs = rng.integers(0, pv, (40, 2)).astype(np.int32)
    ys = rng.integers(0, Vt, (40, Ht)).astype(np.int32)
    ys[xs[:, 0] == 1, 1] = 0  # some contexts deterministic, so α = 0 gives zeros
    m = Tabular(
        Vt, Ht, P=2, prompt_vocab=pv, order=order, positional=positional, rngs=nnx.Rngs(0)
    ).fit_counts(xs, ys, alpha)
    hand = _hand_fit(xs, ys, Vt, order, positional, alpha)
    allx = np.array(list(itertools.product(range(pv), repeat=2)), np.int32)
    ally = np.array(list(itertools.product(range(Vt), repeat=Ht)), np.int32)
    gx, gy = np.repeat(allx, len(ally), 0), np.tile(ally, (len(allx), 1))
    got = np.exp(np.asarray(m(jnp.asarray(gx), jnp.asarray(gy))))
    want = np.array([[hand(x, h, y) for h in range(Ht)] for x, y in zip(gx, gy, strict=True)])
    np.testing.assert_allclose(got, want, atol=1e-6)  # float32 ratios of small counts
    assert (alpha > 0) == bool(np.all(want > 0))


def _codes(m, prompts):
    ix = m.contexts(jnp.asarray(prompts, jnp.int32), jnp.zeros((len(prompts), m.H), jnp.int32))[0]
    return np.asarray(ix)[:, 0]


def test_prompt_codes_are_one_to_one():
    """Per-position radices and the class code number every valid prompt with a distinct
    table slice, using exactly the table's prompt axis (no gaps, no waste)."""
    m = Tabular(2, 2, P=3, prompt_radices=(2, 3, 5), rngs=nnx.Rngs(0))
    allx = np.array(list(itertools.product(range(2), range(3), range(5))))
    assert m.logits.shape[0] == 30
    np.testing.assert_array_equal(np.sort(_codes(m, allx)), np.arange(30))
    cr = ((), (5,), (2, 3))  # class 0: no sub-prompt; 1: one position; 2: two positions
    m = Tabular(2, 2, P=3, class_radices=cr, rngs=nnx.Rngs(0))
    valid = [[0, 0, 0]] + [[1, a, 0] for a in range(5)]
    valid += [[2, a, b] for a in range(2) for b in range(3)]
    assert m.logits.shape[0] == 1 + 5 + 6
    np.testing.assert_array_equal(np.sort(_codes(m, valid)), np.arange(12))


def test_class_code_fit_counts_matches_counters():
    """fit_counts under the class code: one table per (class, sub-prompt), as counted by hand."""
    Vt, Ht = 3, 3
    rng = np.random.default_rng(3)
    xs = np.zeros((60, 2), np.int32)
    xs[:, 0] = rng.integers(0, 3, 60)
    xs[xs[:, 0] == 1, 1] = rng.integers(0, 4, int(np.sum(xs[:, 0] == 1)))
    ys = rng.integers(0, Vt, (60, Ht)).astype(np.int32)
    m = Tabular(Vt, Ht, P=2, class_radices=((), (4,), ()), rngs=nnx.Rngs(0))
    m = m.fit_counts(xs, ys, 0.5)
    hand = _hand_fit(xs, ys, Vt, 1, False, 0.5)
    allx = np.array([[0, 0], *[[1, a] for a in range(4)], [2, 0]], np.int32)
    ally = np.array(list(itertools.product(range(Vt), repeat=Ht)), np.int32)
    gx, gy = np.repeat(allx, len(ally), 0), np.tile(ally, (len(allx), 1))
    got = np.exp(np.asarray(m(jnp.asarray(gx), jnp.asarray(gy))))
    want = np.array([[hand(x, h, y) for h in range(Ht)] for x, y in zip(gx, gy, strict=True)])
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_prompt_radices_of_tasks():
    from covsim.models.tabular import class_radices, prompt_radices
    from covsim.tasks.markov import MarkovChain
    from covsim.tasks.mixture import Mixture

    one = MarkovChain.random(jax.random.key(0), V=3, H=2)  # P = 0
    many = MarkovChain.random(jax.random.key(0), V=3, H=2, n_prompts=7)  # P = 1, vocab 7
    mix = Mixture((one, many, one), (0.5, 0.3, 0.2))
    assert prompt_radices(many) == (7,) and prompt_radices(one) == ()
    assert prompt_radices(mix) == (3, 7)
    assert class_radices(mix) == ((), (7,), ())
    m = Tabular(3, 2, P=mix.P, prompt_vocab=mix.prompt_vocab, class_radices=class_radices(mix),
                rngs=nnx.Rngs(0))
    assert m.logits.shape == (9, 1, 4, 3)
    with pytest.raises(TypeError, match="Mixture"):
        class_radices(many)


def test_prompt_code_validation():
    r = nnx.Rngs(0)
    with pytest.raises(ValueError, match="P = 2 entries"):
        Tabular(2, 2, P=2, prompt_radices=(3,), rngs=r)
    with pytest.raises(ValueError, match="prompt_radices\\[1\\]"):
        Tabular(2, 2, P=2, prompt_radices=(3, 0), rngs=r)
    with pytest.raises(ValueError, match="exclusive"):
        Tabular(2, 2, P=2, prompt_radices=(3, 3), class_radices=((), (3,)), rngs=r)
    with pytest.raises(ValueError, match="P ≥ 1"):
        Tabular(2, 2, class_radices=((),), rngs=r)
    with pytest.raises(ValueError, match="at most P − 1 = 1"):
        Tabular(2, 2, P=2, class_radices=((), (2, 2)), rngs=r)
    with pytest.raises(ValueError, match="Π prompt_radices"):
        Tabular(2, 2, P=2, prompt_radices=(2048, 1024), rngs=r)
    with pytest.raises(ValueError, match="Σ_c Π class_radices"):
        Tabular(2, 2, P=2, class_radices=((1 << 20,), (1,)), rngs=r)
    with pytest.raises(TypeError, match="prompt_radices"):
        Tabular(2, 2, P=1, prompt_radices="3", rngs=r)


# ---- validation ----------------------------------------------------------------------------


def test_make_model(task, batch, models):
    x, y = batch
    for spec, cls in [
        ({"kind": "loglinear", "init": "random"}, LogLinear),
        ({"kind": "tabular", "order": 2, "positional": True}, Tabular),
        ({"kind": "transformer", **TINY}, Transformer),
    ]:
        m = make_model(spec, task, 0)
        assert isinstance(m, cls) and run(m, x, y).shape == (n, H, V)
    assert make_model({"kind": "tabular"}, task, 0).logits.shape == (X, 1, V + 1, V)
    with pytest.raises(ValueError, match=r"kind.*\['loglinear', 'tabular', 'transformer'\]"):
        make_model({"kind": "mlp"}, task, 0)
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['depth'\].*allowed"):
        make_model({"kind": "transformer", "depth": 2, **TINY}, task, 0)
    with pytest.raises(ValueError, match=r"missing required key\(s\) \['width'\]"):
        make_model({"kind": "transformer", "layers": 1, "heads": 1}, task, 0)
    with pytest.raises(ValueError, match="kind"):
        make_model({"layers": 1}, task, 0)


def test_argument_validation(task):
    r = nnx.Rngs(0)
    with pytest.raises(ValueError, match="prompt_vocab\\^P"):
        Tabular(2, 2, P=21, prompt_vocab=2, rngs=r)
    Tabular(2, 2, P=21, prompt_vocab=2, prompt_conditioned=False, rngs=r)  # fine without
    with pytest.raises(ValueError, match="entries"):
        Tabular(50, 4, order=4, rngs=r)
    with pytest.raises(ValueError, match="order"):
        Tabular(2, 2, order=-1, rngs=r)
    with pytest.raises(TypeError, match="positional"):
        Tabular(2, 2, positional="yes", rngs=r)
    with pytest.raises(ValueError, match="alpha"):
        Tabular(2, 2, rngs=r).fit_counts(jnp.zeros((1, 0), jnp.int32), jnp.zeros((1, 2)), -1.0)
    with pytest.raises(ValueError, match="divisible"):
        Transformer(4, 3, 1, 2, layers=1, heads=3, width=16, rngs=r)
    with pytest.raises(ValueError, match="dropout"):
        Transformer(4, 3, 1, 2, layers=1, heads=1, width=16, dropout=1.0, rngs=r)
    with pytest.raises(ValueError, match="init"):
        LogLinear(task, init="ones", rngs=r)
    with pytest.raises(TypeError, match="AutoregressiveLinear"):
        LogLinear(object(), rngs=r)


# ---- Transformer specifics -----------------------------------------------------------------


def test_flops_per_token_counts_the_model_matmuls(models):
    m = models["transformer"]
    flat = {"/".join(map(str, k)): v[...] for k, v in nnx.to_flat_state(nnx.state(m, nnx.Param))}
    blocks = sum(v.size for k, v in flat.items() if k.startswith("blocks") and "kernel" in k)
    T, L, C = 1 + H, TINY["layers"], TINY["width"]
    assert blocks == L * 12 * C * C  # qkv 3C² + proj C² + MLP 2·4C²
    want = 6 * blocks + 6 * flat["head/kernel"].size * H / T + 12 * L * T * C
    assert m.flops_per_token() == pytest.approx(want, rel=1e-12)
    assert flops_per_token(V, H, 1, layers=L, width=C) == m.flops_per_token()


def test_dropout(batch, models):
    x, y = batch
    rngs = nnx.Rngs(params=0, dropout=jax.random.key(0, impl="rbg"))
    m = Transformer(V, H, 1, X, **TINY, dropout=0.5, rngs=rngs)
    g, params, rest = nnx.split(m, nnx.Param, ...)
    assert jax.tree.leaves(rest)  # the dropout RNG state rides outside the Params
    train = run(m, x, y)
    m.eval()  # deterministic: the same function as a dropout-free model with these params
    g0, _, rest0 = nnx.split(models["transformer"], nnx.Param, ...)
    ref = run(nnx.merge(g0, params, rest0), x, y)
    np.testing.assert_allclose(run(m, x, y), ref, atol=1e-6)
    assert np.abs(np.asarray(train - ref)).max() > 1e-3  # masks act in train mode only
    np.testing.assert_allclose(jax.nn.logsumexp(train, axis=-1), 0.0, atol=1e-5)


def test_transformer_learns_shift_task():
    """y_h = (x + h) mod V is deterministic: a tiny transformer must reach near-zero loss."""
    x = jnp.arange(n, dtype=jnp.int32)[:, None] % X  # the shapes of `batch`: no new compile
    y = (x + jnp.arange(H, dtype=jnp.int32)) % V
    m = Transformer(V, H, 1, X, **TINY, rngs=nnx.Rngs(0))
    g, params, rest = nnx.split(m, nnx.Param, ...)
    tx = optax.adam(1e-2)

    @jax.jit
    def update(grads, opt, params):
        upd, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, upd), opt

    opt = tx.init(params)
    losses = []
    for _ in range(301):
        loss, grads = loss_and_grad(g, params, rest, x, y)  # shared compile; loss before update
        params, opt = update(grads, opt, params)
        losses.append(loss)
    losses = np.asarray(losses)
    assert losses[0] > H * math.log(V) * 0.9  # starts near uniform
    # sequence NLL < 0.05 nats: every training sequence has model probability > 0.95
    assert losses[-1] < 0.05, losses[-1]


# ---- precision = "bf16" --------------------------------------------------------------------

U_BF16 = 2.0**-8  # bfloat16's unit roundoff (8 significand bits)


def _dots(jaxpr):
    """Every dot_general of a jaxpr, inside custom-VJP calls and other sub-jaxprs too."""
    for e in jaxpr.eqns:
        if e.primitive.name == "dot_general":
            yield e
        for v in e.params.values():
            for sub in v if isinstance(v, (list, tuple)) else [v]:
                sub = getattr(sub, "jaxpr", sub)
                if hasattr(sub, "eqns"):
                    yield from _dots(sub)


def test_bf16_matmuls_take_bf16_inputs_and_accumulate_in_float32(batch):
    x, y = batch
    m16 = Transformer(V, H, 1, X, **TINY, precision="bf16", rngs=nnx.Rngs(0))
    m32 = Transformer(V, H, 1, X, **TINY, rngs=nnx.Rngs(0))
    g16, p16, r16 = nnx.split(m16, nnx.Param, ...)
    grad = jax.grad(lambda p: nll(nnx.merge(g16, p, r16), x, y))
    fwd, bwd = list(_dots(jax.make_jaxpr(m16)(x, y).jaxpr)), list(_dots(
        jax.make_jaxpr(grad)(p16).jaxpr))
    # per block: qkv, scores, weighted sum, proj, fc, out; then the head; the gradient adds
    # two matmuls (one per operand) for each
    assert len(fwd) == 6 * TINY["layers"] + 1
    assert len(bwd) == 3 * len(fwd)
    for e in fwd + bwd:
        assert [v.aval.dtype for v in e.invars] == [jnp.bfloat16] * 2, e
        assert e.outvars[0].aval.dtype == jnp.float32, e
    assert "bf16" not in str(jax.make_jaxpr(m32)(x, y))
    assert m16(x, y).dtype == jnp.float32  # log-probs, hence every metric, stay float32
    for a, b in zip(jax.tree.leaves(nnx.state(m16, nnx.Param)),
                    jax.tree.leaves(nnx.state(m32, nnx.Param)), strict=True):
        assert a.dtype == jnp.float32  # float32 master weights: the same initial parameters
        np.testing.assert_array_equal(a, b)
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(grad(p16)))
    with pytest.raises(ValueError, match="precision: must be one of \\['bf16', 'float32'\\]"):
        Transformer(V, H, 1, X, **TINY, precision="fp16", rngs=nnx.Rngs(0))


def test_bf16_log_probs_within_roundoff_of_float32(batch):
    x, y = batch
    m16 = Transformer(V, H, 1, X, **TINY, precision="bf16", rngs=nnx.Rngs(0))
    m32 = Transformer(V, H, 1, X, **TINY, rngs=nnx.Rngs(0))
    d = np.abs(np.asarray(run(m16, x, y) - run(m32, x, y)))
    # first order in u: each matmul rounds both operands (≤ 2u relative), the residual stream
    # passes one matmul chain per block plus the head, and log_softmax at most doubles an
    # ∞-norm error of the logits: |Δ log π̂| ≤ 2 · 2u · (layers + 1)
    tol = 4 * U_BF16 * (TINY["layers"] + 1)
    assert 0 < d.max() <= tol, (d.max(), tol)
    # the gradient: the same first-order bound, relative to its norm, as each of its matmuls
    # rounds the incoming gradient as well (a third rounding, hence 3u per matmul)
    gs = []
    for m in (m16, m32):
        g, p, r = nnx.split(m, nnx.Param, ...)
        gs.append(jnp.concatenate([a.ravel() for a in jax.tree.leaves(
            loss_and_grad(g, p, r, x, y)[1])]))
    rel = float(jnp.linalg.norm(gs[0] - gs[1]) / jnp.linalg.norm(gs[1]))
    assert 0 < rel <= 2 * 3 * U_BF16 * (TINY["layers"] + 1), rel


@pytest.mark.slow  # two whole-run compilations, ~15 s
def test_bf16_training_metrics_within_their_standard_error():
    """Trained in bf16, every metric stays within its own Monte-Carlo standard error of the
    float32 run's (same seeds, same data, same evaluation samples): no verdict can tell the
    two precisions apart."""
    from covsim.tasks.markov import MarkovChain
    from covsim.train import TrainSpec, make_train, run_seeds

    task = MarkovChain.random(jax.random.key(0), V=8, H=8, temperature=1.0)
    spec = TrainSpec(steps=200, batch_size=64, eval_every=100, eval_samples=4000, n_train=2000,
                     Ns=(2.0, 16.0))

    def fit(precision):
        mf = lambda k: Transformer(task.V, task.H, task.P, 1, **TINY, precision=precision,
                                   rngs=nnx.Rngs(k))
        return run_seeds(make_train(task, mf, optax.adam(3e-3), spec), [0]).metrics

    m32, m16 = fit("float32"), fit("bf16")
    kl32, kl16, se = (np.asarray(a) for a in (m32.kl, m16.kl, m32.kl_se))
    assert kl32[:, -1].max() < 0.5 * kl32[:, 0].min()  # it trained
    assert np.all(np.abs(kl16 - kl32) <= se), (kl16 - kl32, se)
    c32, c16 = np.asarray(m32.cov), np.asarray(m16.cov)  # (seeds, evals, Ns)
    # binomial standard error of a fraction of eval_samples, floored at one sample's weight
    se_cov = np.sqrt(np.maximum(c32 * (1 - c32), 1 / spec.eval_samples) / spec.eval_samples)
    assert np.all(np.abs(c16 - c32) <= se_cov), (c16 - c32, se_cov)


@pytest.mark.parametrize("layers, width, heads, H_, P, n_", [(2, 64, 2, 16, 1, 32),
                                                             (4, 128, 4, 32, 8, 64)])
def test_activation_bytes_is_what_the_backward_pass_keeps(layers, width, heads, H_, P, n_):
    """The estimate counts the kept activations only; XLA's temporary buffers for the whole
    gradient hold those and the backward's working set on top (measured 1.35–1.42× on CPU),
    so they must lie between 1× and 2× the estimate."""
    m = Transformer(8, H_, P, 8, layers=layers, heads=heads, width=width, rngs=nnx.Rngs(0))
    g, p, r = nnx.split(m, nnx.Param, ...)
    x, y = jnp.zeros((n_, P), jnp.int32), jnp.zeros((n_, H_), jnp.int32)
    f = jax.jit(jax.grad(lambda p: nll(nnx.merge(g, p, r), x, y)))
    temp = f.lower(p).compile().memory_analysis().temp_size_in_bytes
    est = m.activation_bytes(n_)
    assert est <= temp <= 2 * est, (est, temp)
