"""Checkpoints: parameters of chosen steps on disk, for selection and decoding to reload.

Serialised with flax's msgpack serializer (`flax.serialization`), one file per run:
`checkpoints.msgpack` holding {"steps": (K,), "params": pytree with leading (K, ...)}. Writes are
atomic (`covsim.fileio.atomic_write_text`), so a killed run never leaves a half-written
checkpoint behind.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, serialization

from covsim.fileio import atomic_write_text

FILENAME = "checkpoints.msgpack"


def save_checkpoints(run_dir: str | Path, steps, params) -> Path:
    """Write params (a pytree, leaves with a leading checkpoint axis (K, ...)) and steps (K,)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / FILENAME
    atomic_write_text(path, checkpoint_bytes(steps, params))
    return path


def checkpoint_bytes(steps, params) -> bytes:
    """The serialised form of `save_checkpoints` (for writers that place the file themselves)."""
    state = nnx.to_pure_dict(params) if isinstance(params, nnx.State) else params
    payload = {"steps": np.asarray(steps), "params": jax.tree.map(np.asarray, state)}
    return serialization.msgpack_serialize(payload)


def load_checkpoints(run_dir: str | Path) -> tuple[np.ndarray, dict]:
    """(steps (K,), params as a pure dict pytree with leading (K, ...))."""
    path = Path(run_dir) / FILENAME
    if not path.exists():
        raise FileNotFoundError(f"no checkpoints in {run_dir} (expected {FILENAME})")
    payload = serialization.msgpack_restore(path.read_bytes())
    return np.asarray(payload["steps"]), payload["params"]


def restore_model(model: nnx.Module, params_k: dict) -> nnx.Module:
    """Load one checkpoint's parameters (a pure dict, no checkpoint axis) into `model`."""
    state = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, params_k))
    nnx.update(model, state)
    return model


def select(params: dict, k: int) -> dict:
    """The k-th checkpoint of a stacked parameter dict."""
    return jax.tree.map(lambda a: a[k], params)
