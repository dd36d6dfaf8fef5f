"""Checkpoint / model selection (§6.3: the simple tournament, Eq. 29, and the offset
tournament, Eq. 32).

Candidates π_1..π_K (e.g. the checkpoints of one run) are scored only through log-likelihoods
of validation data drawn from π_D — observable quantities, no access to π_D's density is needed
for the tournaments. Shapes: L (K, n) with L[k, i] = log π_k(y_i | x_i).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from covsim import metrics as M
from covsim.checks import check_float, check_shape


def tied_best(scores) -> list[int]:
    """Every candidate whose score equals the best (lowest) one, to rounding: the set among
    which a tournament's tie-break (the earliest) decides."""
    s = np.asarray(scores)
    return np.flatnonzero(np.isclose(s, s.min())).tolist()


def min_kl(kl) -> int:
    """Index of the candidate with the smallest KL (the baseline the paper compares against)."""
    return int(np.nanargmin(np.asarray(kl)))


def min_ce(L) -> int:
    """Index of the candidate with the smallest validation cross-entropy −mean_i L[k, i]."""
    return int(np.argmax(np.mean(np.asarray(L), axis=1)))


def tournament(L, N: float) -> tuple[int, np.ndarray]:
    """Simple tournament (Eq. 29): argmin_j max_k Ĉov_N(π_k ‖ π_j).

    Returns (chosen index, scores (K,)) with scores[j] = max_k Ĉov_N(π_k ‖ π_j). The diagonal
    contributes 0. Ties go to the earliest candidate."""
    check_float("N", N, 1.0)
    C = np.asarray(M.empirical_coverage_matrix(jnp.asarray(L), N))  # [j, k] = Ĉov_N(π_k‖π_j)
    scores = C.max(axis=1)
    return int(np.argmin(scores)), scores


def on_policy_coverage(L_gen, N: float) -> np.ndarray:
    """Ĉov^{π_j}_N(π_k ‖ π_j) from generations (Eq. 32): (K, K).

    L_gen (K, K, m): L_gen[j, k, i] = log π_k(y_i | x_i) for y_i ~ π_j(·|x_i) — candidate j's own
    samples scored by every candidate k.
    Entry [j, k] = mean_i 1[L_gen[j,k,i] − L_gen[j,j,i] ≥ log N]."""
    check_float("N", N, 1.0)
    Lg = np.asarray(L_gen)
    K = Lg.shape[0]
    check_shape("L_gen", Lg, (K, K, None))
    own = Lg[np.arange(K), np.arange(K)]  # (K, m)
    r = (Lg - own[:, None, :]).astype(np.float32)  # compared as `metrics.coverage` compares
    return np.mean(r >= np.asarray(M.log_threshold("N", N)), axis=-1)


def offset_tournament(L, L_gen, N: float, a: float) -> tuple[int, np.ndarray]:
    """Offset ("on-policy") tournament (Eq. 32):

    argmin_j max_k { Ĉov_N(π_k ‖ π_j) − 2 N^a · Ĉov^{π_j}_N(π_k ‖ π_j) }.
    """
    check_float("a", a, 0.0, low_open=True)
    C = np.asarray(M.empirical_coverage_matrix(jnp.asarray(L), N))
    scores = (C - 2.0 * N**a * on_policy_coverage(L_gen, N)).max(axis=1)
    return int(np.argmin(scores)), scores
