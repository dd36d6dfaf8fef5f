"""The runner registry: name -> `(cfg, cell) -> RunResult` (see `covsim.runners`)."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from typing import Any

from covsim import registry as R
from covsim.config import Config
from covsim.results import RunResult
from covsim.sweep import Cell

Runner = Callable[[Config, Cell], RunResult]
RUNNERS: dict[str, Runner] = {}

TRAINER_SECTIONS = ("model", "optim", "train", "pretrain")


@dataclasses.dataclass(frozen=True)
class RunnerSpec:
    """What a runner reads, so a config holds those sections and no others (checked by
    covsim.config before anything runs).

    reads:          optional sections it reads: "model", "optim", "train", "runner", "pretrain"
    requires:       those of them that must be present
    train_keys:     the [train] keys it reads (None: every key, the trainer's full rules)
    train_required: [train] keys that must be set
    task_keys:      [task] keys it reads besides the task kind's own parameters
    check:          check(cell_cfg, n_seeds) builds what one cell (of n_seeds seeds run
                    together) would build and raises ConfigError naming the field; the CLI
                    calls it on every distinct cell before compute
    estimate:       estimate(cell_cfg, n_seeds) -> an object with `.flops` (float or None) and
                    `.line()` (one line: the cell's memory and FLOPs), which the CLI prints
                    before a large cell starts
    """

    reads: tuple[str, ...] = TRAINER_SECTIONS
    requires: tuple[str, ...] = ("model", "optim", "train")
    train_keys: tuple[str, ...] | None = None
    train_required: tuple[str, ...] = ()
    task_keys: tuple[str, ...] = ()
    check: Callable[[Config, int], None] | None = None
    estimate: Callable[[Config, int], Any] | None = None


def register_runner(
    name: str,
    spec: RunnerSpec | None = None,
    params: Sequence[R.Param] = (),
) -> Callable[[Runner], Runner]:
    """Register a cell runner under `name` (selected by `[experiment] runner`). `spec` says
    which sections it reads (default: the trainer's); `params` are its `[runner]` settings."""

    def deco(fn: Runner) -> Runner:
        if name in RUNNERS and RUNNERS[name] is not fn:
            raise ValueError(f"runner {name!r} is registered twice")
        RUNNERS[name] = fn
        R.register("runner", name, fn, params=tuple(params), meta=spec or RunnerSpec())
        return fn

    return deco


def config_check(validate: Callable[[Config], Any]) -> Callable[[Config, int], None]:
    """A `RunnerSpec.check` from a runner's own validation: `validate(cell_cfg)` raises
    ValueError (or TypeError) naming the field, as the runner would at compute time; here that
    becomes a one-line ConfigError before anything runs."""
    from covsim.config import ConfigError

    def check(cfg: Config, n_seeds: int = 1) -> None:
        del n_seeds
        try:
            validate(cfg)
        except ConfigError:
            raise
        except (ValueError, TypeError) as e:
            line = str(e).splitlines()[0]
            # covsim.checks words its errors "argument runner.N must be ..."; a config error
            # leads with the field: "runner.N: must be ..."
            m = re.match(r"argument (\S+) (must .*)$", line)
            raise ConfigError(f"{m[1]}: {m[2]}" if m else line) from None

    return check


def runner_params(cfg: Config) -> dict[str, Any]:
    """The [runner] settings with the runner's defaults filled in."""
    entry = R.entry("runner", cfg.experiment.runner)
    given = cfg.runner.params if cfg.runner is not None else {}
    return {p.name: given.get(p.name, p.default) for p in entry.params or ()}


def run_cell(cfg: Config, cell: Cell) -> RunResult:
    """The sweep's cell function: load the config's plugins (a spawned worker starts without
    them), then dispatch on `[experiment] runner`."""
    if cfg.experiment.plugins:
        R.load_plugins(cfg.experiment.plugins)
    name = cfg.experiment.runner
    if name not in RUNNERS:
        raise ValueError(f"experiment.runner: must be one of {sorted(RUNNERS)}, got {name!r}")
    return RUNNERS[name](cfg, cell)


def cell_keys(cell: Cell) -> list[int]:
    """The PRNG seed of each of the cell's seeds: a function of the coordinates and the seed."""
    return [cell.rng_seed(s) for s in cell.seeds]
