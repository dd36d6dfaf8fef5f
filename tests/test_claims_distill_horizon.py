"""Claim distill_horizon: the runner's distillation gradients against covsim.optim's truncated
distillation loss and the teacher-forced KL gradient on explicit sequences, the truncation
weights' identity, and the check on synthetic result sets (PASS and each way to FAIL)."""

from __future__ import annotations

import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from covsim import optim
from covsim.claims import CLAIMS
from covsim.claims import distill_horizon as D
from covsim.config import load_config
from covsim.metrics import token_kl
from covsim.results import RunResult
from covsim.runners.sgd import sequence_weights
from covsim.sweep import run_sweep
from covsim.tasks.paper import heterogeneous_mixture_task

ROOT = Path(__file__).resolve().parents[1]
TOML = ROOT / "experiments" / "one_pass.toml"


def _prompt_tables(theta, H=12, x=1):
    task = heterogeneous_mixture_task(H=H)
    Phi = task.F[x, 0, 0]  # (V, d)
    log_p = task.position_free_log_probs(task.theta)[x]
    return task, Phi, log_p, lambda th: jax.nn.log_softmax(Phi @ th)


@pytest.mark.parametrize("theta", [[0.0, 0.25, 0.433], [0.6, 0.3, 0.1], [0.84, 0.5, 0.0]])
def test_truncated_weights_match_the_truncated_distillation_loss(theta):
    """ĝ = w·Φ from the runner equals −∇ of optim.truncated_distillation_loss on an explicit
    sequence whose first ⌊m⌋ tokens have the drawn counts and whose next token is the drawn
    crossing token (tokens i.i.d. given x: every position has the same ε)."""
    H, A = 12, math.log(4.0)
    task, Phi, log_p, lq_of = _prompt_tables(jnp.asarray(theta), H)
    th = jnp.asarray(theta, jnp.float32)
    kc, ke = jax.random.split(jax.random.key(5))
    w = sequence_weights("distill_truncated", log_p[None], lq_of(th)[None], H, A, kc, ke)[0]
    eps = float(token_kl(log_p, lq_of(th)))
    m = min(H, A / eps)
    whole = int(math.floor(m))
    c = np.asarray(jax.random.multinomial(kc, float(whole), jnp.exp(log_p)[None])[0]).astype(int)
    v = int(jax.random.categorical(ke, log_p[None])[0])
    y = np.concatenate([np.repeat(np.arange(3), c), [v] * (H - whole)])[:H]
    loss = lambda t: optim.truncated_distillation_loss(  # noqa: E731
        jnp.broadcast_to(log_p, (H, 3)), jnp.broadcast_to(lq_of(t), (H, 3)), jnp.asarray(y), A)
    g = -jax.grad(loss)(th)
    np.testing.assert_allclose(w @ Phi, g, rtol=2e-4, atol=2e-4)
    alpha = optim.truncation_weights(jnp.full(H, eps), A)
    assert float(jnp.sum(alpha * eps)) == pytest.approx(min(A, H * eps), rel=1e-5)


def test_full_distillation_is_the_teacher_forced_kl_gradient():
    H = 9
    th = jnp.asarray([0.3, 0.1, 0.2])
    task, Phi, log_p, lq_of = _prompt_tables(th, H)
    k = jax.random.key(0)
    w = sequence_weights("distill_full", log_p[None], lq_of(th)[None], H, 1.0, k, k)[0]
    g = -jax.grad(lambda t: H * token_kl(log_p, lq_of(t)))(th)  # −∇ Σ_h KL(π_D ‖ π_θ)
    np.testing.assert_allclose(w @ Phi, g, rtol=1e-4, atol=1e-5)


# ---- the check on synthetic result sets -------------------------------------------------------

GRID = [0.5, 1.0, 1.5, 2.0, 2.5]


def _cell_fn(full_slope=0.8, trunc_slope=0.2, trunc_level=0.002, best_c=1.5):
    def fn(cfg, cell):
        method, H = cfg.runner.params["method"], cfg.task.H
        rng = np.random.default_rng(H + 3 * len(method))
        recs = []
        seeds = [("tune", -1 - i) for i in range(6)] + [("eval", s) for s in cell.seeds]
        if method == "distill_full":
            settings = [(c, "grid") for c in GRID]
        elif method == "distill_truncated":
            settings = [(e, "grid") for e in (0.01, 0.1)] + [(1e-6, "proof")]
        else:
            return RunResult([], {})
        for e, setting in settings:
            for role, s in seeds:
                if method == "distill_full":
                    base = 0.001 * (H / 4) ** full_slope * (1 + abs(e - best_c))
                else:
                    base = 1.0 if setting == "proof" else \
                        trunc_level * (H / 4) ** trunc_slope * (1 if e == 0.01 else 3)
                cov = min(1.0, base * math.exp(0.1 * rng.standard_normal()))
                recs.append({"step": 2000, "seed": s, "role": role, "method": method, "K": 1,
                             "setting": setting, "eta": e, "eta_HB": e, "lam": 0.0, "H": H,
                             "sigma2": 0.048 * H, "kl": 10 * cov, "cov": {4: cov},
                             "finite": True})
        return RunResult(recs, {})

    return fn


def _sweep(tmp_path, fn):
    out = tmp_path / "one_pass"
    cfg = load_config(TOML, "quick", ["sweep.seeds=12", 'sweep.axes={"task.H" = [4, 8, 16, 32, '
                                      '64], "runner.method" = ["distill_full", '
                                      '"distill_truncated"]}'])
    run_sweep(cfg, fn, out, progress=False)
    return {"one_pass": out}


def test_registered():
    assert CLAIMS["distill_horizon"].experiments == ("one_pass",)


def test_check_passes(tmp_path):
    v = D.check(_sweep(tmp_path, _cell_fn()))
    assert v.passed, v.line()
    assert v.numbers["truncated_pick"] == 0.01 and v.numbers["bound_slope"] == pytest.approx(0.5)


@pytest.mark.parametrize(
    "kw, failing, why",
    [
        (dict(full_slope=0.0), "full_grows", "full distillation flat: no effect to remove"),
        (dict(trunc_slope=0.8), "truncated_slower", "truncated grows like full"),
        (dict(trunc_slope=0.0, trunc_level=0.05), "truncated_below_at_H_max",
         "truncated flat but worse than full at H_max"),
        (dict(trunc_slope=0.65, full_slope=1.6), "truncated_within_bound_shape",
         "truncated grows faster than √σ⋆²"),
        (dict(best_c=2.5), "full_pick_interior", "full distillation's step at the grid's edge"),
    ],
)
def test_check_fails(tmp_path, kw, failing, why):
    v = D.check(_sweep(tmp_path, _cell_fn(**kw)))
    assert not v.passed, why
    assert not v.numbers["tests"][failing], (why, v.numbers["tests"])


def test_figure(tmp_path):
    files = D.figure(_sweep(tmp_path, _cell_fn()), tmp_path / "fig")
    assert files[0].name == "distill_horizon.png" and files[0].stat().st_size > 10_000
