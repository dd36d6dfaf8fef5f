"""Owned output directories: covsim writes only where it may, one writer at a time.

    with owned_output("runs/quick/horizon", "sweep", "horizon", config_hash=h) as out:
        ...                                   # compute, then write results under `out`

Before any compute, `owned_output` makes sure that

* the path is a new or empty directory, or one whose marker (`.covsim.json`: kind, experiment,
  config hash) says it holds the same kind of result ("run", "sweep") of the same experiment;
  a directory covsim did not write, a file, or another kind or experiment is refused
  (`OutputError`, one line naming the path). Run and sweep directories written before markers
  existed are recognised by their files;
* no other process writes there: an advisory `fcntl.flock` on `.covsim.lock`, held until the
  block ends (the kernel drops it when the process dies, so a killed run leaves no stale lock);
  a second writer is refused with the holder's pid;
* the directory is writable (the marker is written, fsynced, before compute) and has the free
  space the caller estimates it needs.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from covsim.fileio import TMP_PREFIX, atomic_write_text
from covsim.results import RUN_FILES

MARKER = ".covsim.json"
LOCK = ".covsim.lock"
KINDS = ("run", "sweep")
_BOOKKEEPING = (MARKER, LOCK)


class OutputError(ValueError):
    """covsim may not write to this output path (one line, exit 2)."""


def read_marker(path: str | Path) -> dict[str, Any] | None:
    """The marker of an output directory: {"kind", "experiment", "config_hash"}, or None when
    there is none; a legacy run/sweep directory (no marker) is described from its files."""
    p = Path(path)
    m = p / MARKER
    if m.is_file():
        try:
            marker = json.loads(m.read_text("utf-8"))
            if not isinstance(marker, dict) or marker.get("kind") not in KINDS:
                raise ValueError("not a covsim marker")
        except (ValueError, UnicodeDecodeError) as e:
            raise OutputError(
                f"{m}: unreadable covsim marker ({' '.join(str(e).split())}); if this is "
                "covsim's output, delete the marker to let covsim recognise it from its files"
            ) from None
        return marker
    if (p / "manifest.json").is_file() and (p / "config.toml").is_file():
        return {"kind": "sweep", "experiment": _experiment_of(p), "config_hash": None}
    if all((p / f).is_file() for f in RUN_FILES):
        return {"kind": "run", "experiment": _experiment_of(p), "config_hash": None}
    return None


def _experiment_of(p: Path) -> str | None:
    # the raw TOML, not results.read_config: a directory written by an older covsim must be
    # recognised even when its config no longer validates against today's schema
    try:
        return tomllib.loads((p / "config.toml").read_text("utf-8"))["experiment"]["name"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _foreign_entries(p: Path) -> list[str]:
    names = (e.name for e in p.iterdir())
    return sorted(n for n in names if n not in _BOOKKEEPING and not n.startswith(TMP_PREFIX))


@contextlib.contextmanager
def owned_output(
    path: str | Path,
    kind: str,
    experiment: str,
    *,
    config_hash: str | None = None,
    need_bytes: int = 0,
    accept: Callable[[Path, dict[str, Any] | None], None] | None = None,
) -> Iterator[Path]:
    """Claim `path` for a `kind` result of `experiment` and hold its lock for the block.

    `accept(path, marker found there or None)`, called under the lock, may raise to refuse
    (e.g. another version of the sweep); only then is the marker rewritten with
    `config_hash`, and the block runs."""
    if kind not in KINDS:
        raise ValueError(f"argument kind must be one of {KINDS}, got {kind!r}")
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise OutputError(f"{p} is a file, not a {kind} directory; choose another --out")
    created = not p.exists()
    try:
        p.mkdir(parents=True, exist_ok=True)
        new_lock = not (p / LOCK).exists()
        fd = os.open(p / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise OutputError(f"{p}: cannot write there ({e.strerror or e})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
            raise OutputError(
                f"{p} is in use by another covsim process (pid {holder}); wait for it to "
                "finish or choose another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            previous = _check_owner(p, kind, experiment)
            if accept is not None:
                accept(p, previous)
            free = shutil.disk_usage(p).free
            if free < need_bytes:
                raise OutputError(
                    f"{p}: {free / 2**20:.1f} MiB free, the results need about "
                    f"{need_bytes / 2**20:.1f} MiB; free space or choose another --out"
                )
            marker = {"kind": kind, "experiment": experiment, "config_hash": config_hash}
            try:
                atomic_write_text(p / MARKER, json.dumps(marker, indent=1) + "\n")
            except OSError as e:
                raise OutputError(f"{p}: cannot write there ({e.strerror or e})") from None
        except BaseException:  # refused: leave the directory as it was found
            if new_lock:
                (p / LOCK).unlink(missing_ok=True)
            if created:
                with contextlib.suppress(OSError):
                    p.rmdir()
            raise
        yield p
    finally:
        os.close(fd)  # releases the lock


def _check_owner(p: Path, kind: str, experiment: str) -> dict[str, Any] | None:
    marker = read_marker(p)
    if marker is None:
        foreign = _foreign_entries(p)
        if foreign:
            shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
            raise OutputError(
                f"{p} is not empty and was not written by covsim (holds {shown}); covsim writes "
                "only into a new or empty directory or one it wrote; choose another --out"
            )
        return None
    if marker["kind"] != kind or marker.get("experiment") != experiment:
        raise OutputError(
            f"{p} holds a {marker['kind']} of experiment {marker.get('experiment')!r}; a "
            f"{kind} of {experiment!r} is written only into a new or empty directory or one "
            f"holding a {kind} of the same experiment; choose another --out"
        )
    return marker


def results_bytes(n_records: int, n_thresholds: int, n_runs: int = 1) -> int:
    """A generous estimate of the disk bytes of `n_runs` run directories holding `n_records`
    metric records (JSON lines with `n_thresholds` N-keyed values each): 1 MiB, 24 KiB a run
    directory (five small files, a filesystem block each), 400 + 120·n_thresholds a record."""
    return 2**20 + n_runs * 24 * 2**10 + n_records * (400 + 120 * n_thresholds)
