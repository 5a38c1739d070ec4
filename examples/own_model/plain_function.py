"""Bring your own model, plain JAX: a closed-form score as a Python function.

Data: a Gaussian on a line in R^3, x₀ = μ + z·u with z ~ N(0, 1) and u a unit vector, so the true
local intrinsic dimension is 1 everywhere on the line. Under the VP-SDE, x_t = α·x₀ + σ·ε is
Gaussian, N(α·μ, α²·u·uᵀ + σ²·I), and its score is exact. FLIPD at a small t₀ should read ≈ 1.

Run: ``python examples/own_model/plain_function.py`` (a few seconds on a CPU).
"""

import jax
import jax.numpy as jnp

from mmh_jax import lid
from mmh_jax.sde import VPSDE

vp = VPSDE()  # beta_min=0.1, beta_max=20, T=1
mu = jnp.array([0.5, -1.0, 2.0])
u = jnp.array([1.0, 2.0, 2.0]) / 3.0  # unit direction of the line


def score_fn(x, t):
    """The exact score of the noised data at time t, for ONE point x of shape (3,)."""
    alpha, sigma = vp.marginal_coefs(t)
    cov = alpha**2 * jnp.outer(u, u) + sigma**2 * jnp.eye(3)
    return -jnp.linalg.solve(cov, x - alpha * mu)


# Points on the line (the data's support), batched with jax.vmap under jax.jit.
xs = mu + jnp.linspace(-2.0, 2.0, 16)[:, None] * u


@jax.jit
def flipd_batch(xs, t0):
    return jax.vmap(lambda x: lid.flipd(score_fn, x, t0=t0, sde=vp))(xs)


lids = flipd_batch(xs, 0.01)
eager = jnp.stack([lid.flipd(score_fn, x, t0=0.01, sde=vp) for x in xs[:4]])  # no jit, no vmap
print(f"FLIPD at t0=0.01 on the line: mean {float(lids.mean()):.3f}, range [{float(lids.min()):.3f}, "
      f"{float(lids.max()):.3f}] (true dimension 1)")

# The FLIPD curve over t₀ at each point, read at its plateau (the level where it is flat).
t0s = jnp.geomspace(1e-4, 1.0, 24)


@jax.jit
def plateau_batch(xs):
    curves = jax.vmap(lambda x: lid.flipd_curve(score_fn, x, t0s=t0s, sde=vp))(xs)  # (N, 24)
    return jax.vmap(lambda curve: lid.plateau(t0s, curve)[1])(curves)


levels = plateau_batch(xs)
print(f"plateau of the FLIPD curve: mean {float(levels.mean()):.3f}")

assert jnp.all(jnp.abs(lids - 1.0) < 0.05), lids
assert jnp.allclose(lids[:4], eager, atol=1e-5), (lids[:4], eager)
assert jnp.all(jnp.abs(levels - 1.0) < 0.05), levels
