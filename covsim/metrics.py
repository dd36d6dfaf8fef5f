"""Coverage profile, KL / cross-entropy, Pass@N and the paper's bounds: pure functions of log-probs.

Everything here is a function of the per-sample log density ratio (Def. 1.1, Remark 2.1)

    r(x, y) = log π_D(y|x) − log π̂(y|x)           (sequence level: summed over the H tokens)
    Cov_N   = P_{(x,y) ~ π_D}[ r ≥ log N ]         `coverage`     (N ≥ 1; smaller is better)
    KL      = E_{π_D}[ r ]                          `kl`           (grows with H)
    CE      = E_{π_D}[ −log π̂(y|x) ]               `cross_entropy`

Cov_N is the upper tail of r and KL its mean, so the coverage profile N ↦ Cov_N refines KL.
Conventions shared by every function:

* log π̂ = −inf (model gives zero probability) makes r = +inf: never covered, KL = +inf, no NaN.
  log π_D = −inf (outside the data's support) makes r = −inf; such samples never occur under π_D.
* An argument `N` / `Ns` may be a scalar or a 1-D grid; outputs carry its shape at the end.
* `weights` (n,) are importance or class weights, normalised inside; None means equal weights.
* Functions are pure jnp and jit/vmap-able. Argument checks (via covsim.checks) look at shapes
  always and at values only when they are concrete, never at traced values inside `jit`.

Map: log_ratio, coverage, coverage_profile, coverage_exact · kl, kl_with_se, kl_exact,
cross_entropy, token_kl, per_position_ce, per_position_kl, stopped_kl · empirical_coverage,
empirical_coverage_matrix · wilson, wilson_score · pass_at_n_exact, pass_at_k, pass_at_k_jnp ·
kl_coverage_bound, kl_coverage_bound_simple, hellinger_coverage_bound, stopped_kl_coverage_bound,
hellinger_sq_exact.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import ndtri

from covsim.checks import (
    DEFAULT_ALPHA,
    check_float,
    check_int,
    check_Ns,
    check_same_shape,
    check_shape,
)

Array = jax.Array
f32 = jnp.float32


# ---- the log ratio and the coverage profile ------------------------------------------------


def log_ratio(logp_true: Array, logp_model: Array) -> Array:
    """r = log π_D − log π̂, (n,), (n,) -> (n,).

    logp_model = −inf gives r = +inf (uncovered). logp_true = −inf gives r = −inf whatever
    logp_model is (instead of −inf − (−inf) = NaN): a response outside π_D's support is never
    counted as uncovered; under π_D it has probability 0."""
    _check_vector("logp_true", logp_true)
    _check_vector("logp_model", logp_model)
    check_same_shape(("logp_true", "logp_model"), logp_true, logp_model)
    lt, lm = jnp.asarray(logp_true, f32), jnp.asarray(logp_model, f32)
    return jnp.where(lt == -jnp.inf, -jnp.inf, lt - lm)


def coverage(r: Array, Ns: Array, weights: Array | None = None) -> Array:
    """Cov_N = P[r ≥ log N] for each N: r (n,), Ns (k,) or scalar -> shape of Ns.

    With weights w: Σ_i w_i 1[r_i ≥ log N] / Σ_i w_i. Non-increasing in N by construction (the
    indicator is monotone in N); r = +inf counts as uncovered for every N. A tie r = log N
    counts as uncovered (see `log_threshold`); a NaN r (possible only under jit, where values
    are not checked) makes the result NaN: it is reported, never counted as covered."""
    _check_vector("r", r)
    logN = log_threshold("Ns", Ns)
    w = _weights_or_none(weights, r)
    return _average(_hits(r, logN), w)


class CoverageProfile(NamedTuple):
    """Cov_N on a grid with a Wilson score interval. Every field has the shape of the N grid."""

    N: Array  # thresholds N
    cov: Array  # point estimate of Cov_N
    lo: Array  # lower end of the 1 − alpha Wilson interval
    hi: Array  # upper end
    n: Array  # sample size the interval used (Kish effective size when weighted)


def coverage_profile(
    r: Array, Ns: Array, weights: Array | None = None, alpha: float = DEFAULT_ALPHA
) -> CoverageProfile:
    """Cov_N with a two-sided 1 − alpha **Wilson score** interval, r (n,), Ns (k,).

    For an estimate p̂ from n draws and z = Φ⁻¹(1 − alpha/2) the interval is centre ± half,
        centre = (p̂ + z²/2n) / (1 + z²/n),  half = z/(1 + z²/n) · sqrt(p̂(1−p̂)/n + z²/4n²);
    it is [0, z²/(n + z²)] at p̂ = 0 and never leaves [0, 1].
    With weights, n is Kish's effective sample size (Σw)² / Σw² (an approximation: it treats
    the weighted mean as a mean of n_eff unweighted draws)."""
    _check_vector("r", r)
    if _concrete(alpha):
        check_float("alpha", float(np.asarray(alpha)), 0.0, 1.0, low_open=True, high_open=True)
    N = _grid("Ns", Ns)
    w = _weights_or_none(weights, r)
    cov = _average(_hits(r, log_threshold("Ns", Ns)), w)
    if w is None:
        n = jnp.asarray(np.shape(r)[0], f32)
    else:
        n = jnp.sum(w) ** 2 / jnp.sum(w**2)
    lo, hi = wilson(cov, n, alpha)
    return CoverageProfile(N, cov, lo, hi, jnp.broadcast_to(n, N.shape))


def coverage_exact(logp_joint: Array, r: Array, Ns: Array) -> Array:
    """Σ_i p_i 1[r_i ≥ log N] over an enumerated space, p_i = exp(logp_joint_i).

    logp_joint (M,) is log µ(x) + log π_D(y|x) for every (x, y); it is not renormalised, so a
    subset of the space gives that subset's share. r (M,), Ns (k,) or scalar -> shape of Ns."""
    _check_vector("logp_joint", logp_joint)
    _check_vector("r", r)
    check_same_shape(("logp_joint", "r"), logp_joint, r)
    logN = log_threshold("Ns", Ns)
    return _wsum(_hits(r, logN), jnp.exp(jnp.asarray(logp_joint, f32)))


# ---- KL and cross-entropy --------------------------------------------------------------------


def kl(r: Array, weights: Array | None = None) -> Array:
    """Monte-Carlo KL(π_D ‖ π̂) = (weighted) mean of r, (n,) -> ().

    +inf if any r of positive weight is +inf; −inf only if some r is −inf and none is +inf."""
    _check_vector("r", r)
    return _average(jnp.asarray(r, f32), _weights_or_none(weights, r))


def kl_with_se(r: Array) -> tuple[Array, Array]:
    """(mean of r as in `kl`, its standard error std(r, ddof=1)/√n), r (n,) with n ≥ 2.

    If any r is infinite the standard error is reported as +inf (not NaN)."""
    _check_vector("r", r, min_size=2)
    r = jnp.asarray(r, f32)
    infinite = jnp.any(jnp.isinf(r))
    se = jnp.std(jnp.where(infinite, 0.0, r), ddof=1) / jnp.sqrt(r.shape[0])
    return _average(r, None), jnp.where(infinite, jnp.inf, se)


def kl_exact(logp_joint: Array, r: Array) -> Array:
    """Σ_i p_i r_i over an enumerated space, (M,), (M,) -> (); terms with p_i = 0 are 0 (0·log 0),
    and the result is +inf if some p_i > 0 has r_i = +inf."""
    _check_vector("logp_joint", logp_joint)
    _check_vector("r", r)
    check_same_shape(("logp_joint", "r"), logp_joint, r)
    return _wsum(jnp.asarray(r, f32), jnp.exp(jnp.asarray(logp_joint, f32)))


def cross_entropy(logp_model: Array, weights: Array | None = None) -> Array:
    """Sequence-level CE = mean of −log π̂(y|x) over y ~ π_D, (n,) -> (); +inf if any is −inf."""
    _check_vector("logp_model", logp_model)
    return _average(-jnp.asarray(logp_model, f32), _weights_or_none(weights, logp_model))


def token_kl(teacher_logp: Array, model_logp: Array) -> Array:
    """Exact per-token KL(π_D(·|x,y_<h) ‖ π̂(·|x,y_<h)) along the given prefixes.

    teacher_logp, model_logp (..., V), e.g. (n, H, V) -> (n, H):
    Σ_v p_v (log p_v − log q_v). Terms with p_v = 0
    are 0 (0·log 0); p_v > 0 with q_v = 0 gives +inf. Clipped at 0 (rounding can give −1e-8)."""
    if np.ndim(teacher_logp) < 1:
        raise ValueError("argument teacher_logp must have a last axis over the vocabulary V")
    check_same_shape(("teacher_logp", "model_logp"), teacher_logp, model_logp)
    _check_nonempty("teacher_logp", teacher_logp)
    lp, lq = jnp.asarray(teacher_logp, f32), jnp.asarray(model_logp, f32)
    p = jnp.exp(lp)
    terms = jnp.where(p > 0, p * (lp - lq), 0.0)
    return jnp.maximum(jnp.sum(terms, axis=-1), 0.0)


def per_position_ce(token_logp_model: Array) -> Array:
    """CE at each position h: mean over samples of −log π̂(y_h|x,y_<h), (n, H) -> (H,)."""
    check_shape("token_logp_model", token_logp_model, (None, None))
    _check_nonempty("token_logp_model", token_logp_model)
    return _average(-jnp.asarray(token_logp_model, f32), None)


def per_position_kl(teacher_logp: Array, model_logp: Array) -> Array:
    """KL at each position h: mean over samples of `token_kl`, (n, H, V) ×2 -> (H,).

    Its sum over h estimates the sequence KL (with lower variance than `kl`, the per-token
    divergences being exact given the prefix)."""
    return _average(token_kl(teacher_logp, model_logp), None)


def stopped_kl(token_kl: Array, N: Array, weights: Array | None = None) -> Array:
    """Stopped KL D_seq,N = E_{π_D}[ min{log N, Σ_h KL_h} ] (Prop. D.10), always ≤ log N.

    token_kl (n, H): per-token KLs along samples of π_D (from `token_kl`); N scalar or (k,).
    For an enumerated space pass every sequence with weights = p(x, y) to get the exact value."""
    check_shape("token_kl", token_kl, (None, None))
    _check_nonempty("token_kl", token_kl)
    logN = log_threshold("N", N)
    s = jnp.sum(jnp.asarray(token_kl, f32), axis=-1)
    s = s.reshape(s.shape + (1,) * logN.ndim)
    return _average(jnp.minimum(s, logN), _weights_or_none(weights, token_kl))


# ---- empirical coverage between two models (tournaments, §6.3) ----------------


def empirical_coverage(logp_a: Array, logp_b: Array, N: Array) -> Array:
    """Ĉov_N(π_a ‖ π_b) = mean_i 1[log π_a(y_i|x_i) − log π_b(y_i|x_i) ≥ log N], (x_i, y_i) ~ π_D.

    logp_a, logp_b (n,); N scalar or (k,) -> shape of N. With π_a = π_D it estimates Cov_N(π_b)."""
    return coverage(log_ratio(logp_a, logp_b), N)


def empirical_coverage_matrix(L: Array, N: Array) -> Array:
    """All pairs: L (K, n) log-probs of the same n samples under K models -> (K, K) + shape(N),
    entry [j, k] = Ĉov_N(π_k ‖ π_j) (row j is the candidate, column k the challenger).

    The simple tournament picks argmin_j max_k of it (Eq. 29); the diagonal is 0 for N > 1."""
    check_shape("L", L, (None, None))
    _check_nonempty("L", L)
    _grid("N", N)
    L = jnp.asarray(L, f32)
    row = lambda lj: jax.vmap(lambda lk: empirical_coverage(lk, lj, N))(L)
    return jax.vmap(row)(L)


# ---- Pass@N -----------------------------------------------------------------------------------


def pass_at_n_exact(p_good: Array, N: Array, weights: Array | None = None) -> Array:
    """Pass@N = mean over prompts of 1 − (1 − p)^N, p = π̂(S_x|x) the model's success probability.

    p_good (m,), N scalar or (k,) -> shape of N. Computed as −expm1(N · log1p(−p)), accurate
    for tiny p and exact at p = 1. weights: prompt weights µ(x), normalised inside."""
    _check_vector("p_good", p_good)
    if _concrete(p_good):
        a = np.asarray(p_good, np.float64)
        if np.any(~(a >= 0)) or np.any(a > 1):
            raise ValueError(
                f"argument p_good must have entries in [0, 1], got min {a.min()}, max {a.max()}"
            )
    N = _grid("N", N)
    p = jnp.asarray(p_good, f32)
    p = p.reshape(p.shape + (1,) * N.ndim)
    return _average(-jnp.expm1(N * jnp.log1p(-p)), _weights_or_none(weights, p_good))


def pass_at_k(n, c, k):
    """Unbiased pass@k of Chen et al. (2021) from n samples with c correct:

        1 − C(n−c, k)/C(n, k) = 1 − Π_{i=n−c+1..n} (1 − k/i),

    which is 1 when n − c < k and 0 when c = 0. Numbers give a float, arrays (broadcast) a
    float64 array; integer values with 1 ≤ n, 0 ≤ c ≤ n, 1 ≤ k ≤ n. NumPy: see pass_at_k_jnp."""
    _check_counts(n, c, k)
    n_, c_, k_ = np.broadcast_arrays(np.asarray(n), np.asarray(c), np.asarray(k))
    out = np.empty(n_.shape)
    for i in np.ndindex(n_.shape):
        out[i] = _pass_at_k_one(int(n_[i]), int(c_[i]), int(k_[i]))
    return float(out) if out.ndim == 0 else out


def _pass_at_k_one(n: int, c: int, k: int) -> float:
    if c == 0:  # no correct sample: 0 (some implementations wrongly return 1 here)
        return 0.0
    if n - c < k:  # every k-subset contains a correct sample
        return 1.0
    return 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def pass_at_k_jnp(n: int, c: Array, k: Array) -> Array:
    """`pass_at_k` in jnp for use inside jit: n a Python int (the number of samples per prompt,
    static), c and k integer-valued arrays of any dtype (may be traced; broadcast together)
    -> float32 array. Computes −expm1(Σ_{i=n−c+1..n} log1p(−k/i)) over arange(1, n+1), masked."""
    n = check_int("n", n, 1)
    _check_counts(n, c if _concrete(c) else None, k if _concrete(k) else None)
    i = jnp.arange(1, n + 1, dtype=f32)
    c = jnp.asarray(c, f32)[..., None]
    k = jnp.asarray(k, f32)[..., None]
    in_prod = (i > n - c) & (i > k)  # i > k always holds in the product when n − c ≥ k
    log_prod = jnp.sum(jnp.where(in_prod, jnp.log1p(-k / i), 0.0), axis=-1)
    return jnp.where(n - c[..., 0] < k[..., 0], 1.0, -jnp.expm1(log_prod))


# ---- bounds on Cov_N (Prop. 3.1, App. D) ---------------------------------------------------------


def kl_coverage_bound(kl: Array, N: Array, xp=jnp) -> Array:
    """Prop. 3.1 in its exact form (Prop. D.1): Cov_N ≤ KL / (log N − 1 + 1/N), valid for N > 1.

    log N − 1 + 1/N = f(N)/N with f(x) = x log x − x + 1; it is tight as p → 0 for
    π_D = Ber(p), π̂ = Ber(p/N) (Prop. D.2). Broadcasts kl against N; values > 1 are vacuous.
    xp = np evaluates it in float64 on the host (the claims' frames)."""
    N, kl = _grid_xp("N", N, 1.0, xp), _as_xp(kl, xp)
    return kl / (xp.log(N) - 1 + 1 / N)


def kl_coverage_bound_simple(kl: Array, N: Array, xp=jnp) -> Array:
    """Prop. 3.1 as stated in the paper: Cov_N ≤ KL / log(N/e), valid for N > e (weaker than
    `kl_coverage_bound`, since log N − 1 + 1/N > log N − 1). xp as in `kl_coverage_bound`."""
    N, kl = _grid_xp("N", N, math.e, xp), _as_xp(kl, xp)
    return kl / (xp.log(N) - 1)


def _as_xp(a, xp):
    return np.asarray(a, np.float64) if xp is np else jnp.asarray(a, f32)


def _grid_xp(name: str, N, above: float, xp):
    """`_grid` (float32 jnp), or for xp = np the same checks on concrete float64 values."""
    if xp is not np:
        return _grid(name, N, above=above)
    a = np.asarray(N, np.float64)
    for v in np.unique(np.ravel(a)):
        check_float(name, float(v), above, low_open=True)
    return a


def hellinger_coverage_bound(h2: Array, N: Array) -> Array:
    """Prop. D.4: Cov_N ≤ 2N / (√N − 1)² · D²_H(π_D, π̂), valid for N > 1."""
    N = _grid("N", N, above=1.0)
    return 2 * N / (jnp.sqrt(N) - 1) ** 2 * jnp.asarray(h2, f32)


def stopped_kl_coverage_bound(d_seq: Array, N: Array) -> Array:
    """Prop. D.10: Cov_N ≤ 2 / (log N − 1) · D_seq,N, valid for N > e, where d_seq is the stopped
    KL at the same N (`stopped_kl(token_kl, N)`)."""
    N = _grid("N", N, above=math.e)
    return 2 / (jnp.log(N) - 1) * jnp.asarray(d_seq, f32)


def hellinger_sq_exact(logp: Array, logq: Array) -> Array:
    """Squared Hellinger distance ½ Σ_i (√p_i − √q_i)² over an enumerated space, (M,), (M,) -> ().

    With joint log-probs log µ(x) + log π(y|x) this is E_µ D²_H(π_D(·|x), π̂(·|x)), the
    quantity in `hellinger_coverage_bound`."""
    _check_vector("logp", logp)
    _check_vector("logq", logq)
    check_same_shape(("logp", "logq"), logp, logq)
    sp = jnp.exp(0.5 * jnp.asarray(logp, f32))
    sq = jnp.exp(0.5 * jnp.asarray(logq, f32))
    return 0.5 * jnp.sum((sp - sq) ** 2)


# ---- private helpers (jitted: in eager calls one compile per shape beats one per op) --------


def _z(alpha) -> Array:
    """z = Φ⁻¹(1 − alpha/2) as −Φ⁻¹(alpha/2): in float32, 1 − alpha/2 rounds to 1 (z = inf,
    NaN intervals) for alpha ≲ 6e-8, alpha/2 does not. Concrete alpha: float64 on the host."""
    if _concrete(alpha):
        return jnp.asarray(-NormalDist().inv_cdf(float(np.asarray(alpha)) / 2), f32)
    return -ndtri(jnp.asarray(alpha, f32) / 2)


def wilson(p: Array, n: Array, alpha) -> tuple[Array, Array]:
    """Wilson score interval (lo, hi) for a proportion p from n draws at level 1 − alpha
    (float32 jnp, jit-able; `wilson_score(..., xp=np)` is the same formula in float64)."""
    return _wilson_z(p, n, _z(alpha))


def wilson_score(p, n, z, xp=jnp):
    """The Wilson score interval (lo, hi) for a proportion p from n draws at normal quantile
    z, in the array namespace `xp` (jnp: float32 under jit; np: float64 on the host).

    Computed for q = min(p, 1 − p) and mirrored: `up` = centre + half has no cancellation and
    the two ends multiply to q²/d, so the lower end is exactly 0 at q = 0 (centre − half is
    not). Equal to centre ∓ half, centre = (p + z²/2n)/d, half = z/d · √(p(1−p)/n + z²/4n²),
    d = 1 + z²/n."""
    q = xp.minimum(p, 1 - p)
    d = 1 + z**2 / n
    up = (q + z**2 / (2 * n)) / d + z / d * xp.sqrt(q * (1 - q) / n + z**2 / (4 * n**2))
    down = q**2 / (d * up)
    flip = p > 0.5
    lo = xp.where(flip, 1 - up, down)
    hi = xp.where(flip, 1 - down, up)
    return xp.clip(lo, 0.0, 1.0), xp.clip(hi, 0.0, 1.0)


_wilson_z = jax.jit(wilson_score)


def log_threshold(name: str, N) -> Array:
    """The float32 threshold t with `r ≥ t` ⇔ "r ≥ log N", N scalar or (k,) -> same shape.

    For concrete N, log N is taken in float64 on the host and rounded to the nearest float32:
    the same number as a float32 r computed as log N (`np.float32(math.log(N))`), so the tie
    r = log N — the π̂ = π_D/N case where Prop. D.2's bound is tight — always counts as
    uncovered (XLA's float32 log(7) is one ulp above the correctly rounded value, which
    missed it), and N beyond float32's range (N = 1e39: log N ≈ 89.8) stays exact. A traced N
    (inside jit) falls back to float32 jnp.log."""
    if _concrete(N):
        a = check_Ns(name, N)
        return jnp.asarray(np.log(a).astype(np.float32).reshape(np.shape(N)))
    return jnp.log(jnp.asarray(N, f32))


@jax.jit
def _hits(r: Array, logN: Array) -> Array:
    """1[r_i ≥ log N] as float32, r (n,), logN (k,) or () -> (n, k) or (n,); NaN where r is NaN
    (a NaN is never a hit nor a miss: it makes every average it enters NaN)."""
    r = jnp.asarray(r, f32)
    r = r.reshape(r.shape + (1,) * logN.ndim)
    return jnp.where(jnp.isnan(r), jnp.nan, (r >= logN).astype(f32))


@jax.jit
def _wsum(x: Array, w: Array) -> Array:
    """Σ_i w_i x_i over axis 0 (x (n, ...), w (n,)). Terms with w_i = 0 are dropped (0·inf = 0),
    and the sum is +inf wherever some w_i > 0 meets x_i = +inf, so ±inf never make NaN."""
    w = w.reshape(w.shape + (1,) * (x.ndim - 1))
    pos = w > 0
    s = jnp.sum(jnp.where(pos, w * x, 0.0), axis=0)
    return jnp.where(jnp.any(pos & (x == jnp.inf), axis=0), jnp.inf, s)


@jax.jit
def _average(x: Array, w: Array | None) -> Array:
    """Mean over axis 0 (w None) or weighted mean with w normalised; +inf rules as in _wsum."""
    if w is None:
        return jnp.where(jnp.any(x == jnp.inf, axis=0), jnp.inf, jnp.mean(x, axis=0))
    return _wsum(x, w / jnp.sum(w))


def _concrete(*xs) -> bool:
    """True when no argument is a tracer, i.e. its values can be checked."""
    return not any(isinstance(x, jax.core.Tracer) for x in xs)


def _check_nonempty(name: str, x) -> None:
    if np.size(x) == 0:
        raise ValueError(f"argument {name} must be non-empty, got shape {np.shape(x)}")


def _check_vector(name: str, x, min_size: int = 1) -> None:
    """A 1-D array with at least min_size entries and (when concrete) no NaN."""
    check_shape(name, x, (None,))
    shape = np.shape(x)
    if shape[0] < min_size:
        raise ValueError(f"argument {name} must have at least {min_size} entries, got {shape}")
    if _concrete(x) and np.any(np.isnan(np.asarray(x, np.float64))):
        raise ValueError(f"argument {name} must not contain NaN")


def _grid(name: str, N, above: float | None = None) -> Array:
    """N as a float32 array (scalar or 1-D); concrete values must be ≥ 1 (or > `above`)."""
    if np.ndim(N) > 1:
        raise ValueError(f"argument {name} must be a number or a 1-D grid, got shape {np.shape(N)}")
    if _concrete(N):
        a = check_Ns(name, N).reshape(np.shape(N))
        if above is not None:
            for v in np.ravel(a):
                check_float(name, float(v), above, low_open=True)
        with np.errstate(over="ignore"):  # N > 3.4e38 is +inf in float32 (log N is not)
            return jnp.asarray(a.astype(np.float32))
    return jnp.asarray(N, f32)


def _weights_or_none(weights, like) -> Array | None:
    """Check weights (n,) against `like` (n, ...): finite, ≥ 0, positive sum (when concrete)."""
    if weights is None:
        return None
    check_shape("weights", weights, (np.shape(like)[0],))
    if _concrete(weights):
        w = np.asarray(weights, np.float64)
        if np.any(~np.isfinite(w)) or np.any(w < 0) or not w.sum() > 0:
            raise ValueError(
                "argument weights must be finite and ≥ 0 with a positive sum, "
                f"got min {w.min()}, max {w.max()}, sum {w.sum()}"
            )
    return jnp.asarray(weights, f32)


def _check_counts(n, c=None, k=None) -> None:
    """Integer values with n ≥ 1, 0 ≤ c ≤ n, 1 ≤ k ≤ n elementwise (c or k None: not checked)."""
    n = np.asarray(n, np.float64)
    rules = [("n", n, 1, np.inf, "an integer ≥ 1")]
    if c is not None:
        rules.append(("c", np.asarray(c, np.float64), 0, n, "an integer in [0, n]"))
    if k is not None:
        rules.append(("k", np.asarray(k, np.float64), 1, n, "an integer in [1, n]"))
    for name, x, low, high, allowed in rules:
        x, high = np.broadcast_arrays(x, high)
        bad = ~((x == np.round(x)) & (x >= low) & (x <= high))  # NaN is bad too
        if np.any(bad):
            where = "" if name == "n" else f" where n = {np.broadcast_to(n, x.shape)[bad][0]:g}"
            raise ValueError(f"argument {name} must be {allowed}, got {x[bad][0]:g}{where}")
