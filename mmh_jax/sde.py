"""The variance-preserving SDE (VP-SDE) noise process shared by all score-based code.

β(t) = β_min + (β_max − β_min)·t/T,   B(t) = ∫₀ᵗ β = β_min·t + (β_max − β_min)·t²/(2T),
α(t) = exp(−B/2),   σ(t) = √(1 − exp(−B)),   x_t = α x₀ + σ ε,   ε ~ N(0, I).

δ(t) = log(σ/α) is the log noise scale seen from clean data (x_t/α = x₀ + e^δ ε).

Reference: Song et al., "Score-Based Generative Modeling through SDEs", arXiv 2011.13456.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["VPSDE"]

Array = jax.Array


def _is_concrete(x: Any) -> bool:
    return not isinstance(x, jax.core.Tracer)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class VPSDE:
    """Variance-preserving SDE with a linear β schedule.

    The three coefficients are pytree leaves, so an SDE can be passed through ``jit``/``vmap``
    and differentiated; the methods are pure functions of ``t`` (or ``delta``).

    Args:
      beta_min: β(0).
      beta_max: β(T).
      T: terminal time.

    Examples:
      >>> from mmh_jax.sde import VPSDE
      >>> vp = VPSDE()
      >>> alpha, sigma = vp.marginal_coefs(0.5)
      >>> bool(abs(alpha**2 + sigma**2 - 1.0) < 1e-6)
      True
      >>> round(float(vp.t_from_delta(vp.delta(0.05))), 4)
      0.05
    """

    beta_min: float | Array = 0.1
    beta_max: float | Array = 20.0
    T: float | Array = 1.0

    def __post_init__(self):
        vals = (self.beta_min, self.beta_max, self.T)
        if all(_is_concrete(v) and jnp.ndim(v) == 0 for v in vals):
            try:
                bmin, bmax, T = (float(v) for v in vals)
            except (TypeError, ValueError):  # e.g. object() leaves during tree manipulation
                return
            if not (0.0 <= bmin <= bmax):
                raise ValueError(
                    f"VPSDE needs 0 <= beta_min <= beta_max, got beta_min={bmin}, beta_max={bmax}."
                )
            if not T > 0.0:
                raise ValueError(f"VPSDE needs T > 0, got T={T}.")

    def beta(self, t) -> Array:
        """β(t), the instantaneous noise rate."""
        t = jnp.asarray(t, jnp.float32)
        return self.beta_min + (self.beta_max - self.beta_min) * t / self.T

    def beta_integral(self, t) -> Array:
        """B(t) = ∫₀ᵗ β(s) ds."""
        t = jnp.asarray(t, jnp.float32)
        return self.beta_min * t + (self.beta_max - self.beta_min) * t**2 / (2.0 * self.T)

    def marginal_coefs(self, t) -> tuple[Array, Array]:
        """(α(t), σ(t)) with x_t = α x₀ + σ ε. σ uses expm1 so it stays accurate at small t."""
        b = self.beta_integral(t)
        return jnp.exp(-0.5 * b), jnp.sqrt(-jnp.expm1(-b))

    def delta(self, t) -> Array:
        """δ(t) = log(σ/α) = ½ log(e^{B(t)} − 1), the log noise scale seen from clean data."""
        return 0.5 * jnp.log(jnp.expm1(self.beta_integral(t)))

    def t_from_delta(self, delta) -> Array:
        """Inverse of [`delta`][mmh_jax.sde.VPSDE.delta]: solves a·t² + β_min·t − log(e^{2δ} + 1) = 0 for t ≥
        0.

        Uses the cancellation-free root t = 2c / (b + √(b² + 4ac)).
        """
        delta = jnp.asarray(delta, jnp.float32)
        a = (self.beta_max - self.beta_min) / (2.0 * self.T)
        b = jnp.asarray(self.beta_min, jnp.float32)
        c = jax.nn.softplus(2.0 * delta)
        return 2.0 * c / (b + jnp.sqrt(b**2 + 4.0 * a * c))

    def perturb(self, x0, t, key) -> tuple[Array, Array]:
        """Sample x_t = α(t) x₀ + σ(t) ε. Returns ``(x_t, eps)`` (ε is the regression target)."""
        x0 = jnp.asarray(x0)
        eps = jax.random.normal(key, x0.shape, x0.dtype if jnp.issubdtype(x0.dtype, jnp.floating) else jnp.float32)
        alpha, sigma = self.marginal_coefs(t)
        return alpha * x0 + sigma * eps, eps

    def prior_sample(self, key, shape) -> Array:
        """Sample from the prior N(0, I) that x_T approximately follows."""
        return jax.random.normal(key, tuple(shape), jnp.float32)
