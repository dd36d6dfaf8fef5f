"""covsim.metrics against exact values on an enumerated space (a 4-token, 3-step Markov chain).

Tolerances: float32 sums over M = 64 outcomes carry a relative error ≤ M·2⁻²⁴ ≈ 4e-6; absolute
tolerances below are 1e-5 (probabilities) or 1e-4 (sums of log-ratios up to ~20 in size).
Monte-Carlo checks use fixed seeds; their stated false-alarm rate is the chance that a correct
implementation would fail for a fresh seed.
"""

import itertools
import math
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from covsim import metrics as m

V, H = 4, 3
M = V**H
NS = np.array([1.0, 1.5, 2.0, 4.0, 8.0, 16.0, 64.0])
SEQS = np.array(list(itertools.product(range(V), repeat=H)))  # (M, H)


def random_chain(rng, conc=1.0):
    """Initial distribution (V,) and transition matrix (V, V), Dirichlet(conc)."""
    return rng.dirichlet(np.full(V, conc)), rng.dirichlet(np.full(V, conc), size=V)


def perturb(chain, rng, sigma):
    """A model: the chain's log-probabilities plus N(0, sigma²) noise, renormalised."""
    def f(p):
        lq = np.log(p) + sigma * rng.normal(size=p.shape)
        return np.exp(lq - np.logaddexp.reduce(lq, axis=-1, keepdims=True))

    return f(chain[0]), f(chain[1])


def next_token_logp(chain):
    """Teacher-forced next-token log-probs along every sequence: (M, H, V), float64."""
    init, T = chain
    rows = [np.broadcast_to(init, (M, V))] + [T[SEQS[:, h - 1]] for h in range(1, H)]
    return np.log(np.stack(rows, axis=1))


def seq_logp(chain):
    """log-probability of every sequence, (M,) float64."""
    lp = next_token_logp(chain)
    return np.take_along_axis(lp, SEQS[..., None], axis=-1)[..., 0].sum(-1)


def token_kl_np(p_chain, q_chain):
    """Per-token KL along every sequence, (M, H) float64."""
    lp, lq = next_token_logp(p_chain), next_token_logp(q_chain)
    return np.sum(np.exp(lp) * (lp - lq), axis=-1)


@pytest.fixture(scope="module")
def space():
    rng = np.random.default_rng(0)
    p = random_chain(rng)
    q = perturb(p, rng, sigma=1.0)
    lp, lq = seq_logp(p), seq_logp(q)
    r = lp - lq
    cov = np.array([np.sum(np.exp(lp) * (r >= np.log(N))) for N in NS])
    return dict(p=p, q=q, lp=lp, lq=lq, r=r, cov=cov, kl=np.sum(np.exp(lp) * r))


def test_exact_functions_match_float64(space):
    lp, lq = jnp.asarray(space["lp"]), jnp.asarray(space["lq"])
    r = m.log_ratio(lp, lq)
    np.testing.assert_allclose(r, space["r"], atol=1e-5)
    np.testing.assert_allclose(m.coverage_exact(lp, r, NS), space["cov"], atol=1e-5)
    np.testing.assert_allclose(m.kl_exact(lp, r), space["kl"], rtol=1e-5)
    # the profile is non-trivial on this space: the checks below can fail
    assert 0.05 < space["cov"][2] < 0.95 and space["cov"][-2] > 0.01


def test_monte_carlo_matches_exact(space):
    """200k draws from π_D. Cov_N: the exact value lies in the 1 − 1e-4 Wilson interval at each
    of the 7 N (false alarm ≤ 7e-4, union bound). KL and CE: within 4 standard errors
    (false alarm ≈ 6e-5 each, normal approximation; r is bounded on this space)."""
    rng = np.random.default_rng(1)
    idx = rng.choice(M, size=200_000, p=np.exp(space["lp"]))
    lp, lq = space["lp"][idx], space["lq"][idx]
    r = m.log_ratio(lp, lq)
    prof = m.coverage_profile(r, NS, alpha=1e-4)
    assert np.all((prof.lo <= space["cov"]) & (space["cov"] <= prof.hi)), (prof, space["cov"])
    assert np.all(prof.hi - prof.lo < 0.02)
    est, se = m.kl_with_se(r)
    assert abs(est - space["kl"]) < 4 * se
    assert float(m.kl(r)) == pytest.approx(float(est))
    ce_exact = -np.sum(np.exp(space["lp"]) * space["lq"])
    assert abs(m.cross_entropy(lq) - ce_exact) < 4 * np.std(lq) / np.sqrt(lq.size)


def test_importance_weighted_coverage(space):
    """Draws from the uniform distribution with weights π_D/uniform: the exact Cov_N lies in the
    Wilson interval built on Kish's effective size at 1 − 1e-4 (Kish is an approximation; with
    these weights the false alarm is still ≲ 1e-3). Exact small case checked by hand."""
    rng = np.random.default_rng(2)
    idx = rng.integers(0, M, size=100_000)
    w = np.exp(space["lp"][idx]) * M
    r = m.log_ratio(space["lp"][idx], space["lq"][idx])
    prof = m.coverage_profile(r, NS, weights=w, alpha=1e-4)
    assert np.all((prof.lo <= space["cov"]) & (space["cov"] <= prof.hi))
    np.testing.assert_allclose(prof.n, w.sum() ** 2 / (w**2).sum(), rtol=1e-4)
    assert prof.n[0] < 100_000
    # by hand: hits at N = 2 are [1, 0, 1, 0] with weights [1, 2, 3, 4] -> 4/10
    r4 = jnp.array([1.0, 0.0, jnp.inf, -jnp.inf])
    w4 = jnp.array([1.0, 2.0, 3.0, 4.0])
    assert float(m.coverage(r4, 2.0, weights=w4)) == pytest.approx(0.4)
    assert float(m.coverage(r4, 2.0, weights=0 * w4 + 7)) == pytest.approx(0.5)


def test_wilson_interval_has_nominal_coverage():
    """Exact coverage probability of the 95% interval for n = 200 draws, by summing the binomial
    pmf over the outcomes whose interval contains p (no randomness). Wilson's coverage oscillates
    around 1 − alpha (Brown, Cai & DasGupta 2001); here its mean over p ∈ [0.05, 0.95] is 0.950
    and its minimum 0.938. A wrong z (alpha instead of alpha/2) would give a mean near 0.90."""
    n = 200
    r = jnp.where(jnp.arange(n)[None, :] < jnp.arange(n + 1)[:, None], 1.0, 0.0)  # row c: c hits
    prof = jax.vmap(lambda ri: m.coverage_profile(ri, jnp.array([2.0])))(r)
    lo, hi = np.asarray(prof.lo[:, 0], np.float64), np.asarray(prof.hi[:, 0], np.float64)
    np.testing.assert_allclose(prof.cov[:, 0], np.arange(n + 1) / n, atol=1e-6)
    covered = []
    for p in np.linspace(0.05, 0.95, 91):
        pmf = np.array([math.comb(n, c) * p**c * (1 - p) ** (n - c) for c in range(n + 1)])
        covered.append(pmf[(lo <= p) & (p <= hi)].sum())
    assert abs(np.mean(covered) - 0.95) < 0.005
    assert np.min(covered) > 0.93


def test_wilson_interval_repeated_sampling(space):
    """Quick check: 2000 repetitions of 400 draws; the fraction of 95% intervals containing the
    exact Cov_2 is within 0.95 ± 0.025 (4 Monte-Carlo SE of 0.0049 plus Wilson's ±0.005)."""
    reps, n = 2000, 400
    rng = np.random.default_rng(3)
    idx = rng.choice(M, size=(reps, n), p=np.exp(space["lp"]))
    r = jnp.asarray(space["r"][idx], jnp.float32)
    prof = jax.jit(jax.vmap(lambda ri: m.coverage_profile(ri, jnp.array([2.0]))))(r)
    hit = (prof.lo[:, 0] <= space["cov"][2]) & (space["cov"][2] <= prof.hi[:, 0])
    assert abs(float(jnp.mean(hit)) - 0.95) < 0.025


def test_coverage_monotone_and_zero_at_truth(space):
    rng = np.random.default_rng(4)
    r = rng.standard_t(df=2, size=5000) * 3
    Ns = np.logspace(0, 4, 400)
    cov = np.asarray(m.coverage(r, Ns))
    assert np.all(np.diff(cov) <= 0) and cov[0] > cov[-1]
    lp = jnp.asarray(space["lp"])
    r0 = m.log_ratio(lp, lp)
    assert np.all(np.asarray(m.coverage_exact(lp, r0, Ns[1:])) == 0)
    assert np.all(np.asarray(m.coverage(r0, Ns[1:])) == 0)
    assert float(m.coverage(r0, 1.0)) == 1.0  # Cov_1 = P[r ≥ 0]
    assert float(m.kl_exact(lp, r0)) == 0.0


def test_infinite_ratios_never_nan_also_under_jit():
    lt = jnp.array([-1.0, -2.0, -jnp.inf, -1.0, -0.5])
    lm = jnp.array([-1.0, -jnp.inf, -jnp.inf, -3.0, -0.5])
    r = m.log_ratio(lt, lm)
    np.testing.assert_array_equal(r, [0.0, jnp.inf, -jnp.inf, 2.0, 0.0])
    Ns = jnp.array([1.0, 2.0, 1e6])

    def everything(lt, lm, Ns):
        r = m.log_ratio(lt, lm)
        w = jnp.array([1.0, 1.0, 0.0, 2.0, 1.0])
        return (
            r,
            m.coverage(r, Ns),
            m.coverage(r, Ns, weights=w),
            m.coverage_profile(r, Ns),
            m.coverage_exact(lt, r, Ns),
            m.kl(r),
            m.kl(r, weights=w),
            m.kl_with_se(r),
            m.kl_exact(lt, r),
            m.cross_entropy(lm),
        )

    eager, jitted = everything(lt, lm, Ns), jax.jit(everything)(lt, lm, Ns)
    for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted), strict=True):
        assert not np.any(np.isnan(a)) and not np.any(np.isnan(b))
        np.testing.assert_allclose(a, b, rtol=1e-5)  # float32; jit may fuse differently
    _, cov, _, prof, cov_ex, kl, kl_w, (kl_se, se), kl_ex, ce = jitted
    np.testing.assert_allclose(cov, [0.8, 0.4, 0.2])  # the +inf sample is uncovered for every N
    assert kl == kl_w == kl_se == se == kl_ex == ce == jnp.inf
    np.testing.assert_allclose(prof.cov, cov)
    # p = 0 outcome with r = -inf: contributes nothing to exact coverage / KL
    np.testing.assert_allclose(cov_ex[1:], np.exp([-2.0, -2.0]) + [np.exp(-1.0), 0], rtol=1e-6)
    # a zero-weight +inf sample neither counts nor makes KL infinite
    w = jnp.array([1.0, 0.0, 1.0, 1.0, 1.0])
    sub = jnp.array([0, 1, 3, 4])
    assert float(m.kl(r[sub], weights=w[sub])) == pytest.approx(2 / 3)


def random_models(rng, count):
    """Pairs (log p, log q) over M outcomes: Dirichlet p with several concentrations and three
    kinds of q: independent, log-noise perturbation, and the near-tight 'one atom shrunk by N0'."""
    P, Q = [], []
    for i in range(count):
        p = rng.dirichlet(np.full(M, [0.1, 1.0, 10.0][i % 3]))
        kind = i % 3
        if kind == 0:
            q = rng.dirichlet(np.full(M, 1.0))
        elif kind == 1:
            q = p * np.exp(rng.uniform(0.1, 3.0) * rng.normal(size=M))
        else:  # Bernoulli-like: mass a on one atom, shrunk by N0 (Prop. D.2 is its 2-point case)
            p = np.full(M, 1.0)
            a, N0 = rng.uniform(0.01, 0.5), np.exp(rng.uniform(0.2, 6.0))
            p[0] = a * (M - 1) / (1 - a)
            q = p.copy()
            q[0] /= N0
        P.append(np.log(p / p.sum()))
        Q.append(np.log(q / q.sum()))
    return jnp.asarray(np.array(P)), jnp.asarray(np.array(Q))


def test_prop_3_1_and_hellinger_bound_on_random_models():
    """Prop. D.1 (Cov_N ≤ KL/(log N − 1 + 1/N), N > 1), its simple form (N > e) and Prop. D.4
    (Cov_N ≤ 2N/(√N − 1)² D²_H) on 300 random pairs, all exact. Tolerance 1e-4 (float32 sums)."""
    Ns = jnp.array([1.05, 1.5, 2.0, 3.0, 5.0, 10.0, 100.0, 1e4])
    LP, LQ = random_models(np.random.default_rng(5), 300)

    def exact(lp, lq):
        r = m.log_ratio(lp, lq)
        return m.coverage_exact(lp, r, Ns), m.kl_exact(lp, r), m.hellinger_sq_exact(lp, lq)

    cov, kl, h2 = jax.jit(jax.vmap(exact))(LP, LQ)
    bound = m.kl_coverage_bound(kl[:, None], Ns)
    assert np.all(cov <= bound + 1e-4)
    big = Ns > math.e
    assert np.all(cov[:, big] <= m.kl_coverage_bound_simple(kl[:, None], Ns[big]) + 1e-4)
    assert np.all(cov <= m.hellinger_coverage_bound(h2[:, None], Ns) + 1e-4)
    # the near-tight family comes close: some pair uses more than 90% of the KL bound
    ratio = np.where(cov > 0, cov / bound, 0.0)
    assert ratio[2::3].max() > 0.9
    # float32 results agree with float64
    p64, q64 = np.asarray(LP, np.float64), np.asarray(LQ, np.float64)
    np.testing.assert_allclose(kl, np.sum(np.exp(p64) * (p64 - q64), -1), rtol=1e-4, atol=1e-5)
    h2_64 = 0.5 * np.sum((np.exp(p64 / 2) - np.exp(q64 / 2)) ** 2, -1)
    np.testing.assert_allclose(h2, h2_64, rtol=1e-4, atol=1e-6)


def test_stopped_kl_and_its_bound_on_random_chains():
    """Prop. D.10: Cov_N ≤ 2/(log N − 1) · D_seq,N for N > e, on 60 random chain pairs, with the
    stopped KL computed exactly (every sequence, weights p); D_seq,N ≤ min(log N, KL)."""
    rng = np.random.default_rng(6)
    Ns = jnp.array([3.0, 5.0, 10.0, 100.0])
    for i in range(60):
        p = random_chain(rng, conc=[0.3, 1.0, 3.0][i % 3])
        q = perturb(p, rng, sigma=rng.uniform(0.2, 3.0))
        lp, lq, tkl = seq_logp(p), seq_logp(q), token_kl_np(p, q)
        cov = m.coverage_exact(lp, m.log_ratio(lp, lq), Ns)
        d = m.stopped_kl(tkl, Ns, weights=np.exp(lp))
        d64 = [np.sum(np.exp(lp) * np.minimum(np.log(N), tkl.sum(-1))) for N in np.asarray(Ns)]
        np.testing.assert_allclose(d, d64, rtol=1e-5)
        kl = np.sum(np.exp(lp) * (lp - lq))
        assert np.all(np.asarray(d) <= np.minimum(np.log(Ns), kl) + 1e-5)
        assert np.all(cov <= m.stopped_kl_coverage_bound(d, Ns) + 1e-4)


def test_token_kl_and_per_position(space):
    lp = next_token_logp(space["p"])
    lq = next_token_logp(space["q"])
    tkl = m.token_kl(lp, lq)
    np.testing.assert_allclose(tkl, token_kl_np(space["p"], space["q"]), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(m.per_position_kl(lp, lq), np.mean(tkl, 0), rtol=1e-6)
    # exact sequence KL = E_p Σ_h token KL (chain rule), from the teacher-forced values
    np.testing.assert_allclose(np.sum(np.exp(space["lp"])[:, None] * tkl), space["kl"], rtol=1e-4)
    tok = np.take_along_axis(lq, SEQS[..., None], -1)[..., 0]
    np.testing.assert_allclose(m.per_position_ce(tok), -tok.mean(0), rtol=1e-6)
    # 0·log 0 = 0; teacher > 0 with model 0 -> +inf; both 0 -> 0
    t = jnp.log(jnp.array([[[0.5, 0.5, 0.0]], [[0.5, 0.5, 0.0]]]))
    q = jnp.log(jnp.array([[[0.25, 0.75, 0.0]], [[1.0, 0.0, 0.0]]]))
    k = m.token_kl(t, q)
    assert k[0, 0] == pytest.approx(0.5 * math.log(2) + 0.5 * math.log(2 / 3), rel=1e-6)
    assert k[1, 0] == jnp.inf
    assert m.per_position_kl(t, q)[0] == jnp.inf
    assert float(m.token_kl(t, t)[0, 0]) == 0.0


def test_bernoulli_tightness():
    """Prop. D.2: π_D = Ber(p), π̂ = Ber(p/N) has Cov_N = p exactly, and
    KL/(log N − ½ + 1/(2N)) ≤ p ≤ KL/(log N − 1 + 1/N). The step of N ↦ Cov_N sits at N:
    checked at N(1 ∓ 1e-4), far from the float32 rounding of r (≈ 1e-6) at the tie r = log N."""
    for p in [0.001, 0.01, 0.1, 0.3, 0.5]:
        for N in [2.0, 4.0, 10.0, 100.0]:
            lp = jnp.log(jnp.array([1 - p, p]))
            lq = jnp.log(jnp.array([1 - p / N, p / N]))
            r = m.log_ratio(lp, lq)
            cov = m.coverage_exact(lp, r, jnp.array([N * (1 - 1e-4), N * (1 + 1e-4)]))
            np.testing.assert_allclose(cov, [p, 0.0], rtol=1e-5)
            kl = float(m.kl_exact(lp, r))
            assert p <= float(m.kl_coverage_bound(kl, N)) * (1 + 1e-5)
            assert kl / (math.log(N) - 0.5 + 1 / (2 * N)) <= p
            if p == 0.001:  # tight as p -> 0
                assert p >= 0.99 * float(m.kl_coverage_bound(kl, N))


def comb_pass_at_k(n, c, k):
    return 1 - Fraction(math.comb(n - c, k), math.comb(n, k))


def test_pass_at_k_equals_combinatorics_everywhere():
    """All n ≤ 12, 0 ≤ c ≤ n, 1 ≤ k ≤ n, scalar and array calls; c = 0 gives 0, n − c < k gives 1.
    The jit-able float32 version on n ∈ {1, 5, 12} (each n is a new compile), tolerance 2e-6."""
    jitted = jax.jit(m.pass_at_k_jnp, static_argnums=0)
    for n in range(1, 13):
        c, k = np.meshgrid(np.arange(n + 1), np.arange(1, n + 1), indexing="ij")
        want = np.array([[float(comb_pass_at_k(n, ci, ki)) for ki in range(1, n + 1)]
                         for ci in range(n + 1)])
        assert np.all(want[0] == 0) and np.all(want[c > n - k] == 1)
        np.testing.assert_allclose(m.pass_at_k(n, c, k), want, rtol=0, atol=1e-12)
        for ci in range(n + 1):
            for ki in range(1, n + 1):
                assert m.pass_at_k(n, ci, ki) == pytest.approx(want[ci, ki - 1], abs=1e-12)
        if n in (1, 5, 12):
            np.testing.assert_allclose(jitted(n, c, k), want, rtol=0, atol=2e-6)
    assert m.pass_at_k(200, 0, 1) == 0.0 and m.pass_at_k(200, 1, 1) == pytest.approx(1 / 200)
    np.testing.assert_allclose(m.pass_at_k_jnp(5, jnp.array([0, 2, 5]), 2), [0.0, 0.7, 1.0])
    # counts that arrive as floats (sums of float32 rewards) are accepted when integer-valued
    assert m.pass_at_k(5.0, 2.0, 2) == pytest.approx(0.7)


def test_pass_at_k_unbiased_for_pass_at_n_exact():
    """E_{c ~ Bin(n, p)} pass_at_k(n, c, k) = 1 − (1 − p)^k exactly (float64 sum), and this is
    what pass_at_n_exact returns (float32, tolerance 1e-6)."""
    n = 20
    ps = np.array([0.0, 1e-4, 0.05, 0.3, 0.9, 1.0])
    ks = np.array([1, 2, 5, 20])
    pmf = np.array([[math.comb(n, c) * p**c * (1 - p) ** (n - c) for c in range(n + 1)]
                    for p in ps])
    est = pmf @ m.pass_at_k(n, np.arange(n + 1)[:, None], ks[None, :])  # (len(ps), len(ks))
    np.testing.assert_allclose(est, 1 - (1 - ps[:, None]) ** ks, atol=1e-12)
    per_prompt = jax.vmap(lambda p: m.pass_at_n_exact(p[None], ks.astype(float)))(ps)
    np.testing.assert_allclose(per_prompt, est, atol=1e-6)
    np.testing.assert_allclose(m.pass_at_n_exact(ps, ks.astype(float)), est.mean(0), atol=1e-6)
    # tiny p: relative accuracy from log1p/expm1 (1 − (1 − p)^N in float32 would round to 0)
    assert float(m.pass_at_n_exact(jnp.array([1e-9]), 3.0)) == pytest.approx(3e-9, rel=1e-5)


def test_pass_at_n_exact_monte_carlo():
    """Simulated Best-of-N: 500 prompts × 200 repetitions of N draws; the success rate is within
    4 standard errors of pass_at_n_exact (false alarm ≈ 6e-5 per N)."""
    rng = np.random.default_rng(7)
    p = rng.beta(0.5, 2.0, size=500)
    w = rng.uniform(0.5, 2.0, size=500)
    for N in [1, 4, 16]:
        succ = rng.binomial(N, p[:, None], size=(500, 200)) > 0  # (prompt, repetition)
        rate = succ.mean(1)
        est = np.sum(w * rate) / w.sum()
        se = np.sqrt(np.sum((w / w.sum()) ** 2 * rate * (1 - rate) / 200))
        assert abs(float(m.pass_at_n_exact(p, float(N), weights=w)) - est) < 4 * se


def test_empirical_coverage_matrix_matches_pairwise():
    rng = np.random.default_rng(8)
    L = rng.normal(size=(5, 300)) * 2 - 5
    L[2, :7] = -np.inf  # model 2 gives zero probability to seven samples
    Ns = np.array([1.0, 3.0, 20.0])
    C = np.asarray(m.empirical_coverage_matrix(L, Ns))
    assert C.shape == (5, 5, 3)
    for j in range(5):
        for k in range(5):
            with np.errstate(invalid="ignore"):  # -inf - -inf = NaN counts as not ≥
                d = L[k] - L[j]
            want = np.mean(d[:, None] >= np.log(Ns), axis=0)
            np.testing.assert_allclose(C[j, k], want, atol=1e-6)
            np.testing.assert_allclose(C[j, k], m.empirical_coverage(L[k], L[j], Ns))
    C = np.asarray(m.empirical_coverage_matrix(L, 1.5))
    assert C.shape == (5, 5)
    assert float(m.empirical_coverage(L[0], L[1], 1.5)) == pytest.approx(C[1, 0])
    assert np.all(np.diag(C) == 0)
    assert np.all(C[2, [0, 1, 3, 4]] >= 7 / 300)  # others cover what model 2 misses
    assert not np.any(np.isnan(C))


def _r():
    return jnp.zeros(10)


BAD_INPUTS = [
    (lambda: m.log_ratio(jnp.zeros(3), jnp.zeros(4)), "logp_true"),
    (lambda: m.log_ratio(jnp.zeros((3, 2)), jnp.zeros((3, 2))), "logp_true"),
    (lambda: m.coverage(jnp.zeros(0), [2.0]), "r"),
    (lambda: m.coverage(jnp.array([0.0, jnp.nan]), [2.0]), "r"),
    (lambda: m.coverage(_r(), [0.5, 2.0]), "Ns"),
    (lambda: m.coverage(_r(), [[2.0]]), "Ns"),
    (lambda: m.coverage(_r(), [2.0], weights=jnp.ones(9)), "weights"),
    (lambda: m.coverage(_r(), [2.0], weights=-jnp.ones(10)), "weights"),
    (lambda: m.coverage(_r(), [2.0], weights=jnp.zeros(10)), "weights"),
    (lambda: m.coverage_profile(_r(), [2.0], alpha=1.5), "alpha"),
    (lambda: m.coverage_exact(jnp.zeros(3), _r(), [2.0]), "logp_joint"),
    (lambda: m.kl_with_se(jnp.zeros(1)), "r"),
    (lambda: m.token_kl(jnp.zeros((2, 3, 4)), jnp.zeros((2, 3, 5))), "teacher_logp"),
    (lambda: m.token_kl(jnp.zeros(()), jnp.zeros(())), "teacher_logp"),
    (lambda: m.per_position_ce(jnp.zeros(3)), "token_logp_model"),
    (lambda: m.stopped_kl(jnp.zeros((4, 2)), 0.0), "N"),
    (lambda: m.empirical_coverage_matrix(jnp.zeros(5), 2.0), "L"),
    (lambda: m.pass_at_n_exact(jnp.array([0.5, 1.2]), 2.0), "p_good"),
    (lambda: m.pass_at_n_exact(jnp.array([0.5]), 0.0), "N"),
    (lambda: m.pass_at_k(5, 6, 1), "c"),
    (lambda: m.pass_at_k(5, -1, 1), "c"),
    (lambda: m.pass_at_k(5, 2, 0), "k"),
    (lambda: m.pass_at_k(5, 2, 6), "k"),
    (lambda: m.pass_at_k(0, 0, 1), "n"),
    (lambda: m.pass_at_k(5.5, 2, 1), "n"),
    (lambda: m.pass_at_k(5, np.array([1, 2.5]), 1), "c"),
    (lambda: m.pass_at_k_jnp(5, jnp.array([1, 7]), 1), "c"),
    (lambda: m.pass_at_k_jnp(5, 1, 9), "k"),
    (lambda: m.kl_coverage_bound(1.0, 1.0), "N"),
    (lambda: m.kl_coverage_bound_simple(1.0, 2.0), "N"),
    (lambda: m.hellinger_coverage_bound(0.1, [1.0, 4.0]), "N"),
    (lambda: m.stopped_kl_coverage_bound(0.1, 2.5), "N"),
    (lambda: m.hellinger_sq_exact(jnp.zeros(3), jnp.zeros(2)), "logp"),
]


@pytest.mark.parametrize("call, name", BAD_INPUTS)
def test_bad_inputs_name_the_argument(call, name):
    with pytest.raises((ValueError, TypeError), match=rf"\b{name}\b"):
        call()


def test_traced_values_are_not_checked():
    """Inside jit the value checks are skipped (they would need concrete values); shapes still
    are. An N grid passed as a traced argument works."""
    f = jax.jit(lambda r, Ns: m.coverage(r, Ns))
    np.testing.assert_allclose(f(jnp.array([0.0, 1.0]), jnp.array([1.0, 2.0])), [1.0, 0.5])
    with pytest.raises(ValueError, match="weights"):
        jax.jit(lambda r: m.coverage(r, 2.0, weights=jnp.ones(3)))(jnp.zeros(4))
