"""Runner "checkpoint_selection": the `train` runner with every checkpoint's parameters kept,
then, per seed, gen_samples on-policy responses of each checkpoint scored by every checkpoint
(select_gen_logq.npy (S, K, K, m): [s, j, k, i] = log π_k(y_i | x_i), y_i ~ π_j(·|x_i), x_i
from π_D's prompt law), the data the offset tournament (Eq. 32) needs besides the held-out
π_D samples of select_logq.npy; each seed's picks among its checkpoints — min-KL (the exact
KL: an oracle), min-CE on the held-out samples (the MLE over checkpoints), the simple
tournament (Eq. 29) and the offset tournament at N, a, each tournament with the set of
checkpoints tied at its best score — go into the summary ("selection").

Runner "misspecified_selection": selection from a finite candidate class on datasets from
π_D — the MLE (maximum log-likelihood, `covsim.select.min_ce`), the simple tournament (Eq. 29,
`select.tournament`) and the offset tournament (Eq. 32, `select.offset_tournament`, with m
generations from each candidate on the data's prompts) — for Prop. G.2 / Thm. 6.3 / Thm. 6.4
of arXiv 2510.15020v2. One record per dataset (seed): what each selector picked and whether
the tournaments were tied (their tie-break is then arbitrary, so claims report ties apart).
"""

from __future__ import annotations

import io

import jax
import jax.numpy as jnp
import numpy as np

from covsim import select
from covsim.checks import check_float, check_int
from covsim.config import Config
from covsim.decode import sample as sample_responses
from covsim.evaluate import chunked_log_prob
from covsim.experiment import build_task, train_spec
from covsim.registry import signature_params
from covsim.results import RunResult
from covsim.runners.registry import (
    TRAINER_SECTIONS,
    RunnerSpec,
    config_check,
    register_runner,
    runner_params,
)
from covsim.runners.train import check_cell, trained_cell
from covsim.sweep import Cell

GEN_FILE = "select_gen_logq.npy"
_GEN_STREAM = 0x6E7  # fold_in constant of the on-policy generations' keys


def checkpoint_selection_settings(gen_samples: int = 256, N: float = 4.0,
                                  a: float = 0.25) -> None:
    """The [runner] settings of "checkpoint_selection" (documentation only).

    gen_samples  on-policy responses of each checkpoint, scored by every checkpoint (Eq. 32)
    N            the tournaments' coverage level
    a            the offset tournament's exponent (offset 2·N^a)"""


def _checkpoint_settings(cfg: Config) -> tuple[int, float, float]:
    """(gen_samples, N, a), validated; [train] must hold held-out π_D samples."""
    rp = runner_params(cfg)
    m = check_int("runner.gen_samples", rp["gen_samples"], 1)
    N = check_float("runner.N", rp["N"], 1.0, low_open=True)
    a = check_float("runner.a", rp["a"], 0.0, low_open=True)
    if not train_spec(cfg).select_samples:
        raise ValueError("train.select_samples: runner 'checkpoint_selection' selects on "
                         "held-out π_D samples; set train.select_samples ≥ 1")
    return m, N, a


def _check_checkpoint_cell(cfg: Config, n_seeds: int = 1) -> None:
    config_check(_checkpoint_settings)(cfg, n_seeds)
    check_cell(_keep_all(cfg), n_seeds)


def _keep_all(cfg: Config) -> Config:
    """The cell's config with every evaluation step's parameters kept."""
    spec = train_spec(cfg)
    steps = list(range(0, spec.n_steps + 1, spec.eval_every))
    return cfg.model_copy(update={"train": cfg.train.model_copy(update={"checkpoints": steps})})


@register_runner(
    "checkpoint_selection",
    RunnerSpec(reads=(*TRAINER_SECTIONS, "runner"), check=_check_checkpoint_cell),
    params=signature_params(checkpoint_selection_settings),
)
def run_checkpoint_selection(cfg: Config, cell: Cell) -> RunResult:
    """Train as "train" does (records, summary, select_logq.npy), keeping every checkpoint;
    then per seed draw gen_samples prompts from π_D, a response to each from every checkpoint
    j, and score it under every checkpoint k (select_gen_logq.npy). The kept parameters are
    not written (they are the run's largest output and nothing reads them)."""
    m, N, a = _checkpoint_settings(cfg)
    tc = trained_cell(_keep_all(cfg), cell)
    params = tc.out.params  # (S, K, ...) leaves
    H = tc.task.H
    chunk = train_spec(cfg).eval_chunk

    @jax.jit
    def one_seed(p_seed, key):
        kx, ky = jax.random.split(jax.random.fold_in(key, _GEN_STREAM))
        x, _ = tc.task.sample(kx, m)

        def row(j):  # checkpoint j's responses, scored by every checkpoint
            pj = jax.tree.map(lambda leaf: leaf[j], p_seed)
            y = sample_responses(tc.trainer.model(pj), x, H, jax.random.fold_in(ky, j))
            return jax.lax.map(lambda pk: chunked_log_prob(tc.trainer.model(pk), x, y,
                                                           chunk=chunk), p_seed)

        K = jax.tree.leaves(p_seed)[0].shape[0]
        return jax.lax.map(row, jnp.arange(K))  # (K, K, m)

    def seed_params(i):
        return jax.tree.map(lambda leaf: leaf[i], params)

    L_gen = np.stack([np.asarray(one_seed(seed_params(i), tc.keys[i]), np.float32)
                      for i in range(len(cell.seeds))])
    files = {k: v for k, v in tc.result.files.items() if k != "checkpoints.msgpack"}
    buf = io.BytesIO()
    np.save(buf, L_gen)
    files[GEN_FILE] = buf.getvalue()
    L_all = np.load(io.BytesIO(files["select_logq.npy"]))  # (S, K, n)
    kl = np.asarray(tc.out.metrics.kl)  # (S, K)
    picks: dict[str, list] = {k: [] for k in ("min_kl", "min_ce", "tournament",
                                              "tournament_best", "offset", "offset_best")}
    for i in range(len(cell.seeds)):
        t_pick, t_scores = select.tournament(L_all[i], N)
        o_pick, o_scores = select.offset_tournament(L_all[i], L_gen[i], N, a)
        picks["min_kl"].append(select.min_kl(kl[i]))
        picks["min_ce"].append(select.min_ce(L_all[i]))
        # every candidate sharing the best score: the tie-break (the earliest) is arbitrary
        picks["tournament"].append(t_pick)
        picks["tournament_best"].append(select.tied_best(t_scores))
        picks["offset"].append(o_pick)
        picks["offset_best"].append(select.tied_best(o_scores))
    summary = {**tc.result.summary, "gen_samples": m, "N": N, "a": a, "selection": picks}
    return RunResult(tc.result.records, summary, diverged=tc.result.diverged,
                     diverged_step=tc.result.diverged_step, files=files)


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


def _tied(scores) -> bool:
    """More than one candidate shares the best score (the tie-break then decides)."""
    return len(select.tied_best(scores)) > 1


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
            "tournament_tie": _tied(t_scores),
            "offset": o_pick,
            "offset_tie": _tied(o_scores),
            "loglik": np.sum(L, axis=1).tolist(),
            "tournament_scores": t_scores.tolist(),
            "offset_scores": o_scores.tolist(),
        })
    Ns = sorted({N**a, N, N ** (1 + a), 2 * N ** (1 + a)})
    cov = {f"{v:g}": [task.coverage(k, v) for k in range(K)] for v in Ns}
    return RunResult(records, {"n": n, "N": N, "a": a, "coverage": cov})
