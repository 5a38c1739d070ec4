"""Score-based LID estimators: FLIPD and its curve, FPRegress, the normal bundle, CFDM, CFG norm.

All are pure single-example functions of a score function ``score_fn(x, t) -> array like x``;
batch them with ``jax.vmap`` or ``mmh_jax.parallel.map_points``. The curve's readouts (``knee``,
``plateau``) are in ``_readouts``.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from mmh_jax import _checks
from mmh_jax.adapters import check_single_example
from mmh_jax.lid._lidl import NOISE_SCALES
from mmh_jax.lid._trace import TRACES, exact_trace, hutchinson_trace, rademacher_probes, resolve_trace

Array = jax.Array
ScoreFn = Callable[[Array, Array], Array]


def _prepare(x, key, trace: str, num_probes: int):
    """Shared checks of FLIPD-type estimators; returns (x, method, probes or None)."""
    x = _checks.float_array("x", x, min_ndim=1)
    _checks.option("trace", trace, TRACES)
    num_probes = _checks.positive_int("num_probes", num_probes)
    method = resolve_trace(trace, x.size)
    if method == "hutchinson":
        if key is None:
            raise ValueError("key must be a PRNG key when trace='hutchinson' (or 'auto' with D > 3500), got None.")
        return x, method, rademacher_probes(key, x.shape, num_probes)
    return x, method, None


def _check_score_shape(name: str, score_fn: ScoreFn, x: Array, t: Array) -> None:
    """The score must map one example to an array of the same shape (checked abstractly, no FLOPs); a
    function written for batches gets a message naming `mmh_jax.adapters.single_example`."""
    check_single_example(name, score_fn, x, t)


def _nan_outside(value: Array, t: Array, sde) -> Array:
    """``value`` where the times ``t`` lie in the schedule's range ((0, T], or [t_min, T]), NaN
    elsewhere, as ``jnp.log(-1)`` is NaN.

    Concrete times were range-checked (ValueError) by `_checks.scalar_time`; traced ones (under
    jit/vmap/grad) cannot raise, and e.g. t = 0 would otherwise give a finite, wrong value. ``t`` has
    ``value``'s shape (elementwise), or any shape for a scalar ``value`` (then every time must be in range).
    """
    if _checks.is_concrete(t) and _checks.time_range(sde) is not None:
        return value  # checked already: no extra op
    ok = _checks.in_time_range(t, sde)
    ok = ok if ok.shape == value.shape else jnp.all(ok)
    return jnp.where(ok, value, jnp.nan).astype(value.dtype)


def _flipd_at(score_fn: ScoreFn, x: Array, t0: Array, sde, method: str, probes, chunk_size) -> Array:
    """FLIPD(x, t0) = D + σ²·[tr ∇_y s(y, t0) + ‖s(y, t0)‖²] at y = α(t0)·x, for any schedule (α, σ)
    (docs/design.md#noise-schedules)."""
    alpha, sigma = sde.marginal_coefs(t0)
    field = lambda y: score_fn(y, t0)  # noqa: E731
    y = alpha * x
    if method == "exact":
        s, tr = exact_trace(field, y, chunk_size=chunk_size)
    else:
        s, tr = hutchinson_trace(field, y, probes, chunk_size=chunk_size)
    return (x.size + sigma**2 * (tr + jnp.sum(s.astype(jnp.float32) ** 2))).astype(jnp.float32)


def flipd(
    score_fn: ScoreFn,
    x,
    key=None,
    *,
    t0,
    sde,
    trace: str = "auto",
    num_probes: int = 1,
    chunk_size: int | None = None,
) -> Array:
    """FLIPD estimate of the model's local intrinsic dimension LID_θ(x) at one noise level.

    FLIPD(x, t₀) = D + σ(t₀)²·[tr ∇_y s(y, t₀) + ‖s(y, t₀)‖²],  y = α(t₀)·x,
    i.e. D + ∂ log ϱ(x; δ)/∂δ for the Gaussian-smoothed model density ϱ, on any noise schedule
    ([`mmh_jax.sde`][mmh_jax.sde]). It tends to LID_θ(x) as t₀ → 0 for a perfect score; read it at a
    fixed t₀ (0.05 on the default schedule) or at the knee of [`flipd_curve`][mmh_jax.lid.flipd_curve].

    Args:
      score_fn: single-example score ``score_fn(x, t) -> array like x``.
      x: one example, any event shape (``(D,)`` or ``(H, W, C)``), floating point.
      key: PRNG key for the Hutchinson probes (unused, may be None, for the exact trace).
      t0: diffusion time in the schedule's range, (0, T] (or [t_min, T] when its ``t_min`` > 0, as
        for [`EDMSDE`][mmh_jax.sde.EDMSDE]); traced, so it can be swept or differentiated. A traced t0
        outside it gives NaN (as ``jnp.log(-1)`` does); a concrete one raises ValueError.
      sde: a noise schedule of [`mmh_jax.sde`][mmh_jax.sde] (e.g. [`VPSDE`][mmh_jax.sde.VPSDE]).
      trace: ``"exact"`` (D JVPs), ``"hutchinson"`` (Rademacher probes) or ``"auto"``
        (exact when D ≤ 3500).
      num_probes: Hutchinson probes (≥ 1).
      chunk_size: JVPs evaluated at once: basis vectors of the exact trace (default 256), or
        Hutchinson probes (default: all ``num_probes``). Memory is that of ``chunk_size`` JVPs
        (measured on a U-Net in ``bench/bench_memory.py``); Hutchinson chunks smaller than
        ``num_probes`` each recompute the forward pass.

    Returns:
      float32 scalar; NaN when a traced ``t0`` lies outside the schedule's range.

    Raises:
      TypeError/ValueError: non-float ``x``, ``x`` of rank 0, unknown ``trace``, ``num_probes < 1``,
        concrete ``t0`` outside the schedule's range.

    Reference: Kamkari et al., "A Geometric View of Data Complexity", arXiv 2406.03537.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from mmh_jax import lid, sde
      >>> vp = sde.VPSDE()
      >>> score = lambda x, t: -x  # data = N(0, I) in R^3: FLIPD = 3·α(t0)², → 3 as t0 → 0
      >>> round(float(lid.flipd(score, jnp.zeros(3), None, t0=0.05, sde=vp)), 3)
      2.912
      >>> round(float(lid.flipd(score, jnp.zeros(3), None, t0=1e-4, sde=vp)), 3)
      3.0
    """
    x, method, probes = _prepare(x, key, trace, num_probes)
    t0 = _checks.scalar_time("t0", t0, sde)
    _check_score_shape("score_fn", score_fn, x, t0)
    return _nan_outside(_flipd_at(score_fn, x, t0, sde, method, probes, chunk_size), t0, sde)


def flipd_curve(
    score_fn: ScoreFn,
    x,
    key=None,
    *,
    t0s,
    sde,
    trace: str = "auto",
    num_probes: int = 1,
    chunk_size: int | None = None,
) -> Array:
    """FLIPD over a grid of times, ``t0s`` of shape ``(n,)`` → ``(n,)``.

    The Hutchinson probes are drawn once from ``key`` and reused at every t₀, so the curve is
    smooth; ``t0s`` is traced, so a jitted curve compiles once for all grids of the same length.
    Read the knee with [`knee`][mmh_jax.lid.knee]. Arguments as in [`flipd`][mmh_jax.lid.flipd].

    Args:
      t0s: ``(n,)`` diffusion times in the schedule's range, n ≥ 1 (traced: a new grid of the same
        length reuses the compiled curve).

    Returns:
      float32 ``(n,)``: FLIPD(x, t0s[i]) for each i; NaN at the traced times outside the schedule's
      range (as ``jnp.log(-1)`` is NaN).

    Raises:
      TypeError/ValueError: as [`flipd`][mmh_jax.lid.flipd], and ``t0s`` not 1-D or empty.

    Reference: Kamkari et al., arXiv 2406.03537 (the FLIPD curve and its knee).

    Examples:
      >>> import jax.numpy as jnp
      >>> from mmh_jax import lid, sde
      >>> curve = lid.flipd_curve(lambda x, t: -x, jnp.ones(2), t0s=jnp.array([0.1, 0.5]), sde=sde.VPSDE())
      >>> curve.shape
      (2,)
    """
    x, method, probes = _prepare(x, key, trace, num_probes)
    t0s = _checks.scalar_time("t0s", t0s, sde, allow_array=True)
    if t0s.ndim != 1:
        raise ValueError(f"t0s must be a 1-D grid of times, got shape {t0s.shape}.")
    if t0s.shape[0] == 0:  # t0s[0] below would raise a bare IndexError
        raise ValueError("t0s must hold at least one time, got an empty grid of shape (0,); pass e.g. "
                         "t0s=jnp.geomspace(1e-3, 1.0, 32).")
    _check_score_shape("score_fn", score_fn, x, t0s[0])
    curve = jax.vmap(lambda t0: _flipd_at(score_fn, x, t0, sde, method, probes, chunk_size))(t0s)
    return _nan_outside(curve, t0s, sde)


def fp_regress(
    score_fn: ScoreFn,
    x,
    key=None,
    *,
    sde,
    deltas=None,
    trace: str = "auto",
    num_probes: int = 1,
    num_substeps: int = 4,
    chunk_size: int | None = None,
) -> Array:
    """FPRegress: LIDL with a single diffusion model.

    Since FLIPD(x, δ) = D + ∂ log ϱ(x; δ)/∂δ, the log density of the smoothed model at x is, up to
    a constant, log ϱ(x; δ) = ∫ (FLIPD(x, δ′) − D) dδ′ (trapezoid rule, ``num_substeps`` intervals
    between consecutive grid points). LID = D + least-squares slope of log ϱ against δ.

    Args:
      deltas: ``(m,)`` log noise scales δ = log(σ/α), m ≥ 2; default
        ``log(geomspace(0.01, 0.1, 8))``. Each must map to a time in the schedule's range: concrete
        ones that do not raise ValueError, traced ones give NaN (as ``jnp.log(-1)`` does).
      num_substeps: quadrature intervals between consecutive deltas.
      others: as in [`flipd`][mmh_jax.lid.flipd]; the probes are shared across all δ.

    Returns:
      float32 scalar; NaN when traced ``deltas`` map to a time outside the schedule's range.

    Raises:
      TypeError/ValueError: as [`flipd`][mmh_jax.lid.flipd]; ``deltas`` not 1-D, with fewer than 2 values, or
        (concrete) mapping to times outside the schedule's range; ``num_substeps`` not an int ≥ 1.

    Reference: Kamkari et al., arXiv 2406.03537 (FLIPD and FPRegress); Tempczyk et al., "LIDL",
    arXiv 2206.14882.

    Examples:
      >>> import jax.numpy as jnp
      >>> from mmh_jax import lid, sde
      >>> round(float(lid.fp_regress(lambda x, t: -x, jnp.zeros(2), sde=sde.VPSDE())), 2)
      2.0
    """
    x, method, probes = _prepare(x, key, trace, num_probes)
    num_substeps = _checks.positive_int("num_substeps", num_substeps)
    if deltas is None:
        deltas = np.log(NOISE_SCALES).astype(np.float32)
    deltas = _checks.float_array("deltas", deltas, ndim=1)
    if deltas.shape[0] < 2:
        raise ValueError(f"deltas needs at least 2 log noise scales, got shape {deltas.shape}.")
    deltas = jnp.sort(deltas)
    _checks.scalar_time("t_from_delta(deltas)", sde.t_from_delta(deltas), sde, allow_array=True)
    frac = jnp.arange(num_substeps, dtype=jnp.float32) / num_substeps
    fine = (deltas[:-1, None] + (deltas[1:] - deltas[:-1])[:, None] * frac[None, :]).reshape(-1)
    fine = jnp.concatenate([fine, deltas[-1:]])
    ts = sde.t_from_delta(fine)
    _check_score_shape("score_fn", score_fn, x, ts[0])
    rate = jax.vmap(lambda t: _flipd_at(score_fn, x, t, sde, method, probes, chunk_size))(ts) - x.size
    steps = 0.5 * (rate[1:] + rate[:-1]) * jnp.diff(fine)
    log_rho = jnp.concatenate([jnp.zeros(1), jnp.cumsum(steps)])[::num_substeps]
    dc = deltas - jnp.mean(deltas)
    slope = jnp.sum(dc * (log_rho - jnp.mean(log_rho))) / jnp.sum(dc**2)
    return _nan_outside((x.size + slope).astype(jnp.float32), ts, sde)


def normal_bundle(
    score_fn: ScoreFn,
    x,
    key,
    *,
    t=0.01,
    sde,
    num_samples: int | None = None,
    threshold: float | None = None,
) -> Array:
    """Normal-bundle LID estimate from the spectrum of scores around x.

    K noisy copies y_k = α(t)x + σ(t)ξ_k; the K×D matrix of their scores has singular values
    s₁ ≥ … ≥ s_D (zero-padded, with s_{D+1} = 0 appended). The scores point along the normal space,
    so the normal dimension is n = argmax_i (s_i − s_{i+1}) + 1 and LID = D − n ∈ {0, …, D−1}.
    With ``threshold`` the estimate is instead #{i : s_i < threshold·s₁} (a relative cut-off).

    Args:
      key: PRNG key for the K noise draws.
      t: a small diffusion time (default 0.01); a traced t outside the schedule's range gives NaN
        (as ``jnp.log(-1)`` does), a concrete one raises ValueError.
      num_samples: K, default 4·D.
      threshold: optional relative singular-value cut-off in (0, 1). Scores also drift along the
        manifold towards high density, a tangential component of relative size ~σ(t)·‖x − mode‖;
        the cut-off must sit above it, so pair it with a smaller ``t`` (e.g. 1e-3 and 0.1).

    Returns:
      float32 scalar; NaN when a traced ``t`` lies outside the schedule's range.

    Raises:
      TypeError: non-float ``x``; ``num_samples`` not an int.
      ValueError: ``x`` of rank 0, concrete ``t`` outside the schedule's range, ``num_samples < 1``, ``threshold``
        outside (0, 1), or a score of another shape than ``x``.

    Reference: Stanczuk et al., "Your diffusion model secretly knows the dimension of the data
    manifold", arXiv 2212.12611.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from mmh_jax import lid, sde
      >>> # a point mass at 0 in R^3: every direction is normal, LID = 0
      >>> vp = sde.VPSDE()
      >>> score = lambda y, t: -y / vp.marginal_coefs(t)[1] ** 2
      >>> float(lid.normal_bundle(score, jnp.zeros(3), jax.random.key(0), sde=vp))
      0.0
    """
    x = _checks.float_array("x", x, min_ndim=1)
    t = _checks.scalar_time("t", t, sde)
    dim = x.size
    k = dim * 4 if num_samples is None else _checks.positive_int("num_samples", num_samples)
    if threshold is not None and _checks.is_concrete(threshold) and not 0.0 < float(threshold) < 1.0:
        raise ValueError(f"threshold must lie in (0, 1), got {threshold}.")
    _check_score_shape("score_fn", score_fn, x, t)
    alpha, sigma = sde.marginal_coefs(t)
    noise = jax.random.normal(key, (k, *x.shape), jnp.float32)
    ys = alpha * x[None] + sigma * noise.astype(x.dtype)
    scores = jax.vmap(lambda y: score_fn(y, t))(ys).reshape(k, dim).astype(jnp.float32)
    sv = jnp.linalg.svd(scores, compute_uv=False)
    sv = jnp.concatenate([sv, jnp.zeros(dim + 1 - sv.shape[0], sv.dtype)])
    if threshold is not None:
        return _nan_outside(jnp.sum(sv[:dim] < threshold * sv[0]).astype(jnp.float32), t, sde)
    normal_dim = jnp.argmax(sv[:-1] - sv[1:]) + 1
    return _nan_outside((dim - normal_dim).astype(jnp.float32), t, sde)


def cfdm(x, data, *, t, sde, chunk_size: int | None = None) -> Array:
    """LID of the closed-form diffusion model of the training set (the perfectly memorizing model).

    With δ² = (σ(t)/α(t))² = e^{2δ(t)} (e^{B(t)} − 1 on the VP-SDE) and
    w = softmax_j(−‖x − x_j‖²/(2δ²)):  LID(x) = Σ_j w_j ‖x − x_j‖²/δ²,
    which is exactly FLIPD for the empirical distribution of ``data``. At a training point and small
    t it is 0 (an OD-Mem oracle); near a dense d-dimensional sample it plateaus at d.

    Args:
      x: one example, event shape ``E``.
      data: ``(N, *E)`` training set, N ≥ 1.
      t: diffusion time in the schedule's range; a traced t outside it gives NaN (as ``jnp.log(-1)`` does).
      sde: a noise schedule of [`mmh_jax.sde`][mmh_jax.sde] (its δ(t)).
      chunk_size: training points whose distances are computed at once (memory bound).

    Returns:
      float32 scalar; NaN when a traced ``t`` lies outside the schedule's range.

    Raises:
      TypeError: non-float ``x`` or ``data``.
      ValueError: ``data`` not of shape ``(N, *x.shape)``, empty ``data``, concrete ``t`` outside the
        schedule's range.

    Reference: the closed-form diffusion model of Ross et al., arXiv 2411.00113 (as an OD-Mem
    oracle); FLIPD of Kamkari et al., arXiv 2406.03537.

    Examples:
      >>> import jax.numpy as jnp
      >>> from mmh_jax import lid, sde
      >>> data = jnp.array([[0.0, 0.0], [1.0, 0.0]])
      >>> float(lid.cfdm(data[0], data, t=0.01, sde=sde.VPSDE()))
      0.0
    """
    x = _checks.float_array("x", x, min_ndim=1)
    data = _checks.float_array("data", data, min_ndim=1)
    if data.shape[1:] != x.shape:
        raise ValueError(
            f"data must have shape (N, *x.shape) = (N, {', '.join(map(str, x.shape))}), got {data.shape}."
        )
    if data.shape[0] == 0:
        raise ValueError("data must hold at least one training point, got an empty array of shape "
                         f"{data.shape}.")
    t = _checks.scalar_time("t", t, sde)
    sq = lambda xj: jnp.sum((xj - x).astype(jnp.float32) ** 2)  # noqa: E731
    if chunk_size is None or chunk_size >= data.shape[0]:
        d2 = jax.vmap(sq)(data)
    else:
        d2 = jax.lax.map(sq, data, batch_size=_checks.positive_int("chunk_size", chunk_size))
    delta2 = jnp.exp(2.0 * sde.delta(t))
    w = jax.nn.softmax(-d2 / (2.0 * delta2))
    return _nan_outside((jnp.sum(w * d2) / delta2).astype(jnp.float32), t, sde)


def cfg_norm(cond_score_fn: ScoreFn, uncond_score_fn: ScoreFn, xs, ts, *, sde) -> Array:
    """Classifier-free-guidance norm ‖ε̂(x_t, t, c) − ε̂(x_t, t, ∅)‖ averaged over sampling steps.

    With ε̂ = −σ(t)·s, this is the mean over steps of σ(t)·‖s_c(x_t, t) − s_∅(x_t, t)‖. Large exactly
    when conditioning collapses the model's LID (memorization).

    Args:
      cond_score_fn, uncond_score_fn: single-example scores with and without the condition.
      xs: ``(S, *E)`` points of a sampling trajectory (S ≥ 1).
      ts: ``(S,)`` their times; traced times outside the schedule's range give NaN (as ``jnp.log(-1)`` does).
      sde: a noise schedule of [`mmh_jax.sde`][mmh_jax.sde] (its σ(t)).

    Returns:
      float32 scalar; NaN when a traced time in ``ts`` lies outside the schedule's range.

    Raises:
      TypeError: non-float ``xs``.
      ValueError: ``xs`` of rank < 2 or empty (S = 0), ``ts`` not of shape ``(S,)`` or (concrete)
        outside the schedule's range.

    Reference: Wen et al., "Detecting, Explaining, and Mitigating Memorization in Diffusion Models",
    ICLR 2024.

    Examples:
      >>> import jax.numpy as jnp
      >>> from mmh_jax import lid, sde
      >>> vp = sde.VPSDE()
      >>> float(lid.cfg_norm(lambda x, t: -x, lambda x, t: -x, jnp.ones((2, 3)), jnp.array([0.5, 0.2]), sde=vp))
      0.0
    """
    xs = _checks.float_array("xs", xs, min_ndim=2)
    ts = _checks.scalar_time("ts", ts, sde, allow_array=True)
    if ts.shape != xs.shape[:1]:
        raise ValueError(f"ts must have shape (S,) = ({xs.shape[0]},) to match xs, got {ts.shape}.")
    if xs.shape[0] == 0:  # xs[0] below would raise a bare IndexError
        raise ValueError(f"xs must hold at least one point of the trajectory (S >= 1), got shape {xs.shape}; "
                         "pass the sampler's states and their times.")

    _check_score_shape("cond_score_fn", cond_score_fn, xs[0], ts[0])
    _check_score_shape("uncond_score_fn", uncond_score_fn, xs[0], ts[0])

    def one(x, t):
        sigma = sde.marginal_coefs(t)[1]
        diff = (cond_score_fn(x, t) - uncond_score_fn(x, t)).astype(jnp.float32)
        return sigma * jnp.sqrt(jnp.sum(diff**2))

    return jnp.mean(_nan_outside(jax.vmap(one)(xs, ts), ts, sde)).astype(jnp.float32)
