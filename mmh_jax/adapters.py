"""The conversions between a VP-SDE model's ε-prediction, its score and its clean-data estimate.

With x_t = α(t)·x₀ + σ(t)·ε, a network that predicts the noise ε̂(x, t) gives

- the score s(x, t) = −ε̂(x, t)/σ(t)  ([`score_from_eps`][mmh_jax.adapters.score_from_eps]; back: ε̂ =
  −σ(t)·s, [`eps_from_score`][mmh_jax.adapters.eps_from_score]);
- the clean-data estimate x̂₀ = (x − σ(t)·ε̂)/α(t)  ([`x0_from_eps`][mmh_jax.adapters.x0_from_eps], DDIM's and
  Tweedie's step).

[`score_from_eps`][mmh_jax.adapters.score_from_eps] and [`eps_from_score`][mmh_jax.adapters.eps_from_score]
turn single-example functions ``f(x, t)`` into
single-example functions (batch them with ``jax.vmap``); the ``*_value`` forms and
[`x0_from_eps`][mmh_jax.adapters.x0_from_eps] act on arrays of any shape, with ``sigma``/``alpha``
broadcasting against them.
Flax networks are bound to parameters by [`mmh_jax.models.as_score_fn`][mmh_jax.models.as_score_fn] on top of
these. """

from __future__ import annotations

from typing import Callable

import jax

__all__ = ["eps_from_score", "eps_from_score_value", "score_from_eps", "score_from_eps_value", "x0_from_eps"]

Array = jax.Array


def score_from_eps_value(eps: Array, sigma: Array) -> Array:
    """s = −ε/σ on arrays; σ is cast to ε's dtype, so the score has the dtype of ε.

    Args:
      eps: ε-predictions, any shape.
      sigma: σ(t), an array broadcasting against ``eps``.

    Returns:
      the scores, shaped like ``eps``.

    Examples:
      >>> import jax.numpy as jnp
      >>> score_from_eps_value(jnp.array([0.5, -1.0]), jnp.float32(0.5)).tolist()
      [-1.0, 2.0]
    """
    return -eps / sigma.astype(eps.dtype)


def eps_from_score_value(score: Array, sigma: Array) -> Array:
    """ε = −σ·s on arrays.

    Args:
      score: scores, any shape.
      sigma: σ(t), broadcasting against ``score``.

    Returns:
      the ε-predictions, shaped like ``score``.

    Examples:
      >>> import jax.numpy as jnp
      >>> eps_from_score_value(jnp.array([-1.0, 2.0]), jnp.float32(0.5)).tolist()
      [0.5, -1.0]
    """
    return -sigma * score


def x0_from_eps(x: Array, eps: Array, alpha: Array, sigma: Array) -> Array:
    """The clean-data estimate x̂₀ = (x − σ·ε̂)/α of a state x at a time with coefficients (α, σ).

    Args:
      x: the state x_t, any shape.
      eps: the ε-prediction at x, shaped like ``x``.
      alpha: α(t) (``sde.marginal_coefs(t)[0]``), broadcasting against ``x``.
      sigma: σ(t), broadcasting against ``x``.

    Returns:
      x̂₀, shaped like ``x``.

    Examples:
      >>> import jax.numpy as jnp
      >>> x0_from_eps(jnp.array([1.0, 2.0]), jnp.array([1.0, 0.0]), 0.5, 1.0).tolist()
      [0.0, 4.0]
    """
    return (x - sigma * eps) / alpha


def score_from_eps(eps_fn: Callable, sde) -> Callable:
    """The score of an ε-prediction: s(x, t) = −ε̂(x, t)/σ(t), single example.

    Args:
      eps_fn: single-example ε-prediction ``eps_fn(x, t) -> array like x``.
      sde: a [`mmh_jax.sde.VPSDE`][mmh_jax.sde.VPSDE] (its σ(t)).

    Returns:
      the single-example ``score_fn(x, t)``, with the dtype of ε̂; pass it to any [`mmh_jax.lid`][mmh_jax.lid]
      estimator.

    Examples:
      >>> import jax.numpy as jnp
      >>> from mmh_jax.sde import VPSDE
      >>> vp = VPSDE()
      >>> s = score_from_eps(lambda x, t: x, vp)
      >>> bool(jnp.allclose(s(jnp.ones(2), 0.5), -1.0 / vp.marginal_coefs(0.5)[1]))
      True
    """

    def score_fn(x, t):
        return score_from_eps_value(eps_fn(x, t), sde.marginal_coefs(t)[1])

    return score_fn


def eps_from_score(score_fn: Callable, sde) -> Callable:
    """The ε-prediction of a score: ε̂(x, t) = −σ(t)·s(x, t), single example (e.g. to run DDIM on a guided score).

    Args:
      score_fn: single-example score ``score_fn(x, t) -> array like x``.
      sde: a [`mmh_jax.sde.VPSDE`][mmh_jax.sde.VPSDE] (its σ(t)).

    Returns:
      the single-example ``eps_fn(x, t)``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from mmh_jax.sde import VPSDE
      >>> vp = VPSDE()
      >>> e = eps_from_score(score_from_eps(lambda x, t: 2 * x, vp), vp)
      >>> bool(jnp.allclose(e(jnp.ones(2), 0.3), 2.0))
      True
    """

    def eps_fn(x, t):
        return eps_from_score_value(score_fn(x, t), sde.marginal_coefs(t)[1])

    return eps_fn
