"""Config → objects: every task kind builds, optimizer names map to the trainer's updates,
and a cell run returns contract records (with checkpoints when asked)."""

import pytest

from covsim.config import load_config
from covsim.experiment import make_task, run_cell, train_spec
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
        ({"kind": "markov", "V": 3, "H": 4, "colour": 1}, "task: bad parameters"),
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
