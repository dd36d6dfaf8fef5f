"""covsim against the loop a researcher writes, in one command: writes benchmarks/RESULTS.md.

    python benchmarks/run_all.py [--repeats 5] [--out benchmarks/RESULTS.md]

Rows (each the median of `--repeats` runs, with min–max):

* peak: a jitted 2048×2048 float32 matmul, GFLOP/s, measured here (never a constant);
* horizon sweep, end to end as a user waits for it (process start, imports, compilation):
  the naive loop (benchmarks/naive_horizon.py; for reference also with its table held flat,
  covsim's layout) against
  `covsim sweep experiments/horizon.toml` with the same workload, with a cold compile cache
  (a fresh COVSIM_CACHE_DIR) and a warm one; the runs alternate so load drifts hit both;
* steady-state step: 1000 steps of covsim's trainer (`Trainer.train_steps`: its per-step
  loss check and per-segment parameter check and freeze included) against a
  bare `lax.scan` of the same update on the same data, compiled, one seed, H = 16, and (for
  reference) that scan also returning each step's loss;
* executors: the same workload as 16 one-seed cells (sweep.vmap_seeds = false), in process
  against `--executor process --workers 2`, each with a cold compile cache, alternating;
* compile profile (text under the table, when the cold row misses its target): seconds to
  compile each program of one horizon cell and each class's sampler, two cells compiled
  serially against in two threads, and the XLA compile seconds of a whole cold sweep program
  by program (benchmarks/compile_accounting.py), next to the naive loop's (its --naive);
* transformer: one optimizer step of experiments/fig2.toml's full profile at L = 8 (the
  paper's width: 6 layers, width 384, batch 128, P + H = 160), median over `--repeats` steps
  after compilation, as a fraction of the matmul peak measured here in the same precision:
  float32 on the whole batch, float32 with train.microbatch = 32, and bf16 with 32.
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

from peak import matmul_gflops

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


def horizon(repeats: int) -> dict[str, list[float]]:
    rows = {"naive": [], "naive, flat table": [], "cold": [], "warm": []}
    for _ in range(repeats):
        cache, runs = tempfile.mkdtemp(), tempfile.mkdtemp()
        env = {**os.environ, "COVSIM_CACHE_DIR": cache}
        try:
            rows["naive"].append(wall(NAIVE))
            rows["naive, flat table"].append(wall([*NAIVE, "--flat-table"]))
            rows["cold"].append(wall([*COVSIM, "--out", f"{runs}/a"], env))
            rows["warm"].append(wall([*COVSIM, "--out", f"{runs}/b"], env))
        finally:
            shutil.rmtree(cache, ignore_errors=True)
            shutil.rmtree(runs, ignore_errors=True)
    return rows


def horizon_cell(H: int):
    """One cell of the horizon sweep's workload (WORKLOAD's values) at response length H."""
    from covsim.config import load_config

    values = dict(v.split("=", 1) for v in WORKLOAD[1::2])
    return load_config(ROOT / "experiments" / "horizon.toml",
                       overrides=[*(f"{k}={v}" for k, v in values.items()),
                                  "sweep.axes={}", f"task.H={H}"])


def executors(repeats: int) -> dict[str, list[float]]:
    cells = [*COVSIM, "--set", "sweep.vmap_seeds=false"]
    rows = {"local": [], "process": []}
    for _ in range(repeats):
        for name, extra in (("local", []), ("process", ["--executor", "process", "--workers",
                                                        "2"])):
            cache, runs = tempfile.mkdtemp(), tempfile.mkdtemp()
            try:
                env = {**os.environ, "COVSIM_CACHE_DIR": cache}
                rows[name].append(wall([*cells, *extra, "--out", f"{runs}/o"], env))
            finally:
                shutil.rmtree(cache, ignore_errors=True)
                shutil.rmtree(runs, ignore_errors=True)
    return rows


def transformer(repeats: int) -> dict[str, tuple[list[float], float]]:
    """{variant: (seconds per step of each timed step, FLOPs per step)} at fig2 full, L = 8."""
    from bench_graph import step_times

    from covsim.config import load_config
    from covsim.experiment import build_model_fn, build_optimizer, build_task

    out = {}
    for name, sets in (("float32", []), ("float32, microbatch 32", ["train.microbatch=32"]),
                       ("bf16, microbatch 32", ["train.microbatch=32",
                                                "model.precision='bf16'"])):
        cfg = load_config(ROOT / "experiments" / "fig2.toml", "full",
                          ["sweep.axes={}", "task.L=8", *sets])
        task = build_task(cfg)
        out[name] = step_times(task, build_model_fn(cfg, task), build_optimizer(cfg, task),
                               cfg.train.batch_size, repeats, cfg.train.microbatch)
    return out


def steady_state(repeats: int) -> dict[str, list[float]]:
    import jax
    import jax.numpy as jnp
    import optax

    from covsim.experiment import build_optimizer, build_task, train_spec
    from covsim.runners.tabular import tabular_model_fn
    from covsim.train import make_train

    cfg = horizon_cell(16)
    task, spec = build_task(cfg), train_spec(cfg)
    tr = make_train(task, tabular_model_fn(cfg, task), build_optimizer(cfg, task), spec)
    state, data, _ = jax.jit(tr.init)(jax.random.key(0))
    X, Y, idx = data

    def scan(with_loss: bool):
        def run(p, o):
            def body(c, t):
                p, o = c
                x, y = X[idx[t]], Y[idx[t]]
                if with_loss:
                    loss, g = jax.value_and_grad(tr.loss)(p, x, y)
                else:
                    loss, g = None, jax.grad(tr.loss)(p, x, y)
                u, o = tr.opt.update(g, o, p)
                return (optax.apply_updates(p, u), o), loss
            return jax.lax.scan(body, (p, o), jnp.arange(1000))
        return jax.jit(run)

    programs = {  # eval_every = 1000 steps
        "covsim": (jax.jit(lambda s: tr.train_steps(s, data)), (state,)),
        "bare": (scan(False), (state.params, state.opt_state)),
        # what covsim adds that costs: each step's loss value (train_loss, divergence)
        "bare, with loss": (scan(True), (state.params, state.opt_state)),
    }
    for f, args in programs.values():
        jax.block_until_ready(f(*args))
    rows = {k: [] for k in programs}
    for _ in range(repeats):
        for k, (f, args) in programs.items():
            t0 = time.perf_counter()
            jax.block_until_ready(f(*args))
            rows[k].append(time.perf_counter() - t0)
    return rows


SAMPLER = "sampler of class"


def compile_profile(repeats: int) -> dict[str, list[float]]:
    """Where a cold horizon cell's compilation goes: seconds to lower and compile each of the
    programs a cell compiles (H = 16, 4 seeds, on this process's one device; the CLI shards
    them over one device per core, which compiles about as fast), each repeat on a fresh
    trainer, and each class's sampler on its own (a part of init's program and of the
    per-class summary's); and two cells' programs compiled one after the other against in
    two threads at once (does a second core help XLA?)."""
    import threading

    import jax
    import jax.numpy as jnp
    import numpy as np

    from covsim.experiment import build_optimizer, build_task, train_spec
    from covsim.runners.tabular import tabular_model_fn
    from covsim.runners.train import _class_program
    from covsim.train import _programs, make_train

    keys = jnp.stack([jax.random.key(k) for k in range(4)])

    def cell(H: int, times: dict | None = None) -> None:
        cfg = horizon_cell(H)
        task, spec = build_task(cfg), train_spec(cfg)
        tr = make_train(task, tabular_model_fn(cfg, task), build_optimizer(cfg, task), spec)
        init, train, evaluate = _programs(tr, "loop", tuple(jax.local_devices()), False)

        def timed(name, lower):
            t0 = time.perf_counter()
            out = lower().compile()
            if times is not None:
                times.setdefault(name, []).append(time.perf_counter() - t0)
            return out

        state, data, eval_set = timed("init", lambda: init.lower(keys, None)).out_info
        timed("train", lambda: train.lower(state, data))
        timed("evaluate", lambda: evaluate.lower(state, eval_set))
        final = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), state.params)
        mix = task.replace(weights=np.eye(len(task.components), dtype=np.float32)[0])
        timed("per-class summary", lambda: _class_program(tr, spec.eval_samples).lower(
            mix, jax.random.key(0), final))
        n = spec.n_train + spec.eval_samples  # init's one draw
        for c, comp in enumerate(task.components):  # parts of init's (and per-class's) program
            timed(f"{SAMPLER} {c}", lambda comp=comp: jax.jit(
                lambda k: comp.sample(k, n)).lower(jax.random.key(0)))

    cell(8)  # first-use costs (task tables, small programs) out of the rows
    rows: dict[str, list[float]] = {}
    for _ in range(repeats):
        cell(16, rows)
    rows["two cells, one after the other"], rows["two cells, two threads"] = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        cell(32)
        cell(64)
        rows["two cells, one after the other"].append(time.perf_counter() - t0)
        threads = [threading.Thread(target=cell, args=(H,)) for H in (32, 64)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        rows["two cells, two threads"].append(time.perf_counter() - t0)
    return rows


TRAINER_PROGRAMS = ("init_seeds", "train_segment", "evaluate_checkpoint", "class_log_ratios")


def accounting(repeats: int) -> dict[str, list[float]]:
    """XLA compile seconds of one cold horizon sweep run in process, program by program
    (benchmarks/compile_accounting.py, each repeat a fresh process): covsim's four trainer
    programs (summed over the cells; "<name> count" programs compiled), "other" (every other
    program: task construction, eager operations) and "other count", the "compile",
    "trace" and "lower" totals and the "wall"; and the naive loop's, accounted the same way
    in the same repeat ("naive compile", "naive count", "naive trace", "naive lower",
    "naive wall")."""
    import json

    def accounted(*args: str) -> dict:
        got = subprocess.run([sys.executable, "benchmarks/compile_accounting.py", *args],
                             cwd=ROOT, check=True, capture_output=True, text=True)
        return json.loads(got.stdout.strip().splitlines()[-1])

    rows: dict[str, list[float]] = {}
    for _ in range(repeats):
        d, naive = accounted(), accounted("--naive")
        progs = d["programs"]
        other = [v for k, v in progs.items() if k not in TRAINER_PROGRAMS]
        vals = {}
        for name in TRAINER_PROGRAMS:
            vals[name], vals[f"{name} count"] = progs.get(name, {}).get("compile", [0.0, 0])
        vals["other"] = sum(v["compile"][0] for v in other)
        vals["other count"] = sum(v["compile"][1] for v in other)
        for prefix, run in (("", d), ("naive ", naive)):
            for phase in ("compile", "trace", "lower"):
                vals[prefix + phase] = sum(v[phase][0] for v in run["programs"].values())
            vals[prefix + "wall"] = run["wall"]
        vals["naive count"] = sum(v["compile"][1] for v in naive["programs"].values())
        for k, v in vals.items():
            rows.setdefault(k, []).append(v)
    return rows


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo; else platform.processor()): peaks differ
    across hosts of the same size (the bf16 peak was 1802 GFLOP/s on one 2-core host and 118
    on another, whose CPU lacks AMX and avx512_bf16)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def fmt(xs: list[float], unit: str = "s") -> str:
    return f"{statistics.median(xs):.2f} {unit} ({min(xs):.2f}–{max(xs):.2f})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "RESULTS.md"))
    a = p.parse_args()
    import jax

    peak = matmul_gflops(a.repeats)
    peak16 = matmul_gflops(a.repeats, dtype="bf16")
    tf = transformer(a.repeats)
    st = steady_state(a.repeats)
    cp = compile_profile(a.repeats)
    acc = accounting(a.repeats)
    hz = horizon(a.repeats)
    ex = executors(a.repeats)
    med = {k: statistics.median(v) for k, v in hz.items()}
    ex_ratio = statistics.median(ex["local"]) / statistics.median(ex["process"])
    step_ratio = statistics.median(st["covsim"]) / statistics.median(st["bare"])
    loss_ratio = statistics.median(st["bare, with loss"]) / statistics.median(st["bare"])
    machine = (f"{platform.machine()} ({cpu_model()}), {os.cpu_count()} cores visible, "
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
        f"| horizon sweep, naive loop holding the table flat as covsim does | "
        f"{fmt(hz['naive, flat table'])} | "
        f"{med['naive'] / med['naive, flat table']:.2f}× faster (for reference) |",
        f"| horizon sweep, covsim, cold compile cache | {fmt(hz['cold'])} | "
        f"{med['naive'] / med['cold']:.2f}× faster (target ≥ 1.5×) |",
        f"| horizon sweep, covsim, warm compile cache | {fmt(hz['warm'])} | "
        f"{med['naive'] / med['warm']:.2f}× faster (target ≥ 2×) |",
        f"| 1000 steps, covsim trainer (H = 16, 1 seed) | {fmt(st['covsim'])} | "
        f"{step_ratio:.2f}× the bare scan (target ≤ 1.15×) |",
        f"| 1000 steps, bare `lax.scan` of the same update | {fmt(st['bare'])} | 1 |",
        f"| 1000 steps, the bare scan also returning each step's loss | "
        f"{fmt(st['bare, with loss'])} | {loss_ratio:.2f}× the bare scan (for reference) |",
        f"| 16 one-seed cells, in process | {fmt(ex['local'])} | 1 |",
        f"| 16 one-seed cells, `--executor process --workers 2` | {fmt(ex['process'])} | "
        f"{ex_ratio:.2f}× faster "
        "(target ≥ 1.5×) |",
        f"| matmul peak (jitted 2048² bf16, float32 accumulation) | {fmt(peak16, 'GFLOP/s')} "
        "| — |",
    ]
    for name, (times, flops) in tf.items():
        ref = statistics.median(peak16 if name.startswith("bf16") else peak)
        rates = [flops / t / 1e9 for t in times]
        lines.append(f"| fig2 full, L = 8, one step, {name} | {fmt(times)}, "
                     f"{fmt(rates, 'GFLOP/s')} | {100 * statistics.median(rates) / ref:.0f}% "
                     "of the peak in its precision (target ≥ 60%) |")
    lines += [
        "",
        "Workload: experiments/horizon.toml with "
        + " ".join(WORKLOAD[1::2]) + ", H ∈ {8, 16, 32, 64}; the naive loop is "
        "`benchmarks/naive_horizon.py` (same task, learner, optimizer, data size and final "
        "evaluation). Its table is a (prompt code, position, context, V) array, as one writes "
        "it; covsim's Tabular holds the same logits as one flat vector, because XLA's CPU "
        "loops run Adam's dense update over the 4-D array about 3× slower, and that update is "
        "most of a step. The reference row gives the naive loop that layout too: what is left "
        "between it and covsim is the loop itself (per-step dispatch, one seed at a time, "
        "recompiling per H).", "",
    ]
    if med["naive"] / med["cold"] < 1.5:
        per_cell = {k: statistics.median(v) for k, v in cp.items()
                    if not k.startswith(("two", SAMPLER))}
        samplers = [statistics.median(v) for k, v in cp.items() if k.startswith(SAMPLER)]
        am = {k: statistics.median(v) for k, v in acc.items()}
        spent = am["compile"] + am["trace"] + am["lower"]
        naive_spent = am["naive compile"] + am["naive trace"] + am["naive lower"]
        busy, naive_busy = am["wall"] - spent, am["naive wall"] - naive_spent
        budget = am["naive wall"] / 1.5 - busy  # in process, imports excluded on both sides
        from covsim.config import load_config

        n_cells = len(load_config(ROOT / "experiments" / "horizon.toml").sweep.axes["task.H"])
        one, two = (statistics.median(cp[k]) for k in ("two cells, one after the other",
                                                       "two cells, two threads"))
        lines += [
            f"Why a cold sweep is not 1.5× faster ({med['naive'] / med['cold']:.2f}×): each cell "
            "compiles four programs, and a new H is a new shape. Lowering and compiling them "
            "for one cell (H = 16, median of "
            f"{a.repeats}, measured in this command): "
            + ", ".join(f"{k} {v:.2f} s" for k, v in per_cell.items())
            + f", {sum(per_cell.values()):.1f} s in all, so about "
            f"{n_cells * sum(per_cell.values()):.0f} s of the {med['cold']:.0f} s cold sweep (the "
            f"warm cache saves {med['cold'] - med['warm']:.0f} s). Two cells' programs took "
            f"{one:.1f} s one after the other and {two:.1f} s in two threads at once "
            f"({one / two:.2f}× faster). Accounted program by program over a whole cold sweep "
            "run in process (`python benchmarks/compile_accounting.py`, jax.monitoring's "
            f"events, median of {a.repeats}): XLA compiled for {am['compile']:.1f} s of its "
            f"{am['wall']:.1f} s (tracing {am['trace']:.1f} s and lowering {am['lower']:.1f} s "
            "more): "
            + ", ".join(f"`{k}` {am[k]:.1f} s ({am[k + ' count']:.0f} programs)"
                        for k in TRAINER_PROGRAMS)
            + f", and {am['other count']:.0f} other programs (task construction, eager "
            f"operations) {am['other']:.1f} s. The naive loop, accounted the same way in "
            f"the same repeats (`--naive`), compiled {am['naive count']:.0f} programs for "
            f"{am['naive compile']:.1f} s of its {am['naive wall']:.1f} s (tracing "
            f"{am['naive trace']:.1f} s and lowering {am['naive lower']:.1f} s more): outside "
            f"tracing, lowering and compiling, covsim's run took {busy:.1f} s against the "
            f"naive loop's {naive_busy:.1f} s, so at 1.5× the naive loop's in-process wall "
            f"covsim could spend {budget:.1f} s tracing, lowering and compiling, against "
            f"{spent:.1f} s now and the naive loop's {naive_spent:.1f} s. "
            "Much of `init_seeds` is its "
            "sampler: the mixture draws from every class, and each class's sampler alone "
            "compiles in " + ", ".join(f"{v:.2f}" for v in samplers) + " s (H = 16); "
            "`class_log_ratios` compiles the same samplers again, and the naive loop draws "
            "with the same task sampler, compiled twice per H too, so samplers that compile "
            "faster would shorten both runs alike. "
            + ("XLA's compilation already uses much of the second core, and while a cell "
               "computes both are busy, so compiling the next cell in the background cannot "
               "hide it; what is left is compiling less (fewer or smaller programs per shape)."
               if one / two < 1.5 else
               "Compiling cells in parallel would hide much of it."), "",
        ]
    if step_ratio > 1.15:
        lines += [
            f"Why covsim's step is not within 1.15× of the bare scan ({step_ratio:.2f}×): covsim "
            "computes each step's loss value (its train_loss records and its per-step "
            "divergence check read it), which a gradient-only scan skips; the same scan "
            f"returning its losses takes {loss_ratio:.2f}× the bare one, and covsim's step, "
            "with its own machinery (the divergence flag, the per-segment check and freeze), "
            f"takes {step_ratio / loss_ratio:.2f}× that scan's.", "",
        ]
    if ex_ratio < 1.5:
        compile_s = med["cold"] - med["warm"]
        lines += [
            f"Why two process workers are not 1.5× faster ({ex_ratio:.2f}×): the cold sweep spends "
            f"about {compile_s:.0f} s of its {med['cold']:.0f} s compiling (cold minus warm "
            "cache, rows above), and each worker compiles the same programs (one per H) for "
            "itself; while it computes, the in-process run already keeps both cores busy "
            "(XLA's intra-op thread pool splits each one-seed step over both), so a second "
            "process adds no idle core to use.", "",
        ]
    Path(a.out).write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
