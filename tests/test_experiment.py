"""Config → objects: every task kind builds, [train] maps to the trainer by name,
and a cell run returns contract records (with checkpoints when asked)."""

import numpy as np
import pytest

from covsim.config import ConfigError, load_config
from covsim.experiment import build_task, make_task, theory_args, train_spec
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
{train_extra}

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
        {"kind": "hidden_rules_finetune", "graphs": 8},
        {"kind": "hidden_rules_pretrain", "graphs": 8},
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


def _cfg(tmp_path, optim, optim_params, train_extra=""):
    p = tmp_path / "tiny.toml"
    p.write_text(TINY.format(optim=optim, optim_params=optim_params, train_extra=train_extra))
    return load_config(p, profile=None)


def test_the_train_table_is_the_train_spec_by_name(tmp_path):
    """[train] keys reach TrainSpec under their own names; token-level updates and the
    distillation loss are [train] fields, and they choose the paper's step-size rule."""
    s = train_spec(_cfg(tmp_path, "sgd", "eta = 0.1", 'update = "token"'))
    assert s.update == "token" and s.loss == "sequence"
    s = train_spec(_cfg(tmp_path, "sgd", "eta = 0.1", 'loss = "distill"\ndistill_N = 8'))
    assert s.loss == "distill" and s.distill_N == 8.0
    s = train_spec(_cfg(tmp_path, "adam", "lr = 0.05", "epochs = 1"))
    assert (s.update, s.loss, s.checkpoints, s.n_train, s.epochs) == (
        "batch", "sequence", (10, 20), 64, 1)
    assert s.n_steps == 10  # one pass over 64 sequences in batches of 8, rounded to eval_every
    task = build_task(_cfg(tmp_path, "sgd", 'eta = "theory"'))
    for extra, rule in (("", "sgd"), ('update = "token"', "token_sgd"),
                        ('loss = "distill"\ndistill_N = 8', "distill_sgd")):
        cfg = _cfg(tmp_path, "sgd", 'eta = "theory"', extra)
        args = theory_args(cfg, task)
        assert args.get("rule", "sgd") == rule and (rule != "distill_sgd" or args["N"] == 8.0)


def test_distill_N_without_the_distillation_loss_is_refused(tmp_path):
    with pytest.raises(ConfigError, match='train.distill_N: only with train.loss = "distill"'):
        _cfg(tmp_path, "sgd", "eta = 0.1", "distill_N = 8")


def test_run_cell_records_and_checkpoints(tmp_path):
    cfg = _cfg(tmp_path, "adam", "lr = 0.05")
    (cell,) = expand_grid(cfg.sweep.axes, cfg.sweep.seeds, vmap_seeds=True)
    res = run_cell(cfg, cell)
    assert len(res.records) == 2 * 3  # 2 seeds × checkpoints at steps 0, 10, 20
    assert {r["seed"] for r in res.records} == {0, 1}
    assert {r["step"] for r in res.records} == {0, 10, 20}
    assert "checkpoints.msgpack" in res.files and not res.diverged


def test_a_mixture_with_kept_checkpoints_summarises_its_final_parameters(tmp_path):
    """With train.checkpoints the trainer stacks every checkpoint's parameters; the per-class
    summary of a mixture task is about the final ones (it used to be handed the stack)."""
    text = TINY.format(optim="adam", optim_params="lr = 0.05", train_extra="").replace(
        'kind = "markov"\nV = 3\nH = 4',
        'kind = "mixture"\nH = 4\nweights = [0.5, 0.5]\ncomponents = [{kind = "markov", '
        'V = 3}, {kind = "markov", V = 3, n_prompts = 5}]')
    p = tmp_path / "mix.toml"
    p.write_text(text)
    cfg = load_config(p, profile=None)
    (cell,) = expand_grid(cfg.sweep.axes, cfg.sweep.seeds, vmap_seeds=True)
    res = run_cell(cfg, cell)
    pc = res.summary["per_class"]
    assert np.asarray(pc["kl"]).shape == (2, 2)  # (classes, seeds)
    final = [r["kl"] for r in res.records if r["step"] == 20]
    w = np.asarray(pc["weights"])
    # the classes' KLs weighted by the mixture's weights: the final checkpoint's KL, to
    # Monte Carlo error (separate evaluation samples)
    assert np.allclose(w @ np.asarray(pc["kl"]), final, rtol=0.3, atol=0.05)


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
