"""Samplers for diffusion models on any noise schedule, as single-example ``lax.scan`` loops (batch with vmap).

A schedule ([`mmh_jax.sde`][mmh_jax.sde]) enters only through its protocol: the marginal
coefficients (α, σ), the forward SDE dx = f(t)·x dt + g(t) dW, its times (T, t_min, δ) and its prior.

- [`euler_maruyama`][mmh_jax.sample.euler_maruyama]: the reverse SDE dx = [f x − g² s(x, t)] dt + g dw̄ from
  T to t_min (on the VP-SDE, f = −½β and g² = β);
- [`ddim`][mmh_jax.sample.ddim]: deterministic DDIM (η = 0) on the same time grid, from an ε-function;
- [`probability_flow`][mmh_jax.sample.probability_flow]: the probability-flow ODE dx/dt = f x − ½g² s(x, t)
  with Heun's method — a deterministic decoder g(x_T) → x₀ whose Jacobian spectrum gives LID_θ;
- [`time_grid`][mmh_jax.sample.time_grid]: their time grid, uniform in t or in δ = log(σ/α) (log-SNR);
- [`guided_eps_fn`][mmh_jax.sample.guided_eps_fn]: classifier-free guidance, ε̃ = ε(x, t, ∅) + w·(ε(x, t, c) −
  ε(x, t, ∅));
- [`lid_guided_score_fn`][mmh_jax.sample.lid_guided_score_fn] /
  [`lid_guided_eps_fn`][mmh_jax.sample.lid_guided_eps_fn]: LID guidance, s̃ = s + λ·∇ₓFLIPD, which
  steers sampling towards a higher LID_θ (memorization mitigation, Ross et al. arXiv 2411.00113);
  [`state_flipd`][mmh_jax.sample.state_flipd] is the FLIPD read at a sampler's state,
  [`lid_guidance_term`][mmh_jax.sample.lid_guidance_term] its gradient;
- [`eps_to_score`][mmh_jax.sample.eps_to_score] / [`score_to_eps`][mmh_jax.sample.score_to_eps]: s = −ε/σ(t)
  and back (from [`mmh_jax.adapters`][mmh_jax.adapters]),
  to plug a guided score into [`ddim`][mmh_jax.sample.ddim] or a network's ε into
  [`euler_maruyama`][mmh_jax.sample.euler_maruyama].

Each returns the final sample, or ``(sample, trajectory)`` with ``return_trajectory=True`` where
``trajectory = (xs, ts)`` holds the state before each step and its time (for the CFG norm). The
last step denoises with Tweedie's formula x₀ = (x + σ² s)/α unless ``denoise=False``.

References: Song et al., arXiv 2011.13456 (reverse SDE, PF-ODE); Song, Meng & Ermon, arXiv
2010.02502 (DDIM); Ho & Salimans, arXiv 2207.12598 (classifier-free guidance); Ross et al., arXiv
2411.00113 (LID guidance); Kamkari et al., arXiv 2406.03537 (FLIPD).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from mmh_jax import _checks, adapters, lid

__all__ = [
    "GRID_SPACINGS",
    "SAMPLERS",
    "ddim",
    "eps_to_score",
    "euler_maruyama",
    "guided_eps_fn",
    "lid_guidance_term",
    "lid_guided_eps_fn",
    "lid_guided_score_fn",
    "probability_flow",
    "score_to_eps",
    "state_flipd",
    "time_grid",
]

Array = jax.Array

#: The samplers of a trained diffusion model (``TrainedModel.sample(method=...)``), by function name.
SAMPLERS = ("ddim", "euler_maruyama", "probability_flow")

#: How [`time_grid`][mmh_jax.sample.time_grid] spaces its times: ``uniform`` in t (score_sde's VP
#: grid), or uniform in ``delta`` = log(σ/α), i.e. in log-SNR, which suits every schedule (on EDM it
#: is geometric in σ).
GRID_SPACINGS = ("uniform", "delta")

#: The last time of a default grid, raised to the schedule's ``t_min`` when that is larger.
_T_LAST = 1e-3


def time_grid(sde, num_steps: int, t_min: float | None = None, *, spacing: str = "uniform") -> Array:
    """``num_steps + 1`` times from T down to ``t_min``, uniformly spaced in t or in δ = log(σ/α).

    ``uniform``: t_i = T − i·(T − t_min)/num_steps, i = 0, …, num_steps (score_sde's VP grid).
    ``delta``: δ_i uniform from δ(T) to δ(t_min), t_i = ``sde.t_from_delta(δ_i)`` (the end points
    exactly T and t_min): the step in log noise scale is the same everywhere, which keeps the
    samplers accurate on schedules whose β is large near T (cosine) or whose σ spans decades (EDM).

    Args:
      sde: a noise schedule of [`mmh_jax.sde`][mmh_jax.sde] (its T, t_min and δ).
      num_steps: number of sampler steps (Python int ≥ 1).
      t_min: the last time, in (0, T) and ≥ the schedule's ``t_min``; default 1e-3, or the
        schedule's ``t_min`` when that is larger (EDM: sigma_min).
      spacing: one of [`GRID_SPACINGS`][mmh_jax.sample.GRID_SPACINGS].

    Returns:
      float32 ``(num_steps + 1,)``, decreasing.

    Raises:
      TypeError: ``num_steps`` not an int.
      ValueError: ``num_steps < 1``, ``t_min`` outside the schedule's range or not below T, an
        unknown ``spacing``.

    Reference: Song et al., "Score-Based Generative Modeling through Stochastic Differential Equations", arXiv 2011.13456.

    Examples:
      >>> from mmh_jax import sample, sde
      >>> sample.time_grid(sde.VPSDE(), 4, t_min=0.2).tolist()
      [1.0, 0.800000011920929, 0.6000000238418579, 0.4000000059604645, 0.20000000298023224]
      >>> [round(t, 3) for t in sample.time_grid(sde.EDMSDE(), 4, t_min=0.01, spacing="delta").tolist()]
      [80.0, 8.459, 0.894, 0.095, 0.01]
    """
    num_steps = _checks.positive_int("num_steps", num_steps)
    _checks.option("spacing", spacing, GRID_SPACINGS)
    if t_min is None:
        lo = getattr(sde, "t_min", 0.0)
        t_min = max(_T_LAST, float(lo)) if _checks.is_concrete(lo) else jnp.maximum(_T_LAST, lo)
    rng = _checks.time_range(sde)
    if _checks.is_concrete(t_min) and rng is not None:
        lo, T = rng
        if not (0.0 < float(t_min) < T and float(t_min) >= lo):
            where = f"(0, T) = (0, {T})" if lo <= 0.0 else f"[t_min, T) = [{lo}, {T}) of {type(sde).__name__}"
            raise ValueError(f"t_min must lie in {where}, got {t_min}.")
    if spacing == "uniform":
        return jnp.linspace(sde.T, t_min, num_steps + 1).astype(jnp.float32)
    deltas = jnp.linspace(sde.delta(sde.T), sde.delta(t_min), num_steps + 1)
    ts = sde.t_from_delta(deltas).astype(jnp.float32)
    return ts.at[0].set(sde.T).at[-1].set(t_min)


def _grid(sde, num_steps, t_min, ts, default_steps: int) -> Array:
    """The sampler's times: ``ts`` as given (checked), else ``time_grid`` with the defaults."""
    if ts is None:
        return time_grid(sde, default_steps if num_steps is None else num_steps, t_min)
    if num_steps is not None or t_min is not None:
        raise ValueError(f"Give either ts or num_steps/t_min, got ts and num_steps={num_steps}, t_min={t_min}.")
    ts = _checks.float_array("ts", ts, ndim=1)
    if ts.shape[0] < 2:
        raise ValueError(f"ts must hold at least two times (one step), got shape {ts.shape}.")
    rng = _checks.time_range(sde)
    if _checks.is_concrete(ts) and rng is not None:
        lo, T = rng
        t = np.asarray(ts)
        decreasing = bool(np.all(t[1:] < t[:-1]))
        if not (decreasing and t[-1] > 0.0 and t[-1] >= lo and t[0] <= T):
            raise ValueError(f"ts must strictly decrease within {_checks.range_text(sde, lo, T)}, got {t.size} times "
                             f"from {t[0]:g} to {t[-1]:g}{'' if decreasing else ', not decreasing'}; "
                             f"build it with sample.time_grid or slice one.")
    return ts


def _finish(score_fn, x, t, sde, denoise: bool):
    if not denoise:
        return x
    alpha, sigma = sde.marginal_coefs(t)
    return (x + sigma**2 * score_fn(x, t)) / alpha


def _run(step, x_init, ts, return_trajectory: bool, extra=None, has_aux: bool = False):
    """Scan ``step(x, t, t_next, extra_i)`` over consecutive grid times; optionally keep (x, t).

    With ``has_aux`` the step returns ``(x_next, aux)`` and the stacked ``aux`` is returned too:
    ``(x, traj, auxs)``.
    """

    def body(x, inp):
        t, t_next, e = inp
        out = step(x, t, t_next, e)
        x_next, aux = out if has_aux else (out, None)
        return x_next, ((x, t) if return_trajectory else None, aux)

    x, (traj, auxs) = jax.lax.scan(body, x_init, (ts[:-1], ts[1:], extra))
    return (x, traj, auxs) if has_aux else (x, traj)


def euler_maruyama(
    score_fn: Callable,
    key,
    shape,
    *,
    sde,
    num_steps: int | None = None,
    t_min: float | None = None,
    denoise: bool = True,
    return_trajectory: bool = False,
    ts=None,
):
    """Sample by Euler–Maruyama on the reverse-time SDE of a schedule; one example of event ``shape``.

    From x_T ~ the schedule's prior, over [`time_grid`][mmh_jax.sample.time_grid] with
    dt = t_i − t_{i+1} > 0 and (f, g²) = ``sde.sde_coefs(t)``:
    x ← x + [−f(t)x + g²(t)s(x, t)]·dt + √(g²(t)·dt)·z,  z ~ N(0, I)
    (on the VP-SDE, f = −½β and g² = β); with ``denoise`` the last state is mapped to Tweedie's
    estimate (x + σ²s(x, t))/α.

    Args:
      score_fn: single-example score ``score_fn(x, t) -> array like x``.
      key: PRNG key (the prior draw and every step's noise).
      shape: event shape of one example, e.g. ``(D,)`` or ``(H, W, C)``.
      sde: a noise schedule of [`mmh_jax.sde`][mmh_jax.sde] (e.g. [`VPSDE`][mmh_jax.sde.VPSDE]).
      num_steps, t_min: the time grid ([`time_grid`][mmh_jax.sample.time_grid], uniform in t;
        defaults 500 and 1e-3, or the schedule's ``t_min`` when larger).
      denoise: finish with Tweedie's denoising step.
      return_trajectory: also return the states and times before each step.
      ts: an explicit decreasing grid of times in the schedule's range instead of ``num_steps``
        and ``t_min``, e.g. ``time_grid(sde, n, spacing="delta")``, which suits schedules with
        a large β near T (cosine) or a σ over decades (EDM).

    Returns:
      float32 array of ``shape``; with ``return_trajectory``, ``(x, (xs, ts))`` with xs of shape
      ``(num_steps, *shape)`` and ts ``(num_steps,)``.

    Raises:
      TypeError/ValueError: as [`time_grid`][mmh_jax.sample.time_grid]; ``ts`` as in
        [`ddim`][mmh_jax.sample.ddim].

    Reference: Song et al., "Score-Based Generative Modeling through Stochastic Differential Equations", arXiv 2011.13456.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from mmh_jax import sample, sde
      >>> vp = sde.VPSDE()
      >>> x = sample.euler_maruyama(lambda x, t: -x, jax.random.key(0), (3,), sde=vp, num_steps=20)
      >>> x.shape
      (3,)
    """
    ts = _grid(sde, num_steps, t_min, ts, 500)
    k_init, k_steps = jax.random.split(key)
    x0 = sde.prior_sample(k_init, shape)
    keys = jax.random.split(k_steps, ts.shape[0] - 1)

    def step(x, t, t_next, k):
        dt = t - t_next
        f, g2 = sde.sde_coefs(t)
        drift = -f * x + g2 * score_fn(x, t)
        return x + drift * dt + jnp.sqrt(g2 * dt) * jax.random.normal(k, x.shape, x.dtype)

    x, traj = _run(step, x0, ts, return_trajectory, keys)
    x = _finish(score_fn, x, ts[-1], sde, denoise)
    return (x, traj) if return_trajectory else x


def ddim(
    eps_fn: Callable,
    key,
    shape,
    *,
    sde,
    num_steps: int | None = None,
    t_min: float | None = None,
    denoise: bool = True,
    return_trajectory: bool = False,
    x_init=None,
    has_aux: bool = False,
    ts=None,
):
    """Deterministic DDIM: x̂₀ = (x − σ_t ε̂)/α_t, then x_s = α_s x̂₀ + σ_s ε̂. From x_T drawn from
    the schedule's prior with ``key`` (or ``x_init`` when given, making the map x_T ↦ x₀ a decoder).

    Defined by (α, σ) at the grid times alone, so it runs on any schedule; on EDM (α = 1) it is the
    Euler step of the probability-flow ODE in σ.

    Args:
      eps_fn: single-example ε-prediction ``eps_fn(x, t) -> array like x``.
      key: PRNG key of the prior draw (unused when ``x_init`` is given).
      shape: event shape of one example.
      sde: a noise schedule of [`mmh_jax.sde`][mmh_jax.sde].
      num_steps, t_min: the time grid ([`time_grid`][mmh_jax.sample.time_grid]; defaults 100
        and 1e-3, or the schedule's ``t_min`` when larger).
      denoise: finish with x̂₀ at the grid's last time.
      return_trajectory: also return the states and times before each step.
      x_init: optional starting point of ``shape`` (floating point), at the grid's first time.
      has_aux: ``eps_fn`` returns ``(ε̂, aux)``; the ``aux`` of every step (at the states before
        each step, as the trajectory) is returned stacked along a leading axis of length
        ``num_steps``. E.g. classifier-free guidance's ‖ε_c − ε_∅‖ from the very evaluations that
        drive the sampler, instead of a second pass over the trajectory.
      ts: an explicit decreasing grid of times in the schedule's range instead of ``num_steps`` and ``t_min``,
        e.g. a slice of [`time_grid`][mmh_jax.sample.time_grid] to run part of a trajectory:
        ``ts[:j + 1]`` with ``denoise=False`` stops at ``ts[j]``, and ``ts[j:]`` with
        ``x_init`` at that state finishes it, bit for bit as one run over ``ts``.

    Returns:
      float32 array of ``shape``; with ``return_trajectory``, ``(x, (xs, ts))`` as in
      [`euler_maruyama`][mmh_jax.sample.euler_maruyama]; with ``has_aux``, ``(x, auxs)``, or
      ``(x, (xs, ts), auxs)`` with both.

    Raises:
      TypeError: non-float ``x_init``; ``num_steps`` not an int.
      ValueError: as [`time_grid`][mmh_jax.sample.time_grid]; ``ts`` together with ``num_steps``
        or ``t_min``, not 1-D with at least two times, or (when concrete) not decreasing in the
        schedule's range ((0, T], or [t_min, T]).

    Reference: Song, Meng and Ermon, "Denoising Diffusion Implicit Models", arXiv 2010.02502.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from mmh_jax import sample, sde
      >>> vp = sde.VPSDE()
      >>> eps = lambda x, t: vp.marginal_coefs(t)[1] * x   # the exact ε of data N(0, I)
      >>> z = jnp.array([0.5, -1.0])
      >>> x = sample.ddim(eps, None, (2,), sde=vp, num_steps=100, x_init=z)
      >>> bool(jnp.allclose(x, z, atol=0.02))   # N(0, I) maps to itself, up to the discretisation
      True
    """
    ts = _grid(sde, num_steps, t_min, ts, 100)
    x_T = sde.prior_sample(key, shape) if x_init is None else _checks.float_array("x_init", x_init)

    def eps_only(x, t):
        return eps_fn(x, t)[0] if has_aux else eps_fn(x, t)

    def step(x, t, s, _):
        a_t, sig_t = sde.marginal_coefs(t)
        a_s, sig_s = sde.marginal_coefs(s)
        out = eps_fn(x, t)
        eps, aux = out if has_aux else (out, None)
        x0 = adapters.x0_from_eps(x, eps, a_t, sig_t)
        x_s = a_s * x0 + sig_s * eps
        return (x_s, aux) if has_aux else x_s

    x, traj, *auxs = _run(step, x_T, ts, return_trajectory, has_aux=has_aux)
    if denoise:
        a, sig = sde.marginal_coefs(ts[-1])
        x = adapters.x0_from_eps(x, eps_only(x, ts[-1]), a, sig)
    out = (x, traj) if return_trajectory else (x,)
    out = out + tuple(auxs)
    return out if len(out) > 1 else x


def probability_flow(
    score_fn: Callable,
    x_T,
    *,
    sde,
    num_steps: int | None = None,
    t_min: float | None = None,
    denoise: bool = True,
    return_trajectory: bool = False,
    ts=None,
):
    """Integrate the probability-flow ODE from ``x_T`` at time T to ``t_min`` with Heun's method.

    dx/dt = f(t)x − ½g²(t)s(x, t) with (f, g²) = ``sde.sde_coefs(t)`` (on the VP-SDE
    −½β(t)[x + s(x, t)]), integrated backwards in time with Heun's (trapezoidal) rule.
    Deterministic and differentiable in ``x_T``: ``lambda z: probability_flow(score_fn, z, sde=vp)``
    is a decoder for [`mmh_jax.lid.jacobian_spectrum`][mmh_jax.lid.jacobian_spectrum].

    Args:
      score_fn: single-example score.
      x_T: the starting point at time T, any event shape, floating point (a draw of
        ``sde.prior_sample``).
      sde: a noise schedule of [`mmh_jax.sde`][mmh_jax.sde].
      num_steps, t_min: the time grid ([`time_grid`][mmh_jax.sample.time_grid]; defaults 100
        and 1e-3, or the schedule's ``t_min`` when larger).
      denoise: finish with Tweedie's denoising step.
      return_trajectory: also return the states and times before each step.
      ts: an explicit decreasing grid of times instead of ``num_steps`` and ``t_min``, as in
        [`euler_maruyama`][mmh_jax.sample.euler_maruyama].

    Returns:
      float32 array like ``x_T``; with ``return_trajectory``, ``(x, (xs, ts))`` as in
      [`euler_maruyama`][mmh_jax.sample.euler_maruyama].

    Raises:
      TypeError: non-float ``x_T``.
      ValueError: ``x_T`` of rank 0; as [`time_grid`][mmh_jax.sample.time_grid]; ``ts`` as in
        [`ddim`][mmh_jax.sample.ddim].

    Reference: Song et al., "Score-Based Generative Modeling through Stochastic Differential Equations", arXiv 2011.13456 (§4.3).

    Examples:
      >>> import jax.numpy as jnp
      >>> from mmh_jax import sample, sde
      >>> vp = sde.VPSDE()
      >>> z = jnp.array([0.5, -1.0])
      >>> x = sample.probability_flow(lambda x, t: -x, z, sde=vp, num_steps=20)   # data N(0, I)
      >>> bool(jnp.allclose(x, z, atol=1e-3))
      True
    """
    x_T = _checks.float_array("x_T", x_T, min_ndim=1)
    ts = _grid(sde, num_steps, t_min, ts, 100)

    vp_type = getattr(sde, "variance_preserving", False)

    def velocity(x, t):
        f, g2 = sde.sde_coefs(t)
        if vp_type:  # g² = −2f: f·x − ½g²·s = f·(x + s), the VP-SDE's −½β(x + s)
            return f * (x + score_fn(x, t))
        return f * x - 0.5 * g2 * score_fn(x, t)

    def step(x, t, s, _):
        h = s - t  # negative: integrating backwards in time
        v1 = velocity(x, t)
        x_pred = x + h * v1
        return x + 0.5 * h * (v1 + velocity(x_pred, s))

    x, traj = _run(step, x_T, ts, return_trajectory)
    x = _finish(score_fn, x, ts[-1], sde, denoise)
    return (x, traj) if return_trajectory else x


def guided_eps_fn(eps_cond_fn: Callable, eps_uncond_fn: Callable, scale) -> Callable:
    """Classifier-free guidance: ε̃(x, t) = ε_∅(x, t) + scale·(ε_c(x, t) − ε_∅(x, t)).

    ``scale = 1`` is the conditional model, ``0`` the unconditional one.

    Args:
      eps_cond_fn, eps_uncond_fn: single-example ε-predictions with and without the condition.
      scale: the guidance weight w (may be traced).

    Returns:
      the single-example guided ``eps(x, t)``.

    Reference: Ho and Salimans, "Classifier-Free Diffusion Guidance", arXiv 2207.12598.

    Examples:
      >>> import jax.numpy as jnp
      >>> f = guided_eps_fn(lambda x, t: x, lambda x, t: 0 * x, 3.0)
      >>> f(jnp.ones(2), 0.5).tolist()
      [3.0, 3.0]
    """

    def eps(x, t):
        u = eps_uncond_fn(x, t)
        return u + scale * (eps_cond_fn(x, t) - u)

    return eps


#: The score of an ε-prediction, s(x, t) = −ε̂(x, t)/σ(t): `mmh_jax.adapters.score_from_eps`.
eps_to_score = adapters.score_from_eps

#: The ε-prediction of a score, ε̂(x, t) = −σ(t)·s(x, t), e.g. to run `ddim` on a guided score:
#: `mmh_jax.adapters.eps_from_score`.
score_to_eps = adapters.eps_from_score


def state_flipd(score_fn: Callable, x, t, key=None, *, sde, t0_min=0.05, trace: str = "hutchinson",
                num_probes: int = 1):
    """FLIPD of the model at a sampler's state: F(x, t) = FLIPD(x / α(t), τ), τ = max(t, t0_min).

    [`mmh_jax.lid.flipd`][mmh_jax.lid.flipd] reads the model's density at y = α(τ)·x̂ for a clean point x̂. A
    sampler's state x = x_t is already on the noisy scale, so its clean-scale proxy is x̂ = x/α(t):
    for t ≥ ``t0_min``, y = x itself and F is the LID of the model's noisy density at the iterate,
    F = D + σ(t)²·[tr ∇ s(x, t) + ‖s(x, t)‖²]; below ``t0_min`` it is read at the floor τ on the
    clean scale (scores at tiny t are unreliable, and F's gradient explodes there).

    Args:
      score_fn: single-example score ``score_fn(x, t) -> array like x``.
      x: the state, one example of any event shape.
      t: its time in the schedule's range, scalar (may be traced).
      key: PRNG key of the Hutchinson probes (may be None for ``trace="exact"``).
      sde: a noise schedule of [`mmh_jax.sde`][mmh_jax.sde].
      t0_min: floor of the readout time (default 0.05, FLIPD's usual t₀); may be traced.
      trace, num_probes: as in [`mmh_jax.lid.flipd`][mmh_jax.lid.flipd] (default: Hutchinson, one probe).

    Returns:
      float32 scalar, differentiable in x, t and the network's parameters.

    Raises:
      TypeError/ValueError: as [`mmh_jax.lid.flipd`][mmh_jax.lid.flipd] (non-float ``x``, unknown ``trace``,
        ``num_probes < 1``, ...).

    Reference: FLIPD, Kamkari et al., arXiv 2406.03537; LID guidance, Ross et al., arXiv 2411.00113 §5.

    Examples:
      >>> import jax.numpy as jnp
      >>> from mmh_jax import sample, sde
      >>> vp = sde.VPSDE()   # data N(0, I) in R^3: F = D·α(t)² + σ(t)²·‖x‖² for t ≥ t0_min
      >>> f = sample.state_flipd(lambda x, t: -x, jnp.ones(3), 0.5, sde=vp, trace="exact")
      >>> alpha, sigma = vp.marginal_coefs(0.5)
      >>> bool(jnp.allclose(f, 3 * alpha**2 + 3 * sigma**2))
      True
    """
    t = jnp.asarray(t, jnp.float32)
    tau = jnp.maximum(t, t0_min)
    x_hat = x / sde.marginal_coefs(t)[0]
    return lid.flipd(score_fn, x_hat, key, t0=tau, sde=sde, trace=trace, num_probes=num_probes)


def lid_guidance_term(score_fn: Callable, key, *, sde, num_probes: int = 1, t0_min: float = 0.05,
                      trace: str = "hutchinson") -> Callable:
    """The direction of LID guidance: ``g(x, t) = ∇ₓ F(x, t)`` with F =
    [`state_flipd`][mmh_jax.sample.state_flipd].

    The gradient goes through the network (``jax.grad`` of the Hutchinson estimate: a reverse pass
    over one JVP per probe, ≈ 4–6 network passes with one probe). The probes are drawn once from
    ``key``, so g is a deterministic function of (x, t).
    [`lid_guided_score_fn`][mmh_jax.sample.lid_guided_score_fn] adds λ·g to
    the score; use g directly to also monitor its size (e.g. against ‖s‖ to choose λ).

    Args:
      score_fn: single-example score.
      key: PRNG key of the Hutchinson probes (drawn once, reused at every (x, t)).
      sde, num_probes, t0_min, trace: as in [`state_flipd`][mmh_jax.sample.state_flipd].

    Returns:
      the single-example ``g(x, t) -> array like x``.

    Raises:
      TypeError/ValueError: when ``g`` is called, as [`state_flipd`][mmh_jax.sample.state_flipd].

    Reference: Ross et al., arXiv 2411.00113 §5 (steering sampling towards higher LID).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from mmh_jax import sample, sde
      >>> vp = sde.VPSDE()
      >>> g = sample.lid_guidance_term(lambda x, t: -x, jax.random.key(0), sde=vp)
      >>> bool(jnp.allclose(g(jnp.ones(2), 0.5), 2 * vp.marginal_coefs(0.5)[1] ** 2))   # ∇F = 2σ²x
      True
    """
    num_probes = _checks.positive_int("num_probes", num_probes)
    _checks.option("trace", trace, lid.TRACES)

    def term(x, t):
        return jax.grad(state_flipd, argnums=1)(score_fn, x, t, key, sde=sde, t0_min=t0_min, trace=trace,
                                                num_probes=num_probes)

    return term


def lid_guided_score_fn(
    score_fn: Callable,
    key,
    *,
    sde,
    lam,
    num_probes: int = 1,
    t0_min: float = 0.05,
    trace: str = "hutchinson",
) -> Callable:
    """LID guidance: a score whose reverse-time flow climbs the model's FLIPD (higher LID_θ).

    s̃(x, t) = s(x, t) + λ·∇ₓ F(x, t),   F(x, t) = FLIPD(x / α(t), τ),   τ = max(t, t0_min),

    where FLIPD(x̂, τ) = D + σ(τ)²·[tr ∇_y s(y, τ) + ‖s(y, τ)‖²] at y = α(τ)·x̂ is
    [`mmh_jax.lid.flipd`][mmh_jax.lid.flipd] (so while t ≥ ``t0_min``, F is read at the current state itself;
    see [`state_flipd`][mmh_jax.sample.state_flipd]). The gradient goes through the network with ``jax.grad``
    ([`lid_guidance_term`][mmh_jax.sample.lid_guidance_term]). λ·∇F is in the units of a score: F counts
    dimensions, so λ is in
    (distance)² per dimension; its useful size depends on the model — compare ‖∇F‖ with ‖s‖ along
    a sampling trajectory to pick it. ``lam = 0`` returns s exactly.

    The trace is a Hutchinson estimate with ``num_probes`` Rademacher probes drawn once from
    ``key`` (the same probes at every x and t, so s̃ is a deterministic function; give each sample
    its own key); ``trace="exact"`` (D Jacobian-vector products) is there for small D.

    Plugs into [`euler_maruyama`][mmh_jax.sample.euler_maruyama] and
    [`probability_flow`][mmh_jax.sample.probability_flow] directly, and into [`ddim`][mmh_jax.sample.ddim]
    through [`lid_guided_eps_fn`][mmh_jax.sample.lid_guided_eps_fn]. Composes with ``jit``/``vmap``; ``lam``
    (and ``t0_min``) may be traced, so one compiled sampler serves a whole sweep over λ.

    Args:
      score_fn: single-example score ``score_fn(x, t) -> array like x``, differentiable in x.
      key: PRNG key of the Hutchinson probes (unused for ``trace="exact"``).
      sde: a noise schedule of [`mmh_jax.sde`][mmh_jax.sde].
      lam: guidance strength λ ≥ 0 (scalar, may be traced); negative values steer towards lower LID.
      num_probes: Hutchinson probes (≥ 1).
      t0_min: floor of the time at which FLIPD is read (default 0.05, FLIPD's usual t₀).
      trace: ``"hutchinson"`` (default), ``"exact"`` or ``"auto"``, as in
        [`mmh_jax.lid.flipd`][mmh_jax.lid.flipd].

    Returns:
      single-example ``score_fn(x, t) -> array like x``.

    Raises:
      TypeError/ValueError: ``num_probes`` not an int ≥ 1, an unknown ``trace``.

    Reference: Ross et al., "A Geometric Framework for Understanding Memorization in Generative
    Models", arXiv 2411.00113 (mitigation by steering towards higher LID_θ); FLIPD, Kamkari et al.,
    arXiv 2406.03537.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from mmh_jax import sample, sde
      >>> vp = sde.VPSDE()
      >>> score = lambda x, t: -x  # data N(0, I): at t ≥ t0_min, F = D·α² + σ²‖x‖², ∇F = 2σ²x
      >>> guided = sample.lid_guided_score_fn(score, jax.random.key(0), sde=vp, lam=1.0)
      >>> sigma = vp.marginal_coefs(0.5)[1]
      >>> bool(jnp.allclose(guided(jnp.ones(3), 0.5), (-1.0 + 2.0 * sigma**2) * jnp.ones(3)))
      True
      >>> x = sample.euler_maruyama(guided, jax.random.key(1), (3,), sde=vp, num_steps=10)
      >>> x.shape
      (3,)
    """
    term = lid_guidance_term(score_fn, key, sde=sde, num_probes=num_probes, t0_min=t0_min, trace=trace)

    def guided(x, t):
        s = score_fn(x, t)
        g = term(x, t)
        return jnp.where(lam == 0, s, s + jnp.asarray(lam, s.dtype) * g.astype(s.dtype))

    return guided


def lid_guided_eps_fn(eps_fn: Callable, key, *, sde, lam, num_probes: int = 1, t0_min: float = 0.05,
                      trace: str = "hutchinson") -> Callable:
    """LID guidance in ε-form, for [`ddim`][mmh_jax.sample.ddim]: ε̃(x, t) = ε̂(x, t) − σ(t)·λ·∇ₓF(x, t).

    The same guidance as [`lid_guided_score_fn`][mmh_jax.sample.lid_guided_score_fn] (ε̃ = −σ(t)·s̃ with s =
    −ε̂/σ; F, τ, probes and arguments as there). ``lam = 0`` returns ε̂ exactly.

    Args:
      eps_fn: single-example ε-prediction.
      key, sde, num_probes, t0_min, trace: as in [`lid_guidance_term`][mmh_jax.sample.lid_guidance_term].
      lam: guidance strength λ (may be traced).

    Returns:
      the single-example guided ``eps(x, t)``.

    Raises:
      TypeError/ValueError: when called, as [`state_flipd`][mmh_jax.sample.state_flipd].

    Reference: Ross et al., arXiv 2411.00113 §5.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from mmh_jax import sample, sde
      >>> vp = sde.VPSDE()
      >>> eps = lambda x, t: vp.marginal_coefs(t)[1] * x   # the ε of data N(0, I)
      >>> guided = sample.lid_guided_eps_fn(eps, jax.random.key(0), sde=vp, lam=2.0)
      >>> sample.ddim(guided, jax.random.key(1), (2,), sde=vp, num_steps=5).shape
      (2,)
    """
    term = lid_guidance_term(adapters.score_from_eps(eps_fn, sde), key, sde=sde, num_probes=num_probes, t0_min=t0_min,
                             trace=trace)

    def guided(x, t):
        e = eps_fn(x, t)
        g = term(x, t)
        sigma = sde.marginal_coefs(t)[1]
        return jnp.where(lam == 0, e, e - sigma * jnp.asarray(lam, e.dtype) * g.astype(e.dtype))

    return guided
