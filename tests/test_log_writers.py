"""covsim.log_writers: JSONL, CSV, TensorBoard and W&B (offline) logs of a sweep, each read
back and compared with the run directories' records; a failing writer loses no result;
[log] never changes a cell's config or the sweep's hash."""

import json
import math
import struct

import numpy as np
import pandas as pd
import pytest
from tiny import TRAINER

from covsim.cli import main
from covsim.log_writers import CsvWriter, Writers, run_keys, scalars, tb_tag
from covsim.results import read_metrics

SWEEP = (
    """
[experiment]
name = "logged"

[task]
kind = "markov"
V = 4
H = 3
"""
    + TRAINER
    + """
[sweep]
seeds = 2

[sweep.axes]
"task.H" = [3, 4]
"""
)

REC = {"task.H": 3, "seed": 0, "step": 10, "kl": 0.5, "cov@2": 0.25, "pos_kl": [0.1, 0.2],
       "diverged_step": -1, "finite": True}


def _sweep(tmp_path, *extra):
    cfg = tmp_path / "logged.toml"
    cfg.write_text(SWEEP)
    out = tmp_path / "sweep"
    assert main(["-q", "sweep", str(cfg), "--out", str(out), *extra]) == 0
    return out


def test_scalars_leave_out_step_seed_coordinates_lists_and_bools():
    assert scalars(REC, coords=["task.H"]) == {"kl": 0.5, "cov@2": 0.25, "diverged_step": -1.0}


def test_run_keys_split_a_many_seed_cell_by_seed():
    recs = [{"seed": 0, "step": 0}, {"seed": 1, "step": 0}, {"seed": 0, "step": 10}]
    assert run_keys("c", recs, one_seed=True) == {"c": recs}
    split = run_keys("c", recs, one_seed=False)
    assert list(split) == ["c/seed0", "c/seed1"] and len(split["c/seed0"]) == 2


def test_csv_widens_its_header_for_a_later_column(tmp_path):
    w = CsvWriter(tmp_path)
    w.write("a", 0, {"step": 0, "kl": 1.0})
    w.write("a", 10, {"step": 10, "kl": math.inf, "cov@2": 0.5, "pos_kl": [0.1]})
    again = CsvWriter(tmp_path)  # a resumed sweep appends under the same header
    again.write("b", 0, {"step": 0, "kl": 2.0, "cov@2": 0.1, "pos_kl": [0.2]})
    df = pd.read_csv(tmp_path / "metrics.csv")
    assert list(df.columns) == ["run", "step", "kl", "cov@2", "pos_kl"]
    assert df["kl"].tolist() == [1.0, math.inf, 2.0]
    assert np.isnan(df["cov@2"][0]) and df["cov@2"][1:].tolist() == [0.5, 0.1]
    assert json.loads(df["pos_kl"][2]) == [0.2]


def test_sweep_logs_jsonl_and_csv_equal_to_its_results(tmp_path):
    out = _sweep(tmp_path, "--log", "jsonl,csv")
    df = read_metrics(out)
    cols = ["kl", "ce", "cov@2", "cov@8", "cov_lo@8"]
    jl = pd.DataFrame.from_records(
        [json.loads(line) for line in (out / "logs" / "metrics.jsonl").read_text().splitlines()])
    cv = pd.read_csv(out / "logs" / "metrics.csv")
    for logged in (jl, cv):
        assert len(logged) == len(df) == 2 * 2 * 3  # 2 H × 2 seeds × 3 evaluations
        a = logged.set_index(["run", "step"]).sort_index()[cols]
        b = df.set_index(["run", "step"]).sort_index()[cols]
        pd.testing.assert_frame_equal(a, b, check_dtype=False)  # the same floats, exactly
    # a resume with other writers is the same sweep (no --force), and redoes nothing
    assert main(["-q", "sweep", str(tmp_path / "logged.toml"), "--out", str(out)]) == 0
    assert len((out / "logs" / "metrics.jsonl").read_text().splitlines()) == len(df)
    cell = df["run"][0]
    assert "[log]" not in (out / cell / "config.toml").read_text()


def _tfrecords(path):
    data, pos, out = path.read_bytes(), 0, []
    while pos < len(data):
        (n,) = struct.unpack("<Q", data[pos:pos + 8])
        out.append(data[pos + 12:pos + 12 + n])
        pos += 12 + n + 4
    return out


def test_tensorboard_event_files_read_back(tmp_path):
    pytest.importorskip("tensorboardX", reason="the tensorboard extra is not installed")
    from tensorboardX.proto.event_pb2 import Event

    out = _sweep(tmp_path, "--log", "tensorboard")
    df = read_metrics(out)
    got = {}
    for f in (out / "logs" / "tensorboard").rglob("events.out.tfevents.*"):
        run = f.parent.relative_to(out / "logs" / "tensorboard").as_posix()
        for raw in _tfrecords(f):
            e = Event.FromString(raw)
            for v in e.summary.value:
                got[(run, e.step, v.tag)] = v.simple_value
    assert len({k[0] for k in got}) == 4  # one event file per cell and seed
    for _, r in df.iterrows():  # one seed per cell: the run key is the cell id
        for tag in ("kl", "cov@8", "train_loss"):
            got_v = got[(r["run"], r["step"], tb_tag(tag))]
            assert got_v == pytest.approx(r[tag], rel=1e-6, nan_ok=True)  # float32 events


def _wandb_records(path):
    """The records of a W&B .wandb file (a LevelDB-style log of protobuf Records)."""
    data, pos, out, buf = path.read_bytes(), 7, [], b""
    block = 32768
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and n == 0:
            pos += left
            continue
        buf += data[pos + 7:pos + 7 + n]
        pos += 7 + n
        if kind in (1, 4):  # FULL or LAST chunk
            out.append(buf)
            buf = b""
    return out


def test_wandb_offline_runs_hold_every_record(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="the wandb extra is not installed")
    from wandb.proto import wandb_internal_pb2 as pb

    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-home"))
    out = _sweep(tmp_path, "--log", "wandb", "--set", 'log.wandb_mode="offline"')
    df = read_metrics(out)
    runs = {}
    for f in (out / "logs" / "wandb").glob("offline-run-*/run-*.wandb"):
        name, hist = None, {}
        for raw in _wandb_records(f):
            r = pb.Record.FromString(raw)
            if r.WhichOneof("record_type") == "run":
                name = r.run.display_name
                cfg = {u.key: json.loads(u.value_json) for u in r.run.config.update}
            elif r.WhichOneof("record_type") == "history":
                h = {i.key or "/".join(i.nested_key): json.loads(i.value_json)
                     for i in r.history.item}
                hist[h["_step"]] = h
        runs[name] = (cfg, hist)
    assert len(runs) == 4
    for _, r in df.iterrows():
        cfg, hist = runs[r["run"]]
        assert cfg["task.H"] == r["task.H"] and cfg["seed"] == r["seed"]
        assert cfg["optim.lr"] == 0.1  # the run's config, flattened
        assert hist[r["step"]]["kl"] == r["kl"] and hist[r["step"]]["cov@8"] == r["cov@8"]


def test_a_failing_writer_is_dropped_and_the_results_kept(tmp_path, capsys, monkeypatch):
    from covsim import log_writers

    def broken(self, run, step, record):
        raise OSError("disk full")

    monkeypatch.setattr(log_writers.CsvWriter, "write", broken)
    out = _sweep(tmp_path, "--log", "csv,jsonl")
    assert "log writer dropped: CsvWriter: disk full" in capsys.readouterr().err
    assert len(read_metrics(out)) == 12
    assert len((out / "logs" / "metrics.jsonl").read_text().splitlines()) == 12


def test_unknown_writers_are_one_line_errors(tmp_path, capsys):
    cfg = tmp_path / "logged.toml"
    cfg.write_text(SWEEP)
    assert main(["sweep", str(cfg), "--out", str(tmp_path / "o"), "--log", "tb"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("--log: log.writers[0]: must be one of") and "\n" not in err
    with pytest.raises(ValueError, match="unknown writer 'tb'"):
        Writers(["tb"], tmp_path)
