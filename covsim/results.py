"""The on-disk contract: run directories, their JSON, and pandas readers.

A run directory holds

    config.toml     the resolved config of the run
    metrics.jsonl   one JSON object per evaluation: step, seed, sweep coordinates (by dotted
                    config path, e.g. "task.H", and "seed"), kl, ce, cov {N: value},
                    pass_at {N: value}, and whatever else was measured
    summary.json    {"coords": {...}, "diverged": bool, "diverged_step": int | null,
                     "summary": {...}}

    done.json       written last: {"version": 1, "files": {name: sha256 hex}} of every other
                    file of the run. A run directory without it is incomplete; one whose files
                    do not match it is corrupt (`CorruptResult`): readers refuse both, never
                    reading them as data, and a sweep redoes them.

A sweep directory holds one run directory per cell (named by the cell id), manifest.json and
events.jsonl (see `covsim.sweep`; `read_manifest` reads both). A new run directory is written
under a temp name and renamed into place; an existing one is updated file by file between
removing and rewriting done.json, so files covsim did not write are never deleted. Temp names
start with `TMP_PREFIX`.

JSON has no inf/nan: they are written as the strings "inf", "-inf", "nan" and read back as
floats (so those three strings are reserved: a string value "inf" reads back as a float).
Mapping keys are strings in JSON; keys of the N-keyed mappings (`N_KEYED`: cov, cov_lo, cov_hi,
cov_final, cov_ttt, pass_at) are written as numbers ("16", "5.7") and read back as int (if
integral) or float. Readers flatten them to columns "cov@16", "cov_lo@16", "cov_final@16",
"pass@4"; other mappings to "name.key".
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import secrets
import shutil
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from covsim.checks import check_int
from covsim.config import Config, load_config
from covsim.fileio import TMP_PREFIX, atomic_write_text, write_synced

if TYPE_CHECKING:
    import pandas as pd

RUN_FILES = ("config.toml", "metrics.jsonl", "summary.json")
DONE = "done.json"  # the checksums of a finished run directory, written last
MANIFEST = "manifest.json"
EVENTS = "events.jsonl"  # a sweep's append-only log of finished cells since manifest.json
FINISHED = ("done", "diverged")  # manifest statuses of cells whose run directory is current
# a running cell's work directory (covsim.resume) and the records it has streamed so far
PARTIAL_SUFFIX = ".partial"
PARTIAL_RECORDS = "metrics.jsonl.partial"
# Mappings keyed by a threshold N (train's records: cov with its interval, pass_at) -> column prefix
N_KEYED = {"cov": "cov@", "cov_lo": "cov_lo@", "cov_hi": "cov_hi@", "cov_final": "cov_final@",
           "cov_ttt": "cov_ttt@", "pass_at": "pass@"}
_NONFINITE = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}


@dataclass
class RunResult:
    """What a run returns: one record per evaluation, a summary, and whether it diverged."""

    records: list[dict[str, Any]]
    summary: dict[str, Any] = field(default_factory=dict)
    diverged: bool = False
    diverged_step: int | None = None
    files: dict[str, bytes] = field(default_factory=dict)  # extra artifacts (checkpoints, ...)

    def __post_init__(self):
        if not isinstance(self.records, list) or not all(
            isinstance(r, Mapping) for r in self.records
        ):
            raise TypeError("argument records must be a list of dicts")
        if not isinstance(self.summary, Mapping):
            raise TypeError(f"argument summary must be a dict, got {type(self.summary).__name__}")
        if not isinstance(self.diverged, bool | np.bool_):
            raise TypeError(f"argument diverged must be a bool, got {self.diverged!r}")
        if self.diverged_step is not None:
            check_int("diverged_step", self.diverged_step, 0)
            if not self.diverged:
                raise ValueError("argument diverged_step must be None when diverged is False")
        for name, data in self.files.items():
            if name in (*RUN_FILES, DONE) or "/" in name or name.startswith("."):
                raise ValueError(f"argument files: {name!r} is not an allowed artifact name")
            if not isinstance(data, bytes):
                raise TypeError(f"argument files: {name!r} must be bytes")


# ---------------------------------------------------------------------------------------------
# JSON encoding


def n_key(N: Any) -> str:
    """The text of a threshold N: "16" for 16, 16.0 or "16.0"; "5.7" for 5.7."""
    try:
        v = float(N)
    except (TypeError, ValueError):
        raise ValueError(f"a threshold N must be a number, got {N!r}") from None
    return str(int(v)) if v.is_integer() else repr(v)


def _n_from_key(k: str) -> int | float:
    v = float(k)
    return int(v) if v.is_integer() else v


def to_jsonable(x: Any, key: str | None = None) -> Any:
    """Plain JSON data: numpy/JAX values to Python, non-finite floats to "inf"/"-inf"/"nan".

    `key` is the name `x` is stored under: an N-keyed mapping gets its keys as `n_key(N)`.
    """
    if isinstance(x, Mapping):
        num = key in N_KEYED
        return {
            (n_key(k) if num or _is_number(k) else str(k)): to_jsonable(v, str(k))
            for k, v in x.items()
        }
    if isinstance(x, list | tuple):
        return [to_jsonable(v) for v in x]
    if x is None or isinstance(x, str):
        return x
    if isinstance(x, bool | np.bool_):
        return bool(x)
    if isinstance(x, int | np.integer):
        return int(x)
    if isinstance(x, np.floating) and x.dtype != np.float64:
        x = float(str(x))  # the shortest text of the value in its own precision: float32 "0.1"
    if isinstance(x, float | np.floating):
        x = float(x)
        return x if math.isfinite(x) else ("nan" if math.isnan(x) else "inf" if x > 0 else "-inf")
    if hasattr(x, "__array__"):  # numpy / JAX arrays: nested lists of scalars
        a = np.asarray(x)
        return to_jsonable(a[()]) if a.ndim == 0 else [to_jsonable(v) for v in a]
    raise TypeError(f"cannot write {type(x).__name__} value {x!r} to JSON")


def _is_number(k: Any) -> bool:
    return isinstance(k, int | float | np.integer | np.floating) and not isinstance(k, bool)


def from_jsonable(x: Any, key: str | None = None) -> Any:
    """Inverse of `to_jsonable`: "inf"/"-inf"/"nan" back to floats, N keys back to numbers."""
    if isinstance(x, dict):
        num = key in N_KEYED
        return {(_n_from_key(k) if num else k): from_jsonable(v, k) for k, v in x.items()}
    if isinstance(x, list):
        return [from_jsonable(v) for v in x]
    if isinstance(x, str) and x in _NONFINITE:
        return _NONFINITE[x]
    return x


def dumps(x: Any, indent: int | None = None) -> str:
    """Strict JSON text of `x` (via `to_jsonable`), key order kept."""
    sep = (",", ":") if indent is None else (",", ": ")
    return json.dumps(
        to_jsonable(x), indent=indent, separators=sep, allow_nan=False, ensure_ascii=False
    )


class CorruptResult(ValueError):
    """A result file on disk is incomplete, unreadable or changed since covsim wrote it."""


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_run(
    run_dir: str | Path, cfg: Config, result: RunResult, coords: Mapping[str, Any] | None = None
) -> None:
    """Write a run directory: config.toml, metrics.jsonl, summary.json, the artifacts, and
    last done.json with their checksums.

    `coords` (the sweep coordinates) are put at the front of every record and in summary.json;
    a record that already holds one of them must agree. A new `run_dir` is filled under a temp
    name and renamed into place (atomic). An existing one is updated in place: done.json is
    removed first (so a crash leaves it incomplete, never a mix read as data), each file is
    replaced atomically, artifacts of the previous run that this one lacks are removed, and
    done.json is written again; any other file in it is left alone.
    """
    run_dir = Path(run_dir)
    coords = dict(coords or {})
    lines = []
    for i, rec in enumerate(result.records):
        for k in ("step", "seed"):
            if k not in rec and k not in coords:
                raise ValueError(
                    f"argument result: record {i} has no {k!r} (the contract needs it)"
                )
        for k, v in coords.items():
            if k in rec and to_jsonable(rec[k]) != to_jsonable(v):
                raise ValueError(
                    f"argument result: record {i} has {k}={rec[k]!r}, its cell has {v!r}"
                )
        lines.append(dumps({**coords, **rec}) + "\n")
    summary = {
        "coords": coords,
        "diverged": bool(result.diverged),
        "diverged_step": result.diverged_step,
        "summary": result.summary,
    }
    texts = (cfg.to_toml(), "".join(lines), dumps(summary, indent=2) + "\n")
    files = {n: t.encode("utf-8") for n, t in zip(RUN_FILES, texts, strict=True)}
    files |= result.files
    done = dumps({"version": 1, "files": {n: sha256(b) for n, b in files.items()}}, indent=1)

    if run_dir.exists():
        _update_run(run_dir, files, done + "\n")
        return
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = run_dir.parent / f"{TMP_PREFIX}{run_dir.name}-{secrets.token_hex(4)}"
    try:
        tmp.mkdir()
        for name, data in files.items():
            write_synced(tmp / name, data)
        write_synced(tmp / DONE, done + "\n")
        os.replace(tmp, run_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _update_run(run_dir: Path, files: Mapping[str, bytes], done: str) -> None:
    if not run_dir.is_dir():
        raise ValueError(f"argument run_dir: {run_dir} exists and is not a directory")
    try:
        old = set(json.loads((run_dir / DONE).read_text("utf-8"))["files"])
    except (OSError, ValueError, KeyError, TypeError):
        old = set()
    (run_dir / DONE).unlink(missing_ok=True)
    for name, data in files.items():
        atomic_write_text(run_dir / name, data)
    for name in old - set(files) - set(RUN_FILES):  # the previous run's artifacts
        if "/" not in name and not name.startswith("."):
            (run_dir / name).unlink(missing_ok=True)
    atomic_write_text(run_dir / DONE, done)


def verify_run(run_dir: str | Path) -> dict[str, str]:
    """Check a run directory against its done.json; return {file: sha256}. Raises
    CorruptResult naming the directory and what is wrong (incomplete, unreadable, changed)."""
    p = Path(run_dir)
    if not p.is_dir():
        raise CorruptResult(f"{p}: missing (no run directory)")
    try:
        sums = json.loads((p / DONE).read_text("utf-8"))["files"]
        if not isinstance(sums, dict) or not set(RUN_FILES) <= set(sums):
            raise ValueError("it does not list the run's files")
    except FileNotFoundError:
        raise CorruptResult(f"{p}: incomplete (no {DONE}; the run did not finish)") from None
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise CorruptResult(f"{p}/{DONE}: unreadable ({' '.join(str(e).split())})") from None
    for name, want in sums.items():
        try:
            got = sha256((p / name).read_bytes())
        except OSError:
            raise CorruptResult(f"{p}: {name} is missing") from None
        if got != want:
            raise CorruptResult(
                f"{p}: {name} was changed after covsim wrote it (checksum mismatch)"
            )
    return sums


# ---------------------------------------------------------------------------------------------
# Readers


@dataclass
class Run:
    """A run directory read back: the config as a TOML dict, the result, the coordinates."""

    config: dict[str, Any]
    result: RunResult
    coords: dict[str, Any]


def read_run(run_dir: str | Path) -> Run:
    """A verified run directory read back (CorruptResult if it is incomplete or changed)."""
    p = Path(run_dir)
    verify_run(p)
    s = _read_json(p / "summary.json")
    result = RunResult(
        records=read_records(p),
        summary=s["summary"],
        diverged=s["diverged"],
        diverged_step=s["diverged_step"],
    )
    return Run(tomllib.loads((p / "config.toml").read_text("utf-8")), result, s["coords"])


def read_config(directory: str | Path) -> Config:
    """The typed config a run or sweep directory was written with (its resolved config.toml,
    validated again): what claims and readers use instead of parsing the TOML themselves."""
    path = Path(directory) / "config.toml"
    if not path.is_file():
        raise CorruptResult(f"{path}: missing (not a run or sweep directory)")
    return load_config(path, None)


def read_records(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of metrics.jsonl (not verified: `read_run` and the readers below verify)."""
    path = Path(run_dir) / "metrics.jsonl"
    out = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if line.strip():
                try:
                    out.append(from_jsonable(json.loads(line)))
                except ValueError:
                    raise CorruptResult(f"{path}:{i}: not a JSON record") from None
    return out


def _read_json(path: Path) -> Any:
    try:
        return from_jsonable(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, UnicodeDecodeError) as e:
        raise CorruptResult(f"{path}: unreadable ({' '.join(str(e).split())})") from None


def read_manifest(sweep_dir: str | Path) -> dict[str, Any]:
    """A sweep's manifest.json with the statuses that events.jsonl recorded since it was
    written applied. A torn last line (a writer killed mid-append) is ignored; any other
    unreadable content raises CorruptResult."""
    d = Path(sweep_dir)
    manifest = _read_json(d / MANIFEST)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("cells"), list):
        raise CorruptResult(f"{d / MANIFEST}: not a sweep manifest")
    entries = {c["id"]: c for c in manifest["cells"]}
    try:
        text = (d / EVENTS).read_text("utf-8")
    except FileNotFoundError:
        return manifest
    except (OSError, UnicodeDecodeError) as e:
        raise CorruptResult(f"{d / EVENTS}: unreadable ({e})") from None
    lines = text.split("\n")
    for i, line in enumerate(lines[:-1], 1):  # the text after the last newline is torn
        try:
            ev = json.loads(line)
            entry = entries.get(ev["id"])
            if entry is not None:
                entry["status"], entry["error"] = ev["status"], ev["error"]
        except (ValueError, KeyError, TypeError):
            raise CorruptResult(f"{d / EVENTS}:{i}: not a cell event") from None
    return manifest


def _run_dirs(directory: str | Path) -> list[tuple[Path, dict[str, Any] | None]]:
    """[(run dir, None)] for a run dir; [(cell dir, manifest entry)] for each cell of a sweep."""
    d = Path(directory)
    if (d / MANIFEST).is_file():
        return [(d / c["id"], c) for c in read_manifest(d)["cells"]]
    if (d / "metrics.jsonl").is_file() or (d / DONE).is_file():
        return [(d, None)]
    raise FileNotFoundError(
        f"{d} is neither a run directory (metrics.jsonl) nor a sweep (manifest.json)"
    )


def _finished_runs(runs: list[tuple[Path, dict[str, Any] | None]]) -> list[Path]:
    """Of `_run_dirs`' list, the run directories that hold results, each verified: a run
    dir, or every cell the manifest calls finished (CorruptResult if one does not check)."""
    out = []
    for p, cell in runs:
        if cell is None or cell["status"] in FINISHED:
            try:
                verify_run(p)
            except CorruptResult as e:
                raise CorruptResult(
                    f"{e}; rerun the sweep (`covsim sweep` with the same config) to redo it"
                    if cell is not None
                    else f"{e}; rerun it to regenerate the results"
                ) from None
            out.append(p)
    return out


def flatten_record(rec: Mapping[str, Any]) -> dict[str, Any]:
    """One level of nesting to columns: cov {16: x} -> "cov@16", pass_at {4: x} -> "pass@4",
    any other mapping d {k: x} -> "d.k"."""
    out: dict[str, Any] = {}
    for k, v in rec.items():
        if isinstance(v, Mapping):
            pre = N_KEYED.get(k, f"{k}.")
            for sub, x in v.items():
                out[pre + (n_key(sub) if k in N_KEYED else str(sub))] = x
        else:
            out[k] = v
    return out


def metrics_frame(out, spec, coords: Mapping[str, Any] | None = None, seeds=None) -> pd.DataFrame:
    """A `covsim.train` TrainOutput (one seed, or a leading seed axis from `run_seeds`) as the
    DataFrame `read_metrics` gives for a run directory, without writing one: one row per
    (seed, checkpoint), with `coords` as constant columns and cov/pass_at flattened to
    "cov@N"/"pass@N". `spec` is the run's TrainSpec; `seeds` labels the seed axis (default
    0, 1, ...).

        out = run_seeds(make_train(task, model_fn, optax.adam(0.05), spec), 8)
        df = metrics_frame(out, spec, coords={"task.H": task.H})
    """
    import pandas as pd

    from covsim.train import to_records

    rows = [flatten_record(r) for r in to_records(out, spec, coords=dict(coords or {}),
                                                   seeds=seeds)]
    return pd.DataFrame.from_records(rows)


def read_metrics(directory: str | Path, partial: bool = False) -> pd.DataFrame:
    """All evaluation records of a run dir, or of every finished cell of a sweep dir.

    One row per record, a "run" column (the run directory's name) first; cov/pass_at
    flattened to "cov@N"/"pass@N" columns. Failed (never written) cells contribute no rows;
    a finished cell whose files do not match their checksums raises CorruptResult.
    With `partial`, also the records streamed so far by cells still running (or killed),
    from their `metrics.jsonl.partial` (covsim.resume), and a boolean "partial" column that
    marks them; their diverged_step is the run's so far.
    """
    import pandas as pd

    d = Path(directory)
    rows = []
    runs = _run_dirs(d) if not (partial and _only_partial(d)) else []
    for p in _finished_runs(runs):
        rows += [{"run": p.name, **flatten_record(r)} for r in read_records(p)]
    if partial:
        rows = [{**r, "partial": False} for r in rows]
        for name, recs in partial_records(d).items():
            rows += [{"run": name, **flatten_record(r), "partial": True} for r in recs]
    return pd.DataFrame.from_records(rows) if rows else pd.DataFrame(columns=["run"])


def _only_partial(d: Path) -> bool:
    """A run directory whose run has not finished yet: nothing but its work directory."""
    return (d / f"run{PARTIAL_SUFFIX}").is_dir() and not (d / DONE).is_file()


def partial_paths(directory: str | Path) -> dict[str, Path]:
    """{run name: its metrics.jsonl.partial} of the cells of a sweep dir (or the run of a run
    dir) that have not finished and have streamed records."""
    d = Path(directory)
    if (d / MANIFEST).is_file():
        todo = [c["id"] for c in read_manifest(d)["cells"] if c["status"] not in FINISHED]
        found = {i: d / f"{i}{PARTIAL_SUFFIX}" / PARTIAL_RECORDS for i in todo}
    else:
        found = {d.name: d / f"run{PARTIAL_SUFFIX}" / PARTIAL_RECORDS}
    return {name: p for name, p in found.items() if p.is_file()}


def partial_records(directory: str | Path) -> dict[str, list[dict[str, Any]]]:
    """{run name: records streamed so far} of `partial_paths`' runs, a torn last line (a
    write cut short) left out."""
    out = {}
    for name, path in partial_paths(directory).items():
        try:
            text = path.read_text("utf-8")
        except (FileNotFoundError, UnicodeDecodeError):
            continue
        recs = []
        for i, line in enumerate(text.split("\n")[:-1], 1):  # after the last newline: torn
            try:
                recs.append(from_jsonable(json.loads(line)))
            except ValueError:
                raise CorruptResult(f"{path}:{i}: not a JSON record") from None
        if recs:
            out[name] = recs
    return out


def artifact_paths(directory: str | Path, name: str) -> dict[str, Path]:
    """{run name: path} of artifact `name` (a RunResult.files entry) in a run dir, or in every
    finished cell of a sweep dir that has it."""
    runs = _finished_runs(_run_dirs(directory))
    return {p.name: p / name for p in runs if (p / name).is_file()}


def seed_order(df: pd.DataFrame, run: str) -> list:
    """The seeds of cell `run` in the order the cell ran them (the order of its records, as
    read_metrics returns them): the row order of its per-seed artifacts (e.g. a (seeds, ...)
    .npy)."""
    return list(dict.fromkeys(df.loc[df["run"] == run, "seed"]))


def read_summaries(directory: str | Path) -> pd.DataFrame:
    """One row per run: "run", "status", "error", the coordinates, diverged, the summary.

    For a sweep, every cell of the manifest appears; cells without results have status
    "failed" or "pending" and missing values elsewhere.
    """
    import pandas as pd

    rows = []
    runs = _run_dirs(directory)
    finished = set(_finished_runs(runs))
    for p, cell in runs:
        if p in finished:
            s = _read_json(p / "summary.json")
            status = "diverged" if s["diverged"] else "done"
            row = {"run": p.name, "status": status, "error": None, **s["coords"]}
            row |= {"diverged": s["diverged"], "diverged_step": s["diverged_step"]}
            row |= flatten_record(s["summary"])
        else:
            row = {
                "run": p.name,
                "status": cell["status"],
                "error": cell["error"],
                **cell["coords"],
            }
        rows.append(row)
    return pd.DataFrame.from_records(rows)
