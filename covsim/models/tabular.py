"""Tabular learner: an order-k n-gram, optionally conditioned on the whole prompt and position.

    π̂(y_h | x, y_{<h}) = softmax(table[c(x), h or 0, y_{h-k} .. y_{h-1}])

c(x) is a code of the prompt (0 when not prompt-conditioned), one table slice per code:

* mixed radix (default): position j of the prompt has radix r_j, by default prompt_vocab
  (prompt_vocab^P codes); `prompt_radices` sets the r_j (`prompt_radices(task)`: e.g. (3, 4096)
  for a Mixture's [class id, sub-prompt], 12288 codes instead of 4096²);
* class code: the prompt is [c, x_c] with x_c mixed-radix over its class's own radices
  (`class_radices`, `class_radices(task)` for a Mixture), c(x) = offset_c + code_c(x_c):
  Σ_c Π_j r_cj codes, e.g. 1 + 4096 + 1 for one many-prompt class among single-prompt ones.

Tokens before the response are BOS (= V), so each context slot takes V + 1 values.
It is misspecified whenever the truth remembers more than k tokens. `prompt_positions` makes
it read only some prompt positions: blind to the others (Fig. 1's class that the learner
cannot read, `covsim.tasks.rules`).
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
from covsim.tasks.base import gathered_log_softmax
from covsim.tasks.mixture import Mixture

Array = jax.Array

#: Largest number of prompt codes Π_j r_j (one table slice each).
MAX_PROMPTS = 1 << 20
#: Largest table, in float32 entries (64 MiB); Adam keeps three such copies.
MAX_ENTRIES = 1 << 24


class Tabular(nnx.Module):
    """Logits table (Kx, Kh, Kc, V): Kx = Π_j r_j or 1, Kh = H or 1, Kc = (V+1)^order; the
    parameter `table` holds it flat (Kx·Kh·Kc·V,), `logits` is the 4-D view, `table_shape`
    its shape.

    Call: prompts (n, P), responses (n, H) int32 -> (n, H, V) float32 log-probs.
    prompt_radices (P ints ≥ 1): the radix r_j of prompt position j (prompt tokens must lie in
    [0, r_j)); default prompt_vocab at every position.
    class_radices (K tuples of ints ≥ 1, each of length ≤ P − 1; exclusive with prompt_radices):
    the class code for prompts [c, x_c, zero padding], c ∈ [0, K), x_c's position j in [0, r_cj).
    prompt_positions (ints in [0, P), distinct; exclusive with class_radices): the prompt
    positions the table reads, default all; prompt_radices then has one entry per position read.
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
        class_radices: Sequence[Sequence[int]] | None = None,
        prompt_positions: Sequence[int] | None = None,
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

        if prompt_radices is not None and class_radices is not None:
            raise ValueError("arguments prompt_radices and class_radices are exclusive; give one")
        if prompt_positions is not None and class_radices is not None:
            raise ValueError("arguments prompt_positions and class_radices are exclusive; give one")
        self.prompt_positions = None
        if prompt_positions is not None:
            if isinstance(prompt_positions, str | bytes) or not isinstance(prompt_positions,
                                                                           Sequence):
                raise TypeError(f"argument prompt_positions must be a sequence of ints, got "
                                f"{prompt_positions!r}")
            pos = tuple(check_int(f"prompt_positions[{j}]", q, 0, self.P - 1)
                        for j, q in enumerate(prompt_positions))
            if len(set(pos)) != len(pos):
                raise ValueError(f"argument prompt_positions must be distinct, got {list(pos)}")
            self.prompt_positions = pos
        read = self.P if self.prompt_positions is None else len(self.prompt_positions)
        self.class_radices = None
        if class_radices is None:
            radices = (self.prompt_vocab,) * read
            if prompt_radices is not None:
                radices = _int_tuple("prompt_radices", prompt_radices)
                if len(radices) != read:
                    what = (f"P = {self.P} entries (one per prompt position)"
                            if self.prompt_positions is None else
                            f"{read} entries (one per position in prompt_positions)")
                    raise ValueError(f"argument prompt_radices must have {what}, "
                                     f"got {len(radices)}")
            self.prompt_radices = radices
            n_codes = math.prod(radices)
        else:
            if self.P == 0:
                raise ValueError("argument class_radices needs a class id: P ≥ 1, got P = 0")
            if isinstance(class_radices, str | bytes) or not isinstance(class_radices, Sequence):
                raise TypeError(f"argument class_radices must be a sequence of tuples of ints, "
                                f"got {class_radices!r}")
            self.class_radices = tuple(
                _int_tuple(f"class_radices[{c}]", r) for c, r in enumerate(class_radices)
            )
            if not self.class_radices:
                raise ValueError("argument class_radices must name at least one class")
            for c, r in enumerate(self.class_radices):
                if len(r) > self.P - 1:
                    raise ValueError(f"argument class_radices[{c}] must have at most P − 1 = "
                                     f"{self.P - 1} entries, got {len(r)}")
            self.prompt_radices = None
            n_codes = sum(math.prod(r) for r in self.class_radices)
        Kx = n_codes if self.prompt_conditioned else 1
        if Kx > MAX_PROMPTS:
            if class_radices is not None:
                text = "Σ_c Π class_radices[c]"
            elif prompt_radices is None:
                text = f"prompt_vocab^P = {self.prompt_vocab}^{self.P}"
            else:
                text = "Π prompt_radices = " + " · ".join(map(str, radices))
            raise ValueError(
                f"{text} = {Kx} prompt codes exceeds {MAX_PROMPTS}; give prompt_radices (see "
                f"prompt_radices(task)), use prompt_conditioned=False or a smaller prompt space"
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
        self.table_shape = shape
        # Stored flat: XLA's CPU loops run Adam's dense update over a (..., 9, 8) array about
        # 3x slower than over the same floats as one vector (0.54 s against 0.18 s for 1000
        # steps of the horizon table's 295k logits; a (rows, 16) matrix is as slow as the 4-D
        # array), and the dense update is most of a training step. The numbers agree up to
        # float32 rounding (a different program: XLA may order some sums differently).
        self.table = nnx.Param(table.reshape(-1))

    @property
    def logits(self) -> Array:
        """The table as (Kx, Kh, Kc, V) logits (a view of the flat parameter)."""
        return self.table[...].reshape(self.table_shape)

    # ---- indexing -----------------------------------------------------------------------
    def contexts(self, prompts: Array, responses: Array) -> tuple[Array, Array, Array]:
        """Table indices: prompt code (n, 1), position (1, H), token context (n, H)."""
        check_shape("prompts", prompts, (None, self.P))
        check_shape("responses", responses, (prompts.shape[0], self.H))
        n, H, k = responses.shape[0], self.H, self.order
        x = prompts.astype(jnp.int32)
        if self.prompt_conditioned and self.class_radices is not None:
            offset, place = _class_code(self.class_radices, self.P - 1)
            c = x[:, 0]
            ix = jnp.asarray(offset)[c] + jnp.sum(x[:, 1:] * jnp.asarray(place)[c], axis=1)
        elif self.prompt_conditioned and self.P > 0:
            if self.prompt_positions is not None:  # blind to the other positions
                x = x[:, jnp.asarray(self.prompt_positions, jnp.int32)]
            ix = jnp.sum(x * jnp.asarray(_place_values(self.prompt_radices)), axis=1)
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

    def rows(self, prompts: Array, responses: Array) -> Array:
        """(n, H) int32: the row of each context in the table as (Kx·Kh·Kc, V) logit rows."""
        ix, ih, ic = self.contexts(prompts, responses)
        _, Kh, Kc, _ = self.table_shape
        return (ix * Kh + ih) * Kc + ic

    def _context_logits(self, prompts: Array, responses: Array) -> Array:
        """(n, H, V): the logit row of every position's context."""
        logit_rows = self.table[...].reshape(-1, self.V)  # a view: no copy
        return logit_rows[self.rows(prompts, responses)]

    def __call__(self, prompts: Array, responses: Array) -> Array:
        """(n, P), (n, H) int32 -> (n, H, V) float32: log π̂(· | x, y_{<h})."""
        return jax.nn.log_softmax(self._context_logits(prompts, responses), axis=-1)

    def token_log_probs(self, prompts: Array, responses: Array) -> Array:
        """(n, P), (n, H) int32 -> (n, H): log π̂(y_h | x, y_{<h}), `__call__`'s entries at the
        responses' tokens (bit for bit) without its (n, H, V) log-softmax."""
        return gathered_log_softmax(self._context_logits(prompts, responses), responses)

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
            self.table_shape, *self.contexts(prompts, responses), responses, alpha
        ).reshape(-1)
        return fitted


def _int_tuple(name: str, values) -> tuple[int, ...]:
    if isinstance(values, str | bytes) or not isinstance(values, Sequence):
        raise TypeError(f"argument {name} must be a sequence of ints ≥ 1, got {values!r}")
    return tuple(check_int(f"{name}[{j}]", r, 1) for j, r in enumerate(values))


def _place_values(radices: Sequence[int]) -> np.ndarray:
    """Place value Π_{i>j} r_i of each position j (the last position varies fastest), int32."""
    if not radices:
        return np.zeros(0, np.int32)
    return np.cumprod((1, *radices[:0:-1]))[::-1].astype(np.int32)


def _class_code(class_radices, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Offsets (K,) = Σ_{c'<c} Π r_c' and place values (K, width) (0 on padding), int32."""
    sizes = [math.prod(r) for r in class_radices]
    offset = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int32)
    place = np.zeros((len(class_radices), width), np.int32)
    for c, r in enumerate(class_radices):
        place[c, : len(r)] = _place_values(r)
    return offset, place


def class_radices(task) -> tuple[tuple[int, ...], ...]:
    """The class code of a Mixture: each component's own prompt radices (`prompt_radices`),
    so the learner has Σ_c Π_j r_cj prompt codes."""
    if not isinstance(task, Mixture):
        raise TypeError(f"argument task must be a Mixture, got {type(task).__name__}")
    return tuple(prompt_radices(t) for t in task.components)


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
