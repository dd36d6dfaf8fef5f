"""Ground-truth tasks π_D: sample exactly, score exactly (see `covsim.tasks.base`)."""

from covsim.tasks.base import (
    Task,
    all_sequences,
    exact_cdf,
    exact_joint,
    inverse_cdf,
    open_uniform,
    sample_categorical,
)
from covsim.tasks.bernoulli import Bernoulli
from covsim.tasks.graph import GraphClass, GraphMixture
from covsim.tasks.linear import AutoregressiveLinear
from covsim.tasks.markov import MarkovChain
from covsim.tasks.mixture import Mixture
from covsim.tasks.rules import HiddenRules

__all__ = [
    "AutoregressiveLinear",
    "Bernoulli",
    "GraphClass",
    "GraphMixture",
    "HiddenRules",
    "MarkovChain",
    "Mixture",
    "Task",
    "all_sequences",
    "exact_cdf",
    "exact_joint",
    "inverse_cdf",
    "open_uniform",
    "sample_categorical",
]
