"""Named instances built for the paper's claims (beyond the paper's own constructions, which
live with their families: `AutoregressiveLinear.prop_3_2`, `.prop_5_1_sgd`, `.prop_g1a`, and
the graph tasks of `covsim.tasks.graph`).

    rare_prompts_task(H, X_rare=32, ...)   the sample_size instance: the coarse (missing-mass)
                                           term of Thm 4.1 / Cor 4.2 in force, σ⋆² fixed in H
    pivotal_task(H, k, ...)                the variance instance: Thm 4.2's √(σ⋆²/(n log N))
                                           term in force, σ⋆² set by k and fixed in H
    heterogeneous_mixture_task(H, ...)     the §5 instance: plain SGD's coverage grows with H
    prop_g2_instance(alpha, log_M)         Prop. G.2's misspecified two-candidate class

`rare_prompts_task` is an AR linear model built so that the *coarse* term of Thm 4.1 /
Cor 4.2, ≍ d/n, is the one in force:

* V = 2, prompt 0 is frequent; prompts 1..X_rare are rare, with µ log-uniform on
  [q_min, q_max]. For 1/q_max ≪ n ≪ 1/q_min the expected mass of unseen prompts is then
  Σ_x µ_x (1 − µ_x)^n ≈ ((X_rare − 1) / ln(q_max/q_min)) / n: slope −1 on log-log axes.
* Each prompt x owns one parameter θ_x that drives its H − k near-deterministic positions
  (ϕ = ±B e_x, θ⋆_x = 1, so P(favoured token) = σ(2B) ≈ 1 − 1e-7); an unseen prompt leaves
  θ_x in a flat direction of the likelihood, so the MLE keeps θ_x = 0 (uniform tokens) and
  pays r ≈ (H − k) log 2 ≥ log N on all of that prompt's mass: Cov_N ≈ missing mass.
* The first k positions of every prompt are pivotal: ϕ = ±b e_piv on one shared parameter
  (θ⋆_piv = theta_piv), learned from all prompts. They carry σ⋆² (≈ k·b²(1 − tanh²(bθ))),
  while each near-deterministic token adds only 4B²ε/(1+ε)², ε = e^{−2B} (3e-5 at B = 8):
  σ⋆² stays fixed as H grows, yet the unseen prompts' KL grows like (H − k) log 2.

`pivotal_task` is an AR linear model in the setting of Thm 4.2 (Assumption 2.2: Θ the ℓ2
unit ball, ‖ϕ‖ ≤ B, θ⋆ ∈ Θ) on which the *variance* term √(σ⋆²/(n log N)) is the one in
force, in the spirit of the lower-bound construction of Prop. K.1 (one parameter per stochastic
position):

* V = 2 (tokens ±1), X = 2 prompts: prompt 0 has mass 1 − q, prompt 1 ("rare") mass q.
* Positions h < k are pivotal on both prompts: ϕ = b·y_h·e_h, each position its own
  coordinate, θ⋆_h = 0 (the token is a fair coin). Each adds b² to σ⋆², so σ⋆² = k·b² (+ the
  rare block below). The MLE estimates k coordinates from n coins each, so its log-ratio on a
  fresh response is a sum of k independent terms of variance ≈ 1/n: Cov_N is set by k/n, i.e.
  by σ⋆²/(b² n), and with b < 1 the unit ball binds once k/(b² n) ≳ 1 (capacity controlled by
  the norm, as in Thm 4.2, not by the dimension).
* Positions h ≥ k are near-deterministic on the rare prompt only: ϕ = B_rare·s_h·y_h·e_r on one
  shared coordinate with θ⋆_r = theta_rare (favoured token w.p. 1 − ε, ε = σ(−2·B_rare·
  theta_rare)); on prompt 0 they have ϕ = 0, a fair coin under every θ, adding nothing to σ⋆²
  (Eq. 8 counts feature variation) or to the log-ratio. The block adds only
  q·(H − k)·4B_rare²ε(1 − ε) to σ⋆², so σ⋆² stays fixed as H grows, while a dataset that misses
  the rare prompt (probability (1 − q)^n) leaves θ̂_r = 0 and pays KL ≈ q·(H − k)·kl(1 − ε ‖ ½):
  the KL grows with H at fixed σ⋆² and n, the contrast of Prop. 3.2.

Θ is one ball for all coordinates: when the rare prompt is seen its tokens push θ̂_r outwards
and the pivotal estimates share what is left of the ball, so H reaches the coverage through
the fit; the theorem says it may not make Cov_N grow.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from covsim.checks import check_float, check_int
from covsim.tasks.linear import AutoregressiveLinear

# ---- the instance ----------------------------------------------------------------------------


def rare_prompts_task(
    H: int,
    X_rare: int = 32,
    q_min: float = 1e-5,
    q_max: float = 0.1,
    B: float = 8.0,
    b: float = 8.0,
    k: int = 2,
    theta_piv: float = 0.0625,
    seed: int = 0,
) -> AutoregressiveLinear:
    """The module docstring's instance: X = 1 + X_rare prompts, d = X + 1, Θ = ℓ∞ unit ball.

    F (X, H, 1, 2, d): positions h < k are pivotal, ϕ(x, h, v) = b·s_xh·(2v − 1)·e_piv;
    positions h ≥ k are near-deterministic, ϕ(x, h, v) = B·s_xh·(2v − 1)·e_x, with random
    favoured signs s_xh = ±1 (seeded by `seed`, prefix-consistent in H). θ⋆ = 1 on every
    e_x and theta_piv on e_piv.
    µ: rare prompts log-uniform on [q_min, q_max]; prompt 0 takes the remaining mass."""
    H = check_int("H", H, 1)
    X_rare = check_int("X_rare", X_rare, 1)
    q_max = check_float("q_max", q_max, 0.0, 1.0, low_open=True, high_open=True)
    q_min = check_float("q_min", q_min, 0.0, q_max, low_open=True)
    B = check_float("B", B, 0.0, low_open=True)
    b = check_float("b", b, 0.0, low_open=True)
    k = check_int("k", k, 0, H)
    theta_piv = check_float("theta_piv", theta_piv, -1.0, 1.0)
    seed = check_int("seed", seed, 0)
    q = np.exp(np.linspace(math.log(q_min), math.log(q_max), X_rare))
    if q.sum() >= 1.0:
        raise ValueError(
            f"arguments X_rare, q_min, q_max must leave mass for the frequent prompt: the rare "
            f"prompts' total is {q.sum():.3f} ≥ 1"
        )
    X = X_rare + 1
    d = X + 1
    # one uniform per (h, x) in row-major order: the instance at H is the length-H prefix of
    # the instance at any H' > H (same seed), so prefixes of its samples are exact samples
    s = np.where(np.random.default_rng(seed).random((H, X)) < 0.5, -1.0, 1.0).T
    pm = np.array([-1.0, 1.0])  # token 0 ↔ −1, token 1 ↔ +1
    F = np.zeros((X, H, 1, 2, d))
    for x in range(X):
        F[x, :k, 0, :, X] = b * s[x, :k, None] * pm
        F[x, k:, 0, :, x] = B * s[x, k:, None] * pm
    theta = np.ones(d)
    theta[X] = theta_piv
    mu = np.concatenate([[1.0 - q.sum()], q])
    return AutoregressiveLinear.create(F, theta, H, mu=mu, B=max(B, b), R=1.0, ball="linf")


def expected_missing_mass(log_mu, n: int) -> float:
    """E[mass of prompts absent from n i.i.d. draws] = Σ_x µ_x (1 − µ_x)^n (float64)."""
    mu = np.exp(np.asarray(log_mu, np.float64))
    return float(np.sum(mu * np.exp(n * np.log1p(-np.minimum(mu, 1.0 - 1e-16)))))


# ---- the variance instance ---------------------------------------------------------------------


def pivotal_task(
    H: int,
    k: int,
    b: float = 0.5,
    q: float = 1 / 256,
    B_rare: float = 3.0,
    theta_rare: float = 0.9,
    seed: int = 0,
) -> AutoregressiveLinear:
    """The module docstring's variance instance: X = 2 prompts, d = k + 1, Θ = ℓ2 unit ball, B =
    max(b, B_rare).

    F (2, H, 1, 2, d): ϕ(x, h, v) = b·(2v − 1)·e_h for h < k (both prompts);
    ϕ(1, h, v) = B_rare·s_h·(2v − 1)·e_k for h ≥ k with favoured signs s_h = ±1 (seeded by
    `seed`, prefix-consistent in H: the instance at H is the length-H prefix of the one at
    H' > H with the same k); ϕ(0, h, ·) = 0 for h ≥ k. θ⋆ = theta_rare·e_k; µ = (1 − q, q)."""
    H = check_int("H", H, 1)
    k = check_int("k", k, 1, H)
    b = check_float("b", b, 0.0, low_open=True)
    q = check_float("q", q, 0.0, 1.0, low_open=True, high_open=True)
    B_rare = check_float("B_rare", B_rare, 0.0, low_open=True)
    theta_rare = check_float("theta_rare", theta_rare, 0.0, 1.0)
    seed = check_int("seed", seed, 0)
    pm = np.array([-1.0, 1.0])  # token 0 ↔ −1, token 1 ↔ +1
    s = np.where(np.random.default_rng(seed).random(H) < 0.5, -1.0, 1.0)
    F = np.zeros((2, H, 1, 2, k + 1))
    for h in range(k):
        F[:, h, 0, :, h] = b * pm
    for h in range(k, H):
        F[1, h, 0, :, k] = B_rare * s[h] * pm
    theta = np.zeros(k + 1)
    theta[k] = theta_rare
    return AutoregressiveLinear.create(
        F, theta, H, mu=[1.0 - q, q], B=max(b, B_rare), R=1.0, ball="l2"
    )


# ---- the §5 instance: a stiff frequent prompt and a soft, saturating rare one -----------------


def heterogeneous_mixture_task(
    H: int,
    B_A: float = 48.0,
    b_R: float = 6.0,
    p_A: float = 0.9,
    theta_star: tuple[float, float, float] = (0.85, 0.5, 0.0),
) -> AutoregressiveLinear:
    """A fixed two-prompt AR linear instance on which plain SGD's coverage depends on H and
    normalized SGD's need not (Prop. 5.1 vs Thm 5.1 of arXiv 2510.15020v2).

    V = {−1, 0, +1} (token indices 0, 1, 2), d = 3, ϕ(x, y_{1:h}) = Φ[x, y_h] (i.i.d. tokens
    given the prompt), Θ = ℓ2 unit ball, B = B_A:

    * prompt A (mass p_A) is stiff and nearly deterministic, the geometry of the step-size lower
      bound (App. K.4): Φ[A, 0] = B_A·(0, 1, 0), Φ[A, ±1] = B_A·(0, ½, ±√¾). Its gradient scale
      is ∝ H·B_A, so a constant step must be η ≲ 1/(H·B_A) or the iterate oscillates;
    * prompt R (mass 1 − p_A) is soft and saturating: Φ[R, ±1] = ±b_R·e₁, Φ[R, 0] = 0. With
      θ⋆ = (0.85, 0.5, 0) its per-token error ε makes R uncovered once H·ε ≳ log N, while its
      gradient is ∝ H·ε: at η ∝ 1/H it needs ∝ H visits, so the time-averaged Cov_N of plain SGD
      grows with H. Normalized steps do not shrink with H.
    θ⋆ gives A's mode (token 0) a logit margin B_A·(1 − ½)·0.5 = 12 and R ≈ 0.994 on +1."""
    H = check_int("H", H, 1)
    B_A = check_float("B_A", B_A, 0.0, low_open=True)
    b_R = check_float("b_R", b_R, 0.0, low_open=True)
    p_A = check_float("p_A", p_A, 0.0, 1.0, low_open=True, high_open=True)
    theta = np.asarray(theta_star, np.float64)
    if theta.shape != (3,):
        raise ValueError(f"argument theta_star must have 3 entries, got {list(theta_star)}")
    r3 = math.sqrt(0.75)
    F = np.zeros((2, 1, 1, 3, 3))
    F[0, 0, 0] = B_A * np.array([[0.0, 0.5, -r3], [0.0, 1.0, 0.0], [0.0, 0.5, r3]])
    F[1, 0, 0] = b_R * np.array([[-1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    return AutoregressiveLinear.create(F, theta, H, mu=[p_A, 1.0 - p_A], B=B_A, R=1.0,
                                       ball="l2")


# ---- Prop. G.2's misspecified two-candidate class ------------------------------------------


class CandidateSet(NamedTuple):
    """A one-token ground truth with a finite candidate class, as log-prob tables.

    log_mu (X,): the prompt law; log_p (X, V): log π_D(y | x); log_cands (K, X, V): log π_k."""

    log_mu: np.ndarray
    log_p: np.ndarray
    log_cands: np.ndarray

    def sample(self, rng: np.random.Generator, n: int):
        """n i.i.d. (x, y) from π_D: (x (n,), y (n,)) int arrays."""
        x = rng.choice(len(self.log_mu), size=n, p=np.exp(self.log_mu))
        return x, self.sample_given(rng, x, None)

    def sample_given(self, rng: np.random.Generator, x: np.ndarray, k: int | None):
        """y ~ π_D(·|x) (k None) or ~ π_k(·|x) for each prompt of x: (len(x),) ints."""
        table = np.exp(self.log_p if k is None else self.log_cands[k])
        u = rng.random(len(x))
        return (u[:, None] >= np.cumsum(table[x], axis=1)[:, :-1]).sum(1)

    def coverage(self, k: int, N: float) -> float:
        """Exact Cov_N(π_D ‖ π_k) = Σ_{x,y} µ(x) π_D(y|x) 1[log π_D − log π_k ≥ log N]."""
        p = np.exp(self.log_mu)[:, None] * np.exp(self.log_p)
        return float(np.sum(p * (self.log_p - self.log_cands[k] >= math.log(N) - 1e-12)))


def prop_g2_instance(alpha: float = 1.0, log_M: float = 8.0) -> CandidateSet:
    """The instance of Prop. G.2 (App. E of arXiv 2510.15020v2): X = {+, −} (indices 0, 1),
    Y = {0, 1}, π_D(·|±) = Ber(½), P(−) = p = α²/(32 log M); Π = {π_1, π_2} with
    π_1(·|+) = Ber(1/(2e^α)), π_1(·|−) = Ber(½) (|log π_D − log π_1| ≤ α, so Cov_N(π_1) = 0 for
    N > e^α) and π_2(·|+) = Ber(½), π_2(·|−) = Ber(1/(2M)) (Cov_N(π_2) = p/2 for N ≤ M). The
    MLE prefers π_2 (it fits the frequent prompt exactly) with probability ≥ ¼ at every n."""
    alpha = check_float("alpha", alpha, 0.0, 1.0, low_open=True)
    log_M = check_float("log_M", log_M, alpha, low_open=True)
    p = alpha**2 / (32 * log_M)
    half = np.log([0.5, 0.5])
    ber = lambda q: np.log([1.0 - q, q])  # noqa: E731  P(y = 1) = q
    log_cands = np.stack([np.stack([ber(0.5 * math.exp(-alpha)), half]),
                          np.stack([half, ber(0.5 * math.exp(-log_M))])])
    return CandidateSet(np.log([1.0 - p, p]), np.stack([half, half]), log_cands)
