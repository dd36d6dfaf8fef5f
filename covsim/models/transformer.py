"""GPT-2-style causal decoder (App. C: causal, absolute positions, GeLU, pre-LayerNorm).

Input sequence of length T = P + H:

    [x_0 .. x_{P-1}, SEP, y_0 .. y_{H-2}]

with one embedding table over max(V, prompt_vocab) + 1 symbols (the last one is SEP). The
outputs at the last H positions predict y_0 .. y_{H-1}, so the loss sees response tokens only.
Names: n batch, T sequence, C width, K heads, D = C / K head size, V response vocabulary.

precision = "bf16" runs every matmul (q/k/v, attention scores and weighted sum, projections,
MLP, head) and the matmuls of its gradient on bfloat16 inputs with float32 accumulation
(`preferred_element_type`); the parameters and their gradients, the residual stream,
LayerNorm, softmax and the returned log-probs stay float32, so the metrics computed from
them are float32 too. "float32" (the default) is exact float32.
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx

from covsim.checks import check_float, check_int

Array = jax.Array

_init = nnx.initializers.normal(0.02)  # GPT-2's initialisation
PRECISIONS = {"float32": None, "bf16": jnp.bfloat16}  # name -> matmul input dtype


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _bf16_einsum(spec: str, a: Array, b: Array) -> Array:
    """jnp.einsum(spec, a, b) on bfloat16 inputs, accumulated in and returned as float32.
    Its gradients are einsums of the same kind (the incoming gradient cast to bfloat16):
    JAX's own transpose would multiply a float32 gradient by a bfloat16 operand, which XLA
    runs in float32. Every index of one operand must appear in the other or in the output
    (no index summed within one operand), so each gradient is a two-operand einsum."""
    return jnp.einsum(spec, a.astype(jnp.bfloat16), b.astype(jnp.bfloat16),
                      preferred_element_type=jnp.float32)


def _bf16_einsum_fwd(spec: str, a: Array, b: Array):
    a16, b16 = a.astype(jnp.bfloat16), b.astype(jnp.bfloat16)  # kept in bf16: half the bytes
    return jnp.einsum(spec, a16, b16, preferred_element_type=jnp.float32), (a16, b16)


def _bf16_einsum_bwd(spec: str, res, g: Array):
    a16, b16 = res
    (A, B), C = spec.split("->")[0].split(","), spec.split("->")[1]
    if not (set(A) <= set(B) | set(C) and set(B) <= set(A) | set(C)):
        raise ValueError(f"_bf16_einsum: {spec!r} sums an index within one operand")
    g16 = g.astype(jnp.bfloat16)
    da = jnp.einsum(f"{C},{B}->{A}", g16, b16, preferred_element_type=jnp.float32)
    db = jnp.einsum(f"{C},{A}->{B}", g16, a16, preferred_element_type=jnp.float32)
    return da, db


_bf16_einsum.defvjp(_bf16_einsum_fwd, _bf16_einsum_bwd)


def _bf16_dot_general(lhs, rhs, dimension_numbers, precision=None, **kw):
    """nnx.Linear's `dot_general` for precision = "bf16": (..., k) @ (k, f) as an (r, k) @
    (k, f) `_bf16_einsum` on the flattened rows."""
    del precision, kw  # float32 accumulation is fixed; no sharding is given here
    if dimension_numbers != (((lhs.ndim - 1,), (0,)), ((), ())) or rhs.ndim != 2:
        raise ValueError(f"bf16 dense layer: unsupported dimension numbers {dimension_numbers}")
    out = _bf16_einsum("rk,kf->rf", lhs.reshape(-1, lhs.shape[-1]), rhs)
    return out.reshape(*lhs.shape[:-1], rhs.shape[1])


def _dense_kwargs(precision: str) -> dict:
    """nnx.Linear's arguments for `precision`: none for float32, the bf16 matmul for bf16."""
    return {} if PRECISIONS[precision] is None else {"dot_general": _bf16_dot_general}


def _einsum(spec: str, a: Array, b: Array, dt) -> Array:
    """jnp.einsum, or `_bf16_einsum` when dt is bfloat16."""
    return jnp.einsum(spec, a, b) if dt is None else _bf16_einsum(spec, a, b)


class Block(nnx.Module):
    """Pre-LN block: x + attn(LN(x)), then x + mlp(LN(x)); (n, T, C) -> (n, T, C)."""

    def __init__(self, C: int, K: int, mlp_ratio: int, layers: int, dropout: float, rngs,
                 precision: str = "float32"):
        # residual projections scaled by 1/√(2·layers) so the residual stream's variance
        # does not grow with depth (GPT-2)
        out_init = nnx.initializers.normal(0.02 / math.sqrt(2 * layers))
        mm = _dense_kwargs(precision)
        self.K = K
        self.precision = precision
        self.ln1 = nnx.LayerNorm(C, epsilon=1e-5, rngs=rngs)
        self.qkv = nnx.Linear(C, 3 * C, kernel_init=_init, rngs=rngs, **mm)  # fused q, k, v
        self.proj = nnx.Linear(C, C, kernel_init=out_init, rngs=rngs, **mm)
        self.ln2 = nnx.LayerNorm(C, epsilon=1e-5, rngs=rngs)
        self.fc = nnx.Linear(C, mlp_ratio * C, kernel_init=_init, rngs=rngs, **mm)
        self.out = nnx.Linear(mlp_ratio * C, C, kernel_init=out_init, rngs=rngs, **mm)
        self.drop = nnx.Dropout(dropout, rngs=rngs) if dropout > 0 else None

    def _drop(self, x: Array) -> Array:
        return x if self.drop is None else self.drop(x)

    def attention(self, h: Array, n: int, T: int) -> Array:
        """Causal multi-head self-attention: (n·T, C) rows -> (n·T, C)."""
        C = h.shape[-1]
        K, D = self.K, C // self.K
        # fused q, k, v, each (n, K, T, D): batch axes lead, so every einsum here and in the
        # gradient is a plain batched matmul (XLA's CPU bf16 dots refuse some other layouts)
        qkv = self.qkv(h).reshape(n, T, 3, K, D).transpose(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        dt = PRECISIONS[self.precision]
        s = _einsum("nkqd,nkpd->nkqp", q, k, dt) / math.sqrt(D)  # (n, K, T, T) float32
        causal = jnp.tril(jnp.ones((T, T), bool))
        # every row keeps its diagonal, so a finite fill never leaks mass and never gives NaN
        s = jnp.where(causal, s, jnp.finfo(s.dtype).min)
        a = self._drop(jax.nn.softmax(s, axis=-1))
        o = _einsum("nkqp,nkpd->nkqd", a, v, dt).transpose(0, 2, 1, 3).reshape(n * T, C)
        return self.proj(o)

    def __call__(self, x: Array) -> Array:
        # the dense layers see (n·T, C) rows: XLA's CPU matmuls (and their gradients) ran
        # ~20% faster on 2-D operands than on (n, T, C) ones at the fig. 2 width (measured);
        # the reshapes are free
        n, T, C = x.shape
        h = x.reshape(n * T, C)
        h = h + self._drop(self.attention(self.ln1(h), n, T))
        h = h + self._drop(self.out(jax.nn.gelu(self.fc(self.ln2(h)))))
        return h.reshape(n, T, C)


class Transformer(nnx.Module):
    """Causal decoder: prompts (n, P), responses (n, H) int32 -> (n, H, V) float32 log-probs.

    With dropout > 0 the dropout RNG count lives in the non-Param state: thread it through
    train steps (or call `.eval()` for deterministic outputs).
    """

    def __init__(
        self,
        V: int,
        H: int,
        P: int,
        prompt_vocab: int,
        *,
        layers: int,
        heads: int,
        width: int,
        mlp_ratio: int = 4,
        rngs: nnx.Rngs,
        dropout: float = 0.0,
        precision: str = "float32",
    ):
        self.V = check_int("V", V, 1)
        self.H = check_int("H", H, 1)
        self.P = check_int("P", P, 0)
        self.prompt_vocab = check_int("prompt_vocab", prompt_vocab, 1 if self.P > 0 else 0)
        self.layers = check_int("layers", layers, 1)
        self.heads = check_int("heads", heads, 1)
        self.width = check_int("width", width, 1)
        self.mlp_ratio = check_int("mlp_ratio", mlp_ratio, 1)
        dropout = check_float("dropout", dropout, 0.0, 1.0, high_open=True)
        if precision not in PRECISIONS:
            raise ValueError(f"precision: must be one of {sorted(PRECISIONS)}, got {precision!r}")
        self.precision = precision
        if self.width % self.heads:
            raise ValueError(f"argument width ({width}) must be divisible by heads ({heads})")
        self.sep = max(self.V, self.prompt_vocab)  # SEP/BOS symbol id
        T, C = self.P + self.H, self.width
        self.embed = nnx.Embed(self.sep + 1, C, embedding_init=_init, rngs=rngs)
        self.pos = nnx.Param(nnx.initializers.normal(0.01)(rngs.params(), (T, C), jnp.float32))
        self.drop = nnx.Dropout(dropout, rngs=rngs) if dropout > 0 else None
        self.blocks = nnx.List(
            [
                Block(C, self.heads, self.mlp_ratio, self.layers, dropout, rngs, precision)
                for _ in range(layers)
            ]
        )
        self.ln_f = nnx.LayerNorm(C, epsilon=1e-5, rngs=rngs)
        self.head = nnx.Linear(C, self.V, use_bias=False, kernel_init=_init, rngs=rngs,
                               **_dense_kwargs(precision))

    def __call__(self, prompts: Array, responses: Array) -> Array:
        """(n, P), (n, H) int32 -> (n, H, V) float32: log π̂(· | x, y_{<h}), teacher-forced."""
        n = responses.shape[0]
        if prompts.shape != (n, self.P) or responses.shape != (n, self.H):
            raise ValueError(
                f"prompts and responses must have shapes (n, {self.P}) and (n, {self.H}), "
                f"got {prompts.shape} and {responses.shape}"
            )
        sep = jnp.full((n, 1), self.sep, jnp.int32)
        tokens = jnp.concatenate(
            [prompts.astype(jnp.int32), sep, responses[:, :-1].astype(jnp.int32)], axis=1
        )  # (n, T)
        x = self.embed(tokens) + self.pos[...]  # (n, T, C)
        if self.drop is not None:
            x = self.drop(x)
        for block in self.blocks:
            x = block(x)
        # only the H positions that predict response tokens, as (n·H, C) rows (see Block)
        h = self.ln_f(x[:, self.P :].reshape(n * self.H, self.width))
        return jax.nn.log_softmax(self.head(h), axis=-1).reshape(n, self.H, self.V)

    def num_params(self) -> int:
        """Number of trainable scalars."""
        return sum(p.size for p in jax.tree.leaves(nnx.state(self, nnx.Param)))

    def activation_bytes(self, n: int) -> int:
        """Bytes of the activations a training step on n sequences keeps for its backward
        pass, an estimate (XLA may fuse or recompute some): per block the LayerNorm inputs and
        outputs (4·C), q, k, v (3·C), the attention output and its projection (2·C), the MLP's
        pre- and post-GeLU (2·mlp_ratio·C), the residual sums (2·C) at each of T positions,
        plus the (K, T, T) scores and their softmax; then the head's (H, V) logits and
        log-probs. float32 throughout (bf16 matmul inputs are casts, not kept copies)."""
        T, C = self.P + self.H, self.width
        per_block = T * (11 + 2 * self.mlp_ratio) * C + 2 * self.heads * T * T
        return 4 * n * (self.layers * per_block + 2 * self.H * self.V)

    def flops_per_token(self) -> float:
        """Training FLOPs (forward + backward) per input position; see `flops_per_token`."""
        return flops_per_token(
            self.V, self.H, self.P, layers=self.layers, width=self.width, mlp_ratio=self.mlp_ratio
        )


def flops_per_token(
    V: int, H: int, P: int, *, layers: int, width: int, mlp_ratio: int = 4
) -> float:
    """Training FLOPs per input position (T = P + H positions per sequence), forward + backward.

    Matmuls cost 2 FLOPs per weight per token forward and twice that backward, hence
    6 · (matmul weights); the attention scores q·k and the weighted sum a·v cost 2·T·C each per
    layer forward (the full T × T square is computed, masked afterwards), so 12·layers·T·C in
    all. The head runs on H of the T positions only. Embedding lookups, LayerNorm, softmax and
    GeLU are ignored (O(T·C) elementwise work). Per sequence: multiply by P + H.
    """
    T, C = P + H, width
    blocks = layers * (4 * C * C + 2 * mlp_ratio * C * C)  # qkv + proj + fc + out
    return 6.0 * blocks + 6.0 * C * V * H / T + 12.0 * layers * T * C
