"""Claim fig1: the check on synthetic fine-tuning sweeps (PASS and each way to FAIL), with a
select_logq.npy artifact built so that the tournament's pick is known; Spearman's ρ against
SciPy; the pre-training records being ignored; the figure and the registration."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from covsim.claims import CLAIMS, fig1
from covsim.config import load_config
from covsim.results import RunResult
from covsim.select import tournament
from covsim.stats import spearman
from covsim.sweep import run_sweep

ROOT = Path(__file__).resolve().parents[1]
TOML = ROOT / "experiments" / "fig1.toml"
CFG = load_config(TOML, "quick")  # 2 vmapped seeds, 400 fine-tuning steps, eval every 20
COV_NS = (2, 3, 4, 4.6, 5.7, 6)
N_SELECT = 64  # held-out samples in select_logq


def _logq(K: int, pick: int, rng) -> np.ndarray:
    """(K, N_SELECT) log π_k(y_i|x_i) with L[k, i] = b_i − 3|k − pick| − u_ki, u ∈ [0, 0.5).

    The tournament then picks `pick` for every threshold N ≤ 6 (log 6 ≈ 1.79): candidate
    `pick` has the largest log-likelihood on every sample, so no challenger k beats it by
    log N (score 0); any other j is beaten by `pick` on every sample by ≥ 3 − 0.5 = 2.5 >
    log N (score 1)."""
    b = rng.normal(-20.0, 3.0, N_SELECT)
    u = rng.uniform(0.0, 0.5, (K, N_SELECT))
    k = np.arange(K)[:, None]
    return (b - 3.0 * np.abs(k - pick) - u).astype(np.float32)


def _curves(seed: int, T: int):
    """One seed's fine-tuning curves over T checkpoints: KL strictly decreasing; the Cov
    level c U-shaped (min near t = 0.6 T, higher at the start than at the end)."""
    rng = np.random.default_rng(100 + seed)
    t = np.arange(T)
    kl = (0.3 + 2.0 * np.exp(-t / 6)) * (1 + 0.05 * seed)
    c = 0.1 + 0.7 * ((t - 0.6 * (T - 1)) / (0.6 * (T - 1))) ** 2 + 0.01 * rng.uniform(size=T)
    return kl, c


def _cell_fn(pass_from: str = "cov", pick: str | dict = "cov_min", pretrain: bool = True):
    """Synthetic `train` runner output: per seed, "pretrain" records (as the real runner
    writes: their own Ns, no Pass@N; adversarial values) then "main" records with Cov_N =
    c (2/N)^½, success probability p = 0.95 − c (pass_from "cov": Pass@N tracks Cov) or
    p = 0.95 − 0.35 KL ("kl": Pass@N tracks KL), Pass@N = 1 − (1 − p)^N exactly; and a
    select_logq.npy (seeds, checkpoints, samples) whose tournament picks `pick`: the
    Cov-minimising checkpoint ("cov_min"), the first ("first"), the last ("last") or, for a
    dict, pick[seed]."""

    def fn(cfg, cell):
        steps = list(range(0, cfg.train.steps + 1, cfg.train.eval_every))
        T = len(steps)
        rng = np.random.default_rng(7)
        recs, logq = [], []
        for s in cell.seeds:
            if pretrain:
                for step in range(0, 601, 200):
                    recs.append({"stage": "pretrain", "seed": s, "step": step, "kl": 9.0,
                                 "cov": {2: 1.0, 4: 1.0}, "pass_at": {}})
            kl, c = _curves(s, T)
            p = 0.95 - c if pass_from == "cov" else 0.95 - 0.35 * kl
            for i, step in enumerate(steps):
                recs.append({
                    "stage": "main", "seed": s, "step": step, "kl": float(kl[i]),
                    "cov": {N: float(c[i] * math.sqrt(2 / N)) for N in COV_NS},
                    "pass_at": {N: float(1 - (1 - p[i]) ** N) for N in fig1.PASS_NS},
                })
            j = pick[s] if isinstance(pick, dict) else (
                {"cov_min": int(np.argmin(c)), "first": 0, "last": T - 1}[pick])
            logq.append(_logq(T, j, rng))
        buf = io.BytesIO()
        np.save(buf, np.stack(logq))
        return RunResult(recs, {}, files={fig1.SELECT_FILE: buf.getvalue()})

    return fn


def _sweep(tmp_path, cfg=CFG, name="fig1", **kw):
    out = tmp_path / name
    manifest = run_sweep(cfg, _cell_fn(**kw), out, progress=False)
    assert all(c["status"] == "done" for c in manifest["cells"])
    return {"fig1": out}


T = len(range(0, CFG.train.steps + 1, CFG.train.eval_every))  # 11 checkpoints (quick profile)
J_COV = {s: int(np.argmin(_curves(s, T)[1])) for s in (0, 1)}  # near 12


def test_registered():
    c = CLAIMS["fig1"]
    assert c.experiments == ("fig1",) and TOML.is_file()
    assert c.check is fig1.check and c.figure is fig1.figure


def test_logq_construction_fixes_the_tournament_pick():
    rng = np.random.default_rng(0)
    for pick in (0, 5, T - 1):
        L = _logq(T, pick, rng)
        for N in (2.0, 4.0, 6.0):
            j, scores = tournament(L, N)
            assert j == pick
            assert scores[pick] == 0 and np.all(np.delete(scores, pick) == 1)


def test_check_passes_when_cov_predicts_pass(tmp_path):
    """Pass@N is a strictly decreasing function of Cov_{N/2} (ρ = −1 exactly: s_cov = 1),
    rises then falls while KL only falls (s_kl < 1); the tournament picks the Cov-minimising
    checkpoint (the best Pass@N), min-KL the last one."""
    v = fig1.check(_sweep(tmp_path))
    assert v.passed, v.line()
    n = v.numbers
    assert n["seeds"] == 2
    for N in fig1.PASS_NS:
        assert n["s_cov"][N] == pytest.approx(1.0, abs=1e-12)
        assert n["s_kl"][N] < 0.5
        assert n["tournament_gain"][N] > 0
        assert n["pass_tournament"][N] > n["pass_min_kl"][N]
    for s in (0, 1):
        assert n["picks"][s]["min_kl"] == T - 1
        assert n["picks"][s]["tournament"] == {N: J_COV[s] for N in fig1.PASS_NS}
    assert "tournament not run" not in v.note


def test_check_fails_when_kl_predicts_pass(tmp_path):
    """Pass@N strictly decreasing in KL: s_kl = 1 ≥ s_cov. The tournament picks the last
    (= min-KL) checkpoint, gain 0, so only the correlation part can fail the claim."""
    v = fig1.check(_sweep(tmp_path, pass_from="kl", pick="last"))
    n = v.numbers
    assert not v.passed
    for N in fig1.LARGER_NS:
        assert n["s_kl"][N] == pytest.approx(1.0, abs=1e-12) and n["s_cov"][N] < 1
    assert all(n["tournament_gain"][N] == 0 for N in fig1.PASS_NS)


def test_check_fails_when_tournament_pick_is_worse(tmp_path):
    """Correlations as in the PASS case, but the tournament picks checkpoint 0 (Cov highest,
    Pass@N lowest), whose Pass@N is below the min-KL (last) checkpoint's."""
    v = fig1.check(_sweep(tmp_path, pick="first"))
    n = v.numbers
    assert not v.passed
    assert all(n["s_cov"][N] > n["s_kl"][N] for N in fig1.LARGER_NS)
    assert all(n["tournament_gain"][N] < 0 for N in fig1.PASS_NS)
    assert all(n["picks"][s]["tournament"][4] == 0 for s in (0, 1))


def test_check_fails_without_results(tmp_path):
    def broken(cfg, cell):
        raise RuntimeError("boom")

    run_sweep(CFG, broken, tmp_path / "f", progress=False)
    v = fig1.check({"fig1": tmp_path / "f"})
    assert not v.passed and v.statistic == "no results on disk"


def test_pretrain_records_ignored(tmp_path):
    """Same verdict with and without the pre-training records (which, if read, would add 4
    checkpoints per seed with KL 9 and no Pass@N, and mismatch select_logq's 11)."""
    with_pre = fig1.check(_sweep(tmp_path, name="a"))
    without = fig1.check(_sweep(tmp_path, name="b", pretrain=False))
    assert with_pre.passed and with_pre.numbers == without.numbers
    assert with_pre.statistic == without.statistic
    df = pd.DataFrame({"stage": ["main", "pretrain", "main", "pretrain"], "seed": [1, 0, 0, 0],
                       "step": [0, 0, 20, 200]})
    rows = fig1.finetune_rows(df)
    assert list(rows["stage"]) == ["main"] * 2 and list(rows["seed"]) == [0, 1]


def test_select_logq_rows_follow_the_cells_seed_order(tmp_path):
    """sweep.seeds = [1, 0]: the cell runs seed 1 first, so select_logq[0] is seed 1's (built
    here to pick checkpoint 8) and select_logq[1] seed 0's (to pick 3)."""
    cfg = load_config(TOML, "quick", ["sweep.seeds=[1, 0]"])
    v = fig1.check(_sweep(tmp_path, cfg=cfg, pick={0: 3, 1: 8}))
    assert v.numbers["picks"][0]["tournament"][8] == 3
    assert v.numbers["picks"][1]["tournament"][8] == 8


def test_spearman_matches_scipy_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        a = rng.integers(0, 5, 30)  # many ties
        b = a + rng.integers(-3, 4, 30)
        want = stats.spearmanr(a, b).statistic
        assert spearman(a, b) == pytest.approx(want, abs=1e-12)
        # a pandas Series with a shuffled index is ranked by position, as arrays are
        sa = pd.Series(a, index=rng.permutation(30))
        assert spearman(sa, b) == pytest.approx(want, abs=1e-12)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_figure(tmp_path):
    files = CLAIMS["fig1"].figure(_sweep(tmp_path), tmp_path / "fig")
    assert [f.name for f in files] == ["fig1.png"] and files[0].stat().st_size > 10_000


@pytest.mark.slow
def test_quick_profile_end_to_end(tmp_path):
    """The quick profile on a 2-core CPU (≈ 5 min): both stages run, every fine-tuning
    checkpoint has Pass@N, Cov_{N/2} and a tournament pick, and the figure is drawn. The
    verdict itself is not asserted: at this scale the claim does not hold (REPRODUCTION.md
    says why)."""
    from covsim.runners import run_cell

    out = tmp_path / "fig1"
    cfg = load_config(TOML, "quick")
    run_sweep(cfg, run_cell, out, progress=False)
    dirs = {"fig1": out}
    v = CLAIMS["fig1"].check(dirs)
    n = v.numbers
    assert n["seeds"] == len(cfg.sweep.seeds)
    for N in fig1.PASS_NS:
        assert math.isfinite(n["s_cov"][N]) and math.isfinite(n["s_kl"][N])
        assert 0 <= n["pass_tournament"][N] <= 1 and 0 <= n["pass_min_kl"][N] <= 1
    assert len(n["final_per_class_kl"]) == 2
    assert all(f.is_file() for f in CLAIMS["fig1"].figure(dirs, tmp_path / "fig"))
