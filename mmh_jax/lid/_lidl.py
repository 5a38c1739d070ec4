"""LIDL: LID from density models of the data perturbed at several noise scales (Tempczyk et al.).

The estimator takes the ensemble as data: one log-density function
``log_prob_fn(params_i, x) -> scalar`` and the members' parameters stacked along a leading axis
(``params_i = tree_map(lambda a: a[i], params)``), e.g. the flows trained together by
``mmh-jax train --model lidl``. The members are evaluated with one ``vmap``, so the whole estimate
is one traced function of ``params`` and ``x`` (jit it once, vmap it over points).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from mmh_jax import _checks

Array = jax.Array

#: LIDL's noise scales δ (float64): the one definition of the default grid, also FPRegress's (as log δ)
#: and the flows trained by ``mmh-jax train --model lidl``.
NOISE_SCALES = np.geomspace(0.01, 0.1, 8)
DEFAULT_DELTAS = NOISE_SCALES.astype(np.float32)


def _check_deltas(deltas) -> Array:
    deltas = _checks.float_array("deltas", DEFAULT_DELTAS if deltas is None else deltas, ndim=1)
    if deltas.shape[0] < 2:
        raise ValueError(f"deltas must hold at least 2 noise scales for a slope, got shape {deltas.shape}.")
    if _checks.is_concrete(deltas) and not np.all(np.asarray(deltas) > 0):
        shown = [float(f"{v:.6g}") for v in np.asarray(deltas).tolist()]
        raise ValueError(f"deltas must be positive noise scales, got {shown}; e.g. geomspace(0.01, 0.1, 8).")
    return deltas


def lidl(log_prob_fn: Callable[[Any, Array], Array], params, x, *, deltas=None) -> Array:
    """LIDL: LID(x) = D + least-squares slope of log p_δ(x) against log δ.

    p_δ is the density of the data convolved with N(0, δ²I). Near a d-dimensional manifold
    log p_δ(x) ≈ c(x) − (D − d)·log δ for small δ, so the slope over a range of δ gives D − d:

      LID(x) = D + Σ_i (u_i − ū)(ℓ_i − ℓ̄) / Σ_i (u_i − ū)²,  u_i = log δ_i, ℓ_i = log p_{δ_i}(x).

    Args:
      log_prob_fn: ``log_prob_fn(params_i, x) -> ()``, the log-density of the model trained at
        noise scale ``deltas[i]``, single example.
      params: pytree whose leaves have a leading axis of length ``len(deltas)`` (member i is
        ``params[i]``); pass ``jnp.asarray(deltas)`` with ``log_prob_fn(delta, x)`` for closed-form
        densities.
      x: one point, any event shape (D = ``x.size``), floating point.
      deltas: ``(M,)`` positive noise scales, M ≥ 2 (default geomspace(0.01, 0.1, 8)); only their
        logarithms enter, so their unit does not matter.

    Returns:
      float32 scalar.

    Raises:
      ValueError: fewer than 2 or non-positive deltas, or params whose leading axis is not M.
      TypeError: non-floating ``x`` or ``deltas``.

    Reference: Tempczyk et al., "LIDL: Local Intrinsic Dimension Estimation Using Approximate
    Likelihood", arXiv 2206.14882.

    Examples:
      >>> import jax.numpy as jnp
      >>> from mmh_jax import lid
      >>> def log_prob(delta, x):  # a line in R² blurred at scale δ, N(0, diag(1 + δ², δ²)): LID 1
      ...     var = jnp.array([1.0, 0.0]) + delta**2
      ...     return -0.5 * jnp.sum(x**2 / var + jnp.log(2 * jnp.pi * var))
      >>> deltas = jnp.geomspace(0.01, 0.1, 8)
      >>> round(float(lid.lidl(log_prob, deltas, jnp.array([0.3, 0.0]), deltas=deltas)), 2)
      1.0
    """
    x = _checks.float_array("x", x)
    deltas = _check_deltas(deltas)
    m = deltas.shape[0]
    leaves = jax.tree_util.tree_leaves(params)
    bad = [jnp.shape(a) for a in leaves if jnp.ndim(a) < 1 or jnp.shape(a)[0] != m]
    if not leaves or bad:
        raise ValueError(
            f"params must be stacked with a leading axis of len(deltas) = {m} (one member per delta), got "
            f"leaf shapes {bad[:3] if bad else 'none'}; stack the members, e.g. "
            "jax.tree.map(lambda *a: jnp.stack(a), *members)."
        )
    log_p = jax.vmap(log_prob_fn, in_axes=(0, None))(params, x).astype(jnp.float32)
    u = jnp.log(deltas)
    du = u - jnp.mean(u)
    slope = jnp.sum(du * (log_p - jnp.mean(log_p))) / jnp.sum(du * du)
    return (x.size + slope).astype(jnp.float32)
