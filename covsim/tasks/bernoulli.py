"""The missing-mass case study (§3): H i.i.d. Ber(p) tokens, no prompt.

`Bernoulli(p, H)` is the ground truth; `bernoulli_mle`, `bernoulli_kl` and `bernoulli_cov`
are the case study's analytics in closed form (float64, NumPy), so that metrics computed
from log-prob arrays can be tested against exact values, e.g. Prop. D.2:
π_D = Ber(p), π̂ = Ber(p/N), p ≤ ½  ⇒  Cov_N(π_D ‖ π̂) = p.
"""

from __future__ import annotations

import math
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from covsim.checks import check_float, check_int, is_concrete
from covsim.tasks.base import Array, Task, exact_cdf, open_uniform

#: Log-ratio ties within this many nats count as ≥ log N: Prop. D.2 sits exactly on the
#: boundary π_D/π̂ = N, which float64 rounding would otherwise decide at random.
TIE_ATOL = 1e-9


class Bernoulli(Task):
    """π_D(y) = Π_h p^{y_h} (1 − p)^{1 − y_h} over y ∈ {0, 1}^H (token 1 has probability p).

    Leaf: p (scalar float32). Static: H. V = 2, P = 0, prompt_vocab = 1 (the pad token)."""

    p: Array
    H: int = struct.field(pytree_node=False, default=1)
    V: ClassVar[int] = 2
    P: ClassVar[int] = 0
    prompt_vocab: ClassVar[int] = 1

    def __post_init__(self):
        # jax rebuilds pytrees through __init__ with tracers or placeholders: check only
        # values a user gave, and H (static) always.
        object.__setattr__(self, "H", check_int("H", self.H, 1))
        v = self.p
        if is_concrete(v):
            if isinstance(v, list | tuple | np.ndarray | jax.Array):
                if np.ndim(v) != 0:
                    raise ValueError(f"argument p must be a scalar, got shape {np.shape(v)}")
                v = np.asarray(v).item()
            p = check_float("p", v, 0.0, 1.0)
            object.__setattr__(self, "p", jnp.float32(p))

    def _log_row(self) -> Array:
        """(2,): [log(1 − p), log p]."""
        return jnp.stack([jnp.log1p(-self.p), jnp.log(self.p)])

    def sample(self, key: Array, n: int) -> tuple[Array, Array]:
        """((n, 0), (n, H)) int32: token 1 iff u > 1 − p for u ~ U(0, 1] (inverse CDF)."""
        u = open_uniform(key, (n, self.H))
        cdf = exact_cdf(jnp.exp(self._log_row()))
        y = jnp.sum(cdf < u[..., None], axis=-1, dtype=jnp.int32)
        return jnp.zeros((n, 0), jnp.int32), y

    def next_token_log_probs(self, prompts: Array, responses: Array) -> Array:
        """(n, H, 2): the same row [log(1 − p), log p] at every position."""
        self.check_batch(prompts, responses)
        return jnp.broadcast_to(self._log_row(), (*responses.shape, 2))

    def token_log_probs(self, prompts: Array, responses: Array) -> Array:
        """(n, H): log p where y_h = 1, log(1 − p) where y_h = 0."""
        self.check_batch(prompts, responses)
        lp = self._log_row()
        return jnp.where(responses == 1, lp[1], lp[0])


# ---- the case study's analytics (closed form) -------------------------------------------
def bernoulli_mle(responses: Array) -> Array:
    """The MLE p̂ = empirical frequency of token 1 over a dataset responses (..., n, H) -> (...)."""
    return jnp.mean(jnp.asarray(responses, jnp.float32), axis=(-2, -1))


def _probs(name: str, a) -> np.ndarray:
    a = np.asarray(a, np.float64)
    if np.any(~(a >= 0)) or np.any(a > 1):
        raise ValueError(f"argument {name} must have entries in [0, 1], got {a.min()}..{a.max()}")
    return a


def _log_ratios(p: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """log(p/q) and log((1−p)/(1−q)), +inf where the model has no mass, −inf where π_D has none."""
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.log(p) - np.log(q)
        b = np.log1p(-p) - np.log1p(-q)
    a = np.where(p == 0, -np.inf, a)  # −inf − (−inf) when p = q = 0
    b = np.where(p == 1, -np.inf, b)
    return a, b


def bernoulli_kl(p, q, H: int = 1) -> np.ndarray:
    """KL(Ber(p)^⊗H ‖ Ber(q)^⊗H) = H·[p log(p/q) + (1−p) log((1−p)/(1−q))], 0 log 0 = 0;
    +inf when q puts no mass where p does. Broadcasts over p and q (float64)."""
    H = check_int("H", H, 1)
    p, q = np.broadcast_arrays(_probs("p", p), _probs("q", q))
    a, b = _log_ratios(p, q)
    with np.errstate(invalid="ignore"):  # 0·(−inf) in the branches that np.where drops
        one = np.where(p > 0, p * a, 0.0) + np.where(p < 1, (1 - p) * b, 0.0)
    return H * one


def bernoulli_cov(p, q, N, H: int = 1) -> np.ndarray:
    """Cov_N(Ber(p)^⊗H ‖ Ber(q)^⊗H) = P_{y~π_D}[π_D(y)/π̂(y) ≥ N], exactly.

    The ratio depends on y only through k = Σ_h y_h ~ Binomial(H, p):
        Cov_N = Σ_k C(H, k) p^k (1−p)^{H−k} · 1{k log(p/q) + (H−k) log((1−p)/(1−q)) ≥ log N},
    ties within TIE_ATOL nats counting as ≥. Broadcasts over p, q and N (float64)."""
    H = check_int("H", H, 1)
    N = np.asarray(N, np.float64)
    if np.any(~(N >= 1)):
        raise ValueError(f"argument N must have entries ≥ 1, got min {N.min()}")
    p, q, N = np.broadcast_arrays(_probs("p", p), _probs("q", q), N)
    a, b = _log_ratios(p[..., None], q[..., None])
    k = np.arange(H + 1, dtype=np.float64)
    with np.errstate(invalid="ignore"):  # 0·(±inf) in the branches that np.where drops
        r = np.where(k > 0, k * a, 0.0) + np.where(k < H, (H - k) * b, 0.0)  # (..., H+1)
    comb = np.array([math.comb(H, int(j)) for j in k], np.float64)
    pmf = comb * p[..., None] ** k * (1 - p[..., None]) ** (H - k)
    return np.sum(np.where(r >= np.log(N)[..., None] - TIE_ATOL, pmf, 0.0), axis=-1)
