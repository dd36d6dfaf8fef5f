"""Runner "bernoulli_closed_form": the Bernoulli case study (Prop. 3.3 / App. F of arXiv
2510.15020v2) with closed-form scores. Per seed one dataset of n draws of Ber(p⋆), its MLE
p̂ = min(k/n, ½) over the closure of Π = (0, ½), and the exact KL and Cov_N of Ber(p̂)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from covsim.config import Config
from covsim.results import RunResult
from covsim.runners.registry import RunnerSpec, register_runner
from covsim.sweep import Cell
from covsim.tasks.bernoulli import Bernoulli, bernoulli_cov, bernoulli_kl, bernoulli_mle

#: Datasets sampled per compiled call (bounds memory to CHUNK·n draws).
CHUNK = 256


@register_runner(
    "bernoulli_closed_form",
    RunnerSpec(reads=("train",), requires=("train",), train_keys=("n_train", "Ns"),
               train_required=("n_train",)),
)
def run_bernoulli(cfg: Config, cell: Cell) -> RunResult:
    """One dataset of n = train.n_train draws of Ber(task.p) per seed (the task's sampler,
    vmapped over seeds in chunks of CHUNK), its MLE p̂ = min(k/n, ½), and the exact KL and
    Cov_N (N in train.Ns) of Ber(p̂) against Ber(p⋆). One record per seed."""
    if cfg.task.kind != "bernoulli":
        raise ValueError(
            f"task.kind: the bernoulli runner needs 'bernoulli', got {cfg.task.kind!r}"
        )
    if (cfg.task.H or 1) != 1:
        raise ValueError(f"task.H: the case study has one token per sequence, got {cfg.task.H}")
    unknown = sorted(set(cfg.task.params) - {"p"})
    if unknown:
        raise ValueError(f"task: unknown key(s) {unknown}; allowed: p")
    task = Bernoulli(p=cfg.task.params.get("p"), H=1)
    p_star = float(task.p)
    if not 0.0 < p_star < 0.5:
        raise ValueError(f"task.p: must lie in (0, ½) (the class Π), got {p_star}")
    n = cfg.train.n_train
    Ns = [float(N) for N in cfg.train.Ns]
    draw = jax.jit(jax.vmap(lambda k: bernoulli_mle(task.sample(k, n)[1])))
    seeds = list(cell.seeds)
    p_hat = []
    for i in range(0, len(seeds), CHUNK):
        ks = [cell.rng_seed(s) for s in seeds[i : i + CHUNK]]
        ks += ks[-1:] * (CHUNK - len(ks))  # pad to one shape: one compile per n
        keys = jax.vmap(jax.random.key)(jnp.asarray(ks, jnp.uint32))
        p_hat.append(np.asarray(draw(keys), np.float64)[: len(seeds) - i])
    # k/n exactly (float32 means of 0/1 are exact for n < 2^24 only up to rounding)
    k = np.rint(np.concatenate(p_hat) * n)
    p_hat = np.minimum(k / n, 0.5)  # the MLE over the closure of Π = (0, ½)
    kl = bernoulli_kl(p_star, p_hat)
    cov = bernoulli_cov(p_star, p_hat[:, None], np.asarray(Ns)[None, :])
    p_zero = (1.0 - p_star) ** n
    records = [
        {
            "step": 0,
            "seed": s,
            "n": n,
            "p_star": p_star,
            "k": int(k[j]),
            "p_hat": float(p_hat[j]),
            "kl": float(kl[j]),
            "cov": dict(zip(Ns, cov[j].tolist(), strict=True)),
            "p_zero_exact": p_zero,
        }
        for j, s in enumerate(seeds)
    ]
    return RunResult(records, {"p_zero_exact": p_zero, "n": n, "p_star": p_star})
