"""Checkpoint selection: the tournaments against brute force on small candidate sets."""

import itertools

import numpy as np
import pytest

from covsim import select


def brute_tournament(L, N):
    K = L.shape[0]
    scores = [max(np.mean(L[k] - L[j] >= np.log(N)) for k in range(K)) for j in range(K)]
    return int(np.argmin(scores)), np.asarray(scores)


def test_tournament_matches_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(20):
        L = rng.normal(size=(5, 40)) * 2
        j, s = select.tournament(L, 4.0)
        jb, sb = brute_tournament(L, 4.0)
        np.testing.assert_allclose(s, sb)
        assert j == jb


def test_tournament_prefers_the_covering_candidate():
    """π_0 covers the data (log-probs near the truth); π_1 has lower mean CE but misses 10%
    of samples by a factor ≫ N: min-CE picks π_1, the tournament picks π_0."""
    n = 1000
    truth = np.full(n, -5.0)
    covering = truth - 0.5  # uniformly 1.6× under, never ≥ N = 4
    sharp = truth + 0.8
    sharp[:100] = truth[:100] - 8.0  # misses 10% by e^8
    L = np.stack([covering, sharp])
    assert select.min_ce(L) == 1
    j, s = select.tournament(L, 4.0)
    assert j == 0 and s[0] == 0.0 and s[1] == pytest.approx(0.1)


def test_on_policy_and_offset_tournament():
    rng = np.random.default_rng(1)
    K, m = 3, 50
    L_gen = rng.normal(size=(K, K, m))
    C = select.on_policy_coverage(L_gen, 2.0)
    for j, k in itertools.product(range(K), range(K)):
        assert C[j, k] == pytest.approx(np.mean(L_gen[j, k] - L_gen[j, j] >= np.log(2.0)))
    assert np.all(np.diag(C) == 0)
    L = rng.normal(size=(K, 60))
    a = 0.25
    j, s = select.offset_tournament(L, L_gen, 2.0, a)
    emp = np.array([[np.mean(L[k] - L[jj] >= np.log(2.0)) for k in range(K)] for jj in range(K)])
    want = (emp - 2 * 2.0**a * C).max(axis=1)
    np.testing.assert_allclose(s, want)
    assert j == int(np.argmin(want))


def test_min_kl_and_bad_arguments():
    assert select.min_kl([0.3, np.nan, 0.1, 0.2]) == 2
    with pytest.raises(ValueError, match="N"):
        select.tournament(np.zeros((2, 3)), 0.5)
    with pytest.raises(ValueError, match="a"):
        select.offset_tournament(np.zeros((2, 3)), np.zeros((2, 2, 3)), 2.0, 0.0)
    with pytest.raises(ValueError, match="L_gen"):
        select.on_policy_coverage(np.zeros((2, 3, 4)), 2.0)


def test_tied_best_lists_every_candidate_at_the_best_score():
    assert select.tied_best([0.5, 0.0, 0.25, 0.0]) == [1, 3]
    assert select.tied_best([0.3, 0.1 + 0.2]) == [0, 1]  # equal to rounding
    assert select.tied_best([0.2]) == [0]
