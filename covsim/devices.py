"""Which devices a covsim process computes on, and how many host threads it uses.

JAX reads these settings (XLA_FLAGS) once, when its first computation initialises the
backends, so they are set before that:

* `use_host_cores()` (the CLI, at start-up): on a CPU the host is split into one JAX device
  per core the process may run on, so `covsim.train.run_seeds` shards a cell's seeds over the
  cores the way it shards them over the GPUs of a multi-GPU host (a GPU host is unaffected:
  its accelerators stay the default devices).
* `single_thread_worker()` (each worker of the process executor): one device, one intra-op
  thread, so `workers` processes share the cores instead of each spreading over all of them.

Measured once on a 2-core CPU (no benchmark row yet): a horizon cell's 4 seeds ran 1.37x
faster sharded over two host devices than on one; two single-thread workers pinned to a core
each reached 1.72x the step throughput of one default process.
"""

from __future__ import annotations

import os

_COUNT = "--xla_force_host_platform_device_count"
_SINGLE_THREAD = ("--xla_cpu_multi_thread_eigen=false", "intra_op_parallelism_threads=1")


def host_cores() -> int:
    """The cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def backends_initialised() -> bool:
    """True once JAX has created its backends (XLA_FLAGS no longer take effect)."""
    from jax._src import xla_bridge

    return xla_bridge.backends_are_initialized()


def _flags() -> list[str]:
    return os.environ.get("XLA_FLAGS", "").split()


def _set_flags(flags: list[str]) -> None:
    if flags:
        os.environ["XLA_FLAGS"] = " ".join(flags)
    else:
        os.environ.pop("XLA_FLAGS", None)


def use_host_cores() -> bool:
    """One host device per available core, unless XLA_FLAGS already fixes the count or the
    backends already exist (then nothing changes). True if the flag was set."""
    flags = _flags()
    if any(f.startswith(_COUNT) for f in flags) or backends_initialised():
        return False
    _set_flags(flags + [f"{_COUNT}={host_cores()}"])
    return True


def single_thread_worker() -> None:
    """A process-executor worker: one host device, one intra-op thread (before JAX starts)."""
    flags = [f for f in _flags() if not f.startswith(_COUNT)
             and not f.startswith(("--xla_cpu_multi_thread_eigen", "intra_op_parallelism"))]
    _set_flags(flags + [f"{_COUNT}=1", *_SINGLE_THREAD])
