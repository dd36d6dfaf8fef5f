"""Shared test fixtures: the tiny trainer tables the CLI, reliability and registry tests use
(a 4-token Markov chain's learner: a few compiles, shared through the compile cache), and the
"toy" task kind of the sweep and plot tests (registered on import)."""

import covsim
from covsim.tasks.markov import MarkovChain

TRAINER = """
[model]
kind = "tabular"

[optim]
name = "adam"
lr = 0.1

[train]
steps = 20
batch_size = 8
n_train = 32
eval_every = 10
eval_samples = 128
Ns = [2, 8]
"""


@covsim.register_task("toy")
def toy(key, H: int = 8):
    """A stand-in task kind for the sweep and plot tests, whose cell functions build none."""
    return MarkovChain.random(key, V=2, H=H)
