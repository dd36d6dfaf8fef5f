"""Time of the paper-scale graph experiments (Figs. 1 and 2), from a measured short run.

    python benchmarks/bench_graph.py [--experiment fig2] [--profile full] [--steps 3]
                                     [--precision float32|bf16] [--microbatch 32]
                                     [--only task.L=8]
                                     [--assume-tflops 100]

For each sweep point of the experiment's profile it builds the exact task, model and
optimizer the profile trains (covsim.experiment, same code path as `covsim run`), times
`--steps` optimizer steps after compilation (median per step) on whatever device JAX picks,
and counts the training FLOPs per step (`covsim.models.flops_per_token`). It prints:

* the device's matmul peak (a jitted 2048² matmul in the same precision, measured in this
  command: benchmarks/peak.py), the measured seconds per step, the achieved GFLOP/s and its
  fraction of that peak, and the projected wall time of the whole profile here (steps ×
  seeds × points, training steps only);
* the total training FLOPs of the profile and the time they take at an *assumed* sustained
  throughput `--assume-tflops` (an accelerator estimate when none is at hand: the FLOP count
  is exact, the throughput is the assumption; evaluation adds a few percent).

On a GPU the first line is the measurement itself.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import jax
from peak import median_peak

from covsim.config import load_config
from covsim.experiment import build_model_fn, build_optimizer, build_task
from covsim.models import Transformer
from covsim.runners.train import pretrain_config
from covsim.sweep import cell_config, expand_grid
from covsim.train import TrainSpec, make_train

ROOT = Path(__file__).resolve().parents[1]


def step_times(task, model_fn, tx, batch: int, steps: int,
               microbatch: int | None = None) -> tuple[list[float], float]:
    """(seconds of each of `steps` optimizer steps after compilation, training FLOPs per
    step)."""
    spec = TrainSpec(steps=1, batch_size=batch, microbatch=microbatch, n_train=2 * batch,
                     eval_every=1, eval_samples=batch)
    tr = make_train(task, model_fn, tx, spec)
    state, data, _ = jax.jit(tr.init)(jax.random.key(0))
    step = jax.jit(lambda st: tr.step(data, st))
    state, loss = step(state)  # compile
    jax.block_until_ready(loss)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        state, loss = step(state)
        jax.block_until_ready(loss)
        times.append(time.perf_counter() - t0)
    model = model_fn(jax.random.key(0))
    if not isinstance(model, Transformer):
        raise SystemExit("bench_graph: the experiment's model must be a transformer")
    return times, model.flops_per_token() * (task.P + task.H) * batch


def time_steps(*args, **kw) -> tuple[float, float]:
    """(median seconds per optimizer step after compilation, training FLOPs per step)."""
    times, flops = step_times(*args, **kw)
    return statistics.median(times), flops


def stages(cfg):
    """(label, config, optimizer steps) of each training stage of a cell's config."""
    out = []
    if cfg.pretrain is not None:
        p = pretrain_config(cfg)
        out.append(("pretrain", p, p.train.n_steps))
    out.append(("main", cfg, cfg.train.n_steps))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--experiment", default="fig2")
    ap.add_argument("--profile", default="full")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per sweep point")
    ap.add_argument("--precision", choices=["float32", "bf16"], default=None,
                    help="override model.precision (default: the profile's)")
    ap.add_argument("--microbatch", type=int, default=None,
                    help="override train.microbatch (gradient accumulation slices)")
    ap.add_argument("--only", default=None, metavar="PATH=VALUE",
                    help="time only the sweep points with this coordinate, e.g. task.L=8")
    ap.add_argument("--assume-tflops", type=float, default=100.0,
                    help="sustained accelerator throughput assumed for the estimate")
    args = ap.parse_args()
    sets = [] if args.precision is None else [f"model.precision={args.precision!r}"]
    sets += [] if args.microbatch is None else [f"train.microbatch={args.microbatch}"]
    cfg = load_config(ROOT / "experiments" / f"{args.experiment}.toml", args.profile, sets)
    precision = cfg.model.params.get("precision", "float32")
    n_seeds = len(cfg.sweep.seeds)
    peak = median_peak(5, precision)
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}); "
          f"{args.experiment} --profile {args.profile}: {n_seeds} seeds, precision {precision}; "
          f"matmul peak measured now: {peak:.0f} GFLOP/s")
    total_here, total_flops = 0.0, 0.0
    for cell in expand_grid(cfg.sweep.axes, [0], vmap_seeds=True):
        if args.only and args.only not in {f"{k}={v}" for k, v in cell.coords.items()}:
            continue
        c = cell_config(cfg, cell)
        for label, sc, n_steps in stages(c):
            task = build_task(sc)
            sec, flops = time_steps(task, build_model_fn(sc, task), build_optimizer(sc, task),
                                    sc.train.batch_size, args.steps, sc.train.microbatch)
            here = sec * n_steps * n_seeds
            run_flops = flops * n_steps * n_seeds
            total_here += here
            total_flops += run_flops
            point = ", ".join(f"{k}={v}" for k, v in cell.coords.items() if k != "seed")
            print(f"  {point or 'single point'} [{label}] P+H={task.P + task.H}: "
                  f"{sec * 1e3:.1f} ms/step, {flops / sec / 1e9:.1f} GFLOP/s here "
                  f"({100 * flops / sec / 1e9 / peak:.0f}% of the measured peak); "
                  f"{n_steps} steps × {n_seeds} seeds = {here / 3600:.2f} h here, "
                  f"{run_flops / 1e15:.1f} PFLOP")
    at = total_flops / (args.assume_tflops * 1e12)
    print(f"profile total: {total_here / 3600:.2f} h on this device (training steps only); "
          f"{total_flops / 1e15:.1f} PFLOP = {at / 3600:.2f} h at an assumed "
          f"{args.assume_tflops:g} TFLOP/s")


if __name__ == "__main__":
    main()
