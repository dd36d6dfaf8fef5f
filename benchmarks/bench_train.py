"""covsim's trainer against a straightforward per-seed loop, in one command.

    python benchmarks/bench_train.py [--seeds 16] [--steps 500] [--repeats 3] [--transformer]

The experiment (issue 3): AR-linear task, well-specified LogLinear learner, Adam, a fixed
dataset, 16 seeds, H ∈ {8, 16, 32, 64}, the same steps and the same evaluation (KL, Cov_N on
a fixed eval set every `eval_every` steps).

* covsim:   `run_seeds(make_train(...), seeds)`: the whole run, all seeds vmapped, one jit per H.
* baseline: what a researcher would write: for each H, for each seed, a Python loop over
  steps calling a jitted per-step update (its batch gathered on the device from host-drawn
  epoch permutations sent once, so a step is one dispatch), and a jitted evaluation every
  `eval_every` steps.

Both are timed end to end (compilation included, as a user experiences it); medians over
repeats, with the JAX compilation cache cleared between repeats. With --transformer it also
reports the transformer trainer's achieved GFLOP/s as a fraction of the float32 matmul peak
measured in the same command (benchmarks/peak.py).
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from peak import median_peak

from covsim.evaluate import evaluate, make_eval_set
from covsim.models import LogLinear, Transformer
from covsim.tasks.base import gather_tokens
from covsim.tasks.linear import AutoregressiveLinear
from covsim.tasks.markov import MarkovChain
from covsim.train import TrainSpec, make_train, run_seeds


def task_for(H: int) -> AutoregressiveLinear:
    return AutoregressiveLinear.random(jax.random.key(0), V=8, H=H, d=16, X=4, B=2.0)


def covsim_run(H: int, spec: TrainSpec, seeds: list[int]) -> np.ndarray:
    task = task_for(H)
    mf = lambda k: LogLinear(task, rngs=nnx.Rngs(k))
    out = run_seeds(make_train(task, mf, optax.adam(0.05), spec), seeds)
    return np.asarray(out.metrics.kl)


def baseline_run(H: int, spec: TrainSpec, seeds: list[int]) -> np.ndarray:
    """The per-seed loop: same data, init, optimizer and evaluation as covsim's trainer."""
    task = task_for(H)
    model = LogLinear(task, rngs=nnx.Rngs(0))
    graphdef, _, rest = nnx.split(model, nnx.Param, ...)
    tx = optax.adam(0.05)
    Ns = jnp.asarray(spec.Ns, jnp.float32)

    def loss_fn(params, x, y):
        q = nnx.merge(graphdef, params, rest)(x, y)
        return jnp.mean(-jnp.sum(gather_tokens(q, y), axis=-1))

    @jax.jit
    def step(params, opt_state, X, Y, batches, t):
        idx = batches[t]
        loss, g = jax.value_and_grad(loss_fn)(params, X[idx], Y[idx])
        upd, opt_state = tx.update(g, opt_state, params)
        return optax.apply_updates(params, upd), opt_state, loss

    @jax.jit
    def score(params, eval_set):
        return evaluate(task, nnx.merge(graphdef, params, rest), eval_set, Ns=Ns).kl

    sample = jax.jit(task.sample, static_argnums=1)
    eval_set_of = jax.jit(lambda k: make_eval_set(task, k, spec.eval_samples))
    kls = []
    for s in seeds:
        k_init, k_data, k_eval, _ = jax.random.split(jax.random.key(s), 4)
        params = nnx.state(LogLinear(task, rngs=nnx.Rngs(k_init)), nnx.Param)
        opt_state = tx.init(params)
        k_sample, k_perm = jax.random.split(k_data)
        X, Y = sample(k_sample, spec.n_train)
        rng = np.random.default_rng(s)  # shuffled epochs, drawn on the host, sent once
        eval_set = eval_set_of(k_eval)
        per_epoch = spec.n_train // spec.batch_size
        n_epochs = -(-spec.steps // per_epoch)
        perm = np.stack([rng.permutation(spec.n_train)[: per_epoch * spec.batch_size]
                         for _ in range(n_epochs)]).reshape(-1, spec.batch_size)
        batches = jnp.asarray(perm[: spec.steps], jnp.int32)
        kl = [float(score(params, eval_set))]
        for t in range(spec.steps):
            params, opt_state, _ = step(params, opt_state, X, Y, batches, t)
            if (t + 1) % spec.eval_every == 0:
                kl.append(float(score(params, eval_set)))
        kls.append(kl)
    return np.asarray(kls)


def timed(fn, *args) -> tuple[float, np.ndarray]:
    jax.clear_caches()
    t0 = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t0, out


def bench_linear(args) -> None:
    seeds = list(range(args.seeds))
    Hs = (8, 16, 32, 64)
    spec = TrainSpec(
        steps=args.steps, batch_size=32, n_train=1024, eval_every=args.steps // 5,
        eval_samples=4096, Ns=(2.0, 16.0),
    )
    rows = []
    for _ in range(args.repeats):
        tc = sum(timed(covsim_run, H, spec, seeds)[0] for H in Hs)
        tb = sum(timed(baseline_run, H, spec, seeds)[0] for H in Hs)
        rows.append((tc, tb))
        print(f"  repeat: covsim {tc:.1f} s, baseline {tb:.1f} s, ratio {tb / tc:.1f}x", flush=True)
    tc = statistics.median(r[0] for r in rows)
    tb = statistics.median(r[1] for r in rows)
    tokens = len(seeds) * args.steps * spec.batch_size * sum(Hs)
    # sanity: both reach a similar final KL (they differ in batch order, not in the method)
    kc = covsim_run(16, spec, seeds)[:, -1]
    kb = baseline_run(16, spec, seeds)[:, -1]
    print(f"AR-linear, {len(seeds)} seeds, H in {Hs}, {args.steps} steps, batch 32, "
          f"eval every {spec.eval_every} on {spec.eval_samples}:")
    print(f"  covsim   median {tc:7.2f} s   {tokens / tc:12,.0f} train tokens/s")
    print(f"  baseline median {tb:7.2f} s   {tokens / tb:12,.0f} train tokens/s")
    print(f"  speed-up (baseline / covsim): {tb / tc:.2f}x")
    print(f"  final KL at H=16, median over seeds: covsim {np.median(kc):.4f}, "
          f"baseline {np.median(kb):.4f}")


def bench_seed_modes(args) -> None:
    """vmap over seeds vs a loop over seeds with the same compiled run (compile excluded):
    which pays depends on whether a step's arrays stay in cache."""
    seeds = list(range(args.seeds))
    spec = TrainSpec(steps=args.steps, batch_size=32, n_train=1024,
                     eval_every=args.steps // 5, eval_samples=4096, Ns=(2.0, 16.0))
    for H in (8, 64):
        task = task_for(H)
        tr = make_train(task, lambda k, t=task: LogLinear(t, rngs=nnx.Rngs(k)),
                        optax.adam(0.05), spec)
        keys = jnp.stack([jax.random.key(s) for s in seeds])
        fv, fl = jax.jit(jax.vmap(tr)), jax.jit(tr)
        jax.block_until_ready(fv(keys))
        jax.block_until_ready(fl(keys[0]))
        tv, tl = [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(fv(keys))
            tv.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            for k in keys:
                jax.block_until_ready(fl(k))
            tl.append(time.perf_counter() - t0)
        v, lo = statistics.median(tv), statistics.median(tl)
        print(f"seed modes, AR-linear H={H}, {len(seeds)} seeds: vmap {v:.2f} s, loop {lo:.2f} s, "
              f"vmap speed-up {lo / v:.2f}x (compile excluded)")


def bench_transformer(args) -> None:
    task = MarkovChain.random(jax.random.key(0), V=16, H=64, order=1)
    cfg = dict(layers=4, heads=4, width=256)
    mf = lambda k: Transformer(task.V, task.H, task.P, max(task.prompt_vocab, 1),
                               rngs=nnx.Rngs(k), **cfg)
    steps, batch = 40, 32
    spec = TrainSpec(steps=steps, batch_size=batch, eval_every=steps, eval_samples=64)
    f = jax.jit(make_train(task, mf, optax.adam(1e-3), spec))
    jax.block_until_ready(f(jax.random.key(0)))  # compile
    times = []
    for r in range(args.repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(f(jax.random.key(r + 1)))
        times.append(time.perf_counter() - t0)
    t = statistics.median(times)
    peak = median_peak(5)
    m = mf(jax.random.key(0))
    T = task.P + task.H
    flops = m.flops_per_token() * T * batch * steps
    print(f"transformer {cfg}, T={T}, batch {batch}, {steps} steps: median {t:.2f} s, "
          f"{flops / t / 1e9:.1f} GFLOP/s = {100 * flops / t / 1e9 / peak:.0f}% of the "
          f"{peak:.0f} GFLOP/s float32 matmul peak measured now (training FLOPs; eval excluded "
          f"from the count)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=16)
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--transformer", action="store_true", help="also report transformer GFLOP/s")
    p.add_argument("--skip-linear", action="store_true")
    p.add_argument("--seed-modes", action="store_true", help="also compare vmap vs loop")
    args = p.parse_args()
    if not args.skip_linear:
        bench_linear(args)
    if args.seed_modes:
        bench_seed_modes(args)
    if args.transformer:
        bench_transformer(args)


if __name__ == "__main__":
    main()
