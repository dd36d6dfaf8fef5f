"""Registries users extend: README's plugin example run through `covsim run` and through the
process executor, `--set` of a factory parameter the file does not set, `covsim describe` for
each registry, and unknown parameters rejected with the factory's real parameter list."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from tiny import TRAINER

from covsim import registry as R
from covsim.cli import main
from covsim.config import ConfigError, load_config
from covsim.results import read_metrics, read_run

ROOT = Path(__file__).resolve().parents[1]


def readme_blocks(lang: str) -> list[str]:
    text = (ROOT / "README.md").read_text("utf-8")
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def _plugin_experiment(folder: Path, module: str) -> Path:
    """README's plugin (renamed `module`, so each test imports a fresh one) and a tiny
    trainer config around README's TOML snippet."""
    [code] = [b for b in readme_blocks("python") if "register_task" in b]
    kind = f"sticky_chain_{module}"
    (folder / f"{module}.py").write_text(code.replace('"sticky_chain"', f'"{kind}"'))
    [toml] = [b for b in readme_blocks("toml") if "plugins" in b]
    toml = toml.replace('plugins = ["sticky"]', f'plugins = ["{module}"]')
    toml = toml.replace('kind = "sticky_chain"', f'kind = "{kind}"')
    toml += TRAINER + "\n[sweep]\nseeds = 2\n"
    p = folder / "sticky.toml"
    p.write_text(toml)
    return p


@pytest.fixture
def fresh_path(monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))  # plugins add their folder: undo it


def test_readme_plugin_runs_through_covsim_run(tmp_path, fresh_path, capsys):
    cfg = _plugin_experiment(tmp_path, "sticky_a")
    out = tmp_path / "run"
    assert main(["-q", "run", str(cfg), "--out", str(out)]) == 0, capsys.readouterr().err
    df = read_metrics(out)
    assert sorted(df["seed"].unique()) == [0, 1] and df["kl"].notna().all()
    assert read_run(out).config["task"]["stickiness"] == 0.95
    # a factory parameter the file does not set is a --set target (and so a sweep axis)
    out2 = tmp_path / "run2"
    assert main(["-q", "run", str(cfg), "--out", str(out2), "--set", "task.V=3"]) == 0
    assert read_run(out2).config["task"]["V"] == 3


def test_readme_plugin_runs_in_process_workers(tmp_path, fresh_path, capsys):
    cfg = _plugin_experiment(tmp_path, "sticky_b")
    out = tmp_path / "sweep"
    args = ["-q", "sweep", str(cfg), "--out", str(out), "--executor", "process"]
    args += ["--workers", "2", "--set", "sweep.axes={'task.stickiness' = [0.5, 0.9]}"]
    assert main(args) == 0, capsys.readouterr().err
    assert "4 cells (4 done" in capsys.readouterr().out
    assert sorted(read_metrics(out)["task.stickiness"].unique()) == [0.5, 0.9]


def test_a_plugin_that_does_not_import_is_one_config_error(tmp_path, fresh_path):
    cfg = _plugin_experiment(tmp_path, "sticky_c")
    (tmp_path / "sticky_c.py").write_text("raise RuntimeError('broken plugin')\n")
    with pytest.raises(ConfigError, match=r"^experiment.plugins: broken plugin"):
        load_config(cfg, None)


def test_set_of_a_factory_parameter_absent_from_the_file():
    toml = ROOT / "tests" / "configs" / "linear_mle.toml"
    cfg = load_config(toml, "quick", ["task.X=2"])
    assert "X" not in load_config(toml, "quick").task.params
    assert cfg.task.params["X"] == 2  # AutoregressiveLinear.random's X, not in the file


def test_unknown_parameters_are_rejected_with_the_real_allowed_list():
    toml = ROOT / "tests" / "configs" / "linear_mle.toml"
    real = sorted({p.name for p in R.entry("task", "linear").params} | {"kind", "H", "seed"})
    with pytest.raises(ConfigError) as e:
        load_config(toml, "quick", ["task.colour=1"])
    assert (
        str(e.value) == f"task.colour: unknown config path; allowed: {', '.join(real)} (in --set)"
    )
    with pytest.raises(ConfigError, match=r"^runner.tolerance: unknown config path; allowed: "):
        load_config(toml, "quick", ["runner.tolerance=1"])
    with pytest.raises(ConfigError, match=r"^optim: runner 'mle' does not read \[optim\]"):
        load_config(toml, "quick", ["optim.name='adam'"])


@pytest.mark.parametrize(
    "name, expect",
    [
        ("markov", ["task 'markov'", "V: int (required)", "temperature: float | None"]),
        ("tabular", ["model 'tabular'", "order: int (default 1)"]),
        ("adam", ["optim 'adam'", "lr: float (required)"]),
        ("mle", ["runner 'mle'", "[train] keys: n_train, eval_samples, Ns", "tol: "]),
    ],
)
def test_describe_lists_each_registrys_parameters(capsys, name, expect):
    assert main(["describe", name]) == 0
    out = capsys.readouterr().out
    for line in expect:
        assert line in out, out


def test_registering_a_builtin_name_twice_is_refused():
    with pytest.raises(ValueError, match="task 'markov' is registered twice"):
        R.register("task", "markov", lambda key: None)


def test_one_step_size_name_for_every_optimizer(tmp_path, fresh_path):
    """`lr` and `eta` are one parameter: switching adam to sgd needs no renaming."""
    from covsim.experiment import build_optimizer, build_task
    from covsim.optim import resolve_spec

    cfg = load_config(_plugin_experiment(tmp_path, "sticky_d"), None, ["optim.name='sgd'"])
    assert cfg.optim.params == {"lr": 0.1}
    build_optimizer(cfg, build_task(cfg))
    assert resolve_spec({"name": "sgd", "lr": 0.1})["eta"] == 0.1
    assert resolve_spec({"name": "adam", "eta": 0.2})["lr"] == 0.2
    with pytest.raises(ValueError, match="are the same step size"):
        resolve_spec({"name": "sgd", "lr": 0.1, "eta": 0.1})


def test_signature_params_reads_evaluated_and_string_annotations():
    ns: dict = {}
    exec("def f(key, a: int | None = None, b: float = 1.0, *, c=2): pass", ns)  # no __future__
    got = [p.line() for p in R.signature_params(ns["f"], skip=("key",))]
    assert got == ["a: int | None (default None)", "b: float (default 1.0)", "c: any (default 2)"]
    assert R.signature_params(lambda key, **kw: None) is None  # **kwargs: open parameters
