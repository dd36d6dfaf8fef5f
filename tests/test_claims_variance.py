"""Claim variance: the rank correlation, the theory constant, the check on synthetic sweeps
(PASS and each way to FAIL), the figure, the "mle" runner on a tiny AR linear model, and
(slow) the quick profile end to end."""

from __future__ import annotations

import math
from pathlib import Path

import jax
import numpy as np
import pytest

from covsim.claims import CLAIMS
from covsim.claims import variance as V
from covsim.config import load_config
from covsim.mle import fit_loglinear_mle
from covsim.results import RunResult, read_metrics
from covsim.stats import spearman
from covsim.sweep import run_sweep
from covsim.tasks.linear import AutoregressiveLinear

ROOT = Path(__file__).resolve().parents[1]
TOML = ROOT / "experiments" / "variance.toml"
M = 4096
SEEDS = 8


def _cell_fn(cov_of_s2):
    """Synthetic cells: σ⋆² = 5·(1 + number of pivotal positions); each seed's Cov_2 is a
    binomial estimate from M eval samples of cov_of_s2(σ⋆²)."""

    def fn(cfg, cell):
        s2 = 5.0 * (1 + len(cfg.task.params["pivotal"]))
        rng = np.random.default_rng(int(s2))
        recs = []
        for s in cell.seeds:
            c = rng.binomial(M, cov_of_s2(s2)) / M
            recs.append({"seed": s, "step": 1, "sigma_star_sq": s2, "kl": 0.1,
                         "cov": {2: c, 4: c / 2}, "converged": True})
        return RunResult(recs, {"sigma_star_sq": s2})

    return fn


def _sweep(tmp_path, cov_of_s2):
    out = tmp_path / "variance"
    cfg = load_config(TOML, "quick", [f"sweep.seeds={SEEDS}", f"train.eval_samples={M}"])
    manifest = run_sweep(cfg, _cell_fn(cov_of_s2), out, progress=False)
    assert all(c["status"] == "done" for c in manifest["cells"])
    return {"variance": out}


def test_registered():
    assert CLAIMS["variance"].experiments == ("variance",) and TOML.is_file()


def test_spearman():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ties get average ranks: ranks (1.5, 1.5, 3, 4) against (1, 2, 3, 4)
    r = np.array([1.5, 1.5, 3, 4])
    want = np.corrcoef(r, [1, 2, 3, 4])[0, 1]
    assert spearman([1, 2, 3, 4], [0, 0, 5, 7]) == pytest.approx(want)
    assert math.isnan(spearman([1, 2, 3], [5, 5, 5]))


def test_theory_constant_recovers_c():
    s2 = np.array([4.0, 16.0, 64.0])
    y = 0.2 * np.sqrt(s2 / (32 * math.log(2)))
    assert V.theory_constant(s2, y, 32, 2) == pytest.approx(0.2, rel=1e-9)


def test_check_passes_on_sqrt_growth(tmp_path):
    v = V.check(_sweep(tmp_path, lambda s2: 0.03 * math.sqrt(s2)))
    assert v.passed, v.line()
    assert v.numbers["spearman"] >= V.RHO_MIN
    assert v.numbers["theory_constant"] > 0


@pytest.mark.parametrize(
    "cov_of_s2, why",
    [
        (lambda s2: 0.1, "flat: no rank correlation beyond noise"),
        (lambda s2: 0.4 - 0.003 * s2, "decreasing"),
        (lambda s2: 0.1 + 2e-5 * s2, "increasing by less than the Monte-Carlo error"),
    ],
)
def test_check_fails(tmp_path, cov_of_s2, why):
    v = V.check(_sweep(tmp_path, cov_of_s2))
    assert not v.passed, why


def test_figure(tmp_path):
    dirs = _sweep(tmp_path, lambda s2: 0.03 * math.sqrt(s2))
    files = V.figure(dirs, tmp_path / "fig")
    assert [f.name for f in files] == ["variance.png"] and files[0].stat().st_size > 10_000


def test_mle_runner(tmp_path):
    """Two seeds on a tiny instance: records carry the exact σ⋆², Cov_N inside its Wilson
    interval, and θ̂ equal to a direct fit of the same data (the runner's keys)."""
    from covsim.runners import run_cell
    from covsim.sweep import cell_config, expand_grid

    over = ["task.H=4", "task.d=4", "task.pivotal=[0, 2]", "train.n_train=16",
            "train.eval_samples=256", "sweep.seeds=2", "sweep.axes={}"]
    cfg = load_config(TOML, "quick", over)
    out = tmp_path / "v"
    run_sweep(cfg, run_cell, out, progress=False)
    df = read_metrics(out)
    assert len(df) == 2 and df["converged"].all()
    task = AutoregressiveLinear.random(jax.random.key(0), V=4, H=4, d=4, B=3.0,
                                       pivotal=[0, 2])
    np.testing.assert_allclose(df["sigma_star_sq"], float(task.sigma_star_sq()), rtol=1e-6)
    assert (df["cov_lo@2"] <= df["cov@2"]).all() and (df["cov@2"] <= df["cov_hi@2"]).all()
    cell = expand_grid(cfg.sweep.axes, cfg.sweep.seeds, vmap_seeds=True)[0]
    k_data, _ = jax.random.split(jax.random.key(cell.rng_seed(0)))
    x, y = task.sample(k_data, 16)
    theta, _ = fit_loglinear_mle(task, x, y, **cell_config(cfg, cell).runner.params)
    row = df[df["seed"] == 0].iloc[0]
    assert row["theta_norm"] == pytest.approx(float(np.linalg.norm(theta)), rel=1e-5)


def test_mle_runner_refuses_sections_it_does_not_read(tmp_path):
    """The learner is the task's own log-linear model: a [model] (or [optim]) would only
    pretend to choose it, so the config is refused before anything runs."""
    from covsim.config import ConfigError

    with pytest.raises(ConfigError, match=r"^model: runner 'mle' does not read \[model\]"):
        load_config(TOML, "quick", ["model.kind=tabular", "sweep.axes={}"])


@pytest.mark.slow
def test_quick_profile_end_to_end(tmp_path):
    from covsim.runners import run_cell

    out = tmp_path / "variance"
    run_sweep(load_config(TOML, "quick"), run_cell, out, progress=False)
    dirs = {"variance": out}
    v = CLAIMS["variance"].check(dirs)
    assert v.passed, v.line()
    assert all(f.is_file() for f in CLAIMS["variance"].figure(dirs, tmp_path / "fig"))
