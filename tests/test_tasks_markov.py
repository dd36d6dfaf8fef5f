"""MarkovChain: exactness (shared checks), stored ≡ regenerated tables, entropy, errors."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from task_checks import (
    check_task,
    jit_next_token,
    jit_sample,
    jit_token,
    random_batch,
)

from covsim.tasks.markov import STORE_MAX, MarkovChain

KEY = jax.random.key(0)

CONFIGS = {
    "dirichlet-order1-stationary": dict(V=3, H=4, concentration=0.5),
    "stored-pivotal-order2-prompts": dict(V=3, H=4, order=2, pivotal=[1, 3], eps=0.05,
                                          temperature=0.7, n_prompts=3),
    "regenerated-pivotal-order2-prompts": dict(
        V=2, H=4, order=2, pivotal=[0], eps=0.1, temperature=0.5, n_prompts=3, store_max=0
    ),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_random_chain_is_exact(name):
    cfg = CONFIGS[name]
    task = MarkovChain.random(jax.random.fold_in(KEY, len(name)), **cfg)
    assert task.stored == (cfg.get("store_max", STORE_MAX) > 0)
    assert task.P == (1 if cfg.get("n_prompts", 1) > 1 else 0)
    check_task(task, jax.random.key(1))


def test_explicit_tables_with_zero_transitions_are_exact():
    # order 1, V = 2: contexts 0, 1, BOS = 2; zeros at both ends of rows test that sampling
    # never emits a zero-probability token (leading zero: u > 0; trailing: cdf plateau = 1).
    T = np.array([[[0.0, 1.0], [0.6, 0.4], [0.25, 0.75]],
                  [[0.5, 0.5], [1.0, 0.0], [0.9, 0.1]],
                  [[0.3, 0.7], [0.2, 0.8], [0.5, 0.5]]])
    task = MarkovChain.from_tables(T, H=3)
    assert (task.Ht, task.C, task.V, task.n_prompts, task.P) == (3, 3, 2, 1, 0)
    ys, lp = task.enumerate(jnp.zeros((0,), jnp.int32))
    want = [T[0, 2, a] * T[1, a, b] * T[2, b, c] for a, b, c in np.asarray(ys)]
    np.testing.assert_allclose(np.exp(lp), want, atol=1e-7)
    check_task(task, jax.random.key(2))


def test_context_index_matches_definition():
    task = MarkovChain.from_tables(np.full((64, 3), 1 / 3), H=5, order=3)
    y = jnp.array([[2, 0, 1, 1, 2]])
    pad = [3, 3, 3] + [2, 0, 1, 1, 2]  # BOS = V = 3
    want = [sum(pad[3 + h - j] * 4 ** (j - 1) for j in (1, 2, 3)) for h in range(5)]
    assert task.contexts(y).tolist() == [want]
    assert want[0] == task.C - 1


def test_stored_and_regenerated_tables_define_the_same_chain():
    kw = dict(V=4, H=5, order=2, n_prompts=6, pivotal=[2], eps=0.01, temperature=2.0)
    a = MarkovChain.random(KEY, **kw)
    b = MarkovChain.random(KEY, store_max=0, **kw)
    assert a.stored and not b.stored
    x, y = random_batch(a, 3, 128)
    np.testing.assert_allclose(jit_next_token(a, x, y), jit_next_token(b, x, y), atol=1e-6)
    # (the regenerated sampler is checked against its own scores in test_random_chain_is_exact)


def test_stationary_tables_do_not_depend_on_H():
    # random() builds stationary tables at H = Ht = 1 so one compilation serves every H; the
    # chain must still be the one the regenerated (H-aware) tables define
    for H in (3, 16):
        a = MarkovChain.random(KEY, V=4, H=H, n_prompts=3, temperature=0.5)
        b = MarkovChain.random(KEY, V=4, H=H, n_prompts=3, temperature=0.5, store_max=0)
        assert a.stored and not b.stored and a.H == H
        x, y = random_batch(a, 2, 64)
        np.testing.assert_allclose(jit_next_token(a, x, y), jit_next_token(b, x, y), atol=1e-6)
    short = MarkovChain.random(KEY, V=4, H=3, n_prompts=3, temperature=0.5)
    np.testing.assert_array_equal(short.log_T, a.log_T)


def test_many_prompts_near_deterministic_tables_are_regenerated():
    # the horizon experiment (experiments/horizon.toml): thousands of sub-prompts, each its own
    # near-deterministic table; only the rows visited are ever drawn.
    V, H, eps, K, n = 8, 32, 1e-3, 1 << 16, 2000
    task = MarkovChain.random(KEY, V=V, H=H, pivotal=[], eps=eps, n_prompts=K)
    assert not task.stored and task.P == 1 and task.prompt_vocab == K
    x, y = jit_sample(task, jax.random.key(5), n)
    assert len(np.unique(np.asarray(x))) > 1900  # uniform over 65536: ≈ 1970 distinct
    lp = np.asarray(jit_token(task, x, y))
    # every token is its table's top token except w.p. eps: Poisson(64) misses in 64k tokens
    top = np.isclose(lp, math.log1p(-eps), atol=1e-6)
    miss = np.isclose(lp, math.log(eps / (V - 1)), atol=1e-4)
    assert np.all(top | miss)
    assert 64 - 5 * 8 <= miss.sum() <= 64 + 5 * 8  # ± 5σ
    # distinct prompts have distinct rules: under another prompt a token is that table's
    # top token w.p. ≈ 1/V only (binomial(64k, 1/8): 8000 ± 5·84)
    lp_other = np.asarray(jit_token(task, jnp.roll(x, 1, axis=0), y))
    assert np.isclose(lp_other, math.log1p(-eps), atol=1e-6).sum() <= 8000 + 5 * 84


def test_entropy_matches_enumeration():
    task = MarkovChain.random(KEY, V=3, H=4, order=2, pivotal=[1], eps=0.2, n_prompts=3)
    xs, log_mu = task.prompt_support()
    cond = 0.0
    for x, lm in zip(np.asarray(xs), np.asarray(log_mu), strict=True):
        _, lp = task.enumerate(jnp.asarray(x))
        lp = np.asarray(lp, np.float64)
        cond -= math.exp(lm) * np.sum(np.exp(lp) * lp)
    ent = task.entropy()
    assert ent.shape == (4,)
    np.testing.assert_allclose(float(ent.sum()), cond, rtol=1e-5)
    # non-pivotal positions hold exactly the near-deterministic row entropy
    h_eps = -0.8 * math.log(0.8) - 0.2 * math.log(0.1)
    np.testing.assert_allclose(ent[jnp.array([0, 2, 3])], h_eps, rtol=1e-5)
    assert float(ent[1]) > h_eps


@pytest.mark.parametrize("low,high", [
    (dict(temperature=0.05), dict(temperature=20.0)),
    (dict(concentration=0.02), dict(concentration=200.0)),
])
def test_spread_controls_entropy(low, high):
    V = 3

    def row_entropy(kw):  # mean entropy of the C·H rows
        lp = np.asarray(MarkovChain.random(KEY, V=V, H=4, **kw).log_T)
        return -np.sum(np.where(lp > -np.inf, np.exp(lp) * lp, 0), -1).mean()

    # sharp rows: entropy ≪ log V; flat rows: log V − O(1/temperature² or 1/concentration).
    # Shapes as in CONFIGS so that the gamma sampler compiles once.
    assert row_entropy(low) < 0.25 and row_entropy(high) > math.log(V) - 0.02


def test_random_is_vmappable_over_keys():
    keys = jax.random.split(KEY, 3)
    batch = jax.vmap(lambda k: MarkovChain.random(k, V=3, H=4))(keys)
    assert batch.log_T.shape == (3, 1, 1, 4, 3)
    one = MarkovChain.random(keys[1], V=3, H=4)
    np.testing.assert_allclose(batch.log_T[1], one.log_T, atol=1e-6)


def test_sampled_transitions_follow_a_large_table():
    # V = 16, first order: transition frequencies vs the table (beyond enumeration).
    task = MarkovChain.random(KEY, V=16, H=32)
    x, y = jit_sample(task, jax.random.key(6), 10_000)
    c = np.asarray(task.contexts(y)).ravel()
    counts = np.zeros((task.C, 16))
    np.add.at(counts, (c, np.asarray(y).ravel()), 1)
    T = np.exp(np.asarray(task.log_T[0, 0], np.float64))
    rows = counts.sum(1)
    # per-context TV ≤ ½ Σ_v sqrt(T(1−T)/m) + sqrt(log(C/1e-4)/(2m)) (Jensen + McDiarmid,
    # union over the C contexts at false-alarm 1e-4)
    for ci in np.flatnonzero(rows > 0):
        m = rows[ci]
        tv = 0.5 * np.abs(counts[ci] / m - T[ci]).sum()
        bound = 0.5 * np.sqrt(T[ci] * (1 - T[ci]) / m).sum() + math.sqrt(
            math.log(task.C / 1e-4) / (2 * m))
        assert tv <= bound, (ci, tv, bound)


# ---- errors ----------------------------------------------------------------------------
@pytest.mark.parametrize("kw,match", [
    (dict(V=1, H=3), "argument V must be an integer ≥ 2"),
    (dict(V=3, H=0), "argument H must be an integer ≥ 1"),
    (dict(V=3, H=3, order=0), "argument order must be an integer ≥ 1"),
    (dict(V=3, H=3, n_prompts=0), "argument n_prompts"),
    (dict(V=3, H=3, concentration=0.0), r"argument concentration must be in \(0.0, inf\)"),
    (dict(V=3, H=3, temperature=-1.0), "argument temperature"),
    (dict(V=3, H=3, temperature=1.0, concentration=1.0), "concentration and temperature"),
    (dict(V=3, H=3, pivotal=[1], eps=1.0), r"argument eps must be in \[0.0, 1.0\)"),
    (dict(V=3, H=3, pivotal=[3]), r"argument pivotal\[0\] must be an integer in \[0, 2\]"),
    (dict(V=3, H=3, pivotal=[1], stationary=True), "argument stationary"),
    (dict(V=3, H=3, order=40), "argument order must keep"),
    (dict(V=3, H=3, concentration=1.0, n_prompts=5, store_max=10), "needs stored tables"),
])
def test_random_rejects_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        MarkovChain.random(KEY, **kw)


def test_from_tables_rejects_bad_tables():
    good = np.full((3, 2), 0.5)
    with pytest.raises(ValueError, match=r"argument T must have entries in \[0, 1\]"):
        MarkovChain.from_tables(np.array([[1.5, -0.5]] * 3), H=2)
    with pytest.raises(ValueError, match="argument T must sum to 1"):
        MarkovChain.from_tables(np.full((3, 2), 0.4), H=2)
    with pytest.raises(ValueError, match=r"T.shape\[-2\] \(C\) = \(V\+1\)\^order = 9"):
        MarkovChain.from_tables(good, H=2, order=2)
    with pytest.raises(ValueError, match=r"T.shape\[-3\] \(Ht\) in \{1, H=2\}"):
        MarkovChain.from_tables(np.full((3, 3, 2), 0.5), H=2)
    with pytest.raises(ValueError, match=r"argument T.shape\[-1\] \(V\)"):
        MarkovChain.from_tables(np.ones((2, 1)), H=2)
    with pytest.raises(ValueError, match="argument H"):
        MarkovChain.from_tables(good, H=0)
    with pytest.raises(ValueError, match="argument T must have shape"):
        MarkovChain.from_tables(np.full(2, 0.5), H=2)


def test_batch_shapes_are_checked():
    task = MarkovChain.from_tables(np.full((2, 1, 4, 3), 1 / 3), H=4)  # 2 prompts: P = 1
    x, y = jnp.zeros((5, 1), jnp.int32), jnp.zeros((5, 4), jnp.int32)
    with pytest.raises(ValueError, match=r"argument prompts must have shape \(\*, 1\)"):
        task.log_prob(jnp.zeros((5, 0), jnp.int32), y)
    with pytest.raises(ValueError, match=r"argument responses must have shape \(5, 4\)"):
        task.next_token_log_probs(x, y[:, :3])
    with pytest.raises(ValueError, match=r"argument responses must have shape \(5, 4\)"):
        task.token_log_probs(x, y[:4])
    with pytest.raises(ValueError, match=r"argument prompts must have shape \(\*, 1\)"):
        task.tables(jnp.zeros((5,), jnp.int32))
