"""The well-specified learner: an autoregressive linear model with the task's own features.

    π_θ(y_h | x, y_{<h}) ∝ exp⟨θ, ϕ(x, y_{<h}, y_h)⟩,   θ ∈ Θ = {‖θ‖ ≤ radius}   (§2)

The only trainable array is θ (d,). The task (which owns ϕ) is stored as an untrained data
attribute, so it travels in the non-Param part of `nnx.split` and comes back with `nnx.merge`.
Projection onto Θ belongs to the optimizer; `radius` and `ball` are exposed for it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from covsim.checks import check_float
from covsim.optim import project_params

Array = jax.Array

#: What a task must provide to be learned by `LogLinear` (duck-typed `AutoregressiveLinear`;
#: the radius of Θ is its static field `R`).
REQUIRED = ("d", "R", "ball", "V", "H", "P", "next_token_log_probs_theta")


class LogLinear(nnx.Module):
    """Log-linear learner over `task`'s feature map ϕ: (n, P), (n, H) -> (n, H, V) log-probs.

    init="zeros" starts at the uniform policy; init="random" draws θ ~ N(0, I)·init_scale/√d
    (so ‖θ‖₂ ≈ init_scale) and projects it onto Θ so the start is feasible.
    """

    def __init__(self, task, *, rngs: nnx.Rngs, init: str = "zeros", init_scale: float = 0.1):
        missing = [a for a in REQUIRED if not hasattr(task, a)]
        if missing:
            raise TypeError(
                f"argument task must be an AutoregressiveLinear task; {type(task).__name__} "
                f"lacks {missing}"
            )
        if init not in ("zeros", "random"):
            raise ValueError(f"argument init must be one of ['zeros', 'random'], got {init!r}")
        init_scale = check_float("init_scale", init_scale, 0.0)
        d = int(task.d)
        if init == "zeros":
            theta = jnp.zeros((d,), jnp.float32)
        else:
            theta = init_scale / jnp.sqrt(d) * jax.random.normal(rngs.params(), (d,), jnp.float32)
            theta = project_params(theta, float(task.R), str(task.ball))
        self.theta = nnx.Param(theta)
        self.task = nnx.data(task)

    @property
    def d(self) -> int:
        return int(self.task.d)

    @property
    def radius(self) -> float:
        """R of Θ = {θ : ‖θ‖ ≤ R} (the task's `R`)."""
        return float(self.task.R)

    @property
    def ball(self) -> str:
        """The norm of Θ: "l2" or "linf"."""
        return self.task.ball

    def __call__(self, prompts: Array, responses: Array) -> Array:
        """(n, P), (n, H) int32 -> (n, H, V) float32: log π_θ(· | x, y_{<h}), teacher-forced."""
        lp = self.task.next_token_log_probs_theta(self.theta[...], prompts, responses)
        return lp.astype(jnp.float32)

