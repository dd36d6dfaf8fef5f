"""The `Task` protocol: a ground-truth distribution π_D that can both sample and score exactly.

Shapes used throughout (n = batch, P = prompt length, H = response length, V = vocabulary):

    prompts    (n, P) int32   P may be 0 (no prompt)
    responses  (n, H) int32   tokens in [0, V)
    next_token_log_probs(prompts, responses) -> (n, H, V)
        entry [i, h] is log π_D(· | x_i, y_i[:h]), teacher-forced along responses
    token_log_probs(prompts, responses) -> (n, H)   log π_D(y_h | x, y_{<h})
    log_prob(prompts, responses)        -> (n,)     Σ_h of the above (one `jnp.sum`)

Tasks are pytrees (`flax.struct.PyTreeNode`): their arrays are leaves and their sizes are
static fields, so a task can be passed into `jit`/`vmap` like any other argument. Every method
is a pure jnp function and traceable; `n` in `sample` must be static.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from covsim.checks import check_shape

Array = jax.Array

#: The largest response space `enumerate` will materialise (V^H sequences).
MAX_ENUMERATE = 1 << 20


def inverse_cdf(u: Array, cdf: Array) -> Array:
    """Categorical sample by inverse CDF: u (...,) uniform in [0, 1), cdf (..., V) -> (...,) int32.

    ~18× faster than `jax.random.categorical` inside `lax.scan` on CPU (benchmarks/bench_markov.py).
    Category j
    is chosen iff cdf[j-1] < u ≤ cdf[j]: with u in (0, 1] (`open_uniform`) and a cdf whose last
    plateau is exactly 1 (`exact_cdf`) a zero-probability category is never chosen.
    """
    V = cdf.shape[-1]
    idx = jnp.sum(cdf < u[..., None], axis=-1, dtype=jnp.int32)
    return jnp.minimum(idx, V - 1)


def exact_cdf(p: Array) -> Array:
    """Cumulative probabilities (..., V) whose last plateau is exactly 1.

    With uniforms u ∈ (0, 1] (`open_uniform`), `inverse_cdf` then never returns a
    zero-probability token: leading zeros have cdf = 0 < u, and rounding of the total goes to
    the last positive token instead of to a trailing zero-probability one."""
    cdf = jnp.cumsum(p, axis=-1)
    return jnp.where(cdf >= cdf[..., -1:], 1.0, cdf)


def open_uniform(key: Array, shape: tuple[int, ...]) -> Array:
    """Uniforms on (0, 1]: `inverse_cdf` with `exact_cdf` then never picks a zero-mass token."""
    return 1.0 - jax.random.uniform(key, shape)


def sample_categorical(key: Array, log_p: Array) -> Array:
    """One inverse-CDF draw per row of log-probabilities log_p (..., V) -> (...,) int32."""
    return inverse_cdf(open_uniform(key, log_p.shape[:-1]), exact_cdf(jnp.exp(log_p)))


def gather_tokens(log_p: Array, tokens: Array) -> Array:
    """log_p (..., V), tokens (...,) -> (...,): log_p[..., tokens]."""
    return jnp.take_along_axis(log_p, tokens[..., None].astype(jnp.int32), axis=-1)[..., 0]


def gathered_log_softmax(logits: Array, tokens: Array) -> Array:
    """logits (..., V), tokens (...,) -> (...,): `jax.nn.log_softmax(logits)[..., tokens]`,
    the same floats (the same arithmetic in the same order: the logit less the row's maximum,
    less the log of the row's sum of exponentials; tested), without the (..., V) log-softmax
    array, whose backward pass is most of a table learner's step. A loss summed over these
    values may round differently from one summed over the gathered log-softmax: XLA may order
    the sum differently in the other program. Measured on a 2-core CPU, the horizon table's
    1000 Adam steps (batch 256, H = 16): 0.19 s through log_softmax, 0.16 s through this."""
    z_max = jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
    shifted = logits - z_max
    return gather_tokens(shifted, tokens) - jnp.log(jnp.sum(jnp.exp(shifted), axis=-1))


class Task(struct.PyTreeNode):
    """Base class of every ground truth. Subclasses define the static sizes
    `V`, `H`, `P`, `prompt_vocab` and implement `sample` and `next_token_log_probs`;
    they may override anything else for speed or exactness."""

    # ---- must implement -------------------------------------------------------------
    def sample(self, key: Array, n: int) -> tuple[Array, Array]:
        """Draw n i.i.d. pairs x ~ µ, y ~ π_D(·|x): ((n, P) int32, (n, H) int32)."""
        raise NotImplementedError

    def next_token_log_probs(self, prompts: Array, responses: Array) -> Array:
        """The teacher: (n, H, V) with [i, h] = log π_D(· | x_i, y_i[:h])."""
        raise NotImplementedError

    # ---- derived --------------------------------------------------------------------
    def token_log_probs(self, prompts: Array, responses: Array) -> Array:
        """(n, H): log π_D(y_h | x, y_{<h})."""
        return gather_tokens(self.next_token_log_probs(prompts, responses), responses)

    def log_prob(self, prompts: Array, responses: Array) -> Array:
        """(n,): log π_D(y | x), the sum over the whole response in one reduction."""
        return jnp.sum(self.token_log_probs(prompts, responses), axis=-1)

    def prompt_support(self) -> tuple[Array, Array]:
        """All prompts with their log-weights log µ(x): ((K, P) int32, (K,)).

        Only for tasks whose prompt space is small; others raise NotImplementedError."""
        if self.P == 0:
            return jnp.zeros((1, 0), jnp.int32), jnp.zeros((1,))
        raise NotImplementedError(f"{type(self).__name__} has no enumerable prompt space")

    def enumerate(self, prompt: Array) -> tuple[Array, Array]:
        """Every response for one prompt (P,) with its log-probability: ((M, H), (M,)), M = V^H.

        Brute force over V^H, scored by `log_prob`; refuses spaces above MAX_ENUMERATE."""
        prompt = jnp.asarray(prompt, jnp.int32)
        check_shape("prompt", prompt, (self.P,))
        ys = all_sequences(self.V, self.H)
        xs = jnp.broadcast_to(prompt, (ys.shape[0], self.P))
        return ys, self.log_prob(xs, ys)

    def reward(self, prompts: Array, responses: Array) -> Array:
        """The verifier r(x, y) ∈ {0, 1}, (n,) float32; only tasks with a notion of success."""
        raise NotImplementedError(f"{type(self).__name__} has no verifier")

    def check_batch(self, prompts, responses) -> None:
        """Raise a ValueError naming the argument when a batch has the wrong shape."""
        check_shape("prompts", prompts, (None, self.P))
        check_shape("responses", responses, (np.shape(prompts)[0], self.H))


def all_sequences(V: int, H: int) -> Array:
    """All V^H sequences in lexicographic order: (V^H, H) int32."""
    if V**H > MAX_ENUMERATE:
        raise ValueError(
            f"cannot enumerate V^H = {V}^{H} = {V**H} responses; the limit is {MAX_ENUMERATE}"
        )
    return jnp.asarray(
        np.array(list(itertools.product(range(V), repeat=H)), np.int32).reshape(-1, H)
    )


def exact_joint(task: Task) -> tuple[Array, Array, Array]:
    """The whole (x, y) space with its exact joint log-probability log µ(x) + log π_D(y|x).

    Returns prompts (K·M, P), responses (K·M, H), log_p (K·M,). For tiny tasks only: this is
    the ground truth that every estimator is tested against."""
    xs, log_mu = task.prompt_support()
    P_all, Y_all, L_all = [], [], []
    for x, lm in zip(np.asarray(xs), np.asarray(log_mu), strict=True):
        ys, lp = task.enumerate(jnp.asarray(x))
        P_all.append(jnp.broadcast_to(jnp.asarray(x, jnp.int32), (ys.shape[0], task.P)))
        Y_all.append(ys)
        L_all.append(lp + lm)
    return jnp.concatenate(P_all), jnp.concatenate(Y_all), jnp.concatenate(L_all)
