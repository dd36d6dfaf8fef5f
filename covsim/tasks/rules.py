"""Fig. 1's mechanism without the graphs: two deterministic rules behind a class the learner
cannot read (the `fig1_mechanism` claim; arXiv 2510.15020v2, Fig. 1 and App. C).

In Fig. 1 a prompt is a layered graph with two branching layers (two passable nodes each);
G₁'s π_D takes the node whose parity matches the layer's, G₂'s the other one, G₃ (pre-training
only) is uniform over the 4 valid paths, and the class shows only through a parity feature
that the transformer does not learn. `HiddenRules` keeps exactly that structure and drops what
makes it expensive (reading edge lists, following the non-branching layers):

    prompt    x = (g, c)        g ∈ [graphs] the "graph", c ∈ [K] its class (0: G₁, 1: G₂, 2: G₃)
    response  y = (y_1..y_H)    one node per branching layer, y_h ∈ [nodes] (V = nodes)

Graph g fixes, in every layer h, two passable nodes `passable[g, h] = (rule-1 node, rule-2
node)` out of `nodes` (the others are dead ends): class 0 writes the rule-1 node of every
layer, class 1 the rule-2 node, class 2 a uniform passable node per layer (uniform over the
2^H valid paths). π_D ignores the prefix, as the graph rules do. A learner that reads only
the graph id (`Tabular(prompt_positions=(0,))`) is blind to the class, as Fig. 1's transformer
is blind to the parity feature; everything it can learn from data is the class mixture.

Exact facts used by the claim (all classes share the graphs, so P(c | g) = w_c):
* a converged class-blind model of the pre-training mixture (w₁, w₂, w₃) puts
  w_c + w₃/2^H on class c's rule path; with Fig. 1's (⅓, ⅓, ⅓) and H = 2 that is 5/12, so it
  starts fine-tuning on (0.9, 0.1) at KL = log(12/5) ≈ 0.875 (`blind_start_kl`), as a
  converged class-blind pre-trained transformer does on the graphs;
* the class-blind optimum of fine-tuning puts (0.9, 0.1) on the two rule paths: Cov_N → 0.1
  for 1/0.9 < N ≤ 10, KL → h(0.9) = 0.325.

`graph_zipf` > 0 draws the graph from a Zipf law (weight ∝ rank^−s) instead of uniformly: a
pre-training corpus in which some graphs are rare, so that the pre-trained model is converged
on most fine-tuning prompts and not on all of them.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from covsim.checks import check_float, check_int
from covsim.tasks.base import Array, Task, open_uniform
from covsim.tasks.mixture import checked_weights

#: Fig. 1's class weights: fine-tuning (G₁, G₂) and pre-training (G₁, G₂, G₃).
FINETUNE_WEIGHTS = (0.9, 0.1)
PRETRAIN_WEIGHTS = (1 / 3, 1 / 3, 1 / 3)


class HiddenRules(Task):
    """π_D over (g, c) prompts and one node per branching layer (module docstring).

    passable (G, H, 2) int32: per graph and layer, the (rule-1, rule-2) passable nodes.
    log_graph_weights (G,): log µ(g). log_class_weights (K,): log w_c, K = 2 or 3.
    """

    passable: Array
    log_graph_weights: Array
    log_class_weights: Array
    V: int = struct.field(pytree_node=False, default=4)
    H: int = struct.field(pytree_node=False, default=2)
    P: int = struct.field(pytree_node=False, default=2)
    prompt_vocab: int = struct.field(pytree_node=False, default=1)

    @property
    def G(self) -> int:
        return int(self.passable.shape[0])

    @property
    def K(self) -> int:
        return int(self.log_class_weights.shape[0])

    def sample(self, key: Array, n: int) -> tuple[Array, Array]:
        kg, kc, ku = jax.random.split(key, 3)
        g = jax.random.categorical(kg, self.log_graph_weights, shape=(n,)).astype(jnp.int32)
        c = jax.random.categorical(kc, self.log_class_weights, shape=(n,)).astype(jnp.int32)
        # which passable node of each layer: the class's rule, or a fair coin for class 2
        coin = (open_uniform(ku, (n, self.H)) <= 0.5).astype(jnp.int32)
        side = jnp.where(c[:, None] == 2, coin, jnp.minimum(c, 1)[:, None])
        y = jnp.take_along_axis(self.passable[g], side[..., None], axis=-1)[..., 0]
        return jnp.stack([g, c], axis=1), y.astype(jnp.int32)

    def next_token_log_probs(self, prompts: Array, responses: Array) -> Array:
        g, c = prompts[:, 0], prompts[:, 1]
        nodes = self.passable[g]  # (n, H, 2)
        hit = nodes[..., None] == jnp.arange(self.V)  # (n, H, 2, V)
        # class c < 2: all mass on its rule node; class 2: half on each passable node
        share = jnp.where(c[:, None] == 2, 0.5, (jnp.arange(2) == c[:, None]) * 1.0)  # (n, 2)
        p = jnp.sum(hit * share[:, None, :, None], axis=2)  # (n, H, V)
        del responses  # the rules ignore the prefix
        return jnp.log(p)

    def prompt_support(self) -> tuple[Array, Array]:
        g, c = jnp.meshgrid(jnp.arange(self.G), jnp.arange(self.K), indexing="ij")
        xs = jnp.stack([g.ravel(), c.ravel()], axis=1).astype(jnp.int32)
        return xs, (self.log_graph_weights[:, None] + self.log_class_weights[None, :]).ravel()

    def good_set(self, prompts: Array) -> tuple[Array, Array]:
        """Every valid path of the prompt's graph, ((n, 2^H, H), mask (n, 2^H)): class c < 2
        accepts only its rule path (Pass@N = sampling π_D's path, as in Fig. 1), class 2 any
        valid path."""
        g, c = prompts[:, 0], prompts[:, 1]
        bits = jnp.asarray(
            (np.arange(2**self.H)[:, None] >> np.arange(self.H)[::-1]) & 1, jnp.int32
        )  # (2^H, H): which passable node per layer
        nodes = self.passable[g]  # (n, H, 2)
        ys = jnp.take_along_axis(nodes[:, None], bits[None, ..., None], axis=-1)[..., 0]
        rule = jnp.all(bits[None] == jnp.minimum(c, 1)[:, None, None], axis=-1)
        return ys.astype(jnp.int32), (c[:, None] == 2) | rule

    def reward(self, prompts: Array, responses: Array) -> Array:
        ys, mask = self.good_set(prompts)
        same = jnp.all(ys == responses[:, None, :], axis=-1)
        return jnp.any(same & mask, axis=-1).astype(jnp.float32)


def hidden_rules_task(
    key: Array,
    graphs: int = 256,
    layers: int = 2,
    nodes: int = 4,
    weights=FINETUNE_WEIGHTS,
    graph_zipf: float = 0.0,
) -> HiddenRules:
    """`graphs` graphs with `layers` branching layers of `nodes` nodes; the passable nodes of
    each (graph, layer) and which of them is rule 1 are drawn from `key` alone, so a
    pre-training and a fine-tuning task built from the same key share their graphs.
    weights: the class law (G₁, G₂) or (G₁, G₂, G₃); graph_zipf: the exponent s of the graph
    law ∝ rank^−s (0: uniform)."""
    G = check_int("graphs", graphs, 1)
    H = check_int("layers", layers, 1)
    V = check_int("nodes", nodes, 2)
    s = check_float("graph_zipf", graph_zipf, 0.0)
    if H > 16:
        raise ValueError(f"argument layers must be at most 16 (2^layers valid paths), got {H}")
    if np.ndim(weights) != 1 or len(weights) not in (2, 3):
        raise ValueError(f"argument weights must have 2 (G1, G2) or 3 (G1, G2, G3) entries, "
                         f"got {weights!r}")
    w = checked_weights(weights, len(weights))
    # per (graph, layer): a uniform ordered pair of distinct nodes = (rule-1, rule-2)
    u = jax.random.uniform(key, (G, H, V))
    passable = jnp.argsort(u, axis=-1)[..., :2].astype(jnp.int32)
    rank = np.arange(1, G + 1, dtype=np.float64)
    lw = -s * np.log(rank)
    lw -= np.logaddexp.reduce(lw)
    with np.errstate(divide="ignore"):
        lc = np.log(np.asarray(w, np.float64))
    return HiddenRules(
        passable=passable,
        log_graph_weights=jnp.asarray(lw, jnp.float32),
        log_class_weights=jnp.asarray(lc, jnp.float32),
        V=V, H=H, P=2, prompt_vocab=max(G, 3),
    )


def blind_start_kl(pretrain_weights=PRETRAIN_WEIGHTS, finetune_weights=FINETUNE_WEIGHTS,
                   layers: int = 2) -> float:
    """KL(π_D^ft ‖ π̂) of the converged class-blind model of the pre-training mixture: it puts
    w_c + w₃/2^layers on class c's rule path (w₃ = 0 without G₃), so the KL is
    −Σ_c v_c log(w_c + w₃/2^layers) over the fine-tuning weights v. Fig. 1's weights: log(12/5).
    The same value holds for the graph task (`covsim.tasks.graph`), whose G₃ shares G₁'s and
    G₂'s graphs (P(c | x) = ⅓ for a model blind to the parity feature)."""
    w = [float(x) for x in pretrain_weights]
    w3 = w[2] if len(w) == 3 else 0.0
    tot = w[0] + w[1] + w3
    return -sum(v * math.log((w[c] + w3 / 2**layers) / tot)
                for c, v in enumerate(finetune_weights))


def finetune_task(key: Array, graphs: int = 256, layers: int = 2, nodes: int = 4,
                  graph_zipf: float = 0.0, weights=FINETUNE_WEIGHTS) -> HiddenRules:
    """Fig. 1's fine-tuning law on `hidden_rules_task`'s graphs: (G₁, G₂) = (0.9, 0.1),
    graphs uniform by default."""
    return hidden_rules_task(key, graphs, layers, nodes, weights, graph_zipf)


def pretrain_task(key: Array, graphs: int = 256, layers: int = 2, nodes: int = 4,
                  graph_zipf: float = 1.0, weights=PRETRAIN_WEIGHTS) -> HiddenRules:
    """Fig. 1's pre-training law on the same graphs: (G₁, G₂, G₃) = (⅓, ⅓, ⅓), graphs drawn
    from a Zipf law (s = 1 by default: a corpus in which some graphs are rare)."""
    return hidden_rules_task(key, graphs, layers, nodes, weights, graph_zipf)


def blind_optimum_kl(finetune_weights=FINETUNE_WEIGHTS) -> float:
    """The least fine-tuning KL a class-blind model can reach: it puts v_c on class c's rule
    path, so the KL is the entropy −Σ_c v_c log v_c (h(0.9) = 0.325 for Fig. 1). A lower KL
    means the learner reads the class."""
    return -sum(v * math.log(v) for v in finetune_weights if v > 0)
