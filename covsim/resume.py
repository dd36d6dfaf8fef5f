"""A running cell's work directory: its records so far, its progress, its resumable state.

    with cell_work(work_dir(out, cell.id), cell_cfg.to_toml(), cell.coords):   # the driver
        result = cell_fn(cell_cfg, cell)            # the runner reads current()

`<out>/<cell id>.partial/` (a sweep cell) or `<run dir>/run.partial/` (`covsim run`) holds

    config.toml             the cell's config: a work directory of another config is cleared
    metrics.jsonl.partial   one line per checkpoint evaluated so far, in metrics.jsonl's format,
                            appended and fsynced as each segment ends (`covsim.results.
                            read_metrics(..., partial=True)` reads it; a torn last line is
                            skipped). `diverged_step` there is the run's so far.
    progress.json           {"step", "total", "time"}: the sweep's progress bars read it
    state-<stage>/          orbax checkpoints of the trainer state (parameters, optimizer state,
                            data position, PRNG key, the evaluations so far) every
                            `train.checkpoint_every` steps and at the stage's end; the latest
                            one only

The finished cell still appears atomically as its run directory; the driver then deletes the
work directory. A cell started again with the same config continues from its latest state
(`covsim.train.run_seeds`' `store`) and writes the same bytes as a run never interrupted.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from covsim.fileio import atomic_write_text
from covsim.results import PARTIAL_RECORDS, PARTIAL_SUFFIX, dumps

PROGRESS = "progress.json"

_current: contextvars.ContextVar[CellWork | None] = contextvars.ContextVar("cell_work",
                                                                          default=None)


def work_dir(out: str | Path, cell_id: str | None = None) -> Path:
    """The work directory of sweep cell `cell_id` in sweep directory `out`, or (no id) of the
    run in run directory `out`."""
    return Path(out) / (f"{cell_id}{PARTIAL_SUFFIX}" if cell_id else f"run{PARTIAL_SUFFIX}")


def current() -> CellWork | None:
    """The work directory of the cell this code runs in (None outside a driver's cell)."""
    return _current.get()


@contextlib.contextmanager
def cell_work(directory: str | Path, config_text: str,
              coords: Mapping[str, Any] | None = None) -> Iterator[CellWork]:
    """Run a cell with `directory` as its work directory (`current()` inside)."""
    work = CellWork(Path(directory), config_text, coords)
    token = _current.set(work)
    try:
        yield work
    finally:
        _current.reset(token)
        work.close()


class CellWork:
    """One cell's work directory (see the module docstring)."""

    def __init__(self, directory: Path, config_text: str, coords: Mapping[str, Any] | None):
        self.directory = directory
        self.coords = dict(coords or {})
        cfg_file = directory / "config.toml"
        if directory.exists() and (not cfg_file.is_file()
                                   or cfg_file.read_text("utf-8") != config_text):
            shutil.rmtree(directory)  # another version of the cell: its state is not ours
        directory.mkdir(parents=True, exist_ok=True)
        if not cfg_file.is_file():
            atomic_write_text(cfg_file, config_text)
        self._started = False  # records written by this process yet
        self._stores: list[StageStore] = []

    def add_records(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Append records (the sweep coordinates put in front, as metrics.jsonl has them),
        fsynced. The first call of a process replaces the file (atomically): a resumed cell
        first hands over every checkpoint its restored state holds."""
        text = "".join(dumps({**self.coords, **r}) + "\n" for r in records)
        path = self.directory / PARTIAL_RECORDS
        if not self._started:
            atomic_write_text(path, text)
            self._started = True
            return
        with open(path, "a", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    def progress(self, step: int, total: int) -> None:
        atomic_write_text(self.directory / PROGRESS,
                          json.dumps({"step": int(step), "total": int(total),
                                      "time": time.time()}))

    def store(self, stage: str, every: int) -> StageStore:
        """Where stage `stage` keeps its state every `every` steps."""
        self._stores.append(StageStore(self.directory / f"state-{stage}", every))
        return self._stores[-1]

    def close(self) -> None:
        for st in self._stores:
            st.close()


def read_progress(directory: Path) -> dict[str, Any] | None:
    """A work directory's progress.json, or None (not there yet, gone, or being replaced)."""
    try:
        p = json.loads((directory / PROGRESS).read_text("utf-8"))
        return p if isinstance(p, dict) and {"step", "total"} <= set(p) else None
    except (OSError, ValueError):
        return None


class StageStore:
    """A stage's trainer state in orbax checkpoints (`covsim.train.StateStore`): the
    tree's leaves by position, the latest checkpoint kept. Orbax commits a checkpoint by
    renaming a finished temporary directory, so a kill during a save leaves the previous
    one; one that cannot be restored (or no longer matches the run's shapes) is reported on
    stderr and the stage starts afresh: time is lost, never a wrong number read."""

    def __init__(self, directory: Path, every: int):
        self.directory, self.every = Path(directory), int(every)
        self._manager = None

    def _mgr(self):
        if self._manager is None:
            import orbax.checkpoint as ocp

            opts = ocp.CheckpointManagerOptions(max_to_keep=1, create=True,
                                                enable_async_checkpointing=False)
            self._manager = ocp.CheckpointManager(self.directory.absolute(), options=opts)
        return self._manager

    def restore(self, template: dict) -> tuple[int, dict] | None:
        if not self.directory.is_dir():
            return None
        import orbax.checkpoint as ocp

        leaves, treedef = jax.tree.flatten(template)
        try:
            mgr = self._mgr()
            step = mgr.latest_step()
            if step is None:
                return None
            # orbax refuses zero-size arrays (e.g. no Pass@N): those come from the template
            target = {f"{i:05d}": np.asarray(a) for i, a in enumerate(leaves) if np.size(a)}
            got = mgr.restore(step, args=ocp.args.StandardRestore(target))
            restored = [np.asarray(got[f"{i:05d}"]) if np.size(a) else np.asarray(a)
                        for i, a in enumerate(leaves)]
            for i, (a, b) in enumerate(zip(restored, leaves, strict=True)):
                b = np.asarray(b)
                if a.shape != b.shape or a.dtype != b.dtype:
                    raise ValueError(f"leaf {i} is {a.dtype}{a.shape}, the run has "
                                     f"{b.dtype}{b.shape}")
        except Exception as e:  # noqa: BLE001 (any failure: start afresh, say why)
            print(f"covsim: cannot resume from {self.directory} "
                  f"({' '.join(str(e).split())[:200]}); starting this stage afresh",
                  file=sys.stderr, flush=True)
            self.close()
            shutil.rmtree(self.directory, ignore_errors=True)
            return None
        cell = self.directory.parent.name.removesuffix(PARTIAL_SUFFIX)
        print(f"covsim: {cell}: resuming {self.directory.name} after {step} evaluation(s)",
              file=sys.stderr, flush=True)
        return int(step), jax.tree.unflatten(treedef, restored)

    def save(self, done: int, tree: dict) -> None:
        import orbax.checkpoint as ocp

        leaves = jax.tree.leaves(tree)
        flat = {f"{i:05d}": np.asarray(a) for i, a in enumerate(leaves) if np.size(a)}
        mgr = self._mgr()
        mgr.save(int(done), args=ocp.args.StandardSave(flat), force=True)
        mgr.wait_until_finished()

    def close(self) -> None:
        if self._manager is not None:
            self._manager.close()
            self._manager = None
