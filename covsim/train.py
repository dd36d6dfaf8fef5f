"""Next-token training as a pure function of a PRNG key, scored on every checkpoint.

    trainer = make_train(task, model_fn, optimizer, spec)
    out = trainer(key)                       # whole run: one pure function (jit/vmap-able)
    outs = run_seeds(trainer, seeds)         # many seeds, driven segment by segment (a
                                             # progress bar, streamed checkpoints, resume)

A run is `spec.n_steps` optimizer steps split into `n_evals = n_steps // eval_every` segments; each
segment is a `lax.scan` over `eval_every` steps followed by an evaluation on a fixed set of
fresh ground-truth samples (drawn once per seed, so checkpoints are compared on the same data).
Checkpoint 0 is the initialisation. Everything the evaluation measures comes back as arrays with
a leading (n_evals + 1) axis; no host I/O happens inside.

Data regimes: a fixed dataset of `n_train` sequences visited in shuffled epochs (the paper's
figures, MLE-like), or `online=True` (or no n_train): fresh samples every step (its SGD
theorems).

Warm start: `trainer(key, params)` (and `run_seeds(..., params=...)`) starts from given
parameters, e.g. a pre-training stage's (covsim.experiment's [pretrain]). Model selection:
with `select_samples` every checkpoint also keeps log π̂ of that many held-out π_D samples
(`EvalMetrics.select_logq`), the observable data covsim.select's tournaments need.

Divergence: the step at which a seed's values stop being finite is recorded in
`diverged_step`: the first step whose loss is not finite (an update that makes the parameters
non-finite shows in the next step's loss), or, when non-finite parameters leave every loss
finite (a table row no batch visits), the last step of the segment at whose end they are
found. That seed's parameters and optimizer state are frozen at the start of the segment it
diverged in, and its later evaluations are NaN; other seeds in the same vmapped batch are
unaffected.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from covsim.checks import DEFAULT_ALPHA, check_float, check_int, check_Ns, steps_to_run
from covsim.evaluate import EvalMetrics, chunked_log_prob, evaluate, make_eval_set
from covsim.models.base import token_log_probs
from covsim.optim import truncated_distillation_loss
from covsim.tasks.base import Task

Array = jax.Array
ModelFn = Callable[[Array], nnx.Module]
_SELECT_STREAM = 0x5E1EC7  # fold_in constant of the selection set's key


@dataclasses.dataclass(frozen=True)
class TrainSpec:
    """What a run does: the fields of an experiment file's [train] table, by the same names
    (`TrainSpec(**cfg.train...)`, see covsim.experiment.train_spec). Sizes are static: a new
    value means a new compilation."""

    steps: int  # optimizer steps (a cap when `epochs` is set), a multiple of eval_every
    batch_size: int
    # the batch's gradient is the mean of its batch_size / microbatch slices' gradients,
    # computed one slice after another (gradient accumulation): the same update up to float
    # rounding, with a slice's activations in memory (and in cache) instead of the batch's
    microbatch: int | None = None
    n_train: int | None = None  # a fixed dataset of n_train sequences ...
    online: bool = False  # ... or fresh samples every step (also when n_train is None)
    epochs: int | None = None  # fixed dataset: stop after this many passes if before `steps`
    eval_every: int = 100
    eval_samples: int = 4096
    eval_chunk: int = 1024  # model evaluation is chunked to bound memory
    Ns: tuple[float, ...] = (2.0, 4.0, 16.0, 64.0)
    pass_at: tuple[int, ...] = ()  # Pass@N, exact, for tasks with `good_set`
    # "sequence": Σ_h NLL (the paper's objective); "token": its per-token mean; "distill": the
    # truncated distillation surrogate with budget A = log(distill_N) (Eqs. 24–25, §6.2).
    loss: Literal["sequence", "token", "distill"] = "sequence"
    distill_N: float = 16.0
    # "batch": one optimizer update per batch; "token": one per token position (Eq. 21).
    update: Literal["batch", "token"] = "batch"
    alpha: float = DEFAULT_ALPHA  # coverage intervals are (1 - alpha) Wilson intervals
    # evaluation steps whose parameters are kept (all checkpoints are stacked in the output
    # when this is non-empty; the runner keeps these)
    checkpoints: tuple[int, ...] = ()
    # held-out π_D samples whose log π̂(y|x) is kept at every checkpoint (in
    # EvalMetrics.select_logq): the observable data covsim.select's tournaments score on
    select_samples: int = 0
    # a fixed dataset is drawn in chunks of this many sequences (bounds the sampler's memory
    # at paper scale); a draw that fits in one chunk is a single call, as before
    sample_chunk: int = 65536
    # steps between saves of the run's state (params, optimizer state, data position, PRNG
    # key) by a driver that can resume (covsim.resume: a sweep's cells); a multiple of
    # eval_every; None: never saved. The numbers do not depend on it.
    checkpoint_every: int | None = None

    def __post_init__(self):
        check_int("steps", self.steps, 1)
        check_int("batch_size", self.batch_size, 1)
        if self.microbatch is not None:
            check_int("microbatch", self.microbatch, 1, self.batch_size)
            if self.batch_size % self.microbatch:
                raise ValueError(f"argument microbatch must divide batch_size={self.batch_size}, "
                                 f"got {self.microbatch}")
            if self.update != "batch":
                raise ValueError("argument microbatch applies to update='batch' only, got "
                                 f"update={self.update!r}")
        if self.n_train is not None:
            check_int("n_train", self.n_train, 1)
        if self.epochs is not None:
            check_int("epochs", self.epochs, 1)
        check_int("eval_every", self.eval_every, 1, self.steps)
        if self.steps % self.eval_every:
            raise ValueError(
                f"argument steps must be a multiple of eval_every={self.eval_every}, "
                f"got {self.steps}"
            )
        check_int("eval_samples", self.eval_samples, 1)
        check_int("eval_chunk", self.eval_chunk, 1)
        check_int("select_samples", self.select_samples, 0)
        check_int("sample_chunk", self.sample_chunk, 1)
        if self.checkpoint_every is not None:
            check_int("checkpoint_every", self.checkpoint_every, 1)
            if self.checkpoint_every % self.eval_every:
                raise ValueError(f"argument checkpoint_every must be a multiple of eval_every="
                                 f"{self.eval_every} (state is saved between segments), got "
                                 f"{self.checkpoint_every}")
        object.__setattr__(self, "Ns", tuple(float(N) for N in check_Ns("Ns", self.Ns)))
        object.__setattr__(self, "pass_at", tuple(self.pass_at))
        object.__setattr__(self, "checkpoints", tuple(self.checkpoints))
        for N in self.pass_at:
            check_int("pass_at", N, 1)
        for name in ("Ns", "pass_at"):  # records key values by N: a repeat would merge two
            vals = [float(v) for v in getattr(self, name)]
            if len(set(vals)) < len(vals):
                raise ValueError(f"argument {name} must not repeat a value, got {vals}")
        for c in self.checkpoints:
            check_int("checkpoints", c, 0, self.steps)
            if c % self.eval_every:
                raise ValueError(f"argument checkpoints must hold evaluation steps (multiples "
                                 f"of eval_every={self.eval_every}), got {c}")
        if self.loss not in ("sequence", "token", "distill"):
            raise ValueError(
                f"argument loss must be one of 'sequence', 'token', 'distill', got {self.loss!r}"
            )
        if self.update not in ("batch", "token"):
            raise ValueError(
                f"argument update must be one of 'batch', 'token', got {self.update!r}"
            )
        check_float("distill_N", self.distill_N, 1.0)

    @property
    def fixed_data(self) -> bool:
        """A fixed dataset of n_train sequences (else fresh samples every step)."""
        return self.n_train is not None and not self.online

    @property
    def n_steps(self) -> int:
        """The steps this run takes (`steps`, or fewer when `epochs` end first)."""
        n = self.n_train if self.fixed_data else None
        return steps_to_run(self.steps, self.eval_every, self.batch_size, n, self.epochs)

    @property
    def n_evals(self) -> int:
        return self.n_steps // self.eval_every


class TrainOutput(NamedTuple):
    step: Array  # (E+1,) int32, the step of each checkpoint (0 = init)
    metrics: EvalMetrics  # fields with leading (E+1,)
    train_loss: Array  # (E+1,) mean training loss over the segment before each checkpoint
    diverged_step: Array  # () int32, −1 if the run never diverged
    params: Any  # final parameters (or (E+1, ...) stacked when spec.checkpoints)


class _State(NamedTuple):
    params: Any
    opt_state: Any
    key: Array
    step: Array
    diverged_step: Array


class Trainer:
    """`make_train`'s result: a pure `__call__(key) -> TrainOutput` plus its pieces
    (`init`, `segment`) for drivers that want a progress bar between segments."""

    def __init__(self, task: Task, model_fn: ModelFn, optimizer, spec: TrainSpec):
        self.task, self.model_fn, self.opt, self.spec = task, model_fn, optimizer, spec
        # The graph structure and non-trainable state come from one throw-away build; each
        # seed then builds only its own parameters (so inits can be vmapped).
        self.graphdef, params, self.rest = nnx.split(model_fn(jax.random.key(0)), nnx.Param,
                                                     ...)
        self.n_params = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(params))
        if jax.tree.leaves(nnx.filter_state(self.rest, nnx.RngState)):
            # the non-Param state is shared and frozen here, so dropout masks would repeat
            raise ValueError(
                "the model carries random state (dropout > 0): the trainer keeps non-Param "
                "state fixed, so use dropout = 0"
            )
        self.Ns = spec.Ns  # host floats: metrics.log_threshold takes log N in float64

    # ---- model plumbing --------------------------------------------------------------
    def model(self, params) -> nnx.Module:
        return nnx.merge(self.graphdef, params, self.rest)

    def init_params(self, key: Array):
        return nnx.state(self.model_fn(key), nnx.Param)

    def loss(self, params, x: Array, y: Array) -> Array:
        """Mean negative log-likelihood of a batch: summed over tokens ("sequence", the
        paper's objective) or averaged over them ("token")."""
        model = self.model(params)
        if self.spec.loss == "distill":
            teacher = self.task.next_token_log_probs(x, y)
            A = jnp.log(self.spec.distill_N)
            return jnp.mean(truncated_distillation_loss(teacher, model(x, y), y, A))
        nll = -jnp.sum(token_log_probs(model, x, y), axis=-1)  # the learner's cheapest path
        if self.spec.loss == "token":
            nll = nll / y.shape[-1]
        return jnp.mean(nll)

    def _token_loss(self, params, x: Array, y: Array, h: Array) -> Array:
        """−mean_b log π̂(y_h | x, y_{<h}): the loss of one token-level update (Eq. 21)."""
        return -jnp.mean(token_log_probs(self.model(params), x, y)[:, h])

    # ---- data ------------------------------------------------------------------------
    def _batch_indices(self, key: Array) -> Array:
        """(steps, b) indices into the fixed dataset: consecutive shuffled epochs."""
        s = self.spec
        n_epochs = math.ceil(s.n_steps * s.batch_size / s.n_train)
        # one argsort of uniforms shuffles every epoch: far cheaper to compile than vmapped
        # `jax.random.permutation` (several sort rounds); uniform up to float32 ties
        perms = jnp.argsort(jax.random.uniform(key, (n_epochs, s.n_train)), axis=-1)
        return perms.reshape(-1)[: s.n_steps * s.batch_size].reshape(s.n_steps, s.batch_size)

    def _sample(self, key: Array, n: int) -> tuple[Array, Array]:
        """n i.i.d. pairs from π_D, drawn `spec.sample_chunk` at a time: ((n, P), (n, H))."""
        c = self.spec.sample_chunk
        if n <= c:
            return self.task.sample(key, n)
        k = math.ceil(n / c)
        x, y = jax.lax.map(lambda kk: self.task.sample(kk, c), jax.random.split(key, k))
        return x.reshape(k * c, -1)[:n], y.reshape(k * c, -1)[:n]

    # ---- the run ---------------------------------------------------------------------
    def init(self, key: Array, params=None):
        """Everything a run needs, from its key: (state, data, eval_set). `params` (optional)
        warm-starts the run from given parameters (e.g. a pre-training stage's final ones);
        the optimizer state starts fresh either way."""
        k_init, k_data, k_perm, k_train = jax.random.split(key, 4)
        if params is None:
            params = self.init_params(k_init)
        s = self.spec
        if not s.fixed_data:
            data = None
            eval_set = make_eval_set(self.task, k_data, s.eval_samples)
        else:  # one draw of n_train + eval_samples i.i.d. pairs: a single sampler to compile
            x, y = self._sample(k_data, s.n_train + s.eval_samples)
            data = (x[: s.n_train], y[: s.n_train], self._batch_indices(k_perm))
            ex, ey = x[s.n_train :], y[s.n_train :]
            eval_set = (ex, ey, self.task.log_prob(ex, ey))
        select_set = None
        if s.select_samples:  # its own stream: runs without it keep their data
            k_sel = jax.random.fold_in(key, _SELECT_STREAM)
            select_set = self.task.sample(k_sel, s.select_samples)
        eval_set = (*eval_set, select_set)
        state = _State(params, self.opt.init(params), k_train, jnp.int32(0), jnp.int32(-1))
        return state, data, eval_set

    def step(self, data, state: _State, _=None):
        """One optimizer step on the next batch: (state, loss). A `lax.scan` body."""
        s = self.spec
        if data is None:
            x, y = self.task.sample(jax.random.fold_in(state.key, state.step), s.batch_size)
        else:
            X, Y, idx = data
            x, y = X[idx[state.step]], Y[idx[state.step]]
        if s.update == "token":  # H sequential updates, one per position (Eq. 21)

            def tok(carry, h):
                p, o = carry
                loss_h, g = jax.value_and_grad(self._token_loss)(p, x, y, h)
                upd, o = self.opt.update(g, o, p)
                return (optax.apply_updates(p, upd), o), loss_h

            H = y.shape[-1]
            (params, opt_state), losses = jax.lax.scan(
                tok, (state.params, state.opt_state), jnp.arange(H)
            )
            loss = jnp.sum(losses)
        else:
            loss, g = self._loss_and_grad(state.params, x, y)
            upd, opt_state = self.opt.update(g, state.opt_state, state.params)
            params = optax.apply_updates(state.params, upd)
        # Only the loss is checked per step and only the scalar flag carried; the parameters
        # are checked and frozen once per segment (`train_steps`): a per-step select over params
        # and optimizer state made the horizon table's step 1.17x slower, a per-step
        # finiteness check of the parameters 1.12x (1000 steps: 0.74 s against 0.66 s).
        finite = jnp.isfinite(loss)
        alive = state.diverged_step < 0
        diverged = jnp.where(alive & ~finite, state.step, state.diverged_step)
        return _State(params, opt_state, state.key, state.step + 1, diverged), loss

    def _loss_and_grad(self, params, x, y):
        """The batch's loss and gradient; with spec.microbatch, the mean over its slices (each
        slice's loss is a mean over equally many sequences, so the mean of the slices' is
        the batch's)."""
        mb = self.spec.microbatch
        if mb is None or mb == x.shape[0]:
            return jax.value_and_grad(self.loss)(params, x, y)
        k = x.shape[0] // mb
        xs, ys = x.reshape(k, mb, *x.shape[1:]), y.reshape(k, mb, *y.shape[1:])

        def add(acc, xy):
            loss, g = jax.value_and_grad(self.loss)(params, *xy)
            return jax.tree.map(jnp.add, acc, (loss, g)), None

        zero = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, params))
        total, _ = jax.lax.scan(add, zero, (xs, ys))
        return jax.tree.map(lambda a: a / k, total)

    def segment(self, state: _State, data, eval_set):
        """`eval_every` steps (`train_steps`), then one evaluation: (state, (metrics, mean
        loss)); a seed that diverged (in this segment or before) gets NaN metrics."""
        state, losses = self.train_steps(state, data)
        ev = _mask_if(state.diverged_step >= 0, self.evaluate(state.params, eval_set))
        return state, (ev, jnp.mean(losses))

    def train_steps(self, state: _State, data):
        """`eval_every` optimizer steps and the divergence check: (state, (eval_every,)
        losses). A seed that diverges (in these steps or before) leaves them with the
        parameters and optimizer state it entered them with."""
        start = state
        state, losses = jax.lax.scan(
            lambda st, _: self.step(data, st, _), state, None, length=self.spec.eval_every
        )
        finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(a))
                                    for a in jax.tree.leaves(state.params)]))
        unseen = (state.diverged_step < 0) & ~finite  # non-finite parameters, finite losses
        state = state._replace(diverged_step=jnp.where(unseen, state.step - 1,
                                                       state.diverged_step))
        dead = state.diverged_step >= 0
        keep = lambda new, old: jnp.where(dead, old, new)
        state = state._replace(params=jax.tree.map(keep, state.params, start.params),
                               opt_state=jax.tree.map(keep, state.opt_state, start.opt_state))
        return state, losses

    def evaluate(self, params, eval_set) -> EvalMetrics:
        """Score params on the eval set against the exact π_D (covsim.evaluate), and keep
        log π̂ of the selection samples if any."""
        s = self.spec
        *scored, select_set = eval_set
        model = self.model(params)
        ev = evaluate(
            self.task,
            model,
            tuple(scored),
            Ns=self.Ns,
            pass_at=s.pass_at,
            alpha=s.alpha,
            chunk=s.eval_chunk,
        )
        if select_set is None:
            return ev
        return ev._replace(select_logq=chunked_log_prob(model, *select_set, chunk=s.eval_chunk))

    def __call__(self, key: Array, params=None) -> TrainOutput:
        """The whole run as one pure function of `key` (and of warm-start `params`)."""
        state, data, eval_set = self.init(key, params)
        ev0 = self.evaluate(state.params, eval_set)

        def seg(st, _):
            st, (ev, loss) = self.segment(st, data, eval_set)
            return st, (ev, loss, st.params if bool(self.spec.checkpoints) else None)

        params0 = state.params
        state, (evs, losses, ps) = jax.lax.scan(seg, state, None, length=self.spec.n_evals)
        return self._assemble(state, ev0, evs, losses, ps, params0)

    def _assemble(self, state, ev0, evs, losses, ps, params0) -> TrainOutput:
        cat = lambda a, b: jnp.concatenate([a[None], b])
        metrics = jax.tree.map(cat, ev0, evs)
        loss0 = jnp.full((1,), jnp.nan, jnp.float32)
        steps = jnp.arange(self.spec.n_evals + 1, dtype=jnp.int32) * self.spec.eval_every
        params = state.params
        if bool(self.spec.checkpoints):
            params = jax.tree.map(cat, params0, ps)
        return TrainOutput(
            steps, metrics, jnp.concatenate([loss0, losses]), state.diverged_step, params
        )


def _mask_if(cond: Array, ev: EvalMetrics) -> EvalMetrics:
    return jax.tree.map(lambda a: jnp.where(cond, jnp.nan, a), ev)


def make_train(task: Task, model_fn: ModelFn, optimizer, spec: TrainSpec) -> Trainer:
    """Build the trainer; `make_train(...)(key)` is the whole run as a pure function."""
    return Trainer(task, model_fn, optimizer, spec)


SeedMode = Literal["auto", "vmap", "loop"]

#: Per-seed parameter count from which "auto" runs a device's seeds one after another on a CPU
#: rather than vmapped: a step whose parameters and optimizer state (≥ 4 float32 copies) no
#: longer fit a core's cache is memory-bound, and vmapping only makes the arrays bigger.
#: Measured on a 2-core CPU (no benchmark row yet): the horizon table of 295k logits (held
#: flat), 4 seeds × 1000 steps on the CLI's two host devices, took 1.74–2.10 s vmapped against
#: 1.27–1.55 s looped (2 runs each); the AR-linear learner of a few hundred parameters runs
#: 1.1x faster vmapped (it is bound by per-op overhead, which vmapping amortises;
#: `python benchmarks/bench_train.py --skip-linear --seed-modes`).
LOOP_FROM_PARAMS = 1 << 16


def seed_mode(trainer: Trainer, platform: str | None = None) -> str:
    """The seed mode "auto" picks: "vmap" on accelerators (seeds are parallel work there),
    on a CPU "loop" for learners of at least LOOP_FROM_PARAMS parameters, else "vmap"."""
    platform = platform or jax.devices()[0].platform
    if platform != "cpu":
        return "vmap"
    return "loop" if trainer.n_params >= LOOP_FROM_PARAMS else "vmap"


def run_seeds(
    trainer: Trainer,
    seeds: Sequence[int] | int | Array,
    *,
    mode: SeedMode = "auto",
    progress: bool = False,
    params=None,
    devices: Sequence[jax.Device] | None = None,
    on_eval: Callable[[TrainOutput, int], None] | None = None,
    store: StateStore | None = None,
) -> TrainOutput:
    """Run several seeds (ints, a count, or an array of typed PRNG keys); the output gains a
    leading seed axis.

    The seeds advance together one segment (`eval_every` steps, then an evaluation) at a
    time, driven from the host: three programs (init, `eval_every` training steps, the
    evaluation), each compiled once per trainer and reused by a second call with the same
    shapes.
    Between segments the host can show a tqdm bar (`progress`: steps, steps/s, ETA), hand
    each new checkpoint to `on_eval(part, first)` (`part`: a TrainOutput of checkpoints
    first..e of every seed, `first` = 0 for the first call; a resumed run's first call
    covers every checkpoint restored), and save the run's state to `store` (covsim.resume)
    every `store.every` steps and at the end; a run with a saved state continues from it
    and gives bit-identical results to one never interrupted. The numbers depend on neither
    `progress`, `on_eval` nor `store`; the pure `trainer(key)` (one `lax.scan`, for jit/vmap
    users) agrees with them up to XLA's floating-point fusion choices.

    Seeds are split over `devices` (default: every local device of the default backend, so a
    multi-GPU host, or a CPU run with `XLA_FLAGS=--xla_force_host_platform_device_count=K`,
    uses all of them with no config change) by `jax.shard_map`, padded to a multiple of the
    device count by repeating the last seed (its copies are dropped). On each device "vmap"
    runs its seeds in one vectorised computation, "loop" one after another with the same
    compiled program (`lax.map`), "auto" picks (`seed_mode`). A seed's numbers do not depend
    on the device count (tested); vmap and loop agree up to float32 rounding (tested).
    `params` (leading seed axis) warm-starts seed i from params[i], e.g. the final
    parameters of a pre-training run of the same seeds.
    """
    if isinstance(seeds, jax.Array) and jnp.issubdtype(seeds.dtype, jax.dtypes.prng_key):
        keys = seeds  # typed PRNG keys, one per seed
    else:
        if isinstance(seeds, int):
            seeds = list(range(check_int("seeds", seeds, 1)))
        keys = jnp.stack([jax.random.key(int(s)) for s in seeds])
    if mode not in ("auto", "vmap", "loop"):
        raise ValueError(f"argument mode must be one of 'auto', 'vmap', 'loop', got {mode!r}")
    if params is not None:
        n = {a.shape[0] for a in jax.tree.leaves(params)}
        if n != {len(keys)}:
            raise ValueError(
                f"argument params must have a leading seed axis of {len(keys)}, got sizes {n}"
            )
    devices = list(devices) if devices is not None else jax.local_devices()
    if mode == "auto":
        mode = seed_mode(trainer, devices[0].platform)
    S = len(keys)
    D = min(len(devices), S)
    pad = -S % D
    if pad:  # repeat the last seed so every device gets as many; the copies are dropped
        grow = lambda a: jnp.concatenate([a, jnp.repeat(a[-1:], pad, axis=0)])
        keys, params = grow(keys), None if params is None else jax.tree.map(grow, params)
    programs = _programs(trainer, mode, tuple(devices[:D]), params is not None)
    return _drive(trainer, programs, keys, params, S, progress, on_eval, store)


class StateStore(Protocol):
    """Where `run_seeds` keeps a run's state between segments (covsim.resume.StageStore)."""

    every: int  # steps between saves (a multiple of eval_every)

    def restore(self, template: dict) -> tuple[int, dict] | None:
        """(segments done, a tree like `template` of numpy arrays), or None: start afresh."""

    def save(self, done: int, tree: dict) -> None:
        """Keep `tree` (numpy arrays) as the state after `done` segments."""


def _programs(trainer: Trainer, mode: str, devices: tuple, warm: bool):
    """(init, train, evaluate), jitted over the seed axis for `mode` over `devices`, built
    once per trainer: init(keys, params) -> (state, data, eval_set); train(state, data) ->
    (state, mean loss) over `eval_every` steps (`Trainer.train_steps`); evaluate(state,
    eval_set) -> metrics (NaN for a seed that has diverged, as in `Trainer.segment`). The
    evaluation is one program for every checkpoint, compiled once (inlined into a segment's
    program it would be compiled twice: a cold start pays for every compilation)."""
    cache = trainer.__dict__.setdefault("_programs", {})
    key = (mode, devices, warm)
    if key not in cache:
        def evaluate_one(state, eval_set):  # a seed that has diverged gets NaN metrics
            ev = trainer.evaluate(state.params, eval_set)
            return _mask_if(state.diverged_step >= 0, ev)

        def over_seeds(f):  # f on each of this device's seeds
            if mode == "vmap":
                return jax.vmap(f)
            return lambda *args: jax.lax.map(lambda a: f(*a), args)

        def train_one(state, data):
            state, losses = trainer.train_steps(state, data)
            return state, jnp.mean(losses)

        inits = over_seeds(trainer.init if warm else lambda k: trainer.init(k))
        trains, evaluates = over_seeds(train_one), over_seeds(evaluate_one)

        # named after what they do, so that compile logs (JAX_LOG_COMPILES, jax.monitoring's
        # fun_name) say which program is which
        def init_seeds(keys, params):
            return inits(keys, params) if warm else inits(keys)

        def train_segment(state, data):
            return trains(state, data)

        def evaluate_checkpoint(state, eval_set):
            return evaluates(state, eval_set)

        init, train, evaluate = init_seeds, train_segment, evaluate_checkpoint
        if len(devices) > 1:
            from jax.sharding import Mesh, PartitionSpec

            mesh = Mesh(np.asarray(devices), ("seed",))
            spec = PartitionSpec("seed")
            shard = lambda f, ins: jax.shard_map(f, mesh=mesh, in_specs=ins, out_specs=spec,
                                                 check_vma=False)
            init = shard(init, (spec, spec if warm else None))
            train, evaluate = shard(train, (spec, spec)), shard(evaluate, (spec, spec))
        cache[key] = (jax.jit(init), jax.jit(train), jax.jit(evaluate))
    return cache[key]


def _drive(trainer: Trainer, programs, keys, params, S: int, progress: bool, on_eval,
           store: StateStore | None) -> TrainOutput:
    """The host loop of `run_seeds` over the padded seeds; returns the first S seeds'."""
    s = trainer.spec
    E = s.n_evals
    init, train, evaluate = programs
    state, data, eval_set = init(keys, params)
    ev0 = host_tree(evaluate(state, eval_set))
    params0 = host_tree(state.params) if s.checkpoints else None
    P = len(keys)
    history = {  # checkpoints 1..E of every seed, filled segment by segment
        "evs": jax.tree.map(lambda a: np.zeros((P, E, *a.shape[1:]), a.dtype), ev0),
        "losses": np.full((P, E), np.nan, np.float32),
        "ps": jax.tree.map(lambda a: np.zeros((P, E, *a.shape[1:]), a.dtype), params0),
    }
    done = 0
    if store is not None:
        got = store.restore({"state": _state_to_host(state), **history})
        if got is not None:
            done, tree = got
            state = _state_from_host(tree.pop("state"), like=state)
            history = tree

    def part(first: int, last: int) -> TrainOutput:  # checkpoints first..last, real seeds
        return _assemble_host(s, state, ev0, history, params0, first, last, S)

    if on_eval is not None:
        on_eval(part(0, done), 0)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=s.n_steps, initial=done * s.eval_every, unit="step", desc="train")
    try:
        for e in range(done, E):
            state, loss = train(state, data)
            _put(history["evs"], e, host_tree(evaluate(state, eval_set)))
            history["losses"][:, e] = np.asarray(loss)
            if s.checkpoints:
                _put(history["ps"], e, host_tree(state.params))
            if on_eval is not None:
                on_eval(part(e + 1, e + 1), e + 1)
            if store is not None and ((e + 1) * s.eval_every % store.every == 0 or e + 1 == E):
                store.save(e + 1, {"state": _state_to_host(state), **history})
            if bar is not None:
                bar.update(s.eval_every)
    finally:
        if bar is not None:
            bar.close()
    out = part(0, E)
    if not s.checkpoints:  # the final parameters, where they are (on the devices)
        out = out._replace(params=jax.tree.map(lambda a: a[:S], state.params))
    return out


def _put(buffers, e: int, tree) -> None:
    """buffers[:, e] = tree, leaf by leaf (buffers: (P, E, ...) numpy arrays)."""
    jax.tree.map(lambda buf, a: buf.__setitem__((slice(None), e), a), buffers, tree)


def _state_to_host(state: _State) -> dict:
    """The state as numpy arrays, the PRNG key as its raw key data."""
    return host_tree(state._replace(key=jax.random.key_data(state.key)))


def _state_from_host(tree, like: _State) -> _State:
    """`_state_to_host`'s inverse, each array placed as `like`'s (its devices and sharding)."""
    impl = jax.random.key_impl(like.key)
    raw = like._replace(key=jax.random.key_data(like.key))
    put = jax.tree.map(lambda a, ref: jax.device_put(a, ref.sharding), tree, raw)
    return put._replace(key=jax.random.wrap_key_data(put.key, impl=impl))


def host_tree(tree):
    """`tree` with every leaf a numpy array (copied from its devices)."""
    return jax.tree.map(np.asarray, tree)


def _assemble_host(s: TrainSpec, state: _State, ev0, history: dict, params0, first: int,
                   last: int, S: int) -> TrainOutput:
    """A TrainOutput of checkpoints first..last (0 = the initialisation) of seeds 0..S-1, from
    the host copies; `params` are the kept checkpoints' (spec.checkpoints), else None."""
    def take(a0, a):  # checkpoint 0 from a0 (S, ...), checkpoint i ≥ 1 from a[:, i - 1]
        head = [a0[:S, None]] if first == 0 else []
        return np.concatenate([*head, a[:S, max(first, 1) - 1 : last]], axis=1)

    metrics = jax.tree.map(take, ev0, history["evs"])
    nan = np.full((S,), np.nan, np.float32)
    losses = take(nan, history["losses"])
    steps = np.arange(first, last + 1, dtype=np.int32) * s.eval_every
    params = jax.tree.map(take, params0, history["ps"]) if s.checkpoints else None
    return TrainOutput(
        jnp.asarray(np.broadcast_to(steps, (S, len(steps)))),
        jax.tree.map(jnp.asarray, metrics),
        jnp.asarray(losses),
        jnp.asarray(np.asarray(state.diverged_step)[:S]),
        None if params is None else jax.tree.map(jnp.asarray, params),
    )


def to_records(
    out: TrainOutput,
    spec: TrainSpec,
    coords: dict | None = None,
    seeds: Sequence[int] | None = None,
) -> list[dict]:
    """Flatten a (seed-batched) TrainOutput into metrics.jsonl records (the contract in
    covsim.results).

    N-keyed mappings (cov, cov_lo, cov_hi, pass_at) keep numeric keys; `covsim.results`
    writes them as text without losing digits."""
    o = jax.tree.map(np.asarray, out)
    batched = o.step.ndim == 2
    n_seeds = o.step.shape[0] if batched else 1
    seeds = list(seeds) if seeds is not None else list(range(n_seeds))
    recs = []
    for si in range(n_seeds):
        pick = (lambda a, si=si: a[si]) if batched else (lambda a: a)
        m = jax.tree.map(pick, o.metrics)
        steps, losses, dv = pick(o.step), pick(o.train_loss), int(pick(o.diverged_step))
        for e, step in enumerate(steps):
            recs.append(
                {
                    **(coords or {}),
                    "seed": int(seeds[si]),
                    "step": int(step),
                    "kl": float(m.kl[e]),
                    "kl_se": float(m.kl_se[e]),
                    "kl_tokens": float(m.kl_tokens[e]),
                    "ce": float(m.ce[e]),
                    "cov": {N: float(v) for N, v in zip(spec.Ns, m.cov[e], strict=True)},
                    "cov_lo": {N: float(v) for N, v in zip(spec.Ns, m.cov_lo[e], strict=True)},
                    "cov_hi": {N: float(v) for N, v in zip(spec.Ns, m.cov_hi[e], strict=True)},
                    "pass_at": {
                        N: float(v) for N, v in zip(spec.pass_at, m.pass_at[e], strict=True)
                    },
                    "train_loss": float(losses[e]),
                    "pos_ce": [float(v) for v in m.pos_ce[e]],
                    "pos_kl": [float(v) for v in m.pos_kl[e]],
                    "diverged_step": dv,
                }
            )
    return recs
