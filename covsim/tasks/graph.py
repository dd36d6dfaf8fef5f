"""Path finding on layered DAGs (App. C): the ground truths of the paper's Figures 1 and 2.

An instance has L + 2 layers V¹ = {s}, V², …, V^{L+1}, V^{L+2} = {t}; every intermediate layer
has 4 nodes, of which the passable ones V^i_* (1 or 2 here) are fully connected to the next
layer (s is passable, t is not). A valid path is (s, v_2, …, v_{L+1}, t) with v_i ∈ V^i_*;
there are Π_i |V^i_*| of them. A class (`GraphClass`) fixes how graphs are drawn and which
valid path π_D chooses; `GraphMixture` mixes classes behind the paper's own prompt format.
`figure2_task(L)` (the paper's "H" is L here; the code's H is the response length) and
`figure1_finetune_task` / `figure1_pretrain_task` build the paper's mixtures.

Tokens (0-based numeral tokenizer): node v ∈ [0, m) ↦ v, and `|`, `/`, `=`, PAD ↦ m, m+1, m+2,
m+3 (prompt_vocab = m + 4). Responses hold node labels only: V = m.

    prompt (P = 3·E_max + 3):  [PAD PAD PAD]·(E_max − E)  u_1 v_1 |  …  u_E v_E /  s t =
    response "nodes" (H = L + 2):       s v_2 v_3 … v_{L+1} t
    response "edges" (H = 2(L + 1)):    s v_2 v_2 v_3 v_3 … v_{L+1} v_{L+1} t   (the paper's print)

Choices the paper leaves open (listed in docs/claims.md); the varying ones are static fields:

* Labels are 0-based, p(v) = v mod 2; layers are numbered as in the paper, s = layer 1, so the
  parity of intermediate layer i ∈ {2..L+1} is p(i) = i mod 2.
* A fixed prompt length needs padding: whole PAD triplets on the left (the prompt still ends
  in `/ s t =` right before the response). E_max (`edge_slots`) defaults to the class's
  largest edge count; a mixture pads all its classes to the largest.
* `edge_order`: "shuffled" (uniform over the E! orders; our guess: the paper does not say)
  or "sorted" by (source layer, source label, target label).
* `response`: "nodes" (Y ⊆ V^H with H = L + 2, as the text says) or "edges" (as printed).
* Branching layers (2 passable nodes) are a uniform subset of the intermediate layers. With
  `mixed_pairs` their two passable labels have opposite parity: needed by every parity rule
  (else it cannot choose), so it holds for Fig. 1's G₁, G₂, G₃ ("same DAG structure") and
  Fig. 2's G_{H,2}; Fig. 2's G_{H,3} (a uniform rule) has no parity constraint.
* Fig. 1's hidden feature: V′ = {s} ∪ the first ⌊L/2⌋ intermediate layers (|V′| = 2L + 1 =
  |V|/2 for even L); G₁ graphs have ⊕_{u∈V′} p(u) = 1, G₂ graphs 0 (`feature`); G₃ has no
  such constraint (not stated).
* V_* in G_{H,2}'s rule is the set of passable nodes of the intermediate layers (not s).

Graph law of a class: uniform over its labelled graphs (branching set, labels without
replacement from [m], passable sets). It is drawn exactly: the parity pattern of the slots
first (its law ∝ (m_e)_k (m_o)_{N−k} for k even slots, restricted to mixed pairs), then
uniform labels given the pattern; the V′ constraint by the parity flip v ↦ v ⊕ 1 of all labels
(m even), a bijection that preserves the law and flips ⊕_{V′} p since |V′| is odd, so the
result is exactly the law conditioned on the constraint (up to ties among 32-bit random
keys, which break by position: probability ≲ k²·2⁻³³ per sort of k keys). A mixture draws
all rows with one generator, each row with its class's parameters. Class c's prompts are
uniform on a set A_c of known size |A_c| (`log_count`), which makes a mixture's posterior
P(c | x) ∝ w_c 1[x ∈ A_c] / |A_c| exact even where classes overlap (Fig. 1's pre-training
mixture: G₃ shares G₁'s and G₂'s graphs; Fig. 2 at L = 8: G_{8,2} and G_{8,3} both branch in
4 layers). Classes are told apart by structure only (branching count, mixed pairs, V′).
`covsim.tasks.mixture.Mixture` would instead prepend a class token, which would hand the
model Fig. 1's hidden class for free; GraphMixture keeps the paper's prompts.

Verifier: a class accepts π_D's path (deterministic rules; Pass@N counts exact matches, notes
§7.3) or any valid path ("uniform"); a mixture accepts what some class with P(c | x) > 0
accepts, and `good_set` lists exactly those responses (for exact Pass@N).

Teacher on prefixes: π_D's next-token law given the prefix is the class's rule for the
layer being written (a point mass on the rule's node, or uniform over the layer's passable
nodes), and in the "edges" format the repeated source of each edge is a point mass on the
previous token. On prefixes π_D never produces (off-path) the same rule applies: it ignores
the prefix, so every row is a distribution and nothing is NaN (on any prompt: the decoder
always yields labels in [0, m)). A mixture weighs its classes
by P(c | x, y_{<h}) ∝ P(c | x) π_c(y_{<h} | x), falling back to P(c | x) when every class gives
the prefix probability 0.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from covsim.checks import check_int, check_shape
from covsim.tasks.base import Array, Task, exact_cdf, inverse_cdf
from covsim.tasks.mixture import checked_components, checked_weights

RULES = ("parity", "antiparity", "global_parity", "uniform")
RESPONSES = ("nodes", "edges")
EDGE_ORDERS = ("shuffled", "sorted")
#: Separators as offsets from m: `|`, `/`, `=`, PAD.
SEPARATORS = ("|", "/", "=", "PAD")
#: Fig. 2's class weights µ̃ (G_{H,1}, G_{H,2}, G_{H,3}) and Fig. 1's.
FIG2_WEIGHTS = (0.94, 0.05, 0.01)
FIG1_FINETUNE_WEIGHTS = (0.9, 0.1)
FIG1_PRETRAIN_WEIGHTS = (1 / 3, 1 / 3, 1 / 3)


class Graph(NamedTuple):
    """A batch of graphs in canonical form (layers sorted by label)."""

    s: Array  # (n,) int32 source label
    t: Array  # (n,) int32 target label
    layers: Array  # (n, L, 4) int32 labels of the intermediate layers, ascending
    passable: Array  # (n, L, 4) bool


# Gathers, scatters and sorts compile slowly with XLA on CPU (seconds per task method); the
# small axes here (k ≤ 4L + 2, m) are cheaper as pairwise comparisons and one-hot sums.


def _ranks(a: Array) -> Array:
    """Rank of each entry along the last axis (0 = smallest, ties by position): a
    permutation of [0, k), uniform when a holds i.i.d. random bits. (..., k) -> (..., k)."""
    k = a.shape[-1]
    i = jnp.arange(k)
    below = (a[..., None, :] < a[..., :, None]) | (
        (a[..., None, :] == a[..., :, None]) & (i[None, :] < i[:, None]))
    return jnp.sum(below, -1, dtype=jnp.int32)


def _lookup(table: Array, idx: Array) -> Array:
    """table[r, idx[r, j]] by a one-hot sum: (..., k), (..., j) -> (..., j)."""
    hit = idx[..., None] == jnp.arange(table.shape[-1])
    return jnp.sum(jnp.where(hit, table[..., None, :], 0), -1).astype(table.dtype)


def _place(values: Array, rank: Array) -> Array:
    """out[..., rank[..., p]] = values[..., p] for a permutation rank: (..., k) -> (..., k)."""
    hit = rank[..., None, :] == jnp.arange(rank.shape[-1])[:, None]  # [q, p]
    return jnp.sum(jnp.where(hit, values[..., None, :], 0), -1).astype(values.dtype)


def _columns(a: Array, idx: tuple[int, ...]) -> Array:
    """a[:, idx] for static idx by slicing: (n, k, ...) -> (n, len(idx), ...)."""
    return jnp.stack([a[:, i] for i in idx], axis=1)


def _unit(bits: Array) -> Array:
    """uint32 random bits -> uniforms on (0, 1] (24-bit resolution), for `inverse_cdf`."""
    return 1.0 - (bits >> 8).astype(jnp.float32) * 2.0**-24


def _cut(bits: Array, widths: tuple[int, ...]) -> list[Array]:
    """Split random bits (n, Σ widths) into consecutive column blocks."""
    ends = np.cumsum((0, *widths))
    return [bits[:, a:b] for a, b in zip(ends[:-1], ends[1:], strict=True)]


def _log_falling(a: int, k: int) -> float:
    """log (a)_k = log a!/(a − k)!; −inf when k > a."""
    return math.lgamma(a + 1) - math.lgamma(a - k + 1) if 0 <= k <= a else -math.inf


@functools.cache
def _pattern_law(m: int, N: int, pairs: int) -> tuple[tuple[float, ...], float]:
    """Law of j = the number of even labels on the F = N − 2·pairs free slots when N slots get
    distinct labels from [m] uniformly, conditioned on each of `pairs` slot pairs having one
    even and one odd label; and log of the number of such labellings (float64).

    A pattern with k even slots carries (m_e)_k (m_o)_{N−k} labellings, and there are
    2^pairs · C(F, j) patterns with k = pairs + j."""
    me, mo, F = (m + 1) // 2, m // 2, N - 2 * pairs
    logs = np.array([
        math.lgamma(F + 1) - math.lgamma(j + 1) - math.lgamma(F - j + 1)
        + _log_falling(me, pairs + j) + _log_falling(mo, N - pairs - j)
        for j in range(F + 1)
    ])
    top = logs.max()
    w = np.exp(logs - top)
    return tuple((w / w.sum()).tolist()), float(pairs * math.log(2) + top + math.log(w.sum()))


class GraphClass(Task):
    """One class G of layered-DAG instances with its path rule π_D (all fields static).

    m: label range [0, m); L: intermediate layers; n_branch: branching layers (2 passable
    nodes, the others have 1); rule: "parity" (p(v) = p(i), Fig. 1's G₁), "antiparity"
    (p(v) = 1 ⊕ p(i), G₂), "global_parity" (p(v) = p(i) ⊕ ⊕_{u∈V_*} p(u), Fig. 2's G_{H,2}) or
    "uniform" over the valid paths; mixed_pairs (default: True unless rule is "uniform");
    feature: None, or the required ⊕_{u∈V′} p(u) ∈ {0, 1}; response, edge_order: see the
    module doc; edge_slots: E_max (default: the class's largest edge count)."""

    m: int = struct.field(pytree_node=False)
    L: int = struct.field(pytree_node=False)
    n_branch: int = struct.field(pytree_node=False)
    rule: str = struct.field(pytree_node=False)
    mixed_pairs: bool | None = struct.field(pytree_node=False, default=None)
    feature: int | None = struct.field(pytree_node=False, default=None)
    response: str = struct.field(pytree_node=False, default="nodes")
    edge_order: str = struct.field(pytree_node=False, default="shuffled")
    edge_slots: int | None = struct.field(pytree_node=False, default=None)

    def __post_init__(self):
        # all fields are static Python values: validate on every construction
        L = check_int("L", self.L, 1)
        m = check_int("m", self.m, 4 * L + 2)
        B = check_int("n_branch", self.n_branch, 0, L)
        for name, value, allowed in (("rule", self.rule, RULES),
                                     ("response", self.response, RESPONSES),
                                     ("edge_order", self.edge_order, EDGE_ORDERS)):
            if value not in allowed:
                raise ValueError(f"argument {name} must be one of {allowed}, got {value!r}")
        mixed = self.rule != "uniform" if self.mixed_pairs is None else self.mixed_pairs
        if not isinstance(mixed, bool | np.bool_):
            raise TypeError(f"argument mixed_pairs must be a bool or None, got {mixed!r}")
        if self.rule != "uniform" and B > 0 and not mixed:
            raise ValueError(f"argument mixed_pairs must be True for rule {self.rule!r}: a parity "
                             "rule needs one even and one odd passable node per branching layer")
        if self.feature is not None:
            check_int("feature", self.feature, 0, 1)
            if m % 2:
                raise ValueError(f"argument m must be even when feature is set (the parity flip "
                                 f"v ↦ v xor 1 must map [0, m) to itself), got {m}")
        natural = 4 * (L + B) + 1 if B < L else 4 * (L + B) - 2
        E = natural if self.edge_slots is None else check_int("edge_slots", self.edge_slots,
                                                               natural)
        for name, v in (("L", L), ("m", m), ("n_branch", B), ("mixed_pairs", bool(mixed)),
                        ("edge_slots", E)):
            object.__setattr__(self, name, v)
        if self.feature is not None:
            object.__setattr__(self, "feature", int(self.feature))

    # ---- sizes ----------------------------------------------------------------------
    @property
    def N(self) -> int:
        """Number of nodes 4L + 2."""
        return 4 * self.L + 2

    @property
    def V(self) -> int:
        return self.m

    @property
    def H(self) -> int:
        return self.L + 2 if self.response == "nodes" else 2 * (self.L + 1)

    @property
    def P(self) -> int:
        return 3 * self.edge_slots + 3

    @property
    def prompt_vocab(self) -> int:
        return self.m + 4

    @property
    def n_feature(self) -> int:
        """|V′| = 1 + 4⌊L/2⌋: s and the first ⌊L/2⌋ intermediate layers."""
        return 1 + 4 * (self.L // 2)

    @property
    def log_count(self) -> float:
        """log |A|: the number of labelled graphs of this class (float64)."""
        L, B = self.L, self.n_branch
        _, log_inj = _pattern_law(self.m, self.N, B if self.mixed_pairs else 0)
        # slot labellings / (orderings inside each layer: 1!3! or 2!2!) × branching sets
        log_c = math.lgamma(L + 1) - math.lgamma(B + 1) - math.lgamma(L - B + 1)
        out = log_c + log_inj - (L - B) * math.log(6) - B * math.log(4)
        return out - (math.log(2) if self.feature is not None else 0.0)

    @property
    def layer_of(self) -> tuple[int, ...]:
        """(H,) the layer (0 = s, …, L + 1 = t) of the node at each response position."""
        if self.response == "nodes":
            return tuple(range(self.L + 2))
        return tuple((h + 1) // 2 for h in range(self.H))

    @property
    def repeat(self) -> tuple[bool, ...]:
        """(H,) response positions that repeat the previous token (edge sources, "edges")."""
        return tuple(self.response == "edges" and h > 0 and h % 2 == 0 for h in range(self.H))

    @property
    def first_pos(self) -> tuple[int, ...]:
        """(L + 2,) the response position where layer i's node is written first."""
        lay = self.layer_of
        return tuple(lay.index(i) for i in range(self.L + 2))

    # ---- graphs ---------------------------------------------------------------------
    @property
    def _widths(self) -> tuple[int, ...]:
        """Random uint32 words per sample: branching set, j, slot ranks, pair coins, even and
        odd label permutations | edge order | path choices. One draw per `sample` call: each
        `jax.random` call adds seconds of XLA compilation on CPU."""
        me, mo = (self.m + 1) // 2, self.m // 2
        return (self.L, 1, self.N, self.L, me, mo, self.n_candidates, self.L)

    @property
    def n_candidates(self) -> int:
        """Candidate edges in `encode`: s → V², V^i × V^{i+1}, V^{L+1} → t, E_max spares."""
        return 8 + 16 * (self.L - 1) + self.edge_slots

    def spec(self, n: int = 1) -> dict[str, Array]:
        """The generator's parameters, one row per graph (a mixture picks its classes' rows):
        n_branch (n,), mixed (n,), feature (n,) (−1: none), cdf (n, N + 1) of j's law."""
        probs, _ = _pattern_law(self.m, self.N, self.n_branch if self.mixed_pairs else 0)
        p = np.zeros(self.N + 1)
        p[: len(probs)] = probs
        return dict(n_branch=jnp.full((n,), self.n_branch, jnp.int32),
                    mixed=jnp.full((n,), self.mixed_pairs),
                    feature=jnp.full((n,), -1 if self.feature is None else self.feature,
                                     jnp.int32),
                    cdf=jnp.broadcast_to(exact_cdf(jnp.asarray(p, jnp.float32)), (n, self.N + 1)))

    def sample_graphs(self, key: Array, n: int) -> Graph:
        """n graphs, uniform over the class's labelled graphs (module doc), canonical form."""
        bits = jax.random.bits(key, (n, sum(self._widths[:6])), jnp.uint32)
        return self._graphs(bits, self.spec(n))

    def _graphs(self, bits: Array, spec: dict[str, Array]) -> Graph:
        """`sample_graphs` from random bits (n, Σ _widths[:6]) and per-row `spec` (n, …)."""
        L = self.L
        n, me, mo = bits.shape[0], (self.m + 1) // 2, self.m // 2
        b_branch, b_j, b_rank, b_coin, b_even, b_odd = _cut(bits, self._widths[:6])
        branch = _ranks(b_branch) < spec["n_branch"][:, None]  # (n, L)
        q = jnp.arange(4)
        pair = branch[..., None] & (q < 2) & spec["mixed"][:, None, None]  # (n, L, 4)
        no = jnp.zeros((n, 1), bool)
        pair_f = jnp.concatenate([no, pair.reshape(n, 4 * L), no], axis=1)  # (n, N)
        j = inverse_cdf(_unit(b_j[:, 0]), spec["cdf"])
        # free slots rank first in random order: the first j of them are even
        rank = _ranks(b_rank >> 1 | (pair_f.astype(jnp.uint32) << 31))
        coin = (b_coin >> 31 == 1)[..., None]
        even_pair = jnp.concatenate([no, (coin == (q == 0)).reshape(n, 4 * L), no], axis=1)
        even = jnp.where(pair_f, even_pair, rank < j[:, None])
        re = jnp.clip(jnp.cumsum(even, axis=1) - 1, 0, me - 1)
        ro = jnp.clip(jnp.cumsum(~even, axis=1) - 1, 0, mo - 1)
        # labels given the pattern: uniform permutations of the evens and of the odds
        lab = jnp.where(even, 2 * _lookup(_ranks(b_even), re),
                        2 * _lookup(_ranks(b_odd), ro) + 1).astype(jnp.int32)
        X = jnp.sum(lab[:, : self.n_feature] % 2, axis=1) % 2
        flip = (spec["feature"] >= 0) & (X != spec["feature"])
        lab = lab ^ flip.astype(jnp.int32)[:, None]
        layers = lab[:, 1:-1].reshape(n, L, 4)
        passable = q < (1 + branch[..., None])
        order = _ranks(layers)
        return Graph(lab[:, 0], lab[:, -1], _place(layers, order), _place(passable, order))

    def encode(self, graphs: Graph, key: Array | None = None) -> Array:
        """Graphs -> prompts (n, P) int32; key draws the edge order when it is "shuffled"."""
        if self.edge_order == "shuffled" and key is None:
            raise ValueError("argument key is required when edge_order is 'shuffled'")
        bits = None
        if key is not None:
            n = np.shape(graphs[0])[0]
            bits = jax.random.bits(key, (n, self.n_candidates), jnp.uint32)
        return self._encode(graphs, bits)

    def _encode(self, graphs: Graph, bits: Array | None) -> Array:
        """`encode` with the edge order's random bits (n, n_candidates) given."""
        s, t, lay, ok = (jnp.asarray(a) for a in graphs)
        n, L, m, E = s.shape[0], self.L, self.m, self.edge_slots
        check_shape("graphs.layers", lay, (n, L, 4))
        src = [jnp.broadcast_to(s[:, None], (n, 4)),
               jnp.broadcast_to(lay[:, :-1, :, None], (n, L - 1, 4, 4)).reshape(n, -1),
               lay[:, -1]]
        dst = [lay[:, 0], jnp.broadcast_to(lay[:, 1:, None, :], (n, L - 1, 4, 4)).reshape(n, -1),
               jnp.broadcast_to(t[:, None], (n, 4))]
        val = [jnp.ones((n, 4), bool),
               jnp.broadcast_to(ok[:, :-1, :, None], (n, L - 1, 4, 4)).reshape(n, -1), ok[:, -1]]
        pad = jnp.zeros((n, E), jnp.int32)  # spare invalid candidates: E_max may exceed them
        src = jnp.concatenate([*src, pad], 1).astype(jnp.int32)
        dst = jnp.concatenate([*dst, pad], 1).astype(jnp.int32)
        val = jnp.concatenate([*val, pad.astype(bool)], 1)
        C = src.shape[1]
        if self.edge_order == "shuffled":
            rank = (bits >> 1).astype(jnp.int32)
        else:  # candidates are generated in (layer, source label, target label) order
            rank = jnp.broadcast_to(jnp.arange(C, dtype=jnp.int32), (n, C))
        # invalid candidates sort first; the last E slots hold every edge, right-aligned
        _, u, v, keep = jax.lax.sort((jnp.where(val, rank, -1), src, dst, val.astype(jnp.int32)),
                                     dimension=1, num_keys=1)
        u, v, keep = u[:, -E:], v[:, -E:], keep[:, -E:] == 1
        sep = jnp.where(jnp.arange(E) == E - 1, m + 1, m)
        rows = jnp.where(keep[..., None], jnp.stack([u, v, jnp.broadcast_to(sep, (n, E))], -1),
                         m + 3)
        tail = jnp.stack([s, t, jnp.full((n,), m + 2)], 1).astype(jnp.int32)
        return jnp.concatenate([rows.reshape(n, 3 * E), tail], axis=1).astype(jnp.int32)

    def decode_prompt(self, prompts: Array) -> Graph:
        """Prompts (n, P) -> canonical graphs, in jnp: layer i + 1 = the targets of the edges
        leaving layer i (from s), passable nodes = sources of edges."""
        x = jnp.asarray(prompts).astype(jnp.int32)
        check_shape("prompts", x, (None, self.P))
        n, m, E = x.shape[0], self.m, self.edge_slots
        rows = x[:, : 3 * E].reshape(n, E, 3)
        ok = ((rows[..., :2] >= 0) & (rows[..., :2] < m)).all(-1)  # (n, E) real edges
        U = (rows[..., 0, None] == jnp.arange(m)) & ok[..., None]  # (n, E, m) one-hot sources
        W = (rows[..., 1, None] == jnp.arange(m)) & ok[..., None]  # targets
        s, t = jnp.clip(x[:, -3], 0, m - 1), jnp.clip(x[:, -2], 0, m - 1)

        def next_layer(layer, _):  # nodes reached by the edges leaving `layer` (n, m)
            out = jnp.any(W & jnp.any(U & layer[:, None], -1)[..., None], 1)
            return out, out

        _, M = jax.lax.scan(next_layer, jnp.arange(m) == s[:, None], length=self.L)
        M = jnp.moveaxis(M, 0, 1)  # (n, L, m): membership of the intermediate layers
        q = jnp.cumsum(M, -1) - 1  # slot of each member: layers sorted by label
        sel = M[..., None, :] & (q[..., None, :] == jnp.arange(4)[:, None])  # (n, L, 4, m)
        layers = jnp.sum(jnp.where(sel, jnp.arange(m), 0), -1).astype(jnp.int32)
        passable = jnp.any(sel & jnp.any(U, 1)[:, None, None], -1)
        return Graph(s, t, layers, passable)

    def is_member(self, g: Graph) -> Array:
        """(n,) bool: the graph has this class's structure (branching count, mixed pairs, V′
        parity). The structure common to all classes is not re-checked."""
        k = jnp.sum(g.passable, -1)  # (n, L)
        ok = jnp.all((k == 1) | (k == 2), -1) & (jnp.sum(k == 2, -1) == self.n_branch)
        if self.mixed_pairs:
            odd = jnp.sum(g.passable & (g.layers % 2 == 1), -1)
            ok &= jnp.all((k != 2) | (odd == 1), -1)
        if self.feature is not None:
            Lf = self.L // 2
            X = (g.s + jnp.sum(g.layers[:, :Lf] % 2, (1, 2))) % 2
            ok &= X == self.feature
        return ok

    # ---- the rule -------------------------------------------------------------------
    def slot_law(self, g: Graph) -> Array:
        """(n, L, 4) float32: π_D's law of the node of each intermediate layer over its slots."""
        k = jnp.sum(g.passable, -1, keepdims=True)
        if self.rule == "uniform":
            return jnp.where(k > 0, g.passable / jnp.maximum(k, 1), 0.25).astype(jnp.float32)
        target = jnp.arange(self.L) % 2 ^ (self.rule == "antiparity")  # p(i) for i = a + 2
        if self.rule == "global_parity":
            X = jnp.sum(g.passable & (g.layers % 2 == 1), (1, 2)) % 2
            target = target ^ X[:, None]
        want = g.passable & ((k == 1) | (g.layers % 2 == target[..., None]))
        # never empty: fall back to the passable nodes, then to the whole layer
        want = jnp.where(jnp.any(want, -1, keepdims=True), want, g.passable)
        want = jnp.where(jnp.any(want, -1, keepdims=True), want, True)
        return jax.nn.one_hot(jnp.argmax(want, -1), 4, dtype=jnp.float32)

    def labels(self, g: Graph) -> Array:
        """(n, L + 2, 4) int32: the nodes of every layer s, V², …, t (s and t repeated)."""
        ends = [jnp.broadcast_to(v[:, None, None], (v.shape[0], 1, 4)) for v in (g.s, g.t)]
        return jnp.concatenate([ends[0], g.layers, ends[1]], 1).astype(jnp.int32)

    def layer_probs(self, g: Graph) -> Array:
        """(n, L + 2, 4) float32: π_D's law of each layer's node over `labels`' slots."""
        point = jnp.broadcast_to(jnp.asarray([1.0, 0, 0, 0], jnp.float32), (g.s.shape[0], 1, 4))
        return jnp.concatenate([point, self.slot_law(g), point], 1)

    def _prev(self, responses: Array) -> Array:
        y = responses.astype(jnp.int32)
        return jnp.concatenate([jnp.zeros_like(y[:, :1]), y[:, :-1]], 1)

    def _token_p(self, lab: Array, pr: Array, responses: Array) -> Array:
        """π_c(y_h | x, y_{<h}) for K stacked laws pr (n, K, L+2, 4): (n, K, H)."""
        y = responses.astype(jnp.int32)
        path = self.to_path(y)  # every node is scored where it is first written
        P = jnp.sum(jnp.where(lab[:, None] == path[:, None, :, None], pr, 0.0), -1)
        p = jnp.stack([P[..., i] for i in self.layer_of], -1)
        if any(self.repeat):  # an edge's source repeats the previous target
            p = jnp.where(jnp.asarray(self.repeat), (y == self._prev(y))[:, None], p)
        return p.astype(jnp.float32)

    def _next_p(self, lab: Array, pr: Array, responses: Array) -> Array:
        """π_c(· | x, y_{<h}) for K stacked laws pr (n, K, L+2, 4): (n, K, H, V)."""
        hit = (_columns(lab, self.layer_of)[..., None] == jnp.arange(self.V))  # (n, H, 4, V)
        pr_h = jnp.stack([pr[:, :, i] for i in self.layer_of], 2)  # (n, K, H, 4)
        p = jnp.einsum("nkhq,nhqv->nkhv", pr_h, hit.astype(jnp.float32))  # ≤ 1 term ≠ 0
        if any(self.repeat):
            rep = jnp.asarray(self.repeat)[:, None]
            p = jnp.where(rep, jax.nn.one_hot(self._prev(responses), self.V)[:, None], p)
        return p

    def graph_next_token_log_probs(self, g: Graph, responses: Array) -> Array:
        """`next_token_log_probs` given decoded graphs: (n, H, V)."""
        return jnp.log(self._next_p(self.labels(g), self.layer_probs(g)[:, None], responses)[:, 0])

    def graph_token_log_probs(self, g: Graph, responses: Array) -> Array:
        """`token_log_probs` given decoded graphs: (n, H)."""
        return jnp.log(self._token_p(self.labels(g), self.layer_probs(g)[:, None], responses)[:, 0])

    # ---- paths ----------------------------------------------------------------------
    def to_response(self, paths: Array) -> Array:
        """Node paths (..., L + 2) -> responses (..., H) in this class's format."""
        p = jnp.asarray(paths).astype(jnp.int32)
        return jnp.stack([p[..., i] for i in self.layer_of], axis=-1)

    def to_path(self, responses: Array) -> Array:
        """Responses (..., H) -> node paths (..., L + 2) (first writing of each layer)."""
        y = jnp.asarray(responses).astype(jnp.int32)
        return jnp.stack([y[..., h] for h in self.first_pos], axis=-1)

    def rule_paths(self, g: Graph, key: Array | None = None) -> Array:
        """(n, L + 2): π_D's path (deterministic rules) or a draw from it (needs key then)."""
        if self.rule == "uniform" and key is None:
            raise ValueError("argument key is required for rule 'uniform'")
        bits = None if key is None else jax.random.bits(key, (g.s.shape[0], self.L), jnp.uint32)
        return self._rule_paths(g, bits)

    def _rule_paths(self, g: Graph, bits: Array | None) -> Array:
        """`rule_paths` with the random bits (n, L) of the draws given."""
        law = self.slot_law(g)
        if self.rule == "uniform":
            slot = inverse_cdf(_unit(bits), exact_cdf(law))
        else:
            slot = jnp.argmax(law, -1)
        mid = _lookup(g.layers, slot[..., None])[..., 0]
        return jnp.concatenate([g.s[:, None], mid, g.t[:, None]], 1).astype(jnp.int32)

    def graph_valid_paths(self, g: Graph, max_branch: int | None = None) -> tuple[Array, Array]:
        """Every valid path of graphs with ≤ max_branch (default n_branch) branching layers
        and 1 or 2 passable nodes per layer: ((n, 2^max_branch, L + 2), mask (n, 2^max_branch)).
        Code c picks, at the r-th branching layer, passable node number bit r of c."""
        B = self.n_branch if max_branch is None else check_int("max_branch", max_branch, 0,
                                                               self.L)
        k = jnp.sum(g.passable, -1)  # (n, L)
        r = jnp.cumsum(k == 2, -1) - 1  # index of each branching layer
        c = jnp.arange(2**B)[None, :, None]  # (1, G, 1)
        bit = jnp.where((k == 2)[:, None], (c >> jnp.maximum(r, 0)[:, None]) & 1, 0)  # (n, G, L)
        rank = jnp.cumsum(g.passable, -1) - 1  # (n, L, 4) rank among the passable nodes
        pick = g.passable[:, None] & (rank[:, None] == bit[..., None])  # (n, G, L, 4)
        mid = jnp.sum(jnp.where(pick, g.layers[:, None], 0), -1)
        n, G = k.shape[0], 2**B
        ends = (jnp.broadcast_to(g.s[:, None, None], (n, G, 1)),
                jnp.broadcast_to(g.t[:, None, None], (n, G, 1)))
        paths = jnp.concatenate([ends[0], mid, ends[1]], -1).astype(jnp.int32)
        nb = jnp.sum(k == 2, -1)
        fine = jnp.all((k == 1) | (k == 2), -1) & (nb <= B)
        return paths, fine[:, None] & (c[..., 0] < jnp.left_shift(1, jnp.minimum(nb, B))[:, None])

    def valid_paths(self, prompts: Array, max_branch: int | None = None) -> tuple[Array, Array]:
        """`graph_valid_paths` of the prompts' graphs: ((n, G, L + 2), (n, G)) node paths."""
        if max_branch is not None:
            check_int("max_branch", max_branch, 0, self.L)
        return self.graph_valid_paths(self.decode_prompt(prompts), max_branch)

    def graph_is_valid(self, g: Graph, responses: Array) -> Array:
        """(n,) bool: the response writes a valid path (and repeats edge sources correctly)."""
        y = jnp.asarray(responses).astype(jnp.int32)
        p = self.to_path(y)
        mid = jnp.any((g.layers == p[:, 1:-1, None]) & g.passable, -1)
        ok = (p[:, 0] == g.s) & (p[:, -1] == g.t) & jnp.all(mid, -1)
        if any(self.repeat):
            ok &= jnp.all(jnp.where(jnp.asarray(self.repeat), y == self._prev(y), True), -1)
        return ok

    def graph_reward(self, g: Graph, responses: Array) -> Array:
        """(n,) bool verifier given decoded graphs: y is π_D's path (deterministic rules) or
        any valid path ("uniform")."""
        if self.rule == "uniform":
            return self.graph_is_valid(g, responses)
        return jnp.all(self.to_response(self.rule_paths(g)) == responses, -1)

    def graph_good_set(self, g: Graph) -> tuple[Array, Array]:
        """Verifier-accepted responses ((n, G, H), mask (n, G)): π_D's path (G = 1) for
        deterministic rules, every valid path (G = 2^n_branch) for "uniform"."""
        if self.rule == "uniform":
            paths, mask = self.graph_valid_paths(g)
            return self.to_response(paths), mask
        ys = self.to_response(self.rule_paths(g))[:, None]
        return ys, jnp.ones(ys.shape[:2], bool)

    # ---- Task API -------------------------------------------------------------------
    def sample(self, key: Array, n: int) -> tuple[Array, Array]:
        """((n, P), (n, H)) int32: graphs of the class, their prompts, y ~ π_D(·|x)."""
        return self._sample(jax.random.bits(key, (n, sum(self._widths)), jnp.uint32))

    def _sample(self, bits: Array) -> tuple[Array, Array]:
        """`sample` from random bits (n, Σ _widths)."""
        *graph, b_edges, b_path = _cut(bits, self._widths)
        spec = self.spec(bits.shape[0])
        g = self._graphs(jnp.concatenate(graph, axis=1), spec)
        return self._encode(g, b_edges), self.to_response(self._rule_paths(g, b_path))

    def next_token_log_probs(self, prompts: Array, responses: Array) -> Array:
        """(n, H, V): the rule's law of each layer's node (module doc), teacher-forced."""
        self.check_batch(prompts, responses)
        return self.graph_next_token_log_probs(self.decode_prompt(prompts), responses)

    def token_log_probs(self, prompts: Array, responses: Array) -> Array:
        self.check_batch(prompts, responses)
        return self.graph_token_log_probs(self.decode_prompt(prompts), responses)

    def reward(self, prompts: Array, responses: Array) -> Array:
        """(n,) float32 verifier: y is π_D's path (deterministic rules) or any valid path."""
        self.check_batch(prompts, responses)
        return self.graph_reward(self.decode_prompt(prompts), responses).astype(jnp.float32)

    def good_set(self, prompts: Array) -> tuple[Array, Array]:
        """((n, G, H), (n, G)): the responses `reward` accepts (for exact Pass@N)."""
        return self.graph_good_set(self.decode_prompt(prompts))

    # ---- text -----------------------------------------------------------------------
    def detokenize(self, tokens) -> str | list[str]:
        """Tokens (T,) -> text such as "10 23 | 86 47 / 10 45 =" (PAD dropped); (n, T) -> list."""
        a = np.asarray(tokens)
        if a.ndim == 2:
            return [self.detokenize(row) for row in a]
        check_shape("tokens", a, (None,))
        if np.any((a < 0) | (a >= self.prompt_vocab)):
            raise ValueError(f"argument tokens must lie in [0, {self.prompt_vocab}), got "
                             f"{a[(a < 0) | (a >= self.prompt_vocab)][:5].tolist()}")
        words = [str(v) if v < self.m else SEPARATORS[v - self.m] for v in a.tolist()]
        return " ".join(w for w in words if w != "PAD")

    def tokenize(self, text: str) -> np.ndarray:
        """Inverse of `detokenize`: a prompt (text ending in "=") -> (P,) int32, left-padded;
        a response -> (H,) int32."""
        words = str(text).split()
        toks = []
        for w in words:
            if w in SEPARATORS[:3]:
                toks.append(self.m + SEPARATORS.index(w))
            elif w.isdigit() and int(w) < self.m:
                toks.append(int(w))
            else:
                raise ValueError(f"argument text has token {w!r}; allowed: labels 0..{self.m - 1}"
                                 f" and {' '.join(SEPARATORS[:3])}")
        if words and words[-1] == "=":
            if len(toks) > self.P or (self.P - len(toks)) % 3:
                raise ValueError(f"argument text must hold at most {self.edge_slots} edges, got "
                                 f"{len(toks)} tokens")
            toks = [self.m + 3] * (self.P - len(toks)) + toks
        elif len(toks) != self.H:
            raise ValueError(f"argument text must be a prompt ending in '=' or a response of "
                             f"{self.H} labels, got {len(toks)} tokens")
        return np.asarray(toks, np.int32)


def _shared(name: str) -> property:
    """A GraphMixture attribute read from its first class (all classes share it)."""
    return property(lambda self: getattr(self.components[0], name),
                    doc=f"components[0].{name} (shared by every class)")


class GraphMixture(Task):
    """Classes mixed with weights, prompts in the paper's format (no class token).

    µ(x) = Σ_c w_c µ_c(x) with µ_c uniform on A_c, so P(c | x) ∝ w_c 1[x ∈ A_c] / |A_c| and
    π_D(y | x) = Σ_c P(c | x) π_c(y | x) (exact; see the module doc). The verifier accepts y
    when some class with P(c | x) > 0 accepts it. All classes must share m, L, response and
    edge_order; they are padded to one E_max. Leaves: components, weights (K,) float32.
    (`covsim.tasks.mixture.Mixture` also accepts these classes: it prepends a class token.)"""

    components: tuple
    weights: Array

    def __post_init__(self):
        comps = checked_components(self.components, GraphClass,
                                   ("m", "L", "response", "edge_order"))
        E = max(c.edge_slots for c in comps)
        object.__setattr__(self, "components",
                           tuple(c if c.edge_slots == E else c.replace(edge_slots=E)
                                 for c in comps))
        object.__setattr__(self, "weights", checked_weights(self.weights, len(comps)))

    # ---- sizes ----------------------------------------------------------------------
    @property
    def K(self) -> int:
        return len(self.components)

    @property
    def first(self) -> GraphClass:
        """components[0], whose format (sizes, tokenizer, decoder) every class shares."""
        return self.components[0]

    # the format every class shares (sizes, response layout, tokenizer, decoder)
    V = _shared("V")
    H = _shared("H")
    P = _shared("P")
    prompt_vocab = _shared("prompt_vocab")
    m = _shared("m")
    L = _shared("L")
    response = _shared("response")
    edge_order = _shared("edge_order")
    edge_slots = _shared("edge_slots")
    layer_of = _shared("layer_of")
    first_pos = _shared("first_pos")

    def decode_prompt(self, prompts: Array) -> Graph:
        return self.first.decode_prompt(prompts)

    def valid_paths(self, prompts: Array, max_branch: int | None = None) -> tuple[Array, Array]:
        """`GraphClass.valid_paths`; max_branch defaults to the classes' largest n_branch."""
        B = max(c.n_branch for c in self.components) if max_branch is None else max_branch
        return self.first.valid_paths(prompts, B)

    def to_response(self, paths: Array) -> Array:
        return self.first.to_response(paths)

    def to_path(self, responses: Array) -> Array:
        return self.first.to_path(responses)

    def detokenize(self, tokens) -> str | list[str]:
        return self.first.detokenize(tokens)

    def tokenize(self, text: str) -> np.ndarray:
        return self.first.tokenize(text)

    @property
    def rel_log_count(self) -> tuple[float, ...]:
        """log |A_c| − min_c log |A_c| (float64, so that float32 keeps the ratios exact)."""
        lc = [c.log_count for c in self.components]
        return tuple(v - min(lc) for v in lc)

    # ---- posterior ------------------------------------------------------------------
    def class_log_posterior(self, g: Graph) -> Array:
        """(n, K): log P(c | x); the prior log w where no class of positive weight contains
        the graph (prompts µ never draws)."""
        member = jnp.stack([c.is_member(g) for c in self.components], 1)
        log_w = jnp.log(self.weights)
        logit = jnp.where(member, log_w - jnp.asarray(self.rel_log_count, jnp.float32), -jnp.inf)
        logit = jnp.where(jnp.any(logit > -jnp.inf, 1, keepdims=True), logit, log_w)
        return jax.nn.log_softmax(logit, axis=1)

    def _laws(self, g: Graph) -> tuple[Array, Array]:
        """Layer labels (n, L+2, 4) and every class's layer laws stacked (n, K, L+2, 4)."""
        return self.first.labels(g), jnp.stack([c.layer_probs(g) for c in self.components], 1)

    def _prefix_posterior(self, g: Graph, lab: Array, pr: Array, responses: Array) -> Array:
        """P(c | x, y_{<h}): (n, K, H)."""
        tok = jnp.log(self.first._token_p(lab, pr, responses))
        # exclusive prefix sums Σ_{h' < h}: adding −inf keeps −inf, never NaN
        pre = jnp.concatenate([jnp.zeros_like(tok[..., :1]), jnp.cumsum(tok, -1)[..., :-1]], -1)
        prior = self.class_log_posterior(g)[..., None]
        logit = prior + pre
        logit = jnp.where(jnp.any(logit > -jnp.inf, 1, keepdims=True), logit, prior)
        return jax.nn.softmax(logit, axis=1)

    # ---- Task API -------------------------------------------------------------------
    def sample(self, key: Array, n: int) -> tuple[Array, Array]:
        """((n, P), (n, H)): class by inverse CDF on the weights, then its graph and path."""
        c0 = self.first
        bits = jax.random.bits(key, (n, 1 + sum(c0._widths)), jnp.uint32)
        b_id, *graph, b_edges, b_path = _cut(bits, (1, *c0._widths))
        cid = inverse_cdf(_unit(b_id[:, 0]), exact_cdf(self.weights))
        # one generator for all rows, each with its class's parameters
        def pick(*per_class):  # row i of per_class[cid[i]]
            out = per_class[0]
            for c in range(1, self.K):
                hit = (cid == c).reshape((-1,) + (1,) * (out.ndim - 1))
                out = jnp.where(hit, per_class[c], out)
            return out

        spec = jax.tree.map(pick, *[c.spec(n) for c in self.components])
        g = c0._graphs(jnp.concatenate(graph, axis=1), spec)
        paths = pick(*[c._rule_paths(g, b_path) for c in self.components])
        return c0._encode(g, b_edges), self.to_response(paths)

    def next_token_log_probs(self, prompts: Array, responses: Array) -> Array:
        """(n, H, V): Σ_c P(c | x, y_{<h}) π_c(· | x, y_{<h})."""
        self.check_batch(prompts, responses)
        g = self.decode_prompt(prompts)
        lab, pr = self._laws(g)
        post = self._prefix_posterior(g, lab, pr, responses)
        p = self.first._next_p(lab, pr, responses)  # (n, K, H, V)
        return jnp.log(jnp.sum(post[..., None] * p, axis=1))

    def token_log_probs(self, prompts: Array, responses: Array) -> Array:
        self.check_batch(prompts, responses)
        g = self.decode_prompt(prompts)
        lab, pr = self._laws(g)
        post = self._prefix_posterior(g, lab, pr, responses)
        return jnp.log(jnp.sum(post * self.first._token_p(lab, pr, responses), axis=1))

    def reward(self, prompts: Array, responses: Array) -> Array:
        """(n,) float32: 1 when a class with P(c | x) > 0 accepts y (its own verifier)."""
        self.check_batch(prompts, responses)
        g = self.decode_prompt(prompts)
        live = self.class_log_posterior(g) > -jnp.inf
        acc = jnp.stack([c.graph_reward(g, responses) for c in self.components], 1)
        return jnp.any(live & acc, 1).astype(jnp.float32)

    def good_set(self, prompts: Array) -> tuple[Array, Array]:
        """The union of the live classes' good sets, duplicates masked: ((n, G, H), (n, G))."""
        g = self.decode_prompt(prompts)
        live = self.class_log_posterior(g) > -jnp.inf
        sets = [c.graph_good_set(g) for c in self.components]
        ys = jnp.concatenate([s[0] for s in sets], 1)
        mask = jnp.concatenate([s[1] & live[:, i, None] for i, s in enumerate(sets)], 1)
        G = ys.shape[1]
        same = jnp.all(ys[:, :, None] == ys[:, None], -1)  # (n, G, G)
        earlier = jnp.arange(G)[None, :] < jnp.arange(G)[:, None]  # [j, j'] = j' < j
        dup = jnp.any(same & earlier & mask[:, None, :], -1)
        return ys, mask & ~dup


# ---- the paper's classes ----------------------------------------------------------------
def figure2_classes(L: int, m: int = 100, **fmt) -> tuple[GraphClass, GraphClass, GraphClass]:
    """G_{H,1}, G_{H,2}, G_{H,3} with H = L intermediate layers (L even, ≥ 4): unique path;
    L/2 branching layers with the global parity rule; 4 branching layers, uniform rule.
    fmt: response, edge_order."""
    L = check_int("L", L, 4)
    if L % 2:
        raise ValueError(f"argument L must be even (G_(H,2) branches in L/2 layers), got {L}")
    return (GraphClass(m=m, L=L, n_branch=0, rule="parity", **fmt),
            GraphClass(m=m, L=L, n_branch=L // 2, rule="global_parity", **fmt),
            GraphClass(m=m, L=L, n_branch=4, rule="uniform", **fmt))


def figure2_task(L: int, m: int = 100, weights=FIG2_WEIGHTS, **fmt) -> GraphMixture:
    """Fig. 2's mixture µ̃ = (0.94, 0.05, 0.01) of `figure2_classes`."""
    return GraphMixture(figure2_classes(L, m, **fmt), weights)


def figure1_classes(L: int = 8, m: int = 100, **fmt) -> tuple[GraphClass, GraphClass, GraphClass]:
    """Fig. 1's G₁ (p(v) = p(i), ⊕_{V′} p = 1), G₂ (p(v) = 1 ⊕ p(i), ⊕_{V′} p = 0) and G₃
    (uniform over the 4 valid paths); 2 branching layers with one even, one odd label."""
    L = check_int("L", L, 2)
    return (GraphClass(m=m, L=L, n_branch=2, rule="parity", feature=1, **fmt),
            GraphClass(m=m, L=L, n_branch=2, rule="antiparity", feature=0, **fmt),
            GraphClass(m=m, L=L, n_branch=2, rule="uniform", mixed_pairs=True, **fmt))


def figure1_finetune_task(L: int = 8, m: int = 100, weights=FIG1_FINETUNE_WEIGHTS,
                          **fmt) -> GraphMixture:
    """Fig. 1's fine-tuning distribution: G₁, G₂ with weights (0.9, 0.1)."""
    return GraphMixture(figure1_classes(L, m, **fmt)[:2], weights)


def figure1_pretrain_task(L: int = 8, m: int = 100, weights=FIG1_PRETRAIN_WEIGHTS,
                          **fmt) -> GraphMixture:
    """Fig. 1's pre-training distribution: G₁, G₂, G₃ with weight 1/3 each."""
    return GraphMixture(figure1_classes(L, m, **fmt), weights)
