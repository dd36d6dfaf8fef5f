"""Experiment configs: loading, profiles, overrides, one-line errors naming the field, TOML out."""

import math
import tomllib

import pytest

from covsim.config import ConfigError, dump_config, load_config, parse_value, to_toml

BASE = """
[experiment]
name = "horizon"
claim = "fig2"
description = "KL grows linearly in H, Cov_N stays flat"

[task]
kind = "mixture"
H = 8
weights = [0.94, 0.05, 0.01]

[model]
kind = "tabular"
init_scale = 0.5

[optim]
name = "adam"
lr = 1e-3

[train]
steps = 1000
batch_size = 64
n_train = 2000
eval_every = 100
eval_samples = 4096
Ns = [2, 4, 16]
pass_at = [1, 4]

[sweep]
seeds = 4

[sweep.axes]
"task.H" = [8, 16, 32]
"train.n_train" = [200, 2000]

[profile.quick]
"train.steps" = 200
"sweep.seeds" = 2
sweep.axes."task.H" = [8, 16]

[profile.full]
train.steps = 40000
"""


def write(tmp_path, text, name="exp.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def load(tmp_path, text, profile=None, overrides=(), **kw):
    return load_config(write(tmp_path, text), profile, overrides, **kw)


def error(tmp_path, text, profile=None, overrides=(), **kw) -> str:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text, profile, overrides, **kw)
    msg = str(info.value)
    assert "\n" not in msg, msg
    return msg


def test_valid_config_loads(tmp_path):
    cfg = load(tmp_path, BASE)
    assert cfg.experiment.name == "horizon"
    assert cfg.task.kind == "mixture" and cfg.task.H == 8
    assert cfg.task.params == {"weights": [0.94, 0.05, 0.01]}
    assert cfg.model.params == {"init_scale": 0.5} and cfg.optim.params == {"lr": 1e-3}
    assert cfg.train.Ns == [2.0, 4.0, 16.0] and cfg.train.pass_at == [1, 4]
    assert cfg.train.online is False and cfg.train.epochs is None
    assert cfg.sweep.seeds == [0, 1, 2, 3]
    assert cfg.sweep.axes == {"task.H": [8, 16, 32], "train.n_train": [200, 2000]}


def test_profiles_apply(tmp_path):
    quick = load(tmp_path, BASE, "quick")
    assert quick.train.steps == 200 and quick.sweep.seeds == [0, 1]
    assert quick.sweep.axes == {"task.H": [8, 16], "train.n_train": [200, 2000]}
    full = load(tmp_path, BASE, "full")  # unquoted dotted keys give nested tables: same paths
    assert full.train.steps == 40000 and full.sweep.seeds == [0, 1, 2, 3]
    assert "quick" in error(tmp_path, BASE, "medium") and "full" in error(tmp_path, BASE, "medium")


def test_overrides_apply_after_the_profile(tmp_path):
    overrides = [
        "train.steps=300",  # beats the profile's 200
        "task.weights=[0.5, 0.5]",
        "experiment.description=plain words",  # not TOML: taken as a string
        "sweep.axes.task.H=[4]",
    ]
    cfg = load(tmp_path, BASE, "quick", overrides)
    assert cfg.train.steps == 300 and cfg.task.params["weights"] == [0.5, 0.5]
    assert cfg.experiment.description == "plain words"
    assert cfg.sweep.axes == {"task.H": [4], "train.n_train": [200, 2000]}
    # A new axis can be added; an optional field absent from the file can be set.
    cfg = load(tmp_path, BASE, None, ["sweep.axes.optim.lr=[0.1, 0.01]", "train.epochs=2"])
    assert cfg.sweep.axes["optim.lr"] == [0.1, 0.01] and cfg.train.epochs == 2
    assert cfg.train.n_steps == 100  # 2 passes = 62.5 steps, up to the next evaluation


def test_parse_value():
    assert parse_value("8") == 8 and parse_value("1e-3") == 1e-3 and parse_value("true") is True
    assert parse_value("[8, 16]") == [8, 16] and parse_value('"x y"') == "x y"
    assert parse_value("adam") == "adam" and parse_value("") == ""
    assert parse_value("1\nx = 2") == "1\nx = 2"  # no smuggling of extra keys
    assert parse_value("inf") == math.inf


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "eval_every = 100",
            "eval_every = 100\nfoo = 1",
            "train.foo: unknown key; allowed: steps,",
        ),
        ("[sweep]", "[foo]\nx = 1\n[sweep]", "foo: unknown key; allowed: experiment, task,"),
        ("steps = 1000", 'steps = "ten"', "train.steps: must be an integer, got 'ten'"),
        ("steps = 1000", "steps = true", "train.steps: must be an integer, got True"),
        ("steps = 1000", "steps = -3", "train.steps: must be ≥ 1, got -3"),
        ("H = 8\n", "H = -2\n", "task.H: must be ≥ 1, got -2"),
        ("H = 8\n", "H = 2.5\n", "task.H: must be an integer, got 2.5"),
        ("Ns = [2, 4, 16]", "Ns = [2, 0.5]", "train.Ns[1]: must be ≥ 1, got 0.5"),
        ("Ns = [2, 4, 16]", "Ns = []", "train.Ns: must be non-empty"),
        ("pass_at = [1, 4]", "pass_at = [0]", "train.pass_at[0]: must be ≥ 1, got 0"),
        ('"task.H" = [8, 16, 32]', '"task.H" = []', "sweep.axes['task.H']: empty sweep axis"),
        ('"task.H" = [8, 16, 32]', '"task.H" = [8, 8]', "sweep.axes['task.H']: duplicate value 8"),
        (
            '"task.H" = [8, 16, 32]',
            '"task.H" = [8, 0]',
            "sweep.axes['task.H'][1]: task.H: must be ≥ 1",
        ),
        (
            '"task.H" = [8, 16, 32]',
            '"task.h" = [8]',
            "sweep.axes['task.h']: task.h: unknown config path",
        ),
        (
            '"task.H" = [8, 16, 32]',
            '"sweep.seeds" = [1]',
            "sweep.axes['sweep.seeds']: cannot sweep",
        ),
        ("seeds = 4", "seeds = 0", "sweep.seeds: must be a count ≥ 1"),
        ("seeds = 4", "seeds = [1, 1]", "sweep.seeds: duplicate seeds"),
        ("seeds = 4", "seeds = [-1]", "sweep.seeds[0]: must be ≥ 0, got -1"),
        ("batch_size = 64\n", "", "train.batch_size: required key missing"),
        ('name = "horizon"', 'name = "a b"', "experiment.name: must match"),
        ('kind = "mixture"', "kind = 3", "task.kind: must be a string, got 3"),
        ("n_train = 2000", "n_train = 2000\nonline = true", "train.n_train: must be omitted"),
        ("n_train = 2000", "online = false", "train.n_train: required unless train.online"),
        ("eval_every = 100", "eval_every = 5000", "train.eval_every: must be ≤ train.steps = 1000"),
        ("pass_at = [1, 4]", "checkpoints = [100, 150]", "train.checkpoints[1]: must be an eval"),
        ("pass_at = [1, 4]", "checkpoints = [2000]", "train.checkpoints[0]: must be an eval"),
        ("steps = 1000", "steps = 1050", "train.steps: must be a multiple of train.eval_every"),
        ("pass_at = [1, 4]", 'loss = "tokens"',
         "train.loss: must be one of 'sequence', 'token' or 'distill'"),
        ("pass_at = [1, 4]", "alpha = 1.0", "train.alpha: must be < 1, got 1.0"),
    ],
)
def test_malformed_configs_give_one_line_errors_naming_the_field(tmp_path, old, new, expected):
    assert old in BASE
    msg = error(tmp_path, BASE.replace(old, new, 1))
    assert msg.startswith(expected), msg


def test_invalid_toml_is_one_line(tmp_path):
    msg = error(tmp_path, BASE + "x = = 1\n")
    assert "invalid TOML" in msg and "line" in msg


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("train.stepz=3", "train.stepz: unknown config path; allowed: Ns, alpha, batch_size,"),
        ("trian.steps=3", "trian.steps: unknown config path; sections: experiment,"),
        ("task.weights.x=1", "task.weights.x: unknown config path"),
        (
            "model.depth=3",
            "model.depth: unknown config path; allowed: init, init_scale, kind, order,",
        ),
        ("train.steps", "--set 'train.steps': expected PATH=VALUE"),
        ("train.steps=-3", "train.steps: must be ≥ 1, got -3"),
        ("train.steps=ten", "train.steps: must be an integer, got 'ten'"),
    ],
)
def test_bad_overrides_name_the_path(tmp_path, override, expected):
    msg = error(tmp_path, BASE, "quick", [override])
    assert msg.startswith(expected), msg


def test_unknown_path_in_a_profile_names_the_profile(tmp_path):
    msg = error(tmp_path, BASE + '"train.stepz" = 1\n', "full")
    assert msg.startswith("train.stepz: unknown config path") and "profile.full" in msg


def test_registry_checks_kinds_and_parameter_names(tmp_path):
    reg = {
        "task": {"mixture": {"weights"}},
        "model": {"tabular": {"init_scale", "depth"}, "gpt": None},
    }
    cfg = load(tmp_path, BASE, registry=reg)
    assert cfg.model.params == {"init_scale": 0.5}
    # a registered parameter can be added by an override even if the file does not set it
    assert load(tmp_path, BASE, None, ["model.depth=3"], registry=reg).model.params["depth"] == 3
    msg = error(tmp_path, BASE.replace('kind = "tabular"', 'kind = "mlp"'), registry=reg)
    assert msg == "model.kind: unknown kind 'mlp'; allowed: gpt, tabular"
    msg = error(tmp_path, BASE.replace("init_scale = 0.5", "foo = 1"), registry=reg)
    assert msg == "model.foo: unknown key; allowed: depth, init_scale, kind"
    # unregistered sections (optim here) stay open
    assert (
        load(tmp_path, BASE.replace('name = "adam"', 'name = "sgd"'), registry=reg).optim.name
        == "sgd"
    )


def test_resolved_config_round_trips_through_toml(tmp_path):
    cfg = load(tmp_path, BASE, "quick", ["task.weights=[0.5, 0.5]"])
    out = tmp_path / "runs" / "config.toml"
    out.parent.mkdir()
    dump_config(cfg, out)
    assert [p.name for p in out.parent.iterdir()] == ["config.toml"]  # no temp file left
    back = load_config(out, profile=None)
    assert back == cfg and back.digest() == cfg.digest()
    assert "profile" not in tomllib.loads(out.read_text())
    assert error(tmp_path, out.read_text(), "quick").startswith("profile: unknown profile 'quick'")


def test_toml_writer_round_trips_awkward_values():
    d = {
        "s": {
            "a": 'quote " back\\slash\nnew\ttab \x7f é 😀',
            "i": -3,
            "f": 1e-5,
            "big": 1e300,
            "b": True,
            "inf": -math.inf,
            "l": [1, "x", [2.5, False], {"k": 1}],
            "dotted.key": 1,
            "empty": {},
            "sub": {"x": 1, "deeper": {"y": [2]}},
        },
    }
    assert tomllib.loads(to_toml(d)) == d
    nan = tomllib.loads(to_toml({"t": {"v": math.nan}}))["t"]["v"]
    assert math.isnan(nan)
    with pytest.raises(TypeError, match="cannot write NoneType"):
        to_toml({"t": {"v": None}})


def test_get_and_with_values(tmp_path):
    cfg = load(tmp_path, BASE, "quick")
    assert cfg.get("task.H") == 8 and cfg.get("train.n_train") == 2000
    assert cfg.get("sweep.axes.task.H") == [8, 16] and cfg.get("train.epochs") is None
    cell = cfg.with_values({"task.H": 16, "train.n_train": 200, "sweep.axes": {}})
    assert (cell.task.H, cell.train.n_train, cell.sweep.axes) == (16, 200, {})
    assert cfg.task.H == 8  # the original is unchanged
    with pytest.raises(ConfigError, match=r"^task\.H: must be ≥ 1, got 0$"):
        cfg.with_values({"task.H": 0})
    with pytest.raises(ConfigError, match=r"^task\.Q: unknown config path"):
        cfg.get("task.Q")


PRETRAIN = """
[pretrain.task]
kind = "markov"
H = 8

[pretrain.optim]
name = "adam"
lr = 1e-3

[pretrain.train]
steps = 100
batch_size = 8
n_train = 500
eval_every = 50
eval_samples = 100
Ns = [2]
"""


def test_pretrain_stage_loads_and_takes_overrides(tmp_path):
    text = BASE.replace("[sweep]\n", PRETRAIN + "\n[sweep]\n", 1)
    cfg = load(tmp_path, text, "quick", ["pretrain.train.steps=200", "pretrain.optim.lr=0.01"])
    assert cfg.pretrain.train.steps == 200 and cfg.pretrain.optim.params == {"lr": 0.01}
    assert load(tmp_path, BASE).pretrain is None
    again = load(tmp_path, cfg.to_toml())  # the resolved config round-trips
    assert again.pretrain == cfg.pretrain


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "n_train = 500",
            "online = true\nn_train = 500",
            "pretrain.train.n_train: must be omitted when pretrain.train.online = true",
        ),
        ("steps = 100", "steps = 120", "pretrain.train.steps: must be a multiple of"),
        ("batch_size = 8", "batch_size = 0", "pretrain.train.batch_size: must be ≥ 1"),
        ('name = "adam"\nlr = 1e-3', "lr = 1e-3", "pretrain.optim.name: required key missing"),
    ],
)
def test_pretrain_errors_name_the_field(tmp_path, old, new, expected):
    assert old in PRETRAIN
    text = BASE.replace("[sweep]\n", PRETRAIN.replace(old, new, 1) + "\n[sweep]\n", 1)
    msg = error(tmp_path, text)
    assert msg.startswith(expected), msg
