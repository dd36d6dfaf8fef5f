"""The device's matmul throughput, measured in the command that reports against it.

    from peak import matmul_gflops   # (benchmarks/ is the script directory)

A benchmark quoting "% of peak" divides by this, never by a constant: the same script runs on
2-core CPUs of different generations and on accelerators.
"""

from __future__ import annotations

import statistics
import time


def matmul_gflops(repeats: int = 5, n: int = 2048, dtype: str = "float32") -> list[float]:
    """GFLOP/s of a jitted (n, n) @ (n, n) matmul in `dtype` ("float32", or "bf16" with
    float32 accumulation as covsim's bf16 transformer runs it), one value per repeat (each
    the mean of 5 calls after a warm-up compile)."""
    import jax
    import jax.numpy as jnp

    dt = {"float32": jnp.float32, "bf16": jnp.bfloat16}[dtype]
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(dt)
    f = jax.jit(lambda x: jnp.matmul(x, x, preferred_element_type=jnp.float32))
    f(a).block_until_ready()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(5):
            f(a).block_until_ready()
        out.append(5 * 2 * n**3 / (time.perf_counter() - t0) / 1e9)
    return out


def median_peak(repeats: int = 5, dtype: str = "float32") -> float:
    return statistics.median(matmul_gflops(repeats, dtype=dtype))
