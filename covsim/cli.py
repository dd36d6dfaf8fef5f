"""The `covsim` command line.

    covsim list                                    claims and experiments
    covsim describe NAME                           a task/model/optimizer/runner's parameters
    covsim run CONFIG [--profile P] [--out DIR] [--set a.b=v ...] [--log csv,tensorboard,...]
    covsim sweep CONFIG [--profile P] [--out DIR] [--set ...] [--executor local|process|ray]
                 [--address auto|HOST:PORT]
                 [--workers K] [--force] [--yes]     the grid over [sweep.axes], resumable
    covsim plot DIR [--out FOLDER] [--format png|pdf|svg]
                                                   figures from a run or sweep directory
    covsim reproduce CLAIM|--all [--profile P] [--out RUNS] [--figures FOLDER] [--report FILE]
                 [--update-repo] [--executor ...] [--workers K]
                                                   run (resume) the claim's sweeps, draw, judge
    covsim demo [--out DIR] [--set ...]            a one-minute tour (coverage table, KL)
    covsim coverage REF STUDENT [--Ns ...] [--alpha A] [--out DIR] [--format png|pdf|svg]
                                                   Cov_N, KL and Prop. 3.1's bound of a model
                                                   pair from log-prob files (logprob_files)
    covsim -q ...                                  no progress bars

CONFIG is a TOML file or an experiment's name (experiments/<name>.toml, found as `reproduce`
finds it). --profile applies [profile.NAME]; by default "quick" if the file has it, else none.

Outputs: sweeps go to runs/<profile>/<experiment name>, runs to runs/<profile>/<name>-run,
unless --out (`reproduce`: <RUNS>/<profile>/<experiment>, resumed, cells whose config changed
redone). covsim writes only into a new or empty directory or one holding the same kind of
result of the same experiment, one process at a time (`covsim.outdir`); a sweep of more
than 1000 cells needs --yes. Ctrl-C / SIGTERM stop cleanly (exit 130 / 143): finished cells
are kept, and rerunning the same command resumes. Nothing is
written outside the output folders unless asked: `plot` draws into DIR/figures/, and
`reproduce` writes its figures to <RUNS>/figures/ and its report to <RUNS>/REPRODUCTION.md
(one row per claim; rows of claims not run this time are kept). `reproduce --update-repo`
writes them to the checkout's committed figures/ and REPRODUCTION.md instead. `plot` draws
the claim's own figure when the directory's experiment is the claim's only one, else
`covsim.plots.plot_run`. `reproduce` prints one verdict line per claim on stdout and exits 0
whether claims PASS or FAIL; it exits 1 when something broke (a failed cell, a check that
raised: an "ERROR claim: ..." line) and 2 on a bad config of a single CLAIM (with --all,
that claim gets an ERROR line and the others run).

Exit codes: 0 fine, 1 an error while running, 2 a bad config, command line, output path or
corrupt result file (one line on stderr naming the field or file, no traceback), 130 / 143
interrupted.

JAX's persistent compilation cache is switched on (in $COVSIM_CACHE_DIR, default
~/.cache/covsim/jax) unless JAX_COMPILATION_CACHE_DIR is already set: reruns of an experiment
skip most of its compile time, which dominates small CPU runs. On a CPU each core the process
may use becomes a JAX device (unless XLA_FLAGS sets --xla_force_host_platform_device_count), so
a cell's seeds run on all cores (covsim.devices).
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import time
import tomllib
from collections.abc import Sequence
from pathlib import Path

from covsim import __version__
from covsim.checks import DEFAULT_ALPHA
from covsim.config import Config, ConfigError, load_config, profile_names, to_toml
from covsim.report import REPORT, report_row, update_report

EXECUTORS = ("local", "process", "ray")
FIGURES = "figures"
RUNS = "runs"


class UsageError(ValueError):
    """A bad command line or input path: one line, exit 2."""


# ---------------------------------------------------------------------------------------------
# Shared helpers


def _enable_compile_cache() -> None:
    """Persistent XLA cache for this process and the processes it spawns (they read the env)."""
    if "JAX_COMPILATION_CACHE_DIR" in os.environ:
        return
    root = os.environ.get("COVSIM_CACHE_DIR") or Path.home() / ".cache" / "covsim"
    cache = Path(root) / "jax"
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError:
        return  # read-only home: run without the cache
    env = {
        "JAX_COMPILATION_CACHE_DIR": str(cache),
        # every program, however quick to compile (JAX keeps only those over 1 s by default,
        # covsim those over 0.2 s before): the ~60 small programs of a task build and a cell
        # (0.01-0.1 s each) were compiled again by every process; cached, a warm horizon
        # sweep's task builds take 1.0 s instead of 1.9 s
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    }
    os.environ.update(env)
    if "jax" in sys.modules:  # already imported (e.g. main() called in-process): set it live
        import jax

        jax.config.update("jax_compilation_cache_dir", env["JAX_COMPILATION_CACHE_DIR"])
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def experiments_dir() -> Path:
    """experiments/ of the working directory, else the one beside the package (a checkout)."""
    for d in (Path.cwd() / "experiments", Path(__file__).resolve().parents[1] / "experiments"):
        if d.is_dir():
            return d
    return Path.cwd() / "experiments"


def config_path(config: str | Path) -> Path:
    """CONFIG as given: a TOML file, or an experiment's name (experiments/<name>.toml, looked
    up like `reproduce` does, so `covsim run horizon` works from any folder)."""
    p = Path(config)
    if p.is_file():
        return p
    named = experiments_dir() / f"{config}.toml"
    if p.suffix == "" and len(p.parts) == 1 and named.is_file():
        return named
    raise UsageError(f"CONFIG: no such file {p}" + ("" if p.suffix else f" (nor {named})"))


def _profile(path: Path, profile: str | None) -> str | None:
    """The profile to apply: the one asked for; by default "quick" if the file defines it,
    else none (a config without [profile.*] runs as written)."""
    if profile is not None:
        return profile
    return "quick" if "quick" in profile_names(path) else None


def _load(path: str | Path, profile: str | None, overrides: Sequence[str] = ()) -> Config:
    p = config_path(path)
    return load_config(p, _profile(p, profile), list(overrides))


def _cell_fn(cfg, cell):
    """The sweep's cell function (picklable; a spawned worker imports only covsim.runners)."""
    from covsim.runners import run_cell

    return run_cell(cfg, cell)


def _importable_cell_fn():
    """`_cell_fn` as `covsim.cli._cell_fn`, whatever this module runs as: under `python -m
    covsim.cli` or runpy it is `__main__`, which a spawned worker may not be able to import."""
    import importlib

    return importlib.import_module("covsim.cli")._cell_fn


#: a cell of at least this many FLOPs gets its estimate printed before it starts: about
#: 8 minutes at the ~200 GFLOP/s a 2-core CPU reaches; quick-profile cells (a few TFLOP at
#: most) stay silent, a full-profile transformer cell (fig2: ~6e16) does not
BIG_CELL_FLOPS = 1e14


def _preflight(cfg: Config, one_cell: bool = False, show: bool = False) -> None:
    """Run the runner's own cell check (`RunnerSpec.check`: the trainers build the task,
    learner and optimizer and bound the memory) on every distinct cell, so that a bad value in
    any cell (e.g. the second value of a sweep axis) is a one-line config error before
    anything runs. `one_cell`: all seeds run together (`covsim run`). `show`: print the
    memory and FLOPs estimate (`RunnerSpec.estimate`) of each distinct cell of at least
    BIG_CELL_FLOPS, to stderr."""
    from covsim import registry as R
    from covsim.fileio import digest
    from covsim.sweep import cell_config, expand_grid

    meta = R.entry("runner", cfg.experiment.runner).meta
    check = meta.check
    if check is None:
        return  # the runner's sections are checked by covsim.config alone
    seen = set()
    together = one_cell or cfg.sweep.vmap_seeds
    for cell in expand_grid(cfg.sweep.axes, cfg.sweep.seeds, vmap_seeds=together):
        c = cell_config(cfg, cell)
        d = c.to_dict()
        key = digest({k: d.get(k) for k in ("task", "model", "optim", "train", "pretrain",
                                            "runner")})
        if key not in seen:
            seen.add(key)
            check(c, len(cell.seeds))
            est = meta.estimate(c, len(cell.seeds)) if show and meta.estimate else None
            if est is not None and est.flops is not None and est.flops >= BIG_CELL_FLOPS:
                where = ", ".join(f"{k}={v}" for k, v in cell.coords.items() if k != "seed")
                print(f"{cfg.experiment.name} cell {where or '(single point)'}: {est.line()}",
                      file=sys.stderr, flush=True)


def _load_cli(args) -> tuple[Config, Path]:
    """The config of `run`/`sweep` (CONFIG, --profile, --set) and its output directory:
    --out, else runs/<profile>/<name> for a sweep and runs/<profile>/<name>-run for a run (the
    two never share a directory: covsim.outdir refuses one kind over the other; a config run
    without a profile goes to runs/default/)."""
    p = config_path(args.config)
    profile = _profile(p, args.profile)
    cfg = load_config(p, profile, list(args.set))
    if args.log is not None:  # --log csv,tensorboard: the writers of [log], replaced
        names = [n.strip() for n in args.log.split(",") if n.strip()]
        try:
            cfg = cfg.with_values({"log.writers": names})
        except ConfigError as e:
            raise UsageError(f"--log: {' '.join(str(e).split())}") from None
    if args.out:
        return cfg, Path(args.out)
    name = cfg.experiment.name + ("-run" if args.command == "run" else "")
    return cfg, Path(RUNS) / (profile or "default") / name


def checkout_root() -> Path:
    """The source checkout covsim runs from (an editable install): the folder above the
    package that holds pyproject.toml and the committed REPRODUCTION.md."""
    root = Path(__file__).resolve().parents[1]
    if not ((root / "pyproject.toml").is_file() and (root / REPORT).is_file()):
        raise UsageError(
            f"--update-repo: covsim is not running from a source checkout (no pyproject.toml "
            f"and {REPORT} in {root}); give --report FILE and --figures FOLDER instead"
        )
    return root


def _report_paths(args) -> tuple[Path, Path]:
    """(figures folder, report file) of `reproduce`: in the runs folder unless --update-repo
    (the checkout's committed ones); --figures / --report override either."""
    base = checkout_root() if args.update_repo else Path(args.out)
    figures = Path(args.figures) if args.figures else base / FIGURES
    report = Path(args.report) if args.report else base / REPORT
    return figures, report


# ---------------------------------------------------------------------------------------------
# Commands


def cmd_list(args) -> int:
    from covsim.claims import CLAIMS

    print("claims:")
    width = max((len(n) for n in CLAIMS), default=0)
    kw = max((len(c.kind) for c in CLAIMS.values()), default=0)
    for name, c in sorted(CLAIMS.items()):
        exps = ", ".join(c.experiments)
        print(f"  {name:<{width}}  {c.kind:<{kw}}  {c.title}  [{c.paper_ref}]  experiments: {exps}")
    d = experiments_dir()
    print(f"experiments ({d}):")
    files = sorted(d.glob("*.toml")) if d.is_dir() else []
    width = max((len(f.stem) for f in files), default=0)
    for f in files:
        try:
            raw = tomllib.loads(f.read_text("utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as e:
            print(f"  {f.stem:<{width}}  (unreadable: {' '.join(str(e).split())})")
            continue
        exp = raw.get("experiment", {})
        profiles = ",".join(raw.get("profile", {})) or "-"
        desc = exp.get("description", "")
        print(
            f"  {f.stem:<{width}}  claim: {exp.get('claim') or '-'}  profiles: {profiles}  {desc}"
        )
    missing = sorted({e for c in CLAIMS.values() for e in c.experiments} - {f.stem for f in files})
    if missing:
        print(f"missing experiment files for claims: {', '.join(missing)}")
    return 0


def cmd_run(args) -> int:
    from covsim import resume
    from covsim.outdir import owned_output
    from covsim.results import write_run
    from covsim.sweep import (
        StepBars,
        cell_config,
        expand_grid,
        in_work_dir,
        log_cell,
        open_writers,
        sweep_bytes,
    )

    cfg, out = _load_cli(args)
    if cfg.sweep.axes:
        raise ConfigError(
            f"sweep.axes: `covsim run` runs one point but this config sweeps "
            f"{', '.join(cfg.sweep.axes)}; use `covsim sweep`, or --set 'sweep.axes={{}}'"
        )
    _preflight(cfg, one_cell=True, show=not args.quiet)
    # One run: every seed in one cell, as sweep.vmap_seeds = true does.
    [cell] = expand_grid({}, cfg.sweep.seeds, vmap_seeds=True)
    t0 = time.perf_counter()
    # owned (new, empty or a run of this experiment), locked and writable before compute
    with owned_output(out, "run", cfg.experiment.name, need_bytes=sweep_bytes(cfg, [cell])):
        cell_cfg, work = cell_config(cfg, cell), resume.work_dir(out)
        with StepBars(out, ["run"], enabled=not args.quiet):  # its work dir: run.partial
            result = in_work_dir(_cell_fn, out, cell_cfg, cell, work)
        write_run(out, cell_cfg, result)
        shutil.rmtree(work, ignore_errors=True)
        with open_writers(cfg, out) as writers:
            log_cell(writers, cell, result.records)
    tag = f"diverged at step {result.diverged_step}" if result.diverged else "done"
    print(f"{cfg.experiment.name}: {tag} in {time.perf_counter() - t0:.1f} s -> {out}")
    return 0


def _check_executor(executor: str, workers: int, address: str | None = None) -> None:
    if address is not None and executor != "ray":
        raise UsageError(f"--address: only the ray executor connects to a cluster, got "
                         f"--executor {executor}")
    if executor == "local" and workers != 1:
        raise UsageError(f"--workers: the local executor runs one cell at a time, got {workers}; "
                         "add --executor process (or ray) for more")
    if executor == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            msg = "--executor ray: Ray is not installed; pip install 'covsim[ray]'"
            raise UsageError(msg) from None


def _sweep(cfg: Config, out: Path, *, executor="local", workers=1, force=False, progress=True,
           address=None):
    """Run (or resume) a sweep; return (manifest, list of failed-cell lines)."""
    from covsim.sweep import run_sweep

    manifest = run_sweep(
        cfg, _importable_cell_fn(), out, executor=executor, workers=workers,
        progress=progress, force=force, address=address,
    )
    failed = [f"{c['id']}: {c['error']}" for c in manifest["cells"] if c["status"] == "failed"]
    return manifest, failed


#: A sweep with more cells than this starts only with --yes (a grid typo can mean days).
CONFIRM_CELLS = 1000


def cmd_sweep(args) -> int:
    from covsim.sweep import expand_grid

    _check_executor(args.executor, args.workers, args.address)
    cfg, out = _load_cli(args)
    _preflight(cfg, show=not args.quiet)
    n = len(expand_grid(cfg.sweep.axes, cfg.sweep.seeds, vmap_seeds=cfg.sweep.vmap_seeds))
    if n > CONFIRM_CELLS and not args.yes:
        raise UsageError(
            f"sweep: {n} cells (more than {CONFIRM_CELLS}); check sweep.axes and sweep.seeds, "
            "then rerun with --yes to start it"
        )
    if not args.quiet:
        print(f"{cfg.experiment.name}: {n} cells -> {out}", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    manifest, failed = _sweep(
        cfg,
        out,
        executor=args.executor,
        workers=args.workers,
        force=args.force,
        progress=not args.quiet,
        address=args.address,
    )
    cells = manifest["cells"]
    counts = {s: sum(c["status"] == s for c in cells) for s in ("done", "diverged", "failed")}
    print(
        f"{cfg.experiment.name}: {len(cells)} cells ({counts['done']} done, "
        f"{counts['diverged']} diverged, {counts['failed']} failed) in "
        f"{time.perf_counter() - t0:.1f} s -> {out}"
    )
    for cid, why in manifest.get("redone_corrupt", {}).items():
        print(f"redid corrupt cell {cid}: {why}", file=sys.stderr)
    for line in failed:
        print(f"failed cell {line}", file=sys.stderr)
    return 1 if failed else 0


def cmd_describe(args) -> int:
    """The parameters (type, default) of a registered task, model, optimizer or runner."""
    from covsim import registry as R

    found = R.find(args.name)
    if not found:
        every = {s: sorted(R.entries(s)) for s in R.SECTIONS}
        listing = "; ".join(f"{s}: {', '.join(names)}" for s, names in every.items())
        raise UsageError(f"NAME: {args.name!r} is not registered; {listing}")
    where = {"task": "[task] kind", "model": "[model] kind", "optim": "[optim] name",
             "runner": "[experiment] runner"}
    for e in found:
        print(f"{e.section} {e.name!r} ({where[e.section]} = \"{e.name}\"): {e.doc}")
        if e.section == "runner":
            spec = e.meta
            print(f"  reads: [task], {', '.join(f'[{s}]' for s in spec.reads)}")
            if spec.train_keys is not None:
                print(f"  [train] keys: {', '.join(spec.train_keys)}")
            elif "train" in spec.reads:  # the trainer's: TrainSpec, key for key
                import dataclasses

                from covsim.train import TrainSpec

                names = [f.name for f in dataclasses.fields(TrainSpec) if f.name != "sample_chunk"]
                print(f"  [train] keys (covsim.train.TrainSpec): {', '.join(names)}")
            if spec.task_keys:
                print(f"  extra [task] keys: {', '.join(spec.task_keys)}")
            label = "  [runner] parameters:"
        else:
            label = "  parameters:"
        if e.params is None:
            print(f"{label} open (the factory checks its keywords)")
        elif not e.params:
            print(f"{label} none")
        else:
            print(label)
            for p in e.params:
                print(f"    {p.line()}")
    return 0


def cmd_plot(args) -> int:
    from covsim import plots
    from covsim.claims import CLAIMS
    from covsim.results import partial_paths, read_config

    d = Path(args.dir)
    if not (d / "config.toml").is_file():
        raise UsageError(f"DIR: {d} is not a run or sweep directory (no config.toml)")
    exp = read_config(d).experiment
    claim = CLAIMS.get(exp.claim)
    out = Path(args.out) if args.out else d / FIGURES
    running = partial_paths(d)
    if running:
        print(f"{d}: {len(running)} run(s) not finished; drawing the generic figures with "
              "their partial records", file=sys.stderr)
    if (args.format is None and claim is not None and tuple(claim.experiments) == (exp.name,)
            and not running):
        files = claim.figure({exp.name: d}, out)  # the claim's own figure (PNG)
    else:
        files = plots.plot_run(d, out, fmt=args.format or "png")
    for f in files:
        print(f)
    return 0


def cmd_reproduce(args) -> int:
    from covsim.claims import CLAIMS

    if args.all == bool(args.claim):
        raise UsageError("reproduce: give one CLAIM or --all")
    names = list(CLAIMS) if args.all else [args.claim]
    if args.claim and args.claim not in CLAIMS:
        raise UsageError(f"CLAIM: unknown claim {args.claim!r}; allowed: {', '.join(CLAIMS)}")
    figures_dir, report = _report_paths(args)
    _check_executor(args.executor, args.workers)
    exp_dir = experiments_dir()
    cfgs: dict[str, Config | Exception] = {}  # validate every experiment before running any
    for name in names:
        for e in CLAIMS[name].experiments:
            if e not in cfgs:
                try:
                    cfgs[e] = _load(exp_dir / f"{e}.toml", args.profile)
                    _preflight(cfgs[e], show=not args.quiet)
                except (ConfigError, UsageError) as err:
                    if not args.all:
                        raise
                    cfgs[e] = err  # --all: that claim reports an error, the others run
    rows, errors = {}, 0
    for name in names:
        claim = CLAIMS[name]
        t0 = time.perf_counter()
        try:
            bad = [cfgs[e] for e in claim.experiments if isinstance(cfgs[e], Exception)]
            if bad:
                raise bad[0]
            dirs = {}
            for e in claim.experiments:
                dirs[e] = Path(args.out) / args.profile / e
                _, failed = _sweep(
                    cfgs[e],
                    dirs[e],
                    executor=args.executor,
                    workers=args.workers,
                    force=True,
                    progress=not args.quiet,
                )
                if failed:
                    raise RuntimeError(f"{len(failed)} failed cell(s) in {e}: {failed[0]}")
            figs = claim.figure(dirs, figures_dir)
            verdict = claim.check(dirs)
        except Exception as err:  # one claim's failure must not stop the others
            errors += 1
            msg = " ".join(f"{type(err).__name__}: {err}".split())
            print(f"ERROR {name}: {msg}", flush=True)
            continue
        secs = time.perf_counter() - t0
        print(f"{verdict.line()} [{args.profile}, {secs:.0f} s]", flush=True)
        rows[name] = report_row(claim, verdict, figs, args.profile, report)
    if rows:
        update_report(report, rows)
    return 1 if errors else 0


def cmd_demo(args) -> int:
    """Train a tabular learner on a random Markov chain (3 seeds) and print, per checkpoint,
    the sequence KL and the coverage profile Cov_N (median over seeds)."""
    import tempfile

    from covsim.results import read_metrics
    from covsim.sweep import run_sweep

    spec = {
        "experiment": {"name": "demo", "description": "covsim demo"},
        "task": {"kind": "markov", "V": 8, "H": 12, "temperature": 0.5},
        "model": {"kind": "tabular", "init": "random", "init_scale": 2.0},
        "optim": {"name": "adam", "lr": 0.05},
        "train": {
            "steps": 300,
            "batch_size": 32,
            "n_train": 512,
            "eval_every": 30,
            "eval_samples": 4096,
            "Ns": [2, 4, 16, 64, 256, 1024],
        },
        "sweep": {"seeds": 3, "vmap_seeds": True},
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "demo.toml"
        path.write_text(to_toml(spec), "utf-8")
        cfg = load_config(path, None, args.set)
    out = Path(args.out)
    print(
        f"demo: tabular learner (Adam) on a random Markov chain, V={cfg.task.params['V']}, "
        f"H={cfg.task.H}, n={cfg.train.n_train}, {len(cfg.sweep.seeds)} seeds -> {out}",
        flush=True,
    )
    t0 = time.perf_counter()
    run_sweep(cfg, _cell_fn, out, progress=not args.quiet, force=True)
    df = read_metrics(out)
    Ns = list(cfg.train.Ns)
    cols = ["kl", "ce"] + [f"cov@{_n(N)}" for N in Ns]
    med = df.groupby("step")[cols].median()
    head = f"{'step':>6} {'KL':>8} {'CE':>8} " + " ".join(f"{'Cov_' + _n(N):>9}" for N in Ns)
    print(
        "Cov_N = π_D-mass of responses the model under-weights by a factor ≥ N; KL, CE in nats "
        f"(median over seeds, {cfg.train.eval_samples} evaluation samples per checkpoint):"
    )
    print(head)
    for step, r in med.iterrows():
        covs = " ".join(f"{r[f'cov@{_n(N)}']:>9.4f}" for N in Ns)
        print(f"{step:>6} {r['kl']:>8.3f} {r['ce']:>8.3f} {covs}")
    last = med.iloc[-1]
    print(
        f"KL fell {med['kl'].iloc[0] / last['kl']:.0f}-fold; Prop. 3.1 caps Cov_16 at "
        f"KL/(log 16 − 1 + 1/16) = {last['kl'] / (math.log(16) - 1 + 1 / 16):.3f}, measured "
        f"{last['cov@16']:.4f}. ({time.perf_counter() - t0:.0f} s)"
    )
    return 0


#: `covsim coverage`'s default N grid: powers of two, 2 to 65536
COVERAGE_NS = tuple(2**k for k in range(1, 17))
FIGURE_FORMATS = ("png", "pdf", "svg")  # covsim.style.FORMATS (not imported here: matplotlib)


def _parse_Ns(text: str) -> list[float]:
    try:
        Ns = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"--Ns: comma-separated numbers ≥ 1, got {text!r}") from None
    if not Ns or any(not (math.isfinite(v) and v >= 1) for v in Ns):
        raise UsageError(f"--Ns: comma-separated finite numbers ≥ 1, got {text!r}")
    return sorted(set(Ns))


def cmd_coverage(args) -> int:
    """The coverage profile of a (reference, student) pair from their log-prob files."""
    from covsim import plots
    from covsim.fileio import atomic_write_text
    from covsim.logprob_files import coverage_report, read_pair
    from covsim.results import dumps

    Ns = _parse_Ns(args.Ns) if args.Ns else list(COVERAGE_NS)
    if not 0 < args.alpha < 1:
        raise UsageError(f"--alpha: a level in (0, 1), got {args.alpha}")
    ref, student = read_pair(args.ref, args.student)
    rep = coverage_report(ref, student, Ns, alpha=args.alpha)
    name = f"{Path(args.ref).stem}-vs-{Path(args.student).stem}"
    out = Path(args.out) if args.out else Path(RUNS) / "coverage" / name
    level = round(100 * (1 - rep.alpha), 6)
    print(f"{args.student} against reference {args.ref}: n = {rep.n} samples")
    print(f"KL(π_D ‖ π̂) = {rep.kl:.6g} ± {rep.kl_se:.3g} nats (Monte-Carlo mean ± s.e.)")
    print(f"{'N':>8} {'Cov_N':>9} {f'{level:g}% Wilson interval':>24} {'Prop. 3.1 bound':>16}")
    for i, N in enumerate(rep.N):
        bound = f"{min(rep.bound[i], 1.0):.4g}" if N > 1 else "-"
        print(f"{_n(N):>8} {rep.cov[i]:>9.5f}   [{rep.lo[i]:.5f}, {rep.hi[i]:.5f}]    "
              f"{bound:>14}")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--out: cannot write to {out} ({e.strerror or e})") from None
    doc = {"ref": str(args.ref), "student": str(args.student), **rep.to_dict()}
    atomic_write_text(out / "coverage.json", dumps(doc, indent=1) + "\n")
    fig = plots.coverage_pair_figure(rep, f"{Path(args.student).name} vs {Path(args.ref).name}")
    fig_path = plots.save(fig, out / f"profile.{args.format}")
    print(f"-> {out / 'coverage.json'}, {fig_path}")
    return 0


def _n(N: float) -> str:
    return str(int(N)) if float(N).is_integer() else repr(float(N))


# ---------------------------------------------------------------------------------------------
# Argument parsing


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="covsim", description="Simulate the coverage principle (arXiv 2510.15020)."
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.add_argument("--version", action="version", version=f"covsim {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(sp, out_help: str):
        sp.add_argument(
            "config", metavar="CONFIG", help="experiment TOML, or an experiment's name"
        )
        sp.add_argument(
            "--profile", metavar="NAME", help="a [profile.NAME] of the file (default: quick)"
        )
        sp.add_argument("--out", metavar="DIR", help=out_help)
        sp.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="PATH=VALUE",
            help="override a config value, e.g. --set train.steps=200 (repeatable)",
        )
        sp.add_argument(
            "--log",
            metavar="W1,W2",
            help="log writers, replacing [log] writers: jsonl, csv, tensorboard, wandb "
            "(written to [log] dir, default <out>/logs)",
        )

    sp = sub.add_parser("list", help="list claims and experiments")
    sp.set_defaults(fn=cmd_list)

    sp = sub.add_parser("run", help="train one config (all its seeds) into a run directory")
    common(sp, "run directory (default runs/<profile>/<experiment name>)")
    sp.set_defaults(fn=cmd_run)

    sp = sub.add_parser("sweep", help="run the grid over [sweep.axes]; resumes finished cells")
    common(sp, "sweep directory (default runs/<profile>/<experiment name>)")
    sp.add_argument("--executor", choices=EXECUTORS, default="local")
    sp.add_argument("--workers", type=_positive, default=1, metavar="K")
    sp.add_argument("--address", metavar="auto|HOST:PORT",
                    help="--executor ray: the cluster to run on (default: start a local one)")
    sp.add_argument(
        "--force",
        action="store_true",
        help="reuse a directory holding another version of the sweep (redo changed cells)",
    )
    sp.add_argument(
        "--yes", action="store_true", help=f"start a sweep of more than {CONFIRM_CELLS} cells"
    )
    sp.set_defaults(fn=cmd_sweep)

    sp = sub.add_parser("describe", help="parameters of a task, model, optimizer or runner")
    sp.add_argument("name", metavar="NAME", help="e.g. markov, transformer, adam, mle")
    sp.set_defaults(fn=cmd_describe)

    sp = sub.add_parser("plot", help="draw the figures of a run or sweep directory")
    sp.add_argument("dir", metavar="DIR")
    sp.add_argument("--out", metavar="FOLDER", help="default DIR/figures/")
    sp.add_argument("--format", choices=FIGURE_FORMATS,
                    help="the generic figures (step curves, coverage profile) in this format; "
                    "without it a claim's directory gets the claim's own PNG figure")
    sp.set_defaults(fn=cmd_plot)

    sp = sub.add_parser("reproduce", help="run a claim's experiments, draw, print the verdict")
    sp.add_argument("claim", nargs="?", metavar="CLAIM")
    sp.add_argument("--all", action="store_true", help="every registered claim")
    sp.add_argument("--profile", metavar="NAME", default="quick", help="default quick")
    sp.add_argument("--out", default=RUNS, metavar="DIR", help="runs root (default runs/)")
    sp.add_argument("--figures", metavar="FOLDER", help="default RUNS/figures/")
    sp.add_argument("--report", metavar="FILE", help="default RUNS/REPRODUCTION.md")
    sp.add_argument(
        "--update-repo",
        action="store_true",
        help="write figures and report to the checkout's committed figures/ and REPRODUCTION.md",
    )
    sp.add_argument("--executor", choices=EXECUTORS, default="local")
    sp.add_argument("--workers", type=_positive, default=1, metavar="K")
    sp.set_defaults(fn=cmd_reproduce)

    sp = sub.add_parser(
        "coverage",
        help="coverage profile, KL and Prop. 3.1's bound from two log-prob files",
        description="REF holds log π_D(y|x) of samples y drawn from the reference, STUDENT "
        "log π̂(y|x) of the same samples (row by row, or matched by an id column): .npy "
        "((n,) per sequence or (n, T) per token, summed; NaN = padding), .jsonl (\"logp\" or "
        "\"token_logps\", optional \"id\") or .parquet (the same columns). Prints Cov_N with "
        "Wilson intervals, KL with its standard error and Prop. 3.1's bound; writes "
        "coverage.json and the profile figure to --out.",
    )
    sp.add_argument("ref", metavar="REF", help="log-probs under the reference π_D")
    sp.add_argument("student", metavar="STUDENT", help="log-probs under the student π̂")
    sp.add_argument("--Ns", metavar="N1,N2,...", help="thresholds N ≥ 1 (default 2, 4, ..., "
                    "65536)")
    sp.add_argument("--alpha", type=float, default=DEFAULT_ALPHA,
                    help=f"intervals at level 1 − alpha (default {DEFAULT_ALPHA})")
    sp.add_argument("--out", metavar="DIR", help="default runs/coverage/<REF>-vs-<STUDENT>")
    sp.add_argument("--format", choices=FIGURE_FORMATS, default="png", help="figure format")
    sp.set_defaults(fn=cmd_coverage)

    sp = sub.add_parser("demo", help="one-minute demo: coverage profile and KL over training")
    sp.add_argument("--out", default=f"{RUNS}/demo", metavar="DIR")
    sp.add_argument("--set", action="append", default=[], metavar="PATH=VALUE")
    sp.set_defaults(fn=cmd_demo)
    return p


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer ≥ 1, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be an integer ≥ 1, got {v}")
    return v


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _enable_compile_cache()
    from covsim import devices

    devices.use_host_cores()  # a CPU's cores become devices that run_seeds shards seeds over
    from covsim import interrupt
    from covsim.logprob_files import LogprobFileError
    from covsim.outdir import OutputError
    from covsim.results import CorruptResult
    from covsim.sweep import SweepError

    try:
        with interrupt.handled():
            rc = args.fn(args)
            interrupt.check()  # a Ctrl-C swallowed on the way (in a gc callback) still counts
            sys.stdout.flush()  # inside the try: a reader that left shows here, not at exit
        return rc
    except (ConfigError, UsageError, SweepError, OutputError, CorruptResult,
            LogprobFileError) as e:
        msg = " ".join(str(e).split())
        if isinstance(e, SweepError):  # the library's keyword is this command's flag
            msg = msg.replace("force=True", "--force")
        print(msg, file=sys.stderr)
        return 2
    except BrokenPipeError:  # `covsim list | head`: the reader left; stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (KeyboardInterrupt, interrupt.Terminated) as e:
        # finished cells are on disk and the manifest was written on the way out
        print("\ninterrupted; rerun the same command to resume", file=sys.stderr)
        return 130 if isinstance(e, KeyboardInterrupt) else 143


if __name__ == "__main__":
    sys.exit(main())
