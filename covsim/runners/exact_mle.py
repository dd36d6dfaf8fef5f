"""Exact-MLE runners: the estimator the paper's sample-size results are about (Thm 4.1,
Cor 4.2, Thm 4.2, Prop. 3.2 of arXiv 2510.15020v2), fitted to a stationarity tolerance by
`covsim.mle` rather than approximated by SGD.

    sample_size_mle   the rare-prompts instance (`covsim.tasks.paper`), exact KL and Cov_N
                      (`covsim.tasks.linear.iid_token_scores`), one panel over n or over H
    prop_3_2_mle      Prop. 3.2's two-prompt instance over an H grid, exact KL and Cov_N
    variance_mle      the pivotal instance (`covsim.tasks.paper`), one panel over σ⋆² (k),
                      n or H; exact KL, Cov_N on fresh samples with exact log-probabilities
    mle               any AR linear task, KL and Cov_N on fresh evaluation samples
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from covsim.checks import check_int
from covsim.config import Config
from covsim.evaluate import evaluate, make_eval_set
from covsim.experiment import build_task
from covsim.mle import fit_loglinear_mle, fit_padded_mle
from covsim.models.loglinear import REQUIRED
from covsim.registry import signature_params
from covsim.results import RunResult
from covsim.runners.registry import RunnerSpec, config_check, register_runner, runner_params
from covsim.sweep import Cell
from covsim.tasks.linear import (
    AutoregressiveLinear,
    iid_token_kl,
    iid_token_scores,
    prop_3_2_kl_lower_bound,
)
from covsim.tasks.paper import expected_missing_mass, pivotal_task, rare_prompts_task

#: fit_loglinear_mle's keyword arguments that `[runner]` may set (runner "mle").
SOLVER_KEYS = ("l2", "tol", "max_iter")
#: The exact studies read n and the N grid from [train], nothing else.
EXACT = RunnerSpec(
    reads=("train",), requires=("train",), train_keys=("n_train", "Ns"),
    train_required=("n_train",),
)


# ---- sample_size_mle -------------------------------------------------------------------------

#: Instance parameters a sample_size config may set in [task] (besides kind, H and the grids).
INSTANCE_KEYS = ("X_rare", "q_min", "q_max", "B", "b", "k", "theta_piv", "seed")


def _instance(cfg: Config) -> dict[str, Any]:
    p = cfg.task.params
    unknown = sorted(set(p) - {*INSTANCE_KEYS, "panel", "n_grid", "H_grid"})
    if unknown:
        raise ValueError(
            f"task: unknown key(s) {unknown} for the sample_size runner; allowed: "
            f"{', '.join([*INSTANCE_KEYS, 'panel', 'n_grid', 'H_grid', 'H'])}"
        )
    return {k: p[k] for k in INSTANCE_KEYS if k in p}


def _grid(name: str, values) -> list[int]:
    if not isinstance(values, list) or not values:
        raise ValueError(f"{name}: must be a non-empty list of integers, got {values!r}")
    return sorted({check_int(f"{name}[{i}]", v, 1) for i, v in enumerate(values)})


@register_runner(
    "sample_size_mle", dataclasses.replace(EXACT, task_keys=("panel", "n_grid", "H_grid"))
)
def run_sample_size(cfg: Config, cell: Cell) -> RunResult:
    """One panel of the sample-size study, every seed of the cell; one record per (seed, n, H).

    task.panel = "n": n over task.n_grid at H = task.H; "H": H over task.H_grid at
    n = train.n_train. Per seed one dataset is drawn at the largest (n, H) of the panel and
    its first n rows / first H positions are the smaller datasets (exact samples of the
    smaller instances: see `rare_prompts_task`), so trends in n or H are not confounded with
    dataset noise. Each fit is `fit_padded_mle` on the panel's largest shape (one compile)."""
    if cfg.task.kind != "rare_prompts":
        raise ValueError(
            f"task.kind: the sample_size runner needs 'rare_prompts', got {cfg.task.kind!r}"
        )
    inst = _instance(cfg)
    panel = cfg.task.params.get("panel")
    if panel == "n":
        if cfg.task.H is None:
            raise ValueError("task.H: required for panel 'n'")
        points = [(n, cfg.task.H) for n in _grid("task.n_grid", cfg.task.params.get("n_grid"))]
    elif panel == "H":
        Hs = _grid("task.H_grid", cfg.task.params.get("H_grid"))
        points = [(cfg.train.n_train, H) for H in Hs]
    else:
        raise ValueError(f"task.panel: must be 'n' or 'H', got {panel!r}")
    Ns = [float(N) for N in cfg.train.Ns]
    n_max = max(n for n, _ in points)
    H_max = max(H for _, H in points)
    big = rare_prompts_task(H=H_max, **inst)
    tasks = {H: rare_prompts_task(H=H, **inst) for H in sorted({H for _, H in points})}
    sigma2 = {H: float(t.sigma_star_sq()) for H, t in tasks.items()}
    d = int(big.d)
    q = np.exp(np.asarray(big.log_mu, np.float64))[1:]  # the rare prompts, log-spaced
    # Σ_j q_j e^{−n q_j} ≈ (1/Δ) ∫ e^{−nq} dq = 1/(Δ n), Δ = log-spacing of the q_j
    d_eff = (q.size - 1) / math.log(q.max() / q.min()) if q.size > 1 else 0.0
    records = []
    for seed in cell.seeds:
        x_all, y_all = big.sample(jax.random.key(cell.rng_seed(seed)), n_max)
        for n, H in points:
            x, y = x_all[:n], y_all[:n, :H]
            theta, info = fit_padded_mle(tasks[H], x, y, n_pad=n_max, H_pad=H_max)
            kl, cov = iid_token_scores(tasks[H], theta, Ns)
            mu = np.exp(np.asarray(tasks[H].log_mu, np.float64))
            seen = np.zeros(mu.shape, bool)
            seen[np.asarray(x[:, 0])] = True
            records.append(
                {
                    "step": 0,
                    "seed": seed,
                    "n": n,
                    "H": H,
                    "kl": kl,
                    "cov": dict(zip(Ns, cov.tolist(), strict=True)),
                    "missing_mass": float(mu[~seen].sum()),
                    "expected_missing_mass": expected_missing_mass(tasks[H].log_mu, n),
                    "sigma2": sigma2[H],
                    "d": d,
                    "d_eff": d_eff,
                    "iterations": int(info["iterations"]),
                    "grad_map": float(info["grad_map"]),
                    "converged": bool(info["converged"]),
                }
            )
    summary = {
        "panel": panel,
        "d": d,
        "d_eff": d_eff,
        "sigma2": {str(H): v for H, v in sigma2.items()},
        "all_converged": all(r["converged"] for r in records),
    }
    return RunResult(records, summary)


# ---- prop_3_2_mle ----------------------------------------------------------------------------

#: quadrature grid of the posterior mean on Θ = [−1, 1] (symmetric: the mean of a flat
#: posterior is 0 to rounding, and is set to exactly 0)
_THETA_GRID = np.linspace(-1.0, 1.0, 4001)


def prop_3_2_posterior_mean(s: int, T: int) -> float:
    """E[θ | data] under a uniform prior on Θ = [−1, 1] for the prop_3_2 instance: the rare
    prompt's T tokens hold s values +1, each +1 w.p. σ(2θ) (float64 quadrature; 0 if T = 0)."""
    if T == 0:
        return 0.0
    g = _THETA_GRID
    ll = -s * np.logaddexp(0.0, -2 * g) - (T - s) * np.logaddexp(0.0, 2 * g)
    w = np.exp(ll - ll.max())
    w[[0, -1]] /= 2  # the trapezoid rule: O(h²) on the smooth posterior
    return float(np.sum(w * g) / np.sum(w))


@register_runner("prop_3_2_mle", dataclasses.replace(EXACT, task_keys=("H_grid",)))
def run_prop_3_2(cfg: Config, cell: Cell) -> RunResult:
    """Every seed of the cell: one dataset of n sequences at the largest H of task.H_grid, its
    first H positions for the smaller H (exact samples: the instance's tokens are i.i.d. given
    the prompt), the exact MLE at each H (one compile: fits padded to the largest H), exact
    KL and Cov_N. One record per (seed, H)."""
    if cfg.task.kind != "prop_3_2":
        raise ValueError(f"task.kind: the prop_3_2 runner needs 'prop_3_2', got {cfg.task.kind!r}")
    p = cfg.task.params
    unknown = sorted(set(p) - {"n", "theta", "H_grid"})
    if unknown:
        raise ValueError(f"task: unknown key(s) {unknown}; allowed: n, theta, H_grid")
    n = check_int("task.n", p.get("n"), 1)
    if cfg.train.n_train != n:
        raise ValueError(
            f"train.n_train: must equal task.n = {n} (the sample size), got {cfg.train.n_train}"
        )
    theta = float(p.get("theta", 1.0))
    Hs = p.get("H_grid")
    if not isinstance(Hs, list) or not Hs:
        raise ValueError(f"task.H_grid: must be a non-empty list of integers, got {Hs!r}")
    Hs = sorted({check_int(f"task.H_grid[{i}]", H, 1) for i, H in enumerate(Hs)})
    Ns = [float(N) for N in cfg.train.Ns]
    tasks = {H: AutoregressiveLinear.prop_3_2(n, H, theta) for H in Hs}
    big = tasks[Hs[-1]]
    kl_unseen = {H: iid_token_scores(t, np.zeros(1), Ns)[0] for H, t in tasks.items()}
    records = []
    for seed in cell.seeds:
        x, y = big.sample(jax.random.key(cell.rng_seed(seed)), n)
        rare = np.asarray(x[:, 0]) == 1
        m1 = int(np.sum(rare))
        for H in Hs:
            th, info = fit_padded_mle(tasks[H], x, y[:, :H], H_pad=Hs[-1])
            kl, cov = iid_token_scores(tasks[H], th, Ns)
            s = int(np.sum(np.asarray(y[:, :H])[rare]))  # tokens +1 on the rare prompt
            post = prop_3_2_posterior_mean(s, m1 * H)
            # the other proper estimators: the MLE with another tie-break on the unseen
            # prompt (the same estimate when it was seen), and the posterior mean
            others = {"tie_plus": float(th[0]) if m1 else 1.0,
                      "tie_minus": float(th[0]) if m1 else -1.0, "posterior_mean": post}
            extra = {f"kl_{k}": iid_token_scores(tasks[H], np.array([v]), Ns)[0]
                     for k, v in others.items()}
            records.append(
                {
                    "step": 0,
                    "seed": seed,
                    "H": H,
                    "n": n,
                    "theta_star": theta,
                    "theta_hat": float(th[0]),
                    "m1": m1,  # how many training sequences have the rare prompt
                    "kl": kl,  # the MLE, θ̂ = 0 when the rare prompt is unseen
                    **extra,
                    "theta_hat_posterior_mean": post,
                    "cov": dict(zip(Ns, cov.tolist(), strict=True)),
                    "kl_paper": prop_3_2_kl_lower_bound(n, H),  # H/(4n), as printed
                    "kl_unseen": kl_unseen[H],
                    "mu1": 1.0 / (2 * n),
                    "converged": bool(info["converged"]),
                }
            )
    return RunResult(records, {"kl_unseen": {str(H): v for H, v in kl_unseen.items()}})


# ---- variance_mle ----------------------------------------------------------------------------

#: The pivotal instance's parameters a variance config may set in [task] besides H and k.
PIVOTAL_KEYS = ("b", "q", "B_rare", "theta_rare", "seed")
VARIANCE_PANELS = ("sigma", "n", "H")


def _variance_points(cfg: Config):
    """(panel, instance parameters, base k, points [(k, n, H)]) of a variance cell, validated
    (ValueError naming the field otherwise)."""
    if cfg.task.kind != "pivotal":
        raise ValueError(
            f"task.kind: the variance runner needs 'pivotal', got {cfg.task.kind!r}"
        )
    p = cfg.task.params
    panel = p.get("panel")
    if panel not in VARIANCE_PANELS:
        raise ValueError(f"task.panel: must be one of {list(VARIANCE_PANELS)}, got {panel!r}")
    inst = {key: p[key] for key in PIVOTAL_KEYS if key in p}
    H0, k0, n0 = cfg.task.H, p.get("k"), cfg.train.n_train
    if H0 is None or k0 is None:
        raise ValueError("task.H, task.k: both required (the base point of every panel)")
    grid_of = {"sigma": "k_grid", "n": "n_grid", "H": "H_grid"}
    values = _grid(f"task.{grid_of[panel]}", p.get(grid_of[panel]))
    points = {"sigma": [(k, n0, H0) for k in values], "n": [(k0, n, H0) for n in values],
              "H": [(k0, n0, H) for H in values]}[panel]
    for k, _, H in points:
        if k > H:
            raise ValueError(f"task: k = {k} pivotal positions need H ≥ k, got H = {H}")
    return panel, inst, k0, points


@register_runner(
    "variance_mle",
    RunnerSpec(
        reads=("train",), requires=("train",), train_keys=("n_train", "eval_samples", "Ns"),
        train_required=("n_train", "eval_samples"),
        task_keys=("panel", "k_grid", "n_grid", "H_grid"),
        check=config_check(_variance_points),
    ),
)
def run_variance(cfg: Config, cell: Cell) -> RunResult:
    """One panel of the variance study, every seed of the cell; one record per (seed, point).

    The base point is (k = task.k, n = train.n_train, H = task.H); task.panel moves one axis:
    "sigma": k over task.k_grid (σ⋆² ≈ k·b²), "n": n over task.n_grid, "H": H over
    task.H_grid (σ⋆² fixed). Panels "n" and "H" nest their data per seed: one dataset and one
    evaluation set drawn at the panel's largest n and H, whose first n rows / first H
    positions are exact samples of the smaller instances (`pivotal_task` is prefix-consistent
    in H), so trends along the axis are not confounded with sampling noise; panel "sigma"
    draws each k afresh (the instances differ). The MLE is `fit_padded_mle` (projected FISTA
    on the ℓ2 unit ball); KL is exact (`iid_token_kl`), Cov_N is measured on
    train.eval_samples fresh responses with exact log-probabilities, Wilson interval per seed."""
    panel, inst, k0, points = _variance_points(cfg)
    Ns = [float(N) for N in cfg.train.Ns]
    m = cfg.train.eval_samples
    n_max = max(n for _, n, _ in points)
    H_max = max(H for _, _, H in points)
    tasks = {(k, H): pivotal_task(H=H, k=k, **inst) for k, _, H in points}
    sigma2 = {kh: float(t.sigma_star_sq()) for kh, t in tasks.items()}
    big = pivotal_task(H=H_max, k=k0, **inst)  # the nested panels' largest instance
    records = []
    for seed in cell.seeds:
        key = jax.random.key(cell.rng_seed(seed))
        if panel != "sigma":  # nested: one draw at the panel's largest shape
            k_data, k_eval = jax.random.split(key)
            x_all, y_all = big.sample(k_data, n_max)
            ex, ey = big.sample(k_eval, m)
        for k, n, H in points:
            task = tasks[(k, H)]
            if panel == "sigma":
                k_data, k_eval = jax.random.split(jax.random.fold_in(key, k))
                x_all, y_all = task.sample(k_data, n)
                ex, ey = task.sample(k_eval, m)
            x, y = x_all[:n], y_all[:n, :H]
            theta, info = fit_padded_mle(task, x, y, n_pad=n_max if panel != "sigma" else n,
                                         H_pad=H_max)
            eval_set = (ex, ey[:, :H], task.log_prob(ex, ey[:, :H]))
            _, cov, lo, hi = _score(theta, task, eval_set, tuple(Ns))
            records.append({
                "step": 0,
                "seed": seed,
                "k": k,
                "n": n,
                "H": H,
                "sigma2": sigma2[(k, H)],
                "B": float(task.B),
                "kl": iid_token_kl(task, theta),
                "cov": dict(zip(Ns, np.asarray(cov).tolist(), strict=True)),
                "cov_lo": dict(zip(Ns, np.asarray(lo).tolist(), strict=True)),
                "cov_hi": dict(zip(Ns, np.asarray(hi).tolist(), strict=True)),
                "rare_seen": bool(np.any(np.asarray(x[:, 0]) == 1)),
                "theta_norm": float(jnp.linalg.norm(theta)),
                "eval_samples": m,
                "iterations": int(info["iterations"]),
                "converged": bool(info["converged"]),
            })
    summary = {"panel": panel, "sigma2": {f"{k},{H}": v for (k, H), v in sigma2.items()},
               "all_converged": all(r["converged"] for r in records)}
    return RunResult(records, summary)


# ---- mle -------------------------------------------------------------------------------------


@partial(jax.jit, static_argnames="Ns")
def _score(theta, task, eval_set, Ns: tuple[float, ...]):
    """KL and Cov_N (with Wilson interval) of π_θ on the eval set (jitted: one compile per
    task shape and N grid, reused by every cell and seed). Ns is static: its log N thresholds
    are taken on the host, exactly (`metrics.log_threshold`)."""
    model = lambda x, y: task.next_token_log_probs_theta(theta, x, y)
    ev = evaluate(task, model, eval_set, Ns=Ns)
    return ev.kl, ev.cov, ev.cov_lo, ev.cov_hi


@register_runner(
    "mle",
    RunnerSpec(
        reads=("train", "runner"),
        requires=("train",),
        train_keys=("n_train", "eval_samples", "Ns"),
        train_required=("n_train", "eval_samples"),
    ),
    params=[p for p in signature_params(fit_loglinear_mle) if p.name in SOLVER_KEYS],
)
def run_mle(cfg: Config, cell: Cell) -> RunResult:
    """For each seed: n = train.n_train samples, the exact MLE over Θ of the task's own
    log-linear model (`[runner]` may set the solver's l2, tol, max_iter), KL and Cov_N on
    train.eval_samples fresh samples. One record per seed."""
    solver = runner_params(cfg)
    task = build_task(cfg)
    missing = [a for a in (*REQUIRED, "features") if not hasattr(task, a)]
    if missing:
        raise ValueError(f"task.kind: runner 'mle' needs an AR linear task; "
                         f"{cfg.task.kind!r} lacks {missing}")
    n, m = cfg.train.n_train, cfg.train.eval_samples
    Ns = list(cfg.train.Ns)
    s2 = float(task.sigma_star_sq()) if hasattr(task, "sigma_star_sq") else math.nan
    records = []
    for seed in cell.seeds:
        k_data, k_eval = jax.random.split(jax.random.key(cell.rng_seed(seed)))
        x, y = task.sample(k_data, n)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # recorded as "converged" below
            theta, info = fit_loglinear_mle(task, x, y, **solver)
        kl, cov, lo, hi = _score(theta, task, make_eval_set(task, k_eval, m), tuple(Ns))
        records.append({
            "seed": seed,
            "step": 1,  # one exact fit
            "sigma_star_sq": s2,
            "B": float(task.B) if hasattr(task, "B") else math.nan,  # the feature-norm bound
            "n": n,
            "kl": float(kl),
            "cov": dict(zip(Ns, np.asarray(cov).tolist(), strict=True)),
            "cov_lo": dict(zip(Ns, np.asarray(lo).tolist(), strict=True)),
            "cov_hi": dict(zip(Ns, np.asarray(hi).tolist(), strict=True)),
            "theta_norm": float(jnp.linalg.norm(theta)),
            "iterations": int(info["iterations"]),
            "converged": bool(info["converged"]),
        })
    return RunResult(records, {"sigma_star_sq": s2, "n": n})
