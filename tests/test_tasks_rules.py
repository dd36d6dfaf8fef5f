"""covsim.tasks.rules: the hidden-class rules of Fig. 1's mechanism — exact π_D against
enumeration and sampling frequencies, the verifier, shared graphs between the pre-training and
fine-tuning laws, the converged class-blind start log(12/5) (closed form and by fitting a
class-blind table), and a class-blind Tabular's blindness."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from task_checks import check_task

from covsim.experiment import make_task
from covsim.models import Tabular
from covsim.tasks import exact_joint
from covsim.tasks.rules import (
    FINETUNE_WEIGHTS,
    PRETRAIN_WEIGHTS,
    blind_start_kl,
    finetune_task,
    hidden_rules_task,
    pretrain_task,
)

KEY = jax.random.key(0)


def test_task_contract_and_exact_sampling():
    """The shared exactness checks: normalised rows, the chain rule, the sampling API and a
    goodness-of-fit test of samples against the exact joint."""
    check_task(hidden_rules_task(KEY, graphs=5, weights=PRETRAIN_WEIGHTS, graph_zipf=1.0),
               jax.random.key(4))
    check_task(finetune_task(KEY, graphs=5), jax.random.key(5))


def test_exact_law_by_enumeration():
    """Σ over the whole (x, y) space is 1; each class puts its mass where its rule says: class
    0 on the rule-1 path, class 1 on the rule-2 path, class 2 uniformly on the 4 valid paths;
    µ(g) is the Zipf law."""
    task = hidden_rules_task(KEY, graphs=6, layers=2, nodes=4, weights=PRETRAIN_WEIGHTS,
                             graph_zipf=1.0)
    xs, ys, lp = exact_joint(task)
    p = np.exp(np.asarray(lp, np.float64))
    assert p.sum() == pytest.approx(1.0, abs=1e-6)
    zipf = 1 / np.arange(1, 7)
    zipf /= zipf.sum()
    pas = np.asarray(task.passable)
    for g in range(6):
        for c in range(3):
            sel = (np.asarray(xs)[:, 0] == g) & (np.asarray(xs)[:, 1] == c)
            law = {tuple(y): q for y, q in zip(np.asarray(ys)[sel], p[sel], strict=True) if q > 0}
            if c < 2:
                assert list(law) == [tuple(pas[g, :, c])]
            else:
                assert set(law) == {(a, b) for a in pas[g, 0] for b in pas[g, 1]}
            assert sum(law.values()) == pytest.approx(zipf[g] / 3, rel=1e-5)


def test_sampling_matches_the_law():
    task = hidden_rules_task(KEY, graphs=3, weights=PRETRAIN_WEIGHTS, graph_zipf=1.0)
    x, y = task.sample(jax.random.key(1), 60_000)
    lp = np.asarray(task.log_prob(x, y))
    assert np.all(np.isfinite(lp))  # every draw has positive π_D mass
    x = np.asarray(x)
    zipf = 1 / np.arange(1, 4)
    zipf /= zipf.sum()
    for g in range(3):
        assert np.mean(x[:, 0] == g) == pytest.approx(zipf[g], abs=0.01)
    for c in range(3):
        assert np.mean(x[:, 1] == c) == pytest.approx(1 / 3, abs=0.01)
    # class 2 picks each passable node of a layer with probability ½
    pas = np.asarray(task.passable)
    sel = x[:, 1] == 2
    first = np.asarray(y)[sel, 0] == pas[x[sel, 0], 0, 0]
    assert first.mean() == pytest.approx(0.5, abs=0.015)


def test_verifier_accepts_only_pi_D_s_path_on_rule_classes():
    task = hidden_rules_task(KEY, graphs=4, weights=PRETRAIN_WEIGHTS)
    pas = np.asarray(task.passable)
    x = jnp.asarray([[1, 0], [1, 1], [1, 2], [1, 2]], jnp.int32)
    # rule-1 path under classes 0, 1, 2; a mixed valid path under class 2
    y = jnp.asarray([pas[1, :, 0], pas[1, :, 0], pas[1, :, 0], [pas[1, 0, 0], pas[1, 1, 1]]],
                    jnp.int32)
    np.testing.assert_array_equal(np.asarray(task.reward(x, y)), [1, 0, 1, 1])
    dead = [v for v in range(4) if v not in pas[1, 0]][0]
    bad = jnp.asarray([[dead, pas[1, 1, 0]]], jnp.int32)
    assert float(task.reward(x[2:3], bad)[0]) == 0.0  # a dead end is never accepted
    ys, mask = task.good_set(x)
    assert ys.shape == (4, 4, 2) and mask.sum(axis=1).tolist() == [1, 1, 4, 4]


def test_pretraining_and_fine_tuning_share_their_graphs():
    a = make_task({"kind": "hidden_rules_pretrain", "graphs": 16})
    b = make_task({"kind": "hidden_rules_finetune", "graphs": 16})
    np.testing.assert_array_equal(np.asarray(a.passable), np.asarray(b.passable))
    assert a.K == 3 and b.K == 2
    assert np.exp(np.asarray(b.log_class_weights)).tolist() == pytest.approx([0.9, 0.1])
    assert np.ptp(np.asarray(b.log_graph_weights)) == 0  # fine-tuning graphs uniform
    assert np.asarray(a.log_graph_weights)[0] > np.asarray(a.log_graph_weights)[-1]  # Zipf


def test_converged_class_blind_start_is_log_12_over_5():
    """Closed form, and a class-blind table fitted by counts on many pre-training draws:
    its fine-tuning KL is log(12/5) (5/12 on each class's path)."""
    assert blind_start_kl() == pytest.approx(math.log(12 / 5), abs=1e-12)
    assert blind_start_kl(PRETRAIN_WEIGHTS, FINETUNE_WEIGHTS, layers=3) == pytest.approx(
        -math.log(1 / 3 + 1 / 24), abs=1e-12)
    assert blind_start_kl((0.5, 0.5), FINETUNE_WEIGHTS) == pytest.approx(math.log(2))
    pre, ft = pretrain_task(KEY, graphs=4, graph_zipf=0.0), finetune_task(KEY, graphs=4)
    blind = Tabular(4, 2, P=2, prompt_vocab=pre.prompt_vocab, order=1, positional=True,
                    prompt_positions=(0,), rngs=nnx.Rngs(0))
    x, y = pre.sample(jax.random.key(2), 400_000)
    fit = blind.fit_counts(x, y, alpha=1e-3)
    xf, yf = ft.sample(jax.random.key(3), 20_000)
    kl = float(jnp.mean(ft.log_prob(xf, yf) - jnp.sum(
        jnp.take_along_axis(fit(xf, yf), yf[..., None], axis=-1)[..., 0], axis=-1)))
    assert kl == pytest.approx(math.log(12 / 5), abs=0.01)


def test_tabular_reading_only_the_graph_is_blind_to_the_class():
    t = Tabular(4, 2, P=2, prompt_vocab=8, positional=True, prompt_positions=[0],
                init="random", rngs=nnx.Rngs(0))
    assert t.logits.shape == (8, 2, 5, 4)
    y = jnp.asarray([[1, 2], [1, 2]], jnp.int32)
    out = t(jnp.asarray([[3, 0], [3, 1]], jnp.int32), y)
    np.testing.assert_array_equal(np.asarray(out[0]), np.asarray(out[1]))
    seeing = Tabular(4, 2, P=2, prompt_vocab=8, positional=True, init="random",
                     rngs=nnx.Rngs(0))
    out = seeing(jnp.asarray([[3, 0], [3, 1]], jnp.int32), y)
    assert not np.allclose(np.asarray(out[0]), np.asarray(out[1]))


@pytest.mark.parametrize("kw, match", [
    ({"prompt_positions": [2]}, "prompt_positions"),
    ({"prompt_positions": [0, 0]}, "distinct"),
    ({"prompt_positions": "0"}, "sequence"),
    ({"prompt_positions": [0], "prompt_radices": [8, 8]}, "prompt_radices"),
    ({"prompt_positions": [0], "class_radices": [[2]]}, "exclusive"),
])
def test_bad_prompt_positions(kw, match):
    with pytest.raises((ValueError, TypeError), match=match):
        Tabular(4, 2, P=2, prompt_vocab=8, rngs=nnx.Rngs(0), **kw)


@pytest.mark.parametrize("kw, match", [
    ({"weights": [0.5, 0.3, 0.1, 0.1]}, "weights"),
    ({"weights": [0.5, 0.6]}, "weights"),
    ({"graph_zipf": -1.0}, "graph_zipf"),
    ({"nodes": 1}, "nodes"),
    ({"layers": 17}, "layers"),
])
def test_bad_parameters(kw, match):
    with pytest.raises((ValueError, TypeError), match=match):
        hidden_rules_task(KEY, **kw)
