"""Samplers for VP-SDE diffusion models, as single-example ``lax.scan`` loops (batch with vmap).

- :func:`euler_maruyama`: the reverse SDE dx = [−½β x − β s(x, t)] dt + √β dw̄ from T to t_min;
- :func:`ddim`: deterministic DDIM (η = 0) on the same time grid, from an ε-function;
- :func:`probability_flow`: the probability-flow ODE dx/dt = −½β(t)[x + s(x, t)] with Heun's
  method — a deterministic decoder g(x_T) → x₀ whose Jacobian spectrum gives LID_θ;
- :func:`guided_eps_fn`: classifier-free guidance, ε̃ = ε(x, t, ∅) + w·(ε(x, t, c) − ε(x, t, ∅)).

Each returns the final sample, or ``(sample, trajectory)`` with ``return_trajectory=True`` where
``trajectory = (xs, ts)`` holds the state before each step and its time (for the CFG norm). The
last step denoises with Tweedie's formula x₀ = (x + σ² s)/α unless ``denoise=False``.

References: Song et al., arXiv 2011.13456 (reverse SDE, PF-ODE); Song, Meng & Ermon, arXiv
2010.02502 (DDIM); Ho & Salimans, arXiv 2207.12598 (classifier-free guidance).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from mmh_jax.lid import _checks

__all__ = ["ddim", "euler_maruyama", "guided_eps_fn", "probability_flow", "time_grid"]

Array = jax.Array


def time_grid(sde, num_steps: int, t_min: float = 1e-3) -> Array:
    """``num_steps + 1`` times from T down to ``t_min``, uniformly spaced (score_sde's VP grid)."""
    num_steps = _checks.positive_int("num_steps", num_steps)
    if _checks.is_concrete(t_min) and not 0.0 < float(t_min) < float(sde.T):
        raise ValueError(f"t_min must lie in (0, T) = (0, {float(sde.T)}), got {t_min}.")
    return jnp.linspace(sde.T, t_min, num_steps + 1).astype(jnp.float32)


def _finish(score_fn, x, t, sde, denoise: bool):
    if not denoise:
        return x
    alpha, sigma = sde.marginal_coefs(t)
    return (x + sigma**2 * score_fn(x, t)) / alpha


def _run(step, x_init, ts, return_trajectory: bool, extra=None):
    """Scan ``step(x, t, t_next, extra_i)`` over consecutive grid times; optionally keep (x, t)."""

    def body(x, inp):
        t, t_next, e = inp
        return step(x, t, t_next, e), ((x, t) if return_trajectory else None)

    return jax.lax.scan(body, x_init, (ts[:-1], ts[1:], extra))


def euler_maruyama(
    score_fn: Callable,
    key,
    shape,
    *,
    sde,
    num_steps: int = 500,
    t_min: float = 1e-3,
    denoise: bool = True,
    return_trajectory: bool = False,
):
    """Sample by Euler–Maruyama on the reverse-time VP-SDE; one example of event ``shape``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from mmh_jax import sample, sde
      >>> vp = sde.VPSDE()
      >>> x = sample.euler_maruyama(lambda x, t: -x, jax.random.key(0), (3,), sde=vp, num_steps=20)
      >>> x.shape
      (3,)
    """
    ts = time_grid(sde, num_steps, t_min)
    k_init, k_steps = jax.random.split(key)
    x0 = sde.prior_sample(k_init, shape)
    keys = jax.random.split(k_steps, num_steps)

    def step(x, t, t_next, k):
        dt = t - t_next
        beta = sde.beta(t)
        drift = 0.5 * beta * x + beta * score_fn(x, t)
        return x + drift * dt + jnp.sqrt(beta * dt) * jax.random.normal(k, x.shape, x.dtype)

    x, traj = _run(step, x0, ts, return_trajectory, keys)
    x = _finish(score_fn, x, ts[-1], sde, denoise)
    return (x, traj) if return_trajectory else x


def ddim(
    eps_fn: Callable,
    key,
    shape,
    *,
    sde,
    num_steps: int = 100,
    t_min: float = 1e-3,
    denoise: bool = True,
    return_trajectory: bool = False,
    x_init=None,
):
    """Deterministic DDIM: x̂₀ = (x − σ_t ε̂)/α_t, then x_s = α_s x̂₀ + σ_s ε̂. From x_T ~ N(0, I)
    drawn from ``key`` (or ``x_init`` when given, making the map x_T ↦ x₀ a decoder)."""
    ts = time_grid(sde, num_steps, t_min)
    x_T = sde.prior_sample(key, shape) if x_init is None else _checks.float_array("x_init", x_init)

    def step(x, t, s, _):
        a_t, sig_t = sde.marginal_coefs(t)
        a_s, sig_s = sde.marginal_coefs(s)
        eps = eps_fn(x, t)
        x0 = (x - sig_t * eps) / a_t
        return a_s * x0 + sig_s * eps

    x, traj = _run(step, x_T, ts, return_trajectory)
    if denoise:
        a, sig = sde.marginal_coefs(ts[-1])
        x = (x - sig * eps_fn(x, ts[-1])) / a
    return (x, traj) if return_trajectory else x


def probability_flow(
    score_fn: Callable,
    x_T,
    *,
    sde,
    num_steps: int = 100,
    t_min: float = 1e-3,
    denoise: bool = True,
    return_trajectory: bool = False,
):
    """Integrate the probability-flow ODE from ``x_T`` at time T to ``t_min`` with Heun's method.

    Deterministic and differentiable in ``x_T``: ``lambda z: probability_flow(score_fn, z, sde=vp)``
    is a decoder for :func:`mmh_jax.lid.jacobian_spectrum`.
    """
    x_T = _checks.float_array("x_T", x_T, min_ndim=1)
    ts = time_grid(sde, num_steps, t_min)

    def velocity(x, t):
        return -0.5 * sde.beta(t) * (x + score_fn(x, t))

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

    Example:
      >>> import jax.numpy as jnp
      >>> f = guided_eps_fn(lambda x, t: x, lambda x, t: 0 * x, 3.0)
      >>> f(jnp.ones(2), 0.5).tolist()
      [3.0, 3.0]
    """

    def eps(x, t):
        u = eps_uncond_fn(x, t)
        return u + scale * (eps_cond_fn(x, t) - u)

    return eps
