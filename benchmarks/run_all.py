"""covsim against the loop a researcher writes, in one command: writes benchmarks/RESULTS.md.

    python benchmarks/run_all.py [--repeats 5] [--out benchmarks/RESULTS.md]

Rows (each the median of `--repeats` runs, with min–max):

* peak: a jitted 2048×2048 float32 matmul, GFLOP/s, measured here (never a constant);
* horizon sweep, end to end as a user waits for it (process start, imports, compilation):
  the naive loop (benchmarks/naive_horizon.py) against
  `covsim sweep experiments/horizon.toml` with the same workload, with a cold compile cache
  (a fresh COVSIM_CACHE_DIR) and a warm one; the runs alternate so load drifts hit both;
* steady-state step: 1000 steps of covsim's trainer (its divergence flag included) against a
  bare `lax.scan` of the same update on the same data, compiled, one seed, H = 16.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORKLOAD = ["--set", "sweep.seeds=4", "--set", "train.steps=1000", "--set",
            "train.batch_size=256", "--set", "train.eval_every=1000", "--set",
            "train.eval_samples=20000", "--set", "optim.lr=0.05"]
COVSIM = [str(Path(sys.executable).with_name("covsim")), "-q", "sweep",
          "experiments/horizon.toml", *WORKLOAD]
NAIVE = [sys.executable, "benchmarks/naive_horizon.py"]


def wall(cmd: list[str], env: dict | None = None) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True)
    return time.perf_counter() - t0


def matmul_peak(repeats: int) -> list[float]:
    import jax
    import jax.numpy as jnp

    n = 2048
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(5):
            f(a).block_until_ready()
        out.append(5 * 2 * n**3 / (time.perf_counter() - t0) / 1e9)
    return out


def horizon(repeats: int) -> dict[str, list[float]]:
    rows = {"naive": [], "cold": [], "warm": []}
    for _ in range(repeats):
        cache, runs = tempfile.mkdtemp(), tempfile.mkdtemp()
        env = {**os.environ, "COVSIM_CACHE_DIR": cache}
        try:
            rows["naive"].append(wall(NAIVE))
            rows["cold"].append(wall([*COVSIM, "--out", f"{runs}/a"], env))
            rows["warm"].append(wall([*COVSIM, "--out", f"{runs}/b"], env))
        finally:
            shutil.rmtree(cache, ignore_errors=True)
            shutil.rmtree(runs, ignore_errors=True)
    return rows


def steady_state(repeats: int) -> dict[str, list[float]]:
    import jax
    import jax.numpy as jnp
    import optax

    from covsim.config import load_config
    from covsim.experiment import build_optimizer, build_task, train_spec
    from covsim.runners.tabular import tabular_model_fn
    from covsim.train import make_train

    cfg = load_config(ROOT / "experiments" / "horizon.toml").with_values(
        {"train.steps": 1000, "train.batch_size": 256, "train.eval_every": 1000,
         "train.eval_samples": 20000, "optim.lr": 0.05, "sweep.axes": {}, "task.H": 16})
    task, spec = build_task(cfg), train_spec(cfg)
    tr = make_train(task, tabular_model_fn(cfg, task), build_optimizer(cfg, task), spec)
    state, data, _ = jax.jit(tr.init)(jax.random.key(0))
    X, Y, idx = data

    def bare(p, o):
        def body(c, t):
            p, o = c
            g = jax.grad(tr.loss)(p, X[idx[t]], Y[idx[t]])
            u, o = tr.opt.update(g, o, p)
            return (optax.apply_updates(p, u), o), None
        return jax.lax.scan(body, (p, o), jnp.arange(1000))[0]

    ours = jax.jit(lambda s: jax.lax.scan(lambda s, _: tr.step(data, s), s, None, length=1000)[0])
    bare = jax.jit(bare)
    jax.block_until_ready((ours(state), bare(state.params, state.opt_state)))
    rows = {"covsim": [], "bare": []}
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(ours(state))
        rows["covsim"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        jax.block_until_ready(bare(state.params, state.opt_state))
        rows["bare"].append(time.perf_counter() - t0)
    return rows


def fmt(xs: list[float], unit: str = "s") -> str:
    return f"{statistics.median(xs):.2f} {unit} ({min(xs):.2f}–{max(xs):.2f})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "RESULTS.md"))
    a = p.parse_args()
    import jax

    peak = matmul_peak(a.repeats)
    st = steady_state(a.repeats)
    hz = horizon(a.repeats)
    med = {k: statistics.median(v) for k, v in hz.items()}
    step_ratio = statistics.median(st["covsim"]) / statistics.median(st["bare"])
    machine = (f"{platform.machine()}, {os.cpu_count()} cores visible, "
               f"{jax.devices()[0].device_kind}, jax {jax.__version__}, Python "
               f"{platform.python_version()}")
    lines = [
        "# Benchmarks", "",
        f"Written by `python benchmarks/run_all.py --repeats {a.repeats}` on "
        f"{time.strftime('%Y-%m-%d')}; machine: {machine}. Each row: median of "
        f"{a.repeats} runs (min–max). These machines are shared and noisy.", "",
        "| row | measured | ratio |", "|---|---|---|",
        f"| matmul peak (jitted 2048² float32) | {fmt(peak, 'GFLOP/s')} | — |",
        f"| horizon sweep, naive loop | {fmt(hz['naive'])} | 1 |",
        f"| horizon sweep, covsim, cold compile cache | {fmt(hz['cold'])} | "
        f"{med['naive'] / med['cold']:.2f}× faster (target ≥ 1.5×) |",
        f"| horizon sweep, covsim, warm compile cache | {fmt(hz['warm'])} | "
        f"{med['naive'] / med['warm']:.2f}× faster (target ≥ 2×) |",
        f"| 1000 steps, covsim trainer (H = 16, 1 seed) | {fmt(st['covsim'])} | "
        f"{step_ratio:.2f}× the bare scan (target ≤ 1.15×) |",
        f"| 1000 steps, bare `lax.scan` of the same update | {fmt(st['bare'])} | 1 |", "",
        "Workload (the issue's): experiments/horizon.toml with "
        + " ".join(WORKLOAD[1::2]) + ", H ∈ {8, 16, 32, 64}; the naive loop is "
        "`benchmarks/naive_horizon.py` (same task, learner, optimizer, data size and final "
        "evaluation).", "",
    ]
    Path(a.out).write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
