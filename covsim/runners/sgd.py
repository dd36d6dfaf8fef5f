"""Runner "one_pass": one-pass projected SGD variants on an AR linear task whose tokens are
i.i.d. given the prompt (ϕ depends only on (x, y_h)), scored exactly at every iterate — the
§5 study of arXiv 2510.15020v2 (Prop. 5.1 vs Thm 5.1).

Such a response's likelihood under any π_θ depends on its token counts c ∈ ℕ^V only:

    log π_θ(y | x) = Σ_v c_v ⟨θ, Φ[x, v]⟩ − H·logsumexp_v ⟨θ, Φ[x, v]⟩,
    ∇ log π_θ(y | x) = Σ_v c_v Φ[x, v] − H·E_{v ~ π_θ(·|x)} Φ[x, v],

so a fresh sequence is drawn as x ~ µ, c ~ Multinomial(H, π_D(·|x)), a step costs O(K·V·d)
whatever H, and KL and Cov_N are exact sums over the C = binom(H+V−1, V−1) count vectors
(`covsim.tasks.linear.count_scores`) at every iterate, so time averages are exact too.

`one_pass_run` is the whole run as a pure function of its PRNG key (θ_0, the optimizer's
hyperparameters and the key in; the per-iterate KL and Cov_N out); the runner vmaps it over
a hyperparameter grid and the seeds and keeps the I/O outside.
"""

from __future__ import annotations

import itertools
import math
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from covsim import optim
from covsim.checks import check_float, check_int
from covsim.config import Config
from covsim.experiment import build_task
from covsim.registry import signature_params
from covsim.results import RunResult
from covsim.runners.registry import RunnerSpec, config_check, register_runner, runner_params
from covsim.sweep import Cell
from covsim.tasks.linear import count_scores, multinomial_table

Array = jax.Array

#: fold_in offset of the tune seeds' streams (tune seed −i uses TUNE_STREAM + i)
TUNE_STREAM = 1 << 20
#: The training rules the study runs. The first four are optimizers on the sequence-level
#: log-likelihood gradient of fresh sequences; the distillation rules take plain SGD steps on
#: a gradient built from the teacher's next-token distributions π_D(·|x, y_{<h}) (§6.2).
METHODS = ("sgd", "normalized_sgd", "sign_sgd", "adam", "distill_full", "distill_truncated")
#: Methods that take one sequence a step (K_grid does not apply).
ONE_SEQUENCE = ("sgd", "distill_full", "distill_truncated")
#: Methods whose eta_grid is in units of η·H·B: their gradient scale is ∝ H·B.
PER_HB = ("sgd", "distill_full")


def _transform(method: str, eta, lam) -> optax.GradientTransformation:
    """The update rule of covsim.optim for `method`, with (possibly traced) η and λ."""
    if method == "sgd":
        return optim.sgd(eta)
    if method == "normalized_sgd":
        return optim.normalized_sgd(eta, lam)
    if method == "sign_sgd":
        return optim.sign_sgd(eta)
    if method == "adam":
        return optim.adam(eta)
    return optim.sgd(eta)  # the distillation rules: plain projected SGD steps (§6.2)


def sequence_weights(method: str, log_p_x, lq_x, H, A, kc, ke):
    """(K, V) weights w with ĝ = Σ_v w_v Φ[x, v] for K fresh sequences of prompts x (see
    `one_pass_run`): log_p_x, lq_x (K, V) the teacher's and the model's token log-probs at the
    prompts; kc, ke the keys of the token draws (counts, and the truncation's crossing token)."""
    p, q = jnp.exp(log_p_x), jnp.exp(lq_x)
    if method == "distill_full":
        return H * (p - q)  # Σ_h (π_D − π_θ), no tokens drawn
    if method == "distill_truncated":
        eps = jnp.sum(jnp.where(p > 0, p * (log_p_x - lq_x), 0.0), -1)  # (K,)
        m = jnp.minimum(H, A / jnp.maximum(eps, 1e-30))
        whole = jnp.floor(m)
        c = jax.random.multinomial(kc, whole, p)  # counts of the ⌊m⌋ full-weight tokens
        extra = jax.nn.one_hot(jax.random.categorical(ke, log_p_x), p.shape[1])
        return c + (m - whole)[:, None] * extra - m[:, None] * q  # Σ_h α_h (e_{y_h} − π_θ)
    return jax.random.multinomial(kc, H, p) - H * q  # token counts of fresh responses − H·π_θ


def one_pass_run(Phi, log_p, log_mu, theta0, key, eta, lam, *, method: str, K: int, T: int,
                 counts, log_coef, log_N, A=1.0):
    """T steps of θ_{t+1} = Proj_Θ(θ_t + u_t), u_t the `method`'s update for the mini-batch
    gradient ĝ of K fresh sequences, Θ the ℓ2 unit ball. Pure in (key, η, λ).

    ĝ per sequence (x, y), with s(v) = Φ[x, v] − E_{π_θ(·|x)} Φ[x, ·] the token score:
      likelihood rules     Σ_h s(y_h) = Σ_v c_v s(v)            (Eq. 14; c the token counts)
      "distill_full"       Σ_h E_{v~π_D(·|x)} s(v) = H·(E_{π_D} Φ − E_{π_θ} Φ): the gradient
                           of −Σ_h KL(π_D(·|x, y_{<h}) ‖ π_θ(·|x, y_{<h})), teacher-forced
      "distill_truncated"  Σ_h α_h s(y_h), α the truncation weights of Eqs. 24–25 for the token
                           KLs ε_h = ε = KL(π_D(·|x) ‖ π_θ(·|x)) (the same at every position when
                           tokens are i.i.d. given x): α = 1 on the first ⌊m⌋ tokens, m − ⌊m⌋ on
                           the next, 0 after, m = min(H, A/ε), A = log N of the distillation
    Phi (X, V, d) features; log_p (X, V) log π_D(v | x); log_mu (X,); theta0 (d,);
    counts (C, V), log_coef (C,) the count table; log_N (k,); A the truncation budget.
    Returns (kl (T,), cov (T, k), final θ (d,)): exact scores of θ_1..θ_T."""
    tx = optax.chain(_transform(method, eta, lam), optim.project(1.0, "l2"))
    H = jnp.sum(counts[0])

    def step(carry, k):
        theta, state = carry
        kx, kc, ke = jax.random.split(k, 3)
        x = jax.random.categorical(kx, log_mu, shape=(K,))
        lq = jax.nn.log_softmax(Phi[x] @ theta, axis=-1)  # (K, V)
        w = sequence_weights(method, log_p[x], lq, H, A, kc, ke)
        score = jnp.einsum("kv,kvd->kd", w, Phi[x])  # ĝ per sequence
        g = -jnp.mean(score, axis=0)  # the loss gradient (optax minimizes)
        u, state = tx.update(g, state, theta)
        theta = optax.apply_updates(theta, u)
        kl, cov = count_scores(log_p, jax.nn.log_softmax(Phi @ theta, axis=-1), log_mu, counts,
                               log_coef, log_N)
        return (theta, state), (kl, cov)

    init = (theta0, tx.init(theta0))
    (theta, _), (kl, cov) = jax.lax.scan(step, init, jax.random.split(key, T))
    return kl, cov, theta


@partial(jax.jit, static_argnames=("method", "K", "T"))
def _grid_runs(Phi, log_p, log_mu, theta0, keys, etas, lams, counts, log_coef, log_N, A, *,
               method, K, T):
    """one_pass_run vmapped over settings (etas, lams (G,)) and keys (S,): (G, S, ...)."""
    run = partial(one_pass_run, method=method, K=K, T=T, counts=counts, log_coef=log_coef,
                  log_N=log_N, A=A)
    over_keys = jax.vmap(run, in_axes=(None, None, None, None, 0, None, None))
    over_grid = jax.vmap(over_keys, in_axes=(None, None, None, None, None, 0, 0))
    return over_grid(Phi, log_p, log_mu, theta0, keys, etas, lams)


def one_pass_settings(
    method: str = "sgd",
    eta_grid: dict | None = None,
    lam_grid: list | None = None,
    K_grid: list | None = None,
    n_samples: int = 2000,
    Ns: list | None = None,
    N_theory: float = 4.0,
    distill_N: float = 4.0,
    tune_seeds: int = 8,
    theta0: list | None = None,
    traj_points: int = 40,
) -> None:
    """The [runner] settings of "one_pass" (documentation only; the runner reads them).

    method        one of METHODS
    eta_grid      method -> its grid of steps: "sgd"'s in units of η·H·B (the step a stiff
                  prompt of gradient scale H·B allows scales so, so one grid fits every H),
                  the others' as η (Adam's learning rate)
    lam_grid      λ of "normalized_sgd" (ignored by the others)
    K_grid        mini-batch sizes of every method but "sgd" (one sequence a step, Eq. 14);
                  every K spends the same n_samples fresh sequences: T = n_samples // K
    Ns            the coverage levels scored at every iterate
    N_theory      the N of the proofs' step-size rules (run as setting "proof")
    distill_N     the N of "distill_truncated": the truncation budget A = log N
    tune_seeds    seeds, apart from sweep.seeds, on which a claim picks its settings (the
                  reported seeds are never used for picking)
    theta0        the start (default 0)
    traj_points   iterates kept per run for trajectory plots"""


class StudyInputs(NamedTuple):
    """What a one-pass study's cell needs, validated from its config (`study_inputs`)."""

    task: Any
    method: str
    etas: list[float]      # the method's eta_grid, as given (in the method's units)
    Ns: list[float]
    theta0: Array          # (d,)
    Phi: Array             # (X, V, d) the features
    log_p: Array           # (X, V) log π_D(v | x)
    counts: Array          # (C, V) the count table of H tokens
    log_coef: Array        # (C,)
    log_N: Array           # (k,)
    roles: list[tuple[str, int]]  # ("tune", −1), ..., ("eval", seed), ...
    keys: Array            # one PRNG key per role


def _validated(cfg: Config, runner: str, methods: tuple[str, ...]):
    """(runner params, task, method, etas, Ns, tune, θ_0) of a one-pass study's cell, validated:
    ValueError naming the field otherwise."""
    rp = runner_params(cfg)
    method = rp["method"]
    if method not in methods:
        raise ValueError(f"runner.method: must be one of {list(methods)}, got {method!r}")
    task = build_task(cfg)
    if not hasattr(task, "position_free_log_probs") or task.F.shape[1:3] != (1, 1):
        raise ValueError(f"task.kind: runner '{runner}' needs an AR linear task with "
                         f"features of (x, y_h) only; {cfg.task.kind!r} is not one")
    if task.ball != "l2" or task.R != 1.0:
        raise ValueError(f"task: runner '{runner}' projects onto the ℓ2 unit ball; the task's "
                         f"Θ is the {task.ball} ball of radius {task.R}")
    given = (rp["eta_grid"] or {}).get(method) if isinstance(rp["eta_grid"], dict) else None
    if not isinstance(given, list) or not given or min(float(e) for e in given) <= 0:
        raise ValueError(f"runner.eta_grid.{method}: must be a non-empty list of positive steps, "
                         f"got {given!r}")
    Ns = [float(N) for N in (rp["Ns"] or [4.0])]
    if min(Ns) <= 1:
        raise ValueError(f"runner.Ns: every N must be > 1, got {rp['Ns']!r}")
    tune = check_int("runner.tune_seeds", rp["tune_seeds"], 0)
    theta0 = jnp.asarray(rp["theta0"] if rp["theta0"] is not None else np.zeros(task.d),
                         jnp.float32)
    if theta0.shape != (task.d,):
        raise ValueError(f"runner.theta0: must have d = {task.d} entries, got {theta0.shape}")
    return rp, task, method, [float(e) for e in given], Ns, tune, theta0


def study_inputs(cfg: Config, cell: Cell, runner: str, methods: tuple[str, ...]) -> StudyInputs:
    """Validate a one-pass study's [runner] (method, eta_grid, Ns, tune_seeds, theta0) and
    task (AR linear, features of (x, y_h) only, Θ the ℓ2 unit ball), and build the shared
    arrays. The cell's seeds are reported; the tune seeds (ids −1, −2, ...) are streams folded
    off the first seed's key, independent of every reported seed's stream."""
    _, task, method, etas, Ns, tune, theta0 = _validated(cfg, runner, methods)
    counts, log_coef = (jnp.asarray(a, jnp.float32) for a in multinomial_table(task.H, task.V))
    roles = [("tune", -1 - i) for i in range(tune)] + [("eval", s) for s in cell.seeds]
    base = jax.random.key(cell.rng_seed(cell.seeds[0]))
    keys = jnp.stack([jax.random.fold_in(base, TUNE_STREAM - s) if s < 0
                      else jax.random.key(cell.rng_seed(s)) for _, s in roles])
    return StudyInputs(task, method, etas, Ns, theta0, task.F[:, 0, 0],
                       task.position_free_log_probs(task.theta), counts, log_coef,
                       jnp.log(jnp.asarray(Ns, jnp.float32)), roles, keys)


def _one_pass_settings(rp: dict, method: str):
    """The one_pass runner's own settings, validated: (lams, Ks, n_samples, distill_N)."""
    lams = [float(v) for v in (rp["lam_grid"] or [1.0])] if method == "normalized_sgd" else [0.0]
    if min(lams) < 0:
        raise ValueError(f"runner.lam_grid: every λ must be ≥ 0, got {rp['lam_grid']!r}")
    Ks = [1] if method in ONE_SEQUENCE else sorted(
        {check_int(f"runner.K_grid[{i}]", k, 1) for i, k in enumerate(rp["K_grid"] or [1])})
    n_samples = check_int("runner.n_samples", rp["n_samples"], max(Ks))
    distill_N = check_float("runner.distill_N", rp["distill_N"], 1.0, low_open=True)
    return lams, Ks, n_samples, distill_N


def _check_one_pass(cfg: Config) -> None:
    rp, _, method, *_ = _validated(cfg, "one_pass", METHODS)
    _one_pass_settings(rp, method)


@register_runner(
    "one_pass",
    RunnerSpec(reads=("runner",), requires=("runner",), check=config_check(_check_one_pass)),
    params=signature_params(one_pass_settings),
)
def run_one_pass(cfg: Config, cell: Cell) -> RunResult:
    """Every setting of the cell's method (grid × K, and the proof's step) on the tune seeds
    and on the cell's seeds; one record per (setting, seed) with the time-averaged and final
    KL and Cov_N (θ_0 left out of the average) and a coarse Cov trajectory."""
    rp = runner_params(cfg)
    inp = study_inputs(cfg, cell, "one_pass", METHODS)
    task, method, etas, Ns, roles = inp.task, inp.method, inp.etas, inp.Ns, inp.roles
    H, B = task.H, float(task.B)
    lams, Ks, n_samples, distill_N = _one_pass_settings(rp, method)
    sigma2 = float(task.sigma_star_sq())
    records = []
    for K in Ks:
        T = n_samples // K
        grid = [(e, v, "grid") for e, v in itertools.product(etas, lams)]
        theory = {"B": B, "H": H, "T": T, "sigma2": sigma2, "N": rp["N_theory"], "K": K}
        if method == "sgd":
            grid.append((optim.theory_step_size("sgd", **theory) * H * B, 0.0, "proof"))
        elif method == "normalized_sgd":
            e, v = optim.theory_step_size("normalized_sgd", **theory)
            grid.append((e, v, "proof"))
        elif method == "distill_truncated":
            grid.append((optim.theory_step_size("distill_sgd", **{**theory, "N": distill_N}),
                         0.0, "proof"))
        scale = 1.0 / (H * B) if method in PER_HB else 1.0  # eta_grid holds η·H·B there
        e_arr = jnp.asarray([g[0] * scale for g in grid], jnp.float32)
        l_arr = jnp.asarray([g[1] for g in grid], jnp.float32)
        kl, cov, _ = _grid_runs(inp.Phi, inp.log_p, task.log_mu, inp.theta0, inp.keys, e_arr,
                                l_arr, inp.counts, inp.log_coef, inp.log_N,
                                jnp.float32(math.log(distill_N)), method=method, K=K, T=T)
        kl, cov = np.asarray(kl, np.float64), np.asarray(cov, np.float64)  # (G,S,T), (G,S,T,k)
        pts = np.unique(np.linspace(0, T - 1, min(rp["traj_points"], T)).round().astype(int))
        for gi, (e, v, setting) in enumerate(grid):
            for si, (role, seed) in enumerate(roles):
                k_t, c_t = kl[gi, si], cov[gi, si]
                records.append({
                    "step": T, "seed": seed, "role": role, "method": method, "K": K,
                    "setting": setting, "eta": float(e * scale), "eta_HB": float(e * scale * H * B),
                    "lam": float(v), "T": T, "H": H, "B": B, "sigma2": sigma2,
                    "kl": float(np.mean(k_t)), "kl_final": float(k_t[-1]),
                    "cov": dict(zip(Ns, np.mean(c_t, 0).tolist(), strict=True)),
                    "cov_final": dict(zip(Ns, c_t[-1].tolist(), strict=True)),
                    "traj_t": (pts + 1).tolist(),
                    "traj_Ns": Ns,
                    "traj_cov": c_t[pts].T.tolist(),  # (k, points): Cov_N at the kept iterates
                    "finite": bool(np.all(np.isfinite(k_t))),
                })
    return RunResult(records, {"method": method, "H": H, "sigma2": sigma2, "Ks": Ks,
                               "tune_seeds": sum(r == "tune" for r, _ in roles)})
