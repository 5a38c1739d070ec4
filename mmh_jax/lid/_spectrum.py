"""Jacobian-spectrum LID for decoders ``g(z) -> x`` (flows, VAE/GAN decoders, the PF-ODE map).

Expensive artifact, cheap readout: compute the spectrum once with
[`jacobian_spectrum`][mmh_jax.lid.jacobian_spectrum], then read LID at many thresholds with
[`lid_from_spectrum`][mmh_jax.lid.lid_from_spectrum], which broadcasts over ``tau``.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from mmh_jax import _checks

Array = jax.Array


def _jacobian_matrix(g: Callable[[Array], Array], z: Array) -> Array:
    """J_g(z) as a ``(D, k)`` matrix; forward mode when k ≤ D, reverse mode otherwise."""
    out_size = jax.eval_shape(g, z).size
    jac = jax.jacfwd(g)(z) if z.size <= out_size else jax.jacrev(g)(z)
    return jnp.reshape(jac, (out_size, z.size)).astype(jnp.float32)


def jacobian_spectrum(g: Callable[[Array], Array], z) -> Array:
    """Singular values of the decoder Jacobian J_g(z), descending, shape ``(min(D, k),)``.

    Args:
      g: single-example decoder ``g(z) -> x``; z and x of any event shapes (k and D entries).
      z: latent point, floating point.

    Returns:
      float32 ``(min(D, k),)`` singular values σ₁ ≥ σ₂ ≥ … of the D×k Jacobian (the expensive
      artifact: read LID at many thresholds from it with
        [`lid_from_spectrum`][mmh_jax.lid.lid_from_spectrum]).

    Raises:
      TypeError: non-float ``z``.

    Reference: the Jacobian-threshold LID of decoders, Kamkari et al., arXiv 2406.03537;
    Ross et al., arXiv 2411.00113 §4.

    Examples:
      >>> import jax.numpy as jnp
      >>> from mmh_jax import lid
      >>> A = jnp.diag(jnp.array([3.0, 1.0, 0.0]))
      >>> lid.jacobian_spectrum(lambda z: A @ z, jnp.ones(3)).tolist()
      [3.0, 1.0, 0.0]
    """
    z = _checks.float_array("z", z)
    return jnp.linalg.svd(_jacobian_matrix(g, z), compute_uv=False)


def lid_from_spectrum(singular_values, *, tau) -> Array:
    """LID_θ = #{i : σ_i > e^τ}. ``tau`` may be an array: the result has ``tau``'s shape.

    Args:
      singular_values: ``(m,)`` singular values of a decoder Jacobian.
      tau: log threshold (default in the reference: −3; curves over linspace(−10, 5, 50)).

    Returns:
      float32 array of ``tau``'s shape: the number of singular values above e^τ.

    Raises:
      TypeError: non-float ``singular_values`` or ``tau``.
      ValueError: ``singular_values`` not 1-D.

    Reference: Kamkari et al., arXiv 2406.03537 (threshold τ = −3).

    Examples:
      >>> import jax.numpy as jnp
      >>> from mmh_jax import lid
      >>> lid.lid_from_spectrum(jnp.array([3.0, 1.0, 1e-3]), tau=jnp.array([-3.0, 0.5])).tolist()
      [2.0, 1.0]
    """
    sv = _checks.float_array("singular_values", singular_values, ndim=1)
    tau = _checks.float_array("tau", tau)
    thresholds = jnp.exp(tau)[..., None]
    sv = jnp.broadcast_to(sv, (*tau.shape, sv.shape[0]))
    return jnp.sum(sv > thresholds, axis=-1).astype(jnp.float32)


def fast_flow_lidl(g: Callable[[Array], Array], z, *, delta) -> Array:
    """Fast-Flow-LIDL: the LIDL rate D + ∂ log ϱ/∂δ of a decoder, smooth in δ, from one Jacobian.

    With λ_i, Q the eigen-decomposition of JᵀJ (from the SVD of J), z̃ = Qᵀz and v = e^{2δ}:
      LID(δ) = k + v·[−Σ_i 1/(λ_i + v) + Σ_i λ_i z̃_i²/(λ_i + v)²]
    (sums over the k latent dimensions). As δ → −∞ it tends to rank(J); directions whose
    singular value is far below e^δ count as missing, so a plateau shows the numerical rank.

    Args:
      g: single-example decoder with a standard-normal latent.
      z: latent point.
      delta: log noise scale; any shape (the Jacobian is computed once for all of them).

    Returns:
      float32 array of ``delta``'s shape.

    Raises:
      TypeError: non-float ``z`` or ``delta``.

    Reference: Kamkari et al., "A Geometric View of Data Complexity", arXiv 2406.03537
    (Fast-Flow-LIDL); Tempczyk et al., arXiv 2206.14882.

    Examples:
      >>> import jax.numpy as jnp
      >>> from mmh_jax import lid
      >>> A = jnp.diag(jnp.array([1.0, 1.0, 0.0]))
      >>> round(float(lid.fast_flow_lidl(lambda z: A @ z, jnp.zeros(3), delta=-8.0)), 3)
      2.0
    """
    z = _checks.float_array("z", z)
    delta = _checks.float_array("delta", delta)
    jac = _jacobian_matrix(g, z)
    # SVD rather than eigh(JᵀJ): squaring J would bury singular values below √eps·‖J‖ in round-off.
    _, sv, vh = jnp.linalg.svd(jac, full_matrices=True)
    lam = jnp.zeros(z.size, jnp.float32).at[: sv.shape[0]].set(sv**2)
    zt = vh @ z.reshape(-1).astype(jnp.float32)
    v = jnp.exp(2.0 * delta)[..., None]
    lam = jnp.broadcast_to(lam, (*delta.shape, lam.shape[0]))
    zt = jnp.broadcast_to(zt, lam.shape)
    inner = -jnp.sum(1.0 / (lam + v), axis=-1) + jnp.sum(lam * zt**2 / (lam + v) ** 2, axis=-1)
    return (z.size + v[..., 0] * inner).astype(jnp.float32)
