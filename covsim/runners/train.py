"""Runner "train": the trainer on every seed of a cell (vmapped), after the optional
[pretrain] stage, each checkpoint scored against π_D; for a mixture task the summary also
holds each class's final KL and Cov_N ("per_class")."""

from __future__ import annotations

import dataclasses
import io
import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from covsim import metrics as M
from covsim import resume
from covsim.checkpoint import checkpoint_bytes
from covsim.config import Config, ConfigError
from covsim.evaluate import chunked_log_prob
from covsim.experiment import build_model_fn, build_optimizer, build_task, train_spec
from covsim.results import RunResult
from covsim.runners.registry import RunnerSpec, cell_keys, register_runner
from covsim.sweep import Cell
from covsim.tasks import Task
from covsim.train import TrainOutput, TrainSpec, make_train, run_seeds, to_records


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


def check_cell(cfg: Config, n_seeds: int = 1, model_fn_of=build_model_fn) -> None:
    """Build one cell's task, learner and optimizer (and its [pretrain] stage's) the way
    `train_cell` will, so that a bad value is a one-line ConfigError naming the field before
    anything runs; Pass@N needs a task with a verifier; a cell of `n_seeds` vmapped seeds
    whose memory floor (`memory_estimate`) exceeds the device's memory is refused."""
    stages = [("", cfg)] + ([("pretrain.", pretrain_config(cfg))] if cfg.pretrain else [])
    for prefix, sc in stages:
        section = "task"
        try:
            task = build_task(sc)
            section = "model"
            model_fn = model_fn_of(sc, task)
            section = "optim"
            build_optimizer(sc, task)
        except (ValueError, TypeError) as e:
            msg = " ".join(str(e).split())
            where = prefix + section
            named = msg.startswith((f"{where}.", f"{where}:", "pretrain."))
            if msg.startswith(("kind:", "name:")):  # the factory names its own field
                msg, named = f"{where}.{msg}", True
            raise ConfigError(msg if named else f"{where}: {msg}") from None
        if sc.train.pass_at and not hasattr(task, "good_set"):
            raise ConfigError(
                f"{prefix}train.pass_at: task kind {sc.task.kind!r} has no verifier "
                "(good_set), so Pass@N is undefined; remove train.pass_at"
            )
        terms = memory_estimate(train_spec(sc), task, n_params(model_fn), n_seeds)
        need, have = sum(terms.values()), device_memory_bytes()
        if need > have:
            top = max(terms, key=terms.get)
            raise ConfigError(
                f"{prefix}train: a cell of {n_seeds} seed(s) needs at least {_gib(need)} "
                f"(largest: {top} {_gib(terms[top])}), more than the device's {_gib(have)}; "
                f"lower {prefix}{_LOWER[top]}"
            )


#: the [train] (or sweep) keys that shrink each term of `memory_estimate`
_LOWER = {
    "parameters and optimizer state": "the model size (or sweep.seeds per cell)",
    "kept checkpoints": "train.checkpoints (or train.steps / train.eval_every)",
    "dataset and evaluation set": "train.n_train or train.eval_samples",
    "batch schedule": "train.steps (or train.batch_size)",
    "evaluation arrays": "train.eval_samples (or train.eval_chunk)",
    "training batch": "train.batch_size (or set train.microbatch)",
    "selection samples": "train.select_samples",
}


def _gib(b: float) -> str:
    return f"{b / 2**30:.3g} GiB"


def n_params(model_fn) -> int:
    """Parameter count of `model_fn(key)`'s model, from shapes only (nothing allocated)."""
    return _param_count(_abstract_model(model_fn))


def _abstract_model(model_fn):
    """`model_fn(key)`'s model with shapes for arrays (nnx.eval_shape: nothing allocated)."""
    return nnx.eval_shape(lambda: model_fn(jax.random.key(0)))


def _param_count(model) -> int:
    return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(nnx.state(model, nnx.Param)))


def memory_estimate(spec: TrainSpec, task: Task, params: int, n_seeds: int = 1) -> dict[str, int]:
    """A floor on the bytes a vmapped run of `n_seeds` seeds holds at once, by term (float32
    and int32 are 4 bytes). Only arrays the trainer certainly materialises are counted
    (a learner's activations beyond its (batch, H, V) output are not), so a cell refused on
    this estimate cannot fit; one that passes may still not.

    parameters: params and their gradient (2 copies; an optimizer's moments come on top);
    checkpoints:
    (n_evals + 1) parameter copies when kept; data: the fixed dataset plus the evaluation set,
    (n + m) × (P + H) tokens and m log-probs; schedule: (n_steps, batch_size) indices and the
    (epochs, n_train) shuffle keys; evaluation: (m, H) token log-probs and token KLs plus one
    chunk's (eval_chunk, H, V) model and teacher tables; batch: (batch_size, H, V) model
    output and its gradient (a microbatch's with train.microbatch); selection:
    select_samples sequences and their (n_evals + 1) log-probs."""
    f = 4
    V, H, P = task.V, task.H, task.P
    m, b = spec.eval_samples, spec.batch_size
    n = spec.n_train if spec.fixed_data else 0
    steps = spec.n_steps
    epochs = -(-steps * b // n) if n else 0
    terms = {
        "parameters and optimizer state": 2 * params * f,
        "kept checkpoints": (spec.n_evals + 1) * params * f if spec.checkpoints else 0,
        "dataset and evaluation set": (n + m) * (P + H) * f + m * f,
        "batch schedule": (steps * b + 2 * epochs * n) * f if n else 0,
        "evaluation arrays": 2 * m * H * f + 2 * min(spec.eval_chunk, m) * H * V * f,
        "training batch": 2 * (spec.microbatch or b) * H * V * f,
        "selection samples": spec.select_samples * (P + H + spec.n_evals + 1) * f,
    }
    return {k: v * n_seeds for k, v in terms.items()}


class CellEstimate(NamedTuple):
    """What one cell of `seeds` seeds (run together) costs, estimated before it runs."""

    seeds: int
    memory: dict[str, int]  # bytes by term: memory_estimate's floor plus "activations"
    flops: float | None  # training + evaluation FLOPs of every seed; None: no count known

    def line(self) -> str:
        top = max(self.memory, key=self.memory.get)
        if self.flops is None:
            flops = "FLOPs unknown"
        elif self.flops >= 1e15:
            flops = f"{self.flops / 1e15:.3g} PFLOP"
        else:
            flops = f"{self.flops / 1e12:.3g} TFLOP"
        return (f"{self.seeds} seed(s), ~{_gib(sum(self.memory.values()))} at once "
                f"(largest: {top} {_gib(self.memory[top])}), {flops}")


def cell_estimate(cfg: Config, n_seeds: int = 1, model_fn_of=build_model_fn) -> CellEstimate:
    """Memory and FLOPs of a cell of `n_seeds` vmapped seeds, from shapes only (nothing
    compiled or allocated): memory is the largest stage's `memory_estimate` plus the
    learner's training activations where it states them (`activation_bytes`); FLOPs sum the
    stages' training steps (`flops_per_token` · (P + H) · batch_size per step) and their
    evaluations (a forward pass, a third of a training step's FLOPs per token, on
    eval_samples sequences at each of the n_evals + 1 checkpoints)."""
    stages = [cfg] + ([pretrain_config(cfg)] if cfg.pretrain else [])
    memory, flops = {}, 0.0
    for sc in stages:
        task, spec = build_task(sc), train_spec(sc)
        model = _abstract_model(model_fn_of(sc, task))
        terms = memory_estimate(spec, task, _param_count(model), n_seeds)
        if hasattr(model, "activation_bytes"):
            rows = spec.microbatch or spec.batch_size  # gradient accumulation: one slice's
            terms["activations"] = n_seeds * model.activation_bytes(rows)
        if sum(terms.values()) > sum(memory.values()):
            memory = terms
        if flops is not None and hasattr(model, "flops_per_token"):
            per_seq = model.flops_per_token() * (task.P + task.H)
            evals = (spec.n_evals + 1) * spec.eval_samples / 3
            flops += n_seeds * per_seq * (spec.n_steps * spec.batch_size + evals)
        else:
            flops = None
    return CellEstimate(n_seeds, memory, flops)


def fitting_seed_mode(cfg: Config, n_seeds: int, n_devices: int, model_fn_of=build_model_fn,
                      have: int | None = None) -> str:
    """"loop" (`run_seeds`' seeds one after another per device) when vmapping a device's
    share of the `n_seeds` seeds would not fit its memory (`cell_estimate`) while one seed
    would; else "auto" (vmap on accelerators)."""
    have = device_memory_bytes() if have is None else have
    per_device = -(-n_seeds // max(n_devices, 1))
    if per_device <= 1:
        return "auto"
    one = sum(cell_estimate(cfg, 1, model_fn_of).memory.values())  # every term ∝ seeds
    return "loop" if per_device * one > have >= one else "auto"


def device_memory_bytes() -> int:
    """Memory of the default device: an accelerator's byte limit, else the host's RAM."""
    dev = jax.devices()[0]
    stats = dev.memory_stats() if dev.platform != "cpu" else None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"])
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


@register_runner("train", RunnerSpec(check=check_cell, estimate=cell_estimate))
def run_train(cfg: Config, cell: Cell) -> RunResult:
    """Train every seed of the cell (vmapped) and score each checkpoint against π_D; with a
    [pretrain] stage, first train the same seeds on its task and start from their final
    parameters (its checkpoints are recorded too, with "stage": "pretrain"). For a mixture
    task the summary also holds each class's final KL and Cov_N ("per_class")."""
    return train_cell(cfg, cell)


def train_cell(cfg: Config, cell: Cell, model_fn_of=None) -> RunResult:
    """`run_train` with the learner built by `model_fn_of(cfg, task) -> (key -> model)`
    (default `build_model_fn`): runners with their own learner plumbing reuse the rest."""
    return trained_cell(cfg, cell, model_fn_of).result


class TrainedCell(NamedTuple):
    """What `trained_cell` leaves for a runner that goes on from the trained seeds."""

    task: Task
    trainer: Any  # covsim.train's trainer (its .model(params) rebuilds a learner)
    out: TrainOutput  # the main stage's output (params stacked per checkpoint if kept)
    keys: jax.Array  # (S,) the seeds' PRNG keys
    result: RunResult


def trained_cell(cfg: Config, cell: Cell, model_fn_of=None) -> TrainedCell:
    """`train_cell`, returning the task, trainer, output and keys along with the result."""
    model_fn_of = model_fn_of or build_model_fn
    task = build_task(cfg)
    spec = train_spec(cfg)
    pcfg = pretrain_config(cfg) if cfg.pretrain is not None else None
    pspec = train_spec(pcfg) if pcfg is not None else None
    work = resume.current()  # in a driver's cell: stream records and progress, keep state
    total = spec.n_steps + (pspec.n_steps if pspec is not None else 0)

    def live(stage: str, stage_spec: TrainSpec, offset: int, coords=None) -> dict[str, Any]:
        """run_seeds' on_eval and store for `stage` of a cell run by a driver."""
        if work is None:
            return {}

        def on_eval(part: TrainOutput, first: int) -> None:
            work.add_records(to_records(part, stage_spec, coords=coords, seeds=cell.seeds))
            work.progress(offset + int(np.asarray(part.step)[0, -1]), total)

        every = stage_spec.checkpoint_every
        return {"on_eval": on_eval, "store": work.store(stage, every) if every else None}

    keys = jnp.stack([jax.random.key(k) for k in cell_keys(cell)])
    params0, pre_records = None, []
    mode = "auto"
    if jax.default_backend() != "cpu":  # on a CPU "auto" already loops large learners
        mode = fitting_seed_mode(cfg, len(keys), len(jax.local_devices()), model_fn_of)
    if pcfg is not None:
        ptask = build_task(pcfg)
        if _sizes(ptask) != _sizes(task):
            raise ValueError(
                "pretrain.task: the model is shared, so (V, H, P, prompt_vocab) must match "
                f"task's {_sizes(task)}, got {_sizes(ptask)}"
            )
        ptrainer = make_train(
            ptask, model_fn_of(pcfg, ptask), build_optimizer(pcfg, ptask), pspec
        )
        pkeys = jax.vmap(lambda k: jax.random.fold_in(k, _PRETRAIN_STREAM))(keys)
        pre = {"stage": "pretrain"}
        pout = run_seeds(ptrainer, pkeys, mode=mode, **live("pretrain", pspec, 0, pre))
        pre_records = to_records(pout, pspec, coords=pre, seeds=cell.seeds)
        params0 = pout.params
    trainer = make_train(task, model_fn_of(cfg, task), build_optimizer(cfg, task), spec)
    coords = {"stage": "main"} if cfg.pretrain is not None else None
    out = run_seeds(trainer, keys, params=params0, mode=mode,
                    **live("main", spec, total - spec.n_steps, coords))
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
        params = out.params
        if spec.checkpoints:  # the summary is about the final parameters
            params = jax.tree.map(lambda a: a[:, -1], params)
        result.summary["per_class"] = per_class_summary(
            trainer, params, task, key, spec.eval_samples, spec.Ns
        )
    return TrainedCell(task, trainer, out, keys, result)


def class_log_ratios(trainer, params, task: Task, key, m: int) -> jax.Array:
    """r = log π_D − log π̂ on m fresh samples of each class of a mixture task (Mixture,
    GraphMixture: anything with `components` and `weights`), for each seed's parameters:
    params with a leading seed axis S -> (K, S, m). One compiled function serves every class
    (a class is the mixture with one-hot weights) and every call with the same shapes
    (`_class_program`); seeds run one after another (memory)."""
    one = _class_program(trainer, m)
    K = len(task.components)
    out = [one(task.replace(weights=np.eye(K, dtype=np.float32)[c]), jax.random.fold_in(key, c),
               params) for c in range(K)]
    return jnp.stack(out)


def _class_program(trainer, m: int):
    """class_log_ratios' jitted (mix, key, params) -> (S, m), built once per trainer and m."""
    cache = trainer.__dict__.setdefault("_class_programs", {})
    if m not in cache:
        chunk = trainer.spec.eval_chunk

        def class_log_ratios(mix, k, params):  # its name is the program's in compile logs
            x, y = mix.sample(k, m)
            lp = mix.log_prob(x, y)
            return jax.lax.map(
                lambda p: lp - chunked_log_prob(trainer.model(p), x, y, chunk=chunk), params
            )

        cache[m] = jax.jit(class_log_ratios)
    return cache[m]


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
