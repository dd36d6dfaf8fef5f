"""Runner "train_tabular": the "train" runner with a Tabular learner whose prompt code fits
the task: a Mixture's class code (`covsim.models.tabular.class_radices`, one table per
(class, sub-prompt)), per-position radices otherwise. The horizon experiment uses it: the
learner is then well specified for its prompt-identified mixture."""

from __future__ import annotations

from functools import partial

import jax
from flax import nnx

from covsim.config import Config
from covsim.models.tabular import Tabular, class_radices, prompt_radices
from covsim.results import RunResult
from covsim.runners.registry import RunnerSpec, register_runner
from covsim.runners.train import cell_estimate, check_cell, train_cell
from covsim.sweep import Cell
from covsim.tasks.mixture import Mixture


def tabular_model_fn(cfg: Config, task):
    """key -> Tabular learner for `task` with `[model]`'s parameters and a prompt code that
    fits the task (class code for a Mixture, per-position radices otherwise)."""
    if cfg.model.kind != "tabular":
        raise ValueError(f"model.kind: runner 'train_tabular' needs 'tabular', got "
                         f"{cfg.model.kind!r}")
    if isinstance(task, Mixture):
        code = {"class_radices": class_radices(task)}
    else:
        code = {"prompt_radices": prompt_radices(task)}
    kw = {**cfg.model.params, **code}

    def model_fn(key):
        return Tabular(task.V, task.H, P=task.P, prompt_vocab=task.prompt_vocab,
                       rngs=nnx.Rngs(key), **kw)

    try:
        model_fn(jax.random.key(0))  # validate now, outside any trace
    except (TypeError, ValueError) as e:
        raise ValueError(f"model: {e}") from None
    return model_fn


@register_runner(
    "train_tabular", RunnerSpec(check=partial(check_cell, model_fn_of=tabular_model_fn),
                                estimate=partial(cell_estimate, model_fn_of=tabular_model_fn))
)
def run_train_tabular(cfg: Config, cell: Cell) -> RunResult:
    """The "train" runner with a Tabular learner whose prompt code fits the task (see module
    doc); for a Mixture, the summary also holds each class's final KL and Cov_N per seed."""
    return train_cell(cfg, cell, tabular_model_fn)
