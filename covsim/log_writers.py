"""Log writers: every evaluation record of a run or sweep, also sent where researchers look.

    [log]
    writers = ["csv", "tensorboard"]     # any of WRITERS; or `covsim sweep ... --log csv,wandb`
    dir = "runs/quick/horizon/logs"      # default: <output directory>/logs

The result of a run is its run directory (`covsim.results`: metrics.jsonl, checksummed);
writers are logs *beside* it, fed with each record as the sweep driver receives it (in the
order cells finish), so they never decide what counts as a result and a failing writer never
loses one. A run key names one learner: the cell id, plus "/seed<k>" when a cell holds several
seeds. A record reaches a writer flattened (`covsim.results.flatten_record`: "cov@16",
"pass@4", ...). Scalars are its numeric fields other than "step", "seed" and the sweep
coordinates (those describe the run: a W&B run's config, a CSV's columns).

    jsonl        <dir>/metrics.jsonl: one JSON object per record, "run" first (appended)
    csv          <dir>/metrics.csv: one row per record, "run" first; lists as JSON text; a
                 column first seen later rewrites the file with the wider header
    tensorboard  <dir>/tensorboard/<run key>/events.out.tfevents.*: every scalar per step,
                 tagged "kl", "cov/16", "pass/4", ... (`tb_tag`; tensorboardX,
                 `pip install 'covsim[tensorboard]'`)
    wandb        one W&B run per run key in project `wandb_project`, grouped by experiment,
                 files under <dir>/wandb (`pip install 'covsim[wandb]'`; `wandb_mode`
                 "offline" writes locally only, for `wandb sync` later)

Writers append: a resumed sweep adds the cells it runs now, and a redone cell's records
appear again.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from covsim.fileio import atomic_write_text
from covsim.results import dumps

WRITERS = ("jsonl", "csv", "tensorboard", "wandb")
_NOT_SCALARS = ("step", "seed", "run")


class LogWriter(Protocol):
    """What a writer implements. `record` is one flattened evaluation record."""

    def write(self, run: str, step: int, record: Mapping[str, Any]) -> None: ...

    def finish(self, run: str) -> None:
        """`run` will get no more records (its cell finished)."""

    def close(self) -> None: ...


def scalars(record: Mapping[str, Any], coords: Sequence[str] = ()) -> dict[str, float]:
    """The numeric fields of a flattened record, less step, seed and the coordinates."""
    skip = set(_NOT_SCALARS) | set(coords)
    return {k: float(v) for k, v in record.items()
            if k not in skip and isinstance(v, int | float) and not isinstance(v, bool)}


class JsonlWriter:
    def __init__(self, log_dir: Path):
        log_dir.mkdir(parents=True, exist_ok=True)
        self._f = open(log_dir / "metrics.jsonl", "a", encoding="utf-8")  # noqa: SIM115

    def write(self, run, step, record):
        self._f.write(dumps({"run": run, **record}) + "\n")

    def finish(self, run):
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self):
        self._f.close()


class CsvWriter:
    def __init__(self, log_dir: Path):
        log_dir.mkdir(parents=True, exist_ok=True)
        self.path = log_dir / "metrics.csv"
        self.header: list[str] = []
        if self.path.is_file() and self.path.stat().st_size:
            with self.path.open(newline="", encoding="utf-8") as f:
                self.header = next(csv.reader(f), [])

    def write(self, run, step, record):
        row = {"run": run, **{k: _cell_text(v) for k, v in record.items()}}
        new = [k for k in row if k not in self.header]
        if new:
            self._widen(self.header + new)
        with self.path.open("a", newline="", encoding="utf-8") as f:
            csv.DictWriter(f, self.header).writerow(row)

    def _widen(self, header: list[str]) -> None:
        """Rewrite the file under the wider header (old rows get empty new columns)."""
        rows = []
        if self.header:
            with self.path.open(newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
        buf = io.StringIO(newline="")
        w = csv.DictWriter(buf, header)
        w.writeheader()
        w.writerows(rows)
        atomic_write_text(self.path, buf.getvalue())
        self.header = header

    def finish(self, run):
        pass

    def close(self):
        pass


def _cell_text(v: Any) -> Any:
    if isinstance(v, list | tuple | Mapping):
        return json.dumps(v)
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # "inf", "-inf", "nan": what pandas.read_csv parses back as floats
    return v


def tb_tag(column: str) -> str:
    """A TensorBoard tag: "cov@16" -> "cov/16" (TensorBoard groups a tag's charts by the part
    before "/", and drops "@"), other columns as they are."""
    return column.replace("@", "/")


class _PerRunWriter:
    """A writer holding one open handle per run key (`_open`), ended by `_end`."""

    _open: dict[str, Any]

    def _end(self, handle) -> None:
        raise NotImplementedError

    def finish(self, run):
        h = self._open.pop(run, None)
        if h is not None:
            self._end(h)

    def close(self):
        for run in list(self._open):
            self.finish(run)


class TensorBoardWriter(_PerRunWriter):
    def __init__(self, log_dir: Path, coords: Sequence[str]):
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            raise ImportError("log.writers: 'tensorboard' needs tensorboardX; pip install "
                              "'covsim[tensorboard]'") from None
        self._cls, self.root, self.coords, self._open = SummaryWriter, log_dir / "tensorboard", \
            tuple(coords), {}

    def write(self, run, step, record):
        w = self._open.get(run)
        if w is None:
            w = self._open[run] = self._cls(str(self.root / run))
        for tag, v in scalars(record, self.coords).items():
            w.add_scalar(tb_tag(tag), v, global_step=int(step))

    def _end(self, handle):
        handle.close()


class WandbWriter(_PerRunWriter):
    def __init__(self, log_dir: Path, coords: Sequence[str], experiment: str, project: str,
                 mode: str | None, config: Mapping[str, Any]):
        try:
            import wandb
        except ImportError:
            raise ImportError("log.writers: 'wandb' needs wandb; pip install "
                              "'covsim[wandb]'") from None
        self._wandb, self.dir, self.coords = wandb, log_dir, tuple(coords)
        self.experiment, self.project, self.mode, self.config = experiment, project, mode, config
        self._open: dict[str, Any] = {}

    def write(self, run, step, record):
        r = self._open.get(run)
        if r is None:
            self.dir.mkdir(parents=True, exist_ok=True)
            cfg = {**self.config, **{k: record[k] for k in (*self.coords, "seed")
                                      if k in record}}
            r = self._open[run] = self._wandb.init(
                project=self.project, group=self.experiment, name=run, config=cfg,
                mode=self.mode, dir=str(self.dir), reinit="create_new")
        r.log(scalars(record, self.coords), step=int(step))

    def _end(self, handle):
        handle.finish()


class Writers:
    """The writers a run or sweep asked for, fed together; `log(run_key, records)` sends one
    learner's records in step order and finishes it. Empty `names`: does nothing."""

    def __init__(self, names: Sequence[str], log_dir: str | Path, *, experiment: str = "",
                 coords: Sequence[str] = (), wandb_project: str = "covsim",
                 wandb_mode: str | None = None, config: Mapping[str, Any] | None = None):
        bad = [n for n in names if n not in WRITERS]
        if bad:
            raise ValueError(f"argument names: unknown writer {bad[0]!r}; allowed: "
                             f"{', '.join(WRITERS)}")
        d = Path(log_dir)
        make = {
            "jsonl": lambda: JsonlWriter(d),
            "csv": lambda: CsvWriter(d),
            "tensorboard": lambda: TensorBoardWriter(d, coords),
            "wandb": lambda: WandbWriter(d, coords, experiment, wandb_project, wandb_mode,
                                         dict(config or {})),
        }
        self.writers: list[LogWriter] = [make[n]() for n in dict.fromkeys(names)]

    def log(self, run: str, records: Sequence[Mapping[str, Any]]) -> list[str]:
        """Send `records`; a writer that raises is dropped (the others go on). Returns one
        line per dropped writer."""
        errors = []
        for w in list(self.writers):
            try:
                for rec in records:
                    w.write(run, int(rec.get("step", 0)), rec)
                w.finish(run)
            except Exception as e:  # a log sink's failure (disk, network) is not the result's
                self.writers.remove(w)
                errors.append(f"{type(w).__name__}: {' '.join(str(e).split())}")
        return errors

    def close(self) -> None:
        for w in self.writers:
            w.close()

    def __enter__(self) -> Writers:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def run_keys(cell_id: str, records: Sequence[Mapping[str, Any]], one_seed: bool
             ) -> dict[str, list[Mapping[str, Any]]]:
    """A cell's flattened records grouped by learner: {cell id: records} for a one-seed
    cell, {"<cell id>/seed<k>": records} for a cell holding several seeds."""
    if one_seed:
        return {cell_id: list(records)}
    out: dict[str, list[Mapping[str, Any]]] = {}
    for r in records:
        out.setdefault(f"{cell_id}/seed{r.get('seed')}", []).append(r)
    return out
