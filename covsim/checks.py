"""Argument validation with messages that name the argument and its allowed range.

Every public constructor and metric validates its *static* arguments here (Python ints and
floats, array shapes). Traced values inside `jit` are never checked: validation is for the
user's input, not for the hot path.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import numpy as np

#: The default level of every Cov_N interval: 1 − alpha Wilson intervals, alpha = 0.05
#: (covsim.train.TrainSpec, covsim.metrics.coverage_profile, a config's train.alpha).
DEFAULT_ALPHA = 0.05

def steps_to_run(steps: int, eval_every: int, batch_size: int, n_train: int | None,
                 epochs: int | None) -> int:
    """Optimizer steps a run takes: `steps`, or fewer when `epochs` passes over a fixed
    dataset of `n_train` sequences end first (rounded up to a multiple of `eval_every`)."""
    if epochs is None or n_train is None:
        return steps
    evals = math.ceil(epochs * n_train / (batch_size * eval_every))
    return min(steps, evals * eval_every)


def check_int(name: str, value, low: int | None = None, high: int | None = None) -> int:
    """Return `value` as int, or raise ValueError naming `name` and the range [low, high]."""
    allowed = _range_text(low, high, integer=True)
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"argument {name} must be {allowed}, got {value!r}")
    v = int(value)
    if (low is not None and v < low) or (high is not None and v > high):
        raise ValueError(f"argument {name} must be {allowed}, got {v}")
    return v


def check_float(
    name: str,
    value,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """Return `value` as float, or raise naming `name` and the allowed interval."""
    allowed = _interval_text(low, high, low_open, high_open)
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise TypeError(f"argument {name} must be a real number in {allowed}, got {value!r}")
    v = float(value)
    bad = math.isnan(v)
    if low is not None:
        bad |= v <= low if low_open else v < low
    if high is not None:
        bad |= v >= high if high_open else v > high
    if bad:
        raise ValueError(f"argument {name} must be in {allowed}, got {v}")
    return v


def check_probs(name: str, p, axis: int = -1, atol: float = 1e-5) -> np.ndarray:
    """Check an array of probabilities: entries in [0, 1] and summing to 1 along `axis`."""
    a = np.asarray(p, dtype=np.float64)
    if a.size == 0:
        raise ValueError(f"argument {name} must be a non-empty probability vector")
    if np.any(~np.isfinite(a)) or np.any(a < 0) or np.any(a > 1):
        raise ValueError(
            f"argument {name} must have entries in [0, 1], got min {a.min()}, max {a.max()}"
        )
    s = a.sum(axis=axis)
    if np.any(np.abs(s - 1.0) > atol):
        raise ValueError(
            f"argument {name} must sum to 1 along axis {axis}, got sums in [{s.min()}, {s.max()}]"
        )
    return a


def check_Ns(name: str, Ns) -> np.ndarray:
    """A grid of thresholds N: a non-empty 1-D sequence of reals, each ≥ 1."""
    a = np.atleast_1d(np.asarray(Ns, dtype=np.float64))
    if a.ndim != 1 or a.size == 0:
        raise ValueError(
            f"argument {name} must be a non-empty 1-D sequence of numbers ≥ 1, got shape {a.shape}"
        )
    if np.any(~np.isfinite(a)) or np.any(a < 1):
        raise ValueError(f"argument {name} must contain only finite numbers ≥ 1, got {a.tolist()}")
    return a


def check_shape(name: str, x, shape: Sequence[int | None]) -> None:
    """Raise if `x.shape` does not match `shape` (None matches any size)."""
    got = tuple(np.shape(x))
    ok = len(got) == len(shape) and all(
        s is None or s == g for s, g in zip(shape, got, strict=True)
    )
    if not ok:
        want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
        raise ValueError(f"argument {name} must have shape {want}, got {got}")


def check_same_shape(names: Sequence[str], *arrays) -> None:
    """Raise if the arrays do not all share one shape."""
    shapes = [tuple(np.shape(a)) for a in arrays]
    if len(set(shapes)) > 1:
        listing = ", ".join(f"{n}{s}" for n, s in zip(names, shapes, strict=True))
        raise ValueError(f"arguments must have the same shape, got {listing}")


def _range_text(low, high, integer: bool) -> str:
    kind = "an integer" if integer else "a number"
    if low is not None and high is not None:
        return f"{kind} in [{low}, {high}]"
    if low is not None:
        return f"{kind} ≥ {low}"
    if high is not None:
        return f"{kind} ≤ {high}"
    return kind


def _interval_text(low, high, low_open, high_open) -> str:
    lo = "-inf" if low is None else str(low)
    hi = "inf" if high is None else str(high)
    left = "(" if low_open or low is None else "["
    right = ")" if high_open or high is None else "]"
    return f"{left}{lo}, {hi}{right}"


def is_concrete(x) -> bool:
    """A value a user gave (number, string, sequence, concrete array), as opposed to the
    tracers and placeholders (None, object(), bools of prefix trees) that jax passes when it
    rebuilds a pytree through __init__."""
    if x is None or isinstance(x, bool | jax.core.Tracer):
        return False
    return isinstance(x, int | float | str | list | tuple | np.integer | np.floating
                      | np.ndarray | jax.Array)
