"""Learners π̂: one signature, model(prompts (n, P), responses (n, H)) -> (n, H, V) log-probs.

LogLinear     well-specified autoregressive linear model on the task's own features
Tabular       order-k n-gram / conditional table (+ closed-form add-α `fit_counts`)
Transformer   GPT-2-style causal decoder (flax.nnx)
make_model    any of the above from a plain dict spec
"""

from covsim.models.base import log_prob, make_model, nll, token_log_probs
from covsim.models.loglinear import LogLinear
from covsim.models.tabular import Tabular
from covsim.models.transformer import Transformer, flops_per_token

__all__ = [
    "LogLinear",
    "Tabular",
    "Transformer",
    "flops_per_token",
    "log_prob",
    "make_model",
    "nll",
    "token_log_probs",
]
