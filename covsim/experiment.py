"""From a validated `Config` to objects and results: the one bridge between the experiment
files and the pure layers (tasks, models, optim, train).

    task = build_task(cfg)                     # [task]  kind + parameters
    model_fn = build_model_fn(cfg, task)       # [model] kind + parameters -> key -> nnx.Module
    tx = build_optimizer(cfg, task)            # [optim] name + parameters -> optax transform
    spec = train_spec(cfg)                     # [train] -> TrainSpec

How a cell runs (`[experiment] runner`) is `covsim.runners`' business; the runners call these
builders.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import jax
from flax import nnx

from covsim import registry
from covsim.config import Config
from covsim.models import make_model
from covsim.optim import make_optimizer
from covsim.tasks import Task, graph, paper, rules
from covsim.tasks.bernoulli import Bernoulli
from covsim.tasks.linear import AutoregressiveLinear
from covsim.tasks.markov import MarkovChain
from covsim.tasks.mixture import Mixture
from covsim.train import TrainSpec

# ---- tasks -----------------------------------------------------------------------------------


def _register_builtin_tasks() -> None:
    """The built-in task kinds; each factory takes (key, **params), its parameters are those
    of the constructor it calls (so `--set task.X=...` and `covsim describe` see them)."""
    builtin = {
        "markov": (lambda key, **p: MarkovChain.random(key, **p), MarkovChain.random, ("key",)),
        "bernoulli": (lambda key, **p: Bernoulli(**p), Bernoulli, ()),
        "linear": (lambda key, **p: AutoregressiveLinear.random(key, **p),
                   AutoregressiveLinear.random, ("key",)),
        "prop_3_2": (lambda key, **p: AutoregressiveLinear.prop_3_2(**p),
                     AutoregressiveLinear.prop_3_2, ()),
        "prop_5_1_sgd": (lambda key, **p: AutoregressiveLinear.prop_5_1_sgd(**p)[0],
                         AutoregressiveLinear.prop_5_1_sgd, ()),
        "prop_g1a": (lambda key, **p: AutoregressiveLinear.prop_g1a(**p),
                     AutoregressiveLinear.prop_g1a, ()),
        # the paper's graph tasks; their "H" is the number L of intermediate layers
        "graph_fig2": (lambda key, **p: graph.figure2_task(**p), graph.figure2_task, ()),
        "graph_fig1_finetune": (lambda key, **p: graph.figure1_finetune_task(**p),
                                graph.figure1_finetune_task, ()),
        "graph_fig1_pretrain": (lambda key, **p: graph.figure1_pretrain_task(**p),
                                graph.figure1_pretrain_task, ()),
        # Fig. 1's mechanism without the graphs: two rules behind a class the learner can't read
        "hidden_rules_finetune": (lambda key, **p: rules.finetune_task(key, **p),
                                  rules.finetune_task, ("key",)),
        "hidden_rules_pretrain": (lambda key, **p: rules.pretrain_task(key, **p),
                                  rules.pretrain_task, ("key",)),
        "rare_prompts": (lambda key, **p: paper.rare_prompts_task(**p),
                         paper.rare_prompts_task, ()),
        "pivotal": (lambda key, **p: paper.pivotal_task(**p), paper.pivotal_task, ()),
        "heterogeneous_mixture": (lambda key, **p: paper.heterogeneous_mixture_task(**p),
                                  paper.heterogeneous_mixture_task, ()),
        "prop_g2": (lambda key, **p: paper.prop_g2_instance(**p), paper.prop_g2_instance, ()),
    }
    for name, (factory, ctor, skip) in builtin.items():
        ps = registry.signature_params(ctor, skip)
        registry.register("task", name, factory, params=ps, doc=registry.doc_line(ctor))
    mixture_params = [registry.Param("components", "list of task tables"),
                      registry.Param("weights", "list of float", None)]
    registry.register("task", "mixture", Mixture, params=mixture_params,
                      doc="A mixture of tasks (components), each drawn with its weight.")


_register_builtin_tasks()


def task_kinds() -> list[str]:
    return sorted(registry.entries("task"))


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
    entry = registry.entry("task", kind) if isinstance(kind, str) else None
    if entry is None:
        raise ValueError(f"{where}.kind: must be one of {task_kinds()}, got {kind!r}")
    allowed = entry.param_names
    if allowed is not None:
        unknown = sorted(set(spec) - allowed)
        if unknown:
            raise ValueError(
                f"{where}.{unknown[0]}: unknown parameter of task kind {kind!r}; allowed: "
                f"{', '.join(sorted(allowed | {'seed'}))}"
            )
    try:
        return entry.factory(jax.random.key(seed), **spec)
    except TypeError as e:  # a missing keyword: say where
        raise ValueError(f"{where}: bad parameters for kind {kind!r}: {e}") from None


_TASKS: dict[str, Task] = {}  # canonical spec -> task (tasks are immutable pytrees)
_TASKS_KEPT = 32


def build_task(cfg: Config) -> Task:
    """The [task] section's task. A spec built before in this process is returned from a
    small cache: a task is a pure function of its spec, and building one costs many eager
    ops (the pre-flight check and the cell itself would otherwise build each twice)."""
    spec = {"kind": cfg.task.kind, **cfg.task.params}
    if cfg.task.H is not None:
        spec["H"] = cfg.task.H
    key = json.dumps(spec, sort_keys=True, default=repr)
    if key not in _TASKS:
        task = make_task(spec)
        if len(_TASKS) >= _TASKS_KEPT:
            _TASKS.pop(next(iter(_TASKS)))
        _TASKS[key] = task
    return _TASKS[key]


# ---- learners and optimizers -----------------------------------------------------------------


def build_model_fn(cfg: Config, task: Task) -> Callable[[jax.Array], nnx.Module]:
    spec = {"kind": cfg.model.kind, **cfg.model.params}
    make_model(spec, task, jax.random.key(0))  # validate now, not inside a trace
    return lambda key: make_model(spec, task, nnx.Rngs(key))


def optim_spec(cfg: Config) -> dict[str, Any]:
    return {"name": cfg.optim.name, **cfg.optim.params}


def theory_args(cfg: Config, task: Task) -> dict[str, Any]:
    """What the paper's step-size rules need (§5–6): B, H, T, σ⋆², N, and which rule: the
    [train] section decides it (update = "token": Thm 6.1's; loss = "distill": Thm. 6.2's, with
    N = train.distill_N; else the optimizer's own)."""
    t = train_spec(cfg)
    args: dict[str, Any] = {"H": task.H, "T": t.n_steps, "N": max(t.Ns)}
    if t.update == "token":
        args["rule"] = "token_sgd"
    elif t.loss == "distill":
        args["rule"], args["N"] = "distill_sgd", t.distill_N
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
    """The [train] table as the trainer's TrainSpec: the same names; keys left out take the
    trainer's defaults."""
    given = cfg.train.model_dump(exclude_none=True)
    return TrainSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in given.items()})
