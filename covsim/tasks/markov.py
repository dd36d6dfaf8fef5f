"""Order-k Markov chains over V states: the basic ground truth with exact likelihoods.

The context of position h is the previous k tokens, with BOS (index V) before the start:

    c_h = Σ_{j=1..k} y_{h-j} (V+1)^{j-1},   C = (V+1)^k contexts,   c_0 = C − 1 (all BOS),
    c_{h+1} = y_h + (V+1)·(c_h mod (V+1)^{k-1}).

π_D(y_h | x, y_{<h}) = T_x[h, c_h, y_h] with one table T_x (Ht, C, V) per prompt x,
Ht = 1 (stationary) or H (position-dependent). A chain has no prompt (P = 0) when
n_prompts = 1, else a single prompt token x ~ Uniform[0, n_prompts) (P = 1).

Random tables are a pure function of (table_key, x, h, c): the V standard normals z of row
(h, c) of prompt x are one threefry-2x32 block of the counters (x, (h·C + c)·V + v), so a
row costs O(V) and one hash, in any order. Small chains store every table (log_T, and cdf_T
for sampling); large ones (thousands of prompts, the horizon experiment, docs/claims.md) regenerate
only the rows they visit inside traced code. Both paths evaluate the same function, so they
define the very same chain. Dirichlet rows (gamma draws: a rejection loop) are stored only.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax.extend.random import threefry_2x32
from jax.scipy.special import ndtri

from covsim.checks import check_float, check_int, check_probs, check_shape
from covsim.tasks.base import Array, Task, exact_cdf, open_uniform

#: Tables with at most this many entries K·Ht·C·V are stored; larger ones are regenerated.
STORE_MAX = 1 << 22
#: Largest context count C = (V+1)^k and stored table size (indices are int32).
MAX_CONTEXTS = (1 << 31) - 1
#: Regenerated rows are numbered by one uint32 counter (h·C + c)·V + v.
MAX_COUNTER = 1 << 32


def _plogp_entropy(lp: Array) -> Array:
    """Entropy of log-probabilities lp (..., V) with 0 log 0 = 0."""
    return -jnp.sum(jnp.where(lp > -jnp.inf, jnp.exp(lp) * lp, 0.0), axis=-1)


class MarkovChain(Task):
    """Order-k Markov chain; build with `random` or `from_tables`.

    Leaves: log_T, cdf_T (K, Ht, C, V) stored tables or None; for random chains table_key
    (uint32 (2,), the threefry key of the rows) and the family's parameters (concentration
    | temperature, eps, pivot (Ht,) bool). Static: V, H, order, n_prompts, Ht, family
    ("dirichlet", "gaussian" or "explicit").
    """

    log_T: Array | None
    cdf_T: Array | None
    table_key: Array | None
    concentration: Array | None
    temperature: Array | None
    eps: Array | None
    pivot: Array | None
    V: int = struct.field(pytree_node=False)
    H: int = struct.field(pytree_node=False)
    order: int = struct.field(pytree_node=False)
    n_prompts: int = struct.field(pytree_node=False)
    Ht: int = struct.field(pytree_node=False)
    family: str = struct.field(pytree_node=False)

    # ---- sizes ----------------------------------------------------------------------
    @property
    def P(self) -> int:
        return 0 if self.n_prompts == 1 else 1

    @property
    def prompt_vocab(self) -> int:
        return self.n_prompts

    @property
    def C(self) -> int:
        return (self.V + 1) ** self.order

    @property
    def stored(self) -> bool:
        return self.log_T is not None

    # ---- construction ---------------------------------------------------------------
    @classmethod
    def random(
        cls,
        key: Array,
        V: int,
        H: int,
        order: int = 1,
        concentration: float | None = None,
        temperature: float | None = None,
        pivotal=None,
        eps: float = 1e-3,
        stationary: bool | None = None,
        n_prompts: int = 1,
        store_max: int = STORE_MAX,
    ) -> MarkovChain:
        """A random chain, a pure function of `key` (vmap over keys for an ensemble).

        Rows are softmax(z / temperature), z ~ N(0, I_V) (default, temperature = 1), or
        Dirichlet(concentration·1_V) (stored tables only): small values give low entropy.
        pivotal: positions (iterable of ints in [0, H)) that keep those random rows; every
        other position is near-deterministic (mass 1 − eps on the token argmax z, uniform at
        random per context, eps/(V−1) on each other), so H and the effective randomness vary
        independently. pivotal implies position-dependent tables; stationary defaults to
        True otherwise. n_prompts > 1: one prompt token x ~ Uniform[0, n_prompts), each with
        its own table. Tables are stored when K·Ht·C·V ≤ store_max (K = n_prompts), else
        regenerated in traced code (temperature only)."""
        V = check_int("V", V, 2)
        H = check_int("H", H, 1)
        order = check_int("order", order, 1)
        if (V + 1) ** order > MAX_CONTEXTS:
            raise ValueError(
                f"argument order must keep (V+1)^order ≤ {MAX_CONTEXTS}, got (V+1)^{order}"
            )
        n_prompts = check_int("n_prompts", n_prompts, 1, MAX_CONTEXTS)
        store_max = check_int("store_max", store_max, 0)
        if concentration is not None and temperature is not None:
            raise ValueError("arguments concentration and temperature are exclusive; give one")
        if concentration is None:
            t = 1.0 if temperature is None else temperature
            family, conc = "gaussian", None
            temp = jnp.float32(check_float("temperature", t, 0.0, low_open=True))
        else:
            family, temp = "dirichlet", None
            conc = jnp.float32(check_float("concentration", concentration, 0.0, low_open=True))
        if pivotal is None:
            pivot = None
            if stationary is None:
                stationary = True
            Ht = 1 if stationary else H
        else:
            if stationary:
                raise ValueError("argument stationary must be False or None when pivotal is given")
            pos = [check_int(f"pivotal[{i}]", h, 0, H - 1) for i, h in enumerate(pivotal)]
            Ht = H
            pivot = jnp.zeros(H, bool).at[jnp.asarray(pos, jnp.int32)].set(True)
        eps_ = jnp.float32(check_float("eps", eps, 0.0, 1.0, high_open=True))
        C = (V + 1) ** order
        size = n_prompts * Ht * C * V
        if size > store_max and family == "dirichlet":
            raise ValueError(
                f"argument concentration needs stored tables (n_prompts·Ht·C·V = {size} ≤ "
                f"store_max = {store_max}); give temperature for regenerated tables"
            )
        if Ht * C * V > MAX_COUNTER:
            raise ValueError(f"arguments H, V, order must keep Ht·(V+1)^order·V ≤ {MAX_COUNTER}")
        k_rows, k_dir = jax.random.split(key)
        chain = cls(
            log_T=None, cdf_T=None, table_key=jax.random.bits(k_rows, (2,), jnp.uint32),
            concentration=conc, temperature=temp, eps=eps_ if pivot is not None else None,
            pivot=pivot, V=V, H=H, order=order, n_prompts=n_prompts, Ht=Ht, family=family,
        )
        if size > store_max:
            return chain
        if family == "dirichlet":
            g = jax.random.loggamma(k_dir, conc, (n_prompts, Ht, C, V))
            log_T = _dirichlet_tables(chain, g - jax.nn.logsumexp(g, axis=-1, keepdims=True))
        else:  # the tables do not depend on H beyond Ht: one compilation serves every H
            log_T = _all_tables(chain.replace(H=Ht))
        return chain.replace(log_T=log_T, cdf_T=exact_cdf(jnp.exp(log_T)))

    @classmethod
    def from_tables(cls, T, H: int, order: int = 1) -> MarkovChain:
        """A chain with explicit transition probabilities T: (C, V) stationary, (Ht, C, V)
        with Ht ∈ {1, H}, or (K, Ht, C, V) with one table per prompt (n_prompts = K).
        C must equal (V+1)^order; row c is the context index defined in the module doc."""
        H = check_int("H", H, 1)
        order = check_int("order", order, 1)
        T = np.asarray(T, np.float64)
        if T.ndim not in (2, 3, 4):
            raise ValueError(f"argument T must have shape (C, V), (Ht, C, V) or (K, Ht, C, V), "
                             f"got {T.shape}")
        T = T.reshape((1,) * (4 - T.ndim) + T.shape)
        K, Ht, C, V = T.shape
        check_int("T.shape[-1] (V)", V, 2)
        check_int("T.shape[0] (K, number of prompts)", K, 1)
        if C != (V + 1) ** order:
            raise ValueError(f"argument T must have T.shape[-2] (C) = (V+1)^order = "
                             f"{(V + 1) ** order} for V={V}, order={order}, got {C}")
        if Ht not in (1, H):
            raise ValueError(f"argument T must have T.shape[-3] (Ht) in {{1, H={H}}}, got {Ht}")
        check_probs("T", T, axis=-1)
        if T.size > MAX_CONTEXTS:  # flat int32 gathers
            raise ValueError(f"argument T must have at most {MAX_CONTEXTS} entries, got {T.size}")
        with np.errstate(divide="ignore"):
            log_T = jnp.asarray(np.log(T / T.sum(-1, keepdims=True)), jnp.float32)
        return cls(
            log_T=log_T, cdf_T=exact_cdf(jnp.exp(log_T)), table_key=None, concentration=None,
            temperature=None, eps=None, pivot=None,
            V=V, H=H, order=order, n_prompts=K, Ht=Ht, family="explicit",
        )

    # ---- tables ---------------------------------------------------------------------
    def _z(self, x: Array, h: Array, c: Array) -> Array:
        """(V,) standard normals of row (h, c) of prompt x: one threefry block of the
        counters (x, (h·C + c)·V + v); inverse normal CDF of 23-bit uniforms in (0, 1)."""
        h, c = jnp.asarray(h, jnp.uint32), jnp.asarray(c, jnp.uint32)
        j = (h * self.C + c) * self.V + jnp.arange(self.V, dtype=jnp.uint32)
        xs = jnp.broadcast_to(jnp.asarray(x, jnp.uint32), (self.V,))
        w = threefry_2x32(self.table_key, jnp.concatenate([xs, j]))[: self.V]
        return ndtri(((w >> 9).astype(jnp.float32) + 0.5) * 2.0**-23)

    def _near_deterministic(self, z: Array) -> Array:
        """(V,): log-probs with mass 1 − eps on argmax z (uniform by symmetry), eps/(V−1) else."""
        off = jnp.log(self.eps / (self.V - 1))
        return jnp.where(jnp.arange(self.V) == jnp.argmax(z), jnp.log1p(-self.eps), off)

    def _row(self, x: Array, h: Array, c: Array) -> Array:
        """log π(· | x, context c) at table position h, (V,), of a Gaussian-family chain."""
        z = self._z(x, h, c)
        lp = jax.nn.log_softmax(z / self.temperature)
        if self.pivot is None:
            return lp
        return jnp.where(self.pivot[h], lp, self._near_deterministic(z))

    def _rows(self, row, x: Array, h: Array, c: Array) -> Array:
        """row(x, h, c) on broadcast index arrays (...) -> (..., V); one flat vmap (nested
        vmaps of the threefry block compile about twice as slowly)."""
        x, h, c = jnp.broadcast_arrays(x, h, c)
        out = jax.vmap(row)(x.ravel(), h.ravel(), c.ravel())
        return out.reshape(*x.shape, self.V)

    def _grid(self, row, x: Array) -> Array:
        """row(x, h, c) over prompts x (n,) and every (h, c): (n, Ht, C, V)."""
        h = jnp.arange(self.Ht, dtype=jnp.int32)
        c = jnp.arange(self.C, dtype=jnp.int32)
        return self._rows(row, x[:, None, None], h[None, :, None], c[None, None, :])

    def _prompt_index(self, prompts: Array) -> Array:
        n = prompts.shape[0]
        return prompts[:, 0].astype(jnp.int32) if self.P else jnp.zeros((n,), jnp.int32)

    def tables(self, prompts: Array) -> Array:
        """(n, Ht, C, V): log T_x for each prompt row (n, P). Regenerated tables cost n·Ht·C·V."""
        prompts = jnp.asarray(prompts, jnp.int32)
        check_shape("prompts", prompts, (None, self.P))
        x = self._prompt_index(prompts)
        return self.log_T[x] if self.stored else self._grid(self._row, x)

    def contexts(self, responses: Array) -> Array:
        """(n, H) int32: the context index c_h of every position."""
        n, k, B = responses.shape[0], self.order, self.V + 1
        pad = jnp.concatenate(
            [jnp.full((n, k), self.V, jnp.int32), responses.astype(jnp.int32)], axis=1
        )
        return sum(pad[:, k - j : k - j + self.H] * B ** (j - 1) for j in range(1, k + 1))

    def _next_context(self, c: Array, y: Array) -> Array:
        return y + (self.V + 1) * (c % (self.C // (self.V + 1)))

    def _positions(self) -> Array:
        """(H,) table position of each response position: h, or 0 when stationary."""
        return jnp.arange(self.H, dtype=jnp.int32) * (self.Ht > 1)

    # ---- Task API -------------------------------------------------------------------
    def sample(self, key: Array, n: int) -> tuple[Array, Array]:
        """n i.i.d. (x, y): ((n, P), (n, H)) int32; a scan over positions, inverse CDF on
        the n uniforms of step h, drawn from fold_in(key, h) inside the step (2× faster
        than one (H, n) array at n·H = 2.6e7: the draws stay in cache)."""
        kx, ku = jax.random.split(key)
        x = jax.random.randint(kx, (n,), 0, self.n_prompts, jnp.int32)
        if self.stored:
            def cdf_rows(h, c):
                tab = self.cdf_T[:, h]  # (K, C, V)
                return tab[0][c] if self.n_prompts == 1 else tab[x, c]
        else:
            def cdf_rows(h, c):
                return exact_cdf(jnp.exp(jax.vmap(self._row, (0, None, 0))(x, h, c)))

        def step(c, ih):
            i, h = ih
            u = open_uniform(jax.random.fold_in(ku, i), (n,))
            y = jnp.sum(cdf_rows(h, c) < u[:, None], axis=-1, dtype=jnp.int32)
            return self._next_context(c, y), y

        c0 = jnp.full((n,), self.C - 1, jnp.int32)
        _, ys = jax.lax.scan(step, c0, (jnp.arange(self.H), self._positions()))
        prompts = x[:, None] if self.P else jnp.zeros((n, 0), jnp.int32)
        return prompts, ys.T

    def next_token_log_probs(self, prompts: Array, responses: Array) -> Array:
        """(n, H, V): log T_x[h, c_h, ·], vectorised (contexts come from the responses)."""
        self.check_batch(prompts, responses)
        x, h, c = self._prompt_index(prompts), self._positions(), self.contexts(responses)
        if self.stored:
            return self.log_T[x[:, None], h[None, :], c]
        return self._rows(self._row, x[:, None], h[None, :], c)

    def token_log_probs(self, prompts: Array, responses: Array) -> Array:
        """(n, H): log π_D(y_h | x, y_{<h}); stored tables gather one entry per token."""
        if not self.stored:
            return super().token_log_probs(prompts, responses)
        self.check_batch(prompts, responses)
        x, h, c = self._prompt_index(prompts), self._positions(), self.contexts(responses)
        # one flat gather: ~2× faster than four index arrays into (K, Ht, C, V)
        i = ((x[:, None] * self.Ht + h[None, :]) * self.C + c) * self.V + responses
        return self.log_T.reshape(-1)[i.astype(jnp.int32)]

    def prompt_support(self) -> tuple[Array, Array]:
        """All n_prompts prompts (K, P) with uniform log-weights (K,)."""
        if self.P == 0:
            return super().prompt_support()
        K = self.n_prompts
        return jnp.arange(K, dtype=jnp.int32)[:, None], jnp.full((K,), -math.log(K))

    # ---- entropy --------------------------------------------------------------------
    def position_entropy(self, prompts: Array) -> Array:
        """(n, H): exact H(y_h | x, y_{<h}) for each prompt row, by a forward recursion over
        the law of the context, O(H·C·V) per prompt after its table."""
        nxt = self._next_context(
            jnp.arange(self.C, dtype=jnp.int32)[:, None], jnp.arange(self.V, dtype=jnp.int32)
        )  # (C, V)

        def one(lp):  # lp (Ht, C, V)
            ent = _plogp_entropy(lp)  # (Ht, C)

            def step(p, h):
                m = p[:, None] * jnp.exp(lp[h])
                return jnp.zeros_like(p).at[nxt].add(m), p @ ent[h]

            p0 = jnp.zeros(self.C).at[self.C - 1].set(1.0)
            return jax.lax.scan(step, p0, self._positions())[1]

        return jax.vmap(one)(self.tables(prompts))

    def entropy(self) -> Array:
        """(H,): H(y_h | x, y_{<h}) averaged over the prompt distribution (sum: the sequence
        entropy, so that KL = CE − Σ_h entropy). Costs n_prompts·Ht·C·V."""
        xs, log_mu = self.prompt_support()
        per = jax.lax.map(lambda x: self.position_entropy(x[None])[0], xs, batch_size=256)
        return jnp.exp(log_mu) @ per


@jax.jit
def _all_tables(chain: MarkovChain) -> Array:
    """(K, Ht, C, V): every prompt's table, compiled once per chain shape."""
    return chain.tables(chain.prompt_support()[0])


@jax.jit
def _dirichlet_tables(chain: MarkovChain, log_dir: Array) -> Array:
    """Dirichlet rows log_dir (K, Ht, C, V) at pivotal positions, near-deterministic elsewhere."""
    if chain.pivot is None:
        return log_dir
    x = jnp.arange(chain.n_prompts, dtype=jnp.int32)
    det = chain._grid(lambda x, h, c: chain._near_deterministic(chain._z(x, h, c)), x)
    return jnp.where(chain.pivot[None, :, None, None], log_dir, det)
