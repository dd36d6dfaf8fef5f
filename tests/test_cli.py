"""The `covsim` command line: list, run (contract files), one-line config errors with exit 2,
a SIGKILLed sweep resumed to byte-identical results, reproduce (verdict line, figure, exit
codes) and REPRODUCTION.md rows updated in place.

Tiny configs keep JAX work to a few compiles, which the persistent compilation cache that the
CLI switches on makes cheap on reruns.
"""

import dataclasses
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import matplotlib.pyplot as plt
import pytest
from tiny import TRAINER

from covsim import claims, plots
from covsim.claims import Claim, Verdict
from covsim.cli import main
from covsim.report import read_report_rows, update_report
from covsim.results import RUN_FILES, RunResult, read_manifest, read_metrics

TINY = (
    """
[experiment]
name = "tiny"
claim = "{claim}"

[task]
kind = "markov"
V = 4
H = 3
"""
    + TRAINER
    + """
[sweep]
seeds = {seeds}
vmap_seeds = {vmap}

[profile.quick]
"train.steps" = 20

[profile.full]
"train.steps" = 40
"""
)


def _tiny(tmp_path, name="tiny.toml", claim="", seeds=2, vmap=True, edit=None):
    text = TINY.format(claim=claim, seeds=seeds, vmap=str(vmap).lower())
    if edit:
        text = edit(text)
    p = tmp_path / name
    p.write_text(text)
    return p


def test_list(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "claims:" in out and "prop_3_1" in out and "Prop. 3.1" in out
    assert "experiments (" in out and "profiles: quick,full" in out


def test_run_writes_the_contract_files(tmp_path, capsys):
    cfg = _tiny(tmp_path)
    out = tmp_path / "run"
    # (the --set changes no array shape: the compiled trainer is shared with the other tests)
    args = ["-q", "run", str(cfg), "--out", str(out), "--set", 'experiment.description="d"']
    assert main(args) == 0
    assert all((out / f).is_file() for f in RUN_FILES)
    df = read_metrics(out)
    assert sorted(df["seed"].unique()) == [0, 1]
    assert sorted(df["step"].unique()) == [0, 10, 20]
    assert {"kl", "cov@2", "cov_lo@8"} <= set(df.columns)
    assert 'description = "d"' in (out / "config.toml").read_text()
    assert f"-> {out}" in capsys.readouterr().out


def _set(text, section_key, line):
    return text.replace(section_key, f"{section_key}\n{line}", 1)


MALFORMED = {
    "unknown key": (lambda t: _set(t, "[train]", "stepz = 3"), "train.stepz"),
    "unknown task key": (lambda t: _set(t, "[task]", "foo = 1"), "task"),
    "wrong type": (lambda t: t.replace("batch_size = 8", 'batch_size = "8"'), "train.batch_size"),
    "negative H": (lambda t: t.replace("H = 3", "H = -3"), "task.H"),
    "N < 1": (lambda t: t.replace("Ns = [2, 8]", "Ns = [0.5, 8]"), "train.Ns[0]"),
    "empty sweep axis": (lambda t: t + '\n[sweep.axes]\n"task.H" = []\n', "sweep.axes['task.H']"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
@pytest.mark.parametrize("command", ["run", "sweep"])
def test_malformed_config_is_one_line_exit_2(tmp_path, capsys, case, command):
    edit, field = MALFORMED[case]
    cfg = _tiny(tmp_path, edit=edit)
    assert main([command, str(cfg), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(field), err
    assert "Traceback" not in err and not (tmp_path / "o").exists()


def test_bad_command_line_values_exit_2(tmp_path, capsys):
    cfg = _tiny(tmp_path)
    assert main(["run", str(tmp_path / "missing.toml")]) == 2
    assert capsys.readouterr().err.startswith("CONFIG: no such file")
    assert main(["run", str(cfg), "--set", "train.steps"]) == 2
    assert "expected PATH=VALUE" in capsys.readouterr().err
    assert main(["run", str(cfg), "--set", "sweep.axes.task.H=[2, 3]"]) == 2
    assert capsys.readouterr().err.startswith("sweep.axes: `covsim run` runs one point")
    assert main(["run", str(cfg), "--profile", "huge"]) == 2  # a profile the file lacks
    assert "unknown profile 'huge'" in capsys.readouterr().err


def console_script() -> Path:
    """The `covsim` script installed beside the interpreter running the tests (the venv's
    bin/), never one found on the caller's PATH."""
    return Path(sys.executable).parent / ("covsim.exe" if os.name == "nt" else "covsim")


def test_console_script_reports_config_error(tmp_path):
    exe = console_script()
    assert exe.is_file(), f"the covsim console script is not installed at {exe} (pip install -e .)"
    cfg = _tiny(tmp_path, edit=MALFORMED["negative H"][0])
    env = {"PATH": os.defpath, "HOME": str(tmp_path)}  # nothing of the caller's environment
    p = subprocess.run(
        [str(exe), "sweep", str(cfg)], capture_output=True, text=True, timeout=120, env=env
    )
    assert p.returncode == 2 and p.stderr == "task.H: must be ≥ 1, got -3\n", p.stderr


def _sweep_cmd(cfg, out):
    return [sys.executable, "-m", "covsim.cli", "-q", "sweep", str(cfg), "--out", str(out)]


def _done(out: Path) -> list[str]:
    try:
        cells = read_manifest(out)["cells"]
    except (OSError, ValueError):  # not there yet (or being replaced)
        return []
    return [c["id"] for c in cells if c["status"] == "done"]


def test_killed_sweep_resumes_only_missing_cells_with_identical_results(tmp_path):
    """3 cells (one per seed, same shapes: one compile). An uninterrupted sweep in `ref` (run
    in-process); the same sweep in `out` as a subprocess SIGKILLed once ≥ 1 cell is done, then
    rerun with the same arguments."""
    cfg = _tiny(tmp_path, seeds=3, vmap=False)
    ref, out = tmp_path / "ref", tmp_path / "out"
    assert main(["-q", "sweep", str(cfg), "--out", str(ref)]) == 0  # in-process: no imports
    cells = sorted(p.name for p in ref.iterdir() if p.is_dir())
    assert len(cells) == 3 and len(_done(ref)) == 3

    proc = subprocess.Popen(
        _sweep_cmd(cfg, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 300
    while not _done(out) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {c: (out / c / "metrics.jsonl").stat().st_mtime_ns for c in _done(out)}
    assert 1 <= len(before) < 3, f"the kill did not land mid-sweep ({len(before)} cells done)"

    p = subprocess.run(_sweep_cmd(cfg, out), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "3 cells (3 done, 0 diverged, 0 failed)" in p.stdout
    after = {c: (out / c / "metrics.jsonl").stat().st_mtime_ns for c in cells}
    rerun = sorted(c for c in cells if c not in before or after[c] != before[c])
    assert rerun == sorted(set(cells) - set(before))  # finished cells were not redone
    for c in cells:
        assert (out / c / "metrics.jsonl").read_bytes() == (ref / c / "metrics.jsonl").read_bytes()
    assert not [p for p in out.iterdir() if p.name.startswith(".covsim-tmp")]


def _toy_claim(name, verdict_passed=True, raises=False):
    def check(dirs):
        if raises:
            raise RuntimeError("boom")
        df = read_metrics(dirs["tiny"])
        kl = float(df["kl"].max())
        return Verdict(name, verdict_passed, f"max KL {kl:.3g}", "KL < 1e9", {"kl": kl})

    def figure(dirs, folder):  # small and cheap: plot_run is tested in test_plot_* below
        fig, ax = plt.subplots(figsize=(3, 2))
        plots.band_plot(ax, read_metrics(dirs["tiny"]), "step", "kl")
        return [plots.save(fig, Path(folder) / f"{name}.png", dpi=50)]

    return Claim(name, f"toy {name}", "Toy §0", "reproduction", ("tiny",), check, figure)


@pytest.fixture
def toy_claims(tmp_path, monkeypatch):
    """A working dir with experiments/tiny.toml and three toy claims on it."""
    (tmp_path / "experiments").mkdir()
    _tiny(tmp_path / "experiments", claim="toy_pass")
    monkeypatch.chdir(tmp_path)
    new = {
        "toy_pass": _toy_claim("toy_pass"),
        "toy_fail": _toy_claim("toy_fail", verdict_passed=False),
        "toy_error": _toy_claim("toy_error", raises=True),
        "toy_missing": dataclasses.replace(_toy_claim("toy_missing"), experiments=("absent",)),
    }
    monkeypatch.setattr(claims, "CLAIMS", new)
    return tmp_path


def test_reproduce_prints_verdicts_draws_and_updates_the_report(toy_claims, capsys):
    """Figures and report go to the runs folder (runs/figures, runs/REPRODUCTION.md): nothing
    outside it is written unless --update-repo asks."""
    (toy_claims / "runs").mkdir()
    report = toy_claims / "runs" / "REPRODUCTION.md"
    report.write_text(
        "old\n| `other_claim` | ref | cmd | fig | kept | **PASS** |\n"
        "| `toy_fail` | ref | cmd | fig | stale | **PASS** |\n"
    )
    assert main(["-q", "reproduce", "toy_fail"]) == 0  # a FAIL verdict is not an error
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and out[0].startswith("FAIL toy_fail: max KL ")
    assert (toy_claims / "runs" / "figures" / "toy_fail.png").is_file()
    assert (toy_claims / "runs" / "quick" / "tiny" / "manifest.json").is_file()
    assert sorted(p.name for p in toy_claims.iterdir()) == ["experiments", "runs"]
    rows = read_report_rows(report)
    assert set(rows) == {"other_claim", "toy_fail"} and "stale" not in rows["toy_fail"]
    assert "[toy_fail.png](figures/toy_fail.png)" in rows["toy_fail"]

    # --all: the finished cell is resumed, not rerun; the raising claim is an error (exit 1)
    # but the others still get their verdicts and rows
    [cell] = [p for p in (toy_claims / "runs" / "quick" / "tiny").iterdir() if p.is_dir()]
    mtime = (cell / "metrics.jsonl").stat().st_mtime_ns
    assert main(["-q", "reproduce", "--all"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert [ln.split(":")[0] for ln in out] == [
        "PASS toy_pass",
        "FAIL toy_fail",
        "ERROR toy_error",
        "ERROR toy_missing",
    ]
    assert "RuntimeError: boom" in out[2] and "UsageError: CONFIG: no such file" in out[3]
    text = report.read_text()
    assert text.count("| `toy_fail` |") == 1 and text.count("| `toy_pass` |") == 1
    assert "toy_error" not in text and "| `other_claim` |" in text
    assert text.startswith("# Reproduction")
    assert (cell / "metrics.jsonl").stat().st_mtime_ns == mtime

    assert main(["reproduce", "nope"]) == 2
    assert capsys.readouterr().err.startswith("CLAIM: unknown claim 'nope'")
    assert main(["reproduce"]) == 2
    assert capsys.readouterr().err == "reproduce: give one CLAIM or --all\n"
    assert main(["reproduce", "toy_missing"]) == 2  # one claim: a config problem is exit 2
    assert capsys.readouterr().err.startswith("CONFIG: no such file")


def test_reproduce_update_repo_writes_the_checkouts_report_and_figures(
    toy_claims, tmp_path_factory, monkeypatch, capsys
):
    from covsim import cli

    repo = tmp_path_factory.mktemp("checkout")
    (repo / "REPRODUCTION.md").write_text("# Reproduction\n")
    monkeypatch.setattr(cli, "checkout_root", lambda: repo)
    assert main(["-q", "reproduce", "toy_pass", "--update-repo"]) == 0
    assert "toy_pass" in read_report_rows(repo / "REPRODUCTION.md")
    assert (repo / "figures" / "toy_pass.png").is_file()
    assert not (toy_claims / "runs" / "REPRODUCTION.md").exists()
    assert (
        "[toy_pass.png](figures/toy_pass.png)"
        in read_report_rows(repo / "REPRODUCTION.md")["toy_pass"]
    )


def test_update_repo_outside_a_checkout_is_a_usage_error(toy_claims, monkeypatch, capsys):
    from covsim import cli

    monkeypatch.setattr(cli, "__file__", str(toy_claims / "site-packages" / "covsim" / "cli.py"))
    assert main(["-q", "reproduce", "toy_pass", "--update-repo"]) == 2
    assert capsys.readouterr().err.startswith("--update-repo: covsim is not running from a source")


def test_plot_uses_the_claims_figure_or_the_generic_one(toy_claims, capsys):
    cfg = toy_claims / "experiments" / "tiny.toml"
    assert main(["-q", "sweep", str(cfg)]) == 0
    d = toy_claims / "runs" / "quick" / "tiny"
    assert main(["plot", str(d), "--out", "f1"]) == 0  # claim "toy_pass" has a figure
    assert (toy_claims / "f1" / "toy_pass.png").is_file()
    claims.CLAIMS.pop("toy_pass")
    assert main(["plot", str(d), "--out", "f2"]) == 0  # no claim: the generic figure
    assert (toy_claims / "f2" / "tiny.png").is_file()
    assert main(["plot", str(d)]) == 0  # default: beside the results, not in the checkout
    assert (d / "figures" / "tiny.png").is_file()
    assert main(["plot", str(toy_claims / "nothing")]) == 2


def test_report_rows_are_replaced_not_duplicated(tmp_path):
    path = tmp_path / "R.md"
    update_report(path, {"b": "| `b` | 1 |", "a": "| `a` | 1 |"})
    update_report(path, {"a": "| `a` | 2 |"})
    assert read_report_rows(path) == {"a": "| `a` | 2 |", "b": "| `b` | 1 |"}
    lines = path.read_text().splitlines()
    assert lines.index("| `a` | 2 |") < lines.index("| `b` | 1 |")
    assert sum(ln.startswith("| `") for ln in lines) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["R.md"]


def test_report_notes_after_the_tail_marker_survive(tmp_path):
    from covsim.report import REPORT_TAIL

    path = tmp_path / "R.md"
    update_report(path, {"a": "| `a` | 1 |"})
    tail = f"{REPORT_TAIL}\n\n## GPU\n\n| `x` | a table that is not a claim row |\n"
    path.write_text(path.read_text() + "\n" + tail)
    update_report(path, {"a": "| `a` | 2 |"})
    assert read_report_rows(path) == {"a": "| `a` | 2 |"}
    assert path.read_text().endswith(tail)


def _no_compute(*a, **k):
    raise AssertionError("compute started although the command should have been refused")


@pytest.mark.parametrize(
    "override, start",
    [
        ("sweep.axes={'task.V' = [4, 1]}", "task"),  # the second value of an axis
        ("train.pass_at=[4]", "train.pass_at: task kind 'markov' has no verifier"),
        ("train.eval_samples=1", "train.eval_samples: must be ≥ 2"),
        ("experiment.runner='nope'", "experiment.runner: must be one of"),
        ("runner.tol=1.0", "runner.tol: unknown config path; allowed: none"),
        # the memory floor: 1e11 steps × 8 × 4 bytes of batch indices (≈ 3 TB) fit no device
        ("sweep.axes={'train.steps' = [20, 100000000000]}", "train: a cell of 2 seed(s) needs"),
        ("train.eval_samples=100000000000", "train: a cell of 2 seed(s) needs at least"),
    ],
)
def test_every_cell_is_validated_before_compute(tmp_path, monkeypatch, capsys, override, start):
    from covsim import cli

    monkeypatch.setattr(cli, "_cell_fn", _no_compute)
    cfg = _tiny(tmp_path)
    assert main(["-q", "sweep", str(cfg), "--out", str(tmp_path / "o"), "--set", override]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(start), err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "extra, start",
    [
        (["--workers", "2"], "--workers: the local executor runs one cell at a time"),
        (["--executor", "ray"], "--executor ray: Ray is not installed"),
    ],
)
def test_bad_executor_choices_are_one_line(tmp_path, monkeypatch, capsys, extra, start):
    if "ray" in extra:
        import importlib.util

        if importlib.util.find_spec("ray") is not None:
            pytest.skip("Ray is installed here")
    from covsim import cli

    monkeypatch.setattr(cli, "_cell_fn", _no_compute)
    assert main(["-q", "sweep", str(_tiny(tmp_path)), *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(start), err


@pytest.mark.parametrize(
    "content, start",
    [
        (b"", "empty config"),
        (b"\xff\xfe[experiment]\n", "not UTF-8 text"),
        (b"[experiment\n", "invalid TOML"),
    ],
)
def test_unreadable_config_files_are_one_line(tmp_path, capsys, content, start):
    p = tmp_path / "bad.toml"
    p.write_bytes(content)
    assert main(["-q", "run", str(p)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and start in err and "Traceback" not in err, err


def test_profiles_bom_and_experiment_names(tmp_path, monkeypatch, capsys):
    """A file without profiles runs as written; any profile the file defines is accepted; a
    byte-order mark is tolerated; CONFIG may be an experiment's name."""
    from covsim import cli

    monkeypatch.setattr(cli, "_cell_fn", lambda c, cell: _toy_result(cell))
    text = TINY.format(claim="", seeds=1, vmap="true")
    bare = text.split("[profile.quick]")[0]
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "bare.toml").write_bytes(b"\xef\xbb\xbf" + bare.encode())
    (tmp_path / "experiments" / "tiny.toml").write_text(
        text + '\n[profile.mine]\n"train.steps" = 10\n'
    )
    monkeypatch.chdir(tmp_path)
    assert main(["-q", "run", "bare"]) == 0, capsys.readouterr().err
    assert (tmp_path / "runs" / "default" / "tiny-run" / "done.json").is_file()
    assert main(["-q", "sweep", "tiny", "--profile", "mine"]) == 0
    assert (tmp_path / "runs" / "mine" / "tiny" / "manifest.json").is_file()
    assert main(["-q", "run", "tiny", "--profile", "huge"]) == 2
    assert "unknown profile 'huge'" in capsys.readouterr().err
    assert main(["-q", "run", "nonexistent"]) == 2
    assert capsys.readouterr().err.startswith("CONFIG: no such file nonexistent")


def _toy_result(cell):
    recs = [
        {"step": s, "seed": seed, "kl": 1.0, "cov": {2: 0.5, 8: 0.1}}
        for seed in cell.seeds
        for s in (0, 10)
    ]
    return RunResult(recs)


def test_a_reader_that_leaves_early_is_not_a_traceback(tmp_path):
    """`covsim list | head -1`: the pipe closes before covsim writes; no BrokenPipeError."""
    env = {"PATH": os.defpath, "HOME": str(tmp_path)}
    p = subprocess.Popen(
        [str(console_script()), "list"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    p.stdout.close()  # the reader is gone before the first line
    err = p.stderr.read().decode()
    p.wait(timeout=120)
    assert p.returncode == 0 and "Traceback" not in err, err


def test_a_large_cell_prints_its_estimate_before_it_starts(capsys):
    from covsim.cli import BIG_CELL_FLOPS, _preflight
    from covsim.config import load_config
    from covsim.runners.train import cell_estimate

    cfg = load_config(Path(__file__).parents[1] / "experiments" / "fig2.toml", "quick")
    cfg = cfg.with_values({"sweep.axes": {"task.L": [8, 10]}, "sweep.vmap_seeds": False})
    small = cell_estimate(cfg.with_values({"sweep.axes": {}}), 1)
    assert small.flops < BIG_CELL_FLOPS  # the quick profile stays silent
    _preflight(cfg, show=True)
    assert capsys.readouterr().err == ""
    # twice the steps that would reach the threshold (evaluations grow slower than steps)
    steps = 100 * math.ceil(2 * BIG_CELL_FLOPS / small.flops * cfg.train.steps / 100)
    big = cfg.with_values({"train.steps": steps})
    _preflight(big, show=False)
    assert capsys.readouterr().err == ""
    _preflight(big, show=True)
    lines = capsys.readouterr().err.splitlines()
    assert [ln.split(":")[0] for ln in lines] == ["fig2 cell task.L=8", "fig2 cell task.L=10"]
    assert all("1 seed(s)" in ln and "GiB" in ln and "FLOP" in ln for ln in lines)


def test_version_comes_from_the_installed_distribution(capsys):
    from importlib.metadata import version

    import covsim

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out == f"covsim {version('covsim')}\n"
    assert covsim.__version__ == version("covsim")
