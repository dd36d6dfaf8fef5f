"""Config → objects: every task kind builds, optimizer names map to the trainer's updates,
and a cell run returns contract records (with checkpoints when asked)."""

import pytest

from covsim.config import load_config
from covsim.experiment import make_task, train_spec
from covsim.runners import run_cell
from covsim.sweep import expand_grid

TINY = """
[experiment]
name = "tiny"

[task]
kind = "markov"
V = 3
H = 4

[model]
kind = "tabular"

[optim]
name = "{optim}"
{optim_params}

[train]
steps = 20
batch_size = 8
n_train = 64
eval_every = 10
eval_samples = 200
Ns = [2, 16]
checkpoints = [10, 20]

[sweep]
seeds = 2
vmap_seeds = true
"""


@pytest.mark.parametrize(
    "spec",
    [
        {"kind": "markov", "V": 3, "H": 4},
        {"kind": "bernoulli", "p": 0.1},
        {"kind": "linear", "V": 3, "H": 4, "d": 2},
        {"kind": "prop_3_2", "n": 10, "H": 4},
        {"kind": "prop_g1a", "n": 10, "d": 3, "B": 4.0},
        {"kind": "graph_fig2", "L": 4},
        {"kind": "graph_fig1_finetune", "L": 4},
        {"kind": "mixture", "H": 4, "weights": [0.5, 0.5],
         "components": [{"kind": "markov", "V": 3}, {"kind": "markov", "V": 3, "n_prompts": 5}]},
    ],
)
def test_every_task_kind_builds(spec):
    task = make_task(spec)
    assert task.V >= 2 and task.H >= 1


@pytest.mark.parametrize(
    "spec, match",
    [
        ({"kind": "lstm"}, "task.kind"),
        (
            {"kind": "markov", "V": 3, "H": 4, "colour": 1},
            "task.colour: unknown parameter of task kind .markov.; allowed: H, V",
        ),
        ({"kind": "mixture", "weights": [1.0]}, "task.components"),
    ],
)
def test_bad_task_specs_name_the_field(spec, match):
    with pytest.raises(ValueError, match=match):
        make_task(spec)


def _cfg(tmp_path, optim, optim_params):
    p = tmp_path / "tiny.toml"
    p.write_text(TINY.format(optim=optim, optim_params=optim_params))
    return load_config(p, profile=None)


def test_optimizer_names_pick_the_update(tmp_path):
    assert train_spec(_cfg(tmp_path, "token_sgd", "eta = 0.1")).update == "token"
    s = train_spec(_cfg(tmp_path, "distill_sgd", "eta = 0.1\nN = 8"))
    assert s.loss == "distill" and s.distill_N == 8.0
    s = train_spec(_cfg(tmp_path, "adam", "lr = 0.05"))
    assert s.update == "batch" and s.loss == "sequence" and s.keep_params


def test_run_cell_records_and_checkpoints(tmp_path):
    cfg = _cfg(tmp_path, "adam", "lr = 0.05")
    (cell,) = expand_grid(cfg.sweep.axes, cfg.sweep.seeds, vmap_seeds=True)
    res = run_cell(cfg, cell)
    assert len(res.records) == 2 * 3  # 2 seeds × checkpoints at steps 0, 10, 20
    assert {r["seed"] for r in res.records} == {0, 1}
    assert {r["step"] for r in res.records} == {0, 10, 20}
    assert "checkpoints.msgpack" in res.files and not res.diverged


STAGED = """
[experiment]
name = "staged"

[task]
kind = "graph_fig1_finetune"
L = 2
m = 12
edge_order = "sorted"

[model]
kind = "transformer"
layers = 1
heads = 1
width = 16

[optim]
name = "adam"
lr = 1e-3

[train]
steps = 4
batch_size = 4
online = true
eval_every = 2
eval_samples = 32
Ns = [2, 4]
pass_at = [4]
select_samples = 16

[pretrain.task]
kind = "graph_fig1_pretrain"
L = 2
m = 12
edge_order = "sorted"

[pretrain.optim]
name = "adam"
lr = 1e-2

[pretrain.train]
steps = 6
batch_size = 4
n_train = 40
eval_every = 3
eval_samples = 32
Ns = [2]

[sweep]
seeds = 2
vmap_seeds = true
"""


def test_pretrain_stage_then_main_stage(tmp_path):
    """[pretrain] runs first, then the main stage from its final parameters. Records carry their
    stage; select_logq.npy holds (seeds, checkpoints, select_samples); a mixture task gets
    its per-class summary. (That the main stage starts from the given parameters is
    tested on the trainer: test_train.py::test_warm_start_continues_from_given_params.)"""
    import io

    import numpy as np

    p = tmp_path / "staged.toml"
    p.write_text(STAGED)
    cfg = load_config(p, None)
    (cell,) = expand_grid(cfg.sweep.axes, cfg.sweep.seeds, vmap_seeds=True)
    res = run_cell(cfg, cell)
    pre = [r for r in res.records if r["stage"] == "pretrain"]
    main = [r for r in res.records if r["stage"] == "main"]
    assert len(pre) == 2 * 3 and len(main) == 2 * 3
    logq = np.load(io.BytesIO(res.files["select_logq.npy"]))
    assert logq.shape == (2, 3, 16) and np.all(logq <= 0)
    assert np.asarray(res.summary["per_class"]["kl"]).shape == (2, 2)
    assert res.summary["pretrain_diverged_steps"] == [-1, -1] and not res.diverged


def test_pretrain_sizes_must_match(tmp_path):
    p = tmp_path / "staged.toml"
    old, new = '"graph_fig1_pretrain"\nL = 2\nm = 12', '"graph_fig1_pretrain"\nL = 4\nm = 20'
    p.write_text(STAGED.replace(old, new))
    cfg = load_config(p, None)
    (cell,) = expand_grid(cfg.sweep.axes, cfg.sweep.seeds, vmap_seeds=True)
    with pytest.raises(ValueError, match="pretrain.task"):
        run_cell(cfg, cell)
