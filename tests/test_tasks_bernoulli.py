"""Bernoulli: exactness (shared checks) and the case study's closed forms (arXiv 2510.15020v2,
§3)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from task_checks import check_task, jit_log_prob, jit_sample

from covsim.tasks.bernoulli import Bernoulli, bernoulli_cov, bernoulli_kl, bernoulli_mle


@pytest.mark.parametrize("p,H", [(0.3, 4), (0.02, 3)])
def test_bernoulli_is_exact(p, H):
    task = Bernoulli(p, H=H)
    assert (task.V, task.H, task.P, task.prompt_vocab) == (2, H, 0, 1)
    check_task(task, jax.random.key(0))


@pytest.mark.parametrize("p,token", [(0.0, 0), (1.0, 1)])
def test_degenerate_p_never_samples_the_null_token(p, token):
    # exact_cdf + uniforms on (0, 1]: probability-0 tokens are never drawn, whichever end
    task = Bernoulli(p, H=3)
    _, y = jit_sample(task, jax.random.key(1), 200_000)
    assert np.all(np.asarray(y) == token)
    assert np.all(np.asarray(jit_log_prob(task, jnp.zeros((1, 0), jnp.int32), y[:1])) == 0)
    other = jnp.full((1, 3), 1 - token, jnp.int32)
    assert float(task.log_prob(jnp.zeros((1, 0), jnp.int32), other)[0]) == -np.inf


def test_mle_is_the_empirical_frequency():
    p, n, H = 0.3, 20_000, 4
    _, y = jit_sample(Bernoulli(p, H=H), jax.random.key(2), n)
    p_hat = float(bernoulli_mle(y))
    assert p_hat == pytest.approx(float(np.mean(np.asarray(y))), abs=1e-6)
    # Binomial(nH, p)/nH: 5σ, two-sided false alarm < 1e-6
    assert abs(p_hat - p) <= 5 * math.sqrt(p * (1 - p) / (n * H))
    assert bernoulli_mle(y.reshape(4, n // 4, H)).shape == (4,)


def _enumerated(p, q, H):
    ys = jnp.asarray(np.array(np.meshgrid(*[[0, 1]] * H, indexing="ij")).reshape(H, -1).T)
    x = jnp.zeros((ys.shape[0], 0), jnp.int32)
    lp = np.asarray(Bernoulli(p, H=H).log_prob(x, ys), np.float64)
    lq = np.asarray(Bernoulli(q, H=H).log_prob(x, ys), np.float64)
    return np.exp(lp), lp - lq


@pytest.mark.parametrize("p,q", [(0.3, 0.1), (0.05, 0.2), (0.5, 0.45)])
def test_closed_forms_match_enumeration(p, q):
    H = 5
    w, r = _enumerated(p, q, H)
    assert bernoulli_kl(p, q, H) == pytest.approx(np.sum(w * r), rel=1e-5)
    for N in (1.5, 2.0, 5.0, 40.0):
        # keep away from ties: float32 log-probs decide the indicator up to ~1e-6 nats
        assert np.min(np.abs(r - math.log(N))) > 1e-4
        assert bernoulli_cov(p, q, N, H) == pytest.approx(np.sum(w * (r >= math.log(N))), abs=1e-6)


@pytest.mark.parametrize("p", [0.01, 0.1, 0.3, 0.5])
@pytest.mark.parametrize("N", [2, 3, 10, 16, 1000])
def test_prop_f2_tightness(p, N):
    # Prop. D.2: π_D = Ber(p), π̂ = Ber(p/N), p ≤ ½: Cov_N = p ≥ KL/(log N − ½ + 1/(2N))
    kl = float(bernoulli_kl(p, p / N))
    assert float(bernoulli_cov(p, p / N, N)) == p
    assert p >= kl / (math.log(N) - 0.5 + 1 / (2 * N))
    # and Prop 3.1 (exact form, N ≥ e): Cov_N ≤ KL / (log N − 1 + 1/N)
    if N >= math.e:
        assert p <= kl / (math.log(N) - 1 + 1 / N)


def test_missing_mass():
    # p̂ = 0 (no 1 seen): KL = ∞ but Cov_N = p for every N ≥ 2 (§3 of the paper)
    p = 0.01
    assert bernoulli_kl(p, 0.0) == np.inf
    assert bernoulli_kl(p, 0.0, H=3) == np.inf
    np.testing.assert_allclose(bernoulli_cov(p, 0.0, [2, 10, 1e6]), p)
    np.testing.assert_allclose(bernoulli_cov(p, 0.0, 2, H=3), 1 - (1 - p) ** 3)
    assert bernoulli_kl(0.0, 0.0) == 0 and bernoulli_kl(1.0, 1.0) == 0
    assert bernoulli_cov(0.0, 0.0, 2) == 0 and bernoulli_cov(0.4, 0.4, 1) == 1
    assert bernoulli_kl([0.2, 0.3], [[0.2], [0.1]]).shape == (2, 2)


def test_is_a_pytree():
    # p is a leaf: a batch of tasks by vmap, scored under jit
    y = jnp.array([[1, 0], [1, 1]])
    x = jnp.zeros((2, 0), jnp.int32)
    lp = jax.jit(jax.vmap(lambda p: Bernoulli(p, H=2).log_prob(x, y)))(jnp.array([0.2, 0.5]))
    np.testing.assert_allclose(lp, [[math.log(0.2 * 0.8), 2 * math.log(0.2)],
                                    [2 * math.log(0.5)] * 2], rtol=1e-6)


@pytest.mark.parametrize("kw,err,match", [
    (dict(p=-0.1), ValueError, r"argument p must be in \[0.0, 1.0\]"),
    (dict(p=1.5), ValueError, r"argument p must be in \[0.0, 1.0\]"),
    (dict(p=[0.1, 0.2]), ValueError, "argument p must be a scalar"),
    (dict(p=0.5, H=0), ValueError, "argument H must be an integer ≥ 1"),
    (dict(p="a"), TypeError, "argument p"),
])
def test_bad_arguments(kw, err, match):
    with pytest.raises(err, match=match):
        Bernoulli(**kw)


def test_bad_analytic_arguments():
    with pytest.raises(ValueError, match="argument q must have entries in"):
        bernoulli_kl(0.5, 1.2)
    with pytest.raises(ValueError, match="argument p must have entries in"):
        bernoulli_cov(-0.5, 0.2, 2)
    with pytest.raises(ValueError, match="argument N must have entries ≥ 1"):
        bernoulli_cov(0.5, 0.2, 0.5)
    with pytest.raises(ValueError, match="argument H"):
        bernoulli_cov(0.5, 0.2, 2, H=0)
    task = Bernoulli(0.5, H=2)
    with pytest.raises(ValueError, match=r"argument responses must have shape \(3, 2\)"):
        task.log_prob(jnp.zeros((3, 0), jnp.int32), jnp.zeros((3, 3), jnp.int32))
