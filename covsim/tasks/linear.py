"""Autoregressive linear models π_θ (§2, Assumption 2.2) as exact ground truths.

    π_θ(y_h | x, y_{<h}) ∝ exp⟨θ, ϕ(x, y_{1:h})⟩        (softmax over the candidate token y_h)

The feature map is a lookup table, so scores are exact and the paper's constructions fit:

    ϕ(x, y_{1:h}) = F[x, h·(Hf>1), prev·(Cf>1), y_h],   F: (X, Hf, Cf, V, d)

with Hf ∈ {1, H} (position dependence), Cf ∈ {1, V+1} (dependence on the previous token
prev = y_{h-1}, index V = BOS at h = 0). The prompt is one token x ∈ [0, X) drawn from µ.

Because ϕ depends on the prefix only through (x, h, y_{h-1}), the inherent variance σ⋆²
(Eq. 8) is exact by a forward recursion over the law of the previous token, O(X·H·V²)
after an O(X·Hf·Cf·V·d) table, without enumerating V^H responses.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from covsim.checks import check_float, check_int, check_Ns, check_probs, check_shape
from covsim.tasks.base import Array, Task, gather_tokens, inverse_cdf

#: Relative slack when checking max ‖ϕ‖ ≤ B (float32 normalisation rounds up by ~1e-7).
FEATURE_RTOL = 1e-5
#: Slack when checking θ⋆ ∈ Θ = {‖θ‖ ≤ R}.
THETA_ATOL = 1e-6

_BALLS = ("l2", "linf")


def prop_3_2_kl_lower_bound(n: int, H: int) -> float:
    """H/(4n): Prop. 3.2's printed bound (any proper estimator has D_KL ≥ H/(4n) w.p. ≥ ¼).

    An erratum: its proof (App. G) needs kl(Ber(e/(e+e⁻¹)) ‖ Ber(½)) ≥ ½, which is 0.328, so
    the argument gives D_KL ≥ c·H/n w.p. ≥ ¼ with c = 0.164; on the proof's instance
    (`AutoregressiveLinear.prop_3_2`) the estimate θ̂ = 0 has D_KL ≤ 0.164·H/n < H/(4n) for
    every θ⋆ ∈ Θ (the claim "prop_3_2" tests the corrected statement)."""
    n = check_int("n", n, 1)
    H = check_int("H", H, 1)
    return H / (4 * n)


def _ball_norm(theta: np.ndarray, ball: str) -> float:
    return float(np.max(np.abs(theta))) if ball == "linf" else float(np.linalg.norm(theta))


class AutoregressiveLinear(Task):
    """π_{θ⋆} for a lookup-table feature map; build with `create` or a named constructor.

    Leaves: F (X, Hf, Cf, V, d), theta = θ⋆ (d,), log_mu (X,). Static: V, H, d, X,
    B (max ‖ϕ‖), R and ball (Θ = {θ : ‖θ‖ ≤ R} in the "l2" or "linf" norm).
    Every `*_theta(theta, ...)` method evaluates π_θ at any θ, for learners that share ϕ.
    """

    F: Array
    theta: Array
    log_mu: Array
    V: int = struct.field(pytree_node=False)
    H: int = struct.field(pytree_node=False)
    d: int = struct.field(pytree_node=False)
    X: int = struct.field(pytree_node=False)
    B: float = struct.field(pytree_node=False)
    R: float = struct.field(pytree_node=False)
    ball: str = struct.field(pytree_node=False)

    @property
    def P(self) -> int:
        return 1

    @property
    def prompt_vocab(self) -> int:
        return self.X

    # ---- construction ---------------------------------------------------------------
    @classmethod
    def create(
        cls,
        F,
        theta,
        H: int,
        mu=None,
        B: float | None = None,
        R: float = 1.0,
        ball: str = "l2",
    ) -> AutoregressiveLinear:
        """Validated constructor. F (X, Hf, Cf, V, d) with Hf ∈ {1, H}, Cf ∈ {1, V+1};
        theta = θ⋆ (d,) with ‖θ⋆‖ ≤ R; mu (X,) probabilities (default uniform);
        B defaults to max ‖ϕ‖ and otherwise must bound it (relative slack FEATURE_RTOL)."""
        H = check_int("H", H, 1)
        F = np.asarray(F, np.float32)
        if F.ndim != 5:
            raise ValueError(f"argument F must have shape (X, Hf, Cf, V, d), got {F.shape}")
        X, Hf, Cf, V, d = F.shape
        check_int("F.shape[0] (X)", X, 1)
        check_int("F.shape[3] (V)", V, 2)
        check_int("F.shape[4] (d)", d, 1)
        if Hf not in (1, H):
            raise ValueError(f"argument F must have F.shape[1] (Hf) in {{1, H={H}}}, got {Hf}")
        if Cf not in (1, V + 1):
            raise ValueError(
                f"argument F must have F.shape[2] (Cf) in {{1, V+1={V + 1}}}, got {Cf}"
            )
        if not np.all(np.isfinite(F)):
            raise ValueError("argument F must be finite")
        theta = np.asarray(theta, np.float32)
        check_shape("theta", theta, (d,))
        if ball not in _BALLS:
            raise ValueError(f"argument ball must be one of {_BALLS}, got {ball!r}")
        R = check_float("R", R, 0.0, low_open=True)
        norm = _ball_norm(theta, ball)
        if not norm <= R + THETA_ATOL * max(1.0, R):
            raise ValueError(f"argument theta must satisfy ‖theta‖_{ball} ≤ R = {R}, got {norm}")
        fmax = float(np.max(np.linalg.norm(F, axis=-1)))
        if B is None:
            B = fmax
        B = check_float("B", B, 0.0)
        if fmax > B * (1 + FEATURE_RTOL):
            raise ValueError(f"argument B must bound the features: max ‖ϕ‖ = {fmax} > B = {B}")
        mu = np.full(X, 1.0 / X) if mu is None else check_probs("mu", mu)
        check_shape("mu", mu, (X,))
        with np.errstate(divide="ignore"):
            log_mu = np.log(mu)
        return cls(
            F=jnp.asarray(F),
            theta=jnp.asarray(theta),
            log_mu=jnp.asarray(log_mu, jnp.float32),
            V=V, H=H, d=d, X=X, B=B, R=R, ball=ball,
        )

    # ---- indexing -------------------------------------------------------------------
    def _rows(self, prompts: Array, responses: Array) -> tuple[Array, Array, Array]:
        """Table indices for every position: x (n, 1), h (1, H), prev (n, H)."""
        n = responses.shape[0]
        Hf, Cf = self.F.shape[1:3]
        x = prompts[:, :1].astype(jnp.int32)
        h = jnp.arange(self.H, dtype=jnp.int32)[None] * (Hf > 1)
        prev = jnp.concatenate(
            [jnp.full((n, 1), self.V, jnp.int32), responses[:, :-1].astype(jnp.int32)], axis=1
        )
        return x, h, prev * (Cf > 1)

    def _logit_lookup(self, theta: Array, m: int):
        """A function (x, h, c) -> logits (..., V) for m lookups in total: through the table
        F @ θ when it has at most m rows (cost X·Hf·Cf·V·d), else gathering ϕ (cost m·V·d)."""
        if math.prod(self.F.shape[:3]) <= m:
            T = self.F @ theta
            return lambda x, h, c: T[x, h, c]
        return lambda x, h, c: self.F[x, h, c] @ theta

    # ---- scores (jitted: one compile per shape instead of one per eager op) ----------
    @jax.jit
    def features(self, prompts: Array, responses: Array) -> Array:
        """(n, H, V, d): ϕ(x, y_{<h}, v) for every candidate next token v."""
        x, h, c = self._rows(prompts, responses)
        return self.F[x, h, c]

    @jax.jit
    def logits(self, theta: Array, prompts: Array, responses: Array) -> Array:
        """(n, H, V): ⟨θ, ϕ(x, y_{<h}, v)⟩, without materialising `features` when cheaper."""
        x, h, c = self._rows(prompts, responses)
        return self._logit_lookup(theta, c.size)(x, h, c)

    @jax.jit
    def next_token_log_probs_theta(self, theta: Array, prompts: Array, responses: Array) -> Array:
        """(n, H, V): log π_θ(· | x, y_{<h}) teacher-forced along responses."""
        return jax.nn.log_softmax(self.logits(theta, prompts, responses), axis=-1)

    @jax.jit
    def log_prob_theta(self, theta: Array, prompts: Array, responses: Array) -> Array:
        """(n,): log π_θ(y | x), one sum over the response."""
        lp = self.next_token_log_probs_theta(theta, prompts, responses)
        return jnp.sum(gather_tokens(lp, responses), axis=-1)

    def next_token_log_probs(self, prompts: Array, responses: Array) -> Array:
        """(n, H, V): the teacher log π_{θ⋆}(· | x, y_{<h})."""
        return self.next_token_log_probs_theta(self.theta, prompts, responses)

    def position_free_log_probs(self, theta: Array) -> Array:
        """(X, V): log π_θ(v | x), for a feature map that ignores the position and the previous
        token (F.shape[1:3] == (1, 1)): tokens are then i.i.d. given the prompt."""
        if self.F.shape[1:3] != (1, 1):
            raise ValueError(
                "argument task must have features independent of the position and the previous "
                f"token (F.shape[1:3] == (1, 1)), got F.shape = {tuple(self.F.shape)}"
            )
        return jax.nn.log_softmax(self.F[:, 0, 0] @ theta, axis=-1)

    # ---- sampling -------------------------------------------------------------------
    @partial(jax.jit, static_argnums=2)
    def sample(self, key: Array, n: int) -> tuple[Array, Array]:
        """n i.i.d. (x, y): prompts (n, 1), responses (n, H); inverse CDF on pre-drawn uniforms."""
        kx, ky = jax.random.split(key)
        x = inverse_cdf(jax.random.uniform(kx, (n,)), jnp.cumsum(jnp.exp(self.log_mu)))
        u = jax.random.uniform(ky, (self.H, n))
        Hf, Cf = self.F.shape[1:3]
        lookup = self._logit_lookup(self.theta, n * self.H)

        def step(prev, hu):
            h, uh = hu
            z = lookup(x, h * (Hf > 1), prev * (Cf > 1))  # (n, V)
            y = inverse_cdf(uh, jnp.cumsum(jax.nn.softmax(z, axis=-1), axis=-1))
            return y, y

        _, ys = jax.lax.scan(step, jnp.full((n,), self.V, jnp.int32), (jnp.arange(self.H), u))
        return x[:, None], ys.T

    def prompt_support(self) -> tuple[Array, Array]:
        """All X prompts (X, 1) with log µ (X,)."""
        return jnp.arange(self.X, dtype=jnp.int32)[:, None], self.log_mu

    # ---- inherent variance σ⋆² (Eq. 8) -------------------------------------------
    @jax.jit
    def sigma_star_sq_by_position(self) -> Array:
        """(H,): E_{π_D} ‖ϕ(x, y_{1:h}) − ϕ̄(x, y_{<h})‖² at each position h, exactly.

        The conditional variance depends on the prefix only through (x, h, y_{h-1}), so it
        suffices to propagate q_h(x, c) = P(y_{h-1} = c | x) (c = V is BOS) forward in h."""
        logp = jax.nn.log_softmax(self.F @ self.theta, axis=-1)  # (X, Hf, Cf, V)
        p = jnp.exp(logp)
        mean = jnp.einsum("xhcv,xhcvd->xhcd", p, self.F)
        var = jnp.einsum("xhcv,xhcv->xhc", p, jnp.sum((self.F - mean[..., None, :]) ** 2, -1))
        mu = jnp.exp(self.log_mu)
        X, Hf, Cf, V = p.shape
        if Cf == 1:  # the previous token is irrelevant: no recursion needed
            by_h = mu @ var[:, :, 0]  # (Hf,)
            return jnp.broadcast_to(by_h, (self.H,)) if Hf == 1 else by_h

        def step(q, h):
            hi = h * (Hf > 1)
            contrib = jnp.sum(mu[:, None] * q * var[:, hi])
            q_next = jnp.einsum("xc,xcv->xv", q, p[:, hi])
            return jnp.concatenate([q_next, jnp.zeros((X, 1))], axis=1), contrib

        q0 = jnp.zeros((X, V + 1)).at[:, V].set(1.0)
        _, by_h = jax.lax.scan(step, q0, jnp.arange(self.H))
        return by_h

    def sigma_star_sq(self) -> Array:
        """σ⋆² = E_{π_D} Σ_h ‖ϕ(x, y_{1:h}) − ϕ̄(x, y_{<h})‖², exact (scalar)."""
        return jnp.sum(self.sigma_star_sq_by_position())

    @partial(jax.jit, static_argnums=2)
    def sigma_star_sq_mc(self, key: Array, n: int) -> tuple[Array, Array]:
        """Monte Carlo σ⋆² from n sampled prefixes, with its standard error: (estimate, s.e.).

        Rao–Blackwellised: the inner variance over y_h given the sampled prefix is exact, so
        only the law of the prefixes is sampled."""
        xs, ys = self.sample(key, n)
        phi = self.features(xs, ys)  # (n, H, V, d)
        p = jnp.exp(self.next_token_log_probs(xs, ys))  # (n, H, V)
        mean = jnp.einsum("nhv,nhvd->nhd", p, phi)
        dev = jnp.sum((phi - mean[:, :, None]) ** 2, axis=-1)
        s = jnp.sum(jnp.sum(p * dev, axis=-1), axis=-1)  # (n,)
        return jnp.mean(s), jnp.std(s, ddof=1) / jnp.sqrt(n)

    # ---- named constructors ---------------------------------------------------------
    @classmethod
    def random(
        cls,
        key: Array,
        V: int,
        H: int,
        d: int,
        X: int = 1,
        B: float = 1.0,
        theta_norm: float = 1.0,
        markov: bool = True,
        positional: bool = False,
        mu=None,
        pivotal: Iterable[int] | None = None,
    ) -> AutoregressiveLinear:
        """Random instance (for the MLE-vs-H experiments; not from the paper): every ϕ is an
        independent
        Gaussian direction scaled to norm exactly B; θ⋆ a uniform direction of norm theta_norm.

        markov: ϕ depends on y_{h-1} (Cf = V+1); positional: ϕ depends on h (Hf = H).
        pivotal: positions (0-based) that stay stochastic; implies positional. At every other
        position, for each (x, y_{h-1}) one random token v* gets ϕ = B·u and the others
        ϕ = −B·u, u = θ⋆/‖θ⋆‖: a logit gap 2B‖θ⋆‖, so with ε = (V−1)e^{−2B‖θ⋆‖} each such
        position contributes exactly δ = 4B²ε/(1+ε)² to σ⋆², whatever the prefix. Hence

            σ⋆² = Σ_{h ∈ pivotal} s_h + (H − k)·δ,   0 ≤ s_h ≤ B²,   k = |pivotal|,

        i.e. σ⋆² grows linearly with the number of pivotal positions at fixed H (and is
        ≈ k·s̄ once B‖θ⋆‖ ≫ log V)."""
        V = check_int("V", V, 2)
        H = check_int("H", H, 1)
        d = check_int("d", d, 1)
        X = check_int("X", X, 1)
        B = check_float("B", B, 0.0, low_open=True)
        theta_norm = check_float("theta_norm", theta_norm, 0.0, 1.0)
        if pivotal is not None:
            pivotal = sorted({check_int("pivotal[i]", h, 0, H - 1) for h in pivotal})
            if theta_norm == 0.0:
                raise ValueError("argument theta_norm must be in (0, 1] when pivotal is given")
            positional = True
        Hf = H if positional else 1
        Cf = V + 1 if markov else 1
        # host-side generator seeded by the key: construction is not traced, and this avoids
        # compiling jax.random kernels for every new shape
        rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())
        F = rng.standard_normal((X, Hf, Cf, V, d))
        F *= B / np.linalg.norm(F, axis=-1, keepdims=True)
        theta = rng.standard_normal(d)
        theta *= theta_norm / max(np.linalg.norm(theta), 1e-30)
        if pivotal is not None:
            u = theta / np.linalg.norm(theta)
            star = rng.integers(0, V, (X, H, Cf))
            sign = 2.0 * (star[..., None] == np.arange(V)) - 1.0  # (X, H, Cf, V)
            rest = [h for h in range(H) if h not in pivotal]
            F[:, rest] = B * sign[:, rest, :, :, None] * u
        return cls.create(F, theta, H, mu=mu, B=B, R=1.0)

    @classmethod
    def prop_3_2(cls, n: int, H: int, theta: float = 1.0) -> AutoregressiveLinear:
        """The instance of Prop. 3.2's proof (App. G): sequence KL of any proper estimator is
        ∝ H/n w.p. ≥ ¼ (the printed constant ¼ is an erratum: `prop_3_2_kl_lower_bound`).

        X = {0, 1}, µ(1) = 1/(2n); V = {−1, +1} encoded as tokens {0, 1}; d = 1;
        ϕ(0, ·) = 0, ϕ(1, y_{1:h}) = y_h; Θ = [−1, 1]. On prompt 1 the tokens are i.i.d. with
        P(+1) = e^θ/(e^θ + e^{−θ}); on prompt 0 they are uniform. See `prop_3_2_kl_lower_bound`."""
        n = check_int("n", n, 1)
        H = check_int("H", H, 1)
        theta = check_float("theta", theta, -1.0, 1.0)
        F = np.zeros((2, 1, 1, 2, 1))
        F[1, 0, 0, :, 0] = [-1.0, 1.0]
        m1 = 1.0 / (2 * n)
        return cls.create(F, [theta], H, mu=[1.0 - m1, m1], B=1.0, R=1.0)

    prop_3_2_kl_lower_bound = staticmethod(prop_3_2_kl_lower_bound)

    @classmethod
    def prop_5_1_sgd(
        cls,
        case: str,
        eta: float,
        H: int,
        B: float,
        n: int | None = None,
        N: float | None = None,
        Bbar: float | None = None,
    ) -> tuple[AutoregressiveLinear, Array]:
        """Prop 5.1 lower bound for constant-step SGD (§5).

        d = 2, V = {−1, 0, 1} encoded as tokens {0, 1, 2}, ϕ(x, y_{1:h}) = B·v(x, y_h).
        Returns (task, θ_0), θ_0 the paper's initial iterate.

        case "large_eta" (Lemma K.6; needs eta ≥ 8/(HB)): one prompt, v(0) = [1, 0],
          v(±1) = [α, ±√(1−α²)], α = ηHB/(2(ηHB−1)) ≤ 4/7, θ⋆ = [1, 0], θ_0 = v(+1).
          SGD oscillates between ≈v(+1) and ≈v(−1): Cov_N ≥ 1 − 1/(2T) when log N ≤ HB/8.
        case "small_eta" (Lemma K.7; needs 0 < eta ≤ 8/(HB), and n = T ≥ 1, N > 1):
          prompts {+, −} as tokens {0, 1}, v(+, a) = [a, 0], v(−, a) = [0, a], θ⋆ = [½, ½],
          µ(+) = min{1, B̄H/(512 e n B² log N)} (B̄ = Bbar ≥ B, default B),
          θ_0 = [r − 1/B, ¼] with e^{rB} = H/(4 log N): progress on "+" is too slow and
          Cov_N ≥ µ(+)/2. θ_0 must lie in the unit ball, which needs B ≳ log(H/log N).
        """
        if case not in ("large_eta", "small_eta"):
            raise ValueError(f"argument case must be 'large_eta' or 'small_eta', got {case!r}")
        H = check_int("H", H, 1)
        B = check_float("B", B, 0.0, low_open=True)
        eta_c = 8.0 / (H * B)
        if case == "large_eta":
            eta = check_float("eta", eta, eta_c)
            a = eta * H * B / (2.0 * (eta * H * B - 1.0))
            v = np.array([[a, -math.sqrt(1 - a * a)], [1.0, 0.0], [a, math.sqrt(1 - a * a)]])
            F = B * v[None, None, None]  # (1, 1, 1, 3, 2)
            task = cls.create(F, [1.0, 0.0], H, B=B, R=1.0)
            return task, jnp.asarray(v[2], jnp.float32)
        eta = check_float("eta", eta, 0.0, eta_c, low_open=True)
        if n is None or N is None:
            raise ValueError("arguments n and N are required for case 'small_eta'")
        n = check_int("n", n, 1)
        N = check_float("N", N, 1.0, low_open=True)
        Bbar = check_float("Bbar", B if Bbar is None else Bbar, B)
        p_plus = min(1.0, Bbar * H / (512 * math.e * n * B**2 * math.log(N)))
        a = np.array([-1.0, 0.0, 1.0])
        F = np.zeros((2, 1, 1, 3, 2))
        F[0, 0, 0, :, 0] = B * a
        F[1, 0, 0, :, 1] = B * a
        task = cls.create(F, [0.5, 0.5], H, mu=[p_plus, 1.0 - p_plus], B=B, R=1.0)
        r = math.log(H / (4 * math.log(N))) / B
        theta0 = np.array([r - 1.0 / B, 0.25])
        if np.linalg.norm(theta0) > 1.0:
            raise ValueError(
                f"argument B must be large enough that θ_0 = [log(H/(4 log N))/B − 1/B, 1/4] "
                f"lies in the unit ball; got ‖θ_0‖ = {np.linalg.norm(theta0):.3f} for B = {B}"
            )
        return task, jnp.asarray(theta0, jnp.float32)

    @classmethod
    def prop_g1a(cls, n: int, d: int, B: float) -> AutoregressiveLinear:
        """Prop. 4.1(a): the coarse term of Thm 4.1 is tight for MLE.

        One prompt ⊥ (token 0), H = 1, V = d labels, ϕ(y) = B e_y, Θ = {‖θ‖_∞ ≤ 1} (ball "linf"),
        θ⋆ = (log(4n)/(2B))(e_1 − Σ_{j≥2} e_j), so π_D(label 1) = 4n/(d−1+4n) and every other
        label has 1/(d−1+4n). The paper assumes n ≥ d ≥ 2 and B ≥ log(5n); here only d ≥ 2 and
        θ⋆ ∈ Θ (B ≥ log(4n)/2) are enforced so that neighbouring regimes can be explored."""
        n = check_int("n", n, 1)
        d = check_int("d", d, 2)
        B = check_float("B", B, 0.0, low_open=True)
        if math.log(4 * n) / (2 * B) > 1.0:
            raise ValueError(
                f"argument B must be ≥ log(4n)/2 = {math.log(4 * n) / 2:.4f} so that θ⋆ lies in "
                f"the ℓ∞ unit ball, got {B}"
            )
        theta = -np.full(d, math.log(4 * n) / (2 * B))
        theta[0] *= -1
        F = B * np.eye(d)[None, None, None]  # (1, 1, 1, d, d)
        return cls.create(F, theta, 1, B=B, R=1.0, ball="linf")


# ---- exact scores when tokens are independent given the prompt -------------------------------

#: Log-ratio ties within this many nats count as ≥ log N (float64 sums of equal terms).
TIE_ATOL = 1e-9
#: The exact Cov_N enumerates the count vectors of identical-position groups; refuse beyond.
MAX_COUNT_CELLS = 1 << 22


def _log_softmax(z: np.ndarray) -> np.ndarray:
    m = z.max(-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(-1, keepdims=True))


def _iid_token_tables(task: AutoregressiveLinear, theta) -> tuple[np.ndarray, ...]:
    """log π_{θ⋆}(v | x, h), log π_θ(v | x, h) (X, H, 2) and µ (X,), float64, for a task whose
    tokens are independent given the prompt (V = 2, F.shape[2] == 1)."""
    if task.F.shape[2] != 1 or task.V != 2:
        raise ValueError(
            "argument task must have V = 2 and features independent of the previous token "
            f"(F.shape[2] == 1), got V = {task.V}, F.shape = {tuple(task.F.shape)}"
        )
    F = np.asarray(task.F, np.float64)[:, :, 0]  # (X, Hf, 2, d)
    lp = _log_softmax(F @ np.asarray(task.theta, np.float64))  # (X, Hf, 2)
    lq = _log_softmax(F @ np.asarray(theta, np.float64))
    lp, lq = (np.broadcast_to(a, (a.shape[0], task.H, 2)) for a in (lp, lq))
    return lp, lq, np.exp(np.asarray(task.log_mu, np.float64))


def iid_token_kl(task: AutoregressiveLinear, theta) -> float:
    """Exact sequence KL(π_{θ⋆} ‖ π_θ) = Σ_x µ_x Σ_h Σ_v p_xhv (log p_xhv − log q_xhv) for a task
    whose tokens are independent given the prompt (as `iid_token_scores`, for any number of
    distinct positions: no enumeration). Float64."""
    lp, lq, mu = _iid_token_tables(task, theta)
    p = np.exp(lp)
    with np.errstate(invalid="ignore"):
        per_x = np.sum(np.where(p > 0, p * (lp - lq), 0.0), axis=(1, 2))
    return float(np.sum(np.where(mu > 0, mu * per_x, 0.0)))


def iid_token_scores(task: AutoregressiveLinear, theta, Ns) -> tuple[float, np.ndarray]:
    """Exact sequence KL(π_{θ⋆} ‖ π_θ) and Cov_N(π_{θ⋆} ‖ π_θ) for N in Ns: (float, (k,)).

    Needs ϕ independent of the previous token (F.shape[2] == 1), so that y_1..y_H are
    independent given the prompt, and V = 2. Then r = Σ_h r_h(y_h) and

        KL = Σ_x µ_x Σ_h Σ_v p_xhv (log p_xhv − log q_xhv),
        Cov_N = Σ_x µ_x P(Σ_h r_h(y_h) ≥ log N | x),

    where positions with the same (p, r) pair (up to relabelling the tokens) form a group whose
    count of one token is Binomial: the probability is an exact sum over count vectors.
    Float64 throughout; ties within TIE_ATOL count as ≥ log N."""
    logN = np.log(check_Ns("Ns", Ns))
    lp, lq, mu = _iid_token_tables(task, theta)
    kl, cov = 0.0, np.zeros(logN.shape)
    for x in np.flatnonzero(mu > 0):
        p = np.exp(lp[x])
        with np.errstate(invalid="ignore"):
            a = np.where(p > 0, lp[x] - lq[x], 0.0)  # r_h(v); p = 0: never drawn
        kl += mu[x] * float(np.sum(np.where(p > 0, p * a, 0.0)))
        r, logw = _sum_distribution(p, a)
        w = np.exp(logw)
        cov += mu[x] * np.sum(w[:, None] * (r[:, None] >= logN[None] - TIE_ATOL), axis=0)
    return kl, cov


def _sum_distribution(p: np.ndarray, a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Support and log-probabilities of Σ_h a[h, y_h], y_h ~ p[h] independent: p, a (H, 2)."""
    order = np.argsort(p, axis=1, kind="stable")  # relabel so that column 1 is the likelier
    p = np.take_along_axis(p, order, 1)
    a = np.take_along_axis(a, order, 1)
    keys = np.round(np.concatenate([p[:, 1:], a], axis=1), 12)
    groups, sizes = np.unique(keys, axis=0, return_counts=True)
    cells = math.prod(int(m) + 1 for m in sizes)
    if cells > MAX_COUNT_CELLS:
        raise ValueError(
            f"argument task has {len(sizes)} distinct position groups per prompt ({cells} count "
            f"vectors > {MAX_COUNT_CELLS}); enumerate or sample instead"
        )
    r, logw = np.zeros(1), np.zeros(1)
    for (p1, a0, a1), m in zip(groups, sizes, strict=True):
        c = np.arange(m + 1, dtype=np.float64)
        r_g = c * a1 + (m - c) * a0
        lcomb = np.array(
            [math.lgamma(m + 1) - math.lgamma(j + 1) - math.lgamma(m - j + 1) for j in range(m + 1)]
        )
        with np.errstate(divide="ignore", invalid="ignore"):
            lw = lcomb + np.where(c > 0, c * np.log(p1), 0.0)
            lw = lw + np.where(c < m, (m - c) * np.log1p(-p1), 0.0)
        r = np.add.outer(r, r_g).ravel()
        logw = np.add.outer(logw, lw).ravel()
    return r, logw


# ---- exact scores by token counts (features independent of position and previous token) -----


def multinomial_table(H: int, V: int) -> tuple[np.ndarray, np.ndarray]:
    """Every count vector of H tokens over V values and its log multinomial coefficient:
    (counts (C, V) float64, log_coef (C,)), C = binom(H + V − 1, V − 1) (2145 at H = 64, V = 3).

    When ϕ depends only on (x, y_h), a response's likelihood under any π_θ depends only on its
    token counts, so sums over V^H responses become sums over these C vectors."""
    H = check_int("H", H, 0)
    V = check_int("V", V, 1)
    rows = []

    def rec(prefix, left, slots):
        if slots == 1:
            rows.append((*prefix, left))
            return
        for c in range(left + 1):
            rec((*prefix, c), left - c, slots - 1)

    rec((), H, V)
    counts = np.asarray(rows, np.float64)
    log_coef = math.lgamma(H + 1) - np.sum([[math.lgamma(c + 1) for c in r] for r in rows], 1)
    return counts, np.asarray(log_coef, np.float64)


def count_scores(lp: Array, lq: Array, log_mu: Array, counts: Array, log_coef: Array,
                 log_N: Array) -> tuple[Array, Array]:
    """Exact sequence KL(π ‖ π̂) and Cov_N(π ‖ π̂) for i.i.d. tokens given the prompt: (scalar,
    log_N's shape). Pure jnp (jit/vmap inside a training scan).

    lp, lq (X, V): log π(v | x), log π̂(v | x) at every position; log_mu (X,);
    counts (C, V), log_coef (C,) from `multinomial_table(H, V)`; log_N (k,) thresholds.
    KL = Σ_x µ_x H Σ_v p (log p − log q); Cov_N = Σ_x µ_x Σ_c P(c | x)·1[c·(lp − lq) ≥ log N]
    (ties within TIE_ATOL count as ≥). A token with p = 0 never occurs and adds nothing."""
    p = jnp.exp(lp)
    a = jnp.where(p > 0, lp - lq, 0.0)  # (X, V) per-token log-ratio
    H = jnp.sum(counts[0])
    mu = jnp.exp(log_mu)
    kl = jnp.sum(jnp.where(mu > 0, mu * H * jnp.sum(jnp.where(p > 0, p * a, 0.0), -1), 0.0))
    safe_lp = jnp.where(p > 0, lp, 0.0)
    logw = log_coef[None] + jnp.einsum("cv,xv->xc", counts, safe_lp)
    impossible = jnp.einsum("cv,xv->xc", counts, (p <= 0).astype(counts.dtype)) > 0
    w = jnp.where(impossible, 0.0, jnp.exp(logw))  # (X, C)
    r = jnp.einsum("cv,xv->xc", counts, a)
    hit = r[..., None] >= log_N - TIE_ATOL  # (X, C, k)
    cov = jnp.einsum("x,xc,xck->k", mu, w, hit.astype(w.dtype))
    return kl, cov
