"""Registries users extend: tasks, models, optimizers and runners by name, with their real
parameters (read from the factory's signature), so that a config, `--set`, a sweep axis and
`covsim describe` all see the same names.

    import covsim

    @covsim.register_task("mychain")
    def mychain(key, V: int = 4, H: int = 8, temperature: float = 1.0):
        return MarkovChain.random(key, V=V, H=H, temperature=temperature)

A task factory takes the PRNG key of the ground truth's own randomness (from `task.seed`)
first, then its parameters as keywords. A config names a plugin module that registers such
factories in `[experiment] plugins = ["mymodule"]`: it is imported from the config file's
folder (or anywhere on sys.path) before the config is validated, and again in every spawned
worker (which inherits sys.path).

Sections: "task", "model", "optim" (the kind/name of a config section), "runner"
(`[experiment] runner`). The built-in entries are registered by `covsim.experiment` (tasks),
`covsim.models` (models), `covsim.optim` (optimizers) and `covsim.runners`; `entry()` and
`params()` load them on first use.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

SECTIONS = ("task", "model", "optim", "runner")
EMPTY = inspect.Parameter.empty  # the default of a required parameter


@dataclasses.dataclass(frozen=True)
class Param:
    """One parameter of a registered factory: its name, type (as text) and default."""

    name: str
    type: str = "any"
    default: Any = inspect.Parameter.empty

    @property
    def required(self) -> bool:
        return self.default is inspect.Parameter.empty

    def line(self) -> str:
        d = "required" if self.required else f"default {self.default!r}"
        return f"{self.name}: {self.type} ({d})"


@dataclasses.dataclass(frozen=True)
class Entry:
    """A registered name: its factory, its parameters (None: open, the factory checks), and
    a one-line description."""

    section: str
    name: str
    factory: Callable[..., Any]
    params: tuple[Param, ...] | None
    doc: str = ""
    meta: Any = None  # section-specific facts (a runner's RunnerSpec)

    @property
    def param_names(self) -> frozenset[str] | None:
        return None if self.params is None else frozenset(p.name for p in self.params)


_ENTRIES: dict[str, dict[str, Entry]] = {s: {} for s in SECTIONS}
_BUILTINS_LOADED = False


def signature_params(fn: Callable[..., Any], skip: Sequence[str] = ()) -> tuple[Param, ...] | None:
    """The keyword parameters of `fn` (minus `skip` and `self`/`cls`); None when it takes
    **kwargs (its parameters are then open)."""
    out = []
    for p in inspect.signature(fn).parameters.values():
        if p.kind is p.VAR_KEYWORD:
            return None
        if p.kind is p.VAR_POSITIONAL or p.name in skip or p.name in ("self", "cls"):
            continue
        ann = p.annotation
        text = "any" if ann is p.empty else ann if isinstance(ann, str) else getattr(
            ann, "__name__", str(ann)  # `int | None` objects have no __name__
        )
        out.append(Param(p.name, str(text).replace("typing.", ""), p.default))
    return tuple(out)


def doc_line(fn: Callable[..., Any]) -> str:
    """The first paragraph of `fn`'s docstring, on one line."""
    return (inspect.getdoc(fn) or "").strip().split("\n\n")[0].replace("\n", " ")


def register(
    section: str,
    name: str,
    factory: Callable[..., Any],
    *,
    params: Sequence[Param] | None | str = "signature",
    skip: Sequence[str] = (),
    doc: str | None = None,
    meta: Any = None,
) -> Callable[..., Any]:
    """Register `factory` under `name` in `section`; returns the factory.

    params: "signature" (read from the factory, minus `skip`), an explicit list, or None
    (open: the factory validates its keywords itself). Registering a name twice with another
    factory is an error (a plugin must not silently replace a built-in)."""
    if section not in SECTIONS:
        raise ValueError(f"argument section must be one of {SECTIONS}, got {section!r}")
    if not isinstance(name, str) or not name:
        raise ValueError(f"argument name must be a non-empty string, got {name!r}")
    ps = signature_params(factory, skip) if params == "signature" else params
    entry = Entry(section, name, factory, None if ps is None else tuple(ps),
                  doc_line(factory) if doc is None else doc, meta)
    old = _ENTRIES[section].get(name)
    if old is not None and old.factory is not factory:
        raise ValueError(f"{section} {name!r} is registered twice")
    _ENTRIES[section][name] = entry
    return factory


def register_task(name: str, *, params="signature", doc: str | None = None):
    """Decorator: register `fn(key, **params) -> Task` as task kind `name` (`[task] kind`)."""
    return lambda fn: register("task", name, fn, params=params, skip=("key",), doc=doc)


def register_model(name: str, *, params="signature", doc: str | None = None):
    """Decorator: register `fn(task, rngs, **params) -> nnx.Module` as model kind `name`."""
    return lambda fn: register("model", name, fn, params=params, skip=("task", "rngs"), doc=doc)


def register_optimizer(name: str, *, params="signature", doc: str | None = None):
    """Decorator: register `fn(**params) -> optax.GradientTransformation` as `[optim] name`."""
    return lambda fn: register("optim", name, fn, params=params, doc=doc)


def _load_builtins() -> None:
    global _BUILTINS_LOADED
    if not _BUILTINS_LOADED:
        _BUILTINS_LOADED = True
        import covsim.experiment  # noqa: F401  (tasks, models, optimizers)
        import covsim.runners  # noqa: F401


def entries(section: str) -> dict[str, Entry]:
    """Every registered name of `section` (built-ins loaded first)."""
    _load_builtins()
    return dict(_ENTRIES[section])


def entry(section: str, name: str) -> Entry | None:
    _load_builtins()
    return _ENTRIES[section].get(name)


def find(name: str) -> list[Entry]:
    """The entries of every section registered under `name`."""
    _load_builtins()
    return [_ENTRIES[s][name] for s in SECTIONS if name in _ENTRIES[s]]


def load_plugins(modules: Sequence[str], folder: str | Path | None = None) -> None:
    """Import plugin modules (which register entries when imported). `folder` (a config
    file's folder) goes to the front of sys.path first, so modules beside the config import;
    spawned workers inherit sys.path. An import error is re-raised as ImportError naming the
    module."""
    if folder is not None:
        f = str(Path(folder).resolve())
        if f not in sys.path:
            sys.path.insert(0, f)
    for m in modules:
        try:
            importlib.import_module(m)
        except ImportError as e:
            raise ImportError(f"plugin {m!r} cannot be imported: {e}") from None
