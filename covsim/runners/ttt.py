"""Runner "ttt": token-level SGD (Eq. 21 of arXiv 2510.15020v2) decoded ancestrally and with
the test-time-training sampler π^TTT (Eqs. 22–23), against sequence-level SGD (Eq. 14), one
pass over fresh sequences, on an AR linear task whose tokens are i.i.d. given the prompt.

Token order matters for token-level updates, so responses are drawn token by token here
(unlike `covsim.runners.sgd`, which draws token counts). At E evenly spaced checkpoints θ_t:

* the ancestral model π_{θ_t}: KL and Cov_N exact (`covsim.tasks.linear.count_scores`);
* the TTT sampler π^TTT_{θ_t}: its teacher-forced log-probability along M fresh responses from
  π_D for every prompt (`covsim.optim.ttt_log_prob`: the token-level recursion restarted from
  θ_t on each response) gives r = log π_D − log π^TTT per response, so KL and Cov_N are exact
  sums over prompts of Monte Carlo averages over responses, with exact log-probabilities.

Method "sgd" runs `covsim.runners.sgd.one_pass_run` (sequence-level SGD, through that module's
vmapped grid) scored at the same checkpoints. `token_sgd_run` is a whole run as a pure
function of its key.
"""

from __future__ import annotations

import itertools
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from covsim import optim
from covsim.checks import check_int
from covsim.config import Config
from covsim.registry import signature_params
from covsim.results import RunResult
from covsim.runners.registry import RunnerSpec, config_check, register_runner, runner_params
from covsim.runners.sgd import _grid_runs, _validated, study_inputs
from covsim.sweep import Cell
from covsim.tasks.linear import count_scores

METHODS = ("token_sgd", "sgd")


def _sample_tokens(key, log_mu, log_p, n: int, H: int):
    """n fresh (x, y): prompts (n,), responses (n, H) of i.i.d. tokens given the prompt."""
    kx, ky = jax.random.split(key)
    x = jax.random.categorical(kx, log_mu, shape=(n,))
    y = jax.random.categorical(ky, log_p[x][:, None, :], shape=(n, H))
    return x, y


def token_sgd_run(Phi, log_p, log_mu, theta0, key, eta, *, T: int, H: int, E: int, M: int,
                  counts, log_coef, log_N):
    """T fresh sequences of token-level SGD (θ ← Proj(θ + η ∇ log π_θ(y_h | x)) for h = 1..H,
    Eq. 21), scored at checkpoints t = T/E, 2T/E, ..., T. Pure in (key, η).

    Returns per checkpoint (E,): ancestral KL, Cov (E, k) exact; TTT KL, Cov (E, k) on M
    responses from π_D per prompt, with the same η (the paper uses one η for training and
    decoding)."""
    proj = partial(optim.project_params, radius=1.0, ball="l2")

    def logp_next_of(x):
        return lambda th, h: jax.nn.log_softmax(Phi[x] @ th)  # position-free features

    def train_one(theta, k):
        x, y = _sample_tokens(k, log_mu, log_p, 1, H)
        theta, _ = optim.token_level_sgd_epoch(logp_next_of(x[0]), theta, y[0], eta, proj)
        return theta, None

    def ttt_log_prob(theta, x, y):
        return optim.ttt_log_prob(logp_next_of(x), theta, y, eta, proj)

    def block(theta, k):
        k_train, k_eval = jax.random.split(k)
        theta, _ = jax.lax.scan(train_one, theta, jax.random.split(k_train, T // E))
        kl_a, cov_a = count_scores(log_p, jax.nn.log_softmax(Phi @ theta, axis=-1), log_mu,
                                   counts, log_coef, log_N)
        # stratified by prompt: M responses for every x, weighted by µ(x) (exact in x, Monte
        # Carlo in y), so a rare prompt is scored as precisely as a frequent one
        x = jnp.repeat(jnp.arange(log_p.shape[0]), M)
        y = jax.random.categorical(k_eval, log_p[x][:, None, :], shape=(x.shape[0], H))
        w = jnp.exp(log_mu)[x] / M
        lp_true = jnp.sum(jnp.take_along_axis(log_p[x], y, axis=1), axis=1)
        r = lp_true - jax.vmap(ttt_log_prob, in_axes=(None, 0, 0))(theta, x, y)
        cov_t = jnp.sum(w[:, None] * (r[:, None] >= log_N[None]), axis=0)
        return theta, (kl_a, cov_a, jnp.sum(w * r), cov_t)

    _, out = jax.lax.scan(block, theta0, jax.random.split(key, E))
    return out


@partial(jax.jit, static_argnames=("T", "H", "E", "M"))
def _token_grid(Phi, log_p, log_mu, theta0, keys, etas, counts, log_coef, log_N, *, T, H, E, M):
    run = partial(token_sgd_run, T=T, H=H, E=E, M=M, counts=counts, log_coef=log_coef,
                  log_N=log_N)
    over_keys = jax.vmap(run, in_axes=(None, None, None, None, 0, None))
    return jax.vmap(over_keys, in_axes=(None, None, None, None, None, 0))(
        Phi, log_p, log_mu, theta0, keys, etas)


def ttt_settings(method: str = "token_sgd", eta_grid: dict | None = None, n_samples: int = 2000,
                 Ns: list | None = None, tune_seeds: int = 8, theta0: list | None = None,
                 checkpoints: int = 20, eval_samples: int = 256) -> None:
    """The [runner] settings of "ttt" (documentation only).

    method        "token_sgd" (Eq. 21, decoded ancestrally and by TTT) or "sgd" (Eq. 14)
    eta_grid      method -> steps: "token_sgd"'s as η·B² (Thm 6.1 needs η ≤ 1/(2B²)), "sgd"'s as
                  η·H·B (the one_pass convention)
    n_samples     fresh sequences T (one a step for both methods)
    Ns            coverage levels
    tune_seeds    seeds apart from sweep.seeds on which a claim picks settings
    theta0        the start (default 0)
    checkpoints   E evenly spaced checkpoints at which both decodings are scored
    eval_samples  M responses from π_D per prompt and checkpoint for the TTT sampler's scores"""


def _ttt_settings(rp: dict) -> tuple[int, int, int]:
    """The ttt runner's own settings, validated: (E checkpoints, T whole blocks, M)."""
    E = check_int("runner.checkpoints", rp["checkpoints"], 1)
    T = check_int("runner.n_samples", rp["n_samples"], E)
    M = check_int("runner.eval_samples", rp["eval_samples"], 1)
    return E, T - T % E, M


def _check_ttt(cfg: Config) -> None:
    _ttt_settings(_validated(cfg, "ttt", METHODS)[0])


@register_runner("ttt", RunnerSpec(reads=("runner",), requires=("runner",),
                                   check=config_check(_check_ttt)),
                 params=signature_params(ttt_settings))
def run_ttt(cfg: Config, cell: Cell) -> RunResult:
    """Every setting of the cell's method on the tune seeds and the cell's seeds; one record per
    (setting, seed): KL and Cov_N averaged over the E checkpoints (θ_0 left out) for the
    ancestral model and, for token_sgd, the TTT sampler; and the per-checkpoint values."""
    rp = runner_params(cfg)
    inp = study_inputs(cfg, cell, "ttt", METHODS)
    task, method, etas, Ns, roles = inp.task, inp.method, inp.etas, inp.Ns, inp.roles
    H, B = task.H, float(task.B)
    scale = 1.0 / B**2 if method == "token_sgd" else 1.0 / (H * B)
    E, T, M = _ttt_settings(rp)  # T rounded down to whole blocks of T/E sequences
    e_arr = jnp.asarray([e * scale for e in etas], jnp.float32)
    args = (inp.Phi, inp.log_p, task.log_mu, inp.theta0, inp.keys, e_arr, inp.counts,
            inp.log_coef, inp.log_N)
    if method == "token_sgd":
        kl_a, cov_a, kl_t, cov_t = (np.asarray(a, np.float64)
                                    for a in _token_grid(*args, T=T, H=H, E=E, M=M))
    else:
        # the one-pass study's sequence-level SGD (λ and the truncation budget unused)
        kl, cov, _ = _grid_runs(*args[:6], jnp.zeros_like(e_arr), *args[6:], 1.0, method="sgd",
                                K=1, T=T)
        at = np.arange(1, E + 1) * (T // E) - 1  # the same checkpoints as token_sgd's
        kl_a, cov_a = np.asarray(kl, np.float64)[..., at], np.asarray(cov, np.float64)[:, :, at]
        kl_t = cov_t = None
    sigma2 = float(task.sigma_star_sq())
    records = []
    for (gi, e), (si, (role, seed)) in itertools.product(enumerate(etas), enumerate(roles)):
        rec = {"step": T, "seed": seed, "role": role, "method": method, "eta_scaled": e,
               "eta": e * scale, "T": T, "H": H, "B": B, "sigma2": sigma2,
               "kl": float(np.mean(kl_a[gi, si])),
               "cov": dict(zip(Ns, np.mean(cov_a[gi, si], 0).tolist(), strict=True)),
               "kl_at": kl_a[gi, si].tolist(), "finite": bool(np.all(np.isfinite(kl_a[gi, si])))}
        if kl_t is not None:
            rec["kl_ttt"] = float(np.mean(kl_t[gi, si]))
            rec["cov_ttt"] = dict(zip(Ns, np.mean(cov_t[gi, si], 0).tolist(), strict=True))
            rec["kl_ttt_at"] = kl_t[gi, si].tolist()
            rec["finite"] = rec["finite"] and bool(np.all(np.isfinite(kl_t[gi, si])))
        records.append(rec)
    return RunResult(records, {"method": method, "H": H, "sigma2": sigma2, "T": T, "E": E,
                               "M": M})
