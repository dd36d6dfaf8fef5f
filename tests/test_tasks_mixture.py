"""Mixture: exactness (shared checks) on Markov + Bernoulli components, layout, errors."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from task_checks import check_task, jit_log_prob, jit_sample, jit_token, random_batch

from covsim.tasks.base import Task
from covsim.tasks.bernoulli import Bernoulli
from covsim.tasks.markov import MarkovChain
from covsim.tasks.mixture import Mixture

V, H = 2, 3


def components():
    """A prompted stored Markov chain (P = 1, 3 prompts), a Bernoulli (P = 0) and an explicit
    chain with zero transitions (P = 0), all with V = 2, H = 3."""
    markov = MarkovChain.random(jax.random.key(0), V=V, H=H, temperature=0.8, n_prompts=3)
    T = np.array([[0.0, 1.0], [0.7, 0.3], [0.4, 0.6]])  # contexts 0, 1, BOS
    return markov, Bernoulli(0.2, H=H), MarkovChain.from_tables(T, H=H)


class VerifiedBernoulli(Bernoulli):
    """A component with a verifier: success iff every token is 1."""

    def reward(self, prompts, responses):
        return jnp.all(responses == 1, axis=-1).astype(jnp.float32)


def test_mixture_is_exact():
    task = Mixture(components(), [0.5, 0.3, 0.2])
    assert (task.K, task.V, task.H, task.P, task.prompt_vocab) == (3, V, H, 2, 3)
    check_task(task, jax.random.key(1))


def test_rows_use_their_component():
    comps = components()
    task = Mixture(comps, (0.5, 0.3, 0.2))
    n = 200_000  # the shape check_task compiled
    x, y = jit_sample(task, jax.random.key(2), n)
    lp = np.asarray(jit_log_prob(task, x, y))
    x, y = np.asarray(x), np.asarray(y)
    assert set(np.unique(x[:, 0])) == {0, 1, 2}
    assert np.all(x[x[:, 0] > 0, 1] == 0)  # P = 0 components: zero padding
    for c, t in enumerate(comps):
        rows = x[:, 0] == c
        want = np.asarray(jit_log_prob(t, jnp.asarray(x[:, 1 : 1 + t.P]), jnp.asarray(y)))
        np.testing.assert_allclose(lp[rows], want[rows], rtol=1e-6)
    # component frequencies: Binomial(n, w) within 5σ
    for c, w in enumerate((0.5, 0.3, 0.2)):
        assert abs(np.mean(x[:, 0] == c) - w) <= 5 * math.sqrt(w * (1 - w) / n)


def test_prompt_support_weights():
    task = Mixture(components(), [0.5, 0.3, 0.2])
    xs, lw = task.prompt_support()
    assert xs.tolist() == [[0, 0], [0, 1], [0, 2], [1, 0], [2, 0]]
    np.testing.assert_allclose(np.exp(lw), [0.5 / 3] * 3 + [0.3, 0.2], rtol=1e-6)


def test_zero_weight_component_is_never_drawn():
    task = Mixture(components(), [0.0, 1.0, 0.0])
    x, _ = jit_sample(task, jax.random.key(3), 200_000)
    assert np.all(np.asarray(x)[:, 0] == 1)


def test_reward_delegates_to_components_with_a_verifier():
    markov, _, explicit = components()
    task = Mixture((markov, VerifiedBernoulli(0.5, H=H), explicit), [0.4, 0.4, 0.2])
    x, y = random_batch(task, 0, 256)
    r = np.asarray(task.reward(x, y))
    cid = np.asarray(x)[:, 0]
    ones = np.all(np.asarray(y) == 1, axis=-1)
    np.testing.assert_array_equal(r[cid == 1], ones[cid == 1])
    assert np.all(np.isnan(r[cid != 1]))
    with pytest.raises(NotImplementedError, match="no component"):
        Mixture(components(), [0.5, 0.3, 0.2]).reward(x, y)


def test_is_a_pytree():
    task = Mixture(components(), [0.5, 0.3, 0.2])
    leaves, tree = jax.tree.flatten(task)
    again = jax.tree.unflatten(tree, leaves)
    assert isinstance(again.components, tuple) and again.P == task.P
    x, y = random_batch(task, 1, 16)
    np.testing.assert_array_equal(jit_token(again, x, y), jit_token(task, x, y))


@pytest.mark.parametrize("weights,match", [
    ([0.5, 0.6, -0.1], r"argument weights must have entries in \[0, 1\]"),
    ([0.5, 0.3, 0.1], "argument weights must sum to 1"),
    ([0.5, 0.5], r"argument weights must have shape \(3,\)"),
])
def test_bad_weights(weights, match):
    with pytest.raises(ValueError, match=match):
        Mixture(components(), weights)


def test_bad_components():
    markov, bern, explicit = components()
    with pytest.raises(ValueError, match=r"argument components\[1\] must have V=2, H=3"):
        Mixture((markov, Bernoulli(0.2, H=4)), [0.5, 0.5])
    other_v = MarkovChain.from_tables(np.full((4, 3), 1 / 3), H=H)
    with pytest.raises(ValueError, match=r"argument components\[2\] must have V=2"):
        Mixture((markov, bern, other_v), [0.5, 0.3, 0.2])
    with pytest.raises(TypeError, match=r"argument components\[0\] must be a Task"):
        Mixture(("markov",), [1.0])
    with pytest.raises(ValueError, match="argument components must be a non-empty"):
        Mixture((), [])
    task = Mixture([markov, bern], [0.5, 0.5])
    assert isinstance(task.components, tuple) and isinstance(task, Task)
    with pytest.raises(ValueError, match=r"argument prompts must have shape \(\*, 2\)"):
        task.log_prob(jnp.zeros((4, 1), jnp.int32), jnp.zeros((4, H), jnp.int32))
