"""Coverage of a real model pair: log-probability files of a reference and a student.

The coverage profile needs only two numbers per sample y ~ π_D: log π_D(y|x) and log π̂(y|x)
(Def. 1.1). Where π_D is a model of one's own (a teacher in distillation, a reference policy),
both come from scoring the *same* samples, drawn from the reference, under each model.
`covsim coverage REF STUDENT` reads the two files and reports the profile N ↦ Cov_N with
Wilson intervals, KL with its standard error and Prop. 3.1's bound:

    ref, student = read_pair("teacher.jsonl", "student.jsonl")   # (n,), (n,) float64
    rep = coverage_report(ref, student, Ns=[2, 4, 16, 256])
    rep.cov, rep.lo, rep.hi, rep.kl, rep.kl_se, rep.bound

File formats (one sample per row; row i of REF and row i of STUDENT score the same sample,
unless both carry an `id`, in which case rows are matched by id):

    .npy      float array, (n,) per-sequence log-probs, or (n, T) per-token log-probs summed
              over T (NaN entries are padding of shorter sequences and are skipped)
    .jsonl    one JSON object per line: "logp" (a number: the sequence log-prob) or
              "token_logps" (a list of numbers, summed), and optionally "id" (string or int)
    .parquet  the same columns as .jsonl ("logp" float, or "token_logps" list of floats;
              optional "id"); needs pyarrow (`pip install 'covsim[parquet]'`)

Log-probs are natural-log. −inf (probability 0; also written "-inf" or -Infinity in JSON) is
allowed: a student giving 0 to a reference sample leaves it uncovered at every N; NaN and
+inf are errors naming the file and row. Per-token rows are summed in float64 on the host;
r = log π_D − log π̂ is formed in float64 and handed to `covsim.metrics` (`coverage_profile`,
`kl_with_se`), so the report is exactly those functions of that r.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from covsim import metrics as M
from covsim.checks import DEFAULT_ALPHA

FORMATS = (".npy", ".jsonl", ".parquet")
COLUMNS = ("logp", "token_logps", "id")  # the documented .jsonl / .parquet columns


class LogprobFileError(ValueError):
    """A log-prob file that cannot be read as one: one line naming the file (and row)."""


@dataclass(frozen=True)
class LogprobFile:
    """One file read: per-sample log-probs (n,) float64 and their ids (None if it has none)."""

    logp: np.ndarray
    ids: list | None


def read_logprobs(path: str | Path) -> LogprobFile:
    """The per-sample log-probs of a .npy, .jsonl or .parquet file (see the module doc)."""
    p = Path(path)
    if p.suffix not in FORMATS:
        raise LogprobFileError(f"{p}: unknown format {p.suffix!r}; allowed: "
                               f"{', '.join(FORMATS)}")
    if not p.is_file():
        raise LogprobFileError(f"{p}: no such file")
    if p.suffix == ".npy":
        lf = _read_npy(p)
    elif p.suffix == ".jsonl":
        lf = _rows_to_file(p, _jsonl_rows(p))
    else:
        lf = _rows_to_file(p, _parquet_rows(p))
    if lf.logp.size == 0:
        raise LogprobFileError(f"{p}: no samples")
    bad = np.flatnonzero(np.isnan(lf.logp) | (lf.logp == np.inf))
    if bad.size:
        i = int(bad[0])
        raise LogprobFileError(f"{p}: row {i} has log-prob {lf.logp[i]} (allowed: a finite "
                               "number or -inf)")
    return lf


def read_pair(ref: str | Path, student: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(log π_D, log π̂), both (n,) float64, of the same samples: matched by row, or by id
    when both files have ids (then they must hold the same ids, each once)."""
    a, b = read_logprobs(ref), read_logprobs(student)
    if a.ids is not None and b.ids is not None:
        pos = _id_index(ref, a.ids)
        where = _id_index(student, b.ids)
        if set(pos) != set(where):
            only = sorted(map(str, set(pos) ^ set(where)))[:3]
            raise LogprobFileError(f"{ref} and {student}: their ids differ (e.g. "
                                   f"{', '.join(only)}); they must score the same samples")
        order = np.asarray([where[k] for k in a.ids])
        return a.logp, b.logp[order]
    if a.logp.size != b.logp.size:
        raise LogprobFileError(f"{ref} has {a.logp.size} samples, {student} {b.logp.size}; "
                               "they must score the same samples (or both carry ids)")
    return a.logp, b.logp


@dataclass(frozen=True)
class CoverageReport:
    """The profile of one (reference, student) pair. Arrays have the shape of the N grid."""

    N: np.ndarray  # thresholds
    cov: np.ndarray  # Cov_N
    lo: np.ndarray  # 1 − alpha Wilson interval
    hi: np.ndarray
    bound: np.ndarray  # Prop. 3.1 (exact form, Prop. D.1): KL / (log N − 1 + 1/N), N > 1
    kl: float  # Monte-Carlo KL(π_D ‖ π̂), nats
    kl_se: float  # its standard error
    n: int  # samples
    alpha: float

    def to_dict(self) -> dict:
        return {"n": self.n, "alpha": self.alpha, "kl": self.kl, "kl_se": self.kl_se,
                "N": self.N.tolist(), "cov": self.cov.tolist(), "cov_lo": self.lo.tolist(),
                "cov_hi": self.hi.tolist(), "bound": self.bound.tolist()}


def log_ratio64(logp_ref: np.ndarray, logp_student: np.ndarray) -> np.ndarray:
    """r = log π_D − log π̂ in float64, (n,), (n,) -> (n,), with `metrics.log_ratio`'s rule
    for −inf: log π_D = −inf gives −inf (never uncovered), log π̂ = −inf gives +inf."""
    a, b = np.asarray(logp_ref, np.float64), np.asarray(logp_student, np.float64)
    with np.errstate(invalid="ignore"):
        return np.where(a == -np.inf, -np.inf, a - b)


def coverage_report(logp_ref, logp_student, Ns: Sequence[float],
                    alpha: float = DEFAULT_ALPHA) -> CoverageReport:
    """Cov_N with Wilson intervals (`metrics.coverage_profile`), KL ± SE
    (`metrics.kl_with_se`) and Prop. 3.1's bound at KL, for log-probs (n,) of samples from
    the reference. n ≥ 2 (the standard error needs two samples)."""
    r = log_ratio64(logp_ref, logp_student)
    if r.size < 2:
        raise LogprobFileError(f"coverage needs at least 2 samples, got {r.size}")
    prof = M.coverage_profile(r.astype(np.float32), np.asarray(Ns), alpha=alpha)
    kl, se = M.kl_with_se(r.astype(np.float32))
    N = np.asarray(prof.N, np.float64)
    kl_f = float(kl)
    with np.errstate(divide="ignore", invalid="ignore"):
        bound = np.where(N > 1, kl_f / (np.log(N) - 1 + 1 / N), np.inf)
    return CoverageReport(N=N, cov=np.asarray(prof.cov, np.float64),
                          lo=np.asarray(prof.lo, np.float64), hi=np.asarray(prof.hi, np.float64),
                          bound=bound, kl=kl_f, kl_se=float(se), n=int(r.size),
                          alpha=float(alpha))


def write_logprobs(path: str | Path, logp, ids: Sequence | None = None) -> Path:
    """Write per-sequence log-probs (n,) — or per-token (n, T) — in the format of the suffix,
    as `read_logprobs` reads them (how covsim dumps a model's scores for `covsim coverage`)."""
    from covsim.fileio import atomic_write_text

    p = Path(path)
    a = np.asarray(logp, np.float64)
    if p.suffix not in FORMATS:
        raise ValueError(f"argument path: unknown format {p.suffix!r}; allowed: "
                         f"{', '.join(FORMATS)}")
    if a.ndim not in (1, 2):
        raise ValueError(f"argument logp must be (n,) or (n, T), got shape {a.shape}")
    if ids is not None and len(ids) != a.shape[0]:
        raise ValueError(f"argument ids: {len(ids)} ids for {a.shape[0]} rows")
    if p.suffix == ".npy":
        if ids is not None:
            raise ValueError("argument ids: a .npy file holds no ids (use .jsonl or .parquet)")
        import io

        buf = io.BytesIO()
        np.save(buf, a)
        atomic_write_text(p, buf.getvalue())
        return p
    key = "logp" if a.ndim == 1 else "token_logps"
    rows = [{key: v.tolist() if a.ndim == 2 else float(v)} for v in a]
    if ids is not None:
        for row, i in zip(rows, ids, strict=True):
            row["id"] = i
    if p.suffix == ".jsonl":
        text = "".join(json.dumps(r, allow_nan=True) + "\n" for r in rows)
        atomic_write_text(p, text)
        return p
    pd = _pandas_parquet(p)
    tmp = p.with_name(f".{p.name}.tmp")
    pd.DataFrame.from_records(rows).to_parquet(tmp, index=False)
    tmp.replace(p)
    return p


# ---------------------------------------------------------------------------------------------
# Readers


def _read_npy(p: Path) -> LogprobFile:
    try:
        a = np.load(p, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise LogprobFileError(f"{p}: not a .npy array ({' '.join(str(e).split())})") from None
    if a.dtype.kind not in "fiu" or a.ndim not in (1, 2):
        raise LogprobFileError(f"{p}: expected a float array (n,) or (n, T), got {a.dtype} "
                               f"{a.shape}")
    a = a.astype(np.float64)
    if a.ndim == 2:
        a = _sum_tokens(p, a)
    return LogprobFile(a, None)


def _sum_tokens(p: Path, a: np.ndarray) -> np.ndarray:
    """Rows of per-token log-probs summed in float64, NaN entries (padding) skipped."""
    empty = np.flatnonzero(np.all(np.isnan(a), axis=1))
    if empty.size:
        raise LogprobFileError(f"{p}: row {int(empty[0])} has no tokens (all NaN)")
    return np.nansum(a, axis=1)


def _jsonl_rows(p: Path) -> list[dict]:
    rows = []
    with p.open("r", encoding="utf-8") as f:
        for i, line in enumerate(f):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise LogprobFileError(f"{p}: line {i + 1} is not JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise LogprobFileError(f"{p}: line {i + 1} is not a JSON object")
            rows.append(row)
    return rows


def _pandas_parquet(p: Path):
    import pandas as pd

    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise LogprobFileError(f"{p}: reading .parquet needs pyarrow; pip install "
                               "'covsim[parquet]'") from None
    return pd


def _parquet_rows(p: Path) -> list[dict]:
    pd = _pandas_parquet(p)
    try:
        df = pd.read_parquet(p)
    except Exception as e:  # pyarrow raises its own exception types for a bad file
        raise LogprobFileError(f"{p}: not a parquet file ({' '.join(str(e).split())})") from None
    cols = [c for c in COLUMNS if c in df.columns]
    return [{c: row[c] for c in cols} for row in df.to_dict("records")]


def _number(p: Path, i: int, v) -> float:
    if isinstance(v, str) and v in ("-inf", "inf", "nan"):
        return float(v)
    if isinstance(v, bool) or not isinstance(v, int | float | np.integer | np.floating):
        raise LogprobFileError(f"{p}: row {i} has a non-number log-prob {v!r}")
    return float(v)


def _rows_to_file(p: Path, rows: list[dict]) -> LogprobFile:
    logp = np.empty(len(rows), np.float64)
    has_id = [("id" in r and r["id"] is not None) for r in rows]
    if any(has_id) and not all(has_id):
        raise LogprobFileError(f"{p}: row {has_id.index(False)} has no id (others do; give "
                               "every row one or none)")
    for i, r in enumerate(rows):
        if ("logp" in r) == ("token_logps" in r):
            raise LogprobFileError(f"{p}: row {i} needs exactly one of 'logp' (the sequence "
                                   "log-prob) or 'token_logps' (a list, summed)")
        if "logp" in r:
            logp[i] = _number(p, i, r["logp"])
        else:
            toks = r["token_logps"]
            if isinstance(toks, str) or not hasattr(toks, "__len__") or len(toks) == 0:
                raise LogprobFileError(f"{p}: row {i} 'token_logps' must be a non-empty list")
            logp[i] = np.sum(np.asarray([_number(p, i, v) for v in toks], np.float64))
    ids = [r["id"] for r in rows] if rows and all(has_id) else None
    if ids is not None:
        ids = [i.item() if isinstance(i, np.generic) else i for i in ids]
    return LogprobFile(logp, ids)


def _id_index(path, ids: list) -> dict:
    index: dict = {}
    for i, k in enumerate(ids):
        if k in index:
            raise LogprobFileError(f"{path}: id {k!r} appears twice (rows {index[k]} and {i})")
        index[k] = i
    return index
