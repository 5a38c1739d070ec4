"""Bind a network's single-example ``apply`` to its parameters: the functions the estimators take.

A network's apply on one example, ``apply_fn(params, x, t)`` (e.g. ``ScoreMLP().apply``), becomes

- ``as_eps_fn(apply_fn, params)``:       ``eps_fn(x, t) = ε̂(x, t)``;
- ``as_score_fn(apply_fn, params, sde)``: ``score_fn(x, t) = −ε̂(x, t)/σ(t)``
  ([`mmh_jax.adapters.score_from_eps`][mmh_jax.adapters.score_from_eps]).

The returned functions close over ``params`` but do not jit anything, so ``params`` stay traced
when the caller jits the whole estimator with ``params`` as an argument — one compile serves every
parameter value:

    model = ScoreMLP()
    vp = VPSDE()

    @jax.jit
    def flipd_batch(params, xs, keys):
        score_fn = as_score_fn(model.apply, params, vp)
        return jax.vmap(lambda x, k: lid.flipd(score_fn, x, k, t0=0.05, sde=vp))(xs, keys)

or, in one line, ``jax.jit(lambda params, xs: jax.vmap(lambda x: lid.flipd(as_score_fn(model.apply,
params, vp), x, t0=0.05, sde=vp, trace="exact"))(xs))``.
"""

from __future__ import annotations

from typing import Any, Callable

import jax

from mmh_jax.adapters import score_from_eps

Array = jax.Array
#: A network's apply on one example: ``apply_fn(params, x, t) -> ε̂`` shaped like ``x``.
SingleEpsApply = Callable[[Any, Array, Array], Array]

__all__ = ["as_eps_fn", "as_score_fn"]


def as_eps_fn(apply_fn: SingleEpsApply, params) -> Callable[[Array, Array], Array]:
    """``eps_fn(x, t) = apply_fn(params, x, t)``: the network's ε̂ as a single-example function.

    Args:
      apply_fn: the network's apply on one example, ``apply_fn(params, x, t)``.
      params: its parameters (closed over: pass them as an argument of your jitted function and
        call ``as_eps_fn`` inside it, so new parameters do not recompile).

    Returns:
      ``eps_fn(x, t) -> array like x``.

    Examples:
      >>> import jax.numpy as jnp
      >>> eps_fn = as_eps_fn(lambda p, x, t: p * x, 2.0)
      >>> eps_fn(jnp.ones(2), 0.5).tolist()
      [2.0, 2.0]
    """

    def eps_fn(x, t):
        return apply_fn(params, x, t)

    return eps_fn


def as_score_fn(apply_fn: SingleEpsApply, params, sde) -> Callable[[Array, Array], Array]:
    """``score_fn(x, t) = −apply_fn(params, x, t)/σ(t)`` with σ from ``sde.marginal_coefs``.

    Single example: ``x`` one example, ``t`` a scalar.

    Args:
      apply_fn, params: as in [`as_eps_fn`][mmh_jax.models.as_eps_fn].
      sde: the [`mmh_jax.sde.VPSDE`][mmh_jax.sde.VPSDE] the network was trained with.

    Returns:
      ``score_fn(x, t) -> array like x``, ready for any [`mmh_jax.lid`][mmh_jax.lid] estimator.

    Examples:
      >>> import jax.numpy as jnp
      >>> from mmh_jax.sde import VPSDE
      >>> vp = VPSDE()
      >>> score_fn = as_score_fn(lambda p, x, t: x, None, vp)
      >>> sigma = vp.marginal_coefs(0.5)[1]
      >>> bool(jnp.allclose(score_fn(jnp.ones(3), 0.5), -1.0 / sigma))
      True
    """
    return score_from_eps(as_eps_fn(apply_fn, params), sde)
