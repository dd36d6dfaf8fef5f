"""Prompt-identified mixtures of tasks (the classes of App. C; the horizon experiment of
docs/claims.md).

    µ(c, x_c) = w_c µ_c(x_c),   π_D(y | c, x_c) = π_c(y | x_c).

The prompt is [c, x_c padded with zeros to max_c P_c], so P = 1 + max_c P_c and
prompt_vocab = max(K, max_c prompt_vocab_c). Every component must share V and H.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from covsim.checks import check_probs, is_concrete
from covsim.tasks.base import Array, Task, exact_cdf, open_uniform


def checked_weights(w, K: int):
    """Mixture weights validated as a probability vector of shape (K,), as float32; a value
    jax passes while rebuilding the pytree (tracer, placeholder, scalar of a prefix tree) is
    returned unchanged."""
    if not (is_concrete(w) and np.ndim(w) >= 1):
        return w
    w = check_probs("weights", w, atol=1e-6)
    if w.shape != (K,):
        raise ValueError(f"argument weights must have shape ({K},) (one per component), "
                         f"got {w.shape}")
    return jnp.asarray(w, jnp.float32)

def checked_components(comps, kind: type, same: tuple[str, ...]) -> tuple:
    """Mixture components validated as a non-empty sequence of `kind` instances that agree on
    the attributes `same` (the format they share); returned as a tuple."""
    if not isinstance(comps, list | tuple) or len(comps) == 0:
        raise ValueError(f"argument components must be a non-empty sequence of "
                         f"{kind.__name__}, got {comps!r}")
    comps = tuple(comps)
    for i, c in enumerate(comps):
        if not isinstance(c, kind):
            raise TypeError(f"argument components[{i}] must be a {kind.__name__}, got "
                            f"{type(c).__name__}")
        differ = [f for f in same if getattr(c, f) != getattr(comps[0], f)]
        if differ:
            want = ", ".join(f"{f}={getattr(comps[0], f)!r}" for f in same)
            got = ", ".join(f"{f}={getattr(c, f)!r}" for f in same)
            raise ValueError(f"argument components[{i}] must have {want} like components[0], "
                             f"got {got}")
    return comps


class Mixture(Task):
    """Mixture(components, weights): component c is drawn with probability weights[c].

    Leaves: components (tuple of tasks), weights (K,) float32."""

    components: tuple
    weights: Array

    def __post_init__(self):
        # jax rebuilds pytrees through __init__ with tracers or placeholders: check only
        # values a user gave. Components keep their static sizes through any rebuild.
        comps = checked_components(self.components, Task, ("V", "H"))
        object.__setattr__(self, "components", comps)
        object.__setattr__(self, "weights", checked_weights(self.weights, len(comps)))

    # ---- sizes ----------------------------------------------------------------------
    @property
    def K(self) -> int:
        return len(self.components)

    @property
    def V(self) -> int:
        return self.components[0].V

    @property
    def H(self) -> int:
        return self.components[0].H

    @property
    def P(self) -> int:
        return 1 + max(t.P for t in self.components)

    @property
    def prompt_vocab(self) -> int:
        return max(self.K, *(t.prompt_vocab for t in self.components))

    # ---- helpers --------------------------------------------------------------------
    def _pad(self, x: Array) -> Array:
        """Component prompts (n, P_c) -> (n, P − 1), zero-padded."""
        return jnp.pad(x.astype(jnp.int32), ((0, 0), (0, self.P - 1 - x.shape[1])))

    def _split(self, prompts: Array) -> tuple[Array, list[Array]]:
        """Component ids (n,) and each component's prompt slice (n, P_c)."""
        prompts = prompts.astype(jnp.int32)
        return prompts[:, 0], [prompts[:, 1 : 1 + t.P] for t in self.components]

    @staticmethod
    def _select(cid: Array, values: list[Array]) -> Array:
        """Row i of values[cid[i]]; rows with an id outside [0, K) are NaN (or −1 for ints)."""
        v0 = values[0]
        fill = jnp.nan if jnp.issubdtype(v0.dtype, jnp.floating) else -1
        out = jnp.full(v0.shape, fill, v0.dtype)
        for c, v in enumerate(values):
            out = jnp.where((cid == c).reshape((-1,) + (1,) * (v.ndim - 1)), v, out)
        return out

    # ---- Task API -------------------------------------------------------------------
    def sample(self, key: Array, n: int) -> tuple[Array, Array]:
        """((n, P), (n, H)) int32: the component by inverse CDF on the weights; every
        component samples n rows (K is small) and each row keeps its component's."""
        k_id, *ks = jax.random.split(key, self.K + 1)
        cid = jnp.sum(exact_cdf(self.weights) < open_uniform(k_id, (n,))[:, None], axis=-1,
                      dtype=jnp.int32)
        draws = [t.sample(k, n) for t, k in zip(self.components, ks, strict=True)]
        x = self._select(cid, [self._pad(d[0]) for d in draws])
        y = self._select(cid, [d[1] for d in draws])
        return jnp.concatenate([cid[:, None], x], axis=1), y

    def next_token_log_probs(self, prompts: Array, responses: Array) -> Array:
        """(n, H, V): each component's teacher on its rows."""
        self.check_batch(prompts, responses)
        cid, xs = self._split(prompts)
        return self._select(cid, [t.next_token_log_probs(x, responses)
                                  for t, x in zip(self.components, xs, strict=True)])

    def token_log_probs(self, prompts: Array, responses: Array) -> Array:
        """(n, H): each component's (possibly cheaper) token scores on its rows."""
        self.check_batch(prompts, responses)
        cid, xs = self._split(prompts)
        return self._select(cid, [t.token_log_probs(x, responses)
                                  for t, x in zip(self.components, xs, strict=True)])

    def prompt_support(self) -> tuple[Array, Array]:
        """∪_c {[c, x_c]} with log w_c + log µ_c(x_c), when every component is enumerable."""
        xs, lws = [], []
        log_w = jnp.log(self.weights)
        for c, t in enumerate(self.components):
            x, lw = t.prompt_support()
            xs.append(jnp.concatenate([jnp.full((x.shape[0], 1), c, jnp.int32), self._pad(x)], 1))
            lws.append(lw + log_w[c])
        return jnp.concatenate(xs), jnp.concatenate(lws)

    def reward(self, prompts: Array, responses: Array) -> Array:
        """(n,): each component's verifier on its rows; NaN on rows of components without one
        (raises NotImplementedError when no component has a verifier)."""
        self.check_batch(prompts, responses)
        cid, xs = self._split(prompts)
        rs, found = [], False
        for t, x in zip(self.components, xs, strict=True):
            try:
                rs.append(t.reward(x, responses).astype(jnp.float32))
                found = True
            except NotImplementedError:
                rs.append(jnp.full((prompts.shape[0],), jnp.nan))
        if not found:
            raise NotImplementedError("no component of this Mixture has a verifier")
        return self._select(cid, rs)
