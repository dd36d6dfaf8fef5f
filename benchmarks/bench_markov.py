"""Sample and exactly score n sequences of a first-order Markov chain: covsim vs plain NumPy.

    python benchmarks/bench_markov.py [--n 100000 --H 256 --V 16 --repeats 5]

Both sides use the same transition table. covsim: jitted `sample` and `log_prob` (compile
excluded by a warm-up call, `block_until_ready`). NumPy: what a researcher would write,
vectorised over n with a Python loop over positions and inverse CDF by comparing a uniform
with the cumulative row. Medians over repeats (total = sample + score medians); the ratio
is NumPy time / covsim time.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from covsim.tasks.markov import MarkovChain


def numpy_sample(rng: np.random.Generator, cdf: np.ndarray, n: int, H: int) -> np.ndarray:
    """(n, H) int32 from a first-order chain: cdf (V+1, V), row V = BOS."""
    V = cdf.shape[1]
    u = rng.random((H, n))
    y = np.empty((n, H), np.int32)
    c = np.full(n, V)
    for h in range(H):
        t = np.minimum((cdf[c] < u[h][:, None]).sum(1), V - 1)
        y[:, h] = t
        c = t
    return y


def numpy_log_prob(log_T: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(n,) exact log-probabilities: log_T (V+1, V), contexts = previous token or BOS."""
    V = log_T.shape[1]
    prev = np.concatenate([np.full((y.shape[0], 1), V), y[:, :-1]], axis=1)
    return log_T[prev, y].sum(1)


def timed(f, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for r in range(repeats):
        t0 = time.perf_counter()
        out = f(r)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--H", type=int, default=256)
    ap.add_argument("--V", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)

    task = MarkovChain.random(jax.random.key(a.seed), V=a.V, H=a.H)  # first order, stationary
    log_T = np.asarray(task.log_T[0, 0], np.float64)  # (V+1, V)
    cdf = np.cumsum(np.exp(log_T), axis=1)

    sample = jax.jit(lambda t, k: t.sample(k, a.n)[1])
    score = jax.jit(lambda t, y: t.log_prob(jnp.zeros((y.shape[0], 0), jnp.int32), y))
    key = jax.random.key(a.seed + 1)
    score(task, sample(task, key)).block_until_ready()  # compile both

    def jax_sample(r):
        return sample(task, jax.random.fold_in(key, r)).block_until_ready()

    t_js, y_j = timed(jax_sample, a.repeats)
    t_jl, lp_j = timed(lambda r: score(task, y_j).block_until_ready(), a.repeats)

    rng = np.random.default_rng(a.seed)
    t_ns, y_n = timed(lambda r: numpy_sample(rng, cdf, a.n, a.H), a.repeats)
    t_nl, lp_n = timed(lambda r: numpy_log_prob(log_T, y_n), a.repeats)

    # sanity: the same sequences score alike (float32 vs float64), and the two samplers'
    # mean log-probabilities agree within 5 standard errors
    lp_j, lp_n = np.asarray(lp_j, np.float64), np.asarray(lp_n)
    cross = numpy_log_prob(log_T, np.asarray(y_j))
    score_err = float(np.max(np.abs(cross - lp_j) / np.maximum(1.0, np.abs(cross))))
    z = (lp_j.mean() - lp_n.mean()) / math.sqrt(lp_j.var() / a.n + lp_n.var() / a.n)

    print(f"first-order Markov chain, V={a.V}, H={a.H}, n={a.n}, median of {a.repeats}; "
          f"{jax.devices()[0].platform}, {jax.device_count()} device(s)")
    print(f"{'':8}{'covsim (s)':>12}{'numpy (s)':>12}{'numpy/covsim':>14}")
    for name, tj, tn in [("sample", t_js, t_ns), ("score", t_jl, t_nl),
                         ("total", t_js + t_jl, t_ns + t_nl)]:
        print(f"{name:8}{tj:12.3f}{tn:12.3f}{tn / tj:14.2f}")
    print(f"mean log-prob: covsim {lp_j.mean():.3f}, numpy {lp_n.mean():.3f} (z = {z:+.2f}); "
          f"max relative gap between their scores of the same sequences: {score_err:.1e}")
    if abs(z) > 5 or score_err > 1e-5:
        raise SystemExit("sanity check failed: the implementations disagree")


if __name__ == "__main__":
    main()
