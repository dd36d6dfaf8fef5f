"""Sweeps and the on-disk contract: grid order/ids, resuming after a real kill, failures,
half-written cells, executors, and exact JSON round trips (inf included).

The cell functions are cheap deterministic pure functions of (cell config, cell); each call
leaves a file in $COVSIM_TEST_CALLS so calls are counted across processes. Run as a script,
this file is the sweep job that the kill test starts and SIGKILLs.
"""

import json
import math
import os
import signal
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import tiny  # noqa: F401  (registers the "toy" task kind)

from covsim.config import ConfigError, load_config
from covsim.fileio import TMP_PREFIX
from covsim.results import (
    RunResult,
    read_manifest,
    read_metrics,
    read_run,
    read_summaries,
    write_run,
)
from covsim.sweep import SweepError, cell_config, expand_grid, run_sweep

ROOT = Path(__file__).resolve().parents[1]

EXPERIMENT = """
[experiment]
name = "toy"

[task]
kind = "toy"
H = 8

[model]
kind = "tabular"

[optim]
name = "sgd"
lr = 0.1

[train]
steps = 20
batch_size = 4
n_train = 10
eval_every = 10
eval_samples = 100
Ns = [2, 16]
pass_at = [1, 4]

[sweep]
seeds = 2

[sweep.axes]
"task.H" = [8, 16]
"train.n_train" = [10, 20]
"""


def toy_result(cfg, cell) -> RunResult:
    """A deterministic RunResult from the cell's config and coordinates only."""
    records = []
    H, n = cfg.task.H, cfg.train.n_train
    for seed in cell.seeds:
        u = cell.rng_seed(seed) / 2**31
        for step in range(0, cfg.train.steps + 1, cfg.train.eval_every):
            kl = H / (n * (1 + step)) + u
            if H == 16 and seed == 1 and step == cfg.train.steps:
                kl = math.inf  # zero model probability somewhere: r = +inf
            records.append(
                {
                    "step": step,
                    "seed": seed,
                    "kl": kl,
                    "ce": np.float32(kl + 1.0),
                    "cov": {N: min(1.0, kl / math.log(N)) for N in cfg.train.Ns},
                    "pass_at": {k: 1 - 0.5**k for k in cfg.train.pass_at},
                }
            )
    return RunResult(records, summary={"final_kl": records[-1]["kl"], "H": H})


def _count_call(cell) -> int:
    calls = Path(os.environ["COVSIM_TEST_CALLS"])
    n = len(list(calls.iterdir())) + 1
    (calls / f"{n:03d}-{cell.id}").touch()
    return n


def counted_cell_fn(cfg, cell):
    n = _count_call(cell)
    if n == int(os.environ.get("COVSIM_TEST_KILL_AT", "0")):
        os.kill(os.getpid(), signal.SIGKILL)  # a real kill, mid-cell
    return toy_result(cfg, cell)


def flaky_cell_fn(cfg, cell):
    """Raises for (H=16, n=20, seed 0); diverges for (H=8, n=10, seed 1)."""
    _count_call(cell)
    if (cfg.task.H, cfg.train.n_train, cell.seeds) == (16, 20, (0,)):
        raise ValueError("loss is nan")
    res = toy_result(cfg, cell)
    if (cfg.task.H, cfg.train.n_train, cell.seeds) == (8, 10, (1,)):
        res = RunResult(res.records[:1], res.summary, diverged=True, diverged_step=3)
    return res


def called(calls: Path) -> list[str]:
    """Cell ids in call order."""
    return [p.name.split("-", 1)[1] for p in sorted(calls.iterdir())]


def cell_files(out: Path) -> dict[str, bytes]:
    return {
        f"{d.name}/{f.name}": f.read_bytes()
        for d in sorted(out.iterdir())
        if d.is_dir()
        for f in sorted(d.iterdir())
    }


@pytest.fixture
def cfg(tmp_path):
    p = tmp_path / "toy.toml"
    p.write_text(EXPERIMENT)
    return load_config(p, profile=None)


@pytest.fixture
def calls(tmp_path, monkeypatch):
    d = tmp_path / "calls"
    d.mkdir()
    monkeypatch.setenv("COVSIM_TEST_CALLS", str(d))
    return d


def reset(calls: Path) -> None:
    for p in calls.iterdir():
        p.unlink()


# ---------------------------------------------------------------------------------------------
# Grid


def test_grid_order_and_ids_are_stable():
    cells = expand_grid({"task.H": [8, 16], "train.n_train": [10, 20]}, seeds=2)
    assert [tuple(c.coords.values()) for c in cells] == [
        (H, n, s) for H in (8, 16) for n in (10, 20) for s in (0, 1)
    ]
    assert [c.seeds for c in cells] == [(s,) for _ in range(4) for s in (0, 1)]
    # Ids are a pure function of the coordinates: pinned so a change that would orphan every
    # finished cell on disk is noticed.
    assert cells[0].id == "H8-n_train10-seed0-" + cells[0].id[-8:]
    assert [c.id for c in cells] == [
        c.id for c in expand_grid({"task.H": [8, 16], "train.n_train": [10, 20]}, [0, 1])
    ]
    assert len({c.id for c in cells}) == 8
    vm = expand_grid({"task.H": [8, 16]}, seeds=[3, 5], vmap_seeds=True)
    assert [(c.coords, c.seeds) for c in vm] == [({"task.H": 8}, (3, 5)), ({"task.H": 16}, (3, 5))]
    # 1, 1.0 and True are different coordinates
    assert len({c.id for c in expand_grid({"x.y": [1, 1.0, True]}, 1)}) == 3
    with pytest.raises(ValueError, match=r"axes\['task.H'\] is an empty sweep axis"):
        expand_grid({"task.H": []}, 1)
    with pytest.raises(ValueError, match="argument seeds must be an integer ≥ 1, got 0"):
        expand_grid({}, 0)


def test_cell_seed_depends_only_on_coordinates():
    split = expand_grid({"task.H": [8, 16]}, seeds=3)
    batched = expand_grid({"task.H": [16, 8]}, seeds=[2, 1, 0], vmap_seeds=True)
    by_point = {c.coords["task.H"]: c for c in batched}
    for c in split:
        (s,) = c.seeds
        assert c.rng_seed(s) == by_point[c.coords["task.H"]].rng_seed(s)
        assert 0 <= c.rng_seed(s) < 2**31
    assert len({c.rng_seed(c.seeds[0]) for c in split}) == 6
    with pytest.raises(ValueError, match="argument seed must be one of"):
        split[0].rng_seed(1)


def test_cell_config_is_a_standalone_run(cfg):
    cell = expand_grid(cfg.sweep.axes, cfg.sweep.seeds)[5]
    c = cell_config(cfg, cell)
    assert (c.task.H, c.train.n_train, c.sweep.seeds, c.sweep.axes) == (16, 10, [1], {})


# ---------------------------------------------------------------------------------------------
# Resuming


def sweep_job(config: Path, out: Path, calls: Path, kill_at: int) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), COVSIM_TEST_CALLS=str(calls))
    env["COVSIM_TEST_KILL_AT"] = str(kill_at)
    cmd = [sys.executable, __file__, str(config), str(out)]
    return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_killed_sweep_resumes_and_matches_an_uninterrupted_run(tmp_path, cfg, calls):
    ref = tmp_path / "ref"
    run_sweep(cfg, counted_cell_fn, ref, progress=False)
    all_ids = [c.id for c in expand_grid(cfg.sweep.axes, cfg.sweep.seeds)]
    assert called(calls) == all_ids
    reset(calls)

    out = tmp_path / "out"
    job = sweep_job(tmp_path / "toy.toml", out, calls, kill_at=4)
    assert job.returncode == -signal.SIGKILL, job.stderr
    assert called(calls) == all_ids[:4]  # the 4th was killed mid-cell
    status = [c["status"] for c in read_manifest(out)["cells"]]  # manifest.json + events.jsonl
    assert status == ["done"] * 3 + ["pending"] * 5
    assert not (out / all_ids[3]).exists()
    reset(calls)

    manifest = run_sweep(cfg, counted_cell_fn, out, progress=False)  # same arguments
    assert called(calls) == all_ids[3:]  # only the missing cells ran, each once
    assert [c["status"] for c in manifest["cells"]] == ["done"] * 8
    assert cell_files(out) == cell_files(ref)  # config.toml, metrics.jsonl, summary.json
    assert (out / "manifest.json").read_bytes() == (ref / "manifest.json").read_bytes()

    reset(calls)
    run_sweep(cfg, counted_cell_fn, out, progress=False)
    assert called(calls) == []  # nothing left to do


def test_half_written_cells_are_not_mistaken_for_finished(tmp_path, cfg, calls):
    cfg = cfg.with_values({"sweep.axes": {"task.H": [8, 16]}, "sweep.seeds": [0]})
    out = tmp_path / "out"
    run_sweep(cfg, counted_cell_fn, out, progress=False)
    before = cell_files(out)
    a, b = [c.id for c in expand_grid(cfg.sweep.axes, cfg.sweep.seeds)]
    reset(calls)
    # a: a final-named dir missing a file (not made by write_run, e.g. copied by hand) is
    # unfinished.
    (out / a / "summary.json").unlink()
    # b: killed while its temp dir was being filled: the final name never appeared.
    tmp = out / f"{TMP_PREFIX}{b}-0123abcd"
    (out / b).rename(tmp)
    (tmp / "summary.json").unlink()
    run_sweep(cfg, counted_cell_fn, out, progress=False)
    assert sorted(called(calls)) == sorted([a, b])
    assert not list(out.glob(TMP_PREFIX + "*"))
    assert cell_files(out) == before


def test_a_different_config_is_refused_unless_forced(tmp_path, cfg, calls):
    out = tmp_path / "out"
    run_sweep(cfg, counted_cell_fn, out, progress=False)
    reset(calls)
    wider = cfg.with_values({"sweep.axes.task.H": [8, 16, 32]})
    with pytest.raises(SweepError, match="holds a different sweep"):
        run_sweep(wider, counted_cell_fn, out, progress=False)
    assert called(calls) == []
    manifest = run_sweep(wider, counted_cell_fn, out, progress=False, force=True)
    new = [
        c.id for c in expand_grid(wider.sweep.axes, wider.sweep.seeds) if c.coords["task.H"] == 32
    ]
    assert called(calls) == new  # the cells whose config is unchanged were kept
    assert len(manifest["cells"]) == 12
    reset(calls)
    longer = cfg.with_values({"train.steps": 30})  # every cell's config changes
    run_sweep(longer, counted_cell_fn, out, progress=False, force=True)
    assert len(called(calls)) == 8
    df = read_metrics(out)  # the 4 stale H=32 dirs are on disk but not in the manifest
    assert len(df) == 8 * 4 and df["step"].max() == 30 and set(df["task.H"]) == {8, 16}


def test_failed_and_diverged_cells_are_recorded_and_the_rest_finish(tmp_path, cfg, calls):
    out = tmp_path / "out"
    manifest = run_sweep(cfg, flaky_cell_fn, out, progress=False)
    by = {
        (c["coords"]["task.H"], c["coords"]["train.n_train"], c["coords"]["seed"]): c
        for c in manifest["cells"]
    }
    assert by[16, 20, 0]["status"] == "failed"
    assert by[16, 20, 0]["error"].startswith("ValueError: loss is nan (at test_sweep.py:")
    assert by[8, 10, 1]["status"] == "diverged"
    assert sum(c["status"] == "done" for c in manifest["cells"]) == 6
    assert not (out / by[16, 20, 0]["id"]).exists()
    s = read_summaries(out).set_index("run")
    assert s.loc[by[16, 20, 0]["id"], "status"] == "failed"
    assert s.loc[by[8, 10, 1]["id"], "diverged_step"] == 3
    assert len(read_metrics(out)) == 6 * 3 + 1
    reset(calls)
    manifest = run_sweep(cfg, counted_cell_fn, out, progress=False)  # fixed: only the failed reruns
    assert called(calls) == [by[16, 20, 0]["id"]]
    assert sorted(c["status"] for c in manifest["cells"]) == ["diverged"] + ["done"] * 7


def test_a_result_breaking_the_contract_fails_that_cell_only(tmp_path, cfg):
    def no_step(cell_cfg, cell):
        return RunResult([{"kl": 1.0}])

    manifest = run_sweep(cfg, no_step, tmp_path / "out", progress=False)
    assert {c["status"] for c in manifest["cells"]} == {"failed"}
    assert "record 0 has no 'step'" in manifest["cells"][0]["error"]


def test_process_executor_gives_the_same_files(tmp_path, cfg, calls):
    cfg = cfg.with_values({"sweep.axes": {"task.H": [8, 16], "train.n_train": [20]}})
    run_sweep(cfg, flaky_cell_fn, tmp_path / "local", progress=False)
    reset(calls)
    manifest = run_sweep(
        cfg, flaky_cell_fn, tmp_path / "proc", executor="process", workers=2, progress=False
    )
    assert len(called(calls)) == 4
    assert [c["status"] for c in manifest["cells"]] == ["done", "done", "failed", "done"]
    assert cell_files(tmp_path / "proc") == cell_files(tmp_path / "local")
    with pytest.raises(TypeError, match="cell_fn must be picklable"):
        run_sweep(cfg, lambda c, x: None, tmp_path / "p2", executor="process", progress=False)


def test_ray_executor(tmp_path, cfg, calls, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ImportError, match="executor='ray' needs Ray"):
        run_sweep(cfg, counted_cell_fn, tmp_path / "r", executor="ray", progress=False)
    assert not (tmp_path / "r").exists()  # refused before touching the disk

    # A synchronous stand-in with Ray's API: checks the in-flight bound and the bookkeeping.
    ray = types.SimpleNamespace(inited=False, out={}, peak=0)
    ray.is_initialized = lambda: ray.inited
    ray.init = lambda **kw: setattr(ray, "inited", True) or setattr(ray, "init_kw", kw)
    ray.shutdown = lambda: setattr(ray, "inited", False)
    ray.cancel = lambda ref, force: None

    def submit(fn, *args):
        ref = object()
        ray.out[ref] = fn(*args)
        ray.peak = max(ray.peak, len(ray.out))
        return ref

    ray.remote = lambda fn: types.SimpleNamespace(remote=lambda *a: submit(fn, *a))
    ray.wait = lambda refs, num_returns: (refs[-1:], refs[:-1])
    ray.get = lambda ref: ray.out.pop(ref)
    monkeypatch.setitem(sys.modules, "ray", ray)
    manifest = run_sweep(
        cfg, flaky_cell_fn, tmp_path / "r", executor="ray", workers=3, progress=False
    )
    assert ray.peak == 3 and not ray.inited  # the cluster it started is shut down again
    # its workers see this process's import path (covsim, a config's plugin folder)
    assert ray.init_kw["runtime_env"]["env_vars"]["PYTHONPATH"].split(os.pathsep) == [
        p for p in sys.path if p]
    assert sorted(c["status"] for c in manifest["cells"]) == ["diverged"] + ["done"] * 6 + [
        "failed"
    ]
    run_sweep(cfg, flaky_cell_fn, tmp_path / "l", progress=False)
    assert cell_files(tmp_path / "r") == cell_files(tmp_path / "l")


def test_cells_are_validated_before_anything_runs(tmp_path, cfg, calls):
    # Each value is valid alone; steps = 30 with eval_every = 20 is not.
    cfg = cfg.with_values({"sweep.axes": {"train.steps": [20, 30], "train.eval_every": [10, 20]}})
    with pytest.raises(
        ConfigError, match=r"^cell steps30-eval_every20-seed0-\w{8}: train\.steps: must"
    ):
        run_sweep(cfg, counted_cell_fn, tmp_path / "out", progress=False)
    assert called(calls) == [] and not (tmp_path / "out").exists()


def test_bad_executor_arguments(tmp_path, cfg):
    with pytest.raises(ValueError, match="argument executor must be one of"):
        run_sweep(cfg, counted_cell_fn, tmp_path, executor="slurm")
    with pytest.raises(ValueError, match="argument workers must be 1 with executor='local', got 2"):
        run_sweep(cfg, counted_cell_fn, tmp_path, workers=2)
    with pytest.raises(ValueError, match="argument workers must be an integer ≥ 1, got 0"):
        run_sweep(cfg, counted_cell_fn, tmp_path, executor="process", workers=0)


# ---------------------------------------------------------------------------------------------
# Results on disk


def test_run_round_trips_exactly_including_inf_and_nan(tmp_path, cfg):
    records = [
        {
            "step": 0,
            "seed": np.int64(2),
            "kl": math.inf,
            "ce": -math.inf,
            "x": math.nan,
            "f32": np.float32(0.1),
            "arr": np.array([1.5, np.inf], dtype=np.float32),
            "cov": {2.0: 0.5, 5.7: math.inf, 16: 0.0},
            "cov_lo": {"16.0": 0.25, "5.7": 0.5},  # train writes N as text
            "pass_at": {np.int64(4): 1.0},
            "label": "ok",
        }
    ]
    res = RunResult(
        records, summary={"kl": math.inf, "cov": {16: 0.1}}, diverged=True, diverged_step=7
    )
    write_run(tmp_path / "run", cfg, res, coords={"task.H": 8})
    text = (tmp_path / "run" / "metrics.jsonl").read_text()
    assert '"kl":"inf"' in text and '"f32":0.1' in text and "Infinity" not in text
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON {c}"))
    run = read_run(tmp_path / "run")
    (r,) = run.result.records
    assert list(r)[:2] == ["task.H", "step"]  # coordinates first
    assert r["kl"] == math.inf and r["ce"] == -math.inf and math.isnan(r["x"])
    assert np.float32(r["f32"]) == np.float32(0.1) and r["arr"] == [1.5, math.inf]
    assert r["cov"] == {2: 0.5, 5.7: math.inf, 16: 0.0} and r["pass_at"] == {4: 1.0}
    assert r["cov_lo"] == {16: 0.25, 5.7: 0.5}
    assert r["seed"] == 2 and r["label"] == "ok"
    assert run.result.summary == {"kl": math.inf, "cov": {16: 0.1}}
    assert (run.result.diverged, run.result.diverged_step, run.coords) == (True, 7, {"task.H": 8})
    assert run.config == cfg.to_dict()
    df = read_metrics(tmp_path / "run")
    assert df.loc[0, "kl"] == math.inf and df.loc[0, "cov@5.7"] == math.inf
    assert {"run", "task.H", "cov@2", "cov@16", "cov_lo@5.7", "pass@4"} <= set(df.columns)
    with pytest.raises(ValueError, match="a threshold N must be a number, got 'all'"):
        write_run(tmp_path / "bad", cfg, RunResult([{"step": 0, "seed": 0, "cov": {"all": 1.0}}]))
    assert not (tmp_path / "bad").exists()


def test_write_run_replaces_atomically_and_checks_the_contract(tmp_path, cfg):
    run = tmp_path / "runs" / "run"
    write_run(run, cfg, RunResult([{"step": 0, "seed": 0, "kl": 1.0}]))
    write_run(run, cfg, RunResult([{"step": 0, "seed": 0, "kl": 2.0}]))
    assert read_run(run).result.records[0]["kl"] == 2.0
    assert sorted(p.name for p in run.parent.iterdir()) == ["run"]
    with pytest.raises(ValueError, match="record 0 has task.H=16, its cell has 8"):
        write_run(run, cfg, RunResult([{"step": 0, "seed": 0, "task.H": 16}]), {"task.H": 8})
    with pytest.raises(ValueError, match="record 0 has no 'seed'"):
        write_run(run, cfg, RunResult([{"step": 0}]))
    assert sorted(p.name for p in run.parent.iterdir()) == ["run"]  # nothing half-written
    assert read_run(run).result.records[0]["kl"] == 2.0
    with pytest.raises(ValueError, match="diverged_step must be None"):
        RunResult([], diverged_step=3)


def test_sweep_metrics_frame(tmp_path, cfg):
    out = tmp_path / "out"
    run_sweep(cfg, toy_result, out, progress=False)
    df = read_metrics(out)
    assert len(df) == 8 * 3
    assert list(df.columns[:4]) == ["run", "task.H", "train.n_train", "seed"]
    assert {"kl", "ce", "cov@2", "cov@16", "pass@1", "pass@4"} <= set(df.columns)
    last = df[(df["task.H"] == 16) & (df["seed"] == 1) & (df["step"] == 20)]
    assert len(last) == 2 and (last["kl"] == math.inf).all() and (last["cov@16"] == 1.0).all()
    s = read_summaries(out)
    assert len(s) == 8 and (s["status"] == "done").all() and (s["H"] == s["task.H"]).all()
    with pytest.raises(FileNotFoundError, match="neither a run directory"):
        read_metrics(tmp_path)


if __name__ == "__main__":  # the sweep job of the kill test
    config, out = sys.argv[1:3]
    run_sweep(load_config(config, profile=None), counted_cell_fn, out, progress=False)
