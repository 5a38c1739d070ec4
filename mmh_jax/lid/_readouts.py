"""Readouts of a FLIPD curve (FLIPD over a grid of t₀): its knee and its plateau, both jittable."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from mmh_jax import _checks

Array = jax.Array

#: Default of ``max_slope``: the largest change of a FLIPD curve, in units of LID per decade of t₀,
#: that still counts as a plateau. Why this value: docs/benchmark.md, "Readouts that say when they cannot read".
MAX_SLOPE = 4.0

#: With ``ambient_dim`` = D < SLOPE_DIM, ``max_slope`` is scaled by D/SLOPE_DIM: a curve of 2-D data
#: spans only [0, 2], and a limit of `MAX_SLOPE` per decade would call its whole fall flat.
SLOPE_DIM = 10.0

#: With ``ambient_dim`` given, a window whose level is at least ``ambient_dim − UNRESOLVED_MARGIN``
#: is read only when no lower window is flat: there the network may not resolve the manifold (FLIPD ≈ D).
UNRESOLVED_MARGIN = 0.5


def knee(t0s, curve, *, window: int = 2, t0_max: float = 0.5, max_slope: float | None = MAX_SLOPE,
         ambient_dim: float | None = None) -> tuple[Array, Array]:
    """Knee of a FLIPD curve: kneedle on the first excursion after its plateau; jittable.

    Kneedle (Satopää et al.): rescale both axes to [0, 1] (time on a log scale, since grids are
    geometric) and take the grid point farthest, vertically, from the chord joining the segment's
    ends. Kneedle assumes the curve starts on its plateau (at LID_θ) and bends off it; the segment
    is chosen so that it does:

    * it starts at the flattest stretch of the curve ([`plateau`][mmh_jax.lid.plateau]'s window of
      ``2·window + 1``
      points with the least spread, centres at t₀ ≤ ``t0_max``). A trained network does not resolve
      a low-dimensional piece of its manifold at the finest scales, so there its curve *falls*
      from near D onto the plateau; kneedle over that fall would take the corner at its top, not
      the plateau. Exact scores plateau from the smallest t₀, and then the segment starts at the
      grid's start;
    * it ends where the curve is farthest from its starting value. A plateau that then falls
      (the usual shape) runs to the end of the grid; at an isolated low-dimensional point (a point
      mass, a thin stick beside a disk) the curve first plateaus at the point's small LID and then
      *rises* while the noise reaches the neighbouring components, before falling again: the
      segment ends at the top of that bump, which puts the knee where the plateau ends.

    A curve without a plateau cannot be read: when even the flattest window changes by more than
    ``max_slope`` per decade of t₀ (a trained network that never settles on one dimension), the
    knee's value is NaN, as is [`plateau`][mmh_jax.lid.plateau]'s.

    Args:
      t0s: ``(n,)`` positive times, in any order; n ≥ 3.
      curve: ``(n,)`` values at those times.
      window: half-width of the plateau window, in grid points (static); a grid of fewer than
        ``2·window + 1`` points starts the segment at its smallest t₀.
      t0_max: largest plateau-window centre searched (see [`plateau`][mmh_jax.lid.plateau]).
      max_slope: see [`plateau`][mmh_jax.lid.plateau]; ``None`` never flags. A grid shorter than
        ``2·window + 1`` points has no window to judge and is never flagged.
      ambient_dim: see [`plateau`][mmh_jax.lid.plateau].

    Returns:
      ``(t0_star, value_at_knee)``, two scalars; ``value_at_knee`` is NaN when the curve has no
      plateau.

    Raises:
      TypeError: non-float ``t0s`` or ``curve``, ``window`` not an int.
      ValueError: ``t0s`` or ``curve`` not 1-D, of different shapes, with fewer than 3 points, or
        ``window`` < 1.

    Reference: Satopää et al., "Finding a 'Kneedle' in a Haystack" (2011); FLIPD's knee readout,
    Kamkari et al. (arXiv 2406.03537).

    Examples:
      >>> import jax.numpy as jnp
      >>> from mmh_jax import lid
      >>> t0s = jnp.geomspace(1e-3, 1.0, 7)
      >>> t, v = lid.knee(t0s, jnp.array([2.0, 2.0, 2.0, 2.0, 1.0, 0.5, 0.0]))
      >>> float(v)
      2.0
      >>> t, v = lid.knee(t0s, jnp.array([0.0, 0.0, 0.0, 0.0, 1.5, 0.6, 0.1]))  # plateau, bump
      >>> float(v)
      0.0
      >>> t, v = lid.knee(t0s, jnp.array([1.6, 0.9, 0.0, 0.0, 0.0, 1.2, 0.0]), window=1)  # unresolved
      >>> float(v)
      0.0
    """
    t0s = _checks.float_array("t0s", t0s, ndim=1)
    curve = _checks.float_array("curve", curve, ndim=1)
    _checks.same_shape("t0s", t0s, "curve", curve)
    n = t0s.shape[0]
    if n < 3:
        raise ValueError(f"knee needs at least 3 points on the curve, got {n}.")
    window = _checks.positive_int("window", window)
    return _knee(t0s, curve, window, t0_max, *_limits(max_slope, ambient_dim))


def _limits(max_slope, ambient_dim) -> tuple[Any, Any]:
    """``(limit, ambient_dim)``: ``max_slope`` (inf for None) scaled by min(1, D/`SLOPE_DIM`) when D
    is given, both checked (None or a number > 0)."""
    for name, v in (("max_slope", max_slope), ("ambient_dim", ambient_dim)):
        if v is not None and not isinstance(v, jax.Array) and not float(v) > 0:
            raise ValueError(f"{name} must be None or a number > 0, got {name}={v!r}.")
    limit = jnp.inf if max_slope is None else max_slope
    if ambient_dim is not None:
        limit = limit * jnp.minimum(1.0, jnp.asarray(ambient_dim, jnp.float32) / SLOPE_DIM)
    return limit, ambient_dim


@functools.partial(jax.jit, static_argnums=2)  # jitted: called eagerly, its many small ops would dispatch one by one
def _knee(t0s: Array, curve: Array, window: int, t0_max, max_slope, ambient_dim) -> tuple[Array, Array]:
    n = t0s.shape[0]
    order = jnp.argsort(t0s)
    t, y = t0s[order], curve[order]
    idx = jnp.arange(n)
    if n >= 2 * window + 1:
        centre, slope = _flattest(t, y, window, t0_max, ambient_dim, max_slope)
        start = jnp.minimum(centre - window, n - 3)
        readable = slope <= max_slope
    else:
        start = jnp.zeros((), idx.dtype)
        readable = jnp.bool_(True)
    after = idx >= start
    y0 = y[start]
    end = jnp.argmax(jnp.where(after, jnp.abs(y - y0), -1.0))
    end = jnp.maximum(end, start + 2)  # at least 3 points in the segment
    inside = after & (idx <= end)
    u = jnp.log(t)
    tiny = jnp.finfo(jnp.float32).tiny
    u = (u - u[start]) / jnp.maximum(u[end] - u[start], tiny)
    y_lo = jnp.min(jnp.where(inside, y, jnp.inf))
    y_hi = jnp.max(jnp.where(inside, y, -jnp.inf))
    yn = (y - y_lo) / jnp.maximum(y_hi - y_lo, tiny)
    chord = yn[start] + (yn[end] - yn[start]) * u
    i = jnp.argmax(jnp.where(inside, jnp.abs(yn - chord), -1.0))
    return t[i], jnp.where(readable, y[i], jnp.nan)


def _flattest(t: Array, y: Array, window: int, t0_max, ambient_dim, max_slope) -> tuple[Array, Array]:
    """``(centre, slope)`` of the plateau window: of the windows of ``2·window + 1`` points with
    centres at t ≤ ``t0_max`` (all centres if none qualifies), the one of least change per decade
    of t ((max − min) / Δlog₁₀ t). With ``ambient_dim``, windows at level (mean) ≥ ``ambient_dim −
    UNRESOLVED_MARGIN`` are taken only when no window below that level is within ``max_slope``;
    ``t`` sorted ascending."""
    n = t.shape[0]
    centres = jnp.arange(window, n - window)
    wins = y[centres[:, None] + jnp.arange(-window, window + 1)[None, :]]  # (n − 2w, 2w + 1), static
    decades = jnp.log10(t[centres + window]) - jnp.log10(t[centres - window])
    slope = (jnp.max(wins, axis=1) - jnp.min(wins, axis=1)) / jnp.maximum(decades, jnp.finfo(t.dtype).tiny)
    allowed = t[centres] <= t0_max
    allowed = jnp.where(jnp.any(allowed), allowed, True)
    c = jnp.argmin(jnp.where(allowed, slope, jnp.inf))
    if ambient_dim is not None:
        below = allowed & (jnp.mean(wins, axis=1) < ambient_dim - UNRESOLVED_MARGIN)
        c_below = jnp.argmin(jnp.where(below, slope, jnp.inf))
        c = jnp.where(below[c_below] & (slope[c_below] <= max_slope), c_below, c)
    return centres[c], slope[c]


def plateau(t0s, curve, *, window: int = 2, t0_max: float = 0.5, max_slope: float | None = MAX_SLOPE,
            ambient_dim: float | None = None) -> tuple[Array, Array]:
    """The flattest stretch of a FLIPD curve and its level; jittable.

    For each grid point i (times sorted), the slope of the curve over the window
    ``curve[i − window : i + window + 1]`` is its max − min per decade of t₀ spanned; the plateau is
    the window of least slope among centres with t₀ ≤ ``t0_max``, and its value the window's mean.

    It says when it cannot read: if even that window changes by more than ``max_slope`` per decade,
    the curve has no plateau and the value is NaN (not a number with a spread of several
    dimensions). With ``ambient_dim`` = D, a window at level ≥ D − ``UNRESOLVED_MARGIN`` is read
    only when no window below it is flat (within ``max_slope``): a flat stretch at ≈ D at the
    smallest t₀ is where a network does not resolve the manifold, and the plateau at the manifold's
    LID, if any, lies after it; full-dimensional data, flat at D throughout, still read D.

    Why, beside [`knee`][mmh_jax.lid.knee]: a trained network does not resolve a low-dimensional piece of its
    manifold at the finest scales, so at tiny t₀ its FLIPD climbs back towards D; and at large t₀
    every point's curve collapses to 0 (the marginal approaches N(0, I)). The LID is the level in
    between, where the curve is flat. Kneedle takes the corner of the first drop (or of a bump) for
    it; the plateau rule reads the level itself. ``t0_max`` keeps the collapse out of the search
    (on the default VP-SDE, t₀ = 0.5 is σ ≈ 0.99).

    Args:
      t0s: ``(n,)`` positive times, in any order; n ≥ 2·window + 1.
      curve: ``(n,)`` values at those times.
      window: half-width of the window, in grid points (static).
      t0_max: largest window centre searched; if no centre qualifies, all are searched.
      max_slope: largest change per decade of t₀ (LID units) of a plateau (default `MAX_SLOPE`),
        scaled by D/10 when ``ambient_dim`` = D is below 10; ``None`` never flags.
      ambient_dim: the data's dimension D, to prefer a plateau below the unresolved stretch at ≈ D
        (None: every window competes on flatness alone).

    Returns:
      ``(t0_star, value)``: the centre of the flattest window and the curve's mean over it; the
      value is NaN when no window is flat enough (``t0_star`` is then that of the flattest).

    Raises:
      TypeError: non-float ``t0s`` or ``curve``, ``window`` not an int.
      ValueError: ``t0s``/``curve`` not 1-D or of different shapes, ``window`` < 1, or fewer than
        2·window + 1 points.

    Reference: the FLIPD curve of Kamkari et al., arXiv 2406.03537.

    Examples:
      >>> import jax.numpy as jnp
      >>> from mmh_jax import lid
      >>> t0s = jnp.geomspace(1e-3, 1.0, 9)
      >>> curve = jnp.array([1.8, 1.2, 0.1, 0.0, 0.0, 0.1, 1.4, 0.3, 0.0])  # unresolved, plateau, bump, collapse
      >>> t, v = lid.plateau(t0s, curve, window=1)
      >>> round(float(v), 3)
      0.033
    """
    t0s = _checks.float_array("t0s", t0s, ndim=1)
    curve = _checks.float_array("curve", curve, ndim=1)
    _checks.same_shape("t0s", t0s, "curve", curve)
    window = _checks.positive_int("window", window)
    n = t0s.shape[0]
    if n < 2 * window + 1:
        raise ValueError(f"plateau needs at least 2*window + 1 = {2 * window + 1} points, got {n}.")
    return _plateau(t0s, curve, window, t0_max, *_limits(max_slope, ambient_dim))


@functools.partial(jax.jit, static_argnums=2)  # jitted for eager callers, as _knee
def _plateau(t0s: Array, curve: Array, window: int, t0_max, max_slope, ambient_dim) -> tuple[Array, Array]:
    order = jnp.argsort(t0s)
    t, y = t0s[order], curve[order]
    c, slope = _flattest(t, y, window, t0_max, ambient_dim, max_slope)
    level = jnp.mean(lax.dynamic_slice(y, (c - window,), (2 * window + 1,)))
    return t[c], jnp.where(slope <= max_slope, level, jnp.nan)
