"""Where a command's time goes to compiling, program by program, with a cold cache.

    python benchmarks/compile_accounting.py [COVSIM ARGS ...]
    python benchmarks/compile_accounting.py --naive [NAIVE ARGS ...]

Runs `covsim COVSIM ARGS` (default: run_all.py's horizon sweep, `-q sweep
experiments/horizon.toml` with its workload and a temporary --out) in this process, with a
fresh, empty COVSIM_CACHE_DIR, and prints one JSON object: the command's wall seconds, and
for each program JAX compiled (by name: covsim's trainer programs are `init_seeds`,
`train_segment`, `evaluate_checkpoint` and `class_log_ratios`; `jit(exp)` and the like are
eager operations, each compiled once per shape) the seconds and count of its tracing,
lowering to StableHLO and XLA compilation, from `jax.monitoring`'s duration events.
With --naive it accounts the baseline, `benchmarks/naive_horizon.py NAIVE ARGS` (default:
the same workload), the same way, so that the two compile totals can be set side by side.
JAX_COMPILATION_CACHE_DIR is ignored (it would make the run warm).

The devices are the CLI's (one per core): nothing here starts JAX's backends before covsim.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import runpy
import shutil
import sys
import tempfile
import time
from pathlib import Path

#: jax.monitoring duration events -> the phase they time
PHASES = {
    "/jax/core/compile/jaxpr_trace_duration": "trace",
    "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower",
    "/jax/core/compile/backend_compile_duration": "compile",
}


def _accounted(run) -> dict:
    """{"wall": s, "programs": {name: {phase: [seconds, count]}}} of `run()` in this process
    (its stdout goes to stderr: stdout carries the JSON only); `run` returns an exit code."""
    # a cache directory given to JAX itself would make the run warm (the CLI then keeps it)
    os.environ.pop("JAX_COMPILATION_CACHE_DIR", None)
    import jax.monitoring

    programs: dict = collections.defaultdict(lambda: {p: [0.0, 0] for p in PHASES.values()})

    def listen(event: str, seconds: float, **kw) -> None:
        if event in PHASES:  # tracing names a program f, lowering and compiling jit(f)
            name = kw.get("fun_name", "?").removeprefix("jit(").removesuffix(")")
            row = programs[name][PHASES[event]]
            row[0] += seconds
            row[1] += 1

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):
            rc = run()
        wall = time.perf_counter() - t0
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    if rc:
        raise SystemExit(f"the accounted command exited with {rc}")
    return {"wall": wall, "programs": dict(programs)}


def account(args: list[str]) -> dict:
    """`_accounted` of `covsim args`, cold (a fresh COVSIM_CACHE_DIR, removed afterwards)."""
    from covsim.cli import main

    cache = tempfile.mkdtemp()
    old = os.environ.get("COVSIM_CACHE_DIR")
    os.environ["COVSIM_CACHE_DIR"] = cache
    try:
        return _accounted(lambda: main(args))
    finally:
        shutil.rmtree(cache, ignore_errors=True)
        if old is None:
            os.environ.pop("COVSIM_CACHE_DIR", None)
        else:
            os.environ["COVSIM_CACHE_DIR"] = old


def account_naive(args: list[str]) -> dict:
    """`_accounted` of `benchmarks/naive_horizon.py args` (it keeps no compile cache)."""
    script = Path(__file__).resolve().with_name("naive_horizon.py")

    def run() -> int:
        argv = sys.argv
        sys.argv = [str(script), *args]
        try:
            runpy.run_path(str(script), run_name="__main__")
        finally:
            sys.argv = argv
        return 0

    return _accounted(run)


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from run_all import COVSIM, ROOT

    args = sys.argv[1:]
    if args[:1] == ["--naive"]:  # the script finds its files from its own path
        print(json.dumps(account_naive(args[1:])))
        return
    out = None
    if not args:  # run_all.py's horizon sweep, written to a temporary directory
        out = tempfile.mkdtemp()
        args = [*COVSIM[1:], "--out", f"{out}/o"]
        os.chdir(ROOT)
    try:
        print(json.dumps(account(args)))
    finally:
        if out is not None:
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
