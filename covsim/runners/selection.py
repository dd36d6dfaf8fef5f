"""Runner "misspecified_selection": selection from a finite candidate class on datasets from
π_D — the MLE (maximum log-likelihood, `covsim.select.min_ce`), the simple tournament (Eq. 29,
`select.tournament`) and the offset tournament (Eq. 32, `select.offset_tournament`, with m
generations from each candidate on the data's prompts) — for Prop. G.2 / Thm. 6.3 / Thm. 6.4
of arXiv 2510.15020v2. One record per dataset (seed): what each selector picked and whether
the tournaments were tied (their tie-break is then arbitrary, so claims report ties apart).
"""

from __future__ import annotations

import numpy as np

from covsim import select
from covsim.checks import check_float, check_int
from covsim.config import Config
from covsim.experiment import build_task
from covsim.registry import signature_params
from covsim.results import RunResult
from covsim.runners.registry import RunnerSpec, config_check, register_runner, runner_params
from covsim.sweep import Cell


def selection_settings(n: int = 1024, N: float = 64.0, a: float = 0.25,
                       gen_samples: int | None = None) -> None:
    """The [runner] settings of "misspecified_selection" (documentation only).

    n            sequences per dataset
    N            the tournaments' coverage level
    a            the offset tournament's exponent: offset 2·N^a (Thm 6.4 needs N^{1−2a} ≥ 8)
    gen_samples  generations per candidate for the offset tournament (default n)"""


def _selection_settings(cfg: Config):
    """(task, n, N, a, m) of a cell, validated (ValueError naming the field otherwise)."""
    rp = runner_params(cfg)
    task = build_task(cfg)
    if not hasattr(task, "log_cands"):
        raise ValueError(f"task.kind: runner 'misspecified_selection' needs a candidate set "
                         f"(e.g. 'prop_g2'), got {cfg.task.kind!r}")
    n = check_int("runner.n", rp["n"], 1)
    N = check_float("runner.N", rp["N"], 1.0, low_open=True)
    a = check_float("runner.a", rp["a"], 0.0, low_open=True)
    m = n if rp["gen_samples"] is None else check_int("runner.gen_samples", rp["gen_samples"], 1)
    return task, n, N, a, m


@register_runner(
    "misspecified_selection",
    RunnerSpec(reads=("runner",), requires=("runner",), check=config_check(_selection_settings)),
    params=signature_params(selection_settings),
)
def run_selection(cfg: Config, cell: Cell) -> RunResult:
    """Every seed of the cell is one dataset of n draws from π_D (numpy Generator seeded by the
    cell's PRNG seed for it). L[k, i] = log π_k(y_i | x_i) feeds the three selectors; the
    offset tournament also scores gen_samples generations of each candidate on the data's
    prompts (L_gen[j, k, i] = log π_k(y_i | x_i), y_i ~ π_j(·|x_i))."""
    task, n, N, a, m = _selection_settings(cfg)
    K = task.log_cands.shape[0]
    records = []
    for seed in cell.seeds:
        rng = np.random.default_rng(cell.rng_seed(seed))
        x, y = task.sample(rng, n)
        L = task.log_cands[:, x, y]  # (K, n)
        t_pick, t_scores = select.tournament(L, N)
        idx = rng.integers(0, n, m)  # the data's prompts, resampled for the generations
        L_gen = np.empty((K, K, m))
        for j in range(K):
            yj = task.sample_given(rng, x[idx], j)
            L_gen[j] = task.log_cands[:, x[idx], yj]
        o_pick, o_scores = select.offset_tournament(L, L_gen, N, a)
        records.append({
            "step": 0, "seed": seed, "n": n,
            "mle": select.min_ce(L),
            "tournament": t_pick,
            "tournament_tie": bool(np.sum(np.isclose(t_scores, t_scores.min())) > 1),
            "offset": o_pick,
            "offset_tie": bool(np.sum(np.isclose(o_scores, o_scores.min())) > 1),
            "loglik": np.sum(L, axis=1).tolist(),
            "tournament_scores": t_scores.tolist(),
            "offset_scores": o_scores.tolist(),
        })
    Ns = sorted({N**a, N, N ** (1 + a), 2 * N ** (1 + a)})
    cov = {f"{v:g}": [task.coverage(k, v) for k in range(K)] for v in Ns}
    return RunResult(records, {"n": n, "N": N, "a": a, "coverage": cov})
