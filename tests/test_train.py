"""The trainer: learning lowers KL and Cov_N, missing mass, determinism, divergence, checkpoints."""

import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from covsim.checkpoint import load_checkpoints, restore_model, save_checkpoints, select
from covsim.evaluate import evaluate
from covsim.fileio import TMP_PREFIX
from covsim.models import LogLinear, Tabular, Transformer
from covsim.tasks.bernoulli import Bernoulli, bernoulli_cov, bernoulli_kl, bernoulli_mle
from covsim.tasks.linear import AutoregressiveLinear
from covsim.tasks.markov import MarkovChain
from covsim.train import TrainSpec, make_train, run_seeds, to_records


@pytest.fixture(scope="module")
def chain():
    return MarkovChain.random(jax.random.key(1), V=4, H=6, order=1)


def tabular_fn(task):
    return lambda k: Tabular(
        task.V, task.H, P=task.P, prompt_vocab=max(task.prompt_vocab, 1), rngs=nnx.Rngs(k)
    )


def test_loglinear_kl_and_coverage_fall_with_n():
    """Well-specified LogLinear trained to (near) convergence on n samples: KL and Cov_2 drop
    from n = 30 to n = 3000 by more than their Monte-Carlo uncertainty (4 s.e. for KL; the
    Wilson 95% intervals of Cov_2 do not overlap)."""
    task = AutoregressiveLinear.random(jax.random.key(3), V=4, H=6, d=6, X=3, B=2.0)
    mf = lambda k: LogLinear(task, rngs=nnx.Rngs(k))
    out = {}
    for n in (30, 3000):
        spec = TrainSpec(
            steps=400, batch_size=min(n, 256), n_train=n, eval_every=400,
            eval_samples=20_000, Ns=(2.0, 8.0),
        )
        out[n] = jax.jit(make_train(task, mf, optax.adam(0.05), spec))(jax.random.key(0))
    small, big = (jax.tree.map(lambda a: np.asarray(a)[-1], out[n].metrics) for n in (30, 3000))
    assert small.kl - big.kl > 4 * math.hypot(small.kl_se, big.kl_se)
    assert big.cov_hi[0] < small.cov_lo[0]
    assert big.kl < 0.05 * small.kl + 0.02


def test_bernoulli_mle_missing_mass():
    """Notes §3.2: with n ≤ 1/p⋆ a constant fraction of datasets gives p̂ = 0 and KL = ∞, yet
    Cov_2 ≤ 2·log(1/δ)/n holds with probability ≥ 1 − δ for every n (δ = 0.05, 4000 datasets;
    the allowance 0.02 on the probability is ~3 binomial s.e. at 4000 draws)."""
    p, delta, reps = 0.01, 0.05, 4000
    task = Bernoulli(p)
    key = jax.random.key(0)
    for n in (20, 50, 100, 300, 1000, 3000):
        data = jax.vmap(lambda k, n=n: task.sample(k, n)[1])(jax.random.split(key, reps))
        p_hat = np.asarray(jax.vmap(bernoulli_mle)(data)).reshape(reps)
        kl = bernoulli_kl(p, p_hat)
        cov2 = bernoulli_cov(p, p_hat, 2.0)
        if n <= 1 / p:
            frac_zero = np.mean(p_hat == 0)
            assert frac_zero > 0.25 and np.all(np.isinf(kl[p_hat == 0]))
            assert np.isinf(np.mean(kl))
        bound = 2 * math.log(1 / delta) / n
        assert np.mean(cov2 > bound) <= delta + 0.02, n


def test_transformer_learns_markov_chain():
    """A 2-layer transformer reaches near-zero sequence KL on a small chain (CPU, < 1 min)."""
    task = MarkovChain.random(jax.random.key(5), V=4, H=8, order=1, concentration=1.0)
    mf = lambda k: Transformer(
        task.V, task.H, task.P, max(task.prompt_vocab, 1), layers=2, heads=2, width=32,
        rngs=nnx.Rngs(k),
    )
    spec = TrainSpec(steps=600, batch_size=64, eval_every=300, eval_samples=4000, loss="token")
    out = jax.jit(make_train(task, mf, optax.adam(3e-3), spec))(jax.random.key(0))
    kl = np.asarray(out.metrics.kl)
    assert kl[0] > 1.0
    assert kl[-1] < 0.05, kl


def test_same_seed_same_numbers(chain):
    spec = TrainSpec(steps=40, batch_size=16, n_train=100, eval_every=20, eval_samples=500)
    a = run_seeds(make_train(chain, tabular_fn(chain), optax.adam(0.05), spec), [3, 4])
    b = run_seeds(make_train(chain, tabular_fn(chain), optax.adam(0.05), spec), [3, 4])
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    # different seeds differ
    assert not np.array_equal(np.asarray(a.metrics.kl[0]), np.asarray(a.metrics.kl[1]))


def test_vmap_loop_and_progress_agree(chain):
    spec = TrainSpec(steps=40, batch_size=16, eval_every=20, eval_samples=500)
    tr = make_train(chain, tabular_fn(chain), optax.adam(0.05), spec)
    a = run_seeds(tr, 2)
    b = run_seeds(tr, 2, mode="loop")
    c = run_seeds(tr, 2, progress=True)
    for x in (b, c):
        np.testing.assert_allclose(np.asarray(x.metrics.kl), np.asarray(a.metrics.kl), rtol=1e-5)
        np.testing.assert_allclose(np.asarray(x.metrics.cov), np.asarray(a.metrics.cov))


def test_programs_are_named_in_compile_logs(chain):
    """run_seeds builds its three programs under names that say what each is (compile logs
    and benchmarks/compile_accounting.py group by them), each once per trainer. Lowering is
    counted, not XLA compiling: a program found in the persistent cache is lowered too."""
    import jax.monitoring

    names = []

    def listen(event, seconds, **kw):
        if event == "/jax/core/compile/jaxpr_to_mlir_module_duration":
            names.append(kw.get("fun_name"))

    spec = TrainSpec(steps=20, batch_size=8, n_train=50, eval_every=10, eval_samples=64)
    tr = make_train(chain, tabular_fn(chain), optax.adam(0.05), spec)
    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        run_seeds(tr, 2, mode="loop")
        run_seeds(tr, 2, mode="loop")  # the same shapes: nothing compiled again
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    for name in ("init_seeds", "train_segment", "evaluate_checkpoint"):
        assert names.count(f"jit({name})") == 1, (name, names)


def _nan_at_step(step: int) -> optax.GradientTransformation:
    """SGD that turns its update into NaN at `step` for inits whose parameters sum above 0."""

    def init(params):
        return jnp.int32(0)

    def update(g, count, params):
        s = sum(jnp.sum(a) for a in jax.tree.leaves(params))
        bad = (count == step) & (s > 0)
        return jax.tree.map(lambda a: jnp.where(bad, jnp.nan, -0.1 * a), g), count + 1

    return optax.GradientTransformation(init, update)


def test_divergence_is_recorded_and_isolated(chain):
    mf = lambda k: Tabular(chain.V, chain.H, init="random", init_scale=1.0, rngs=nnx.Rngs(k))
    spec = TrainSpec(steps=20, batch_size=8, eval_every=10, eval_samples=300)
    tr = make_train(chain, mf, _nan_at_step(12), spec)
    seeds = list(range(6))
    out = run_seeds(tr, seeds)
    sums = [float(jnp.sum(tr.init_params(jax.random.split(jax.random.key(s), 4)[0])["table"][...]))
            for s in seeds]
    dv = np.asarray(out.diverged_step)
    # step 12's update makes the parameters NaN: step 13's loss is the first non-finite one
    assert set(dv[np.array(sums) > 0]) == {13} and set(dv[np.array(sums) <= 0]) == {-1}
    assert 0 < np.sum(dv == 13) < len(seeds)
    kl = np.asarray(out.metrics.kl)
    assert np.all(np.isnan(kl[dv == 13, 2])) and np.all(np.isfinite(kl[dv == 13, :2]))
    assert np.all(np.isfinite(kl[dv == -1]))
    ok = int(np.flatnonzero(dv == -1)[0])  # a healthy seed is unaffected by its neighbours
    alone = run_seeds(tr, [ok])
    np.testing.assert_allclose(np.asarray(alone.metrics.kl[0]), kl[ok], rtol=1e-5)
    recs = to_records(out, spec, coords={"task.H": 6}, seeds=seeds)
    assert {r["diverged_step"] for r in recs} == {13, -1}


class _WithSpare(nnx.Module):
    """A learner with a parameter no loss reads (as a table row no batch visits)."""

    def __init__(self, base, rngs):
        self.base = base
        self.spare = nnx.Param(jnp.zeros(3))

    def __call__(self, x, y):
        return self.base(x, y)


def test_non_finite_parameters_the_loss_never_sees_are_caught_at_the_segment_end(chain):
    def nan_spare_at(step):  # SGD that makes only the spare parameter NaN at `step`
        def update(g, count, params):
            def one(path, a):
                spare = any(getattr(k, "key", None) == "spare" for k in path)
                return jnp.where((count == step) & spare, jnp.nan, -0.1 * a)
            return jax.tree_util.tree_map_with_path(one, g), count + 1
        return optax.GradientTransformation(lambda p: jnp.int32(0), update)

    spec = TrainSpec(steps=30, batch_size=8, eval_every=10, eval_samples=300)
    mf = lambda k: _WithSpare(tabular_fn(chain)(k), nnx.Rngs(k))
    out = run_seeds(make_train(chain, mf, nan_spare_at(12), spec), 2)
    assert np.all(np.isfinite(np.asarray(out.train_loss)[:, 1:]))  # the loss never shows it
    assert np.asarray(out.diverged_step).tolist() == [19, 19]  # the end of steps 10..19
    kl = np.asarray(out.metrics.kl)
    assert np.all(np.isfinite(kl[:, :2])) and np.all(np.isnan(kl[:, 2:]))
    assert np.all(np.isfinite(jax.tree.leaves(out.params["spare"])[0]))  # frozen at step 10


def test_checkpoints_round_trip(chain, tmp_path):
    spec = TrainSpec(steps=40, batch_size=16, eval_every=20, eval_samples=500,
                     checkpoints=(0, 20, 40))
    tr = make_train(chain, tabular_fn(chain), optax.adam(0.05), spec)
    out = jax.jit(tr)(jax.random.key(7))
    save_checkpoints(tmp_path, out.step, out.params)
    steps, params = load_checkpoints(tmp_path)
    np.testing.assert_array_equal(steps, [0, 20, 40])
    _, _, eval_set = tr.init(jax.random.key(7))
    model = restore_model(tabular_fn(chain)(jax.random.key(0)), select(params, 1))
    ev = evaluate(chain, model, eval_set, Ns=tr.Ns)
    np.testing.assert_allclose(float(ev.kl), float(out.metrics.kl[1]), rtol=1e-5)
    assert not list(tmp_path.glob(TMP_PREFIX + "*"))  # no temp file left behind


def test_token_level_and_distillation_losses_train(chain):
    for kw in ({"update": "token"}, {"loss": "distill", "distill_N": 4.0}):
        spec = TrainSpec(steps=60, batch_size=8, eval_every=60, eval_samples=1000, **kw)
        out = jax.jit(make_train(chain, tabular_fn(chain), optax.sgd(0.5), spec))(
            jax.random.key(0)
        )
        kl = np.asarray(out.metrics.kl)
        assert kl[-1] < 0.5 * kl[0], kw


@pytest.mark.parametrize(
    "kw, field",
    [
        ({"steps": 0}, "steps"),
        ({"steps": 30, "eval_every": 20}, "steps"),
        ({"batch_size": -1}, "batch_size"),
        ({"Ns": (0.5,)}, "Ns"),
        ({"loss": "mse"}, "loss"),
        ({"update": "layer"}, "update"),
        ({"n_train": 0}, "n_train"),
    ],
)
def test_spec_validation_names_the_field(kw, field):
    base = {"steps": 20, "batch_size": 4, "eval_every": 10}
    with pytest.raises((ValueError, TypeError), match=field):
        TrainSpec(**{**base, **kw})


def test_warm_start_continues_from_given_params(chain):
    """A run given params starts there: its checkpoint 0 scores exactly those params (the
    same eval set, since the key is the same), and a wrong seed axis is refused."""
    spec = TrainSpec(steps=20, batch_size=16, n_train=100, eval_every=20, eval_samples=300)
    tr = make_train(chain, tabular_fn(chain), optax.adam(0.05), spec)
    first = run_seeds(tr, [3, 4])
    second = run_seeds(tr, [3, 4], params=first.params)
    np.testing.assert_allclose(np.asarray(second.metrics.kl[:, 0]),
                               np.asarray(first.metrics.kl[:, -1]), rtol=1e-6)
    loop = run_seeds(tr, [3, 4], params=first.params, mode="loop")
    np.testing.assert_allclose(np.asarray(loop.metrics.kl), np.asarray(second.metrics.kl),
                               rtol=1e-5)
    with pytest.raises(ValueError, match="params"):
        run_seeds(tr, [3, 4, 5], params=first.params)


def test_select_logq_is_the_log_prob_of_held_out_samples(chain):
    """select_logq[e] = log π̂_e(y|x) on select_samples draws from π_D, one row per checkpoint;
    runs without it keep their data and numbers (the selection set has its own stream)."""
    base = dict(steps=20, batch_size=16, n_train=100, eval_every=10, eval_samples=300)
    tr = make_train(chain, tabular_fn(chain), optax.adam(0.05),
                    TrainSpec(**base, checkpoints=(10,), select_samples=50, eval_chunk=16))
    out = tr(jax.random.key(7))
    assert out.metrics.select_logq.shape == (3, 50)
    x, y = chain.sample(jax.random.fold_in(jax.random.key(7), 0x5E1EC7), 50)
    for e in range(3):
        p = jax.tree.map(lambda a, e=e: a[e], out.params)
        want = jnp.sum(jnp.take_along_axis(tr.model(p)(x, y), y[..., None], -1), (-2, -1))
        np.testing.assert_allclose(np.asarray(out.metrics.select_logq[e]), np.asarray(want),
                                   rtol=1e-5)
    plain = make_train(chain, tabular_fn(chain), optax.adam(0.05), TrainSpec(**base))
    ref = plain(jax.random.key(7))
    # same data and updates; XLA may fuse the evaluation differently (float32 rounding)
    np.testing.assert_allclose(np.asarray(ref.metrics.kl), np.asarray(out.metrics.kl), rtol=1e-5)
    assert ref.metrics.select_logq.shape == (3, 0)


def test_chunked_dataset_draw(chain):
    """A fixed dataset drawn in chunks (sample_chunk < n) is a valid π_D sample: every
    sequence has positive probability, the draw is deterministic and the chunks differ."""
    spec = TrainSpec(steps=10, batch_size=8, n_train=250, eval_every=10, eval_samples=50,
                     sample_chunk=64)
    tr = make_train(chain, tabular_fn(chain), optax.adam(0.05), spec)
    _, data, _ = tr.init(jax.random.key(2))
    X, Y, _ = data
    assert X.shape[0] == Y.shape[0] == 250
    assert np.all(np.isfinite(np.asarray(chain.log_prob(X, Y))))
    _, again, _ = tr.init(jax.random.key(2))
    np.testing.assert_array_equal(np.asarray(again[1]), np.asarray(Y))
    assert not np.array_equal(np.asarray(Y[:64]), np.asarray(Y[64:128]))


def test_the_memory_estimate_is_a_floor_of_what_the_trainer_holds(chain):
    """Every array `memory_estimate` counts for data, schedule, evaluation set and parameters
    is one the trainer really materialises: the real bytes are at least the estimate's."""
    from covsim.runners.train import memory_estimate, n_params

    spec = TrainSpec(steps=40, batch_size=16, n_train=100, eval_every=20, eval_samples=300)
    fn = tabular_fn(chain)
    tr = make_train(chain, fn, optax.adam(0.05), spec)
    state, data, eval_set = tr.init(jax.random.key(0))
    nbytes = lambda tree: sum(a.nbytes for a in jax.tree.leaves(tree))
    p = n_params(fn)
    assert p * 4 == nbytes(state.params)
    est = memory_estimate(spec, chain, p)
    assert nbytes(data) + nbytes(eval_set) >= (
        est["dataset and evaluation set"] + spec.n_steps * spec.batch_size * 4)
    grads = jax.grad(tr.loss)(state.params, data[0][:16], data[1][:16])
    assert est["parameters and optimizer state"] == nbytes(state.params) + nbytes(grads)
    assert est == {k: v // 3 for k, v in memory_estimate(spec, chain, p, 3).items()}


def _transformer_cfg(**over):
    from covsim.config import load_config

    cfg = load_config(Path(__file__).parents[1] / "experiments" / "fig2.toml", "quick")
    return cfg.with_values({"sweep.axes": {}, **over})


def test_cell_estimate_counts_training_and_evaluation_flops_and_activations():
    from covsim.experiment import build_model_fn, build_task, train_spec
    from covsim.runners.train import cell_estimate, memory_estimate, n_params

    cfg = _transformer_cfg()
    task, spec = build_task(cfg), train_spec(cfg)
    model = build_model_fn(cfg, task)(jax.random.key(0))
    est = cell_estimate(cfg, 3)
    seq = model.flops_per_token() * (task.P + task.H)
    want = 3 * seq * (spec.n_steps * spec.batch_size + (spec.n_evals + 1) * spec.eval_samples / 3)
    assert est.flops == pytest.approx(want, rel=1e-12)
    floor = memory_estimate(spec, task, n_params(build_model_fn(cfg, task)), 3)
    assert est.memory == {**floor, "activations": 3 * model.activation_bytes(spec.batch_size)}
    assert "3 seed(s)" in est.line() and f"{est.flops / 1e12:.3g} TFLOP" in est.line()


def test_cell_estimate_of_a_learner_without_a_flop_count():
    from covsim.config import load_config
    from covsim.runners.tabular import tabular_model_fn
    from covsim.runners.train import cell_estimate

    cfg = load_config(Path(__file__).parents[1] / "experiments" / "horizon.toml", "quick")
    est = cell_estimate(cfg.with_values({"sweep.axes": {}}), 2, model_fn_of=tabular_model_fn)
    assert est.flops is None and "activations" not in est.memory
    assert "FLOPs unknown" in est.line()


def test_seeds_loop_when_their_vmap_does_not_fit_but_one_seed_does():
    from covsim.runners.train import cell_estimate, fitting_seed_mode

    cfg = _transformer_cfg()
    one, four = (sum(cell_estimate(cfg, s).memory.values()) for s in (1, 4))
    assert fitting_seed_mode(cfg, 8, 2, have=four) == "auto"  # 4 seeds per device fit
    assert fitting_seed_mode(cfg, 8, 2, have=four - 1) == "loop"
    assert fitting_seed_mode(cfg, 8, 2, have=one - 1) == "auto"  # nothing fits: check_cell refuses
    assert fitting_seed_mode(cfg, 2, 2, have=one) == "auto"  # one seed per device: nothing to do


def test_microbatches_give_the_batch_update(chain):
    """Gradient accumulation over batch_size / microbatch slices is the same update as the
    whole batch's (up to float32 rounding of the sums), so the same run."""
    kw = dict(steps=40, batch_size=16, n_train=64, eval_every=20, eval_samples=200)
    # plain SGD: its update scales with the gradient, so a wrong mean over slices shows
    run = lambda **mb: run_seeds(make_train(chain, tabular_fn(chain), optax.sgd(0.5),
                                            TrainSpec(**kw, **mb)), 2)
    whole, sliced = run(), run(microbatch=4)
    np.testing.assert_allclose(sliced.metrics.kl, whole.metrics.kl, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(sliced.train_loss, whole.train_loss, rtol=1e-4, atol=1e-6)
    for a, b in zip(jax.tree.leaves(sliced.params), jax.tree.leaves(whole.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kw, match", [
    (dict(microbatch=3), "microbatch must divide batch_size=8"),
    (dict(microbatch=16), "microbatch"),
    (dict(microbatch=4, update="token"), "microbatch applies to update='batch' only"),
])
def test_microbatch_is_validated(kw, match):
    with pytest.raises(ValueError, match=match):
        TrainSpec(steps=10, batch_size=8, eval_every=10, **kw)


def test_metrics_frame_is_what_read_metrics_gives_for_the_written_run(chain, tmp_path):
    from covsim.config import load_config
    from covsim.results import RunResult, metrics_frame, read_metrics, write_run

    spec = TrainSpec(steps=20, batch_size=8, n_train=32, eval_every=10, eval_samples=64,
                     Ns=(2.0, 8.0))
    out = run_seeds(make_train(chain, tabular_fn(chain), optax.adam(0.05), spec), [3, 5])
    df = metrics_frame(out, spec, coords={"task.H": chain.H}, seeds=[3, 5])
    assert len(df) == 2 * 3 and sorted(set(df["seed"])) == [3, 5]
    assert {"cov@2", "cov@8", "cov_lo@8", "kl", "kl_se", "task.H"} <= set(df.columns)
    cfg = load_config(Path(__file__).parents[1] / "experiments" / "horizon.toml", "quick")
    write_run(tmp_path / "r", cfg, RunResult(to_records(out, spec, seeds=[3, 5])),
              coords={"task.H": chain.H})
    import pandas as pd

    back = read_metrics(tmp_path / "r").drop(columns="run")
    pd.testing.assert_frame_equal(df[back.columns], back, check_dtype=False)
