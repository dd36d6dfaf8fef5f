"""Tabular learner: an order-k n-gram, optionally conditioned on the whole prompt and position.

    π̂(y_h | x, y_{<h}) = softmax(table[c(x), h or 0, y_{h-k} .. y_{h-1}])

c(x) is the mixed-radix code of the prompt (0 when not prompt-conditioned): position j of the
prompt has radix r_j, by default r_j = prompt_vocab (so prompt_vocab^P codes). Prompts whose
positions range over very different sets, like a Mixture's [class id, sub-prompt], need their
own radices to fit (`prompt_radices(task)` computes them), e.g. (3, 4096): 12288 codes instead
of 4096². Tokens before the response are BOS (= V), so each context slot takes V + 1 values.
It is misspecified whenever the truth remembers more than k tokens.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from covsim.checks import check_float, check_int, check_shape
from covsim.tasks.mixture import Mixture

Array = jax.Array

#: Largest number of prompt codes Π_j r_j (one table slice each).
MAX_PROMPTS = 1 << 20
#: Largest table, in float32 entries (64 MiB); Adam keeps three such copies.
MAX_ENTRIES = 1 << 24


class Tabular(nnx.Module):
    """Logits table (Kx, Kh, Kc, V): Kx = Π_j r_j or 1, Kh = H or 1, Kc = (V+1)^order.

    Call: prompts (n, P), responses (n, H) int32 -> (n, H, V) float32 log-probs.
    prompt_radices (P ints ≥ 1): the radix r_j of prompt position j (prompt tokens must lie in
    [0, r_j)); default prompt_vocab at every position.
    init="zeros" is uniform; init="random" draws logits ~ N(0, init_scale²).
    """

    def __init__(
        self,
        V: int,
        H: int,
        *,
        P: int = 0,
        prompt_vocab: int = 1,
        order: int = 1,
        prompt_conditioned: bool = True,
        positional: bool = False,
        prompt_radices: Sequence[int] | None = None,
        init: str = "zeros",
        init_scale: float = 0.1,
        rngs: nnx.Rngs,
    ):
        self.V = check_int("V", V, 1)
        self.H = check_int("H", H, 1)
        self.P = check_int("P", P, 0)
        self.prompt_vocab = check_int("prompt_vocab", prompt_vocab, 1)
        self.order = check_int("order", order, 0)
        for name, flag in (("prompt_conditioned", prompt_conditioned), ("positional", positional)):
            if not isinstance(flag, bool):
                raise TypeError(f"argument {name} must be True or False, got {flag!r}")
        self.prompt_conditioned, self.positional = prompt_conditioned, positional
        if init not in ("zeros", "random"):
            raise ValueError(f"argument init must be one of ['zeros', 'random'], got {init!r}")
        init_scale = check_float("init_scale", init_scale, 0.0)

        if prompt_radices is None:
            radices = (self.prompt_vocab,) * self.P
        else:
            if isinstance(prompt_radices, str | bytes) or not isinstance(prompt_radices, Sequence):
                raise TypeError(f"argument prompt_radices must be a sequence of {self.P} ints ≥ 1 "
                                f"(one per prompt position), got {prompt_radices!r}")
            radices = tuple(check_int(f"prompt_radices[{j}]", r, 1)
                            for j, r in enumerate(prompt_radices))
            if len(radices) != self.P:
                raise ValueError(f"argument prompt_radices must have P = {self.P} entries (one "
                                 f"per prompt position), got {len(radices)}")
        self.prompt_radices = radices
        Kx = math.prod(radices) if self.prompt_conditioned else 1
        if Kx > MAX_PROMPTS:
            text = " · ".join(map(str, radices))
            raise ValueError(
                f"the prompt code has {text} = {Kx} values, more than {MAX_PROMPTS}; give "
                f"prompt_radices (see prompt_radices(task)), use prompt_conditioned=False or "
                f"a smaller prompt space"
            )
        Kc = (self.V + 1) ** self.order
        shape = (Kx, self.H if self.positional else 1, Kc, self.V)
        if int(np.prod(shape)) > MAX_ENTRIES:
            raise ValueError(
                f"table of shape {shape} has {int(np.prod(shape))} entries, more than "
                f"{MAX_ENTRIES}; lower order, or drop positional / prompt conditioning"
            )
        if init == "zeros":
            table = jnp.zeros(shape, jnp.float32)
        else:
            table = init_scale * jax.random.normal(rngs.params(), shape, jnp.float32)
        self.table = nnx.Param(table)

    # ---- indexing -----------------------------------------------------------------------
    def contexts(self, prompts: Array, responses: Array) -> tuple[Array, Array, Array]:
        """Table indices: prompt code (n, 1), position (1, H), token context (n, H)."""
        check_shape("prompts", prompts, (None, self.P))
        check_shape("responses", responses, (prompts.shape[0], self.H))
        n, H, k = responses.shape[0], self.H, self.order
        if self.prompt_conditioned and self.P > 0:
            # place value of position j: Π_{i>j} r_i (the last position varies fastest)
            place = np.cumprod((1, *self.prompt_radices[:0:-1]))[::-1]
            ix = jnp.sum(prompts.astype(jnp.int32) * jnp.asarray(place, jnp.int32), axis=1)
        else:
            ix = jnp.zeros((n,), jnp.int32)
        ih = jnp.arange(H, dtype=jnp.int32) if self.positional else jnp.zeros((H,), jnp.int32)
        # padded[:, h + j] = y_{h-k+j}, with BOS = V before the response starts
        padded = jnp.concatenate(
            [jnp.full((n, k), self.V, jnp.int32), responses.astype(jnp.int32)], axis=1
        )
        ic = jnp.zeros((n, H), jnp.int32)
        for j in range(k):  # Horner over the k context slots, oldest first
            ic = ic * (self.V + 1) + padded[:, j : j + H]
        return ix[:, None], ih[None, :], ic

    def __call__(self, prompts: Array, responses: Array) -> Array:
        """(n, P), (n, H) int32 -> (n, H, V) float32: log π̂(· | x, y_{<h})."""
        ix, ih, ic = self.contexts(prompts, responses)
        return jax.nn.log_softmax(self.table[...][ix, ih, ic], axis=-1)

    # ---- closed form --------------------------------------------------------------------
    def fit_counts(self, prompts: Array, responses: Array, alpha: float = 0.0) -> Tabular:
        """Add-α smoothed MLE from counts: a new Tabular (same configuration) with

            π̂(v | ctx) = (count(ctx, v) + α) / (count(ctx) + α V),

        uniform for contexts never seen when α = 0 (α = 0 is the exact MLE; unseen tokens in
        a seen context get probability 0, log-prob -inf: such a table scores data but is no
        starting point for gradient training). `self` is left unchanged."""
        alpha = check_float("alpha", alpha, 0.0)
        prompts, responses = jnp.asarray(prompts), jnp.asarray(responses)
        fitted = nnx.clone(self)
        fitted.table[...] = smoothed_log_table(
            self.table[...].shape, *self.contexts(prompts, responses), responses, alpha
        )
        return fitted


def prompt_radices(task) -> tuple[int, ...]:
    """Per-position radices (P ints) that encode every prompt of `task` without waste of a
    factor prompt_vocab^(P-1): a Mixture's prompt [c, x_c (zero-padded)] gets (K, r_1, …,
    r_{P-1}), r_j the largest radix any component uses at its position j (1 where none has
    one; nested mixtures recurse); any other task (prompt_vocab,) * P."""
    if not isinstance(task, Mixture):
        return (int(task.prompt_vocab),) * int(task.P)
    width = task.P - 1
    out = [1] * width
    for t in task.components:
        for j, r in enumerate(prompt_radices(t)):
            out[j] = max(out[j], r)
    return (task.K, *out)


@partial(jax.jit, static_argnums=(0,))
def smoothed_log_table(
    shape: tuple[int, ...], ix: Array, ih: Array, ic: Array, y: Array, alpha: float
) -> Array:
    """log of add-α frequencies: a (Kx, Kh, Kc, V) table from indices ix (n, 1), ih (1, H),
    ic (n, H) and next tokens y (n, H); rows with no count and α = 0 are uniform."""
    V = shape[-1]
    ix, ih = jnp.broadcast_arrays(ix, ih, ic)[:2]
    counts = jnp.zeros(shape, jnp.float32).at[ix, ih, ic, y].add(1.0)
    total = jnp.sum(counts, axis=-1, keepdims=True) + alpha * V
    p = jnp.where(total > 0, (counts + alpha) / jnp.where(total > 0, total, 1.0), 1.0 / V)
    return jnp.log(p)
