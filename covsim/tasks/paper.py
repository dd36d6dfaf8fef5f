"""Named instances built for the paper's claims (beyond the paper's own constructions, which
live with their families: `AutoregressiveLinear.prop_3_2`, `.prop_5_1_sgd`, `.prop_g1a`, and
the graph tasks of `covsim.tasks.graph`).

    rare_prompts_task(H, X_rare=32, ...)   the sample_size instance: the coarse (missing-mass)
                                           term of Thm 4.1 / Cor 4.2 in force, σ⋆² fixed in H

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
"""

from __future__ import annotations

import math

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
