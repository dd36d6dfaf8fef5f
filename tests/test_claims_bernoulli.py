"""covsim.claims.bernoulli: the explicit constant C of the coverage bound (checked against the
exact Binomial law), the runner's per-dataset values, and the check (PASS and FAIL)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from covsim.claims import CLAIMS
from covsim.claims.bernoulli import C_BOUND, check, upper_quantile
from covsim.config import load_config
from covsim.results import RunResult, write_run
from covsim.runners.closed_form import run_bernoulli
from covsim.sweep import cell_config, expand_grid
from covsim.tasks.bernoulli import bernoulli_cov, bernoulli_kl

ROOT = Path(__file__).resolve().parents[1]
TOML = ROOT / "experiments" / "bernoulli.toml"
NS = [2.0, 4.0, 16.0]


def _binom_pmf(n: int, p: float) -> np.ndarray:
    k = np.arange(n + 1)
    lg = np.array([math.lgamma(n + 1) - math.lgamma(j + 1) - math.lgamma(n - j + 1) for j in k])
    return np.exp(lg + k * math.log(p) + (n - k) * math.log1p(-p))


def _exact_quantile(n, p, N, delta):
    """(1 − δ)-quantile of Cov_N(Ber(p) ‖ Ber(min(k/n, ½))) over k ~ Binomial(n, p), exactly."""
    pmf = _binom_pmf(n, p)
    cov = bernoulli_cov(p, np.minimum(np.arange(n + 1) / n, 0.5), N)
    order = np.argsort(cov, kind="stable")
    cdf = np.cumsum(pmf[order])
    return float(cov[order][np.searchsorted(cdf, 1 - delta - 1e-12)])


@pytest.mark.parametrize("p", [0.003, 0.01, 0.05, 0.2])
def test_constant_bounds_the_exact_quantile(p):
    """The docstring's derivation, checked on the exact law: for every n, N ≥ 2 and δ, the
    (1 − δ)-quantile of Cov_N is ≤ C·log(1/δ)/n with C = 2/(1 − ln 2); and C = 1 would not do
    (the quantile equals p⋆ somewhere above log(1/δ)/n), so the constant is not decoration."""
    worst_c1 = 0.0
    for n in (1, 3, 10, 30, 100, 300, 1000, 3000):
        for delta in (0.1, 0.01, 0.001):
            bound = math.log(1 / delta) / n
            for N in NS:
                q = _exact_quantile(n, p, N, delta)
                assert q <= C_BOUND * bound * (1 + 1e-12), (n, delta, N, q)
                worst_c1 = max(worst_c1, q / bound)
    assert worst_c1 > 1.0


def test_upper_quantile_is_the_inverted_cdf():
    x = np.array([0.0] * 95 + [1.0] * 5)
    assert upper_quantile(x, 0.1) == 0.0
    assert upper_quantile(x, 0.05) == 0.0
    assert upper_quantile(x, 0.04) == 1.0


def _cell(overrides, i=0):
    cfg = load_config(TOML, "quick", overrides)
    cell = expand_grid(cfg.sweep.axes, cfg.sweep.seeds, vmap_seeds=True)[i]
    return cell_config(cfg, cell), cell


def test_runner_records():
    """300 datasets of n = 10 (two chunks, the second padded): exact per-dataset values, and
    the fraction with p̂ = 0 within 3.3σ of (1 − p⋆)^n (false alarm ≤ 1e-3)."""
    res = run_bernoulli(*_cell(["sweep.axes.train.n_train=[10]", "sweep.seeds=300"]))
    recs = res.records
    assert len(recs) == 300 and len({r["seed"] for r in recs}) == 300
    p = float(np.float32(0.01))  # the sampler's (float32) p is the ground truth's
    for r in recs:
        assert r["p_star"] == p
        assert r["step"] == 0 and r["n"] == 10 and 0 <= r["k"] <= 10
        assert r["p_hat"] == min(r["k"] / 10, 0.5)
        assert math.isinf(r["kl"]) == (r["k"] == 0)
        assert r["kl"] == pytest.approx(float(bernoulli_kl(p, r["p_hat"])))
        for N, c in r["cov"].items():
            assert c == (p if p / max(r["p_hat"], 1e-300) >= N else 0.0)
    z = np.mean([r["k"] == 0 for r in recs])
    p0 = (1 - p) ** 10
    assert abs(z - p0) <= 3.29 * math.sqrt(p0 * (1 - p0) / 300)
    assert res.summary["p_zero_exact"] == pytest.approx(p0)


def test_runner_rejects_p_outside_the_class():
    with pytest.raises(ValueError, match="task.p"):
        run_bernoulli(*_cell(["task.p=0.7", "sweep.axes.train.n_train=[10]", "sweep.seeds=2"]))


# ---- the check on synthetic results ------------------------------------------------------------


def _records(ns=(10, 30, 100, 300, 1000, 3000), p=0.01, m=2000, cov_override=None,
             p_zero_scale=1.0):
    rng = np.random.default_rng(0)
    recs = []
    for n in ns:
        k = rng.binomial(n, p, m)
        ph = np.minimum(k / n, 0.5)
        kl = bernoulli_kl(p, ph)
        cov = bernoulli_cov(p, ph[:, None], np.asarray(NS)[None])
        for j in range(m):
            c = cov[j] if cov_override is None else np.full(len(NS), cov_override)
            recs.append({"step": 0, "seed": j, "n": n, "p_star": p, "k": int(k[j]),
                         "p_hat": float(ph[j]), "kl": float(kl[j]),
                         "cov": dict(zip(NS, c.tolist(), strict=True)),
                         "p_zero_exact": (1 - p) ** n * p_zero_scale})
    return recs


def _write(tmp_path, recs):
    d = tmp_path / "run"
    write_run(d, load_config(TOML, "quick"), RunResult(recs))
    return {"bernoulli": d}


def test_check_passes_on_the_exact_law(tmp_path):
    v = check(_write(tmp_path, _records()))
    assert v.passed, v.line()
    assert v.numbers["frac_kl_inf"][10] > 0.8


@pytest.mark.parametrize(
    "kw",
    [
        {"cov_override": 0.01},  # Cov_N = p⋆ on every dataset: above the bound for large n
        {"p_zero_scale": 0.5},  # simulation disagreeing with the exact P(p̂ = 0)
        {"ns": (10, 30, 100)},  # the grid never reaches n ≫ 1/p⋆
    ],
)
def test_check_fails(tmp_path, kw):
    v = check(_write(tmp_path, _records(**kw)))
    assert not v.passed, v.line()


def test_registered():
    assert CLAIMS["bernoulli"].experiments == ("bernoulli",)


@pytest.mark.slow
def test_quick_profile_end_to_end(tmp_path):
    from covsim.runners import run_cell
    from covsim.sweep import run_sweep

    out = tmp_path / "bernoulli"
    run_sweep(load_config(TOML, "quick"), run_cell, out, progress=False)
    dirs = {"bernoulli": out}
    v = CLAIMS["bernoulli"].check(dirs)
    assert v.passed, v.line()
    assert all(f.is_file() for f in CLAIMS["bernoulli"].figure(dirs, tmp_path / "fig"))
