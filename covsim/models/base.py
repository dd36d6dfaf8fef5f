"""What every learner shares: one call signature, derived log-probs, NLL, and `make_model`.

A learner is a `flax.nnx.Module` with

    model(prompts (n, P) int32, responses (n, H) int32) -> (n, H, V) float32

whose entry [i, h] is log π̂(· | x_i, y_i[:h]) (teacher-forced, log_softmax-normalised).
Trainable arrays are `nnx.Param`; everything else survives `nnx.split`/`nnx.merge`, so

    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    nnx.merge(graphdef, params, rest)(x, y)

is a pure function of (params, x, y) for jit, grad and vmap (ensembles: vmap the init).
A learner may also define `token_log_probs(prompts, responses) -> (n, H)`, the call's entries
at the responses' tokens computed more cheaply; the trainer's loss and every sequence score go
through `token_log_probs` below, which uses it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from covsim import registry
from covsim.models.loglinear import LogLinear
from covsim.models.tabular import Tabular
from covsim.models.transformer import Transformer
from covsim.tasks.base import gather_tokens

Array = jax.Array


def token_log_probs(model, prompts: Array, responses: Array) -> Array:
    """(n, H): log π̂(y_h | x, y_{<h}); a learner's own `token_log_probs` method when it has
    one (the same numbers, cheaper: Tabular's), else `model(prompts, responses)` gathered."""
    own = getattr(model, "token_log_probs", None)
    if own is not None:
        return own(prompts, responses)
    return gather_tokens(model(prompts, responses), responses)


def log_prob(model, prompts: Array, responses: Array) -> Array:
    """(n,): log π̂(y | x), summed over the whole response in one `jnp.sum` (DESIGN numerics)."""
    return jnp.sum(token_log_probs(model, prompts, responses), axis=-1)


def nll(model, prompts: Array, responses: Array, reduction: str = "sequence") -> Array:
    """Mean over the batch of −log π̂(y|x): "sequence" sums over the H tokens, "token"
    averages over them (= the sequence NLL / H). Scalar."""
    if reduction not in ("sequence", "token"):
        raise ValueError(
            f"argument reduction must be one of ['sequence', 'token'], got {reduction!r}"
        )
    lp = log_prob(model, prompts, responses)
    if reduction == "token":
        lp = lp / responses.shape[-1]
    return -jnp.mean(lp)


# kind -> (required keys, optional keys with defaults); task sizes come from the task
SPECS: dict[str, tuple[tuple[str, ...], dict]] = {
    "loglinear": ((), {"init": "zeros", "init_scale": 0.1}),
    "tabular": (
        (),
        {
            "order": 1,
            "prompt_conditioned": True,
            "positional": False,
            "prompt_positions": None,
            "init": "zeros",
            "init_scale": 0.1,
        },
    ),
    "transformer": (
        ("layers", "heads", "width"), {"mlp_ratio": 4, "dropout": 0.0, "precision": "float32"}
    ),
}


def _register_builtin_models() -> None:
    for kind, (required, optional) in SPECS.items():
        ps = [registry.Param(k, "int") for k in required]  # the transformer's sizes
        ps += [registry.Param(k, "list of int" if v is None else type(v).__name__, v)
               for k, v in optional.items()]
        registry.register("model", kind, make_model, params=ps,
                          doc=f"built-in {kind} learner (sizes from the task)")


def make_model(spec: dict, task, rngs) -> nnx.Module:
    """Build a learner for `task` from a plain dict, e.g.

        {"kind": "transformer", "layers": 2, "heads": 2, "width": 64}
        {"kind": "tabular", "order": 2, "positional": True}
        {"kind": "loglinear", "init": "random"}

    `rngs` is an `nnx.Rngs`, a PRNG key or an int seed. Unknown kinds or keys, and missing
    required keys, raise a ValueError naming them and the allowed values."""
    if not isinstance(spec, dict) or "kind" not in spec:
        raise ValueError(
            f"model spec must be a dict with a 'kind' in {sorted(SPECS)}, got {spec!r}"
        )
    kind = spec["kind"]
    if kind not in SPECS:
        entry = registry.entry("model", kind) if isinstance(kind, str) else None
        if entry is None:
            kinds = sorted(registry.entries("model"))
            raise ValueError(f"kind: must be one of {kinds}, got {kind!r} (model spec)")
        if not isinstance(rngs, nnx.Rngs):
            rngs = nnx.Rngs(rngs)
        return entry.factory(task, rngs, **{k: v for k, v in spec.items() if k != "kind"})
    required, optional = SPECS[kind]
    allowed = ["kind", *required, *optional]
    unknown = sorted(set(spec) - set(allowed))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in {kind!r} model spec; allowed: {allowed}")
    missing = [k for k in required if k not in spec]
    if missing:
        raise ValueError(f"{kind!r} model spec is missing required key(s) {missing}")
    kw = {**optional, **{k: v for k, v in spec.items() if k != "kind"}}
    if not isinstance(rngs, nnx.Rngs):
        rngs = nnx.Rngs(rngs)
    if kind == "loglinear":
        return LogLinear(task, rngs=rngs, **kw)
    if kind == "tabular":
        return Tabular(task.V, task.H, P=task.P, prompt_vocab=task.prompt_vocab, rngs=rngs, **kw)
    return Transformer(task.V, task.H, task.P, task.prompt_vocab, rngs=rngs, **kw)


_register_builtin_models()
