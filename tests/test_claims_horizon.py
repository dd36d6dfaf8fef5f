"""Claim horizon: the check on synthetic sweeps (PASS and each way to FAIL), the figure, the
Wilson half-width, the runner's per-class scores on a tiny mixture, and (slow) the quick
profile end to end."""

from __future__ import annotations

import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from covsim import stats
from covsim.claims import CLAIMS
from covsim.claims import horizon as hz
from covsim.config import load_config
from covsim.results import RunResult, read_summaries
from covsim.runners.tabular import tabular_model_fn
from covsim.runners.train import _class_program, class_log_ratios
from covsim.sweep import run_sweep
from covsim.train import TrainSpec

ROOT = Path(__file__).resolve().parents[1]
TOML = ROOT / "experiments" / "horizon.toml"
STEPS = (0, 20, 40, 200)
M = 4096  # eval_samples of the quick profile (the check reads it from config.toml)


def _cell_fn(kl_of_H, cov_of_H, rare_kl_token=2.0, seeds=8, m=M):
    """A sweep cell function writing synthetic training curves: final KL = kl_of_H(H) and
    Cov_16 = cov_of_H(H), each with seed noise of the size a real run has (Cov: the binomial
    s.d. of M eval samples; KL: 3%), plus the runner's per-class summary."""

    def fn(cfg, cell):
        H = cfg.task.H
        rng = np.random.default_rng(H)
        recs, kls, covs = [], [], []
        for s in range(seeds):
            p = cov_of_H(H)
            kl = kl_of_H(H) * (1 + 0.03 * rng.standard_normal())
            cov = rng.binomial(m, p) / m
            kls.append(kl)
            covs.append(cov)
            for step in STEPS:
                decay = math.exp(-step / 20)
                c = cov + (1 - cov) * decay
                recs.append({"seed": s, "step": step, "kl": kl + 5 * H * decay,
                             "cov": {16: c}, "cov_lo": {16: c}, "cov_hi": {16: c}})
        per_class = {
            "weights": [0.94, 0.05, 0.01],
            "kl": [[0.02] * seeds, [rare_kl_token * H] * seeds, [0.5] * seeds],
            "kl_token": [[0.02 / H] * seeds, [rare_kl_token] * seeds, [0.5 / H] * seeds],
            "cov": {16: [[0.0] * seeds, [0.98] * seeds, [0.05] * seeds]},
        }
        return RunResult(recs, {"final": {"kl": kls}, "per_class": per_class})

    return fn


def _sweep(tmp_path, **kw):
    out = tmp_path / "horizon"
    cfg = load_config(TOML, "quick", [f"train.eval_samples={kw.get('m', M)}"])
    manifest = run_sweep(cfg, _cell_fn(**kw), out, progress=False)
    assert all(c["status"] == "done" for c in manifest["cells"])
    return {"horizon": out}


def _linear(H):
    return 0.1 * H + 0.03


def _flat(H):
    return 0.05


def test_registered():
    c = CLAIMS["horizon"]
    assert c.experiments == ("horizon",) and TOML.is_file()


def test_check_passes_on_linear_kl_and_flat_coverage(tmp_path):
    v = hz.check(_sweep(tmp_path, kl_of_H=_linear, cov_of_H=_flat))
    assert v.passed, v.line()
    assert v.numbers["kl_slope"] == pytest.approx(0.1, rel=0.05)
    assert v.numbers["kl_r2"] >= hz.KL_R2_MIN
    assert v.numbers["cov16_spread"] <= v.numbers["cov16_tolerance"]
    assert v.numbers["rare_kl_token"] == [2.0] * 4


@pytest.mark.parametrize(
    "kw, why",
    [
        ({"kl_of_H": lambda H: 0.8, "cov_of_H": _flat}, "KL flat in H"),
        ({"kl_of_H": lambda H: 0.3 * math.sqrt(H), "cov_of_H": _flat}, "KL ∝ √H, not ∝ H"),
        ({"kl_of_H": _linear, "cov_of_H": lambda H: 0.04 + 0.0004 * H}, "Cov grows with H"),
        ({"kl_of_H": _linear, "cov_of_H": _flat, "rare_kl_token": 0.3}, "rare class learnable"),
    ],
)
def test_check_fails(tmp_path, kw, why):
    v = hz.check(_sweep(tmp_path, **kw))
    assert not v.passed, why


def test_flatness_has_an_effect_size_floor(tmp_path):
    """With 10⁷ eval samples the noise bound is ≈ 4e-4: a 3% drift of Cov_16 over H is then
    accepted by the floor (10% of the mean, 0.005), and said so; a 30% drift is not."""
    small = lambda H: 0.05 * (1 + 0.0005 * (H - 8))
    v = hz.check(_sweep(tmp_path / "a", kl_of_H=_linear, cov_of_H=small, m=10**7))
    assert v.passed and v.numbers["cov16_tolerance_by"] == "floor", v.line()
    assert v.numbers["cov16_tolerance"] == pytest.approx(
        hz.COV_REL_FLOOR * np.mean(v.numbers["cov16_median"]))
    assert "(the floor)" in v.threshold
    big = lambda H: 0.05 * (1 + 0.005 * (H - 8))
    assert not hz.check(_sweep(tmp_path / "b", kl_of_H=_linear, cov_of_H=big, m=10**7)).passed


def test_flatness_tolerance_is_the_larger_bound():
    assert stats.flatness_tolerance(0.002, 0.05, 3.0, 0.1) == (pytest.approx(0.006), "noise")
    assert stats.flatness_tolerance(0.001, 0.05, 3.0, 0.1) == (pytest.approx(0.005), "floor")


def test_check_fails_without_results(tmp_path):
    cfg = load_config(TOML, "quick")

    def broken(cfg, cell):
        raise RuntimeError("boom")

    run_sweep(cfg, broken, tmp_path / "h", progress=False)
    assert not hz.check({"horizon": tmp_path / "h"}).passed


def test_figure(tmp_path):
    dirs = _sweep(tmp_path, kl_of_H=_linear, cov_of_H=_flat)
    files = hz.figure(dirs, tmp_path / "fig")
    assert [f.name for f in files] == ["horizon.png"] and files[0].stat().st_size > 10_000


def test_wilson_half_width():
    """Against the closed form at z = 1.959964 (alpha = 0.05), and z(0.05) itself."""
    assert stats.z_value(0.05) == pytest.approx(1.959964, abs=1e-6)
    p, n, z = 0.05, 4096, 1.959964
    d = 1 + z * z / n
    want = z / d * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert stats.wilson_half_width(p, n, 0.05) == pytest.approx(want, rel=1e-6)


TINY = """
[experiment]
name = "tiny_mixture"
runner = "train_tabular"

[task]
kind = "mixture"
H = 3
weights = [0.5, 0.5]
components = [
    { kind = "markov", V = 3, temperature = 1.0 },
    { kind = "markov", V = 3, temperature = 0.001, n_prompts = 4096 },
]

[model]
kind = "tabular"

[optim]
name = "adam"
lr = 0.1

[train]
steps = 20
batch_size = 16
n_train = 32
eval_every = 10
eval_samples = 512
Ns = [2]

[sweep]
seeds = 2
vmap_seeds = true
"""


def test_runner_per_class_scores(tmp_path):
    """32 training sequences meet at most 16 of the rare class's 4096 near-deterministic
    prompts (≤ 0.4% of its mass); a zero-initialised table stays uniform on unseen prompts,
    so there the per-token KL is log 3 − (row entropy ≈ 0) and r ≈ 3 log 3 ≫ log 2 (never
    covered at N = 2). Of 512 eval samples, the number on seen prompts is ≤ Poisson(2.05),
    ≥ 9 with probability < 3e-4: so KL/token ≥ (1 − 9/512) log 3 − 0.01 and Cov_2 ≥ 1 − 9/512."""
    p = tmp_path / "tiny.toml"
    p.write_text(TINY)
    from covsim.runners import run_cell

    out = tmp_path / "out"
    run_sweep(load_config(p, None), run_cell, out, progress=False)
    s = read_summaries(out)
    assert list(s["status"]) == ["done"]
    pc = s["per_class.kl_token"][0]
    assert np.shape(pc) == (2, 2)
    assert np.all(np.asarray(pc[1]) >= (1 - 9 / 512) * math.log(3) - 0.01)
    assert np.all(np.asarray(pc[1]) <= math.log(3) + 1e-4)
    cov = s["per_class.cov"][0][2]
    assert np.all(np.asarray(cov[1]) >= 1 - 9 / 512)
    assert s["per_class.weights"][0] == [0.5, 0.5]


def test_model_fn_refuses_other_learners(tmp_path):
    p = tmp_path / "tiny.toml"
    p.write_text(TINY.replace('kind = "tabular"', 'kind = "transformer"'))
    from covsim.experiment import build_task

    cfg = load_config(p, None)
    with pytest.raises(ValueError, match="model.kind"):
        tabular_model_fn(cfg, build_task(cfg))


def test_class_log_ratios_layout():
    """With a uniform learner, r = log π_D(y|x) + H log V on every class: the rare class
    (near-deterministic rows) gives r ≈ H log V, the other H log V − its entropy ≤ H log V."""
    from flax import nnx

    from covsim.models.tabular import Tabular, class_radices
    from covsim.tasks.markov import MarkovChain
    from covsim.tasks.mixture import Mixture

    comps = (MarkovChain.random(jax.random.key(1), V=3, H=3, temperature=1.0),
             MarkovChain.random(jax.random.key(2), V=3, H=3, temperature=0.001, n_prompts=64))
    task = Mixture(comps, (0.5, 0.5))

    model = Tabular(3, 3, P=task.P, prompt_vocab=task.prompt_vocab,
                    class_radices=class_radices(task), rngs=nnx.Rngs(0))
    graphdef, p0, rest = nnx.split(model, nnx.Param, ...)

    class Plumbing:  # the part of the trainer that class_log_ratios uses
        spec = TrainSpec(steps=1, batch_size=1, eval_every=1, eval_chunk=100)  # 256 = 3 chunks

        def model(self, p):
            return nnx.merge(graphdef, p, rest)

    t = Plumbing()
    params = jax.tree.map(lambda a: jnp.stack([a, a]), p0)  # two "seeds"
    r = np.asarray(class_log_ratios(t, params, task, jax.random.key(0), 256))
    assert r.shape == (2, 2, 256)
    # log_softmax(z / 0.001) subtracts numbers ≈ |z|/T ≤ 5000 whose float32 ulp is 4.9e-4:
    # each of the 3 token log-probs of π_D is exact to that, so |error| ≤ 1.5e-3
    top, tol = 3 * math.log(3), 1.5e-3
    assert np.all(r <= top + tol)
    # T = 0.001 rows are deterministic up to rare near-ties (top-2 logit gap ≲ 0.005):
    # r = top for most samples, and its mean is within the sequence entropy (< 0.05) of top
    assert np.median(r[1]) == pytest.approx(top, abs=tol)
    assert r[1].mean() > top - 0.05
    assert r[0].mean() < top - 0.3  # temperature-1 rows have entropy well above 0.1 nats
    # the parameters are an argument, not constants of the program: other parameters of the
    # same shapes reuse the one compiled program (per trainer), and change the scores
    r2 = np.asarray(class_log_ratios(t, jax.tree.map(lambda a: a + 1.0, params), task,
                                     jax.random.key(0), 256))
    assert _class_program(t, 256)._cache_size() == 1
    np.testing.assert_allclose(r2, r, atol=1e-5)  # a constant shift of every logit: same π̂
    def token0_up(a):  # +1 to token 0's logit in every context (the table is held flat)
        rows = a.reshape(a.shape[0], -1, 3)  # (seeds, contexts, V)
        return rows.at[..., 0].add(1.0).reshape(a.shape)

    r3 = np.asarray(class_log_ratios(t, jax.tree.map(token0_up, params), task,
                                     jax.random.key(0), 256))
    assert _class_program(t, 256)._cache_size() == 1
    assert not np.allclose(r3, r)


@pytest.mark.slow
def test_quick_profile_end_to_end(tmp_path):
    from covsim.runners import run_cell

    out = tmp_path / "horizon"
    run_sweep(load_config(TOML, "quick"), run_cell, out, progress=False)
    dirs = {"horizon": out}
    v = CLAIMS["horizon"].check(dirs)
    assert v.passed, v.line()
    assert all(f.is_file() for f in CLAIMS["horizon"].figure(dirs, tmp_path / "fig"))


#: The quick profile's numbers as measured before runners moved out of the claims (commit
#: 96640fa, `covsim reproduce horizon --profile quick` on a 2-core x86-64 CPU, jax 0.10.2):
#: the refactor must not change a number. Float32 trainer outputs: compared to 1e-6.
BEFORE_SPLIT = {
    "kl_median": [0.8533568382263184, 1.6814740896224976, 3.1810386180877686, 6.815060138702393],
    "cov16_median": [0.0504150390625, 0.0513916015625, 0.0479736328125, 0.0517578125],
    "rare_kl_token": [2.0240763425827026, 2.0298879146575928, 2.0302995443344116,
                      2.0262115001678467],
}


@pytest.mark.slow
def test_quick_profile_numbers_are_unchanged_by_the_runner_split(tmp_path, capsys):
    from covsim.cli import main

    args = ["-q", "reproduce", "horizon", "--profile", "quick", "--out", str(tmp_path / "r")]
    assert main(args) == 0
    v = CLAIMS["horizon"].check({"horizon": tmp_path / "r" / "quick" / "horizon"})
    for key, want in BEFORE_SPLIT.items():
        assert v.numbers[key] == pytest.approx(want, rel=1e-6), key
