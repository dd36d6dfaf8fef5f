"""Optimizers the paper studies, as optax transforms, plus the token-level and distillation steps.

Sign convention. The trainer MINIMIZES a loss, the negative log-likelihood, so the gradient `g`
an optax transform receives is g = −∇ log π_θ. The paper's "gradient ascent on log-likelihood",
θ ← θ + η ∇ log π_θ, is therefore the update u = −η g here; every transform below returns
updates in optax's convention (θ_new = θ + u, via `optax.apply_updates`).

    sgd              u = −η g                          Eq. 14, sequence-level SGD (Prop. 5.1)
    normalized_sgd   u = −η g / (λ + ‖g‖)              Eq. 17, ‖·‖ = global norm (Thm. 5.1)
    sign_sgd         u = −η sign(g)                    Eq. 20, per coordinate
    project          u ↦ Proj_Θ(θ + u) − θ             Proj_Θ of Eqs. 14/17/21; chain it last

Token-level SGD (Eq. 21, §6.1) is not a transform of a batch gradient but a scan over
the tokens of one sequence: `token_level_sgd_epoch`; the TTT sampler (Eqs. 22–23) draws with
`ttt_sample` and scores teacher-forced with `ttt_log_prob`. The truncated distillation gradient
(Eqs. 24–25, §6.2) is a loss whose gradient is −ĝ: `truncated_distillation_loss`.

Step sizes from the proofs: `theory_step_size`. Building from a config dict: `make_optimizer`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from covsim import registry
from covsim.checks import check_float, check_int
from covsim.metrics import token_kl
from covsim.tasks.base import gather_tokens

Array = jax.Array

BALLS = ("l2", "linf")


# ---- projection onto Θ = {‖θ‖ ≤ R} ---------------------------------------------------------


def _check_ball(name: str, ball) -> str:
    if ball not in BALLS:
        raise ValueError(f"argument {name} must be one of {list(BALLS)}, got {ball!r}")
    return ball


def _check_radius(name: str, radius) -> None:
    """Validate a concrete radius (R > 0, inf allowed); traced radii pass unchecked."""
    if isinstance(radius, int | float | np.integer | np.floating):
        check_float(name, radius, 0.0, None, low_open=True)


def project_params(params, radius, ball: str = "l2"):
    """Euclidean projection of a params pytree onto the ball of radius R (Assumption 2.2).

    l2: θ / max(1, ‖θ‖/R) with ‖·‖ the global norm over all leaves; linf: clip(θ, −R, R).
    R = inf is the identity. Pure jnp; `radius` may be traced."""
    _check_ball("ball", ball)
    _check_radius("radius", radius)
    if ball == "linf":
        return jax.tree.map(lambda a: jnp.clip(a, -radius, radius), params)
    den = jnp.maximum(1.0, optax.tree.norm(params) / radius)
    return jax.tree.map(lambda a: (a / den).astype(a.dtype), params)


def project(radius, ball: str = "l2") -> optax.GradientTransformation:
    """Turn an update u into Proj_Θ(θ + u) − θ: chained last, it makes any optimizer projected.

    Needs `params` in `update`. After `optax.apply_updates` the new θ lies in the ball up to
    float32 rounding of (θ + (p − θ)) (a few ulps of R)."""
    _check_ball("ball", ball)
    _check_radius("radius", radius)

    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("project(...) needs params: call tx.update(grads, state, params)")
        moved = jax.tree.map(lambda p, u: p + u, params, updates)
        proj = project_params(moved, radius, ball)
        return jax.tree.map(lambda q, p: q - p, proj, params), state

    return optax.GradientTransformation(init_fn, update_fn)


# ---- the optimizers ------------------------------------------------------------------------


def _hyper(name: str, value, low: float, *, low_open: bool = True):
    """A step-size hyperparameter: checked ≥ / > low when concrete; a tracer (a grid vmapped
    over, as the §5 studies do) passes unchecked and stays traced."""
    if isinstance(value, jax.core.Tracer):
        return value
    return check_float(name, value, low, None, low_open=low_open)


def sgd(eta) -> optax.GradientTransformation:
    """Plain SGD on the loss: u = −η g (= +η ∇ log π, Eq. 8). `eta` > 0 (may be traced)."""
    eta = _hyper("eta", eta, 0.0)
    return optax.sgd(eta)


def adam(lr, weight_decay=0.0, b1=0.9, b2=0.999, eps=1e-8) -> optax.GradientTransformation:
    """Adam (AdamW with decoupled decay when weight_decay > 0); defaults are optax's (the paper
    states none)."""
    lr = _hyper("lr", lr, 0.0)
    weight_decay = check_float("weight_decay", weight_decay, 0.0)
    b1 = check_float("b1", b1, 0.0, 1.0, high_open=True)
    b2 = check_float("b2", b2, 0.0, 1.0, high_open=True)
    eps = check_float("eps", eps, 0.0)
    if weight_decay > 0:
        return optax.adamw(lr, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
    return optax.adam(lr, b1=b1, b2=b2, eps=eps)


def normalized_sgd(eta, lam) -> optax.GradientTransformation:
    """Normalized mini-batch SGD, Eq. 17: u = −η g / (λ + ‖g‖), ‖g‖ the global norm.

    With g = −ĝ this is θ + η ĝ/(λ + ‖ĝ‖). λ ≥ 0; at λ = 0 a zero gradient gives u = 0.
    η and λ may be traced (checked when concrete)."""
    eta = _hyper("eta", eta, 0.0)
    lam = _hyper("lam", lam, 0.0, low_open=False)

    def update_fn(updates, state, params=None):
        del params
        den = lam + optax.tree.norm(updates)
        c = jnp.where(den > 0, -eta / jnp.where(den > 0, den, 1.0), 0.0)
        return jax.tree.map(lambda g: (c * g).astype(g.dtype), updates), state

    return optax.GradientTransformation(lambda _: optax.EmptyState(), update_fn)


def sign_sgd(eta) -> optax.GradientTransformation:
    """SignSGD, Eq. 20: u = −η sign(g) per coordinate (= θ + η sign(ĝ)); η may be traced."""
    eta = _hyper("eta", eta, 0.0)

    def update_fn(updates, state, params=None):
        del params
        return jax.tree.map(lambda g: (-eta * jnp.sign(g)).astype(g.dtype), updates), state

    return optax.GradientTransformation(lambda _: optax.EmptyState(), update_fn)


# ---- step sizes from the proofs --------------------------------------------------------------

THEORY_RULES = ("sgd", "normalized_sgd", "token_sgd", "distill_sgd")
_NEEDS = {
    "sgd": ("B", "H", "T", "sigma2"),
    "normalized_sgd": ("B", "T", "sigma2", "N"),
    "token_sgd": ("B", "T", "sigma2"),
    "distill_sgd": ("B", "T", "sigma2", "N"),
}


def _inv(x: float) -> float:
    return math.inf if x == 0 else 1.0 / x


def theory_step_size(name: str, *, B=None, H=None, T=None, sigma2=None, N=None, K=1):
    """The step size the paper's proofs choose (§5–6). B ≥ feature-norm bound,
    H horizon, T steps, sigma2 = σ⋆², N the coverage level, K the mini-batch size.

    * "sgd" (Prop 5.1): η = min{1/(2HB²), sqrt(2K/(σ⋆² T))}, the minimiser of 4/(ηT) + 2ησ⋆²/K
      under η ≤ 1/(2HB²). K = 1 is the paper; for K > 1 the mini-batch mean divides the variance
      term by K (standard SGD analysis, not in the paper).
    * "normalized_sgd" (Thm 5.1 proof): M = log N, η = min{1/(128B), (M/(σ⋆² T))^{1/4}},
      λ = M/(16η). Returns (η, λ). The proof's choice does not depend on K (K only enters the
      bound's B/(K log N) term).
    * "token_sgd" (Thm 6.1 proof): η = min{1/(2B²), (σ⋆² T)^{−1/2}}; one sequence per step, K = 1.
    * "distill_sgd" (Thm. 6.2): η = min{1/((64 log N + 2)B²), (T σ⋆² log N / K)^{−1/2}}
      (K = 1 is the paper; K > 1 as for "sgd").
    σ⋆² = 0 makes the variance term infinite, so the smoothness cap is returned.
    Arguments a rule does not use are accepted and ignored (pass one dict for every rule)."""
    if name not in THEORY_RULES:
        raise ValueError(f"argument name must be one of {list(THEORY_RULES)}, got {name!r}")
    given = {"B": B, "H": H, "T": T, "sigma2": sigma2, "N": N}
    missing = [k for k in _NEEDS[name] if given[k] is None]
    if missing:
        raise ValueError(f"theory_step_size({name!r}) needs argument(s) {missing}")
    B = check_float("B", B, 0.0, None, low_open=True)
    T = check_int("T", T, 1)
    s2 = check_float("sigma2", sigma2, 0.0)
    K = check_int("K", K, 1)
    if name == "sgd":
        H = check_int("H", H, 1)
        return min(1 / (2 * H * B**2), math.sqrt(2 * K * _inv(s2 * T)))
    if name == "token_sgd":
        if K != 1:
            raise ValueError(f"argument K must be 1 for 'token_sgd' (one sequence a step), got {K}")
        return min(1 / (2 * B**2), math.sqrt(_inv(s2 * T)))
    N = check_float("N", N, 1.0, None, low_open=True)
    M = math.log(N)
    if name == "normalized_sgd":
        eta = min(1 / (128 * B), (M * _inv(s2 * T)) ** 0.25)
        return eta, M / (16 * eta)
    return min(1 / ((64 * M + 2) * B**2), math.sqrt(K * _inv(T * s2 * M)))


# ---- from a config dict ----------------------------------------------------------------------

_FIELDS = {
    "sgd": ("eta",),
    "normalized_sgd": ("eta", "lam"),
    "sign_sgd": ("eta",),
    "adam": ("lr", "weight_decay", "b1", "b2", "eps"),
}
_OPTIONAL = {"project", "weight_decay", "b1", "b2", "eps"}
#: field -> (low, high, low_open, high_open)
_RANGES = {
    "eta": (0.0, None, True, False),
    "lr": (0.0, None, True, False),
    "lam": (0.0, None, False, False),
    "weight_decay": (0.0, None, False, False),
    "b1": (0.0, 1.0, False, True),
    "b2": (0.0, 1.0, False, True),
    "eps": (0.0, None, False, False),
}
OPTIMIZERS = tuple(_FIELDS)
#: the theory rules each optimizer may take its "theory" step size from; which one is the
#: training's business (token-level updates, the distillation loss: covsim.experiment)
_RULES_OF = {"sgd": ("sgd", "token_sgd", "distill_sgd"), "normalized_sgd": ("normalized_sgd",)}


def resolve_spec(spec: dict, theory: dict | None = None) -> dict:
    """Validate an optimizer spec and fill in "theory" step sizes; returns a new plain dict.

    spec: {"name": one of OPTIMIZERS, the name's fields, optional "project": {"radius", "ball"}}.
      sgd / sign_sgd: eta;  normalized_sgd: eta, lam;  adam: lr, weight_decay, b1, b2, eps.
    eta = "theory" (sgd, normalized_sgd) takes the step size from
    `theory_step_size(rule, **theory)`, where theory["rule"] (default: the optimizer's name)
    is "token_sgd" for token-level updates or "distill_sgd" for the distillation loss (both
    plain SGD steps); for normalized_sgd lam may then be omitted or "theory". Errors name the
    field and the allowed values."""
    if not isinstance(spec, dict):
        raise TypeError(f"optimizer spec must be a dict, got {type(spec).__name__}")
    name = spec.get("name")
    if name not in _FIELDS:
        if isinstance(name, str) and registry.entry("optim", name):
            return {**spec}  # a plugin optimizer validates its own parameters
        raise ValueError(
            f"name: optimizer field 'name' must be one of {list(OPTIMIZERS)}, got {name!r}"
        )
    # one step-size name for every optimizer: "lr" and "eta" are aliases (the paper writes η)
    own = "lr" if "lr" in _FIELDS[name] else "eta"
    alias = "eta" if own == "lr" else "lr"
    if alias in spec:
        if own in spec:
            raise ValueError(f"optimizer fields {own!r} and {alias!r} are the same step size; "
                             "give one")
        spec = {**spec, own: spec[alias]}
        del spec[alias]
    allowed = ("name", "project", *_FIELDS[name])
    for key in spec:
        if key not in allowed:
            raise ValueError(
                f"optimizer {name!r} has unknown field {key!r}; allowed fields: {sorted(allowed)}"
            )
    theory_eta = spec.get("eta") == "theory"
    for key in _FIELDS[name]:
        lam_free = name == "normalized_sgd" and key == "lam" and theory_eta
        if key not in spec and key not in _OPTIONAL and not lam_free:
            raise ValueError(f"optimizer {name!r} needs field {key!r}")
    out = {k: v for k, v in spec.items() if k != "project"}
    if theory_eta or spec.get("lam") == "theory":
        if not theory_eta:
            raise ValueError("optimizer field 'lam' may be 'theory' only when 'eta' is 'theory'")
        if name not in _RULES_OF:
            raise ValueError(
                f"optimizer field 'eta' may be 'theory' only for {list(_RULES_OF)}, got {name!r}"
            )
        kw = dict(theory or {})
        rule_name = kw.pop("rule", name)
        if rule_name not in _RULES_OF[name]:
            raise ValueError(f"optimizer field 'eta' = 'theory': optimizer {name!r} has no rule "
                             f"for {rule_name!r} training; allowed: {list(_RULES_OF[name])}")
        try:
            rule = theory_step_size(rule_name, **kw)
        except TypeError as e:
            raise ValueError(f"optimizer field 'eta' = 'theory': bad theory arguments: {e}") from e
        if name == "normalized_sgd":
            out["eta"], lam = rule
            if spec.get("lam", "theory") == "theory":
                out["lam"] = lam
        else:
            out["eta"] = rule
    for key, (lo, hi, lo_open, hi_open) in _RANGES.items():
        if key in out:
            if isinstance(out[key], str):
                raise ValueError(f"optimizer field {key!r} must be a number, got {out[key]!r}")
            out[key] = check_float(f"optimizer.{key}", out[key], lo, hi,
                                   low_open=lo_open, high_open=hi_open)
            if not math.isfinite(out[key]):  # inf passes an open-ended range: refuse it here
                raise ValueError(f"optimizer field {key!r} must be finite, got {out[key]}")
    if "project" in spec:
        p = spec["project"]
        if not isinstance(p, dict):
            raise ValueError(f"optimizer field 'project' must be a dict, got {p!r}")
        for key in p:
            if key not in ("radius", "ball"):
                raise ValueError(
                    f"optimizer field 'project' has unknown key {key!r}; "
                    "allowed: ['ball', 'radius']"
                )
        if "radius" not in p:
            raise ValueError("optimizer field 'project' needs key 'radius'")
        radius = check_float("optimizer.project.radius", p["radius"], 0.0, None, low_open=True)
        out["project"] = {"radius": radius, "ball": _check_ball("optimizer.project.ball",
                                                               p.get("ball", "l2"))}
    return out


def make_optimizer(spec: dict, theory: dict | None = None) -> optax.GradientTransformation:
    """Build the transform a spec names (see `resolve_spec`), projected if spec has "project".
    Token-level SGD and distillation are plain SGD fed other gradients: [train] update and
    loss choose them (`token_level_sgd_epoch`, `truncated_distillation_loss`)."""
    s = resolve_spec(spec, theory)
    name = s["name"]
    if name not in _FIELDS:  # registered by a plugin
        return registry.entry("optim", name).factory(**{k: v for k, v in s.items() if k != "name"})
    if name == "adam":
        keys = ("weight_decay", "b1", "b2", "eps")
        tx = adam(s["lr"], **{k: s[k] for k in keys if k in s})
    elif name == "normalized_sgd":
        tx = normalized_sgd(s["eta"], s["lam"])
    elif name == "sign_sgd":
        tx = sign_sgd(s["eta"])
    else:
        tx = sgd(s["eta"])
    if "project" in s:
        tx = optax.chain(tx, project(s["project"]["radius"], s["project"]["ball"]))
    return tx


# ---- token-level SGD and the TTT log-probability (§6.1, Eqs. 21–23) ----------------


def token_level_sgd_epoch(
    logp_next: Callable[[Any, Array], Array],
    theta,
    response: Array,
    eta,
    proj: Callable[[Any], Any] | None = None,
):
    """Eq. 21 on one sequence: for h = 0..H−1, θ ← proj(θ + η ∇_θ log π_θ(y_h | x, y_{<h})).

    logp_next(theta, h) -> (V,): log π_θ(· | x, y_{<h}) for the sequence being read (close over
    x and y; it must only look at y_{<h}); `linear_logp_next` builds it for the AR linear task.
    theta: any params pytree; response (H,) int; proj: θ ↦ θ (e.g. partial(project_params, ...)),
    None for no projection. Returns (θ after the H steps, per-token log-probs (H,)), where entry h
    is log π_{θ_h}(y_h | x, y_{<h}) at the iterate *before* step h's update. Those are exactly
    the teacher-forced log-probs of the TTT sampler π^TTT_θ along y (Eqs. 77–78: ϑ(x, y_{1:h};
    θ) is this recursion), so their sum is log π^TTT_θ(y|x): see `ttt_log_prob`."""
    proj = (lambda t: t) if proj is None else proj
    response = jnp.asarray(response, jnp.int32)

    def step(th, h):
        lp, g = jax.value_and_grad(lambda t: logp_next(t, h)[response[h]])(th)
        th = proj(jax.tree.map(lambda a, b: a + eta * b, th, g))
        return th, lp

    return lax.scan(step, theta, jnp.arange(response.shape[0]))


def ttt_log_prob(logp_next, theta, response, eta, proj=None) -> Array:
    """log π^TTT_θ(y | x): the sum (one `jnp.sum`) of `token_level_sgd_epoch`'s log-probs."""
    return jnp.sum(token_level_sgd_epoch(logp_next, theta, response, eta, proj)[1])


def ttt_sample(logp_next, theta, key: Array, H: int, eta, proj=None) -> tuple[Array, Array]:
    """Draw one response from the TTT sampler π^TTT_θ (Eqs. 22–23): y_h ~ π_{ϑ_{h−1}}(·| x,
    y_{<h}), then ϑ_h = proj(ϑ_{h−1} + η ∇ log π_{ϑ_{h−1}}(y_h | x, y_{<h})), ϑ_0 = θ.

    logp_next(theta, h, prefix) -> (V,): log π_θ(· | x, y_{<h}) given the response so far
    (prefix (H,), entries ≥ h not yet drawn, zeros). Returns (y (H,), log π^TTT_θ(y|x)
    recorded while sampling) — what `ttt_log_prob` must give back teacher-forced."""
    proj = (lambda t: t) if proj is None else proj

    def step(carry, kh):
        th, y = carry
        k, h = kh
        lp_fn = lambda t: logp_next(t, h, y)  # noqa: E731
        lp = lp_fn(th)
        yh = jax.random.categorical(k, lp)
        g = jax.grad(lambda t: lp_fn(t)[yh])(th)
        th = proj(jax.tree.map(lambda a, b: a + eta * b, th, g))
        return (th, y.at[h].set(yh)), lp[yh]

    init = (theta, jnp.zeros((H,), jnp.int32))
    (_, y), lps = lax.scan(step, init, (jax.random.split(key, H), jnp.arange(H)))
    return y, jnp.sum(lps)


def linear_logp_next(task, prompt: Array, response: Array) -> Callable[[Array, Array], Array]:
    """`logp_next` for an AR linear task on one sequence: prompt (P,), response (H,).

    The features ϕ(x, y_{<h}, v) do not depend on θ, so they are computed once, (H, V, d);
    step h then costs one (V, d) @ (d,) product."""
    F = task.features(prompt[None], response[None])[0]
    return lambda theta, h: jax.nn.log_softmax(F[h] @ theta)


# ---- truncated distillation gradient (§6.2, Eqs. 24–27) --------------------


def truncation_weights(eps: Array, A) -> Array:
    """Weights α (..., H) for token KLs eps (..., H) ≥ 0 and budget A = log N ≥ 0.

    α_h = 1 while the running sum S_h = Σ_{j≤h} ε_j stays ≤ A; on the crossing token
    α_h = (A − S_{h−1})/ε_h; 0 afterwards. Hence Σ_h α_h ε_h = min{A, Σ_h ε_h}.
    ε_h = 0 never divides (its α is 1 or 0); ε_h = inf gives α = 0 from there on, not NaN."""
    if isinstance(A, int | float | np.integer | np.floating):
        check_float("A", A, 0.0)
    eps = jnp.asarray(eps)
    S = jnp.cumsum(eps, axis=-1)
    # exclusive sum by its own cumsum (not S − ε, which is inf − inf after an infinite ε)
    prev = jnp.cumsum(jnp.concatenate([jnp.zeros_like(eps[..., :1]), eps[..., :-1]], -1), -1)
    safe = jnp.where(eps > 0, eps, 1.0)
    frac = jnp.clip((A - prev) / safe, 0.0, 1.0)
    return jnp.where(S <= A, 1.0, jnp.where(prev >= A, 0.0, frac)).astype(eps.dtype)


def truncated_distillation_loss(teacher_logp, model_logp, responses, A) -> Array:
    """Per-sequence surrogate loss (...,) whose θ-gradient is −ĝ_θ of Eqs. 24–25:

        loss = −Σ_h α_h log π_θ(y_h | x, y_{<h}),  α = truncation_weights(ε, A) held constant.

    teacher_logp, model_logp (..., H, V) (model_logp depends on θ), responses (..., H), A = log N.
    Minimising its batch mean with `sgd` + `project` is the update θ ← Proj(θ + η ĝ)."""
    eps = token_kl(teacher_logp, lax.stop_gradient(model_logp))
    alpha = lax.stop_gradient(truncation_weights(eps, A))
    return -jnp.sum(alpha * gather_tokens(model_logp, responses), axis=-1)


def _register_builtin_optimizers() -> None:
    for name, fields in _FIELDS.items():
        ps = [registry.Param(f, "float", None if f in _OPTIONAL else registry.EMPTY)
              for f in fields]
        own = "lr" if "lr" in fields else "eta"
        alias = "eta" if own == "lr" else "lr"
        ps.append(registry.Param(alias, f"float (alias of {own})", None))
        ps.append(registry.Param("project", "table {radius, ball}", None))
        registry.register("optim", name, make_optimizer, params=ps,
                          doc=f"built-in optimizer {name!r} (eta may be \"theory\")"
                          if name in _RULES_OF else f"built-in optimizer {name!r}")


_register_builtin_optimizers()
