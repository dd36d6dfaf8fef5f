"""Reliability campaign: nothing lost, nothing silently wrong.

One test (or a parametrized family) per defect a fault-injection campaign found, numbered as
in the campaign: (1) output paths covsim did not write, (2) concurrent writers, (3) a
read-only or full filesystem, (4) corrupt result files, (5) exact threshold semantics and
value validation, (6) a sweep written over a run, (7) interrupts, killed parents and dying
workers, (8) very large sweeps; plus a config fuzzer (hypothesis) asserting that a bad config
is refused before any compute with exit 2, one line naming the field, and nothing written.
Cases that start subprocesses and kill them are marked `slow`.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tiny import TRAINER

from covsim import cli
from covsim import metrics as M
from covsim.cli import main
from covsim.config import load_config
from covsim.outdir import LOCK, MARKER, OutputError, owned_output
from covsim.results import (
    EVENTS,
    MANIFEST,
    CorruptResult,
    RunResult,
    read_manifest,
    read_metrics,
    read_run,
    write_run,
)
from covsim.sweep import run_sweep

TESTS = Path(__file__).resolve().parent

TINY = """
[experiment]
name = "tiny"

[task]
kind = "markov"
V = 4
H = 3
""" + TRAINER + """
[sweep]
seeds = {seeds}
vmap_seeds = false

[profile.quick]
"train.steps" = 20
"""


def _tiny(folder: Path, seeds: int = 3) -> Path:
    p = folder / "tiny.toml"
    p.write_text(TINY.format(seeds=seeds))
    return p


# A cell function that needs no JAX: records as the trainer writes them.
def toy_cell(cfg, cell) -> RunResult:
    records = [
        {"step": s, "seed": seed, "kl": 1.0 / (1 + s + seed), "cov": {2: 0.5, 8: 0.25}}
        for seed in cell.seeds
        for s in (0, 10, 20)
    ]
    return RunResult(records, {"final_kl": 0.1})


def _no_compute(*a, **k):
    raise AssertionError("compute started although the command should have been refused")


@pytest.fixture
def no_compute(monkeypatch):
    monkeypatch.setattr(cli, "_cell_fn", _no_compute)


@pytest.fixture
def toy_compute(monkeypatch):
    monkeypatch.setattr(cli, "_cell_fn", toy_cell)


def _one_line(err: str) -> str:
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err.strip()


def _snapshot(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------
# (1) covsim never deletes or overwrites what it did not write


def test_run_and_sweep_default_to_different_paths(tmp_path, monkeypatch, toy_compute, capsys):
    cfg = _tiny(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert main(["-q", "sweep", str(cfg)]) == 0
    sweep = tmp_path / "runs" / "quick" / "tiny"
    before = _snapshot(sweep)
    assert main(["-q", "run", str(cfg)]) == 0  # the advice "use covsim run" no longer wipes it
    assert _snapshot(sweep) == before
    assert len(read_metrics(tmp_path / "runs" / "quick" / "tiny-run")) == 9


@pytest.mark.parametrize("first, second", [("sweep", "run"), ("run", "sweep")])
def test_one_kind_is_never_written_over_the_other(tmp_path, toy_compute, capsys, first, second):
    """(1) a run into a finished sweep, and (6) a sweep into a run directory (where readers
    would not see it): refused, the first result kept byte for byte."""
    cfg = _tiny(tmp_path)
    out = tmp_path / "o"
    assert main(["-q", first, str(cfg), "--out", str(out)]) == 0
    before = _snapshot(out)
    assert main(["-q", second, str(cfg), "--out", str(out)]) == 2
    assert f"holds a {first} of experiment 'tiny'" in _one_line(capsys.readouterr().err)
    assert _snapshot(out) == before and len(read_metrics(out)) == 9


def test_run_into_a_folder_of_the_users_is_refused(tmp_path, no_compute, capsys):
    cfg = _tiny(tmp_path)
    d = tmp_path / "d"
    d.mkdir()
    (d / "thesis.txt").write_text("x")
    assert main(["-q", "run", str(cfg), "--out", str(d)]) == 2
    err = _one_line(capsys.readouterr().err)
    assert "not written by covsim (holds thesis.txt)" in err
    assert sorted(p.name for p in d.iterdir()) == ["thesis.txt"]  # no lock file left either


def test_a_file_at_out_is_not_replaced(tmp_path, no_compute, capsys):
    cfg = _tiny(tmp_path)
    f = tmp_path / "notes.txt"
    f.write_text("keep me")
    for command in ("run", "sweep"):
        assert main(["-q", command, str(cfg), "--out", str(f)]) == 2
        assert "is a file" in _one_line(capsys.readouterr().err)
    assert f.read_text() == "keep me"


def test_demo_does_not_replace_another_sweep(tmp_path, toy_compute, capsys):
    cfg = _tiny(tmp_path)
    sweep = tmp_path / "s"
    assert main(["-q", "sweep", str(cfg), "--out", str(sweep)]) == 0
    before = _snapshot(sweep)
    assert main(["-q", "demo", "--out", str(sweep)]) == 2
    assert "holds a sweep of experiment 'tiny'" in capsys.readouterr().err
    assert _snapshot(sweep) == before


def test_rerunning_a_run_replaces_its_results_and_keeps_other_files(tmp_path, monkeypatch):
    cfg = _tiny(tmp_path)
    out = tmp_path / "r"
    monkeypatch.setattr(cli, "_cell_fn", toy_cell)
    assert main(["-q", "run", str(cfg), "--out", str(out)]) == 0
    (out / "notes.md").write_text("mine")
    half = lambda c, cell: RunResult(toy_cell(c, cell).records[:2])
    monkeypatch.setattr(cli, "_cell_fn", half)
    assert main(["-q", "run", str(cfg), "--out", str(out)]) == 0
    assert (out / "notes.md").read_text() == "mine" and len(read_metrics(out)) == 2


def test_write_run_in_place_drops_the_previous_runs_artifacts_only(tmp_path):
    c = load_config(_tiny(tmp_path), "quick")
    out = tmp_path / "r"
    write_run(out, c, RunResult([{"step": 0, "seed": 0}], files={"a.bin": b"1", "b.bin": b"2"}))
    (out / "mine.txt").write_text("x")
    write_run(out, c, RunResult([{"step": 0, "seed": 0}], files={"a.bin": b"3"}))
    assert sorted(p.name for p in out.iterdir()) == [
        "a.bin",
        "config.toml",
        "done.json",
        "metrics.jsonl",
        "mine.txt",
        "summary.json",
    ]
    assert read_run(out).result.records == [{"step": 0, "seed": 0}]


# ---------------------------------------------------------------------------------------------
# (2) one writer per output directory


def test_a_second_writer_is_refused_with_the_holders_pid(tmp_path, no_compute, capsys):
    cfg = _tiny(tmp_path)
    out = tmp_path / "s"
    with owned_output(out, "sweep", "tiny"):
        for extra in ([], ["--force"]):
            assert main(["-q", "sweep", str(cfg), "--out", str(out), *extra]) == 2
            err = _one_line(capsys.readouterr().err)
            assert f"in use by another covsim process (pid {os.getpid()})" in err
        with pytest.raises(OutputError, match="in use"):
            run_sweep(load_config(cfg, "quick"), toy_cell, out, progress=False)
    # released at the end of the block (and by the kernel if the holder dies)
    run_sweep(load_config(cfg, "quick"), toy_cell, out, progress=False)


def test_concurrent_sweep_from_another_process_is_refused(tmp_path, capsys):
    out = tmp_path / "s"
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(out)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        cfg = load_config(_tiny(tmp_path), "quick")
        with pytest.raises(
            OutputError, match=rf"in use by another covsim process \(pid {holder.pid}\)"
        ):
            run_sweep(cfg, toy_cell, out, progress=False)
    finally:
        holder.kill()
        holder.wait()
    run_sweep(cfg, toy_cell, out, progress=False)  # the dead holder's lock is gone


_HOLD = """
import sys, time
from covsim.outdir import owned_output
with owned_output(sys.argv[1], "sweep", "tiny"):
    print("held", flush=True)
    time.sleep(600)
"""


# ---------------------------------------------------------------------------------------------
# (3) unwritable or full output: refused before compute


def test_an_unwritable_output_is_refused_before_compute(tmp_path, no_compute, capsys):
    cfg = _tiny(tmp_path)
    for out in ("/proc/self/covsim-out", "/proc/covsim-out/x"):  # not writable, even by root
        assert main(["-q", "run", str(cfg), "--out", out]) == 2
        assert "cannot write there" in _one_line(capsys.readouterr().err)


def test_a_full_filesystem_is_refused_before_compute(tmp_path, no_compute, monkeypatch, capsys):
    import shutil

    cfg = _tiny(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10, 10, 0))
    for command in ("run", "sweep"):
        assert main(["-q", command, str(cfg), "--out", str(tmp_path / command)]) == 2
        assert "MiB free, the results need about" in _one_line(capsys.readouterr().err)
        assert not (tmp_path / command).exists()  # nothing left behind


# ---------------------------------------------------------------------------------------------
# (4) corrupt results are detected: redone by a sweep, refused by readers


def _edit_metrics_empty(d):
    (d / "metrics.jsonl").write_text("")


def _edit_metrics_value(d):
    p = d / "metrics.jsonl"
    p.write_text(p.read_text().replace('"kl":', '"kl":9', 1))


def _edit_metrics_torn(d):
    p = d / "metrics.jsonl"
    p.write_bytes(p.read_bytes()[:-17])


def _edit_metrics_garbage(d):
    with open(d / "metrics.jsonl", "a") as f:
        f.write("\x00garbage\n")


def _edit_summary_diverged(d):
    p = d / "summary.json"
    p.write_text(p.read_text().replace('"diverged": false', '"diverged": true'))


def _edit_summary_truncated(d):
    p = d / "summary.json"
    p.write_bytes(p.read_bytes()[:10])


def _edit_done_removed(d):
    (d / "done.json").unlink()


CORRUPTIONS = {
    "emptied metrics": _edit_metrics_empty,
    "edited metric value": _edit_metrics_value,
    "metrics cut mid-line": _edit_metrics_torn,
    "garbage line": _edit_metrics_garbage,
    "flipped diverged": _edit_summary_diverged,
    "truncated summary": _edit_summary_truncated,
    "checksums removed": _edit_done_removed,
}


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_a_corrupted_cell_is_refused_by_readers_and_redone_by_the_sweep(
    tmp_path, case, monkeypatch, capsys
):
    cfg_path = _tiny(tmp_path)
    out = tmp_path / "s"
    calls = []
    counted = lambda c, cell: calls.append(cell.id) or toy_cell(c, cell)
    monkeypatch.setattr(cli, "_cell_fn", counted)
    assert main(["-q", "sweep", str(cfg_path), "--out", str(out)]) == 0
    good = read_metrics(out)
    victim = sorted(p for p in out.iterdir() if p.is_dir())[1]
    CORRUPTIONS[case](victim)

    with pytest.raises(CorruptResult, match=victim.name):
        read_metrics(out)
    assert main(["plot", str(out), "--out", str(tmp_path / "fig")]) == 2
    err = _one_line(capsys.readouterr().err)
    assert victim.name in err and "covsim sweep" in err
    assert not (tmp_path / "fig").exists()

    calls.clear()
    assert main(["-q", "sweep", str(cfg_path), "--out", str(out)]) == 0
    assert calls == [victim.name]  # only the corrupt cell is redone
    assert f"redid corrupt cell {victim.name}" in capsys.readouterr().err
    assert read_metrics(out).equals(good)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "emptied"])
def test_a_damaged_manifest_is_refused_by_readers_and_rebuilt_by_the_sweep(
    tmp_path, damage, monkeypatch, capsys
):
    cfg_path = _tiny(tmp_path)
    out = tmp_path / "s"
    calls = []
    monkeypatch.setattr(cli, "_cell_fn", lambda c, cell: calls.append(1) or toy_cell(c, cell))
    assert main(["-q", "sweep", str(cfg_path), "--out", str(out)]) == 0
    m = out / MANIFEST
    text = m.read_bytes()
    m.write_bytes(
        {"truncated": text[: len(text) // 2], "garbage": b"\xff\xfe{", "emptied": b""}[damage]
    )
    assert main(["plot", str(out)]) == 2
    assert "manifest.json: unreadable" in _one_line(capsys.readouterr().err)
    calls.clear()
    assert main(["-q", "sweep", str(cfg_path), "--out", str(out)]) == 0
    assert calls == [] and len(read_metrics(out)) == 9  # cells verified by their checksums


def test_a_torn_event_line_is_ignored_and_garbage_refused(tmp_path):
    cfg = load_config(_tiny(tmp_path), "quick")
    out = tmp_path / "s"
    run_sweep(cfg, toy_cell, out, progress=False)
    ids = [c["id"] for c in read_manifest(out)["cells"]]
    (out / EVENTS).write_text(json.dumps({"id": ids[0], "status": "failed", "error": "e"}) + "\n{")
    assert read_manifest(out)["cells"][0]["status"] == "failed"  # the torn tail is ignored
    (out / EVENTS).write_text("nonsense\n")
    with pytest.raises(CorruptResult, match="events.jsonl:1"):
        read_manifest(out)


# ---------------------------------------------------------------------------------------------
# (5) exact threshold semantics; values validated


def test_the_tie_r_equal_log_N_counts_as_uncovered_for_every_integer_N_up_to_a_million():
    Ns = np.arange(1, 10**6 + 1, dtype=np.float64)
    r = np.array([math.log(N) for N in Ns], np.float32)  # log N as a user computes it
    assert np.all(r >= np.asarray(M.log_threshold("Ns", Ns)))
    for N in (7, 10**6, 1e39):  # and through the public functions, N = 7 the first miss
        r1 = np.array([math.log(N)])
        assert float(M.coverage(r1, N)) == 1.0
        assert float(M.coverage_profile(r1, [N]).cov[0]) == 1.0
        assert float(M.coverage_exact(np.zeros(1), r1, N)) == 1.0


def test_N_beyond_float32_range_is_exact():
    r = np.array([0.0, 100.0, 100.0])
    assert float(M.coverage(r, 1e39)) == pytest.approx(2 / 3)
    assert float(M.coverage(r, 1e45)) == 0.0  # log 1e45 = 103.6 > 100
    assert float(M.coverage(np.array([0.0, 104.0]), 1e45)) == pytest.approx(1 / 2)
    assert float(M.coverage(np.array([0.0, 103.0]), 1e45)) == 0.0


@pytest.mark.parametrize("alpha", [1e-9, 1e-30, 1e-300, 0.5, 0.999])
def test_tiny_alpha_gives_finite_intervals(alpha):
    p = M.coverage_profile(np.array([0.0, 1.0, 2.0, 3.0]), [2.0, 8.0, 100.0], alpha=alpha)
    lo, hi, cov = map(np.asarray, (p.lo, p.hi, p.cov))
    assert np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))
    assert np.all((lo <= cov) & (cov <= hi)) and np.all((0 <= lo) & (hi <= 1))


def test_nan_log_ratios_are_reported_not_covered():
    r = jnp.array([jnp.nan, 0.0, 5.0])
    cov = jax.jit(lambda r: M.coverage(r, [2.0, 8.0]))(r)
    assert np.all(np.isnan(np.asarray(cov)))
    prof = jax.jit(lambda r: M.coverage_profile(r, [2.0]))(r)
    assert np.isnan(float(prof.cov[0]))
    with pytest.raises(ValueError, match="must not contain NaN"):  # concrete: refused
        M.coverage(np.array([np.nan]), 2.0)


@pytest.mark.parametrize(
    "override, field",
    [
        ("train.Ns=[2, 2]", "train.Ns"),
        ("train.Ns=[2, 2.0]", "train.Ns"),
        ("train.Ns=[inf]", "train.Ns[0]"),
        ("train.Ns=[nan]", "train.Ns[0]"),
        ("optim.lr=inf", "optim"),
        ("optim.lr=nan", "optim"),
        ("optim.lr=-1.0", "optim"),
        ("train.alpha=0.0", "train.alpha"),
        ("train.alpha=nan", "train.alpha"),
    ],
)
def test_bad_values_are_refused_before_compute(tmp_path, no_compute, capsys, override, field):
    cfg = _tiny(tmp_path)
    assert main(["-q", "sweep", str(cfg), "--out", str(tmp_path / "o"), "--set", override]) == 2
    err = _one_line(capsys.readouterr().err)
    assert err.startswith(field), err
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------------------------
# (6) a sweep never lands in a run directory (where readers would not see it)




def test_legacy_directories_are_recognised_by_their_files(tmp_path, toy_compute, capsys):
    cfg = _tiny(tmp_path)
    run = tmp_path / "r"
    assert main(["-q", "run", str(cfg), "--out", str(run)]) == 0
    (run / MARKER).unlink()
    (run / LOCK).unlink()  # as written before markers existed
    assert main(["-q", "sweep", str(cfg), "--out", str(run)]) == 2
    assert "holds a run of experiment 'tiny'" in capsys.readouterr().err
    assert main(["-q", "run", str(cfg), "--out", str(run)]) == 0


# ---------------------------------------------------------------------------------------------
# (7) interrupts, killed parents, dying workers


def dying_cell(cfg, cell):
    if cell.coords.get("seed") == 1:
        os._exit(3)  # the worker dies as if killed (no exception reaches the pool)
    return toy_cell(cfg, cell)


def sleepy_cell(cfg, cell):
    pids = Path(os.environ["COVSIM_TEST_PIDS"])
    with open(pids, "a") as f:
        f.write(f"{os.getpid()}\n")
    time.sleep(600)
    return toy_cell(cfg, cell)


@pytest.mark.slow
def test_a_dying_worker_fails_only_its_cell(tmp_path):
    cfg = load_config(_tiny(tmp_path, seeds=4), "quick")
    out = tmp_path / "s"
    manifest = run_sweep(cfg, dying_cell, out, executor="process", workers=2, progress=False)
    by_seed = {c["coords"]["seed"]: c for c in manifest["cells"]}
    assert by_seed[1]["status"] == "failed" and "WorkerDied" in by_seed[1]["error"]
    assert [by_seed[s]["status"] for s in (0, 2, 3)] == ["done"] * 3
    assert len(read_metrics(out)) == 9


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
def test_workers_die_with_a_killed_parent(tmp_path):
    pids = tmp_path / "pids"
    pids.touch()
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import test_reliability as t; "
        "from covsim.config import load_config; from covsim.sweep import run_sweep; "
        "run_sweep(load_config(sys.argv[2], 'quick'), t.sleepy_cell, sys.argv[3], "
        "executor='process', workers=2, progress=False)"
    )
    cfg = _tiny(tmp_path)
    env = dict(os.environ, COVSIM_TEST_PIDS=str(pids))
    parent = subprocess.Popen(
        [sys.executable, "-c", code, str(TESTS), str(cfg), str(tmp_path / "s")], env=env
    )
    deadline = time.monotonic() + 120
    while len(pids.read_text().split()) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    workers = [int(p) for p in pids.read_text().split()]
    assert len(workers) == 2 and all(_alive(p) for p in workers)
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in workers), "workers outlived their SIGKILLed parent"


#: A job started in the background of a non-interactive shell (CI) inherits SIGINT as ignored,
#: and Python then keeps ignoring it; a terminal's Ctrl-C arrives with Python's own handler,
#: which the child reinstalls here (no preexec_fn: forking a JAX process runs no Python).
_CLI_WITH_CTRL_C = (
    "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "sys.argv[0] = 'covsim'; runpy.run_module('covsim.cli', run_name='__main__')"
)


def _sweep_proc(cfg: Path, out: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-c", _CLI_WITH_CTRL_C, "-q", "sweep", str(cfg), "--out", str(out)]
    return subprocess.Popen(
        [*cmd, *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "sig, code, extra",
    [
        (signal.SIGINT, 130, []),
        (signal.SIGTERM, 143, []),
        (signal.SIGINT, 130, ["--executor", "process", "--workers", "2"]),
    ],
)
def test_an_interrupt_stops_cleanly_and_the_rerun_resumes(tmp_path, sig, code, extra):
    cfg = _tiny(tmp_path, seeds=6)
    out = tmp_path / "s"
    proc = _sweep_proc(cfg, out, *extra)
    deadline = time.monotonic() + 300
    done = []
    while not done and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
        try:
            done = [c for c in read_manifest(out)["cells"] if c["status"] == "done"]
        except (OSError, CorruptResult):
            pass
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert err.strip().splitlines()[-1] == "interrupted; rerun the same command to resume"
    assert "Traceback" not in err
    finished = {c["id"] for c in read_manifest(out)["cells"] if c["status"] == "done"}
    assert 1 <= len(finished) < 6
    mtimes = {c: (out / c / "metrics.jsonl").stat().st_mtime_ns for c in finished}
    rerun = _sweep_proc(cfg, out)
    stdout, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0 and "6 cells (6 done" in stdout, err
    assert all((out / c / "metrics.jsonl").stat().st_mtime_ns == t for c, t in mtimes.items())


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_ctrl_c_swallowed_by_a_gc_callback_still_stops_the_sweep(tmp_path, monkeypatch, capsys):
    """CI once saw a Ctrl-C land in JAX's gc callback ("Exception ignored in
    _xla_gc_callback"): the sweep ran to its end and exited 0. The signal is recorded and the
    sweep raises it again between cells."""
    import gc
    import os

    calls = []

    def send_once(phase, info):
        if not calls:
            calls.append(phase)
            os.kill(os.getpid(), signal.SIGINT)  # handled inside this callback: swallowed

    def cell_with_gc(cfg, cell):
        if not calls:
            gc.callbacks.append(send_once)
            try:
                gc.collect()
            finally:
                gc.callbacks.remove(send_once)
        return toy_cell(cfg, cell)

    monkeypatch.setattr(cli, "_cell_fn", cell_with_gc)
    out = tmp_path / "s"
    assert main(["-q", "sweep", str(_tiny(tmp_path, seeds=4)), "--out", str(out)]) == 130
    assert calls, "the gc callback did not run"
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == "interrupted; rerun the same command to resume"
    cells = read_manifest(out)["cells"]
    assert [c["status"] for c in cells].count("done") == 1  # stopped after the first cell


# ---------------------------------------------------------------------------------------------
# (8) large sweeps: asked for, and bookkeeping proportional to the change


def test_a_huge_sweep_needs_yes(tmp_path, no_compute, capsys):
    cfg = _tiny(tmp_path)
    big = "sweep.axes={'train.n_train' = " + str(list(range(32, 32 + 334))) + "}"
    assert main(["sweep", str(cfg), "--set", big, "--out", str(tmp_path / "o")]) == 2
    err = _one_line(capsys.readouterr().err)
    assert err.startswith("sweep: 1002 cells (more than 1000)") and "--yes" in err
    assert not (tmp_path / "o").exists()


def test_the_manifest_is_written_twice_per_sweep_not_once_per_cell(tmp_path, monkeypatch):
    import covsim.sweep as sweep_mod

    writes = []
    real = sweep_mod.atomic_write_text
    monkeypatch.setattr(
        sweep_mod, "atomic_write_text", lambda p, t: writes.append(Path(p).name) or real(p, t)
    )
    cfg = load_config(_tiny(tmp_path, seeds=20), "quick")
    run_sweep(cfg, toy_cell, tmp_path / "s", progress=False)
    assert writes.count(MANIFEST) == 2
    assert not (tmp_path / "s" / EVENTS).exists()  # folded into the final manifest
    assert len(read_metrics(tmp_path / "s")) == 60


# ---------------------------------------------------------------------------------------------
# The config fuzzer: a bad value anywhere is refused before compute, one line, nothing written

_text = st.text(st.characters(codec="utf-8", exclude_characters='"\\\n\r'), max_size=8)
_string = _text.map(lambda s: '"' + s + '"')
_not_positive = st.integers(max_value=0).map(str)
_not_int = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False).filter(lambda x: not x.is_integer()).map(repr),
    _string,
    st.sampled_from(["true", "false", "[1]", "{a = 1}"]),
)
_bad_prob = st.one_of(
    st.floats(max_value=0.0).map(repr),
    st.floats(min_value=1.0).map(repr),
    st.sampled_from(["nan", "inf", "-inf"]),
    _string,
)
_bad_N = st.one_of(
    st.floats(max_value=1.0, exclude_max=True, allow_nan=False).map(repr),
    st.sampled_from(["nan", "inf"]),
    _string,
)
_bad_lr = st.one_of(
    st.floats(max_value=0.0, allow_nan=False).map(repr), st.sampled_from(["nan", "inf"]), _string
)

#: (override path, strategy of bad TOML values, the prefix the error must start with)
BAD = [
    ("train.steps", st.one_of(_not_positive, _not_int), "train.steps"),
    ("train.batch_size", st.one_of(_not_positive, _not_int), "train.batch_size"),
    ("train.eval_every", st.one_of(_not_positive, _not_int, st.sampled_from(["3", "7"])), "train."),
    ("train.eval_samples", st.one_of(_not_positive, _not_int), "train.eval_samples"),
    ("train.n_train", st.one_of(_not_positive, _not_int), "train.n_train"),
    (
        "train.Ns",
        st.lists(_bad_N, min_size=1, max_size=3).map(lambda v: "[" + ", ".join(v) + "]"),
        "train.Ns",
    ),
    ("train.Ns", st.sampled_from(["[]", "2", '"2"', "[2, 2]", "[4, 4.0, 8]"]), "train.Ns"),
    ("train.alpha", _bad_prob, "train.alpha"),
    ("train.loss", _string.filter(lambda s: s not in ('"sequence"', '"token"')), "train.loss"),
    ("train." + "bogus", _not_positive, "train.bogus"),
    ("task.H", st.one_of(_not_positive, _not_int), "task.H"),
    ("task.kind", _string, "task.kind"),
    ("model.kind", _string, "model.kind"),
    ("optim.name", _string, "optim."),
    ("optim.lr", _bad_lr, "optim"),
    (
        "sweep.seeds",
        st.one_of(_not_positive, st.sampled_from(["[]", "[1, 1]", "[-1]", '"3"'])),
        "sweep.seeds",
    ),
    ("sweep.vmap_seeds", st.one_of(_string, _not_positive), "sweep.vmap_seeds"),
]


@settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data(), command=st.sampled_from(["run", "sweep"]))
def test_fuzzed_bad_configs_are_refused_before_compute(tmp_path, monkeypatch, data, command):
    monkeypatch.setattr(cli, "_cell_fn", _no_compute)
    path, values, prefix = data.draw(st.sampled_from(BAD))
    value = data.draw(values)
    if path in ("task.kind", "model.kind", "optim.name"):
        value = value if value.strip('"') not in _KNOWN_KINDS else '"nope"'
    cfg = _tiny(tmp_path)
    out = tmp_path / f"o-{data.draw(st.integers(0, 10**9))}"
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["-q", command, str(cfg), "--out", str(out), "--set", f"{path}={value}"])
    text = err.getvalue()
    assert code == 2, (path, value, text)
    assert text.count("\n") == 1 and "Traceback" not in text, (path, value, text)
    assert text.startswith(prefix) or text.startswith("--set"), (path, value, text)
    assert not out.exists()


_KNOWN_KINDS = {"markov", "tabular", "adam", "sgd", "linear", "bernoulli", "loglinear"}
