"""Long cells: streamed records, progress bars, and resuming a killed cell bit for bit
(covsim.resume, run_seeds' on_eval and store)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from covsim import resume
from covsim.config import ConfigError, load_config
from covsim.models import Tabular
from covsim.results import PARTIAL_RECORDS, read_metrics
from covsim.sweep import StepBars
from covsim.tasks.markov import MarkovChain
from covsim.train import TrainSpec, make_train, run_seeds, to_records

ROOT = Path(__file__).resolve().parents[1]
HORIZON = ROOT / "experiments" / "horizon.toml"


@pytest.fixture(scope="module")
def trainer():
    task = MarkovChain.random(jax.random.key(1), V=4, H=6, order=1)
    spec = TrainSpec(steps=60, batch_size=8, n_train=40, eval_every=10, eval_samples=256,
                     Ns=(2.0, 16.0), checkpoints=(0, 30, 60), checkpoint_every=20)
    mf = lambda k: Tabular(task.V, task.H, P=task.P, prompt_vocab=1, rngs=nnx.Rngs(k))
    return make_train(task, mf, optax.adam(0.05), spec)


class Killed(Exception):
    pass


class DyingStore:
    """A StateStore that keeps its saves in memory and, like a SIGKILL, stops the run right
    after save number `die_after`."""

    def __init__(self, every, die_after=None):
        self.every, self.die_after, self.saves = every, die_after, {}

    def restore(self, template):
        if not self.saves:
            return None
        done = max(self.saves)
        return done, jax.tree.map(np.copy, self.saves[done])

    def save(self, done, tree):
        self.saves[done] = jax.tree.map(np.copy, tree)
        if self.die_after is not None and len(self.saves) == self.die_after:
            raise Killed


def assert_same(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_resumed_run_is_bit_identical(trainer):
    """Killed after its first save (step 20 of 60), a run continues from it and returns the
    same bits as a run never interrupted: metrics, losses, kept parameters, final state."""
    whole = run_seeds(trainer, [0, 1])
    store = DyingStore(trainer.spec.checkpoint_every, die_after=1)
    with pytest.raises(Killed):
        run_seeds(trainer, [0, 1], store=store)
    assert list(store.saves) == [2]  # segments done at the save
    store.die_after = None
    assert_same(run_seeds(trainer, [0, 1], store=store), whole)
    assert sorted(store.saves) == [2, 4, 6]  # every 20 steps and at the end


def test_on_eval_streams_every_checkpoint_once(trainer):
    """on_eval hands over each checkpoint as its segment ends (first call: checkpoint 0); the
    streamed records are the final records; after a resume the first call covers every
    checkpoint the restored state holds."""
    spec = trainer.spec
    calls = []
    on_eval = lambda part, first: calls.append((first, np.asarray(part.step)[0].tolist(),
                                                to_records(part, spec, seeds=[0, 1])))
    out = run_seeds(trainer, [0, 1], on_eval=on_eval)
    assert [(f, s) for f, s, _ in calls] == [(0, [0])] + [(e, [10 * e]) for e in range(1, 7)]
    streamed = [r for *_, recs in calls for r in recs]
    text = lambda recs: sorted(json.dumps(r, sort_keys=True) for r in recs)  # NaN == NaN
    assert text(streamed) == text(to_records(out, spec, seeds=[0, 1]))

    store, calls[:] = DyingStore(spec.checkpoint_every, die_after=2), []
    with pytest.raises(Killed):
        run_seeds(trainer, [0, 1], store=store)
    store.die_after = None
    run_seeds(trainer, [0, 1], store=store, on_eval=on_eval)
    assert [(f, s) for f, s, _ in calls] == [(0, [0, 10, 20, 30, 40]), (5, [50]), (6, [60])]


def test_orbax_store_round_trip_and_a_bad_checkpoint(trainer, tmp_path, capsys):
    """The orbax StageStore restores what it saved (the run continues bit-identically); a
    checkpoint that cannot be read is reported and the stage starts afresh, never read."""
    whole = run_seeds(trainer, [3])
    st = resume.StageStore(tmp_path / "state-main", trainer.spec.checkpoint_every)
    real_save = st.save

    def save_then_die(done, tree):
        real_save(done, tree)
        raise Killed

    st.save = save_then_die
    with pytest.raises(Killed):
        run_seeds(trainer, [3], store=st)
    st.close()
    again = resume.StageStore(tmp_path / "state-main", trainer.spec.checkpoint_every)
    assert_same(run_seeds(trainer, [3], store=again), whole)
    assert "resuming state-main after 2 evaluation(s)" in capsys.readouterr().err
    again.close()

    for f in (tmp_path / "state-main").rglob("*"):  # damage every file of the checkpoint
        if f.is_file():
            f.write_bytes(b"\0garbage")
    bad = resume.StageStore(tmp_path / "state-main", trainer.spec.checkpoint_every)
    assert_same(run_seeds(trainer, [3], store=bad), whole)
    assert "cannot resume from" in capsys.readouterr().err
    bad.close()


def test_work_dir_of_another_config_is_cleared(tmp_path):
    d = resume.work_dir(tmp_path, "H8-abc")
    assert d == tmp_path / "H8-abc.partial"
    with resume.cell_work(d, "a = 1\n", {"task.H": 8}) as w:
        assert resume.current() is w
        w.add_records([{"step": 0, "seed": 0}])
        w.add_records([{"step": 10, "seed": 0}])
        w.progress(10, 20)
    assert resume.current() is None
    lines = (d / PARTIAL_RECORDS).read_text().splitlines()
    assert [json.loads(x) for x in lines] == [{"task.H": 8, "step": s, "seed": 0} for s in (0, 10)]
    assert resume.read_progress(d)["step"] == 10
    with resume.cell_work(d, "a = 1\n") as w:  # same config: kept; a new process rewrites
        assert (d / PARTIAL_RECORDS).exists()
        w.add_records([{"step": 0, "seed": 0}])
        assert len((d / PARTIAL_RECORDS).read_text().splitlines()) == 1
    with resume.cell_work(d, "a = 2\n"):  # another config: its state is not this cell's
        assert not (d / PARTIAL_RECORDS).exists() and resume.read_progress(d) is None


def test_step_bars_follow_progress_files(tmp_path):
    """A bar per running cell of the given ids, from its work directory's progress file; a
    torn file is skipped; a cell whose steps are done loses its bar for good."""
    dirs = {c: resume.work_dir(tmp_path, c) for c in ("a", "b", "other")}
    for d in dirs.values():
        d.mkdir()
    write = lambda c, text: (dirs[c] / resume.PROGRESS).write_text(text)
    step = lambda n: json.dumps({"step": n, "total": 40, "time": 0})
    bars = StepBars(tmp_path, ["a", "b"])
    write("a", step(10))
    write("other", step(10))  # not a cell of this sweep's
    bars.poll()
    assert list(bars._bars) == ["a"] and bars._bars["a"].n == 10
    write("a", step(30))
    write("b", "{torn")  # being replaced: ignored
    bars.poll()
    assert bars._bars["a"].n == 30 and "b" not in bars._bars
    write("a", step(40))
    write("b", step(5))
    bars.poll()
    assert list(bars._bars) == ["b"] and "a" in bars._done
    write("a", step(0))  # its steps are done: no bar for it again
    bars.poll()
    assert list(bars._bars) == ["b"]
    bars.__exit__(None, None, None)
    assert not bars._bars


def test_checkpoint_every_must_be_a_multiple_of_eval_every():
    with pytest.raises(ConfigError, match=r"train.checkpoint_every: must be a multiple of "
                                          r"train.eval_every = 50"):
        load_config(HORIZON, "quick", ["train.eval_every=50", "train.checkpoint_every=120"])
    with pytest.raises(ValueError, match="argument checkpoint_every must be a multiple"):
        TrainSpec(steps=100, batch_size=2, eval_every=50, checkpoint_every=70)


# ---------------------------------------------------------------------------------------------
# A real sweep process: read while it runs, SIGKILLed, resumed

# the horizon experiment's quick cell, long enough to be caught running (120 evaluations)
_LONG = ["--set", "sweep.seeds=2", "--set", "sweep.axes={}", "--set", "train.steps=6000",
         "--set", "train.eval_every=50", "--set", "train.checkpoint_every=200"]


def _sweep(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "covsim", "-q", "sweep", str(HORIZON), "--out", str(out),
            *_LONG, *extra]


def _wait_for(pred, proc, timeout=240.0):
    t0 = time.monotonic()
    while not pred():
        assert proc.poll() is None, "the sweep ended before the test could catch it running"
        assert time.monotonic() - t0 < timeout, "timed out waiting for the running sweep"
        time.sleep(0.02)


def test_sigkilled_cell_resumes_byte_identical(tmp_path):
    """A sweep is read while its cell runs (the partial records are the final ones so far,
    and `covsim plot` draws them marked), SIGKILLed mid-cell, and rerun: the cell resumes
    from its last saved state, not from step 0, and its metrics.jsonl is byte-identical to
    an uninterrupted run's."""
    ref = tmp_path / "uninterrupted"
    subprocess.run(_sweep(ref), check=True, capture_output=True, timeout=600)
    [ref_cell] = [d for d in ref.iterdir() if d.is_dir()]
    want = (ref_cell / "metrics.jsonl").read_bytes()

    out = tmp_path / "killed"
    proc = subprocess.Popen(_sweep(out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        partial = lambda: list(out.glob(f"*.partial/{PARTIAL_RECORDS}"))
        _wait_for(lambda: partial() and len(partial()[0].read_text().splitlines()) >= 6, proc)
        df = read_metrics(out, partial=True)  # while it runs
        assert df["partial"].all() and len(df) >= 6 and df["step"].min() == 0
        got = {json.dumps(json.loads(x), sort_keys=True)
               for x in partial()[0].read_text().splitlines()}
        final = {json.dumps(json.loads(x), sort_keys=True) for x in want.decode().splitlines()}
        assert got <= final  # streamed records are the final records, as they arrive
        p = subprocess.run([sys.executable, "-m", "covsim", "plot", str(out), "--out",
                            str(tmp_path / "fig")], capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr
        assert "not finished" in p.stderr and (tmp_path / "fig" / "killed.png").is_file()

        states = lambda: list(out.glob("*.partial/state-main/[0-9]*"))
        _wait_for(lambda: len(states()) > 0, proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    [work] = out.glob("*.partial")
    assert not (out / work.name.removesuffix(".partial")).exists()  # killed mid-cell

    p = subprocess.run(_sweep(out), capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    done = int(p.stderr.split("resuming state-main after ")[1].split()[0])
    assert 4 <= done < 120  # from a saved state (every 4 evaluations), not from step 0
    assert (out / ref_cell.name / "metrics.jsonl").read_bytes() == want
    assert not work.exists()  # the finished cell's work directory is gone
    assert os.listdir(out / ref_cell.name) == os.listdir(ref_cell)
