"""Where a covsim command's time goes to compiling, program by program, with a cold cache.

    python benchmarks/compile_accounting.py [COVSIM ARGS ...]

Runs `covsim COVSIM ARGS` (default: run_all.py's horizon sweep, `-q sweep
experiments/horizon.toml` with its workload and a temporary --out) in this process, with a
fresh, empty COVSIM_CACHE_DIR, and prints one JSON object: the command's wall seconds, and
for each program JAX compiled (by name: covsim's trainer programs are `init_seeds`,
`train_segment`, `evaluate_checkpoint` and `class_log_ratios`; `jit(exp)` and the like are
eager operations, each compiled once per shape) the seconds and count of its tracing,
lowering to StableHLO and XLA compilation, from `jax.monitoring`'s duration events.
JAX_COMPILATION_CACHE_DIR is ignored (it would make the run warm).

The devices are the CLI's (one per core): nothing here starts JAX's backends before covsim.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
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


def account(args: list[str]) -> dict:
    """{"wall": s, "programs": {name: {phase: [seconds, count]}}} of `covsim args` in process,
    cold (a fresh COVSIM_CACHE_DIR, removed afterwards)."""
    # a cache directory given to JAX itself would make the run warm (the CLI then keeps it)
    os.environ.pop("JAX_COMPILATION_CACHE_DIR", None)
    import jax.monitoring

    from covsim.cli import main

    programs: dict = collections.defaultdict(lambda: {p: [0.0, 0] for p in PHASES.values()})

    def listen(event: str, seconds: float, **kw) -> None:
        if event in PHASES:  # tracing names a program f, lowering and compiling jit(f)
            name = kw.get("fun_name", "?").removeprefix("jit(").removesuffix(")")
            row = programs[name][PHASES[event]]
            row[0] += seconds
            row[1] += 1

    jax.monitoring.register_event_duration_secs_listener(listen)
    cache = tempfile.mkdtemp()
    old = os.environ.get("COVSIM_CACHE_DIR")
    os.environ["COVSIM_CACHE_DIR"] = cache
    try:
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):  # stdout carries the JSON only
            rc = main(args)
        wall = time.perf_counter() - t0
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
        shutil.rmtree(cache, ignore_errors=True)
        if old is None:
            os.environ.pop("COVSIM_CACHE_DIR", None)
        else:
            os.environ["COVSIM_CACHE_DIR"] = old
    if rc:
        raise SystemExit(f"covsim {' '.join(args)} exited with {rc}")
    return {"wall": wall, "programs": dict(programs)}


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from run_all import COVSIM, ROOT

    args = sys.argv[1:]
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
