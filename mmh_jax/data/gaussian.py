"""Mixtures of Gaussians on affine subspaces: exact scores under any noise schedule, hence exact LID oracles.

Component j is N(μ_j, s_j² U_j U_jᵀ) with U_j a D×d_j orthonormal basis (d_j = 0 is a point mass,
d_j = D a full Gaussian). Under a schedule x_t = α(t)x₀ + σ(t)ε (any of `mmh_jax.sde`) its
marginal at time t is N(α μ_j, α² s_j² U_j U_jᵀ + σ² I), whose precision is, by Woodbury,
Σ_j⁻¹ = (I − c_j U_j U_jᵀ)/σ²,  c_j = α² s_j² / (α² s_j² + σ²),
and log det Σ_j = (D − d_j) log σ² + d_j log(α² s_j² + σ²). The mixture score is the
responsibility-weighted sum of the component scores −Σ_j⁻¹ (y − α μ_j).

Everything is jax/numpy only, so it can serve as a score oracle for the estimators in tests,
the validation experiment and benchmarks.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["GaussianMixture", "random_gaussian_mixture"]

Array = jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class GaussianMixture:
    """A mixture of Gaussians on affine subspaces of R^D.

    Attributes:
      means: ``(J, D)`` component centres μ_j.
      bases: ``(J, D, d_max)`` orthonormal bases; columns beyond d_j are zero.
      dims: ``(J,)`` int32 subspace dimensions d_j (the true LID of each component).
      scales: ``(J,)`` standard deviation s_j along the subspace.
      log_weights: ``(J,)`` log mixture weights (normalised).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from mmh_jax.sde import VPSDE
      >>> gm = random_gaussian_mixture(0, [1], 3)
      >>> x, comp = gm.sample(jax.random.key(0), 2)
      >>> x.shape, comp.tolist()
      ((2, 3), [0, 0])
      >>> bool(jnp.allclose(gm.flipd_closed_form(x[0], 1e-4, VPSDE()), 1.0, atol=0.05))  # LID 1
      True
    """

    means: Array
    bases: Array
    dims: Array
    scales: Array
    log_weights: Array

    @property
    def ambient_dim(self) -> int:
        return self.means.shape[1]

    def score(self, y, t, sde) -> Array:
        """∇_y log p_t(y) of the marginal at time t of any schedule ``sde``; one example ``y`` of shape (D,)."""
        alpha, sigma = sde.marginal_coefs(t)
        s2 = (alpha * self.scales) ** 2
        var = sigma**2
        c = s2 / (s2 + var)  # (J,)
        r = y[None, :] - alpha * self.means  # (J, D)
        proj = jnp.einsum("jdk,jd->jk", self.bases, r)  # (J, d_max)
        back = jnp.einsum("jdk,jk->jd", self.bases, proj)  # U Uᵀ r
        prec_r = (r - c[:, None] * back) / var  # Σ⁻¹ r
        dims = self.dims.astype(jnp.float32)
        logdet = (self.ambient_dim - dims) * jnp.log(var) + dims * jnp.log(s2 + var)
        logp = self.log_weights - 0.5 * (logdet + jnp.sum(r * prec_r, axis=1))
        resp = jax.nn.softmax(logp)
        return -jnp.sum(resp[:, None] * prec_r, axis=0)

    def score_fn(self, sde):
        """The single-example ``score_fn(x, t)`` the estimators take, on the schedule ``sde``."""
        return lambda x, t: self.score(x, t, sde)

    def sample(self, key, n: int) -> tuple[Array, Array]:
        """``n`` clean samples and their component indices: ``((n, D), (n,))``."""
        kc, kz = jax.random.split(key)
        comp = jax.random.categorical(kc, self.log_weights, shape=(n,))
        z = jax.random.normal(kz, (n, self.bases.shape[2]))
        x = self.means[comp] + self.scales[comp, None] * jnp.einsum("ndk,nk->nd", self.bases[comp], z)
        return x, comp

    def flipd_closed_form(self, x, t0, sde) -> Array:
        """FLIPD of a *single-component* mixture in closed form (the float32 oracle for tests).

        tr ∇s = −[d/(α²s² + σ²) + (D − d)/σ²], so FLIPD = D + σ²·(tr ∇s + ‖s(αx)‖²), for any
        schedule (α, σ) = ``sde.marginal_coefs(t0)``.
        """
        if self.means.shape[0] != 1:
            raise ValueError(f"flipd_closed_form needs a single component, got {self.means.shape[0]}.")
        alpha, sigma = sde.marginal_coefs(t0)
        s2 = (alpha * self.scales[0]) ** 2
        var = sigma**2
        d = self.dims[0].astype(jnp.float32)
        tr = -(d / (s2 + var) + (self.ambient_dim - d) / var)
        s = self.score(alpha * x, t0, sde)
        return self.ambient_dim + var * (tr + jnp.sum(s**2))


def random_gaussian_mixture(
    seed: int,
    dims,
    ambient_dim: int,
    *,
    scale: float = 1.0,
    separation: float = 10.0,
    weights=None,
) -> GaussianMixture:
    """A mixture with one component per entry of ``dims``, each on a random affine subspace.

    Centres are ``separation`` apart along random directions (one component: a random centre of
    norm ``separation``/2). Bases come from the QR decomposition of a Gaussian matrix.

    Args:
      seed: numpy seed of the bases and centres.
      dims: the subspace dimension d_j of each component, 0 ≤ d_j ≤ ambient_dim.
      ambient_dim: D.
      scale: standard deviation s_j along each subspace.
      separation: distance between component centres.
      weights: optional mixture weights (normalised here); default uniform.

    Returns:
      a [`GaussianMixture`][mmh_jax.data.gaussian.GaussianMixture].

    Raises:
      ValueError: empty ``dims`` or a dimension outside [0, ambient_dim].

    Examples:
      >>> from mmh_jax.data.gaussian import random_gaussian_mixture
      >>> gm = random_gaussian_mixture(0, [2, 4], 10)
      >>> gm.bases.shape, gm.dims.tolist()
      ((2, 10, 4), [2, 4])
    """
    dims = [int(d) for d in dims]
    if not dims:
        raise ValueError("dims must name at least one component dimension, got an empty list.")
    if any(d < 0 or d > ambient_dim for d in dims):
        raise ValueError(f"dims must lie in [0, ambient_dim={ambient_dim}], got {dims}.")
    rng = np.random.default_rng(seed)
    d_max = max(max(dims), 1)
    bases = np.zeros((len(dims), ambient_dim, d_max), np.float32)
    for j, d in enumerate(dims):
        if d:
            q, _ = np.linalg.qr(rng.standard_normal((ambient_dim, d)))
            bases[j, :, :d] = q
    directions = rng.standard_normal((len(dims), ambient_dim))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    means = directions * separation / (2.0 if len(dims) == 1 else np.sqrt(2.0))
    if weights is None:
        weights = np.full(len(dims), 1.0 / len(dims))
    weights = np.asarray(weights, np.float64)
    return GaussianMixture(
        means=jnp.asarray(means, jnp.float32),
        bases=jnp.asarray(bases),
        dims=jnp.asarray(dims, jnp.int32),
        scales=jnp.full(len(dims), scale, jnp.float32),
        log_weights=jnp.asarray(np.log(weights / weights.sum()), jnp.float32),
    )
