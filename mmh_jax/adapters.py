"""The conversions between what a diffusion model predicts (ε̂, x̂₀, v̂, an EDM denoiser) and its score.

Every schedule is an object with ``marginal_coefs(t) -> (α(t), σ(t))`` for x_t = α(t)·x₀ + σ(t)·ε,
ε ~ N(0, I): [`mmh_jax.sde.VPSDE`][mmh_jax.sde.VPSDE], or your own (α² + σ² = 1 is not assumed).
A model's prediction turns into the score s(x, t) = ∇ₓ log p_t(x) as follows (α, σ at t):

| the model predicts | its adapter | the score s(x, t) |
| --- | --- | --- |
| the noise ε̂(x, t) | [`score_from_eps`][mmh_jax.adapters.score_from_eps] | −ε̂/σ |
| the clean data x̂₀(x, t) | [`score_from_x0`][mmh_jax.adapters.score_from_x0] | (α·x̂₀ − x)/σ² |
| the velocity v̂(x, t), v = α·ε − σ·x₀ | [`score_from_v`][mmh_jax.adapters.score_from_v] | −ε̂/σ, ε̂ = (α·v̂ + σ·x)/(α² + σ²) |
| EDM's denoiser D(x; σ) of x₀ + σ·n | [`score_from_edm_denoiser`][mmh_jax.adapters.score_from_edm_denoiser] | (α·D(x/α; σ/α) − x)/σ² |

Each adapter turns a single-example function ``f(x, t)`` (``x`` one example of any shape, ``t`` a
scalar) into a single-example ``score_fn(x, t)``, what every [`mmh_jax.lid`][mmh_jax.lid] estimator
takes (batch it with ``jax.vmap``). A network written for batches, ``f(xs[B, ...], ts[B])``, becomes
single-example with [`single_example`][mmh_jax.adapters.single_example];
[`check_single_example`][mmh_jax.adapters.check_single_example] tells the two kinds apart before
tracing. Back to ε̂, for the samplers: [`eps_from_score`][mmh_jax.adapters.eps_from_score],
[`eps_from_x0`][mmh_jax.adapters.eps_from_x0], [`eps_from_v`][mmh_jax.adapters.eps_from_v]; the clean-data
estimate of an ε̂ is x̂₀ = (x − σ·ε̂)/α ([`x0_from_eps`][mmh_jax.adapters.x0_from_eps], DDIM's and
Tweedie's step). The ``*_value`` forms and [`x0_from_eps`][mmh_jax.adapters.x0_from_eps] act on arrays
of any shape, with ``sigma``/``alpha`` broadcasting against them.
Flax networks are bound to parameters by [`mmh_jax.models.as_score_fn`][mmh_jax.models.as_score_fn] on top of
these.

References: Salimans & Ho, "Progressive Distillation for Fast Sampling of Diffusion Models", arXiv
2202.00512 (v-prediction); Karras et al., "Elucidating the Design Space of Diffusion-Based Generative
Models", arXiv 2206.00364 (the EDM denoiser).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

__all__ = [
    "check_single_example",
    "eps_from_score",
    "eps_from_score_value",
    "eps_from_v",
    "eps_from_x0",
    "score_from_edm_denoiser",
    "score_from_eps",
    "score_from_eps_value",
    "score_from_v",
    "score_from_x0",
    "single_example",
    "x0_from_eps",
]

Array = jax.Array


def _coefs(sde, t, dtype) -> tuple[Array, Array]:
    """(α(t), σ(t)) of ``sde`` as arrays of ``dtype``."""
    alpha, sigma = sde.marginal_coefs(t)
    return jnp.asarray(alpha, dtype), jnp.asarray(sigma, dtype)


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
      sde: the schedule the model was trained with, ``sde.marginal_coefs(t) -> (α, σ)`` (e.g. a
        [`mmh_jax.sde.VPSDE`][mmh_jax.sde.VPSDE]); only σ(t) is used.

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
      sde: the schedule, ``sde.marginal_coefs(t) -> (α, σ)`` (e.g. a [`mmh_jax.sde.VPSDE`][mmh_jax.sde.VPSDE]);
        only σ(t) is used.

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


def score_from_x0(x0_fn: Callable, sde) -> Callable:
    """The score of a clean-data prediction x̂₀(x, t) ≈ E[x₀ | x_t = x], single example.

    s(x, t) = (α(t)·x̂₀(x, t) − x)/σ(t)²  (Tweedie's formula E[x₀ | x] = (x + σ²·s)/α, solved for s).

    Args:
      x0_fn: single-example x̂₀-prediction ``x0_fn(x, t) -> array like x``.
      sde: the schedule the model was trained with, ``sde.marginal_coefs(t) -> (α, σ)`` for
        x_t = α·x₀ + σ·ε (α² + σ² need not be 1).

    Returns:
      the single-example ``score_fn(x, t)``, with the dtype of ``x`` and x̂₀ promoted together.

    Examples:
      >>> import jax.numpy as jnp
      >>> from mmh_jax.sde import VPSDE
      >>> vp = VPSDE()
      >>> x = jnp.array([1.0, -2.0])
      >>> s = score_from_x0(lambda x, t: jnp.zeros_like(x), vp)  # data = the point 0: s = −x/σ²
      >>> bool(jnp.allclose(s(x, 0.5), -x / vp.marginal_coefs(0.5)[1] ** 2))
      True
    """

    def score_fn(x, t):
        x0 = x0_fn(x, t)
        alpha, sigma = _coefs(sde, t, jnp.result_type(x, x0))
        return (alpha * x0 - x) / sigma**2

    return score_fn


def eps_from_x0(x0_fn: Callable, sde) -> Callable:
    """The ε-prediction of a clean-data prediction, ε̂(x, t) = (x − α(t)·x̂₀(x, t))/σ(t), single example.

    For the samplers that take ε̂ (e.g. [`mmh_jax.sample.ddim`][mmh_jax.sample.ddim]).

    Args:
      x0_fn: single-example x̂₀-prediction ``x0_fn(x, t) -> array like x``.
      sde: the schedule, ``sde.marginal_coefs(t) -> (α, σ)`` for x_t = α·x₀ + σ·ε.

    Returns:
      the single-example ``eps_fn(x, t)``, with the dtype of ``x`` and x̂₀ promoted together.

    Examples:
      >>> import jax.numpy as jnp
      >>> from mmh_jax.sde import VPSDE
      >>> vp = VPSDE()
      >>> x0, eps, (a, s) = jnp.array([1.0, 2.0]), jnp.array([0.5, -1.0]), vp.marginal_coefs(0.3)
      >>> e = eps_from_x0(lambda x, t: x0, vp)  # a perfect x̂₀ gives back the noise
      >>> bool(jnp.allclose(e(a * x0 + s * eps, 0.3), eps, atol=1e-5))
      True
    """

    def eps_fn(x, t):
        x0 = x0_fn(x, t)
        alpha, sigma = _coefs(sde, t, jnp.result_type(x, x0))
        return (x - alpha * x0) / sigma

    return eps_fn


def eps_from_v(v_fn: Callable, sde) -> Callable:
    """The ε-prediction of a v-prediction (v = α·ε − σ·x₀), single example.

    ε̂(x, t) = (α·v̂(x, t) + σ·x)/(α² + σ²), since α·v + σ·x = (α² + σ²)·ε for x = α·x₀ + σ·ε
    (any α, σ; the denominator is 1 on a variance-preserving schedule).

    Args:
      v_fn: single-example v-prediction ``v_fn(x, t) -> array like x``.
      sde: the schedule the model was trained with, ``sde.marginal_coefs(t) -> (α, σ)``.

    Returns:
      the single-example ``eps_fn(x, t)``, with the dtype of ``x`` and v̂ promoted together.

    Reference: Salimans & Ho, arXiv 2202.00512 (v-prediction).

    Examples:
      >>> import jax.numpy as jnp
      >>> from mmh_jax.sde import VPSDE
      >>> vp = VPSDE()
      >>> x0, eps, (a, s) = jnp.array([1.0, 2.0]), jnp.array([0.5, -1.0]), vp.marginal_coefs(0.3)
      >>> e = eps_from_v(lambda x, t: a * eps - s * x0, vp)  # a perfect v̂ gives back the noise
      >>> bool(jnp.allclose(e(a * x0 + s * eps, 0.3), eps, atol=1e-5))
      True
    """

    def eps_fn(x, t):
        v = v_fn(x, t)
        alpha, sigma = _coefs(sde, t, jnp.result_type(x, v))
        return (alpha * v + sigma * x) / (alpha**2 + sigma**2)

    return eps_fn


def score_from_v(v_fn: Callable, sde) -> Callable:
    """The score of a v-prediction (v = α·ε − σ·x₀), single example.

    s(x, t) = −ε̂(x, t)/σ(t) with ε̂ = (α·v̂ + σ·x)/(α² + σ²)
    ([`eps_from_v`][mmh_jax.adapters.eps_from_v]; α² + σ² need not be 1).

    Args:
      v_fn: single-example v-prediction ``v_fn(x, t) -> array like x``.
      sde: the schedule the model was trained with, ``sde.marginal_coefs(t) -> (α, σ)``.

    Returns:
      the single-example ``score_fn(x, t)``, with the dtype of ``x`` and v̂ promoted together.

    Reference: Salimans & Ho, arXiv 2202.00512 (v-prediction).

    Examples:
      >>> import jax.numpy as jnp
      >>> from mmh_jax.sde import VPSDE
      >>> vp = VPSDE()
      >>> x = jnp.array([1.0, -2.0])
      >>> score = score_from_v(lambda x, t: jnp.zeros_like(x), vp)  # data N(0, I): v̂ = 0, s = −x
      >>> bool(jnp.allclose(score(x, 0.5), -x, atol=1e-5))
      True
    """
    return score_from_eps(eps_from_v(v_fn, sde), sde)


def score_from_edm_denoiser(denoiser: Callable, sde) -> Callable:
    """The score of an EDM denoiser D(x; σ) ≈ E[x₀ | x₀ + σ·n = x], single example.

    EDM's models see x₀ + σ·n (no scaling: α = 1), where s = (D(x; σ) − x)/σ². A schedule with
    α(t) ≠ 1 is the same process seen through x/α = x₀ + (σ/α)·ε, so the model is called at x/α
    and noise level σ/α, and

      s(x, t) = (α·D(x/α; σ/α) − x)/σ²,  (α, σ) = sde.marginal_coefs(t).

    For EDM's own schedule pass an ``sde`` with ``marginal_coefs(t) = (1, t)`` (then t is σ).

    Args:
      denoiser: single-example denoiser ``denoiser(x, sigma) -> array like x``, ``sigma`` a
        scalar noise level (not a time); EDM's preconditioning (c_skip, c_out, c_in, c_noise)
        belongs inside it.
      sde: the schedule to read the score on, ``sde.marginal_coefs(t) -> (α, σ)``.

    Returns:
      the single-example ``score_fn(x, t)``, with the dtype of ``x`` and D promoted together.

    Reference: Karras et al., "Elucidating the Design Space of Diffusion-Based Generative Models",
    arXiv 2206.00364.

    Examples:
      >>> import jax.numpy as jnp
      >>> from mmh_jax.sde import VPSDE
      >>> vp = VPSDE()
      >>> x = jnp.array([1.0, -2.0])
      >>> denoiser = lambda y, sigma: y / (1 + sigma**2)  # data = N(0, I): D = y/(1 + σ²)
      >>> score = score_from_edm_denoiser(denoiser, vp)  # the VP marginal is N(0, I) too: s = −x
      >>> bool(jnp.allclose(score(x, 0.5), -x, atol=1e-5))
      True
    """

    def score_fn(x, t):
        alpha, sigma = sde.marginal_coefs(t)
        alpha, sigma = jnp.asarray(alpha), jnp.asarray(sigma)
        d = denoiser(x / alpha.astype(jnp.result_type(x)), sigma / alpha)
        alpha, sigma = alpha.astype(jnp.result_type(x, d)), sigma.astype(jnp.result_type(x, d))
        return (alpha * d - x) / sigma**2

    return score_fn


def single_example(batched_fn: Callable) -> Callable:
    """A batched network ``f(xs[B, ...], ts[B])`` as the single-example ``f(x, t)`` the estimators call.

    ``f(x, t, *args, **kwargs) = batched_fn(x[None], t.reshape(1), *args[None], **kwargs)[0]``: ``x``
    (one example) and ``t`` (a scalar) get a leading batch axis of size 1, and so does every extra
    positional argument (per-example inputs such as a class label); keyword arguments are passed
    unchanged (settings such as ``train=False``). Every output leaf loses its leading axis. Pure
    ``jax.numpy``: composes with ``jit``, ``vmap`` (which batches the calls again) and ``grad``.

    Args:
      batched_fn: ``batched_fn(xs, ts, *args, **kwargs)`` with ``xs`` of shape ``(B, ...)`` and ``ts``
        of shape ``(B,)``, returning arrays (or a pytree of arrays) with a leading axis ``B``.

    Returns:
      the single-example ``fn(x, t, *args, **kwargs)``; wrap it with an adapter (e.g.
      [`score_from_eps`][mmh_jax.adapters.score_from_eps]) for the estimators.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> batched = lambda xs, ts: xs * ts[:, None]  # indexes ts[:, None]: fails on a scalar t
      >>> f = single_example(batched)
      >>> f(jnp.array([1.0, 2.0]), 0.5).tolist()
      [0.5, 1.0]
      >>> jax.vmap(f)(jnp.ones((3, 2)), jnp.array([1.0, 2.0, 3.0])).shape
      (3, 2)
    """

    def fn(x, t, *args, **kwargs):
        add = lambda a: jnp.expand_dims(jnp.asarray(a), 0)  # noqa: E731
        args = jax.tree.map(add, args)
        out = batched_fn(add(x), jnp.reshape(jnp.asarray(t), (1,)), *args, **kwargs)
        return jax.tree.map(lambda o: o[0], out)

    return fn


def _first_line(err: BaseException) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__


def check_single_example(name: str, fn: Callable, x, t) -> None:
    """Check, before tracing, that ``fn(x, t)`` takes one example and returns an array shaped like it.

    Runs ``jax.eval_shape(fn, x, t)`` (no FLOPs). A network written for batches fails here in one
    of two ways: it raises inside (e.g. ``ts[:, None]`` on a scalar ``t``), or it returns another
    shape; both become a ValueError naming ``name``, the shapes and the fix,
    [`single_example`][mmh_jax.adapters.single_example].

    Args:
      name: the argument's name in the error message (e.g. ``"score_fn"``).
      fn: the function to check, called as ``fn(x, t)``.
      x: one example, any shape (an array or a ``jax.ShapeDtypeStruct``).
      t: a scalar time.

    Raises:
      ValueError: ``fn(x, t)`` raises (the original error is chained, its first line quoted) or
        returns something that is not an array of ``x``'s shape.

    Examples:
      >>> import jax.numpy as jnp
      >>> x = jnp.ones(3)
      >>> check_single_example("score_fn", lambda x, t: -x, x, 0.5)  # passes silently
      >>> try:
      ...     check_single_example("score_fn", lambda xs, ts: xs * ts[:, None], x, 0.5)
      ... except ValueError as e:
      ...     print("single_example(batched_fn)" in str(e))
      True
    """
    x_shape, t_shape = tuple(jnp.shape(x)), tuple(jnp.shape(t))
    fix = (f"The estimators call {name}(x, t) on ONE example (x of shape {x_shape}, t a scalar) and need an "
           f"array shaped like x back. If {name} is written for batches (xs[B, ...], ts[B] -> [B, ...]), "
           f"wrap it: mmh_jax.adapters.single_example(batched_fn).")
    try:
        out = jax.eval_shape(fn, x, t)
    except Exception as err:  # whatever a batched network raises on one example
        raise ValueError(f"{name}(x, t) failed on x of shape {x_shape} and t of shape {t_shape} with "
                         f"{_first_line(err)}. {fix}") from err
    out_shape = getattr(out, "shape", None)
    if out_shape != x_shape:
        seen = f"shape {tuple(out_shape)}" if out_shape is not None else f"a {type(out).__name__}"
        raise ValueError(f"{name}(x, t) returned {seen} for x of shape {x_shape} and t of shape {t_shape}. {fix}")
