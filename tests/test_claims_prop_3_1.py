"""Claim prop_3_1: the bound's formula, the check on synthetic result directories (PASS, FAIL,
Monte-Carlo slack, vacuous), the figure, and (slow) the quick profile end to end."""

import math
from pathlib import Path

import numpy as np
import pytest

from covsim import metrics
from covsim.claims import CLAIMS
from covsim.claims import prop_3_1 as P
from covsim.config import load_config
from covsim.results import RunResult, write_run

ROOT = Path(__file__).resolve().parents[1]
NS = (2, 4, 16, 256)  # 2 < e is not checked


def test_registered():
    c = CLAIMS["prop_3_1"]
    assert c.experiments == ("prop_3_1",) and (ROOT / "experiments" / "prop_3_1.toml").is_file()


def test_bound_is_the_metrics_bound_in_float64_and_tighter_than_the_paper_form():
    kl, N = np.array([0.01, 0.5, 3.0]), np.array([3.0, 16.0, 1024.0])
    f1 = P.bound_f1(kl, N)
    assert f1.dtype == np.float64
    np.testing.assert_allclose(f1, np.asarray(metrics.kl_coverage_bound(kl, N)), rtol=1e-6)
    np.testing.assert_array_equal(f1, kl / (np.log(N) - 1 + 1 / N))
    # D.1 is the tighter form: log N − 1 + 1/N > log(N/e)
    assert np.all(f1 < metrics.kl_coverage_bound_simple(kl, N, xp=np))
    with pytest.raises(ValueError, match="N"):
        metrics.kl_coverage_bound(kl, np.array([1.0, 2.0, 3.0]), xp=np)


@pytest.mark.parametrize("N", [3.0, 16.0, 1024.0])
def test_bound_holds_and_is_nearly_tight_on_prop_f2(N):
    """π_D = Ber(p), π̂ = Ber(p/N): Cov_N = p exactly; KL in closed form (float64). The bound
    must hold, and as p → 0 the ratio bound / Cov_N tends to 1 (Prop. D.2)."""
    for p in (0.5, 0.1, 1e-3, 1e-6):
        q = p / N
        kl = p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))
        ratio = P.bound_f1(kl, N) / p
        assert ratio >= 1 - 1e-12
    assert ratio < 1 + 1e-5  # p = 1e-6


def _write(tmp_path, rows, name="run"):
    """A run dir whose records are (step, kl, kl_se, {N: (cov, cov_lo)})."""
    cfg = load_config(ROOT / "experiments" / "prop_3_1.toml", "quick")
    recs = []
    for step, kl, se, cov in rows:
        recs.append(
            {
                "step": step,
                "seed": 0,
                "kl": kl,
                "kl_se": se,
                "cov": {N: c for N, (c, _) in cov.items()},
                "cov_lo": {N: lo for N, (_, lo) in cov.items()},
            }
        )
    d = tmp_path / name
    write_run(d, cfg, RunResult(recs))
    return {"prop_3_1": d}


def _cov(kl, frac, lo_frac=None):
    """Cov_N = frac · bound(KL, N) for each N (lower end lo_frac · bound), capped at 1."""
    lo_frac = frac if lo_frac is None else lo_frac
    return {
        N: (min(1.0, frac * P.bound_f1(kl, N)), min(1.0, lo_frac * P.bound_f1(kl, N))) for N in NS
    }


def test_check_passes_below_the_bound(tmp_path):
    rows = [(s, kl, 0.01, _cov(kl, 0.5)) for s, kl in enumerate([20.0, 2.0, 0.2, 0.05])]
    rows.append((4, math.nan, math.nan, {N: (math.nan, math.nan) for N in NS}))  # diverged
    v = CLAIMS["prop_3_1"].check(_write(tmp_path, rows))
    assert v.passed, v.line()
    n = v.numbers
    assert n["pairs"] == 4 * 3 and n["violations"] == 0 and n["Ns"] == [4.0, 16.0, 256.0]
    assert n["diverged_checkpoints"] == 1 and "diverged" in v.note
    assert n["min_bound_over_cov"] == pytest.approx(2.0)
    assert n["non_vacuous_pairs"] == sum(
        P.bound_f1(kl, N) < 1 for kl in [20, 2, 0.2, 0.05] for N in NS[1:]
    )
    assert v.line().startswith("PASS prop_3_1: 0 violations in 12 ")


def test_check_fails_when_the_lower_end_exceeds_the_bound(tmp_path):
    rows = [(s, kl, 0.01, _cov(kl, 0.5)) for s, kl in enumerate([2.0, 0.2])]
    bad = _cov(0.05, 0.5)
    # N = 16: the whole interval lies above the bound even at KL + 3 se
    hi = P.bound_f1(0.05 + 3 * 0.001, 16)
    bad[16] = (3 * hi, 2 * hi)
    rows.append((2, 0.05, 0.001, bad))
    v = CLAIMS["prop_3_1"].check(_write(tmp_path, rows))
    assert not v.passed and v.numbers["violations"] == 1
    assert v.line().startswith("FAIL prop_3_1: 1 violations in 9 ")


def test_check_allows_monte_carlo_slack(tmp_path):
    """Point estimates above the bound, but inside the error allowance: not a violation."""
    kl, se = 0.1, 0.01
    cov = {N: (1.2 * P.bound_f1(kl, N), 0.9 * P.bound_f1(kl, N)) for N in NS}
    v = CLAIMS["prop_3_1"].check(_write(tmp_path, [(0, kl, se, cov)]))
    assert v.passed and v.numbers["point_violations"] == 3 and "point estimates" in v.note
    # ... while the lower end just above bound(KL + 3 se) is one
    cov = {N: (2.0 * P.bound_f1(kl, N), 1.01 * P.bound_f1(kl + 3 * se, N)) for N in NS}
    v = CLAIMS["prop_3_1"].check(_write(tmp_path, [(0, kl, se, cov)], "b"))
    assert not v.passed and v.numbers["violations"] == 3


def test_check_fails_when_the_bound_is_always_vacuous(tmp_path):
    rows = [(0, 50.0, 0.1, _cov(50.0, 0.5))]  # bound ≥ 9 for every N: Cov_N ≤ 1 proves nothing
    v = CLAIMS["prop_3_1"].check(_write(tmp_path, rows))
    assert not v.passed and v.numbers["violations"] == 0 and "never < 1" in v.note


def test_figure(tmp_path):
    rows = [(s, kl, 0.01, _cov(kl, 0.3)) for s, kl in enumerate([20.0, 2.0, 0.2, 0.05])]
    rows.append((4, 0.01, 0.001, {N: (0.0, 0.0) for N in NS}))  # Cov_N = 0 on a log axis
    [f] = CLAIMS["prop_3_1"].figure(_write(tmp_path, rows), tmp_path / "fig")
    assert f.name == "prop_3_1.png" and f.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_quick_profile_end_to_end(tmp_path, capsys):
    """`covsim reproduce prop_3_1 --profile quick`: runs, draws, and the verdict passes."""
    from covsim.cli import main

    args = ["reproduce", "prop_3_1", "--profile", "quick", "--out", str(tmp_path / "runs")]
    args += ["--figures", str(tmp_path / "fig"), "--report", str(tmp_path / "R.md")]
    assert main(["-q", *args]) == 0
    [line] = [ln for ln in capsys.readouterr().out.splitlines() if "prop_3_1" in ln]
    assert line.startswith("PASS prop_3_1: 0 violations"), line
    assert (tmp_path / "fig" / "prop_3_1.png").is_file()
    v = CLAIMS["prop_3_1"].check({"prop_3_1": tmp_path / "runs" / "quick" / "prop_3_1"})
    assert v.numbers["non_vacuous_pairs"] > 100 and v.numbers["kl_max"] > 10 * v.numbers["kl_min"]
