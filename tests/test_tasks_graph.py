"""Layered-DAG tasks (covsim.tasks.graph) against an independent pure-Python reference.

The reference parses the prompt text, rebuilds the layers by breadth-first search and applies
the paper's rules literally; the jnp decoder, rules, verifier and posterior must agree with it.
Statistical tests fail a correct sampler with probability ≤ 1e-4 (fixed keys: deterministic).
"""

import itertools
import math
from collections import defaultdict

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats
from task_checks import (
    assert_chain_rule,
    assert_rows_normalised,
    jit_sample,
)

from covsim.tasks.graph import (
    Graph,
    GraphClass,
    GraphMixture,
    figure1_finetune_task,
    figure1_pretrain_task,
    figure2_classes,
    figure2_task,
)

ALPHA = 1e-4  # false-alarm probability of every statistical test here

# float32 log π_D of a response: H factors, each a few ulp off, and the posterior's softmax
ATOL = 2.0**-16
NB = 2048  # every batch is padded to NB rows: one compilation per function and task

# Two task structures shared by all tests (each costs a few compilations); a class alone or
# another mixture of the same classes is the same pytree with other weights (leaves), so it
# compiles nothing new. At L = 8, G_(8,2) (mixed pairs) and G_(8,3) (any pairs) both branch
# in 4 layers: their graphs overlap, as in the paper.
FIG2 = figure2_task(8, m=40)
FIG1 = figure1_pretrain_task(4, m=24, response="edges", edge_order="sorted")


@jax.jit
def _eval(task, x, y):
    """Everything the tests read, in one compilation per task: log_prob, reward, good_set,
    valid_paths, the decoded graphs and their re-encoding."""
    g = task.decode_prompt(x)
    x2 = task.first.encode(g, jax.random.key(0))
    return (task.log_prob(x, y), task.reward(x, y), task.good_set(x), task.valid_paths(x), g, x2)


def evaluate(task, x, y):
    """_eval on any number of rows, in chunks of NB (numpy outputs)."""
    x, y = np.asarray(x), np.asarray(y)
    outs = []
    for a in range(0, len(x), NB):
        k = len(x[a : a + NB])
        pad = lambda z: np.concatenate([z[a : a + NB], np.repeat(z[:1], NB - k, 0)])  # noqa: B023
        out = jax.tree.map(np.asarray, _eval(task, jnp.asarray(pad(x)), jnp.asarray(pad(y))))
        outs.append(jax.tree.map(lambda z: z[:k], out))  # noqa: B023
    return jax.tree.map(lambda *z: np.concatenate(z), *outs)


def with_weights(task, w):
    return task.replace(weights=list(w))


# ---- the reference ----------------------------------------------------------------------
def ref_graph(prompt, m: int, L: int) -> dict:
    """Parse one prompt (tokens) literally and rebuild the layered DAG by BFS from s."""
    toks = [v for v in np.asarray(prompt).tolist() if v != m + 3]  # drop PAD
    assert toks[-4:-3] == [m + 1] and toks[-1] == m + 2, "prompt must end in '/ s t ='"
    s, t, body = toks[-3], toks[-2], toks[:-4]
    assert len(body) % 3 == 2 and all(sep == m for sep in body[2::3]), "bad edge separators"
    edges = [(body[i], body[i + 1]) for i in range(0, len(body), 3)]
    succ = defaultdict(set)
    for u, v in edges:
        succ[u].add(v)
    layers = [{s}]
    for _ in range(L + 1):
        layers.append(set().union(*(succ[u] for u in layers[-1])))
    passable = [{u for u in layer if succ[u]} for layer in layers]
    return dict(s=s, t=t, edges=edges, layers=layers, passable=passable)


def ref_rule_path(G: dict, rule: str, L: int) -> list[int]:
    """The paper's deterministic rules; layer i ∈ {2..L+1} (s is layer 1), p(v) = v mod 2."""
    X = sum(v % 2 for P in G["passable"][1 : L + 1] for v in P) % 2
    path = [G["s"]]
    for i in range(2, L + 2):
        P = sorted(G["passable"][i - 1])
        if len(P) == 1:
            path.append(P[0])
            continue
        want = {"parity": i % 2, "antiparity": 1 - i % 2, "global_parity": (i % 2) ^ X}[rule]
        (v,) = [v for v in P if v % 2 == want]
        path.append(v)
    return path + [G["t"]]


def ref_valid_paths(G: dict, L: int) -> set[tuple[int, ...]]:
    mids = [sorted(G["passable"][i]) for i in range(1, L + 1)]
    return {(G["s"], *p, G["t"]) for p in itertools.product(*mids)}


def ref_all_layered(G: dict, L: int) -> list[tuple[int, ...]]:
    """Every path s → one node per layer → t (4^L), valid or not."""
    mids = [sorted(G["layers"][i]) for i in range(1, L + 1)]
    return [(G["s"], *p, G["t"]) for p in itertools.product(*mids)]


def feature_parity(G: dict, L: int) -> int:
    """⊕_{u∈V′} p(u), V′ = {s} ∪ the first ⌊L/2⌋ intermediate layers."""
    return sum(v % 2 for layer in G["layers"][: 1 + L // 2] for v in layer) % 2


def check_structure(G: dict, task, n_branch: int, mixed: bool) -> None:
    """Graph generation invariants of one instance."""
    m, L = task.m, task.L
    layers, passable = G["layers"], G["passable"]
    assert [len(x) for x in layers] == [1] + [4] * L + [1], [len(x) for x in layers]
    assert layers[-1] == {G["t"]} and passable[0] == {G["s"]} and not passable[-1]
    labels = set().union(*layers)
    assert len(labels) == 4 * L + 2 and all(0 <= v < m for v in labels), "labels not distinct"
    want = {(u, v) for i in range(L + 1) for u in passable[i] for v in layers[i + 1]}
    assert len(G["edges"]) == len(set(G["edges"])) and set(G["edges"]) == want, "edge set"
    k = [len(passable[i]) for i in range(1, L + 1)]
    assert sorted(k) == [1] * (L - n_branch) + [2] * n_branch, k
    if mixed:
        assert all(sorted(v % 2 for v in P) == [0, 1] for P in passable[1 : L + 1] if len(P) == 2)


def sample_refs(task, key, n=NB):
    """n ≤ NB draws (from one compiled batch of NB) with their reference graphs."""
    x, y = jit_sample(task, key, NB)
    x, y = np.asarray(x)[:n], np.asarray(y)[:n]
    return x, y, [ref_graph(row, task.m, task.L) for row in x]


def path_of(task, y) -> tuple[int, ...]:
    return tuple(np.asarray(y)[list(task.first_pos)].tolist())


def respond(task, paths) -> np.ndarray:
    """Node paths (k, L + 2) -> responses in the task's format."""
    return np.asarray(paths, np.int32)[:, list(task.layer_of)]


def is_mixed(G) -> bool:
    return all(sorted(v % 2 for v in P) == [0, 1] for P in G["passable"] if len(P) == 2)


def count_ratio(task) -> float:
    """|A_mixed| / |A_any| for B branching layers: the probability that B disjoint slot
    pairs of a uniform injection into [m] have one even and one odd label."""
    m, B = task.m, 4
    me, mo = (m + 1) // 2, m // 2
    return math.prod(2 * (me - b) * (mo - b) / ((m - 2 * b) * (m - 2 * b - 1)) for b in range(B))


# ---- generation ---------------------------------------------------------------------------
def test_figure2_mixture_generation_and_weights():
    """Structure of every graph; G_(H,1) gives its unique path with probability 1; the
    class frequencies; on a mixed 4-branch graph π_D(G_(H,2)'s path) = P₂ + P₃/16 with
    P₂ = (w₂/|A₂|) / (w₂/|A₂| + w₃/|A₃|)."""
    x, y, refs = sample_refs(FIG2, jax.random.key(0))
    rule = respond(FIG2, [ref_rule_path(G, "global_parity", FIG2.L) if is_mixed(G)
                          else min(ref_valid_paths(G, FIG2.L)) for G in refs])
    lp, lp_rule = evaluate(FIG2, x, y)[0], evaluate(FIG2, x, rule)[0]
    B = np.array([sum(len(P) == 2 for P in G["passable"]) for G in refs])
    assert set(B) == {0, 4}
    for G, yi, lpi, b in zip(refs, y, lp, B, strict=True):
        check_structure(G, FIG2, b, mixed=False)
        path = path_of(FIG2, yi)
        assert path in ref_valid_paths(G, FIG2.L)
        if b == 0:  # G_(H,1): the unique path
            assert lpi == 0.0
    P2 = 0.05 / (0.05 + 0.01 * count_ratio(FIG2))
    mixed = np.array([is_mixed(G) for G in refs]) & (B == 4)
    np.testing.assert_allclose(lp_rule[mixed], math.log(P2 + (1 - P2) / 16), atol=ATOL)
    np.testing.assert_allclose(lp_rule[(B == 4) & ~mixed], math.log(1 / 16), atol=ATOL)
    obs = [np.sum(B == 0), np.sum(B == 4)]
    p = stats.chisquare(obs, NB * np.asarray([0.94, 0.06])).pvalue
    assert p >= ALPHA, (obs, p)


def test_figure1_classes_parity_feature_and_structure():
    """Each class alone (one-hot weights): V′ parity 1 for G₁, 0 for G₂, both for G₃."""
    for c, want in enumerate((1, 0, None)):
        task = with_weights(FIG1, np.eye(3)[c])
        x, y, refs = sample_refs(task, jax.random.key(1 + c), 512)
        feats = {feature_parity(G, FIG1.L) for G in refs}
        assert feats == ({want} if want is not None else {0, 1}), feats
        rule = FIG1.components[c].rule
        for G, yi in zip(refs, y, strict=True):
            check_structure(G, FIG1, 2, mixed=True)
            # sorted order: edges listed by (source layer, source label, target label)
            depth = {v: i for i, layer in enumerate(G["layers"]) for v in layer}
            assert G["edges"] == sorted(G["edges"], key=lambda e: (depth[e[0]], *e))
            if rule != "uniform":
                assert list(path_of(FIG1, yi)) == ref_rule_path(G, rule, FIG1.L)
            # the printed format repeats every interior node: v1 v2 v2 v3 ... v_{H-1} v_H
            assert np.array_equal(yi[1:-1:2], yi[2::2])


def test_deterministic_classes_always_produce_their_path():
    for task, c in ((FIG2, 0), (FIG2, 1), (FIG1, 0), (FIG1, 1)):
        cls = task.components[c]
        x, y, refs = sample_refs(with_weights(task, np.eye(task.K)[c]), jax.random.key(20 + c),
                                 1024)
        for G, yi in zip(refs, y, strict=True):
            check_structure(G, task, cls.n_branch, mixed=cls.mixed_pairs)
            assert list(path_of(task, yi)) == ref_rule_path(G, cls.rule, task.L)


def test_uniform_class_samples_the_16_paths_uniformly():
    task = with_weights(FIG2, [0, 0, 1])  # G_(H,3) alone
    _, y, refs = sample_refs(task, jax.random.key(2))
    codes = np.zeros(NB, int)
    for i, (G, yi) in enumerate(zip(refs, y, strict=True)):
        p = path_of(task, yi)
        assert p in ref_valid_paths(G, task.L)
        # bit r: the larger passable node of the r-th branching layer was chosen
        branching = [a for a in range(1, task.L + 1) if len(G["passable"][a]) == 2]
        codes[i] = sum((p[a] == max(G["passable"][a])) << r for r, a in enumerate(branching))
    obs = np.bincount(codes, minlength=16)
    p = stats.chisquare(obs).pvalue
    assert p >= ALPHA, (obs.tolist(), p)
    # the 4·NB choices are i.i.d. fair coins: a pooled test, more powerful against a bias
    ones = sum(bin(c).count("1") for c in codes)
    assert stats.binomtest(ones, 4 * NB, 0.5).pvalue >= ALPHA, ones / (4 * NB)


def test_graph_law_is_uniform_and_counts_are_exact():
    """|A| of the mixed-pair class relative to the unconstrained one equals the probability
    that 4 disjoint slot pairs of a uniform injection are mixed; the unconstrained sampler
    hits A at that rate; the mixed sampler's number of even labels has the law of a uniform
    injection (hypergeometric) conditioned on mixed pairs."""
    _, mixed, free = FIG2.components
    m, L, B = FIG2.m, FIG2.L, 4
    ratio = count_ratio(FIG2)
    assert math.exp(mixed.log_count - free.log_count) == pytest.approx(ratio, rel=1e-9)
    # log |A| by counting on a tiny instance: L = 1, m = 6: s, t, the layer, the passable pair
    tiny = GraphClass(m=6, L=1, n_branch=1, rule="uniform", mixed_pairs=False)
    assert math.exp(tiny.log_count) == pytest.approx(6 * 5 * math.comb(4, 2), rel=1e-9)

    _, _, refs = sample_refs(with_weights(FIG2, [0, 0, 1]), jax.random.key(3))
    hits = sum(is_mixed(G) for G in refs)
    assert stats.binomtest(hits, NB, ratio).pvalue >= ALPHA, (hits / NB, ratio)

    _, _, refs = sample_refs(with_weights(FIG2, [0, 1, 0]), jax.random.key(4))
    N, F, me = 4 * L + 2, 4 * L + 2 - 2 * B, m // 2
    k = np.array([sum(v % 2 == 0 for layer in G["layers"] for v in layer) for G in refs])
    ks = np.arange(N + 1)
    pk = stats.hypergeom.pmf(ks, m, me, N) * np.array(
        [2**B * math.comb(F, j - B) / math.comb(N, j) if B <= j <= B + F else 0.0 for j in ks])
    pk /= pk.sum()
    assert np.all(pk[k] > 0)
    keep = NB * pk >= 5  # pool the rare counts
    obs = np.append(np.bincount(k, minlength=N + 1)[keep], np.sum(~keep[k]))
    exp_ = np.append(NB * pk[keep], NB * pk[~keep].sum())
    p = stats.chisquare(obs[exp_ > 0], exp_[exp_ > 0]).pvalue
    assert p >= ALPHA, (obs.tolist(), exp_.round(1).tolist(), p)


def test_overlapping_classes_use_the_exact_posterior():
    """Where two classes share graphs, P(c | x) ∝ w_c / |A_c| and π_D(y|x) = Σ_c P(c|x) π_c(y|x)."""
    # Fig. 1 pre-training: |A₁| = |A₃|/2, so P(G₁ | x) = 2/3 on G₁'s graphs and
    # π_D(G₁'s path | x) = 2/3 + (1/3)(1/4) = 3/4 (likewise for G₂)
    x, y, refs = sample_refs(FIG1, jax.random.key(5))
    g1 = [ref_rule_path(G, "parity", FIG1.L) for G in refs]
    g2 = [ref_rule_path(G, "antiparity", FIG1.L) for G in refs]
    c1 = np.array([feature_parity(G, FIG1.L) == 1 for G in refs])
    y1 = respond(FIG1, np.where(c1[:, None], g1, g2))
    np.testing.assert_allclose(evaluate(FIG1, x, y1)[0], math.log(0.75), atol=ATOL)
    hits = int(np.sum(np.all(y == y1, axis=1)))
    assert stats.binomtest(hits, NB, 0.75).pvalue >= ALPHA, hits / NB
    # G_(8,2) and G_(8,3) with equal weights: the samples follow the posterior mixture
    task = with_weights(FIG2, [0, 0.5, 0.5])
    Pm = 1 / (1 + count_ratio(FIG2))
    x, y, refs = sample_refs(task, jax.random.key(6))
    mix = np.array([is_mixed(G) for G in refs])
    rule = respond(task, [ref_rule_path(G, "global_parity", task.L) if is_mixed(G)
                          else min(ref_valid_paths(G, task.L)) for G in refs])
    lp = evaluate(task, x, rule)[0]
    np.testing.assert_allclose(lp[mix], math.log(Pm + (1 - Pm) / 16), atol=ATOL)
    np.testing.assert_allclose(lp[~mix], math.log(1 / 16), atol=ATOL)
    hits = int(np.sum(np.all(y == rule, axis=1)[mix]))
    assert stats.binomtest(hits, int(mix.sum()), Pm + (1 - Pm) / 16).pvalue >= ALPHA
    # Fig. 1 fine-tuning (G₃'s weight 0): the V′ parity identifies the class, π_D is a point
    # mass, and the weights of G₁ and G₂ are 0.9 and 0.1
    task = with_weights(FIG1, [0.9, 0.1, 0])
    ft = figure1_finetune_task(4, m=24, response="edges", edge_order="sorted")
    assert ft.components == FIG1.components[:2] and np.allclose(ft.weights, [0.9, 0.1])
    x, y, refs = sample_refs(task, jax.random.key(7))
    assert np.all(evaluate(task, x, y)[0] == 0.0)
    for G, yi in zip(refs, y, strict=True):
        rule = "parity" if feature_parity(G, FIG1.L) == 1 else "antiparity"
        assert list(path_of(FIG1, yi)) == ref_rule_path(G, rule, FIG1.L)
    n1 = sum(feature_parity(G, FIG1.L) for G in refs)
    assert stats.binomtest(n1, NB, 0.9).pvalue >= ALPHA, n1 / NB


def test_sampling_is_a_pure_function_of_the_key():
    for task in (FIG2, FIG1):
        x, y = jit_sample(task, jax.random.key(9), NB)
        assert x.shape == (NB, task.P) and y.shape == (NB, task.H)
        assert x.dtype == jnp.int32 and y.dtype == jnp.int32
        assert np.all((np.asarray(x) >= 0) & (np.asarray(x) < task.prompt_vocab))
        assert np.all((np.asarray(y) >= 0) & (np.asarray(y) < task.V))
        x2, y2 = jit_sample(task, jax.random.key(9), NB)
        x3, _ = jit_sample(task, jax.random.key(10), NB)
        assert np.array_equal(x, x2) and np.array_equal(y, y2) and not np.array_equal(x, x3)


def test_a_class_on_its_own():
    """GraphClass's own Task API (the mixtures above call the same graph-level code)."""
    c = FIG1.components[2]  # G₃: uniform over the 4 valid paths, "edges" responses

    @jax.jit
    def run(c, key):
        x, y = c.sample(key, 512)
        return (x, y, c.log_prob(x, y), c.reward(x, y), c.good_set(x),
                c.next_token_log_probs(x, y), c.token_log_probs(x, y))

    x, y, lp, r, (gs, mask), nt, tok = jax.tree.map(np.asarray, run(c, jax.random.key(17)))
    assert x.shape == (512, c.P) and c.P == FIG1.P and y.shape == (512, c.H)
    np.testing.assert_allclose(lp, math.log(1 / 4), atol=ATOL)
    assert np.all(r == 1.0) and np.all(mask.sum(1) == 4)
    np.testing.assert_allclose(np.exp(nt.astype(np.float64)).sum(-1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(np.take_along_axis(nt, y[..., None], -1)[..., 0], tok)
    for xi, yi, g, M in zip(x, y, gs, mask, strict=True):
        G = ref_graph(xi, c.m, c.L)
        check_structure(G, c, 2, mixed=True)
        valid = ref_valid_paths(G, c.L)
        assert path_of(c, yi) in valid and {path_of(c, v) for v in g[M]} == valid
    with pytest.raises(ValueError, match="argument key"):
        c.rule_paths(Graph(*(np.zeros(1, np.int32),) * 2, np.zeros((1, 4, 4), np.int32),
                           np.ones((1, 4, 4), bool)))


# ---- exact scores -------------------------------------------------------------------------
@pytest.mark.parametrize("task", [FIG2, FIG1], ids=["fig2-L8", "fig1-L4-edges"])
def test_probabilities_sum_to_one_over_paths_and_chain_rule(task):
    """π_D sums to 1 over the valid paths and gives exactly 0 to every other layered path (all
    4^L of them for L = 4, 256 random ones for L = 8); with rows normalised (checked below)
    Σ_y π_D(y|x) = 1 over all of [0, m)^H, so every other response has mass 0 too."""
    x, y, refs = sample_refs(task, jax.random.key(11), 64)
    rng = np.random.default_rng(11)
    cand, rows = [], []
    for i, G in enumerate(refs[:8]):
        layered = ref_all_layered(G, task.L) if task.L <= 4 else [
            tuple(int(rng.choice(sorted(la))) for la in G["layers"]) for _ in range(256)]
        cand += sorted(ref_valid_paths(G, task.L) | set(layered))
        rows += [i] * (len(cand) - len(rows))
    p = np.exp(evaluate(task, x[rows], respond(task, cand))[0].astype(np.float64))
    for i, G in enumerate(refs[:8]):
        valid = ref_valid_paths(G, task.L)
        on = np.array([r == i and q in valid for r, q in zip(rows, cand, strict=True)])
        off = np.array([r == i and q not in valid for r, q in zip(rows, cand, strict=True)])
        assert abs(p[on].sum() - 1) <= 1e-5 and on.sum() == len(valid), p[on].sum()
        assert off.sum() >= (4**task.L - len(valid) if task.L <= 4 else 100)
        assert np.all(p[off] == 0.0)
    # log_prob = Σ of next-token log-probs computed one position at a time (prefix only)
    rnd = np.random.default_rng(12).integers(0, task.V, y.shape).astype(np.int32)
    # random layered paths, valid or not: the posterior over classes moves along the prefix
    lay = np.array([[rng_pick(G, i, k) for i in range(task.L + 2)] for k, G in enumerate(refs)])
    for ys in (y, rnd, respond(task, lay)):
        ys = jnp.asarray(ys)
        assert_rows_normalised(task, jnp.asarray(x), ys)
        assert_chain_rule(task, jnp.asarray(x), ys, 3)
    # prompts µ never draws (random tokens) still give distributions, never NaN
    junk = jnp.asarray(rng.integers(0, task.prompt_vocab, x.shape), jnp.int32)
    assert_rows_normalised(task, junk, jnp.asarray(rnd))
    assert not np.any(np.isnan(evaluate(task, junk, rnd)[0]))


def rng_pick(G, i, k) -> int:
    """A deterministic pseudo-random node of layer i (0-based) for row k."""
    layer = sorted(G["layers"][i])
    return layer[(7 * k + 3 * i * i + k * i) % len(layer)]


# ---- verifier and good set ----------------------------------------------------------------
@pytest.mark.parametrize("task, c", [(FIG2, 0), (FIG2, 1), (FIG2, 2), (FIG2, None),
                                     (FIG1, 0), (FIG1, 1), (FIG1, 2), (FIG1, None)],
                         ids=["fig2-G1", "fig2-G2", "fig2-G3", "fig2-mixture",
                              "fig1-G1", "fig1-G2", "fig1-G3", "fig1-pretrain"])
def test_verifier_and_good_set(task, c):
    """A class alone accepts exactly its path (deterministic) or the valid paths (uniform);
    a mixture accepts what some class with P(c | x) > 0 accepts. Candidates: every valid path
    and up to 256 layered paths, plus an off-layer response."""
    if c is not None:
        task = with_weights(task, np.eye(task.K)[c])
    x, _, refs = sample_refs(task, jax.random.key(13), 6)
    rng = np.random.default_rng(14)
    cands = []
    for G in refs:
        layered = ref_all_layered(G, task.L) if task.L <= 4 else [
            tuple(int(rng.choice(sorted(la))) for la in G["layers"]) for _ in range(256)]
        paths = sorted(ref_valid_paths(G, task.L) | set(layered))
        ys = respond(task, paths)
        bad = ys[:1].copy()  # a node outside the layer it is written in
        bad[0, 1] = next(v for v in range(task.m) if all(v not in la for la in G["layers"][:2]))
        cands.append((paths, np.concatenate([ys, bad])))
    rows = np.concatenate([[i] * len(ys) for i, (_, ys) in enumerate(cands)])
    _, R, (GS, MASK), *_ = evaluate(task, x[rows], np.concatenate([ys for _, ys in cands]))
    for i, (G, (paths, _)) in enumerate(zip(refs, cands, strict=True)):
        r, gs, mask = R[rows == i], GS[rows == i], MASK[rows == i]
        valid = ref_valid_paths(G, task.L)
        assert r[-1] == 0.0 and set(np.unique(r)) <= {0.0, 1.0}
        live = [k for k in range(task.K) if task.weights[k] > 0 and member(task, k, G)]
        accept = set()
        for k in live:
            cls = task.components[k]
            accept |= valid if cls.rule == "uniform" else {tuple(ref_rule_path(G, cls.rule,
                                                                               task.L))}
        assert {p for p, ri in zip(paths, r, strict=False) if ri == 1.0} == accept
        got = [tuple(int(v) for v in row) for row in gs[0][mask[0]]]
        assert len(got) == len(set(got)) and {path_of(task, g) for g in got} == accept


def member(task, k, G) -> bool:
    """The reference class membership: branching count, mixed pairs, V′ parity."""
    cls = task.components[k]
    ok = sum(len(P) == 2 for P in G["passable"]) == cls.n_branch
    ok &= is_mixed(G) or not cls.mixed_pairs
    return ok and (cls.feature is None or feature_parity(G, task.L) == cls.feature)


def test_valid_paths_count_is_product_of_passable_counts():
    for task in (FIG2, FIG1):
        x, y, refs = sample_refs(task, jax.random.key(15), 256)
        paths, mask = evaluate(task, x, y)[3]
        for G, P, M in zip(refs, paths, mask, strict=True):
            assert M.sum() == math.prod(len(G["passable"][i]) for i in range(1, task.L + 1))
            assert {tuple(int(v) for v in p) for p in P[M]} == ref_valid_paths(G, task.L)


# ---- tokenizer ----------------------------------------------------------------------------
def test_tokenizer_round_trips():
    """decode_prompt recovers the reference graph, encode(decode(x)) lists the same edges
    (in the same order when sorted), decode(encode(g)) = g, and text round-trips."""
    for task in (FIG2, FIG1):
        x, y, refs = sample_refs(task, jax.random.key(16), 256)
        *_, g, x2 = evaluate(task, x, y)
        for i, G in enumerate(refs):
            want = [sorted(G["layers"][a]) for a in range(1, task.L + 1)]
            assert g.layers[i].tolist() == want and (g.s[i], g.t[i]) == (G["s"], G["t"])
            assert [[v in G["passable"][a + 1] for v in row] for a, row in
                    enumerate(want)] == g.passable[i].tolist()
            G2 = ref_graph(x2[i], task.m, task.L)
            assert sorted(G2["edges"]) == sorted(G["edges"])
            assert (G2["layers"], G2["passable"]) == (G["layers"], G["passable"])
        if task.edge_order == "sorted":  # the encoding is then a function of the graph
            assert np.array_equal(x2, x)
        else:
            assert not np.array_equal(x2, x)
        for xi, yi in zip(x[:50], y[:50], strict=True):
            assert np.array_equal(task.tokenize(task.detokenize(xi)), xi)
            assert np.array_equal(task.tokenize(task.detokenize(yi)), yi)
    c = FIG2.components[0]  # G_(H,1): 4L + 1 = 33 edges, padded to G_(H,2)'s 4(L + 4) + 1
    assert FIG2.P == 3 * 49 + 3
    text = "1 2 | " + " | ".join(f"2 {v}" for v in (3, 4, 5, 6)) + " / 1 9 ="
    toks = c.tokenize(text)
    assert toks.shape == (FIG2.P,) and np.all(toks[: 3 * (49 - 5)] == c.m + 3)
    assert c.detokenize(toks) == text and list(toks[-4:]) == [c.m + 1, 1, 9, c.m + 2]


def test_paper_sizes():
    t = figure2_task(24)
    assert (t.V, t.H, t.prompt_vocab) == (100, 26, 104)
    assert t.P == 3 * (4 * (24 + 12) + 1) + 3  # G_(24,2)'s largest edge list, all classes
    assert all(c.P == t.P for c in t.components)
    t = figure1_finetune_task(response="edges")
    assert (t.H, t.P, t.components[0].n_feature) == (18, 3 * 41 + 3, 17)


@pytest.mark.slow
@pytest.mark.parametrize("make", [lambda: figure2_task(24),
                                  lambda: figure2_task(16, response="edges"),
                                  lambda: figure1_pretrain_task(response="edges")],
                         ids=["fig2-H24", "fig2-H16-edges", "fig1-pretrain"])
def test_paper_scale_tasks(make):
    """The paper's sizes (m = 100): structure, π_D's support and exact scores on 512 draws."""
    task = make()
    x, y = (np.asarray(a) for a in jit_sample(task, jax.random.key(30), 512))
    lp, r, (gs, mask), (paths, pmask), *_ = jax.tree.map(
        np.asarray, _eval(task, jnp.asarray(x), jnp.asarray(y)))
    assert np.all(np.isfinite(lp)) and np.all(lp <= 0) and np.all(r == 1.0)
    for xi, yi, P, M in zip(x, y, paths, pmask, strict=True):
        G = ref_graph(xi, task.m, task.L)
        B = sum(len(P) == 2 for P in G["passable"])
        check_structure(G, task, B, mixed=False)
        assert path_of(task, yi) in ref_valid_paths(G, task.L)
        assert {tuple(int(v) for v in p) for p in P[M]} == ref_valid_paths(G, task.L)
    # π_D's mass on the good set is 1 (every class's own path or valid set is accepted)
    n, G = mask.shape
    k = 512 // G  # the good sets of the first k prompts fill one batch of 512 rows
    xs, ys = np.repeat(x[:k], G, axis=0), gs[:k].reshape(k * G, -1)
    pad = 512 - k * G
    lpg = np.asarray(_eval(task, jnp.asarray(np.concatenate([xs, x[:pad]])),
                           jnp.asarray(np.concatenate([ys, y[:pad]])))[0])[: k * G]
    good = np.where(mask[:k].reshape(-1), np.exp(lpg.astype(np.float64)), 0.0)
    np.testing.assert_allclose(good.reshape(k, G).sum(1), 1.0, atol=1e-5)


# ---- errors -------------------------------------------------------------------------------
@pytest.mark.parametrize("kw, name", [
    (dict(m=9), "m"),
    (dict(n_branch=3), "n_branch"),
    (dict(rule="majority"), "rule"),
    (dict(response="text"), "response"),
    (dict(edge_order="random"), "edge_order"),
    (dict(mixed_pairs=False), "mixed_pairs"),
    (dict(feature=2), "feature"),
    (dict(m=11, feature=1), "m"),
    (dict(edge_slots=3), "edge_slots"),
    (dict(L=0), "L"),
])
def test_bad_class_arguments_name_the_argument(kw, name):
    args = dict(m=10, L=2, n_branch=1, rule="parity") | kw
    with pytest.raises((ValueError, TypeError), match=f"argument {name}"):
        GraphClass(**args)


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match="argument L"):
        figure2_classes(6 - 1)
    a, b = GraphClass(m=10, L=2, n_branch=0, rule="parity"), GraphClass(m=12, L=2, n_branch=0,
                                                                        rule="parity")
    with pytest.raises(ValueError, match=r"argument components\[1\]"):
        GraphMixture((a, b), [0.5, 0.5])
    with pytest.raises(ValueError, match="argument weights"):
        GraphMixture((a, a), [0.5, 0.6])
    with pytest.raises(ValueError, match="argument key"):
        a.encode(Graph(*(np.zeros(2, np.int32),) * 2, np.zeros((2, 2, 4), np.int32),
                       np.ones((2, 2, 4), bool)))
    with pytest.raises(ValueError, match="argument text"):
        a.tokenize("1 2 | 3 x / 1 2 =")
    with pytest.raises(ValueError, match="argument prompts"):
        a.log_prob(jnp.zeros((2, a.P + 1), jnp.int32), jnp.zeros((2, a.H), jnp.int32))
    with pytest.raises(ValueError, match="argument responses"):
        a.log_prob(jnp.zeros((2, a.P), jnp.int32), jnp.zeros((2, a.H + 1), jnp.int32))
    with pytest.raises(ValueError, match="argument max_branch"):
        a.valid_paths(jnp.zeros((1, a.P), jnp.int32), max_branch=5)
