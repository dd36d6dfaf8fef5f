"""Cell runners: how one sweep cell turns its config into a RunResult (compute lives here).

    from covsim.runners import run_cell, register_runner
    result = run_cell(cfg, cell)          # dispatch on [experiment] runner

A runner is a module-level function `(cfg, cell) -> RunResult` (the process executor pickles
it by name) registered under a name with `@register_runner("name")`. The registry is
explicit: this package imports each runner module below, and nothing else registers compute,
so a spawned worker that imports `covsim.runners` finds every runner without loading claims,
matplotlib or pandas.

    train              covsim.runners.train        the trainer (all seeds vmapped), [pretrain]
    train_tabular      covsim.runners.tabular      the trainer with a task-shaped Tabular learner
    bernoulli_closed_form  covsim.runners.closed_form  Bernoulli case study, closed-form scores
    sample_size_mle, prop_3_2_mle, variance_mle, mle
                       covsim.runners.exact_mle    exact MLE fits, exact or sampled scores
    one_pass           covsim.runners.sgd          one-pass SGD variants, scored exactly by counts
    misspecified_selection  covsim.runners.selection  MLE vs tournaments on a candidate class
    ttt                covsim.runners.ttt          token-level SGD, decoded ancestrally and by TTT
"""

from __future__ import annotations

from covsim.runners.registry import RUNNERS, Runner, cell_keys, register_runner, run_cell

# the explicit registry: every runner module, imported for its @register_runner functions
from covsim.runners import closed_form, exact_mle, selection, sgd, tabular, train, ttt  # noqa: E402, F401  (isort: skip)

__all__ = ["RUNNERS", "Runner", "cell_keys", "register_runner", "run_cell"]
