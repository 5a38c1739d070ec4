"""Noise schedules: the forward processes x_t = α(t)·x₀ + σ(t)·ε, ε ~ N(0, I), of score-based code.

Every estimator, sampler and training step uses a schedule only through this protocol
(docs/design.md#noise-schedules):

- ``marginal_coefs(t) -> (α, σ)``: the marginal x_t = α(t)·x₀ + σ(t)·ε;
- ``T``, the terminal time, and ``t_min``, the smallest time the schedule is meant for: times are
  valid in (0, T] when ``t_min`` is 0 and in [t_min, T] otherwise (a concrete time outside raises
  ValueError in the estimators and samplers, a traced one gives NaN);
- ``delta(t) = log(σ/α)``, the log noise scale seen from clean data (x_t/α = x₀ + e^δ·ε), and its
  inverse ``t_from_delta(δ)``; ``t_from_log_sigma(log σ)`` inverts log σ(t) (used by training's
  ``log-sigma`` time sampling);
- ``sde_coefs(t) -> (f, g²)``: the forward SDE dx = f(t)·x dt + g(t) dW with these marginals,
  f = d log α/dt and g² = dσ²/dt − 2f·σ²;
- ``prior_sample(key, shape)``, a draw from the distribution x_T approximately follows, and
  ``perturb(x₀, t, key) -> (x_t, ε)``;
- ``variance_preserving``, a class attribute: True when α² + σ² = 1, so that g² = −2f (the
  probability-flow velocity f·x − ½g²·s is then evaluated as f·(x + s)); False if absent.

The schedules, each a frozen dataclass whose parameters are pytree leaves (pass one through
``jit``/``vmap`` or differentiate in its parameters):

- [`VPSDE`][mmh_jax.sde.VPSDE]: the variance-preserving SDE with a linear β (Song et al.,
  arXiv 2011.13456), t ∈ (0, T];
- [`CosineVPSDE`][mmh_jax.sde.CosineVPSDE]: ᾱ(t) = f(t)/f(0), f(t) = cos²(((t/T) + s)/(1 + s)·π/2)
  (Nichol & Dhariwal, arXiv 2102.09672), t ∈ (0, T];
- [`DiscreteVPSDE`][mmh_jax.sde.DiscreteVPSDE]: any discrete DDPM schedule given by its ᾱ of N
  steps, step i at t = i/N, t ∈ (0, 1]; one-line builders for DDPM's ``linear`` and Stable
  Diffusion's ``scaled_linear`` schedules;
- [`EDMSDE`][mmh_jax.sde.EDMSDE]: α = 1, σ(t) = t (Karras et al., arXiv 2206.00364), so t is the
  noise level, t ∈ [sigma_min, sigma_max].

The three VP-type schedules have α² + σ² = 1 (α = √ᾱ, σ = √(1 − ᾱ)), f = −β/2 and g² = β with
β(t) = −d log ᾱ/dt, and the prior N(0, I); EDM's prior is N(0, sigma_max²·I).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["CosineVPSDE", "DiscreteVPSDE", "EDMSDE", "VPSDE"]

Array = jax.Array


def _is_concrete(x: Any) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _concrete_floats(*vals) -> tuple[float, ...] | None:
    """The scalars ``vals`` as Python floats when all are concrete numbers, else None (traced, or
    placeholders such as ``object()`` leaves during tree manipulation): validation is skipped then."""
    if not all(_is_concrete(v) and jnp.ndim(v) == 0 for v in vals):
        return None
    try:
        return tuple(float(v) for v in vals)
    except (TypeError, ValueError):
        return None


def _perturb(sde, x0, t, key) -> tuple[Array, Array]:
    x0 = jnp.asarray(x0)
    eps = jax.random.normal(key, x0.shape, x0.dtype if jnp.issubdtype(x0.dtype, jnp.floating) else jnp.float32)
    alpha, sigma = sde.marginal_coefs(t)
    return alpha * x0 + sigma * eps, eps


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class VPSDE:
    """Variance-preserving SDE with a linear β schedule.

    β(t) = β_min + (β_max − β_min)·t/T,   B(t) = ∫₀ᵗ β = β_min·t + (β_max − β_min)·t²/(2T),
    α(t) = exp(−B/2),   σ(t) = √(1 − exp(−B)),   f = −β/2,   g² = β.

    The three coefficients are pytree leaves, so an SDE can be passed through ``jit``/``vmap``
    and differentiated; the methods are pure functions of ``t`` (or ``delta``). Valid times are
    (0, T] (``t_min`` = 0).

    Args:
      beta_min: β(0).
      beta_max: β(T).
      T: terminal time.

    Raises:
      ValueError: concrete ``beta_min`` < 0 or > ``beta_max``, or ``T`` ≤ 0.

    Reference: Song et al., "Score-Based Generative Modeling through SDEs", arXiv 2011.13456.

    Examples:
      >>> from mmh_jax.sde import VPSDE
      >>> vp = VPSDE()
      >>> alpha, sigma = vp.marginal_coefs(0.5)
      >>> bool(abs(alpha**2 + sigma**2 - 1.0) < 1e-6)
      True
      >>> round(float(vp.t_from_delta(vp.delta(0.05))), 4)
      0.05
      >>> [float(c) for c in vp.sde_coefs(0.0)]   # (f, g²) = (−β/2, β)
      [-0.05000000074505806, 0.10000000149011612]
    """

    beta_min: float | Array = 0.1
    beta_max: float | Array = 20.0
    T: float | Array = 1.0

    variance_preserving = True  # α² + σ² = 1, so g² = −2f (a class attribute, not a field)

    def __post_init__(self):
        vals = _concrete_floats(self.beta_min, self.beta_max, self.T)
        if vals is None:
            return
        bmin, bmax, T = vals
        if not (0.0 <= bmin <= bmax):
            raise ValueError(
                f"VPSDE needs 0 <= beta_min <= beta_max, got beta_min={bmin}, beta_max={bmax}."
            )
        if not T > 0.0:
            raise ValueError(f"VPSDE needs T > 0, got T={T}.")

    @property
    def t_min(self) -> float:
        """0: every time in (0, T] is valid."""
        return 0.0

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

    def sde_coefs(self, t) -> tuple[Array, Array]:
        """(f(t), g(t)²) = (−β(t)/2, β(t)) of the forward SDE dx = f·x dt + g dW."""
        beta = self.beta(t)
        return -0.5 * beta, beta

    def delta(self, t) -> Array:
        """δ(t) = log(σ/α) = ½ log(e^{B(t)} − 1), the log noise scale seen from clean data."""
        return 0.5 * jnp.log(jnp.expm1(self.beta_integral(t)))

    def _t_from_integral(self, b_int) -> Array:
        """The t ≥ 0 with B(t) = ``b_int``, by the cancellation-free root 2c / (b + √(b² + 4ac))."""
        a = (self.beta_max - self.beta_min) / (2.0 * self.T)
        b = jnp.asarray(self.beta_min, jnp.float32)
        return 2.0 * b_int / (b + jnp.sqrt(b**2 + 4.0 * a * b_int))

    def t_from_delta(self, delta) -> Array:
        """Inverse of [`delta`][mmh_jax.sde.VPSDE.delta]: solves a·t² + β_min·t − log(e^{2δ} + 1) = 0 for t ≥
        0.

        Uses the cancellation-free root t = 2c / (b + √(b² + 4ac)).
        """
        delta = jnp.asarray(delta, jnp.float32)
        return self._t_from_integral(jax.nn.softplus(2.0 * delta))

    def t_from_log_sigma(self, log_sigma) -> Array:
        """Inverse of log σ(t): B(t) = −log(1 − σ²), then the root of B as in
        [`t_from_delta`][mmh_jax.sde.VPSDE.t_from_delta]."""
        log_sigma = jnp.asarray(log_sigma, jnp.float32)
        return self._t_from_integral(-jnp.log1p(-jnp.exp(2.0 * log_sigma)))

    def perturb(self, x0, t, key) -> tuple[Array, Array]:
        """Sample x_t = α(t) x₀ + σ(t) ε. Returns ``(x_t, eps)`` (ε is the regression target)."""
        return _perturb(self, x0, t, key)

    def prior_sample(self, key, shape) -> Array:
        """Sample from the prior N(0, I) that x_T approximately follows."""
        return jax.random.normal(key, tuple(shape), jnp.float32)


class _LogAlphaBarSchedule:
    """The protocol for a VP-type schedule given by log ᾱ(t) and its inverse (α = √ᾱ, σ = √(1 − ᾱ)).

    Subclasses define ``_log_alpha_bar(t)`` (float32, elementwise, decreasing from 0) and
    ``_t_from_log_alpha_bar(la)``.
    """

    variance_preserving = True  # α² + σ² = 1, so g² = −2f

    def marginal_coefs(self, t) -> tuple[Array, Array]:
        """(α(t), σ(t)) = (√ᾱ, √(1 − ᾱ)); σ uses expm1 so it stays accurate at small t."""
        la = self._log_alpha_bar(t)
        return jnp.exp(0.5 * la), jnp.sqrt(-jnp.expm1(la))

    def sde_coefs(self, t) -> tuple[Array, Array]:
        """(f(t), g(t)²) = (−β/2, β), β = −d log ᾱ/dt, of the forward SDE dx = f·x dt + g dW."""
        t = jnp.asarray(t, jnp.float32)
        _, dla = jax.jvp(self._log_alpha_bar, (t,), (jnp.ones_like(t),))
        return 0.5 * dla, -dla

    def delta(self, t) -> Array:
        """δ(t) = log(σ/α) = ½ log(1/ᾱ − 1)."""
        return 0.5 * jnp.log(jnp.expm1(-self._log_alpha_bar(t)))

    def t_from_delta(self, delta) -> Array:
        """Inverse of ``delta``: log ᾱ = −log(1 + e^{2δ}), then the time of that ᾱ."""
        delta = jnp.asarray(delta, jnp.float32)
        return self._t_from_log_alpha_bar(-jax.nn.softplus(2.0 * delta))

    def t_from_log_sigma(self, log_sigma) -> Array:
        """Inverse of log σ(t): log ᾱ = log(1 − σ²), then the time of that ᾱ."""
        log_sigma = jnp.asarray(log_sigma, jnp.float32)
        return self._t_from_log_alpha_bar(jnp.log1p(-jnp.exp(2.0 * log_sigma)))

    def perturb(self, x0, t, key) -> tuple[Array, Array]:
        """Sample x_t = α(t) x₀ + σ(t) ε. Returns ``(x_t, eps)`` (ε is the regression target)."""
        return _perturb(self, x0, t, key)

    def prior_sample(self, key, shape) -> Array:
        """Sample from the prior N(0, I) that x_T approximately follows."""
        return jax.random.normal(key, tuple(shape), jnp.float32)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class CosineVPSDE(_LogAlphaBarSchedule):
    """The cosine schedule of improved DDPM in continuous time.

    ᾱ(t) = f(t)/f(0),   f(t) = cos²(((t/T) + s)/(1 + s)·π/2),   α = √ᾱ,   σ = √(1 − ᾱ).

    The unclipped ᾱ reaches 0 at t = T, where α = 0, δ = ∞ and β = −d log ᾱ/dt diverges. As the
    paper caps β at 0.999 for the same reason, ᾱ is clipped below at ``alpha_bar_min`` (default
    1e-5, the order of [`VPSDE`][mmh_jax.sde.VPSDE]'s ᾱ(T) = 4.3e-5): on the default schedule the
    clip binds only for t > 0.998·T, where ᾱ, α and σ = √(1 − alpha_bar_min) < 1 are constant,
    f = g² = 0 and δ stays finite; ``t_from_delta`` maps every δ beyond δ(T) to the time where the
    clip starts. log ᾱ is computed from cos(u₀ + v)/cos(u₀) = cos v − tan(u₀)·sin v
    (u₀ = s/(1 + s)·π/2), so it stays accurate at small t. Valid times are (0, T] (``t_min`` = 0);
    f = −β/2, g² = β with β = π·tan(u)/(T(1 + s)) before the clip.

    The methods are those of the schedule protocol (the module docstring): ``marginal_coefs``,
    ``sde_coefs``, ``delta``, ``t_from_delta``, ``t_from_log_sigma``, ``perturb``, ``prior_sample``.

    Args:
      s: the offset s ≥ 0 that keeps β finite near t = 0 (the paper's 0.008).
      T: terminal time.
      alpha_bar_min: the floor of ᾱ, in (0, 1).

    Raises:
      ValueError: concrete ``s`` < 0 or not finite, ``T`` ≤ 0, or ``alpha_bar_min`` outside (0, 1).

    Reference: Nichol and Dhariwal, "Improved Denoising Diffusion Probabilistic Models",
    arXiv 2102.09672.

    Examples:
      >>> from mmh_jax.sde import CosineVPSDE
      >>> cos = CosineVPSDE()
      >>> alpha, sigma = cos.marginal_coefs(0.5)
      >>> round(float(alpha**2), 4), round(float(alpha**2 + sigma**2), 6)   # ᾱ(T/2) ≈ ½
      (0.4938, 1.0)
      >>> round(float(cos.t_from_delta(cos.delta(0.05))), 4)
      0.05
    """

    s: float | Array = 0.008
    T: float | Array = 1.0
    alpha_bar_min: float | Array = 1e-5

    def __post_init__(self):
        vals = _concrete_floats(self.s, self.T, self.alpha_bar_min)
        if vals is None:
            return
        s, T, floor = vals
        if not (math.isfinite(s) and s >= 0.0):
            raise ValueError(f"CosineVPSDE needs a finite offset s >= 0, got s={s}; the paper uses s=0.008.")
        if not (math.isfinite(T) and T > 0.0):
            raise ValueError(f"CosineVPSDE needs a finite T > 0, got T={T}.")
        if not 0.0 < floor < 1.0:
            raise ValueError(
                f"CosineVPSDE needs alpha_bar_min in (0, 1), got alpha_bar_min={floor}; it is the floor that "
                f"keeps alpha(T) > 0, e.g. 1e-5."
            )

    @property
    def t_min(self) -> float:
        """0: every time in (0, T] is valid."""
        return 0.0

    def _angles(self):
        """(tan u₀, the rate dv/dt·T) with u₀ = s/(1 + s)·π/2 and v = (t/T)/(1 + s)·π/2."""
        scale = 0.5 * jnp.pi / (1.0 + jnp.asarray(self.s, jnp.float32))
        return jnp.tan(self.s * scale), scale

    def _log_alpha_bar(self, t) -> Array:
        t = jnp.asarray(t, jnp.float32)
        k, scale = self._angles()
        v = t / self.T * scale
        ratio_m1 = -2.0 * jnp.sin(0.5 * v) ** 2 - k * jnp.sin(v)  # cos(u0 + v)/cos(u0) − 1
        ratio_m1 = jnp.maximum(ratio_m1, jnp.sqrt(jnp.asarray(self.alpha_bar_min, jnp.float32)) - 1.0)
        return 2.0 * jnp.log1p(ratio_m1)

    def _t_from_log_alpha_bar(self, la) -> Array:
        # m = 1 − cos(u0 + v)/cos(u0) = 2 sin²(v/2) + k sin v; with w = tan(v/2):
        # (2 − m) w² + 2k w − m = 0, whose cancellation-free root is w = m / (k + √(k² + m(2 − m))).
        k, scale = self._angles()
        m = -jnp.expm1(0.5 * la)
        m = jnp.minimum(m, 1.0 - jnp.sqrt(jnp.asarray(self.alpha_bar_min, jnp.float32)))
        den = k + jnp.sqrt(k**2 + m * (2.0 - m))
        w = jnp.where(den > 0, m / jnp.where(den > 0, den, 1.0), 0.0)  # s = 0 and m = 0: t = 0
        return jnp.minimum(2.0 * jnp.arctan(w) / scale * self.T, self.T)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DiscreteVPSDE(_LogAlphaBarSchedule):
    """Any discrete DDPM schedule, from its ᾱ array, in continuous time t ∈ (0, 1].

    Step i = 1, …, N (1-based) sits at t = i/N with ᾱ(i/N) = ``alphas_cumprod[i − 1]``; log ᾱ is
    interpolated linearly between steps and between t = 0 (log ᾱ = 0, clean data) and t = 1/N, so
    α = √ᾱ and σ = √(1 − ᾱ) are defined at every t and ``t_from_delta`` inverts δ exactly (on the
    piecewise-linear log ᾱ). T = 1 and valid times are (0, 1] (``t_min`` = 0); f = −β/2, g² = β
    with β = −d log ᾱ/dt, constant between steps.

    A network trained on steps 0, …, N − 1 of a 0-based library (diffusers: ``alphas_cumprod[k]``
    at timestep k) is called at timestep k = t·N − 1 for time t; times below 1/N query it below
    its first step, so read estimators at t ≥ 1/N. The methods are those of the schedule protocol
    (the module docstring).

    Args:
      alphas_cumprod: ``(N,)`` ᾱ_i = ∏_{j ≤ i} (1 − β_j), strictly decreasing in (0, 1), N ≥ 1
        (e.g. a diffusers scheduler's ``alphas_cumprod``); ``(B, N)`` for B schedules stacked to
        be vmapped over (not checked).

    Raises:
      ValueError: concrete ``alphas_cumprod`` not 1-D and non-empty, or not strictly decreasing
        in (0, 1).

    Reference: Ho et al., "Denoising Diffusion Probabilistic Models", arXiv 2006.11239;
    Rombach et al., "High-Resolution Image Synthesis with Latent Diffusion Models",
    arXiv 2112.10752 (``scaled_linear``).

    Examples:
      >>> import jax.numpy as jnp
      >>> from mmh_jax.sde import DiscreteVPSDE
      >>> sd = DiscreteVPSDE.scaled_linear()           # Stable Diffusion's schedule, N = 1000
      >>> alpha, sigma = sd.marginal_coefs(1.0)
      >>> round(float(alpha**2), 5), round(float(sd.alphas_cumprod[-1]), 5)
      (0.00466, 0.00466)
      >>> ddpm = DiscreteVPSDE.linear()                # DDPM's: betas linspace(1e-4, 0.02, 1000)
      >>> round(float(ddpm.t_from_delta(ddpm.delta(0.25))), 4)
      0.25
    """

    alphas_cumprod: Array

    def __post_init__(self):
        a = self.alphas_cumprod
        if not _is_concrete(a):
            return
        try:
            a = np.asarray(a)
        except (TypeError, ValueError):
            return
        if a.dtype == object:  # placeholders during tree manipulation
            return
        if a.ndim > 1:  # schedules stacked along leading axes to be vmapped over: checked one by one
            return
        fix = ("pass the cumulative products ᾱ_i = ∏_{j≤i} (1 − β_j) of steps i = 1..N (a diffusers "
               "scheduler's alphas_cumprod), or build one with DiscreteVPSDE.from_betas(betas)")
        if a.ndim != 1 or a.shape[0] == 0 or not np.issubdtype(a.dtype, np.floating):
            raise ValueError(f"DiscreteVPSDE needs alphas_cumprod as a non-empty 1-D float array, got shape "
                             f"{a.shape} and dtype {a.dtype}; {fix}.")
        bad = ~(np.isfinite(a) & (a > 0) & (a < 1))
        if bad.any():
            vals = ", ".join(f"{v:g}" for v in a[bad][:3])
            raise ValueError(f"DiscreteVPSDE needs alphas_cumprod in (0, 1), got [{vals}] at steps "
                             f"{(np.flatnonzero(bad)[:3] + 1).tolist()} (1-based); {fix}.")
        if a.shape[0] > 1 and not np.all(np.diff(a.astype(np.float32)) < 0):
            i = int(np.flatnonzero(np.diff(a.astype(np.float32)) >= 0)[0])
            raise ValueError(f"DiscreteVPSDE needs alphas_cumprod strictly decreasing (in float32), got "
                             f"{a[i]:g} then {a[i + 1]:g} at steps {i + 1} and {i + 2}; {fix}.")

    @classmethod
    def from_betas(cls, betas) -> "DiscreteVPSDE":
        """The schedule of per-step noise rates β_1..β_N: ᾱ = cumprod(1 − β), computed in float64.

        Args:
          betas: ``(N,)`` values in (0, 1).

        Returns:
          a [`DiscreteVPSDE`][mmh_jax.sde.DiscreteVPSDE].

        Raises:
          ValueError: ``betas`` not a non-empty 1-D array of values in (0, 1).

        Examples:
          >>> from mmh_jax.sde import DiscreteVPSDE
          >>> [round(a, 4) for a in DiscreteVPSDE.from_betas([0.1, 0.5]).alphas_cumprod.tolist()]
          [0.9, 0.45]
        """
        b = np.asarray(betas, np.float64)
        if b.ndim != 1 or b.shape[0] == 0 or not np.all((b > 0) & (b < 1)):
            raise ValueError(f"betas must be a non-empty 1-D array of values in (0, 1), got shape {b.shape}"
                             f"{'' if b.ndim != 1 or b.size == 0 else f' with range [{b.min()}, {b.max()}]'}.")
        return cls(jnp.asarray(np.cumprod(1.0 - b), jnp.float32))

    @classmethod
    def linear(cls, num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> "DiscreteVPSDE":
        """DDPM's ``linear`` schedule: β = linspace(beta_start, beta_end, num_steps).

        Returns:
          a [`DiscreteVPSDE`][mmh_jax.sde.DiscreteVPSDE].

        Examples:
          >>> from mmh_jax.sde import DiscreteVPSDE
          >>> DiscreteVPSDE.linear().alphas_cumprod.shape
          (1000,)
        """
        return cls.from_betas(np.linspace(beta_start, beta_end, _steps(num_steps)))

    @classmethod
    def scaled_linear(cls, num_steps: int = 1000, beta_start: float = 0.00085,
                      beta_end: float = 0.012) -> "DiscreteVPSDE":
        """Stable Diffusion's ``scaled_linear`` schedule: β = linspace(√beta_start, √beta_end, num_steps)².

        Returns:
          a [`DiscreteVPSDE`][mmh_jax.sde.DiscreteVPSDE].

        Examples:
          >>> from mmh_jax.sde import DiscreteVPSDE
          >>> round(float(DiscreteVPSDE.scaled_linear().alphas_cumprod[0]), 5)   # 1 − 0.00085
          0.99915
        """
        return cls.from_betas(np.linspace(math.sqrt(beta_start), math.sqrt(beta_end), _steps(num_steps)) ** 2)

    @property
    def T(self) -> float:
        """1: step N sits at t = 1."""
        return 1.0

    @property
    def t_min(self) -> float:
        """0: every time in (0, 1] is valid (below 1/N, log ᾱ is interpolated to 0 at t = 0)."""
        return 0.0

    @property
    def num_steps(self) -> int:
        """N, the number of discrete steps."""
        return jnp.shape(self.alphas_cumprod)[0]

    def _knots(self) -> tuple[Array, Array]:
        """Times k/N and log ᾱ at k = 0..N (log ᾱ = 0 at k = 0)."""
        la = jnp.log(jnp.asarray(self.alphas_cumprod, jnp.float32))
        n = la.shape[0]
        return jnp.arange(n + 1, dtype=jnp.float32) / n, jnp.concatenate([jnp.zeros(1, jnp.float32), la])

    def _log_alpha_bar(self, t) -> Array:
        tk, lk = self._knots()
        return jnp.interp(jnp.asarray(t, jnp.float32), tk, lk)

    def _t_from_log_alpha_bar(self, la) -> Array:
        tk, lk = self._knots()
        return jnp.interp(-la, -lk, tk)  # −log ᾱ increases with t: a monotone grid


def _steps(num_steps) -> int:
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
        raise ValueError(f"num_steps must be an int >= 1, got {num_steps!r}.")
    return int(num_steps)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class EDMSDE:
    """The variance-exploding schedule of EDM: α = 1, σ(t) = t, so a time is its noise level.

    x_t = x₀ + t·ε,  δ(t) = log t,  f = 0,  g² = dσ²/dt = 2t;  T = ``sigma_max``, and valid times
    are [sigma_min, sigma_max] (``t_min`` = sigma_min). The prior is N(0, sigma_max²·I). A network
    in EDM's preconditioned form D(x; σ) gives the ε-prediction ε̂(x, t) = (x − D(x; t))/t. The
    methods are those of the schedule protocol (the module docstring).

    Args:
      sigma_min: the smallest noise level, > 0.
      sigma_max: the largest, > sigma_min (the terminal time T).

    Raises:
      ValueError: concrete ``sigma_min`` ≤ 0, or ``sigma_max`` ≤ ``sigma_min`` or not finite.

    Reference: Karras et al., "Elucidating the Design Space of Diffusion-Based Generative Models",
    arXiv 2206.00364.

    Examples:
      >>> from mmh_jax.sde import EDMSDE
      >>> edm = EDMSDE()
      >>> [float(c) for c in edm.marginal_coefs(0.5)], edm.T, edm.t_min
      ([1.0, 0.5], 80.0, 0.002)
      >>> [float(c) for c in edm.sde_coefs(0.5)]   # (f, g²) = (0, 2t)
      [0.0, 1.0]
    """

    sigma_min: float | Array = 0.002
    sigma_max: float | Array = 80.0

    variance_preserving = False

    def __post_init__(self):
        vals = _concrete_floats(self.sigma_min, self.sigma_max)
        if vals is None:
            return
        lo, hi = vals
        if not lo > 0.0:
            raise ValueError(f"EDMSDE needs sigma_min > 0, got sigma_min={lo}; EDM uses 0.002.")
        if not (math.isfinite(hi) and hi > lo):
            raise ValueError(f"EDMSDE needs a finite sigma_max > sigma_min={lo}, got sigma_max={hi}; EDM uses 80.")

    @property
    def T(self) -> float | Array:
        """The terminal time, ``sigma_max``."""
        return self.sigma_max

    @property
    def t_min(self) -> float | Array:
        """The smallest valid time, ``sigma_min``."""
        return self.sigma_min

    def marginal_coefs(self, t) -> tuple[Array, Array]:
        """(α(t), σ(t)) = (1, t)."""
        t = jnp.asarray(t, jnp.float32)
        return jnp.ones_like(t), t

    def sde_coefs(self, t) -> tuple[Array, Array]:
        """(f(t), g(t)²) = (0, 2t) of the forward SDE dx = g dW."""
        t = jnp.asarray(t, jnp.float32)
        return jnp.zeros_like(t), 2.0 * t

    def delta(self, t) -> Array:
        """δ(t) = log(σ/α) = log t."""
        return jnp.log(jnp.asarray(t, jnp.float32))

    def t_from_delta(self, delta) -> Array:
        """Inverse of ``delta``: t = e^δ."""
        return jnp.exp(jnp.asarray(delta, jnp.float32))

    def t_from_log_sigma(self, log_sigma) -> Array:
        """Inverse of log σ(t): t = σ."""
        return jnp.exp(jnp.asarray(log_sigma, jnp.float32))

    def perturb(self, x0, t, key) -> tuple[Array, Array]:
        """Sample x_t = x₀ + t·ε. Returns ``(x_t, eps)`` (ε is the regression target)."""
        return _perturb(self, x0, t, key)

    def prior_sample(self, key, shape) -> Array:
        """Sample from the prior N(0, sigma_max²·I) that x_T approximately follows."""
        return self.sigma_max * jax.random.normal(key, tuple(shape), jnp.float32)
