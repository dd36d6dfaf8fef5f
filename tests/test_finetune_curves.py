"""covsim.finetune_curves: Fig. 1's four-part check on synthetic fine-tuning sweeps — a PASS,
and a FAIL for every way each part can break (an uncovered or unconverged start; a monotone
falling, a monotone rising and a flat-then-rising Cov curve; a KL that does not fall; Pass@N
that tracks KL; a tournament that ties with or loses to min-KL) — with select_logq.npy built
so that the tournament's pick is known; the statistics it uses against SciPy and by hand."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

from covsim import finetune_curves as F
from covsim import stats
from covsim.config import load_config
from covsim.results import RunResult
from covsim.select import tournament
from covsim.sweep import run_sweep
from covsim.tasks.rules import blind_start_kl

ROOT = Path(__file__).resolve().parents[1]
CFG = load_config(ROOT / "experiments" / "fig1_mechanism.toml", "quick",
                  ["train.steps=400", "train.eval_every=20", "sweep.seeds=6"])
STEPS = list(range(0, CFG.train.steps + 1, CFG.train.eval_every))
T = len(STEPS)  # 21 checkpoints
KL_STAR = blind_start_kl()
COV_NS = (2, 3, 4, 4.6, 5.7, 6)
N_SELECT = 64


def _logq(pick, rng) -> np.ndarray:
    """(T, N_SELECT) log-likelihoods on which the tournament's best score is shared exactly by
    the checkpoints in `pick` (an int or a list) at every threshold 2 ≤ N ≤ 6:
    L[k, i] = b_i − 3·min_{p ∈ pick} |k − p| − u_ki, u ∈ [0, ½): a member is never beaten by
    log N ≥ log 2 > ½ (score 0), a non-member is beaten by a member on every sample by ≥ 2.5 >
    log 6 (score 1)."""
    picks = np.atleast_1d(pick)
    b = rng.normal(-20.0, 3.0, N_SELECT)
    u = rng.uniform(0.0, 0.5, (T, N_SELECT))
    k = np.arange(T)[:, None]
    dist = np.min(np.abs(k - picks[None, :]), axis=1)[:, None]
    return (b - 3.0 * dist - u).astype(np.float32)


def _level(shape: str, start: float) -> np.ndarray:
    """The uncovered level u(t) over the T checkpoints: "u" falls from `start` to 0.01 at
    t = 4, then rises to 0.1; "falling" falls to its minimum at the end; "rising" starts at
    its minimum 0; "flat_rise" stays at 0.01 until t = 10, then rises."""
    t = np.arange(T, dtype=float)
    if shape == "u":
        return np.where(t <= 4, 0.01 + (start - 0.01) * ((4 - t) / 4) ** 2,
                        0.01 + 0.09 * (t - 4) / (T - 5))
    if shape == "falling":
        return 0.005 + (start - 0.005) * (1 - t / (T - 1))
    if shape == "rising":
        return 0.1 * t / (T - 1)
    if shape == "flat_rise":
        return np.where(t <= 10, 0.01, 0.01 + 0.09 * (t - 10) / (T - 11))
    raise ValueError(shape)


def _cell_fn(shape="u", start_cov=0.06, start_kl=1.05 * KL_STAR, kl_shape="falling",
             pass_from="cov", pick="cov_min"):
    """Synthetic `train` runner output: per seed, "pretrain" records (adversarial values,
    ignored by the check), then "main" records with Cov_N = u(t)·(1 + noise) for N ≥ 3 (and
    0.1 + 8u(t) at N = 2), KL falling from `start_kl` (or rising), Pass@N = 1 − (1 − p)^N
    with p = 0.9 − 2u(t) ("cov") or p = 0.9 − 0.3(KL − 0.3) ("kl"); a select_logq.npy whose
    tournament picks the Cov-minimising checkpoint, the min-KL one (the last: a tie) or the
    first."""

    def fn(cfg, cell):
        recs, logq = [], []
        rng = np.random.default_rng(7)
        for s in cell.seeds:
            noise = np.random.default_rng(100 + s)
            for step in (0, 500, 1000):
                recs.append({"stage": "pretrain", "seed": s, "step": step, "kl": 9.0,
                             "cov": {2: 1.0, 4: 1.0}, "pass_at": {}})
            u = _level(shape, start_cov) * (1 + 0.02 * noise.uniform(size=T))
            decay = np.exp(-np.arange(T) / 5)
            kl = (0.33 + (start_kl - 0.33) * decay if kl_shape == "falling"
                  else start_kl + (start_kl - 0.33) * (1 - decay))
            kl = kl * (1 + 0.01 * s)
            p = 0.9 - 2 * u if pass_from == "cov" else 0.9 - 0.3 * (kl - 0.3)
            for i, step in enumerate(STEPS):
                cov = {N: float(u[i]) for N in COV_NS}
                cov[2] = float(min(1.0, 0.1 + 8 * u[i]))
                recs.append({"stage": "main", "seed": s, "step": step, "kl": float(kl[i]),
                             "cov": cov,
                             "pass_at": {N: float(1 - (1 - p[i]) ** N) for N in F.PASS_NS}})
            j = {"cov_min": int(np.argmin(u)), "min_kl": int(np.argmin(kl)), "first": 0,
                 "tied_with_last": [int(np.argmin(u)), T - 1]}[pick]
            logq.append(_logq(j, rng))
        buf = io.BytesIO()
        np.save(buf, np.stack(logq))
        return RunResult(recs, {}, files={F.SELECT_FILE: buf.getvalue()})

    return fn


def _check(tmp_path, name="s", **kw):
    out = tmp_path / name
    manifest = run_sweep(CFG, _cell_fn(**kw), out, progress=False)
    assert all(c["status"] == "done" for c in manifest["cells"])
    return F.check(out, "test", KL_STAR), out


def test_logq_construction_fixes_the_tournament_pick():
    rng = np.random.default_rng(0)
    for pick in (0, 7, T - 1):
        L = _logq(pick, rng)
        for N in (2.0, 4.0, 6.0):
            j, scores = tournament(L, N)
            assert j == pick and scores[pick] == 0 and np.all(np.delete(scores, pick) == 1)
    j, scores = tournament(_logq([4, T - 1], rng), 4.0)
    assert j == 4 and np.flatnonzero(scores == 0).tolist() == [4, T - 1]


def test_passes_when_the_mechanism_is_there(tmp_path):
    v, _ = _check(tmp_path)
    assert v.passed, v.line()
    n = v.numbers
    assert n["parts"] == {"seeds": True, "start": True, "u_shape": True, "predictors": True,
                          "selection": True}
    assert n["seeds"] == 6 and n["checkpoints"] == T
    for N in ("3", "4", "4.6", "5.7"):
        assert n["u_shape"][N]["argmin"] == 4 and n["u_shape"][N]["u"]
    for N in F.LARGER_NS:
        assert n["tournament_gain"][N]["wins"] == 6
        assert n["strength_gap"][N]["lo"] > 0
    assert "fails" not in v.note


@pytest.mark.parametrize("kw, fails", [
    ({"start_cov": 0.3}, {"start"}),            # Cov_4 at the start above 0.1
    ({"start_kl": 2.0}, {"start"}),             # the start is far from converged
    ({"start_kl": 0.6}, {"start"}),             # ... or below the class-blind value
    # monotone: minimum at the last checkpoint, which is also min-KL's pick, so Cov_{N/2}
    # and KL rank Pass@N alike and the tournament ties: the U is what parts 3 and 4 need
    ({"shape": "falling"}, {"u_shape", "predictors", "selection"}),
    ({"shape": "rising"}, {"u_shape"}),         # monotone: minimum at the start
    ({"shape": "flat_rise"}, {"u_shape"}),      # no fall before the rise
    ({"kl_shape": "rising"}, {"u_shape"}),      # KL does not fall
    ({"pass_from": "kl", "pick": "min_kl"}, {"predictors", "selection"}),  # Pass@N tracks KL
    ({"pick": "min_kl"}, {"selection"}),        # the tournament ties with min-KL
    # its tie-break picks the dip, but the last checkpoint shares its best score: scored at
    # the worst of them, it ties with min-KL
    ({"pick": "tied_with_last"}, {"selection"}),
    ({"pick": "first", "start_cov": 0.3}, {"start", "selection"}),  # ... or picks worse
])
def test_each_way_to_break_a_part_fails_it(tmp_path, kw, fails):
    """Exactly the parts named fail (where a case breaks two, both are named)."""
    v, _ = _check(tmp_path, **kw)
    assert not v.passed
    assert {k for k, ok in v.numbers["parts"].items() if not ok} == fails, v.line()
    assert "fails: " + ", ".join(k for k in v.numbers["parts"] if k in fails) in v.note


def test_fewer_than_four_seeds_fail(tmp_path):
    cfg = CFG.model_copy(update={"sweep": CFG.sweep.model_copy(update={"seeds": [0, 1, 2]})})
    out = tmp_path / "three"
    run_sweep(cfg, _cell_fn(), out, progress=False)
    v = F.check(out, "test", KL_STAR)
    assert not v.passed and v.numbers["parts"] == {
        "seeds": False, "start": True, "u_shape": True, "predictors": True, "selection": True}


def test_a_tie_is_counted_apart_and_is_not_a_win(tmp_path):
    v, _ = _check(tmp_path, pick="min_kl")
    for N in F.PASS_NS:
        g = v.numbers["tournament_gain"][N]
        assert (g["wins"], g["ties"], g["losses"]) == (0, 6, 0) and g["median"] == 0
    assert "W/T/L 0/6/0" in v.statistic


def test_pretrain_records_and_seed_order(tmp_path):
    """The pre-training records are not read (else 3 extra checkpoints per seed with KL 9);
    select_logq's rows follow the cell's seed order (seeds [1, 0]: row 0 is seed 1's)."""
    cfg = load_config(ROOT / "experiments" / "fig1_mechanism.toml", "quick",
                      ["train.steps=400", "train.eval_every=20", "sweep.seeds=[1, 0]"])
    out = tmp_path / "o"

    def fn(c, cell):
        r = _cell_fn()(c, cell)
        arr = np.load(io.BytesIO(r.files[F.SELECT_FILE]))
        arr[list(cell.seeds).index(1)] = _logq(8, np.random.default_rng(1))
        arr[list(cell.seeds).index(0)] = _logq(3, np.random.default_rng(2))
        buf = io.BytesIO()
        np.save(buf, arr)
        return RunResult(r.records, r.summary, files={F.SELECT_FILE: buf.getvalue()})

    run_sweep(cfg, fn, out, progress=False)
    c = F.seed_curves(out)
    assert c["seeds"] == [0, 1] and c["kl"].shape == (2, T) and c["kl"].max() < 9
    pk = F.picks(c)
    assert pk[8]["tournament"] == [3, 8]


def test_no_results(tmp_path):
    def broken(cfg, cell):
        raise RuntimeError("boom")

    run_sweep(CFG, broken, tmp_path / "f", progress=False)
    v = F.check(tmp_path / "f", "test", KL_STAR)
    assert not v.passed and v.statistic == "no results on disk"


def test_figure(tmp_path):
    _, out = _check(tmp_path)
    f = F.figure(out, tmp_path / "fig" / "x.png", "title")
    assert f.is_file() and f.stat().st_size > 10_000


# ---- the statistics -----------------------------------------------------------------------------


def test_u_shape_by_hand():
    t = np.arange(9, dtype=float)
    c = np.stack([(t - 3) ** 2 / 9 + 0.01 * k for k in range(5)])
    u = stats.u_shape(c)
    assert u["argmin"] == 3 and u["interior"] and u["u"]
    assert u["drop"] == pytest.approx(1.0) and u["rise"] == pytest.approx(25 / 9)
    # identical seeds: a zero-width interval
    assert u["rise_lo"] == pytest.approx(25 / 9) and u["drop_hi"] == pytest.approx(1.0)
    flat_end = np.stack([np.r_[1.0, 0.5, 0.0, 0.0, 0.0]] * 3)
    assert not stats.u_shape(flat_end)["u"]  # minimum first reached at t = 2, end equal to it
    noisy = np.random.default_rng(0).normal(0, 1, (4, 9))  # no shape: intervals cover 0
    assert not stats.u_shape(noisy + np.linspace(0, 0.01, 9))["u"]
    with pytest.raises(ValueError, match="curves"):
        stats.u_shape(np.ones((3, 2)))


def test_rank_strength_gap_matches_scipy_per_seed():
    rng = np.random.default_rng(3)
    target = rng.normal(size=(5, 12))
    a = -target + 0.3 * rng.normal(size=(5, 12))
    b = rng.integers(0, 3, size=(5, 12)).astype(float)  # many ties
    b[0] = 1.0  # a constant predictor: strength 0
    g = stats.rank_strength_gap(target, a, b, boot=200)
    for s in range(5):
        assert g["s_a"][s] == pytest.approx(-sps.spearmanr(target[s], a[s]).statistic)
        want = 0.0 if s == 0 else -sps.spearmanr(target[s], b[s]).statistic
        assert g["s_b"][s] == pytest.approx(want)
    assert g["lo"] <= g["gap"] <= g["hi"] and g["lo"] > 0
    x = rng.integers(0, 4, (3, 10)).astype(float)
    np.testing.assert_allclose(stats._avg_ranks(x), np.stack([sps.rankdata(r) for r in x]))


def test_paired_gain_counts():
    g = stats.paired_gain([0.02, 0.0, 0.01, -0.01, 0.03])
    assert (g["wins"], g["ties"], g["losses"]) == (3, 1, 1)
    assert g["median"] == pytest.approx(0.01) and g["lo"] <= g["median"] <= g["hi"]
    assert stats.paired_gain([0.0] * 4)["median"] == 0 and stats.paired_gain([0.0] * 4)["hi"] == 0
    assert math.isclose(stats.paired_gain([0.1] * 3)["lo"], 0.1)
