"""Decoding from a learner: ancestral samples follow π̂ exactly; Pass@N / Best-of-N by sampling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx, struct
from scipy import stats

from covsim import decode
from covsim.metrics import pass_at_n_exact
from covsim.models import LogLinear
from covsim.tasks.base import Task, all_sequences
from covsim.tasks.linear import AutoregressiveLinear


@pytest.fixture(scope="module")
def task_and_model():
    task = AutoregressiveLinear.random(jax.random.key(2), V=3, H=3, d=4, X=2, B=2.0)
    model = LogLinear(task, rngs=nnx.Rngs(0))
    nnx.update(model, nnx.State({"theta": nnx.Param(task.theta)}))  # π̂ = π_D
    return task, model


def test_samples_follow_the_model(task_and_model):
    """Chi-square goodness of fit of 60k draws per prompt against the model's exact law
    (all V^H = 27 responses; p-value threshold 1e-4, so a false alarm has probability 1e-4)."""
    task, model = task_and_model
    ys = all_sequences(task.V, task.H)
    for x in range(task.X):
        n = 60_000
        prompts = jnp.full((n, 1), x, jnp.int32)
        draws = np.asarray(jax.jit(lambda k, p=prompts: decode.sample(model, p, task.H, k))(
            jax.random.key(x)))
        codes = draws @ (task.V ** np.arange(task.H - 1, -1, -1))
        obs = np.bincount(codes, minlength=task.V**task.H)
        lp = task.log_prob(jnp.full((len(ys), 1), x, jnp.int32), ys)
        p = np.exp(np.asarray(lp, np.float64))
        assert abs(p.sum() - 1) < 1e-5
        assert stats.chisquare(obs, p / p.sum() * obs.sum()).pvalue > 1e-4


def test_low_temperature_is_greedy(task_and_model):
    task, model = task_and_model
    prompts = jnp.zeros((200, 1), jnp.int32)
    y = decode.sample(model, prompts, task.H, jax.random.key(0), temperature=1e-3)
    assert np.all(np.asarray(y) == np.asarray(y[0]))  # one (greedy) path
    ys = all_sequences(task.V, task.H)
    lp = task.log_prob(jnp.zeros((len(ys), 1), jnp.int32), ys)
    # greedy = token-wise argmax along its own prefix
    logits = model(prompts[:1], y[:1])[0]
    assert np.array_equal(np.asarray(jnp.argmax(logits, -1)), np.asarray(y[0]))
    assert float(lp.max()) >= float(task.log_prob(prompts[:1], y[:1])[0]) - 1e-6
    with pytest.raises(ValueError, match="temperature"):
        decode.sample(model, prompts, task.H, jax.random.key(0), temperature=0.0)


class FirstTokenZero(Task):
    """A wrapper task whose verifier accepts responses starting with token 0."""

    inner: AutoregressiveLinear
    V: int = struct.field(pytree_node=False, default=3)
    H: int = struct.field(pytree_node=False, default=3)
    P: int = struct.field(pytree_node=False, default=1)
    prompt_vocab: int = struct.field(pytree_node=False, default=2)

    def sample(self, key, n):
        return self.inner.sample(key, n)

    def next_token_log_probs(self, prompts, responses):
        return self.inner.next_token_log_probs(prompts, responses)

    def reward(self, prompts, responses):
        return (responses[:, 0] == 0).astype(jnp.float32)


def test_pass_at_n_and_best_of_n_by_sampling(task_and_model):
    task, model = task_and_model
    t = FirstTokenZero(task)
    prompts = jnp.asarray([[0], [1]], jnp.int32)
    p_good = np.exp(np.asarray(model(prompts, jnp.zeros((2, 3), jnp.int32))[:, 0, 0]))
    m = 2000  # prompts repeated: the estimator's mean over them is ~exact
    xs = jnp.repeat(prompts, m // 2, axis=0)
    for N in (1, 4):
        est = np.asarray(decode.pass_at_n_sampled(model, t, xs, N, k=8, key=jax.random.key(N)))
        exact = np.asarray([pass_at_n_exact(jnp.asarray([p]), N) for p in p_good])
        for i in range(2):
            got = est[i * m // 2 : (i + 1) * m // 2]
            se = got.std(ddof=1) / np.sqrt(len(got))
            assert abs(got.mean() - exact[i]) < 5 * se + 1e-3
    ys, r = decode.best_of_n(model, t, xs, 8, jax.random.key(9))
    assert np.array_equal(np.asarray(r), np.asarray(t.reward(xs, ys)))
    exact8 = np.repeat([float(pass_at_n_exact(jnp.asarray([p]), 8)) for p in p_good], m // 2)
    assert abs(np.mean(np.asarray(r)) - exact8.mean()) < 5 * np.sqrt(0.25 / m)
