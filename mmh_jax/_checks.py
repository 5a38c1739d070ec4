"""Trace-time argument checks shared by the library.

Every error names the argument, the value received and what is expected. Checks on values (ranges,
finiteness) run only when the value is concrete, so the checked functions still trace under jit/vmap.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import jax
import jax.numpy as jnp
import numpy as np


def is_concrete(x: Any) -> bool:
    return not isinstance(x, jax.core.Tracer)


def float_array(name: str, x: Any, *, min_ndim: int = 0, ndim: int | None = None) -> jax.Array:
    """Return ``x`` as a floating JAX array; raise TypeError/ValueError naming ``name`` otherwise."""
    if isinstance(x, (list, tuple)):
        x = np.asarray(x)
    dtype = getattr(x, "dtype", None)
    if dtype is None:
        if isinstance(x, (bool, int)):
            raise TypeError(f"{name} must be a floating-point array, got the integer {x!r}; pass a float.")
        x = jnp.asarray(x, jnp.float32)
        dtype = x.dtype
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(
            f"{name} must have a floating-point dtype, got dtype {dtype}; convert it, e.g. "
            f"{name}.astype(jnp.float32)."
        )
    shape = jnp.shape(x)
    if ndim is not None and len(shape) != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {shape}.")
    if len(shape) < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dimension(s), got shape {shape}.")
    return jnp.asarray(x)


def leading_axis(name: str, a: Any) -> int:
    """The length of ``a``'s leading axis (its number of points); a scalar raises ValueError."""
    shape = jnp.shape(a)
    if len(shape) == 0:
        raise ValueError(f"{name} must have a leading axis of points, got a scalar of shape ().")
    return shape[0]


def time_range(sde) -> tuple[float, float] | None:
    """A noise schedule's valid times as concrete floats ``(t_min, T)``, or None when either is traced.

    Times are valid in (0, T] when ``t_min`` is 0 and in [t_min, T] otherwise (``docs/design.md#noise-schedules``);
    a schedule without a ``t_min`` has t_min = 0.
    """
    t_min = getattr(sde, "t_min", 0.0)
    if not (is_concrete(t_min) and is_concrete(sde.T)):
        return None
    return float(np.asarray(t_min)), float(np.asarray(sde.T))


def range_text(sde, t_min: float, T: float) -> str:
    """The valid times of ``sde`` for an error message: ``(0, T] = (0, 1.0]`` or ``[t_min, T] = [...] of EDMSDE``."""
    if t_min <= 0.0:
        return f"(0, T] = (0, {T}]"
    return f"[t_min, T] = [{t_min}, {T}] of {type(sde).__name__}"


def in_time_range(t, sde) -> jax.Array:
    """Elementwise ``t`` in the schedule's valid times, for traced times (concrete ones raise instead)."""
    ok = (t > 0) & (t <= sde.T)
    t_min = getattr(sde, "t_min", 0.0)
    if not (is_concrete(t_min) and float(np.asarray(t_min)) == 0.0):
        ok = ok & (t >= t_min)
    return ok


def scalar_time(name: str, t: Any, sde, *, allow_array: bool = False) -> jax.Array:
    """A diffusion time in the schedule's range ((0, T], or [t_min, T]); range-checked when concrete."""
    t = float_array(name, t)
    if not allow_array and jnp.ndim(t) != 0:
        raise ValueError(f"{name} must be a scalar time, got shape {jnp.shape(t)}; vmap over times instead.")
    rng = time_range(sde)
    if is_concrete(t) and rng is not None:
        t_min, T = rng
        tv = np.asarray(t)
        ok = (tv > 0) & (tv >= t_min) & (tv <= T)
        if not np.all(ok):
            bad = tv if tv.ndim == 0 else tv[~ok][:3]
            raise ValueError(f"{name} must lie in {range_text(sde, t_min, T)}, got {bad}.")
    return t


def positive_int(name: str, v: Any, *, minimum: int = 1) -> int:
    """``v`` as an int ``>= minimum``; a bool or a non-integer raises TypeError, a smaller int ValueError."""
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{name} must be a Python int, got {v!r} of type {type(v).__name__}.")
    if v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v}.")
    return int(v)


def option(name: str, v: Any, choices: Iterable[str]) -> str:
    choices = tuple(choices)
    if v not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {v!r}.")
    return v


def same_shape(name_a: str, a: Any, name_b: str, b: Any) -> None:
    if jnp.shape(a) != jnp.shape(b):
        raise ValueError(
            f"{name_a} and {name_b} must have the same shape, got {jnp.shape(a)} and {jnp.shape(b)}."
        )


def points(name: str, x: Any, *, event_shape: tuple[int, ...] | None = None, other: str = "train") -> jax.Array:
    """``x`` (N, *event) as a float32 (N, D) matrix; checks dtype, rank, event shape, finiteness.

    ``event_shape`` (when given) must equal ``x.shape[1:]``; ``other`` names the set it comes from.
    """
    x = float_array(name, x, min_ndim=2)
    if event_shape is not None and tuple(x.shape[1:]) != tuple(event_shape):
        raise ValueError(
            f"{name} must have the event shape of {other}, {tuple(event_shape)}, got shape "
            f"{tuple(x.shape)}; pass {name} of shape (M, {', '.join(map(str, event_shape))})."
        )
    if math.prod(x.shape[1:]) == 0:
        raise ValueError(f"{name} must have a non-empty event shape, got shape {tuple(x.shape)}.")
    if is_concrete(x):
        bad = int(jnp.size(x) - jnp.count_nonzero(jnp.isfinite(x)))
        if bad:
            raise ValueError(
                f"{name} contains {bad} non-finite value(s) (NaN or inf); remove or impute those examples."
            )
    return x.reshape(x.shape[0], math.prod(x.shape[1:])).astype(jnp.float32)
