"""Claim signsgd_adam (a report): the position between normalized and plain SGD, the picks on
tune seeds, the REPORT verdict (no PASS/FAIL) and its row, the figure, on synthetic results."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from covsim.claims import CLAIMS
from covsim.claims import signsgd_adam as S
from covsim.config import load_config
from covsim.report import report_row
from covsim.results import RunResult
from covsim.sweep import run_sweep

ROOT = Path(__file__).resolve().parents[1]
TOML = ROOT / "experiments" / "one_pass.toml"
#: per method: Cov at H = 4 and its exponent in H (at the best setting)
LAW = {"sgd": (0.001, 1.0), "normalized_sgd": (0.001, 0.0), "sign_sgd": (0.001, 0.5),
       "adam": (0.001, 0.25)}


def _fn(cfg, cell):
    method, H = cfg.runner.params["method"], cfg.task.H
    a, s = LAW[method]
    rng = np.random.default_rng(H + 10 * len(method))
    settings = [(e, k) for e in (1.0, 2.0) for k in ((1,) if method == "sgd" else (1, 4))]
    recs = []
    for e, k in settings:
        worse = 1.0 if (e, k) == (1.0, 1) else 4.0
        for role, seed in [("tune", -1), ("tune", -2), *[("eval", q) for q in cell.seeds]]:
            cov = a * (H / 4) ** s * worse * math.exp(0.05 * rng.standard_normal())
            recs.append({"step": 1, "seed": seed, "role": role, "method": method, "K": k,
                         "setting": "grid", "eta": e, "eta_HB": e, "lam": 1.0, "H": H,
                         "cov": {4: cov}, "finite": True})
    return RunResult(recs, {})


@pytest.fixture
def dirs(tmp_path):
    cfg = load_config(TOML, "quick", ["sweep.seeds=8"])
    run_sweep(cfg, _fn, tmp_path / "one_pass", progress=False)
    return {"one_pass": tmp_path / "one_pass"}


def test_registered_as_a_report_on_the_sgd_horizon_study():
    c = CLAIMS["signsgd_adam"]
    assert c.kind == "report" and c.experiments == ("one_pass",)


def test_position_is_log_interpolation():
    p = S.position(np.array([0.01, 0.1, 1.0, 0.001]), np.full(4, 0.01), np.full(4, 1.0))
    np.testing.assert_allclose(p, [0.0, 0.5, 1.0, -0.5])
    assert math.isnan(S.position(np.array([0.5]), np.array([0.2]), np.array([0.2]))[0])


def test_report_has_no_pass_fail_and_places_the_methods(dirs):
    v = S.check(dirs)
    assert v.passed is None and v.line().startswith("REPORT signsgd_adam: ")
    pos = v.numbers["position"]
    H = np.asarray(v.numbers["H"], float)
    # log position = s_m / s_plain (the curves meet at H = 4, where the position is undefined)
    np.testing.assert_allclose(pos["sign_sgd"][1:], 0.5, atol=0.1)
    np.testing.assert_allclose(pos["adam"][1:], 0.25, atol=0.1)
    assert v.numbers["tuned_slope"]["sgd"][0] == pytest.approx(1.0, abs=0.05)
    assert v.numbers["fixed_pick"]["adam"] == "K=1, eta=1"
    assert len(H) == 5


def test_report_row_and_figure(dirs, tmp_path):
    v = S.check(dirs)
    row = report_row(CLAIMS["signsgd_adam"], v, [], "quick", tmp_path / "REPRODUCTION.md")
    assert "**REPORT**" in row and "| report |" in row
    files = S.figure(dirs, tmp_path / "fig")
    assert files[0].name == "signsgd_adam.png" and files[0].stat().st_size > 10_000


def test_missing_methods_are_named(tmp_path):
    cfg = load_config(TOML, "quick", ["sweep.seeds=2",
                                      'sweep.axes={"task.H" = [4, 8], "runner.method" = ["sgd"]}'])
    run_sweep(cfg, _fn, tmp_path / "s", progress=False)
    v = S.check({"one_pass": tmp_path / "s"})
    assert v.passed is None and "not run" in v.statistic
