"""From a validated `Config` to objects and results: the one bridge between the experiment
files and the pure layers (tasks, models, optim, train).

    task = build_task(cfg)                     # [task]  kind + parameters
    model_fn = build_model_fn(cfg, task)       # [model] kind + parameters -> key -> nnx.Module
    tx = build_optimizer(cfg, task)            # [optim] name + parameters -> optax transform
    spec = train_spec(cfg)                     # [train] -> TrainSpec
    result = run_cell(cfg, cell)               # one sweep cell -> RunResult (what sweep writes)

`[experiment] runner` picks how a cell runs: "train" (the trainer, all of the cell's seeds
vmapped, after the optional [pretrain] stage) or any runner registered with `@runner("name")`
(e.g. exact MLE, closed-form studies). Runners are module-level functions so the process
executor can pickle them.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from covsim import metrics as M
from covsim.checkpoint import checkpoint_bytes
from covsim.config import Config
from covsim.evaluate import chunked_log_prob
from covsim.models import make_model
from covsim.optim import make_optimizer
from covsim.results import RunResult
from covsim.sweep import Cell
from covsim.tasks import Task, graph
from covsim.tasks.bernoulli import Bernoulli
from covsim.tasks.linear import AutoregressiveLinear
from covsim.tasks.markov import MarkovChain
from covsim.tasks.mixture import Mixture
from covsim.train import TrainOutput, TrainSpec, make_train, run_seeds, to_records

Runner = Callable[[Config, Cell], RunResult]
RUNNERS: dict[str, Runner] = {}


def runner(name: str) -> Callable[[Runner], Runner]:
    """Register a cell runner under `name` (selected by `[experiment] runner`)."""

    def deco(fn: Runner) -> Runner:
        RUNNERS[name] = fn
        return fn

    return deco


# ---- tasks -----------------------------------------------------------------------------------


def _linear_random(key, **p):
    return AutoregressiveLinear.random(key, **p)


def _prop_5_1(key, **p):
    return AutoregressiveLinear.prop_5_1_sgd(**p)[0]


TASKS: dict[str, Callable[..., Task]] = {
    "markov": lambda key, **p: MarkovChain.random(key, **p),
    "bernoulli": lambda key, **p: Bernoulli(**p),
    "linear": _linear_random,
    "prop_3_2": lambda key, **p: AutoregressiveLinear.prop_3_2(**p),
    "prop_5_1_sgd": _prop_5_1,
    "prop_g1a": lambda key, **p: AutoregressiveLinear.prop_g1a(**p),
    # the paper's graph tasks; their "H" is the number L of intermediate layers
    "graph_fig2": lambda key, **p: graph.figure2_task(**p),
    "graph_fig1_finetune": lambda key, **p: graph.figure1_finetune_task(**p),
    "graph_fig1_pretrain": lambda key, **p: graph.figure1_pretrain_task(**p),
}


def make_task(spec: dict[str, Any], where: str = "task") -> Task:
    """A task from a plain dict {"kind": ..., "seed": int (the ground truth's own randomness,
    default 0), parameters...}. "mixture" takes "components" (a list of such dicts, each
    inheriting H) and "weights". Errors name `where` (the config path) and allowed kinds."""
    spec = dict(spec)
    kind = spec.pop("kind", None)
    seed = spec.pop("seed", 0)
    if kind == "mixture":
        comps = spec.pop("components", None)
        weights = spec.pop("weights", None)
        if not isinstance(comps, list) or not comps:
            raise ValueError(f"{where}.components: a mixture needs a non-empty list of tasks")
        if spec.keys() - {"H"}:
            raise ValueError(
                f"{where}: unknown mixture key(s) {sorted(spec.keys() - {'H'})}; "
                "allowed: components, weights, H, seed"
            )
        tasks = []
        for i, c in enumerate(comps):
            c = {"seed": seed + i + 1, **({"H": spec["H"]} if "H" in spec else {}), **c}
            tasks.append(make_task(c, f"{where}.components[{i}]"))
        return Mixture(tuple(tasks), weights)
    if kind not in TASKS:
        raise ValueError(
            f"{where}.kind: must be one of {sorted([*TASKS, 'mixture'])}, got {kind!r}"
        )
    try:
        return TASKS[kind](jax.random.key(seed), **spec)
    except TypeError as e:  # unknown / missing keyword: say where
        raise ValueError(f"{where}: bad parameters for kind {kind!r}: {e}") from None


def build_task(cfg: Config) -> Task:
    spec = {"kind": cfg.task.kind, **cfg.task.params}
    if cfg.task.H is not None:
        spec["H"] = cfg.task.H
    return make_task(spec)


# ---- learners and optimizers -----------------------------------------------------------------


def build_model_fn(cfg: Config, task: Task) -> Callable[[jax.Array], nnx.Module]:
    spec = {"kind": cfg.model.kind, **cfg.model.params}
    make_model(spec, task, jax.random.key(0))  # validate now, not inside a trace
    return lambda key: make_model(spec, task, nnx.Rngs(key))


def optim_spec(cfg: Config) -> dict[str, Any]:
    return {"name": cfg.optim.name, **cfg.optim.params}


def theory_args(cfg: Config, task: Task) -> dict[str, Any]:
    """What the paper's step-size rules need (notes §3.4–3.5): B, H, T, σ⋆², N."""
    args: dict[str, Any] = {"H": task.H, "T": cfg.train.n_steps, "N": max(cfg.train.Ns)}
    if hasattr(task, "B"):
        args["B"] = float(task.B)
    if hasattr(task, "sigma_star_sq"):
        args["sigma2"] = float(task.sigma_star_sq())
    return args


def build_optimizer(cfg: Config, task: Task):
    spec = optim_spec(cfg)
    theory = theory_args(cfg, task) if "theory" in spec.values() else None
    return make_optimizer(spec, theory)


def train_spec(cfg: Config) -> TrainSpec:
    """The TrainSpec of a config; token_sgd updates per token, distill_sgd uses the
    truncated distillation loss with the optimizer's N."""
    t = cfg.train
    kw: dict[str, Any] = {}
    if cfg.optim.name == "token_sgd":
        kw["update"] = "token"
    if cfg.optim.name == "distill_sgd":
        kw["loss"], kw["distill_N"] = "distill", float(cfg.optim.params["N"])
    else:
        kw["loss"] = t.loss
    if t.alpha is not None:
        kw["alpha"] = t.alpha
    if t.eval_chunk is not None:
        kw["eval_chunk"] = t.eval_chunk
    if t.select_samples is not None:
        kw["select_samples"] = t.select_samples
    return TrainSpec(
        steps=t.n_steps,
        batch_size=t.batch_size,
        n_train=None if t.online else t.n_train,
        eval_every=t.eval_every,
        eval_samples=t.eval_samples,
        Ns=tuple(t.Ns),
        pass_Ns=tuple(t.pass_at),
        keep_params=bool(t.checkpoints),
        **kw,
    )


# ---- cells -----------------------------------------------------------------------------------


def run_cell(cfg: Config, cell: Cell) -> RunResult:
    """The sweep's cell function: dispatch on `[experiment] runner`."""
    name = cfg.experiment.runner
    if name not in RUNNERS:
        raise ValueError(f"experiment.runner: must be one of {sorted(RUNNERS)}, got {name!r}")
    return RUNNERS[name](cfg, cell)


def cell_keys(cell: Cell) -> list[int]:
    """The PRNG seed of each of the cell's seeds: a function of the coordinates and the seed."""
    return [cell.rng_seed(s) for s in cell.seeds]


def pretrain_config(cfg: Config) -> Config:
    """The config of the [pretrain] stage: its task, optim and train in place of the main
    ones (same model and sweep)."""
    p = cfg.pretrain
    if p is None:
        raise ValueError("pretrain: this config has no [pretrain] stage")
    return cfg.model_copy(update={"task": p.task, "optim": p.optim, "train": p.train,
                                  "pretrain": None})


_PER_CLASS_STREAM = 0x5EED  # fold_in constant of the per-class evaluation samples
_PRETRAIN_STREAM = 0x9E7  # fold_in constant: pre-training draws data independent of the main stage


def _sizes(task: Task) -> tuple[int, int, int, int]:
    return task.V, task.H, task.P, task.prompt_vocab


@runner("train")
def run_train(cfg: Config, cell: Cell) -> RunResult:
    """Train every seed of the cell (vmapped) and score each checkpoint against π_D; with a
    [pretrain] stage, first train the same seeds on its task and start from their final
    parameters (its checkpoints are recorded too, with "stage": "pretrain"). For a mixture
    task the summary also holds each class's final KL and Cov_N ("per_class")."""
    return train_cell(cfg, cell)


def train_cell(cfg: Config, cell: Cell, model_fn_of=None) -> RunResult:
    """`run_train` with the learner built by `model_fn_of(cfg, task) -> (key -> model)`
    (default `build_model_fn`): runners with their own learner plumbing reuse the rest."""
    model_fn_of = model_fn_of or build_model_fn
    task = build_task(cfg)
    spec = train_spec(cfg)
    keys = jnp.stack([jax.random.key(k) for k in cell_keys(cell)])
    params0, pre_records = None, []
    if cfg.pretrain is not None:
        pcfg = pretrain_config(cfg)
        ptask = build_task(pcfg)
        if _sizes(ptask) != _sizes(task):
            raise ValueError(
                "pretrain.task: the model is shared, so (V, H, P, prompt_vocab) must match "
                f"task's {_sizes(task)}, got {_sizes(ptask)}"
            )
        pspec = train_spec(pcfg)
        ptrainer = make_train(
            ptask, model_fn_of(pcfg, ptask), build_optimizer(pcfg, ptask), pspec
        )
        pkeys = jax.vmap(lambda k: jax.random.fold_in(k, _PRETRAIN_STREAM))(keys)
        pout = run_seeds(ptrainer, pkeys, mode="vmap")
        pre_records = to_records(pout, pspec, coords={"stage": "pretrain"}, seeds=cell.seeds)
        params0 = pout.params
    trainer = make_train(task, model_fn_of(cfg, task), build_optimizer(cfg, task), spec)
    out = run_seeds(trainer, keys, mode="vmap", params=params0)
    coords = {"stage": "main"} if cfg.pretrain is not None else None
    records = pre_records + to_records(out, spec, coords=coords, seeds=cell.seeds)
    result = _result(out, records, spec, cfg)
    if cfg.pretrain is not None:  # a seed that diverged in pre-training counts as diverged
        pdv = np.asarray(pout.diverged_step).reshape(-1)
        result.summary["pretrain_diverged_steps"] = pdv.tolist()
        if np.any(pdv >= 0) and not result.diverged:
            result = dataclasses.replace(result, diverged=True,
                                         diverged_step=int(pdv[pdv >= 0].min()))
    if is_mixture(task):
        key = jax.random.fold_in(keys[0], _PER_CLASS_STREAM)
        result.summary["per_class"] = per_class_summary(
            trainer, out.params, task, key, spec.eval_samples, spec.Ns
        )
    return result


def class_log_ratios(trainer, params, task: Task, key, m: int) -> jax.Array:
    """r = log π_D − log π̂ on m fresh samples of each class of a mixture task (Mixture,
    GraphMixture: anything with `components` and `weights`), for each seed's parameters:
    params with a leading seed axis S -> (K, S, m). One compiled function serves every class
    (a class is the mixture with one-hot weights); seeds run one after another (memory)."""
    chunk = trainer.spec.eval_chunk

    @jax.jit
    def one(mix, k):
        x, y = mix.sample(k, m)
        lp = mix.log_prob(x, y)
        return jax.lax.map(
            lambda p: lp - chunked_log_prob(trainer.model(p), x, y, chunk=chunk), params
        )

    K = len(task.components)
    out = [one(task.replace(weights=np.eye(K, dtype=np.float32)[c]), jax.random.fold_in(key, c))
           for c in range(K)]
    return jnp.stack(out)


def per_class_summary(trainer, params, task: Task, key, m: int, Ns) -> dict[str, Any]:
    """Each class's sequence KL, KL per token and Cov_N (per seed) for the final params:
    the summary's "per_class" entry, which tells which class carries a mixture's KL and
    coverage deficit."""
    r = np.asarray(class_log_ratios(trainer, params, task, key, m))  # (K, S, m)
    return {
        "weights": np.asarray(task.weights).tolist(),
        "kl": r.mean(-1).tolist(),  # (K, S)
        "kl_token": (r.mean(-1) / task.H).tolist(),
        # the metrics' float32 threshold, so that a tie r = log N counts as in `coverage`
        "cov": {N: (r >= np.asarray(M.log_threshold("Ns", N))).mean(-1).tolist() for N in Ns},
    }


def is_mixture(task: Task) -> bool:
    return hasattr(task, "components") and hasattr(task, "weights")


def _result(out: TrainOutput, records: list[dict], spec: TrainSpec, cfg: Config) -> RunResult:
    dv = np.asarray(out.diverged_step).reshape(-1)
    last = jax.tree.map(lambda a: np.asarray(a)[:, -1], out.metrics)
    summary = {
        "final": {
            "kl": last.kl.tolist(),
            "ce": last.ce.tolist(),
            "cov": {N: last.cov[:, i].tolist() for i, N in enumerate(spec.Ns)},
        },
        "diverged_steps": dv.tolist(),
    }
    files = {}
    if spec.select_samples:  # (seeds, checkpoints, samples): for covsim.select's tournaments
        buf = io.BytesIO()
        np.save(buf, np.asarray(out.metrics.select_logq, np.float32))
        files["select_logq.npy"] = buf.getvalue()
    if cfg.train.checkpoints:
        steps = np.asarray(out.step)[0]
        keep = [int(np.flatnonzero(steps == s)[0]) for s in cfg.train.checkpoints]
        params = jax.tree.map(lambda a: np.asarray(a)[:, keep], nnx.to_pure_dict(out.params))
        files["checkpoints.msgpack"] = checkpoint_bytes(steps[keep], params)
    diverged = bool(np.any(dv >= 0))
    return RunResult(
        records,
        summary,
        diverged=diverged,
        diverged_step=int(dv[dv >= 0].min()) if diverged else None,
        files=files,
    )
