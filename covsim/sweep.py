"""Sweeps: grid expansion, executors, and a resumable store that never loses a finished cell.

    cells = expand_grid(cfg.sweep.axes, cfg.sweep.seeds)      # deterministic order and ids
    manifest = run_sweep(cfg, cell_fn, "runs/horizon", executor="process", workers=2)

`cell_fn(cell_cfg, cell) -> RunResult` runs one cell: `cell_cfg` is the config with the cell's
axis values set, `sweep.axes` emptied and `sweep.seeds` = the cell's seeds, so its config.toml
describes that run alone. Keys come from `cell.rng_seed(seed)`, a function of the coordinates
only, never of the execution order.

The store: out_dir/<cell id>/ is a run directory (`covsim.results`), renamed into place only
when complete, with the checksums of its files in done.json; out_dir/manifest.json lists
every cell with its status ("pending", "done", "diverged", "failed") and error, written
atomically when the sweep starts and when it ends (also when interrupted); in between each
finished cell appends a line to out_dir/events.jsonl (`covsim.results.read_manifest` reads
the two together). out_dir/config.toml is the sweep's resolved config. A cell counts as
finished iff its run directory is complete, matches its checksums and its config.toml equals
the cell's config, so a rerun redoes exactly the missing, failed, half-written or corrupted
cells. out_dir is owned and locked (`covsim.outdir`): a second sweep writing to it at the
same time is refused, and so is a directory covsim did not write.
"""

from __future__ import annotations

import functools
import itertools
import json
import multiprocessing
import os
import pickle
import re
import shutil
import sys
import threading
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, as_completed, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from covsim import interrupt, resume
from covsim.checks import check_int
from covsim.config import Config, ConfigError, dump_config, flatten_paths
from covsim.fileio import atomic_write_text, digest, remove_temps
from covsim.log_writers import Writers, run_keys
from covsim.outdir import owned_output, results_bytes
from covsim.results import (
    EVENTS,
    FINISHED,
    MANIFEST,
    PARTIAL_SUFFIX,
    CorruptResult,
    RunResult,
    dumps,
    flatten_record,
    read_manifest,
    to_jsonable,
    verify_run,
    write_run,
)

EXECUTORS = ("local", "process", "ray")

CellFn = Callable[[Config, "Cell"], RunResult]


class SweepError(RuntimeError):
    """The sweep cannot run in this directory (e.g. it holds a different sweep)."""


def _digest(x: Any) -> bytes:
    return digest(to_jsonable(x))


@dataclass(frozen=True)
class Cell:
    """One point of the grid.

    coords: dotted config path -> value, plus "seed" when each cell runs one seed.
    seeds:  the seeds this cell runs (one, or all of them with `vmap_seeds`).
    id:     readable slug + hash of (coords, seeds), e.g. "H16-n_train2000-seed3-1c9e02ab".
    """

    id: str
    coords: dict[str, Any]
    seeds: tuple[int, ...]

    def __hash__(self) -> int:
        return hash(self.id)

    def rng_seed(self, seed: int) -> int:
        """A 31-bit seed for `jax.random.key`, from the axis values and `seed` only.

        The same (axis values, seed) gives the same number whether seeds are split into cells
        or vmapped inside one; different axis values give independent streams.
        """
        if seed not in self.seeds:
            raise ValueError(
                f"argument seed must be one of this cell's seeds {self.seeds}, got {seed}"
            )
        point = {k: v for k, v in self.coords.items() if k != "seed"}
        return int.from_bytes(_digest({"coords": point, "seed": seed})[:4], "little") & 0x7FFFFFFF


def _slug(coords: Mapping[str, Any]) -> str:
    parts = []
    for k, v in coords.items():
        text = str(v).lower() if isinstance(v, bool) else str(v)
        parts.append(k.rsplit(".", 1)[-1] + re.sub(r"[^A-Za-z0-9.+-]", "_", text)[:16])
    return "-".join(parts)[:64] or "run"


def expand_grid(
    axes: Mapping[str, Sequence[Any]], seeds: int | Sequence[int], *, vmap_seeds: bool = False
) -> list[Cell]:
    """The Cartesian product of the axes (in their order, values in order) and the seeds.

    `seeds` is a count n (seeds 0..n-1) or a list of seeds. Seeds vary fastest; with
    `vmap_seeds` there is one cell per axis point, holding all seeds.
    """
    if isinstance(seeds, Sequence):
        seeds = [check_int(f"seeds[{i}]", s, 0) for i, s in enumerate(seeds)]
        if not seeds or len(set(seeds)) < len(seeds):
            raise ValueError(f"argument seeds must be non-empty and without repeats, got {seeds}")
    else:
        seeds = list(range(check_int("seeds", seeds, 1)))
    for name, values in axes.items():
        if len(values) == 0:
            raise ValueError(f"argument axes[{name!r}] is an empty sweep axis")
    names = list(axes)
    groups = [tuple(seeds)] if vmap_seeds else [(s,) for s in seeds]
    cells = []
    for point in itertools.product(*(axes[n] for n in names)):
        for group in groups:
            coords = dict(zip(names, point, strict=True))
            if not vmap_seeds:
                coords["seed"] = group[0]
            h = _digest({"coords": coords, "seeds": group}).hex()[:8]
            cells.append(Cell(f"{_slug(coords)}-{h}", coords, group))
    if len({c.id for c in cells}) < len(cells):
        raise ValueError("argument axes: repeated axis values give repeated cells")
    return cells


def cell_config(cfg: Config, cell: Cell) -> Config:
    """The config of one cell: axis values set, no axes left, the cell's seeds."""
    values = {k: v for k, v in cell.coords.items() if k != "seed"}
    cell_cfg = cfg.with_values({**values, "sweep.axes": {}, "sweep.seeds": list(cell.seeds)})
    return cell_cfg.without_log()  # logging is the driver's, not the cell's


# ---------------------------------------------------------------------------------------------
# Running cells


@dataclass
class Failure:
    error: str  # one line: "ValueError: message (at file.py:12 in fn)"


def in_work_dir(cell_fn: CellFn, out: Path, cfg: Config, cell: Cell,
                work: Path | None = None) -> RunResult:
    """`cell_fn(cfg, cell)` with the cell's work directory (`work`, default the sweep cell's
    under `out`; covsim.resume): its records stream to metrics.jsonl.partial and its progress
    to progress.json as it runs, and with train.checkpoint_every it resumes from its last
    saved state."""
    work = work or resume.work_dir(out, cell.id)
    with resume.cell_work(work, cfg.to_toml(), cell.coords):
        return cell_fn(cfg, cell)


def _call(cell_fn: CellFn, cfg: Config, cell: Cell) -> RunResult | Failure:
    """Run one cell; an exception (not an interrupt) becomes a Failure."""
    try:
        out = cell_fn(cfg, cell)
    except Exception as e:
        return Failure(_error_text(e))
    if not isinstance(out, RunResult):
        return Failure(f"TypeError: cell_fn returned {type(out).__name__}, expected RunResult")
    return out


def _error_text(e: BaseException) -> str:
    text = "".join(traceback.format_exception_only(e)).strip().replace("\n", " | ")
    tb = traceback.extract_tb(e.__traceback__)
    return (
        f"{text} (at {Path(tb[-1].filename).name}:{tb[-1].lineno} in {tb[-1].name})" if tb else text
    )


Jobs = Sequence[tuple[Cell, Config]]


def _local(cell_fn: CellFn, jobs: Jobs, workers: int) -> Iterator[tuple[Cell, RunResult | Failure]]:
    for cell, cfg in jobs:
        yield cell, _call(cell_fn, cfg, cell)


def _worker_init() -> None:
    """In each spawned worker: die with the parent (Linux PR_SET_PDEATHSIG), so a SIGKILLed
    sweep leaves no worker running; leave Ctrl-C to the parent, which cancels and reaps."""
    import signal

    from covsim import devices

    devices.single_thread_worker()  # `workers` processes share the cores, one thread each
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
        if os.getppid() != _PARENT_PID:  # the parent died before prctl took effect
            os._exit(1)


_PARENT_PID = os.getppid()  # in a spawned worker: the sweep's process (module import time)


def _pool(workers: int) -> ProcessPoolExecutor:
    # spawn, not fork: JAX (and its thread pools) is not fork-safe.
    return ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init
    )


def _kill(pool: ProcessPoolExecutor) -> None:
    """Cancel what has not started and end the workers now (an interrupted or finished sweep
    must not leave them computing)."""
    procs = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in procs:
        if proc.is_alive():
            proc.kill()
    for proc in procs:
        proc.join(timeout=5)


def _process(
    cell_fn: CellFn, jobs: Jobs, workers: int
) -> Iterator[tuple[Cell, RunResult | Failure]]:
    """A shared pool of `workers` processes. A worker that dies (segfault, OOM kill) breaks
    the pool for every cell in it; then the cells not yet reported are rerun each in a fresh
    process of its own (`_isolated`), so only the cell that kills its worker fails."""
    pool = _pool(workers)
    left = dict.fromkeys(cell.id for cell, _ in jobs)
    try:
        futures = {pool.submit(_call, cell_fn, cfg, cell): cell for cell, cfg in jobs}
        for f in as_completed(futures):
            try:
                out = f.result()
            except BrokenProcessPool:
                break
            except Exception as e:  # the result could not be unpickled
                out = Failure(_error_text(e))
            del left[futures[f].id]
            yield futures[f], out
    finally:
        _kill(pool)
    if left:
        yield from _isolated(cell_fn, [(c, cfg) for c, cfg in jobs if c.id in left], workers)


def _isolated(
    cell_fn: CellFn, jobs: Jobs, workers: int
) -> Iterator[tuple[Cell, RunResult | Failure]]:
    """Each cell in a one-process pool of its own, at most `workers` at a time."""
    queue, pending = list(jobs)[::-1], {}
    try:
        while queue or pending:
            while queue and len(pending) < workers:
                cell, cfg = queue.pop()
                pool = _pool(1)
                pending[pool.submit(_call, cell_fn, cfg, cell)] = (cell, pool)
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for f in done:
                cell, pool = pending.pop(f)
                try:
                    out = f.result()
                except BrokenProcessPool:
                    out = Failure("WorkerDied: the process running this cell was killed or crashed")
                except Exception as e:
                    out = Failure(_error_text(e))
                _kill(pool)
                yield cell, out
    finally:
        for _, pool in pending.values():
            _kill(pool)


def _ray(
    cell_fn: CellFn, jobs: Jobs, workers: int, address: str | None = None
) -> Iterator[tuple[Cell, RunResult | Failure]]:
    """At most `workers` cells in flight on the Ray cluster this process is connected to, or
    on the one at `address` ("auto": the cluster `ray start` left on this machine;
    "HOST:PORT": a head node), else on a local one started (and stopped) here."""
    ray = _import_ray()
    started = not ray.is_initialized()
    if started:  # workers import what this process can: covsim, the config's plugin folder
        path = os.pathsep.join(p for p in sys.path if p)
        kw = {"address": address} if address else {}
        ray.init(runtime_env={"env_vars": {"PYTHONPATH": path}}, **kw)
    call = ray.remote(_call)
    queue, pending = list(jobs)[::-1], {}
    try:
        while queue or pending:
            while queue and len(pending) < workers:  # at most `workers` cells in flight
                cell, cfg = queue.pop()
                pending[call.remote(cell_fn, cfg, cell)] = cell
            [ref], _ = ray.wait(list(pending), num_returns=1)
            cell = pending.pop(ref)
            try:
                out = ray.get(ref)
            except Exception as e:  # the task or its worker died
                out = Failure(_error_text(e))
            yield cell, out
    finally:  # interrupted or done: cancel what is in flight; stop a cluster we started
        for ref in pending:
            ray.cancel(ref, force=True)
        if started:
            ray.shutdown()


def _import_ray():
    try:
        import ray
    except ImportError as e:
        raise ImportError(
            "executor='ray' needs Ray, which is not installed: pip install 'ray>=2'"
        ) from e
    return ray


_RUNNERS = {"local": _local, "process": _process, "ray": _ray}


# ---------------------------------------------------------------------------------------------
# The store


def _finished_status(run_dir: Path, cfg: Config) -> tuple[str, str | None]:
    """(status, why): 'done'/'diverged' if run_dir is complete, matches its checksums and was
    written for exactly this config; else 'pending', with the reason when the directory is
    there but corrupt (so the caller can say it is redone)."""
    if not run_dir.exists():
        return "pending", None
    try:
        verify_run(run_dir)
    except CorruptResult as e:
        return "pending", str(e)
    if (run_dir / "config.toml").read_text("utf-8") != cfg.to_toml():
        return "pending", None  # another version of the cell (force): redone, not corrupt
    summary = json.loads((run_dir / "summary.json").read_text("utf-8"))
    return ("diverged" if summary["diverged"] else "done"), None


def _previous_hash(out: Path, marker: dict[str, Any] | None) -> str | None:
    """The config hash of the sweep already in `out`: the marker's, or (a directory written
    before markers) the manifest's; None if there is none or it cannot be read."""
    if marker is not None and marker.get("config_hash"):
        return marker["config_hash"]
    try:
        return read_manifest(out).get("config_hash")
    except (OSError, CorruptResult):
        return None


def sweep_bytes(cfg: Config, cells: Sequence[Cell]) -> int:
    """Estimated bytes of the results of `cells` (one record per evaluation and seed; see
    `covsim.outdir.results_bytes`)."""
    t = cfg.train
    evals = t.n_steps // t.eval_every + 1 if t is not None and t.eval_every else 1
    thresholds = len(t.Ns) + len(t.pass_at) if t is not None else 0
    records = evals * sum(len(c.seeds) for c in cells)
    return results_bytes(records, thresholds, len(cells))


def run_sweep(
    cfg: Config,
    cell_fn: CellFn,
    out_dir: str | Path,
    *,
    executor: str = "local",
    workers: int = 1,
    progress: bool = True,
    force: bool = False,
    address: str | None = None,
) -> dict[str, Any]:
    """Run every cell of `cfg`'s grid that is not finished in `out_dir`; return the manifest.

    executor: "local" (this process, one cell at a time), "process" (`workers` spawned
    processes; `cell_fn` must be a picklable module-level function) or "ray" (at most
    `workers` cells in flight on the current Ray cluster, or the one at `address`). A cell
    whose `cell_fn` raises is recorded as "failed" with its error, one returning
    `diverged=True` as "diverged"; the others go on. Failed and pending cells are retried by
    a rerun; done/diverged are kept, if their files still match their checksums (a corrupt
    cell is redone; the manifest's "redone_corrupt" maps its id to what was wrong).

    `out_dir` must be new, empty, or a sweep of the same experiment (`covsim.outdir`); it is
    locked while the sweep runs (a second writer gets OutputError). One holding a different
    version of the sweep (config hash) is refused unless `force`: then cells whose config is
    unchanged are kept and the others redone (run dirs of cells no longer in the grid stay on
    disk but leave the manifest, so readers ignore them).
    """
    if executor not in EXECUTORS:
        raise ValueError(f"argument executor must be one of {EXECUTORS}, got {executor!r}")
    workers = check_int("workers", workers, 1)
    if executor == "local" and workers != 1:
        raise ValueError(f"argument workers must be 1 with executor='local', got {workers}")
    if executor == "process":
        try:
            pickle.dumps(cell_fn)
        except Exception as e:
            raise TypeError(
                f"argument cell_fn must be picklable (a module-level function) for "
                f"executor='process': {e}"
            ) from None
    if executor == "ray":
        _import_ray()
    elif address is not None:
        raise ValueError(f"argument address is for executor='ray', got executor={executor!r}")

    cells = expand_grid(cfg.sweep.axes, cfg.sweep.seeds, vmap_seeds=cfg.sweep.vmap_seeds)
    cfgs = {}
    for c in cells:  # every cell is validated before anything runs or is written
        try:
            cfgs[c.id] = cell_config(cfg, c)
        except ConfigError as e:
            raise ConfigError(f"cell {c.id}: {e}") from None

    config_hash = cfg.digest()
    name = cfg.experiment.name
    need = sweep_bytes(cfg, cells)

    def same_sweep(out: Path, marker: dict[str, Any] | None) -> None:
        prev = _previous_hash(out, marker) if marker is not None else None
        if prev is not None and prev != config_hash and not force:
            raise SweepError(
                f"{out} holds a different sweep (experiment {name!r}, config hash "
                f"{prev[:12]} ≠ {config_hash[:12]}); use another out_dir or force=True to redo the "
                "cells whose config changed"
            )

    with owned_output(
        out_dir, "sweep", name, config_hash=config_hash, need_bytes=need, accept=same_sweep
    ) as out:
        run = _RUNNERS[executor]
        if address is not None:
            run = functools.partial(run, address=address)
        with open_writers(cfg, out) as writers:
            cell_fn = functools.partial(in_work_dir, cell_fn, out.absolute())
            return _run_cells(cfg, config_hash, cells, cfgs, cell_fn, out, run, workers,
                              progress, writers)


def open_writers(cfg: Config, out: Path) -> Writers:
    """The log writers of cfg's [log] (none without one), logging under log.dir or out/logs;
    the sweep axes (and "seed") are the runs' coordinates, not scalars."""
    log = cfg.log
    if log is None or not log.writers:
        return Writers((), out)
    coords = [*cfg.sweep.axes, "seed"]
    return Writers(log.writers, Path(log.dir) if log.dir else out / "logs",
                   experiment=cfg.experiment.name, coords=coords,
                   wandb_project=log.wandb_project, wandb_mode=log.wandb_mode,
                   config=_flat_config(cfg.without_log()))


def _flat_config(cfg: Config) -> dict[str, Any]:
    """The config as {dotted path: value} (a W&B run's config)."""
    d = {k: v for k, v in cfg.to_dict().items() if k != "sweep"}
    return {".".join(segs): to_jsonable(v) for segs, v in flatten_paths(d)}


def log_cell(writers: Writers, cell: Cell, records: Sequence[Mapping[str, Any]]) -> None:
    """Send a finished cell's records to the writers (one learner per seed). A writer that
    fails is reported on stderr and dropped; the cell's results are already on disk."""
    if not writers.writers:
        return
    flat = [flatten_record({**cell.coords, **r}) for r in records]
    for run, recs in run_keys(cell.id, flat, one_seed=len(cell.seeds) == 1).items():
        for err in writers.log(run, recs):
            print(f"log writer dropped: {err}", file=sys.stderr, flush=True)


def _run_cells(
    cfg, config_hash, cells, cfgs, cell_fn, out, run, workers, progress, writers
) -> dict[str, Any]:
    remove_temps(out)
    corrupt = {}
    entries = {}  # the manifest's cell entries, updated in place as cells finish
    for c in cells:
        status, why = _finished_status(out / c.id, cfgs[c.id])
        if why is not None:
            corrupt[c.id] = why
        entries[c.id] = {
            "id": c.id,
            "coords": c.coords,
            "seeds": list(c.seeds),
            "status": status,
            "error": None,
        }
    manifest = {
        "version": 2,
        "experiment": cfg.experiment.name,
        "config_hash": config_hash,
        "cells": list(entries.values()),
    }
    if corrupt:
        manifest["redone_corrupt"] = corrupt
    dump_config(cfg, out / "config.toml")
    # manifest.json is written here and when the sweep ends; in between each finished cell
    # appends one line to events.jsonl (I/O per cell independent of the sweep's size).
    _write_manifest(out, manifest)

    todo = [(c, cfgs[c.id]) for c in cells if entries[c.id]["status"] not in FINISHED]
    for c in cells:  # work directories: of finished cells, gone; of the others, kept to resume
        work = resume.work_dir(out, c.id)
        if work.is_dir():
            if entries[c.id]["status"] in FINISHED:
                shutil.rmtree(work)
            else:  # the progress of a run that is not running (bars appear when it starts)
                (work / resume.PROGRESS).unlink(missing_ok=True)
    bar = tqdm(
        total=len(cells),
        initial=len(cells) - len(todo),
        desc=cfg.experiment.name,
        unit="cell",
        disable=not progress,
    )
    failed = 0
    step_bars = StepBars(out, [c.id for c, _ in todo], progress)
    try:
        with step_bars, open(out / EVENTS, "a", encoding="utf-8") as events:
            for cell, res in run(cell_fn, todo, workers):
                e = entries[cell.id]
                if isinstance(res, RunResult):
                    try:
                        write_run(out / cell.id, cfgs[cell.id], res, cell.coords)
                        e["status"], e["error"] = ("diverged" if res.diverged else "done"), None
                    except (TypeError, ValueError) as err:  # the result breaks the contract
                        res = Failure(_error_text(err))
                    else:
                        shutil.rmtree(resume.work_dir(out, cell.id), ignore_errors=True)
                        log_cell(writers, cell, res.records)
                if isinstance(res, Failure):
                    e["status"], e["error"] = "failed", res.error
                    failed += 1
                events.write(dumps({"id": cell.id, "status": e["status"], "error": e["error"]}))
                events.write("\n")
                events.flush()
                os.fsync(events.fileno())
                bar.update()
                if failed:
                    bar.set_postfix(failed=failed)
                interrupt.check()  # a Ctrl-C swallowed inside a cell stops the sweep here
    finally:
        bar.close()
        _write_manifest(out, manifest)  # also when interrupted: what finished is recorded
    return manifest


class StepBars:
    """While entered, a tqdm bar per running cell (steps done / total, steps/s, ETA), from
    the progress.json of its work directory (`<id>.partial/` under `parent`, for the ids in
    `ids`), polled by a thread: the cells may run in this process, in worker processes or on
    Ray workers that share the file system. A bar appears when its cell writes progress and
    goes when the cell's steps are done. One directory listing per poll, so the cost does
    not grow with the cells that are not running."""

    def __init__(self, parent: Path, ids: Sequence[str], enabled: bool = True,
                 interval_s: float = 0.5):
        self.parent, self.ids, self.enabled = Path(parent), set(ids), enabled
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._bars: dict[str, tqdm] = {}
        self._done: set[str] = set()  # cells whose steps are all done: no bar again
        self._thread = None

    def __enter__(self) -> StepBars:
        if self.enabled and self.ids:
            self._thread = threading.Thread(target=self._run, name="covsim-step-bars",
                                            daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        for bar in self._bars.values():
            bar.close()
        self._bars.clear()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.poll()

    def poll(self) -> None:
        """Bring the bars up to date once."""
        seen = {}
        try:
            entries = list(os.scandir(self.parent))
        except OSError:
            entries = []
        for entry in entries:
            cid = entry.name.removesuffix(PARTIAL_SUFFIX)
            if cid != entry.name and cid in self.ids and cid not in self._done:
                seen[cid] = resume.read_progress(Path(entry.path))
        for cid in set(self._bars) | set(seen):
            p, bar = seen.get(cid), self._bars.get(cid)
            if p is None or p["step"] >= p["total"]:
                if bar is not None:
                    bar.close()
                    del self._bars[cid]
                if p is not None:
                    self._done.add(cid)
            elif bar is None:
                self._bars[cid] = tqdm(total=p["total"], initial=p["step"], unit="step",
                                       desc=cid[:32], leave=False)
            elif p["step"] > bar.n:
                bar.update(p["step"] - bar.n)


def _write_manifest(out: Path, manifest: dict[str, Any]) -> None:
    """manifest.json atomically, then the events it now contains are dropped."""
    atomic_write_text(out / MANIFEST, dumps(manifest, indent=1) + "\n")
    (out / EVENTS).unlink(missing_ok=True)
