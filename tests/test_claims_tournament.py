"""Claim tournament: the tournaments on three hand-made candidates, Prop. E.1's instance (exact
coverages, the α-closeness of π_1, sampling), the runner (the MLE against the closed-form
likelihood comparison, ties exactly when no sample separates the candidates), and the check on
synthetic result sets (PASS and each way to FAIL), the figure, and (slow) the quick profile."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from covsim import select
from covsim.claims import CLAIMS
from covsim.claims import tournament as T
from covsim.config import load_config
from covsim.results import RunResult, read_metrics
from covsim.sweep import run_sweep
from covsim.tasks.paper import prop_g2_instance

ROOT = Path(__file__).resolve().parents[1]
TOML = ROOT / "experiments" / "tournament.toml"


# ---- the selectors by hand --------------------------------------------------------------------


def test_tournaments_on_three_hand_made_candidates():
    """Ĉov_N(π_k‖π_j) = mean_i 1[L_k − L_j ≥ log N], N = e. Scores by hand: π_0 0.75 (π_1 beats
    it by ≥ 1 nat on 3 of 4 samples), π_1 0.25, π_2 0.75: the simple tournament picks π_1,
    while min-CE picks π_0. The offset term 2N^a·Ĉov^{π_j} (a = ½) on π_0's own generations
    (π_1 ≥ e× more likely on half of them) cancels π_0's deficit: scores 0, 0, 0.75, tie → π_0."""
    L = np.array([[-1.0, -1.0, -1.0, -1.0], [0.0, 0.0, -5.0, 0.0], [-1.2, -1.2, -1.2, -1.2]])
    N = math.e
    j, s = select.tournament(L, N)
    np.testing.assert_allclose(s, [0.75, 0.25, 0.75])
    assert j == 1 and select.min_ce(L) == 0
    L_gen = np.zeros((3, 3, 2))
    L_gen[0, 1] = [2.0, 0.0]  # on π_0's generations π_1 is e² more likely on one of two
    L_gen[1, 0] = [2.0, 0.0]
    L_gen[1, 2] = [0.0, 2.0]
    np.testing.assert_allclose(select.on_policy_coverage(L_gen, N),
                               [[0, 0.5, 0], [0.5, 0, 0.5], [0, 0, 0]])
    j, s = select.offset_tournament(L, L_gen, N, 0.5)
    np.testing.assert_allclose(s, [0.0, 0.0, 0.75], atol=1e-12)
    assert j == 0  # ties go to the earliest candidate


# ---- the instance ------------------------------------------------------------------------------


def test_prop_e1_instance():
    alpha, log_M = 0.8, 6.0
    I = prop_g2_instance(alpha, log_M)
    p = alpha**2 / (32 * log_M)
    np.testing.assert_allclose(np.exp(I.log_mu), [1 - p, p])
    assert np.max(np.abs(I.log_p - I.log_cands[0])) <= alpha + 1e-12  # π_1 within α of π_D
    assert I.coverage(0, math.exp(alpha) * 1.01) == 0.0
    assert I.coverage(1, 64) == pytest.approx(p / 2) and I.coverage(1, math.exp(log_M) * 1.01) == 0
    x, y = I.sample(np.random.default_rng(0), 200_000)
    assert np.mean(x == 1) == pytest.approx(p, rel=0.2)
    assert np.mean(y) == pytest.approx(0.5, abs=0.01)
    yg = I.sample_given(np.random.default_rng(1), np.zeros(100_000, int), 0)
    assert np.mean(yg) == pytest.approx(0.5 * math.exp(-alpha), abs=0.01)


# ---- the runner --------------------------------------------------------------------------------


def test_runner_mle_and_ties(tmp_path):
    """The MLE is π_2 exactly when its log-likelihood is larger; the simple tournament is tied
    exactly when no (x = −, y = 1) sample shows π_2's miss (π_1's score is 0 at N = 64)."""
    from covsim.runners import run_cell

    cfg = load_config(TOML, "quick", ["sweep.seeds=30", 'sweep.axes={"runner.n" = [64, 2048]}'])
    run_sweep(cfg, run_cell, tmp_path / "t", progress=False)
    df = read_metrics(tmp_path / "t")
    assert len(df) == 60
    ll = np.stack(df["loglik"].to_numpy())
    np.testing.assert_array_equal(df["mle"], (ll[:, 1] > ll[:, 0]).astype(int))
    scores = np.stack(df["tournament_scores"].to_numpy())
    assert np.all(scores[:, 0] == 0.0)
    np.testing.assert_array_equal(df["tournament_tie"], scores[:, 1] == 0.0)
    assert df.loc[df["n"] == 64, "tournament_tie"].mean() > df.loc[df["n"] == 2048,
                                                                   "tournament_tie"].mean()


# ---- the check on synthetic result sets -------------------------------------------------------

NS = [256, 1024, 4096, 16384]


def _cell_fn(mle_bad=lambda n: 0.9, tie=lambda n: math.exp(-n / 512), strict=lambda n: 0.0):
    """Synthetic datasets: the MLE picks π_2 w.p. mle_bad(n); each tournament is tied w.p.
    tie(n) and otherwise picks π_2 w.p. strict(n)."""

    def fn(cfg, cell):
        n = cfg.runner.params["n"]
        rng = np.random.default_rng(n)
        recs = []
        for s in cell.seeds:
            rec = {"step": 0, "seed": s, "n": n, "mle": int(rng.random() < mle_bad(n))}
            for sel in ("tournament", "offset"):
                t = bool(rng.random() < tie(n))
                rec[sel] = 0 if t else int(rng.random() < strict(n))
                rec[f"{sel}_tie"] = t
            recs.append(rec)
        return RunResult(recs, {"n": n, "N": 64.0, "a": 0.25,
                                "coverage": {"64": [0.0, 0.002]}})

    return fn


def _sweep(tmp_path, fn):
    out = tmp_path / "tournament"
    cfg = load_config(TOML, "quick", ["sweep.seeds=300"])
    manifest = run_sweep(cfg, fn, out, progress=False)
    assert all(c["status"] == "done" for c in manifest["cells"])
    return {"tournament": out}


def test_check_passes(tmp_path):
    v = T.misspecified_check(_sweep(tmp_path, _cell_fn())["tournament"])
    assert v.passed, v.line()
    assert v.numbers["frequencies"]["tournament"][256]["ties"] > 0.4
    assert v.numbers["coverage_of_candidates"]["64"] == [0.0, 0.002]


@pytest.mark.parametrize(
    "kw, failing, why",
    [
        (dict(mle_bad=lambda n: 0.15), "mle_loses_coverage", "the MLE rarely picks π_2"),
        (dict(tie=lambda n: 0.6), "tournament_decays_in_n", "ties never resolve"),
        (dict(strict=lambda n: 0.95, tie=lambda n: 0.0), "tournament_below_mle_at_n_max",
         "the tournament picks π_2 as often as the MLE"),
        (dict(tie=lambda n: 0.95), "offset_below_mle_at_n_max",
         "tied everywhere: worst case equals the MLE"),
    ],
)
def test_check_fails(tmp_path, kw, failing, why):
    v = T.misspecified_check(_sweep(tmp_path, _cell_fn(**kw))["tournament"])
    assert not v.passed, why
    assert not v.numbers["tests"][failing], (why, v.numbers["tests"])


def test_figure(tmp_path):
    files = T.figure(_sweep(tmp_path, _cell_fn()), tmp_path / "fig")
    assert files[0].name == "tournament.png" and files[0].stat().st_size > 10_000
    dirs = {**_sweep(tmp_path, _cell_fn()), T.CKPT: _ckpt_sweep(tmp_path, _ckpt_fn())}
    files = T.figure(dirs, tmp_path / "fig2")
    assert [f.name for f in files] == ["tournament.png", "tournament_checkpoints.png"]


# ---- part (a): checkpoint selection --------------------------------------------------------------

CKPT_TOML = ROOT / "experiments" / "tournament_checkpoints.toml"
K = 21
C_HI, C_LO = 4 ** 1.25, 4 ** 0.25


def _ckpt_fn(best=lambda s: [6], offset_best=lambda s: [3, K - 1], min_ce=K - 1):
    """Synthetic checkpoint-selection cells: per seed a U-shaped Cov_{N^{1+a}} (minimum 0.01
    at checkpoint 4, 0.1 at the end), Cov_{N^a} = 0.1 + Cov_{N^{1+a}}, Pass@8 = 0.99 −
    Cov_{N^{1+a}}/2, KL falling (min-KL = the last); the tournaments' tied best sets given."""

    def fn(cfg, cell):
        t = np.arange(K)
        recs, sel = [], {k: [] for k in ("min_kl", "min_ce", "tournament", "tournament_best",
                                         "offset", "offset_best")}
        for s in cell.seeds:
            u = np.where(t <= 4, 0.05 - 0.01 * t, 0.01 + 0.09 * (t - 4) / (K - 5))
            u = u * (1 + 0.01 * np.random.default_rng(s).uniform(size=K))
            for j in range(K):
                recs.append({"stage": "main", "seed": s, "step": 200 * j, "kl": 1.0 / (1 + j),
                             "cov": {C_LO: 0.1 + u[j], 2: 0.5, 4: u[j], C_HI: u[j]},
                             "pass_at": {8: 0.99 - u[j] / 2}})
            sel["min_kl"].append(K - 1)
            sel["min_ce"].append(min_ce)
            sel["tournament_best"].append(best(s))
            sel["tournament"].append(best(s)[0])
            sel["offset_best"].append(offset_best(s))
            sel["offset"].append(offset_best(s)[0])
        return RunResult(recs, {"N": 4.0, "a": 0.25, "gen_samples": 8, "selection": sel})

    return fn


def _ckpt_sweep(tmp_path, fn, name="ckpt"):
    out = tmp_path / name
    manifest = run_sweep(load_config(CKPT_TOML, "quick"), fn, out, progress=False)
    assert all(c["status"] == "done" for c in manifest["cells"])
    return out


def test_checkpoint_part_passes_when_the_tournament_picks_the_dip(tmp_path):
    v = T.checkpoint_check(_ckpt_sweep(tmp_path, _ckpt_fn()))
    assert v.passed, v.line()
    g = v.numbers["gains"]
    assert g["tournament_vs_min_kl_cov"]["wins"] == 16 and g["tournament_vs_min_ce_pass"][
        "median"] > 0
    # the offset tournament, tied with the last checkpoint, is scored there: reported only
    assert g["offset_vs_min_kl_cov"]["ties"] == 16 and "offset_vs_min_kl_cov" not in v.numbers[
        "tests"]
    assert v.numbers["min_cov_Na"] == pytest.approx(0.11, abs=0.01)


@pytest.mark.parametrize("kw, why", [
    (dict(best=lambda s: [6, K - 1]), "tied with the last checkpoint: scored at the worst"),
    (dict(best=lambda s: [K - 1]), "picks min-KL's checkpoint: a tie is not a win"),
    (dict(best=lambda s: [K - 1] if s % 2 else [6]), "wins on half the seeds only"),
])
def test_checkpoint_part_fails(tmp_path, kw, why):
    v = T.checkpoint_check(_ckpt_sweep(tmp_path, _ckpt_fn(**kw)))
    assert not v.passed, why
    assert not v.numbers["tests"]["tournament_vs_min_kl_cov"], why


def test_the_claim_needs_both_parts(tmp_path):
    b = _sweep(tmp_path, _cell_fn())
    good = _ckpt_sweep(tmp_path, _ckpt_fn(), "a1")
    bad = _ckpt_sweep(tmp_path, _ckpt_fn(best=lambda s: [K - 1]), "a2")
    assert T.check({**b, T.CKPT: good}).passed
    assert not T.check({**b, T.CKPT: bad}).passed
    assert not T.check(b).passed  # part (a) not run
    worse_b = _sweep(tmp_path / "w", _cell_fn(mle_bad=lambda n: 0.15))
    assert not T.check({**worse_b, T.CKPT: good}).passed


def test_checkpoint_runner_records_match_the_train_runner(tmp_path):
    """Keeping every checkpoint changes no number: the records equal the "train" runner's on
    the same cell; the generations file is (S, K, K, m) and finite, the picks in range."""
    from covsim.runners import run_cell

    over = ["train.steps=40", "train.eval_every=20", "pretrain.train.steps=20",
            "pretrain.train.eval_every=10", "sweep.seeds=2", "runner.gen_samples=8",
            "train.eval_samples=256", "train.select_samples=32"]
    cfg = load_config(CKPT_TOML, "quick", over)
    out = tmp_path / "sel"
    run_sweep(cfg, run_cell, out, progress=False)
    same = [o for o in over if not o.startswith("runner.")] + [
        f"train.Ns={list(cfg.train.Ns)}", "train.pass_at=[8]"]
    tcfg = load_config(ROOT / "experiments" / "fig1_mechanism.toml", "quick", same)
    ref = tmp_path / "ref"
    run_sweep(tcfg, run_cell, ref, progress=False)
    a, b = read_metrics(out), read_metrics(ref)
    cols = [c for c in b.columns if c not in ("run",)]
    pd_equal = a[cols].reset_index(drop=True).equals(b[cols].reset_index(drop=True))
    assert pd_equal
    gen = np.load(next(out.glob("**/select_gen_logq.npy")))
    assert gen.shape == (2, 3, 3, 8) and np.all(np.isfinite(gen))
    o = T.checkpoint_outcomes(out)
    assert len(o["best_cov"]) == 2


@pytest.mark.slow
def test_quick_profile_end_to_end(tmp_path):
    from covsim.runners import run_cell

    out = tmp_path / "tournament"
    run_sweep(load_config(TOML, "quick"), run_cell, out, progress=False)
    ck = tmp_path / T.CKPT
    run_sweep(load_config(CKPT_TOML, "quick"), run_cell, ck, progress=False)
    v = CLAIMS["tournament"].check({"tournament": out, T.CKPT: ck})
    assert v.passed, v.line()
