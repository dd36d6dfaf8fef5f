"""AutoregressiveLinear: exact scores vs. a position-by-position reference, the sampling law vs.
`exact_joint`, σ⋆² (recursion, enumeration, Monte Carlo, score identity) and the paper's
constructions (Prop. 3.2, Prop. 5.1, Prop. G.1 of arXiv 2510.15020v2)."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats
from scipy.special import logsumexp

from covsim.tasks.base import exact_joint
from covsim.tasks.linear import AutoregressiveLinear as AL
from covsim.tasks.linear import prop_3_2_kl_lower_bound

KEY = jax.random.PRNGKey
# (markov, positional): every lookup-table layout (Cf, Hf) ∈ {V+1, 1} × {H, 1}
LAYOUTS = list(itertools.product([True, False], repeat=2))
ALPHA = 1e-4  # false-alarm probability of every statistical check below


def tiny(markov=True, positional=True, seed=0):
    return AL.random(KEY(seed), V=3, H=3, d=4, X=2, B=1.5, markov=markov,
                     positional=positional, mu=[0.3, 0.7])


def ref_log_prob(task, x, y, theta=None):
    """log π_θ(y|x) in float64, one position at a time, straight from the definition of ϕ."""
    F = np.asarray(task.F, np.float64)
    th = np.asarray(task.theta if theta is None else theta, np.float64)
    Hf, Cf = F.shape[1:3]
    total = 0.0
    for h in range(task.H):
        prev = y[h - 1] if h > 0 else task.V
        z = F[x, h if Hf > 1 else 0, prev if Cf > 1 else 0] @ th
        total += z[y[h]] - logsumexp(z)
    return total


def enum_sigma_sq(task):
    """σ⋆² by brute force over (x, y), float64."""
    xs, ys, lp = exact_joint(task)
    phi = np.asarray(task.features(xs, ys), np.float64)  # (M, H, V, d)
    p = np.exp(np.asarray(task.next_token_log_probs(xs, ys), np.float64))  # (M, H, V)
    mean = np.einsum("mhv,mhvd->mhd", p, phi)
    var = np.einsum("mhv,mhv->m", p, np.sum((phi - mean[:, :, None]) ** 2, -1))
    return float(np.exp(np.asarray(lp, np.float64)) @ var)


# ---- exact scores ----------------------------------------------------------------------
@pytest.mark.parametrize("markov,positional", LAYOUTS)
def test_enumerate_normalised_and_matches_reference(markov, positional):
    task = tiny(markov, positional)
    xs, log_mu = task.prompt_support()
    np.testing.assert_allclose(np.exp(log_mu), [0.3, 0.7], rtol=1e-6)
    for x in np.asarray(xs):
        ys, lp = task.enumerate(jnp.asarray(x))
        assert abs(logsumexp(np.asarray(lp, np.float64))) < 1e-5
        ref = [ref_log_prob(task, int(x[0]), y) for y in np.asarray(ys)]
        np.testing.assert_allclose(lp, ref, atol=2e-5)
    _, _, lj = exact_joint(task)
    assert abs(logsumexp(np.asarray(lj, np.float64))) < 1e-5


def test_logits_paths_and_theta_api_agree():
    task = tiny()  # X·Hf·Cf = 2·3·4 = 24 table rows
    xs, ys, _ = exact_joint(task)  # 54 rows: the table path (24 ≤ 54·3)
    th = jax.random.normal(KEY(5), (task.d,)) * 0.5
    for theta in (task.theta, th):
        direct = jnp.einsum("nhvd,d->nhv", task.features(xs, ys), theta)
        np.testing.assert_allclose(task.logits(theta, xs, ys), direct, atol=1e-5)
        for i in (0, 17, 53):  # one row: the gather path (3 < 24)
            np.testing.assert_allclose(
                task.logits(theta, xs[i:i + 1], ys[i:i + 1]), direct[i:i + 1], atol=1e-5)
        lp = task.log_prob_theta(theta, xs, ys)
        ref = [ref_log_prob(task, int(x[0]), y, theta) for x, y in zip(xs, ys, strict=True)]
        np.testing.assert_allclose(lp, ref, atol=2e-5)
    np.testing.assert_array_equal(task.next_token_log_probs_theta(task.theta, xs, ys),
                                  task.next_token_log_probs(xs, ys))
    # a task is a pytree: the same scores come out of jit
    jitted = jax.jit(lambda t, x, y: t.log_prob(x, y))(task, xs, ys)
    np.testing.assert_allclose(jitted, task.log_prob(xs, ys), atol=1e-6)


# ---- sampling law ----------------------------------------------------------------------
def check_sample_law(task, prompts, responses):
    """Chi-square (cells with expected count < 5 pooled) at p-value threshold ALPHA = 1e-4,
    plus total variation: E[TV] ≤ ½ Σ √(p(1−p)/n) and McDiarmid (TV moves ≤ 1/n per draw)
    gives P(TV > E-bound + √(log(1/ALPHA)/(2n))) ≤ ALPHA."""
    xs, ys, lp = exact_joint(task)
    p = np.exp(np.asarray(lp, np.float64))
    p /= p.sum()
    radix = task.V ** np.arange(task.H - 1, -1, -1)
    cell = np.asarray(prompts[:, 0]) * task.V**task.H + np.asarray(responses) @ radix
    n = cell.size
    counts = np.bincount(cell, minlength=p.size)
    assert counts.size == p.size  # no out-of-range token or prompt
    small = n * p < 5
    obs = np.append(counts[~small], counts[small].sum())
    exp = np.append(n * p[~small], n * p[small].sum())
    keep = exp > 0
    chi2 = np.sum((obs[keep] - exp[keep]) ** 2 / exp[keep])
    pval = stats.chi2.sf(chi2, keep.sum() - 1)
    assert pval > ALPHA, (chi2, pval)
    tv = 0.5 * np.abs(counts / n - p).sum()
    bound = 0.5 * np.sum(np.sqrt(p * (1 - p) / n)) + math.sqrt(math.log(1 / ALPHA) / (2 * n))
    assert tv < bound, (tv, bound)


def test_sample_matches_exact_joint_table_path():
    task = tiny()
    x, y = task.sample(KEY(11), 200_000)
    assert x.shape == (200_000, 1) and y.shape == (200_000, 3) and y.dtype == jnp.int32
    check_sample_law(task, x, y)


def test_sample_matches_exact_joint_gather_path():
    task = tiny(seed=1)  # n·H = 6 lookups < 24 table rows: features gathered per step
    keys = jax.random.split(KEY(12), 60_000)
    x, y = jax.jit(jax.vmap(lambda k: task.sample(k, 2)))(keys)
    check_sample_law(task, x.reshape(-1, 1), y.reshape(-1, 3))


# ---- σ⋆² ------------------------------------------------------------------------------
@pytest.mark.parametrize("markov,positional", LAYOUTS)
def test_sigma_star_sq_recursion_equals_enumeration(markov, positional):
    task = tiny(markov, positional, seed=2)
    exact = float(task.sigma_star_sq())
    np.testing.assert_allclose(exact, enum_sigma_sq(task), rtol=1e-5)
    assert task.sigma_star_sq_by_position().shape == (task.H,)
    np.testing.assert_allclose(jax.jit(lambda t: t.sigma_star_sq())(task), exact, rtol=1e-6)


def test_sigma_star_sq_mc_within_4_se():
    task = AL.random(KEY(3), V=5, H=6, d=6, X=3, B=2.0, positional=True, mu=[0.5, 0.3, 0.2])
    est, se = task.sigma_star_sq_mc(KEY(4), 20_000)
    exact = float(task.sigma_star_sq())
    # |Z| > 4 has probability 6e-5 under the CLT; the s.e. must be informative too
    assert abs(float(est) - exact) < 4 * float(se), (est, se, exact)
    assert 0 < float(se) < 0.02 * exact


def test_sigma_star_sq_is_expected_squared_score():
    task = tiny(seed=4)
    xs, ys, lj = exact_joint(task)
    one = jax.grad(lambda th, x, y: task.log_prob_theta(th, x[None], y[None])[0])
    score = jax.jit(jax.vmap(one, (None, 0, 0)))(task.theta, xs, ys)
    p = np.exp(np.asarray(lj, np.float64))
    g = np.asarray(score, np.float64)
    np.testing.assert_allclose(p @ np.sum(g**2, -1), float(task.sigma_star_sq()), rtol=1e-5)
    np.testing.assert_allclose(p @ g, 0.0, atol=1e-6)  # the score has mean zero at θ⋆


def test_sigma_star_sq_grows_with_pivotal_positions():
    V, H, B = 4, 6, 4.0
    nested = [[], [2], [2, 4], [0, 2, 4], [0, 1, 2, 4], list(range(H))]
    sig = [float(AL.random(KEY(5), V=V, H=H, d=8, X=2, B=B, pivotal=s).sigma_star_sq())
           for s in nested]
    eps = (V - 1) * math.exp(-2 * B)
    delta = 4 * B**2 * eps / (1 + eps) ** 2  # a non-pivotal position's exact contribution
    np.testing.assert_allclose(sig[0], H * delta, rtol=1e-4)
    assert all(b > a for a, b in zip(sig, sig[1:], strict=False)), sig
    for s, v in zip(nested, sig, strict=True):
        k = len(s)
        assert (H - k) * delta * (1 - 1e-4) <= v <= k * B**2 + (H - k) * delta * (1 + 1e-4)


# ---- paper constructions ----------------------------------------------------------------
@pytest.mark.parametrize("theta", [1.0, -0.3])
def test_prop_3_2(theta):
    n, H = 10, 4
    task = AL.prop_3_2(n, H, theta=theta)
    xs, log_mu = task.prompt_support()
    np.testing.assert_allclose(np.exp(log_mu), [1 - 1 / (2 * n), 1 / (2 * n)], rtol=1e-6)
    q = math.exp(theta) / (math.exp(theta) + math.exp(-theta))  # P(y_h = +1 | x = 1)
    ys, lp1 = task.enumerate(jnp.array([1]))
    k = np.asarray(ys).sum(1)  # number of +1 tokens (token 1 ↔ +1)
    np.testing.assert_allclose(np.exp(lp1), q**k * (1 - q) ** (H - k), rtol=1e-5)
    _, lp0 = task.enumerate(jnp.array([0]))
    np.testing.assert_allclose(np.exp(lp0), 2.0**-H, rtol=1e-6)
    # Var(y_h) = 4q(1−q) = 1 − tanh²θ on prompt 1 only
    np.testing.assert_allclose(task.sigma_star_sq(), H / (2 * n) * (1 - math.tanh(theta) ** 2),
                               rtol=1e-5)
    assert prop_3_2_kl_lower_bound(n, H) == AL.prop_3_2_kl_lower_bound(n, H) == H / (4 * n)


def test_prop_3_2_kl_is_linear_in_H():
    # exact sequence KL(π_{θ⋆=1} ‖ π_{θ̂=0}) = µ(1)·H·kl(Ber(q) ‖ Ber(½)) (only prompt 1 counts)
    n = 10
    q = 1 / (1 + math.exp(-2))
    kl_tok = q * math.log(2 * q) + (1 - q) * math.log(2 * (1 - q))
    for H in (1, 3, 6):
        task = AL.prop_3_2(n, H, theta=1.0)
        xs, ys, lj = exact_joint(task)
        lq = task.log_prob_theta(jnp.zeros(1), xs, ys)
        kl = np.exp(np.asarray(lj, np.float64)) @ np.asarray(task.log_prob(xs, ys) - lq, np.float64)
        np.testing.assert_allclose(kl, H / (2 * n) * kl_tok, rtol=1e-5)
        assert kl < prop_3_2_kl_lower_bound(n, H)  # the caveat in its docstring


def test_prop_g1a():
    n, d = 50, 7
    B = math.log(5 * n)
    task = AL.prop_g1a(n, d, B)
    assert (task.ball, task.H, task.V, task.X) == ("linf", 1, d, 1)
    assert float(jnp.max(jnp.abs(task.theta))) <= 1.0
    ys, lp = task.enumerate(jnp.array([0]))
    want = np.full(d, 1 / (d - 1 + 4 * n))
    want[0] = 4 * n / (d - 1 + 4 * n)
    np.testing.assert_allclose(np.exp(lp), want, rtol=1e-5)


def test_prop_5_1_large_eta():
    H, B = 16, 4.0
    eta = 10 / (H * B)
    task, theta0 = AL.prop_5_1_sgd("large_eta", eta, H, B)
    a = eta * H * B / (2 * (eta * H * B - 1))
    assert a <= 5 / 8
    F = np.asarray(task.F)[0, 0, 0]  # tokens {0, 1, 2} ↔ y ∈ {−1, 0, 1}
    np.testing.assert_allclose(F / B, [[a, -math.sqrt(1 - a * a)], [1, 0],
                                       [a, math.sqrt(1 - a * a)]], rtol=1e-6)
    np.testing.assert_allclose(theta0, F[2] / B, rtol=1e-6)
    np.testing.assert_allclose(task.theta, [1, 0])
    y = jax.random.randint(KEY(6), (1, H), 0, 3)
    tok = np.exp(np.asarray(task.next_token_log_probs(jnp.zeros((1, 1), jnp.int32), y))[0])
    z = np.array([B * a, B, B * a])  # the same law at every position, whatever the prefix
    np.testing.assert_allclose(tok, np.broadcast_to(np.exp(z - logsumexp(z)), (H, 3)), rtol=1e-5)


def test_prop_5_1_small_eta():
    H, B, n, N = 64, 8.0, 1000, 16.0
    task, theta0 = AL.prop_5_1_sgd("small_eta", 1e-3, H, B, n=n, N=N)
    p_plus = B * H / (512 * math.e * n * B**2 * math.log(N))
    np.testing.assert_allclose(np.exp(task.log_mu), [p_plus, 1 - p_plus], rtol=1e-5)
    a = np.array([-1.0, 0.0, 1.0])
    F = np.asarray(task.F)[:, 0, 0]  # (prompt, token, d)
    np.testing.assert_allclose(F[0], B * np.stack([a, 0 * a], 1))
    np.testing.assert_allclose(F[1], B * np.stack([0 * a, a], 1))
    np.testing.assert_allclose(task.theta, [0.5, 0.5])
    r = math.log(H / (4 * math.log(N))) / B
    np.testing.assert_allclose(theta0, [r - 1 / B, 0.25], rtol=1e-6)
    sat, _ = AL.prop_5_1_sgd("small_eta", 1e-3, H, 16.0, n=1, N=1.002)
    np.testing.assert_array_equal(np.exp(sat.log_mu), [1.0, 0.0])  # µ(+) = min{1, ·} = 1


# ---- validation -------------------------------------------------------------------------
F_OK = np.ones((1, 1, 1, 2, 1)) / 2


@pytest.mark.parametrize("make,name", [
    (lambda: AL.create(np.ones((1, 1, 2, 1)), [0.1], 2), "F"),
    (lambda: AL.create(np.ones((1, 3, 1, 2, 1)), [0.1], 2), "F"),
    (lambda: AL.create(np.ones((1, 1, 2, 2, 1)), [0.1], 2), "F"),
    (lambda: AL.create(np.ones((1, 1, 1, 1, 1)), [0.1], 2), "V"),
    (lambda: AL.create(F_OK, [0.1], 0), "H"),
    (lambda: AL.create(F_OK, [2.0], 2), "theta"),
    (lambda: AL.create(F_OK, [0.1, 0.1], 2), "theta"),
    (lambda: AL.create(F_OK, [0.1], 2, mu=[0.5, 0.6]), "mu"),
    (lambda: AL.create(F_OK, [0.1], 2, mu=[0.5, 0.5]), "mu"),
    (lambda: AL.create(F_OK, [0.1], 2, B=0.1), "B"),
    (lambda: AL.create(F_OK, [0.1], 2, R=0.0), "R"),
    (lambda: AL.create(F_OK, [0.1], 2, ball="l3"), "ball"),
    (lambda: AL.random(KEY(0), V=1, H=2, d=2), "V"),
    (lambda: AL.random(KEY(0), V=2, H=2, d=0), "d"),
    (lambda: AL.random(KEY(0), V=2, H=2, d=2, B=0.0), "B"),
    (lambda: AL.random(KEY(0), V=2, H=2, d=2, theta_norm=1.5), "theta_norm"),
    (lambda: AL.random(KEY(0), V=2, H=3, d=2, pivotal=[3]), "pivotal"),
    (lambda: AL.prop_3_2(0, 2), "n"),
    (lambda: AL.prop_3_2(2, 2, theta=1.5), "theta"),
    (lambda: AL.prop_5_1_sgd("medium", 1.0, 4, 4.0), "case"),
    (lambda: AL.prop_5_1_sgd("large_eta", 0.1, 4, 4.0), "eta"),
    (lambda: AL.prop_5_1_sgd("small_eta", 1.0, 4, 4.0, n=10, N=4), "eta"),
    (lambda: AL.prop_5_1_sgd("small_eta", 0.1, 4, 4.0, N=4), "n"),
    (lambda: AL.prop_5_1_sgd("small_eta", 0.1, 4, 4.0, n=10, N=1), "N"),
    (lambda: AL.prop_5_1_sgd("small_eta", 1e-7, 10**6, 1.0, n=10, N=4), "B"),
    (lambda: AL.prop_g1a(10, 1, 5.0), "d"),
    (lambda: AL.prop_g1a(1000, 4, 1.0), "B"),
])
def test_bad_arguments_name_the_argument(make, name):
    with pytest.raises((ValueError, TypeError), match=rf"argument[s]? .*\b{name}\b"):
        make()
