"""Turn a network's ``apply`` into the single-example functions the estimators take (DESIGN §5).

An ε-network ``eps_apply(params, x, t)`` (e.g. ``ScoreMLP().apply``) becomes

- ``as_eps_fn(eps_apply, params)``:       ``eps_fn(x, t) = ε̂(x, t)``;
- ``as_score_fn(eps_apply, params, sde)``: ``score_fn(x, t) = −ε̂(x, t)/σ(t)``.

The returned functions close over ``params`` but do not jit anything, so ``params`` stay traced
when the caller jits the whole estimator with ``params`` as an argument — one compile serves every
parameter value (STYLE §3)::

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

Array = jax.Array
EpsApply = Callable[[Any, Array, Array], Array]

__all__ = ["as_eps_fn", "as_score_fn"]


def as_eps_fn(eps_apply: EpsApply, params) -> Callable[[Array, Array], Array]:
    """``eps_fn(x, t) = eps_apply(params, x, t)``: the network's ε̂ as a single-example function.

    Args:
      eps_apply: the network's apply, ``eps_apply(params, x, t)`` on one example.
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
        return eps_apply(params, x, t)

    return eps_fn


def as_score_fn(eps_apply: EpsApply, params, sde) -> Callable[[Array, Array], Array]:
    """``score_fn(x, t) = −eps_apply(params, x, t)/σ(t)`` with σ from ``sde.marginal_coefs``.

    Single example: ``x`` one example, ``t`` a scalar (DESIGN §2: s = −ε̂/σ).

    Args:
      eps_apply, params: as in :func:`as_eps_fn`.
      sde: the :class:`mmh_jax.sde.VPSDE` the network was trained with.

    Returns:
      ``score_fn(x, t) -> array like x``, ready for any :mod:`mmh_jax.lid` estimator.

    Examples:
      >>> import jax.numpy as jnp
      >>> from mmh_jax.sde import VPSDE
      >>> vp = VPSDE()
      >>> score_fn = as_score_fn(lambda p, x, t: x, None, vp)
      >>> sigma = vp.marginal_coefs(0.5)[1]
      >>> bool(jnp.allclose(score_fn(jnp.ones(3), 0.5), -1.0 / sigma))
      True
    """

    def score_fn(x, t):
        sigma = sde.marginal_coefs(t)[1]
        eps = eps_apply(params, x, t)
        return -eps / sigma.astype(eps.dtype)

    return score_fn
