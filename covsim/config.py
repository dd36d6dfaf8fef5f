"""Typed experiment configs: TOML files, profiles, `--set a.b=value` overrides, one-line errors.

An experiment file (experiments/*.toml) has the sections

    [experiment]  name, claim, description
    [task]        kind (+ H) and the task's own parameters
    [model]       kind and the model's own parameters
    [optim]       name and the optimizer's own parameters
    [train]       steps, batch_size, n_train | online, epochs, eval_every, eval_samples, Ns, ...
    [pretrain]    optional first stage: its own task, optim and train tables (same model)
    [sweep]       seeds, vmap_seeds, and [sweep.axes]: dotted config path -> list of values
    [profile.quick], [profile.full]   dotted path -> value, applied over the base

Fixed sections reject unknown keys and wrong types. Task/model/optim parameters are open-ended
(their factories validate them) unless a kind is registered with `register` or passed to
`load_config(registry=...)`: then the kind must be one of the registered ones and the keys must
be among its parameters. Every error is a `ConfigError` whose one-line message starts with the
dotted path of the offending field, e.g. ``train.steps: must be ≥ 1, got -3``.

Paths: ``"task.H"``, ``"train.n_train"``; inside ``sweep.axes`` the rest of the path is one key,
so ``"sweep.axes.task.H"`` names the axis ``"task.H"``. Profile tables are flattened to such
paths (quoted keys and nested tables both work); `--set` and `with_values` set whole values.
"""

from __future__ import annotations

import copy
import json
import math
import re
import tomllib
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
)
from pydantic_core import PydanticCustomError

from covsim.checks import DEFAULT_ALPHA, steps_to_run
from covsim.fileio import atomic_write_text, digest

PosInt = Annotated[int, Field(ge=1)]
NonNegInt = Annotated[int, Field(ge=0)]

COMPONENTS = ("task", "model", "optim")
# section -> kind -> allowed parameter names (None: any)
Registry = Mapping[str, Mapping[str, frozenset[str] | None]]


class ConfigError(ValueError):
    """A config problem; the message is one line starting with the dotted field path."""


class _Registered(Mapping):
    """The registry configs are checked against: section -> {kind: parameter names}, read
    live from `covsim.registry` (built-ins and whatever plugins registered)."""

    def __getitem__(self, section: str) -> dict[str, frozenset[str] | None]:
        from covsim import registry as R

        return {n: e.param_names for n, e in R.entries(section).items()}

    def __iter__(self):
        return iter(COMPONENTS)

    def __len__(self) -> int:
        return len(COMPONENTS)


REGISTRY: Registry = _Registered()


# ---------------------------------------------------------------------------------------------
# Schema


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _Component(BaseModel):
    """A task/model/optim section: strict common fields, other keys kept as parameters."""

    model_config = ConfigDict(extra="allow", strict=True)

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class ExperimentSection(_Section):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")]
    claim: str = ""
    description: str = ""
    runner: Annotated[str, Field(min_length=1)] = "train"  # how a cell runs (covsim.runners)
    # modules that register tasks/models/optimizers/runners (covsim.registry), imported from
    # the config file's folder before the config is validated, and in every worker
    plugins: list[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.]*$")]] = Field(
        default_factory=list
    )


class TaskSection(_Component):
    kind: Annotated[str, Field(min_length=1)]
    H: PosInt | None = None


class ModelSection(_Component):
    kind: Annotated[str, Field(min_length=1)]


class OptimSection(_Component):
    name: Annotated[str, Field(min_length=1)]


class RunnerSection(_Component):
    """The runner's own settings (`[runner]`): keys and defaults are the runner's parameters
    (`covsim describe RUNNER`)."""


class TrainSection(_Section):
    """Training and evaluation schedule.

    `steps` counts optimizer steps, a multiple of `eval_every`; evaluations (checkpoints) are
    at 0, eval_every, 2·eval_every, ... Optional fields left unset take the trainer's default.
    """

    # steps, batch_size, eval_every and eval_samples are required by the trainer runners;
    # a runner that reads fewer [train] keys (covsim.runners.registry) refuses the others
    steps: PosInt | None = None
    batch_size: PosInt | None = None
    microbatch: PosInt | None = None  # gradient accumulation over batch_size / microbatch slices
    n_train: PosInt | None = None  # fixed dataset of n_train samples ...
    online: bool = False  # ... or fresh samples every step
    epochs: PosInt | None = None  # fixed dataset: stop after this many passes if before `steps`
    eval_every: PosInt | None = None
    # ≥ 2: the KL's standard error needs two samples
    eval_samples: Annotated[int, Field(ge=2)] | None = None
    # Thresholds key the records' {N: value} mappings: a repeat would merge two columns.
    Ns: Annotated[
        list[Annotated[float, Field(ge=1, allow_inf_nan=False)]],
        Field(min_length=1),
        AfterValidator(lambda v: _no_repeats(v, "thresholds")),
    ]
    pass_at: Annotated[list[PosInt], AfterValidator(lambda v: _no_repeats(v, "Pass@N sizes"))] = (
        Field(default_factory=list)
    )
    # "sequence": Σ_h NLL (the paper's objective); "token": its per-token mean; "distill": the
    # truncated distillation surrogate with budget log(distill_N) (Eqs. 24–25, §6.2)
    loss: Literal["sequence", "token", "distill"] = "sequence"
    distill_N: Annotated[float, Field(ge=1, allow_inf_nan=False)] | None = None
    # "batch": one optimizer update per batch; "token": one per token position (Eq. 21, §6.1)
    update: Literal["batch", "token"] = "batch"
    alpha: Annotated[float, Field(gt=0, lt=1)] | None = None  # Cov_N intervals at level 1 - alpha
    eval_chunk: PosInt | None = None  # evaluation batch, bounds memory
    checkpoints: list[NonNegInt] = Field(default_factory=list)  # steps whose params are kept
    # held-out samples whose log π̂ is kept per checkpoint (select_logq.npy, for tournaments)
    select_samples: NonNegInt | None = None
    # steps between saves of a sweep cell's trainer state, so a killed cell resumes there
    # (a multiple of eval_every); unset: a cell restarts from step 0
    checkpoint_every: PosInt | None = None

    @property
    def interval_alpha(self) -> float:
        """The level's alpha of the Cov_N intervals: `alpha`, else the trainer's default."""
        return DEFAULT_ALPHA if self.alpha is None else self.alpha

    @property
    def n_steps(self) -> int:
        """Steps to take: `steps`, or fewer if `epochs` passes over the data end first
        (rounded up to a multiple of `eval_every`)."""
        if self.steps is None:
            return 0
        n = None if self.online else self.n_train
        return steps_to_run(self.steps, self.eval_every, self.batch_size, n, self.epochs)


def _no_repeats(values: list[Any], what: str) -> list[Any]:
    seen = [float(v) for v in values]
    dup = next((v for v in values if seen.count(float(v)) > 1), None)
    if dup is not None:
        raise PydanticCustomError("duplicate", "repeated {what} {v}", {"what": what, "v": dup})
    return values


def _axis(values: list[Any]) -> list[Any]:
    if not values:
        raise PydanticCustomError("empty_axis", "empty sweep axis")
    keys = [json.dumps(v, sort_keys=True) for v in values]
    dup = next((v for v, k in zip(values, keys, strict=True) if keys.count(k) > 1), None)
    if dup is not None:
        raise PydanticCustomError(
            "duplicate", "duplicate value {v} in sweep axis", {"v": repr(dup)}
        )
    return values


class SweepSection(_Section):
    """The grid: one cell per point of `axes` × seeds (or per point, all seeds in it)."""

    axes: dict[str, Annotated[list[Any], AfterValidator(_axis)]] = Field(default_factory=dict)
    seeds: list[NonNegInt] = Field(default_factory=lambda: [0])
    vmap_seeds: bool = False  # true: a cell runs all seeds (the trainer vmaps over them)

    @field_validator("seeds", mode="before")
    @classmethod
    def _count_to_list(cls, v: Any) -> Any:
        if isinstance(v, int) and not isinstance(v, bool):
            if v < 1:
                raise PydanticCustomError(
                    "seeds", "must be a count ≥ 1 or a non-empty list of seeds, got {v}", {"v": v}
                )
            return list(range(v))
        if isinstance(v, list) and not v:
            raise PydanticCustomError("seeds", "must be a count ≥ 1 or a non-empty list of seeds")
        if isinstance(v, list) and len(set(map(repr, v))) < len(v):
            raise PydanticCustomError("seeds", "duplicate seeds in {v}", {"v": repr(v)})
        return v


class PretrainSection(_Section):
    """An optional first stage (e.g. Fig. 1's pre-training): the same [model] is trained on
    its own task with its own optimizer and schedule; the main [task]/[optim]/[train] stage
    then starts from its final parameters (each seed from its own)."""

    task: TaskSection
    optim: OptimSection
    train: TrainSection


class LogSection(_Section):
    """Where the evaluation records are also sent (`covsim.log_writers`): logs beside the
    run directories, not part of the experiment, so they never change a cell's config or the
    sweep's hash (a resumed sweep may add or drop writers)."""

    writers: list[Literal["jsonl", "csv", "tensorboard", "wandb"]] = Field(default_factory=list)
    dir: Annotated[str, Field(min_length=1)] | None = None  # default: <output directory>/logs
    wandb_project: Annotated[str, Field(min_length=1)] = "covsim"
    wandb_mode: Literal["online", "offline"] | None = None  # None: W&B's own (WANDB_MODE)


class Config(_Section):
    """A resolved experiment config (profile and overrides applied, validated)."""

    experiment: ExperimentSection
    task: TaskSection
    model: ModelSection | None = None  # the sections a runner reads: see _check_sections
    optim: OptimSection | None = None
    train: TrainSection | None = None
    runner: RunnerSection | None = None
    pretrain: PretrainSection | None = None
    sweep: SweepSection = Field(default_factory=SweepSection)
    log: LogSection | None = None  # log writers (not part of the experiment: see LogSection)

    _registry: Registry = PrivateAttr(default_factory=lambda: REGISTRY)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (absent optional fields omitted), as written to TOML."""
        return self.model_dump(exclude_none=True)

    def to_toml(self) -> str:
        return to_toml(self.to_dict())

    def digest(self) -> str:
        """sha256 of the canonical JSON of `to_dict()` less [log]: equal experiments, equal
        hashes, whichever writers log them."""
        return digest({k: v for k, v in self.to_dict().items() if k != "log"}).hex()

    def without_log(self) -> Config:
        """This config with no [log] section (what a cell's run directory records)."""
        return self.model_copy(update={"log": None})

    def get(self, path: str) -> Any:
        """Value at a dotted path, e.g. ``cfg.get("task.H")`` (None for an unset optional)."""
        segs = _split(path)
        parent, key = _resolve(self.model_dump(), segs, self._registry, create=False)
        return parent.get(key)

    def with_values(self, values: Mapping[str, Any]) -> Config:
        """A new validated config with each dotted path set to its value (whole values)."""
        raw = self.to_dict()
        for path, v in values.items():
            _set(raw, _split(path), copy.deepcopy(v), self._registry)
        return _build(raw, self._registry)


# ---------------------------------------------------------------------------------------------
# Loading


def load_config(
    path: str | Path,
    profile: str | None = "quick",
    overrides: Sequence[str] = (),
    *,
    registry: Registry | None = None,
) -> Config:
    """Read an experiment TOML, apply `[profile.<profile>]`, then `PATH=VALUE` overrides.

    `profile=None` applies no profile (e.g. to reload a resolved config.toml). Override values
    are parsed as TOML values (``8``, ``[8, 16]``, ``true``, ``"x"``), else taken as strings.
    """
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")  # a byte-order mark is tolerated
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror or e})") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from None
    if not raw:
        raise ConfigError(f"{path}: empty config; an experiment needs [experiment] and [task]")
    reg = REGISTRY if registry is None else registry
    profiles = raw.pop("profile", {})
    if not isinstance(profiles, dict) or not all(isinstance(p, dict) for p in profiles.values()):
        raise ConfigError("profile: must be a table of tables ([profile.<name>])")
    if profile is not None:
        if profile not in profiles:
            have = ", ".join(profiles) or "none"
            raise ConfigError(f"profile: unknown profile {profile!r} in {path}; allowed: {have}")
        for segs, v in flatten_paths(profiles[profile]):
            _set(raw, _split(".".join(segs)), v, reg, origin=f"profile.{profile}")
    for item in overrides:
        p, sep, text = item.partition("=")
        if not sep or not p.strip():
            raise ConfigError(f"--set {item!r}: expected PATH=VALUE, e.g. train.steps=200")
        _set(raw, _split(p.strip()), parse_value(text.strip()), reg, origin="--set")
    _load_plugins(raw, path.parent)
    return _build(raw, reg)


def _load_plugins(raw: dict[str, Any], folder: Path) -> None:
    """Import `[experiment] plugins` (from the config's folder) before validating: the kinds
    and runners they register must be known to the checks."""
    mods = (raw.get("experiment") or {}).get("plugins") if isinstance(raw, dict) else None
    if not mods:
        return
    if not isinstance(mods, list) or not all(isinstance(m, str) for m in mods):
        raise ConfigError(f"experiment.plugins: must be a list of module names, got {mods!r}")
    from covsim import registry as R

    try:
        R.load_plugins(mods, folder)
    except Exception as e:  # the plugin's own error: one line naming it
        raise ConfigError(f"experiment.plugins: {' '.join(str(e).split())}") from None


def profile_names(path: str | Path) -> list[str]:
    """The profiles an experiment file defines ([profile.<name>]), [] if none or unreadable."""
    try:
        raw = tomllib.loads(Path(path).read_bytes().decode("utf-8-sig"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return []
    p = raw.get("profile", {})
    return list(p) if isinstance(p, dict) else []


def parse_value(text: str) -> Any:
    """A TOML value (``8``, ``1e-3``, ``[8, 16]``, ``true``, ``"s"``), else the string itself."""
    try:
        doc = tomllib.loads(f"v = {text}")
    except tomllib.TOMLDecodeError:
        return text
    return doc["v"] if list(doc) == ["v"] else text


def dump_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as TOML, atomically (temp file in the same dir, then rename)."""
    atomic_write_text(Path(path), cfg.to_toml())


def _build(raw: dict[str, Any], registry: Registry) -> Config:
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_one_line(e)) from None
    cfg._registry = registry
    _check_semantics(cfg, registry)
    return cfg


def _check_semantics(cfg: Config, registry: Registry) -> None:
    """Cross-field rules, registered kinds, and that every sweep value gives a valid config."""
    spec = _check_sections(cfg)
    if cfg.train is not None and spec.train_keys is None:
        _check_train(cfg.train, "train")
    for section in COMPONENTS:
        if getattr(cfg, section) is not None:
            extra = spec.task_keys if section == "task" else ()
            _check_kind(getattr(cfg, section), section, registry, extra=extra)
    if cfg.pretrain is not None:
        _check_train(cfg.pretrain.train, "pretrain.train")
        for section in ("task", "optim"):
            _check_kind(getattr(cfg.pretrain, section), section, registry, "pretrain.")
    raw = cfg.to_dict()
    raw["sweep"]["axes"] = {}
    for axis, values in cfg.sweep.axes.items():
        where = f"sweep.axes[{axis!r}]"
        segs = _split(axis)
        if segs[0] in ("experiment", "sweep", "log"):
            raise ConfigError(f"{where}: cannot sweep over the {segs[0]} section")
        try:
            _resolve(copy.deepcopy(raw), segs, registry, create=True)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
        for i, v in enumerate(values):
            cell = copy.deepcopy(raw)
            _set(cell, segs, copy.deepcopy(v), registry)
            try:
                _build(cell, registry)
            except ConfigError as e:
                raise ConfigError(f"{where}[{i}]: {e}") from None


def _check_sections(cfg: Config):
    """The sections the runner reads are there, the others are not; a runner reading only
    some [train] keys gets only those; [runner] holds only the runner's parameters. Returns
    the runner's spec (`covsim.runners.registry.RunnerSpec`)."""
    from covsim import registry as R

    name = cfg.experiment.runner
    entry = R.entry("runner", name)
    if entry is None:
        raise ConfigError(
            f"experiment.runner: must be one of {', '.join(sorted(R.entries('runner')))}, "
            f"got {name!r}"
        )
    spec = entry.meta
    for section in ("model", "optim", "train", "runner", "pretrain"):
        present = getattr(cfg, section) is not None
        if present and section not in spec.reads:
            raise ConfigError(
                f"{section}: runner {name!r} does not read [{section}]; remove it (it reads "
                f"{', '.join(spec.reads)})"
            )
        if not present and section in spec.requires:
            raise ConfigError(f"{section}: required by runner {name!r}")
    if cfg.train is not None and spec.train_keys is not None:
        for key in cfg.train.model_dump(exclude_defaults=True):
            if key not in spec.train_keys:
                raise ConfigError(
                    f"train.{key}: not read by runner {name!r}; its [train] keys: "
                    f"{', '.join(spec.train_keys)}"
                )
        for key in spec.train_required:
            if getattr(cfg.train, key) is None:
                raise ConfigError(f"train.{key}: required by runner {name!r}")
    if cfg.runner is not None:
        allowed = entry.param_names or frozenset()
        for key in cfg.runner.params:
            if key not in allowed:
                raise ConfigError(
                    f"runner.{key}: unknown parameter of runner {name!r}; allowed: "
                    f"{', '.join(sorted(allowed)) or 'none'}"
                )
    return spec


def _check_train(t: TrainSection, where: str) -> None:
    """The cross-field rules of one [train] table (`where` is its dotted path)."""
    for key in ("steps", "batch_size", "eval_every", "eval_samples"):
        if getattr(t, key) is None:
            raise ConfigError(f"{where}.{key}: required key missing")
    if t.online and t.n_train is not None:
        raise ConfigError(
            f"{where}.n_train: must be omitted when {where}.online = true, got {t.n_train}"
        )
    if not t.online and t.n_train is None:
        raise ConfigError(f"{where}.n_train: required unless {where}.online = true")
    if t.online and t.epochs is not None:
        raise ConfigError(f"{where}.epochs: only for a fixed dataset ({where}.online = false)")
    if t.eval_every > t.steps:
        raise ConfigError(
            f"{where}.eval_every: must be ≤ {where}.steps = {t.steps}, got {t.eval_every}"
        )
    if t.steps % t.eval_every:
        raise ConfigError(
            f"{where}.steps: must be a multiple of {where}.eval_every = {t.eval_every}, "
            f"got {t.steps}"
        )
    if t.microbatch is not None and (t.microbatch > t.batch_size or t.batch_size % t.microbatch):
        raise ConfigError(f"{where}.microbatch: must divide {where}.batch_size = "
                          f"{t.batch_size}, got {t.microbatch}")
    if t.microbatch is not None and t.update != "batch":
        raise ConfigError(f"{where}.microbatch: only with {where}.update = \"batch\", got "
                          f"update = {t.update!r}")
    if t.distill_N is not None and t.loss != "distill":
        raise ConfigError(f"{where}.distill_N: only with {where}.loss = \"distill\", got "
                          f"loss = {t.loss!r}")
    if t.checkpoint_every is not None and t.checkpoint_every % t.eval_every:
        raise ConfigError(f"{where}.checkpoint_every: must be a multiple of {where}.eval_every "
                          f"= {t.eval_every} (state is saved between evaluations), got "
                          f"{t.checkpoint_every}")
    for i, s in enumerate(t.checkpoints):
        if s > t.steps or s % t.eval_every:
            raise ConfigError(
                f"{where}.checkpoints[{i}]: must be an evaluation step (a multiple of "
                f"{where}.eval_every = {t.eval_every}, ≤ {where}.steps = {t.steps}), got {s}"
            )


def _check_kind(
    spec: _Component, section: str, registry: Registry, prefix: str = "", extra=()
) -> None:
    """A registered kind (name for optim) with known parameters (plus `extra`: keys the
    runner reads from this section), if `section` has a registry."""
    kinds = registry.get(section) or {}
    if not kinds:  # nothing registered: the factory validates
        return
    field = "name" if section == "optim" else "kind"
    kind = getattr(spec, field)
    if kind not in kinds:
        raise ConfigError(
            f"{prefix}{section}.{field}: unknown {field} {kind!r}; "
            f"allowed: {', '.join(sorted(kinds))}"
        )
    allowed = kinds[kind]
    if allowed is not None:
        allowed = set(allowed) | set(extra) | ({"seed"} if section == "task" else set())
        for key in spec.params:
            if key not in allowed:
                names = ", ".join(sorted(set(allowed) | set(type(spec).model_fields)))
                raise ConfigError(f"{prefix}{section}.{key}: unknown key; allowed: {names}")


# ---------------------------------------------------------------------------------------------
# Paths


def _split(path: str) -> tuple[str, ...]:
    segs = tuple(path.split("."))
    if len(segs) > 2 and segs[:2] == ("sweep", "axes"):
        axis = ".".join(segs[2:])
        if len(axis) > 1 and axis[0] == axis[-1] == '"':  # sweep.axes."task.H": TOML quoting
            axis = axis[1:-1]
        return ("sweep", "axes", axis)
    return segs


def flatten_paths(
    d: Mapping[str, Any], prefix: tuple[str, ...] = ()
) -> list[tuple[tuple[str, ...], Any]]:
    """[(path segments, leaf value)] of a nested dict (empty dicts are leaves)."""
    out = []
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out += flatten_paths(v, (*prefix, k))
        else:
            out.append(((*prefix, k), v))
    return out


def _model_of(annotation: Any) -> type[BaseModel]:
    """The BaseModel in a field's annotation (`X | None` -> X)."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return args[0] if args else annotation


_MODELS: dict[str, type[BaseModel]] = {
    n: _model_of(f.annotation) for n, f in Config.model_fields.items()
}


_PRETRAIN_PARTS = {"task": TaskSection, "optim": OptimSection, "train": TrainSection}


def _table_keys(node: dict[str, Any], section: str, model: type[BaseModel],
                registry: Registry) -> set[str]:
    """The keys a table of `section` may hold: those set, its model's fields and, for a
    component (task, model, optim), its kind's registered parameters."""
    known = set(node) | set(model.model_fields)
    if section in COMPONENTS:
        kind = node.get("name" if section == "optim" else "kind")
        known |= (registry.get(section) or {}).get(kind) or set()
    return known


def _resolve(
    raw: dict[str, Any], segs: tuple[str, ...], registry: Registry, *, create: bool
) -> tuple[dict[str, Any], str]:
    """The dict holding the last segment of `segs`, and that key; ConfigError if unknown."""
    path = ".".join(segs)
    if segs[0] not in _MODELS or len(segs) < 2 or not all(segs):
        raise ConfigError(f"{path}: unknown config path; sections: {', '.join(_MODELS)}")
    section = segs[0]
    node = raw.setdefault(section, {}) if create else raw.get(section, {})
    if not isinstance(node, dict):
        raise ConfigError(f"{path}: unknown config path ({section} is no table)")
    for s in segs[1:-1]:
        nxt = node.get(s)
        if nxt is None and create and (section, s) == ("sweep", "axes"):
            nxt = node[s] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"{path}: unknown config path ({'.'.join(segs[:-1])} is no table)")
        node = nxt
    key = segs[-1]
    if len(segs) == 3 and segs[:2] == ("sweep", "axes"):
        return node, key
    if len(segs) == 2:
        known = _table_keys(node, section, _MODELS[section], registry)
        if section == "runner":  # the runner's own parameters
            from covsim import registry as R

            entry = R.entry("runner", (raw.get("experiment") or {}).get("runner", "train"))
            known |= (entry.param_names if entry else None) or set()
    elif len(segs) == 3 and section == "pretrain" and segs[1] in _PRETRAIN_PARTS:
        # a stage's table: the keys of its section, set or not
        known = _table_keys(node, segs[1], _PRETRAIN_PARTS[segs[1]], registry)
    else:
        known = set(node)
    if key not in known:
        allowed = ", ".join(sorted(known)) or "none"
        raise ConfigError(f"{path}: unknown config path; allowed: {allowed}")
    return node, key


def _set(
    raw: dict[str, Any], segs: tuple[str, ...], value: Any, registry: Registry, origin: str = ""
) -> None:
    try:
        node, key = _resolve(raw, segs, registry, create=True)
    except ConfigError as e:
        raise ConfigError(f"{e} (in {origin})" if origin else str(e)) from None
    node[key] = value


# ---------------------------------------------------------------------------------------------
# Errors

_TYPES = {
    "int_type": "an integer",
    "float_type": "a number",
    "string_type": "a string",
    "bool_type": "true or false",
    "list_type": "a list",
    "dict_type": "a table",
    "model_type": "a table",
}
_BOUNDS = {"greater_than_equal": "≥", "greater_than": ">", "less_than_equal": "≤", "less_than": "<"}
_CUSTOM = ("empty_axis", "duplicate", "seeds")  # our PydanticCustomErrors: the message is final


def _loc_text(loc: Sequence[str | int]) -> str:
    out = ""
    for p in loc:
        if isinstance(p, int):
            out += f"[{p}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", p):
            out += ("." if out else "") + p
        else:
            out += f"[{p!r}]"
    return out


def _one_line(err: ValidationError) -> str:
    errors = err.errors(include_url=False)
    e = errors[0]
    loc, kind, ctx = e["loc"], e["type"], e.get("ctx") or {}
    got = (
        f", got {e['input']!r}"
        if "input" in e and kind not in ("missing", "extra_forbidden")
        else ""
    )
    if kind == "extra_forbidden":
        model = _MODELS.get(loc[0]) if len(loc) == 2 else Config if len(loc) == 1 else None
        allowed = ", ".join(model.model_fields) if model else "?"
        msg = f"unknown key; allowed: {allowed}"
    elif kind == "missing":
        msg = "required key missing"
    elif kind in _TYPES:
        msg = f"must be {_TYPES[kind]}{got}"
    elif kind in _BOUNDS:
        bound = next(iter(ctx.values()))
        bound = int(bound) if isinstance(bound, float) and bound.is_integer() else bound
        msg = f"must be {_BOUNDS[kind]} {bound}{got}"
    elif kind == "too_short":
        msg = f"must be non-empty{got}"
    elif kind == "string_pattern_mismatch":
        msg = f"must match {ctx['pattern']}{got}"
    elif kind == "literal_error":
        msg = f"must be one of {ctx['expected']}{got}"
    elif kind in _CUSTOM:
        msg = e["msg"]
    else:
        msg = e["msg"][:1].lower() + e["msg"][1:] + got
    return f"{_loc_text(loc)}: {msg}{_more(errors)}"


def _more(errors: list) -> str:
    return f" (and {len(errors) - 1} more error(s))" if len(errors) > 1 else ""


# ---------------------------------------------------------------------------------------------
# TOML writer (tables, strings, numbers, bools, lists, inline tables inside lists)

_BARE = re.compile(r"[A-Za-z0-9_-]+")


def to_toml(d: Mapping[str, Any]) -> str:
    """TOML text for a nested dict of tables, strings, numbers, bools and lists."""
    lines: list[str] = []
    _table(d, (), lines)
    return "\n".join(lines).lstrip("\n") + "\n"


def _table(d: Mapping[str, Any], prefix: tuple[str, ...], lines: list[str]) -> None:
    subs = {k: v for k, v in d.items() if isinstance(v, Mapping)}
    if prefix and (len(subs) < len(d) or not subs):  # an empty table still needs its header
        lines += ["", "[" + ".".join(map(_key, prefix)) + "]"]
    lines += [f"{_key(k)} = {_value(v)}" for k, v in d.items() if k not in subs]
    for k, v in subs.items():
        _table(v, (*prefix, k), lines)


def _key(k: str) -> str:
    return k if _BARE.fullmatch(k) else _string(k)


def _string(s: str) -> str:
    # JSON string escapes are TOML basic-string escapes; DEL must be escaped in TOML too.
    return json.dumps(s, ensure_ascii=False).replace("\x7f", "\\u007f")


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return _string(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, Mapping):
        return "{" + ", ".join(f"{_key(k)} = {_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"cannot write {type(v).__name__} value {v!r} to TOML")
