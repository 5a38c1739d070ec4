"""Synthetic data on unions of manifolds with known pointwise LID* (ground truth by construction).

Every generator has the signature ``name(n, *, seed, ...) -> Dataset`` and returns ``n`` points
with their true local intrinsic dimension and the index of the mixture component they came from.
Component labels are drawn i.i.d. from the mixture weights (so counts are multinomial and points of
different components are interleaved: any prefix ``ds.x[:m]`` is itself an i.i.d. sample).

Data generation is **host-side numpy** (``np.random.default_rng(seed)``), not JAX: the data sets are
inputs to the JAX estimators, generated once, and several recipes need numpy/scikit-learn
(``make_swiss_roll``, von Mises sampling, rejection sampling). Move the result to devices with
``jax.device_put(ds)`` (a [`Dataset`][mmh_jax.data.synthetic.Dataset] is a pytree).

Recipes (docs/design.md#defaults, after the reference implementation of Ross et al., arXiv 2411.00113, and
Kamkari et al., arXiv 2406.03537):

- [`lollipop`][mmh_jax.data.synthetic.lollipop] (D = 2): disk (LID 2) + stick (LID 1) + point mass (LID 0),
  weights 4 : 2 : 1.
- [`torus_circle`][mmh_jax.data.synthetic.torus_circle] (D = 3): torus R = 10, r = 1 (LID 2) + its core circle
  (LID 1).
- [`swiss_roll`][mmh_jax.data.synthetic.swiss_roll] (D = 3, LID 2).
- [`von_mises_point_mass`][mmh_jax.data.synthetic.von_mises_point_mass] (D = 2): von Mises circle (LID 1) +
  point mass (LID 0), the MMH toy.
- [`gaussian_subspace`][mmh_jax.data.synthetic.gaussian_subspace]: a d-dim Gaussian on a random affine d-plane
  of R^D (LID d).
- [`affine_mixture`][mmh_jax.data.synthetic.affine_mixture]: pieces of random affine d_i-planes, modes
  ``separation`` apart.
- [`squiggly_mixture`][mmh_jax.data.synthetic.squiggly_mixture]:
  [`affine_mixture`][mmh_jax.data.synthetic.affine_mixture] pushed through a random sinusoidal
  diffeomorphism of R^D (LID preserved, linear estimators defeated).

Helpers: [`duplicate`][mmh_jax.data.synthetic.duplicate] (inject exact copies; copies have LID* = 0) and
  [`subsample`][mmh_jax.data.synthetic.subsample].
``GENERATORS`` maps names to generators (used by the CLI).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Sequence

import jax
import numpy as np

from mmh_jax import _checks

__all__ = [
    "Dataset",
    "GENERATORS",
    "affine_mixture",
    "apply_squiggle",
    "duplicate",
    "gaussian_subspace",
    "lollipop",
    "random_isometry",
    "squiggly_mixture",
    "subsample",
    "swiss_roll",
    "torus_circle",
    "von_mises_point_mass",
]

#: ``info`` keys that hold one entry per point; `subsample`/`duplicate` re-index them.
#: Every other ``info`` entry describes the whole data set (bases, centres, map parameters).
PER_POINT_INFO = ("duplicated", "source")

DISTRIBUTIONS = ("uniform", "gaussian", "laplace")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """Points with their ground-truth LID* and mixture component (a pytree).

    Attributes:
      x: ``(n, D)`` float32 points.
      lid: ``(n,)`` int32 true LID* of each point (the dimension of the component it lies on;
        0 for point masses and for duplicated points, see [`duplicate`][mmh_jax.data.synthetic.duplicate]).
      component: ``(n,)`` int32 index of the mixture component each point was drawn from.
      info: dict of numpy arrays with generator-specific extras: data-set-level entries (e.g.
        ``basis``/``mean`` of [`gaussian_subspace`][mmh_jax.data.synthetic.gaussian_subspace],
        ``bases``/``centres`` of the mixtures,
        ``squiggle`` of [`squiggly_mixture`][mmh_jax.data.synthetic.squiggly_mixture]) and the per-point
        entries named in ``PER_POINT_INFO`` (``duplicated``, ``source``; see
        [`duplicate`][mmh_jax.data.synthetic.duplicate]).

    Examples:
      >>> ds = lollipop(7, seed=0)
      >>> ds.x.shape, ds.x.dtype, ds.lid.dtype, ds.component.dtype
      ((7, 2), dtype('float32'), dtype('int32'), dtype('int32'))
      >>> len(jax.tree_util.tree_leaves(ds))  # x, lid, component (info is empty here)
      3
    """

    x: Any
    lid: Any
    component: Any
    info: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        shapes = [getattr(a, "shape", None) for a in (self.x, self.lid, self.component)]
        if any(s is None for s in shapes):  # pytree manipulation with non-array leaves
            return
        sx, sl, sc = shapes
        if len(sx) != 2:
            raise ValueError(f"Dataset.x must have shape (n, D), got shape {tuple(sx)}.")
        if tuple(sl) != (sx[0],) or tuple(sc) != (sx[0],):
            raise ValueError(
                f"Dataset.lid and Dataset.component must have shape (n,) = ({sx[0]},) to match x, "
                f"got lid {tuple(sl)} and component {tuple(sc)}."
            )

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def ambient_dim(self) -> int:
        """D, the number of coordinates of a point."""
        return int(self.x.shape[1])


# --------------------------------------------------------------------------------------------
# argument checks (errors name the argument, the value, and the fix)


def _check_positive(name: str, v: Any) -> float:
    v = float(v)
    if not (v > 0 and math.isfinite(v)):
        raise ValueError(f"{name} must be a positive finite number, got {name}={v}.")
    return v


def _weights(name: str, w: Sequence[float] | None, k: int) -> np.ndarray:
    """Normalised mixture weights; ``None`` means equal weights."""
    if w is None:
        return np.full(k, 1.0 / k)
    w = np.asarray(w, dtype=np.float64)
    if w.shape != (k,):
        raise ValueError(f"{name} must have {k} entries (one per component), got {w.tolist()}.")
    if not (np.all(np.isfinite(w)) and np.all(w >= 0) and w.sum() > 0):
        raise ValueError(f"{name} must be non-negative, finite and not all zero, got {w.tolist()}.")
    return w / w.sum()


def _labels(rng: np.random.Generator, n: int, weights: np.ndarray) -> np.ndarray:
    return rng.choice(len(weights), size=n, p=weights).astype(np.int32)


def _finish(x: np.ndarray, lid_per_component: Sequence[int], component: np.ndarray, **info) -> Dataset:
    lid = np.asarray(lid_per_component, dtype=np.int32)[component]
    return Dataset(np.asarray(x, np.float32), lid, component.astype(np.int32), dict(info))


# --------------------------------------------------------------------------------------------
# low-dimensional recipes


def lollipop(
    n: int, *, seed: int, weights: Sequence[float] = (4.0, 2.0, 1.0)
) -> Dataset:
    """The lollipop: a disk (LID 2), a stick (LID 1) and a point mass (LID 0) in R².

    Component 0: the disk of radius 1 centred at (3, 3), uniform by area (r = √U). Component 1:
    the segment from the disk's edge point nearest (1.5, 1.5), i.e. (3, 3) − (1, 1)/√2, to
    (1.5, 1.5), uniform along its length. Component 2: the point (0, 0).

    Args:
      n: number of points.
      seed: numpy seed.
      weights: mixture weights of (disk, stick, point), normalised (default 4 : 2 : 1).

    Returns:
      A [`Dataset`][mmh_jax.data.synthetic.Dataset] with ``x`` of shape ``(n, 2)``.

    Raises:
      ValueError: ``n < 1`` or bad ``weights``.

    Examples:
      >>> ds = lollipop(1000, seed=0)
      >>> sorted(set(ds.lid.tolist()))
      [0, 1, 2]
      >>> bool((ds.x[ds.component == 2] == 0).all())
      True
    """
    n = _checks.positive_int("n", n)
    w = _weights("weights", weights, 3)
    rng = np.random.default_rng(seed)
    comp = _labels(rng, n, w)
    centre = np.array([3.0, 3.0])
    r = np.sqrt(rng.uniform(size=n))
    theta = rng.uniform(0.0, 2.0 * np.pi, size=n)
    disk = centre + r[:, None] * np.stack([np.cos(theta), np.sin(theta)], axis=1)
    start = centre - np.array([1.0, 1.0]) / np.sqrt(2.0)
    end = np.array([1.5, 1.5])
    s = rng.uniform(size=n)
    stick = start + s[:, None] * (end - start)
    x = np.where((comp == 0)[:, None], disk, np.where((comp == 1)[:, None], stick, 0.0))
    return _finish(x, (2, 1, 0), comp)


def torus_circle(
    n: int,
    *,
    seed: int,
    major_radius: float = 10.0,
    minor_radius: float = 1.0,
    weights: Sequence[float] = (1.0, 1.0),
) -> Dataset:
    """A torus (LID 2) and its core circle (LID 1) in R³, half and half by default.

    Torus: ((R + r cos φ) cos θ, (R + r cos φ) sin θ, r sin φ), sampled uniformly by area
    (θ uniform, φ by rejection with acceptance (R + r cos φ)/(R + r)). Circle: (R cos θ, R sin θ, 0),
    θ uniform. The circle is the torus's core, at distance r from its surface.

    Args:
      n: number of points.
      seed: numpy seed.
      major_radius: R (default 10).
      minor_radius: r, with 0 < r < R (default 1).
      weights: mixture weights of (torus, circle) (default equal).

    Returns:
      A [`Dataset`][mmh_jax.data.synthetic.Dataset] with ``x`` of shape ``(n, 3)``; component 0 = torus, 1 =
      circle.

    Raises:
      ValueError: ``n < 1``, radii not positive or ``minor_radius >= major_radius``, bad weights.

    Examples:
      >>> ds = torus_circle(500, seed=0)
      >>> c = ds.x[ds.component == 1]
      >>> bool(np.allclose(np.hypot(c[:, 0], c[:, 1]), 10.0) and np.allclose(c[:, 2], 0.0))
      True
    """
    n = _checks.positive_int("n", n)
    R = _check_positive("major_radius", major_radius)
    r = _check_positive("minor_radius", minor_radius)
    if r >= R:
        raise ValueError(
            f"minor_radius must be smaller than major_radius for a ring torus, got minor_radius={r}, "
            f"major_radius={R}."
        )
    w = _weights("weights", weights, 2)
    rng = np.random.default_rng(seed)
    comp = _labels(rng, n, w)
    theta = rng.uniform(0.0, 2.0 * np.pi, size=n)
    phi = _torus_phi(rng, n, R, r)
    rho = np.where(comp == 0, R + r * np.cos(phi), R)
    z = np.where(comp == 0, r * np.sin(phi), 0.0)
    x = np.stack([rho * np.cos(theta), rho * np.sin(theta), z], axis=1)
    return _finish(x, (2, 1), comp)


def _torus_phi(rng: np.random.Generator, n: int, R: float, r: float) -> np.ndarray:
    """Angles φ with density ∝ R + r cos φ (uniform area on the torus), by vectorised rejection."""
    out = np.empty(0)
    while out.size < n:
        m = 2 * (n - out.size) + 16  # acceptance ≥ (R − r)/(R + r) > 0; R/(R + r) on average
        phi = rng.uniform(0.0, 2.0 * np.pi, size=m)
        keep = rng.uniform(size=m) * (R + r) < R + r * np.cos(phi)
        out = np.concatenate([out, phi[keep]])
    return out[:n]


def swiss_roll(n: int, *, seed: int, hole: bool = False) -> Dataset:
    """scikit-learn's noiseless Swiss roll in R³ (LID 2, one component).

    Args:
      n: number of points.
      seed: seed passed to ``sklearn.datasets.make_swiss_roll`` as ``random_state``.
      hole: cut the rectangular hole of ``make_swiss_roll(hole=True)`` (default False).

    Returns:
      A [`Dataset`][mmh_jax.data.synthetic.Dataset] with ``x`` of shape ``(n, 3)``; ``info["t"]`` is the (n,)
      roll parameter (x = (t cos t, h, t sin t)).

    Raises:
      ValueError: ``n < 1``.

    Examples:
      >>> ds = swiss_roll(100, seed=0)
      >>> ds.x.shape, int(ds.lid.max())
      ((100, 3), 2)
    """
    from sklearn.datasets import make_swiss_roll

    n = _checks.positive_int("n", n)
    x, t = make_swiss_roll(n, noise=0.0, random_state=seed, hole=bool(hole))
    comp = np.zeros(n, np.int32)
    return _finish(x, (2,), comp, t=np.asarray(t, np.float32))


def von_mises_point_mass(
    n: int,
    *,
    seed: int,
    kappa: float = 2.0,
    mu: float = 0.0,
    point: Sequence[float] = (0.0, 0.0),
    point_weight: float = 0.2,
) -> Dataset:
    """The MMH toy (Ross et al. §5): a von Mises circle (LID 1) plus a point mass (LID 0) in R².

    Component 0: (cos θ, sin θ) with θ ~ vonMises(mu, kappa) on the unit circle; its density is
    highest at angle ``mu`` and lowest opposite it, where isolated training points invite OD-Mem.
    Component 1: the single point ``point``; by default the circle's centre (0, 0), at distance 1
    from every circle point, with probability ``point_weight`` = 0.2 (enough repeated copies for a
    model to learn the atom: DD-Mem).

    Args:
      n: number of points.
      seed: numpy seed.
      kappa: von Mises concentration κ ≥ 0 (default 2; 0 is uniform on the circle).
      mu: von Mises mean angle in radians (default 0, i.e. the densest point is (1, 0)).
      point: location of the point mass (default (0, 0)); must not lie on the unit circle.
      point_weight: probability of the point mass, in [0, 1] (default 0.2).

    Returns:
      A [`Dataset`][mmh_jax.data.synthetic.Dataset] with ``x`` of shape ``(n, 2)``; component 0 = circle, 1 =
      point mass.

    Raises:
      ValueError: ``n < 1``, ``kappa < 0``, ``point_weight`` outside [0, 1], ``point`` not a
        2-vector or on the circle.

    Examples:
      >>> ds = von_mises_point_mass(200, seed=0)
      >>> circle = ds.x[ds.component == 0]
      >>> bool(np.allclose(np.linalg.norm(circle, axis=1), 1.0, atol=1e-6))
      True
    """
    n = _checks.positive_int("n", n)
    kappa = float(kappa)
    if not (kappa >= 0 and math.isfinite(kappa)):
        raise ValueError(f"kappa must be a finite number >= 0, got kappa={kappa}.")
    if not 0.0 <= float(point_weight) <= 1.0:
        raise ValueError(f"point_weight must lie in [0, 1], got point_weight={point_weight}.")
    p = np.asarray(point, dtype=np.float64)
    if p.shape != (2,):
        raise ValueError(f"point must be a 2-vector (x, y), got {point!r}.")
    if abs(np.linalg.norm(p) - 1.0) < 1e-6:
        raise ValueError(f"point must lie off the unit circle (|point| != 1), got point={p.tolist()}.")
    w = np.array([1.0 - float(point_weight), float(point_weight)])
    rng = np.random.default_rng(seed)
    comp = _labels(rng, n, w)
    theta = rng.vonmises(float(mu), kappa, size=n)
    circle = np.stack([np.cos(theta), np.sin(theta)], axis=1)
    x = np.where((comp == 0)[:, None], circle, p)
    return _finish(x, (1, 0), comp)


# --------------------------------------------------------------------------------------------
# affine pieces in high dimension


def random_isometry(rng: np.random.Generator, ambient_dim: int, dim: int) -> np.ndarray:
    """A Haar-random ``(ambient_dim, dim)`` matrix with orthonormal columns: Q of the QR of a Gaussian.

    Q is the QR factor whose R has a positive diagonal (the unique choice, which makes Q Haar-
    distributed). It is computed by CholeskyQR2 (twice Q ← Q·L⁻ᵀ with L Lᵀ = QᵀQ), which is
    the same factorisation in BLAS-3 operations and several times faster than Householder QR for
    D ~ 1000; it falls back to ``numpy.linalg.qr`` if the Gaussian is numerically singular.
    With ``dim == ambient_dim`` it is a random orthogonal matrix (rotation or reflection).

    Args:
      rng: a numpy ``Generator`` (the only source of randomness).
      ambient_dim: D, the number of rows.
      dim: d ≤ D, the number of orthonormal columns (0 gives a ``(D, 0)`` matrix; there are no
        more than D orthonormal vectors in R^D, so a larger d gives D columns).

    Returns:
      float64 ``(ambient_dim, dim)`` with QᵀQ = I.

    Raises:
      ValueError: a negative size (from numpy).

    Reference: Mezzadri, "How to generate random matrices from the classical compact groups",
    arXiv math-ph/0609050 (positive-diagonal QR gives the Haar measure).

    Examples:
      >>> Q = random_isometry(np.random.default_rng(0), 5, 3)
      >>> bool(np.allclose(Q.T @ Q, np.eye(3)))
      True
    """
    from scipy import linalg

    if dim == 0:
        return np.zeros((ambient_dim, 0))
    g = rng.standard_normal((ambient_dim, dim))
    try:
        q = g
        for _ in range(2):
            chol = linalg.cholesky(q.T @ q, lower=True)
            q = linalg.solve_triangular(chol, q.T, lower=True).T
        if np.all(np.isfinite(q)):
            return q
    except np.linalg.LinAlgError:
        pass
    q, r = np.linalg.qr(g)
    s = np.sign(np.diag(r))
    s[s == 0] = 1.0
    return q * s[None, :]


def gaussian_subspace(
    n: int,
    *,
    seed: int,
    dim: int,
    ambient_dim: int,
    scale: float = 1.0,
    mean: Sequence[float] | np.ndarray | None = None,
) -> Dataset:
    """A d-dimensional Gaussian on a random affine d-plane of R^D: x = μ + s·U z, z ~ N(0, I_d).

    U is a Haar-random ``(D, d)`` orthonormal basis; μ is ``mean`` or, by default, drawn from
    N(0, I_D). Every point has LID d (``dim = 0`` gives a point mass at μ). Its VP-SDE score is
    known in closed form, so it is the oracle for score-based estimators.

    Args:
      n: number of points.
      seed: numpy seed (the basis, the mean and the points all derive from it).
      dim: d, with 0 ≤ d ≤ D.
      ambient_dim: D ≥ 1.
      scale: s > 0, the standard deviation along the plane (default 1).
      mean: the offset μ, shape ``(D,)``; default a draw from N(0, I_D).

    Returns:
      A [`Dataset`][mmh_jax.data.synthetic.Dataset] with ``x`` of shape ``(n, D)`` and ``info = {"basis": U
      (D, d), "mean": μ (D,), "scale": s ()}`` (float32).

    Raises:
      ValueError: ``n < 1``, ``dim`` outside [0, ambient_dim], ``scale <= 0``, wrong ``mean`` shape.

    Examples:
      >>> ds = gaussian_subspace(50, seed=0, dim=2, ambient_dim=5)
      >>> U, mu = ds.info["basis"], ds.info["mean"]
      >>> resid = (ds.x - mu) - (ds.x - mu) @ U @ U.T  # nothing outside the plane
      >>> U.shape, bool(np.abs(resid).max() < 1e-5)
      ((5, 2), True)
    """
    n = _checks.positive_int("n", n)
    D = _checks.positive_int("ambient_dim", ambient_dim, minimum=1)
    d = _checks.positive_int("dim", dim, minimum=0)
    if d > D:
        raise ValueError(f"dim must be <= ambient_dim, got dim={d} > ambient_dim={D}; lower dim or raise ambient_dim.")
    s = _check_positive("scale", scale)
    rng = np.random.default_rng(seed)
    U = random_isometry(rng, D, d)
    if mean is None:
        mu = rng.standard_normal(D)
    else:
        mu = np.asarray(mean, np.float64)
        if mu.shape != (D,):
            raise ValueError(f"mean must have shape (ambient_dim,) = ({D},), got shape {mu.shape}.")
    z = rng.standard_normal((n, d))
    x = mu + s * z @ U.T
    comp = np.zeros(n, np.int32)
    return _finish(
        x, (d,), comp, basis=U.astype(np.float32), mean=mu.astype(np.float32), scale=np.float32(s)
    )


def _standard_latent(rng: np.random.Generator, n: int, d: int, distribution: str) -> np.ndarray:
    """Zero-mean, unit-variance latent samples: U[−1, 1]·√3, N(0, 1) or Laplace(0, 1/√2)."""
    if distribution == "uniform":
        return rng.uniform(-1.0, 1.0, size=(n, d)) * np.sqrt(3.0)
    if distribution == "gaussian":
        return rng.standard_normal((n, d))
    return rng.laplace(0.0, 1.0 / np.sqrt(2.0), size=(n, d))


def _mode_centres(k: int, D: int, separation: float) -> np.ndarray:
    """k points in R^D, ``separation`` apart: simplex vertices (pairwise) if k ≤ D, else a circle
    (neighbours) in the first two coordinates, or a line when D = 1."""
    if k == 1:
        return np.zeros((1, D))
    if k <= D:
        c = np.eye(k, D) * (separation / np.sqrt(2.0))  # ‖e_i − e_j‖ = √2
        return c - c.mean(axis=0)
    if D == 1:
        return (np.arange(k) - (k - 1) / 2.0)[:, None] * separation
    radius = separation / (2.0 * np.sin(np.pi / k))
    ang = 2.0 * np.pi * np.arange(k) / k
    c = np.zeros((k, D))
    c[:, 0], c[:, 1] = radius * np.cos(ang), radius * np.sin(ang)
    return c


def _affine_parts(
    rng: np.random.Generator,
    n: int,
    dims: Sequence[int],
    D: int,
    distribution: str,
    weights: Sequence[float] | None,
    separation: float,
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray], np.ndarray]:
    """Shared body of the affine and squiggly mixtures (float64)."""
    comp = _labels(rng, n, _weights("weights", weights, len(dims)))
    centres = _mode_centres(len(dims), D, separation)
    bases = [random_isometry(rng, D, d) for d in dims]
    x = np.empty((n, D))
    for i, (d, U) in enumerate(zip(dims, bases)):
        idx = np.flatnonzero(comp == i)
        u = _standard_latent(rng, idx.size, d, distribution)
        x[idx] = centres[i] + u @ U.T
    return x, comp, bases, centres


def _check_mixture_args(dims, ambient_dim, distribution, separation) -> tuple[tuple[int, ...], int, str, float]:
    D = _checks.positive_int("ambient_dim", ambient_dim, minimum=1)
    if isinstance(dims, (int, np.integer)):
        raise TypeError(f"dims must be a sequence of ints (one per component), got the int {dims!r}; pass [{dims}].")
    dims = tuple(dims)
    if not dims:
        raise ValueError("dims must name at least one component dimension, got an empty sequence.")
    dims = tuple(_checks.positive_int(f"dims[{i}]", d, minimum=0) for i, d in enumerate(dims))
    if max(dims) > D:
        raise ValueError(
            f"every entry of dims must be <= ambient_dim={D}, got dims={list(dims)}; lower dims or raise ambient_dim."
        )
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"distribution must be one of {DISTRIBUTIONS}, got distribution={distribution!r}.")
    return dims, D, distribution, _check_positive("separation", separation)


def affine_mixture(
    n: int,
    *,
    seed: int,
    dims: Sequence[int],
    ambient_dim: int,
    distribution: str = "uniform",
    weights: Sequence[float] | None = None,
    separation: float = 10.0,
) -> Dataset:
    """A mixture of flat pieces of different dimensions: component i lies on a random affine d_i-plane.

    Component i draws u ∈ R^{d_i} with i.i.d. standardised coordinates (``"uniform"``: U[−1, 1]
    scaled by √3; ``"gaussian"``: N(0, 1); ``"laplace"``: Laplace with scale 1/√2, all zero-mean
    and unit-variance, analytically rather than from sample moments), lifts it with a Haar-random
    isometry U_i: R^{d_i} → R^D and shifts it to its mode centre c_i: x = c_i + U_i u. The centres
    are ``separation`` apart: vertices of a regular simplex (all pairs) when #components ≤ D, else
    neighbours on a circle in the first two coordinates. LID of component i is d_i.

    Args:
      n: number of points.
      seed: numpy seed.
      dims: the component dimensions d_i, each in [0, ambient_dim].
      ambient_dim: D.
      distribution: ``"uniform"`` (default), ``"gaussian"`` or ``"laplace"``.
      weights: mixture weights (default equal).
      separation: distance between mode centres (default 10).

    Returns:
      A [`Dataset`][mmh_jax.data.synthetic.Dataset] with ``x`` of shape ``(n, D)`` and ``info = {"bases":
      tuple of (D, d_i), "centres": (k, D)}`` (float32).

    Raises:
      ValueError: ``n < 1``, empty ``dims`` or an entry outside [0, ambient_dim], unknown
        ``distribution``, bad ``weights``, ``separation <= 0``.

    Examples:
      >>> ds = affine_mixture(300, seed=0, dims=[1, 3], ambient_dim=10)
      >>> [int(np.linalg.matrix_rank(ds.x[ds.component == i] - ds.info["centres"][i], tol=1e-4))
      ...  for i in range(2)]
      [1, 3]
    """
    n = _checks.positive_int("n", n)
    dims, D, distribution, separation = _check_mixture_args(dims, ambient_dim, distribution, separation)
    rng = np.random.default_rng(seed)
    x, comp, bases, centres = _affine_parts(rng, n, dims, D, distribution, weights, separation)
    return _finish(
        x, dims, comp, bases=tuple(U.astype(np.float32) for U in bases), centres=centres.astype(np.float32)
    )


def _squiggle_params(rng: np.random.Generator, D: int, rounds: int) -> dict[str, np.ndarray]:
    half = max(1, D // 2)
    sin_mask = np.zeros((rounds, D), bool)
    flip = np.ones((rounds, D), np.float32)
    rot = np.empty((rounds, D, D), np.float32)
    for j in range(rounds):
        sin_mask[j, rng.choice(D, size=half, replace=False)] = True
        flip[j, rng.choice(D, size=half, replace=False)] = -1.0
        rot[j] = random_isometry(rng, D, D)
    return {"sin_mask": sin_mask, "flip": flip, "rotation": rot}


def apply_squiggle(x: np.ndarray, squiggle: dict[str, np.ndarray]) -> np.ndarray:
    """Apply the random diffeomorphism of [`squiggly_mixture`][mmh_jax.data.synthetic.squiggly_mixture] (its
    ``info["squiggle"]``) to ``x``.

    Each round j: x ← x + (1 − κ)·sin(ωx)/ω on the coordinates of ``sin_mask[j]``; x ← x·``flip[j]``
    (a sign flip on another random half); x ← x ``rotation[j]``ᵀ. Each step is a diffeomorphism of
    R^D (the sine step has derivative 1 + (1 − κ) cos(ωx) ≥ κ > 0), so LID is preserved.

    Args:
      x: ``(m, D)`` points (computed in float64).
      squiggle: dict with ``sin_mask (r, D)``, ``flip (r, D)``, ``rotation (r, D, D)``,
        ``frequency ()`` and ``kappa ()``.

    Returns:
      ``(m, D)`` float64 transformed points.

    Raises:
      KeyError: ``squiggle`` lacks one of the entries above.
      ValueError: ``x``'s width differs from the squiggle's D (numpy broadcasting error).

    Examples:
      >>> ds = squiggly_mixture(20, seed=0, dims=[1], ambient_dim=3)
      >>> flat = ds.info["centres"][0] + np.zeros((1, 3))
      >>> apply_squiggle(flat, ds.info["squiggle"]).shape
      (1, 3)
    """
    x = np.array(x, dtype=np.float64)
    omega = float(squiggle["frequency"])
    amp = 1.0 - float(squiggle["kappa"])
    for mask, flip, rot in zip(squiggle["sin_mask"], squiggle["flip"], squiggle["rotation"]):
        x = x + mask * (amp * np.sin(omega * x) / omega)
        x = x * flip.astype(np.float64)
        x = x @ rot.astype(np.float64).T
    return x


def squiggly_mixture(
    n: int,
    *,
    seed: int,
    dims: Sequence[int],
    ambient_dim: int,
    frequency: float = 1.0,
    distribution: str = "uniform",
    weights: Sequence[float] | None = None,
    separation: float = 10.0,
    rounds: int = 5,
    kappa: float = 1e-4,
) -> Dataset:
    """[`affine_mixture`][mmh_jax.data.synthetic.affine_mixture] bent by a random sinusoidal diffeomorphism of
    R^D (LID preserved).

    After the affine mixture, ``rounds`` times (default 5): x ← x + (1 − κ)·sin(ωx)/ω on a random
    half of the coordinates; a sign flip on another (independent) random half; a Haar-random
    rotation. d/dx [x + (1 − κ) sin(ωx)/ω] = 1 + (1 − κ) cos(ωx) ≥ κ > 0, so the map is a
    diffeomorphism and each point keeps its component's LID d_i, while the pieces are no longer
    flat (lPCA and other linear estimators over-count). Vectorised numpy: D = 1000 takes well
    under a second per thousand points.

    Args:
      n: number of points.
      seed: numpy seed.
      dims: component dimensions d_i, each in [0, ambient_dim].
      ambient_dim: D.
      frequency: ω, one of 0.5, 1, 5, 10 in the reference recipe (any ω > 0 is accepted;
        default 1). Larger ω bends at a smaller scale.
      distribution: ``"uniform"`` (default), ``"gaussian"`` or ``"laplace"``; see
        [`affine_mixture`][mmh_jax.data.synthetic.affine_mixture].
      weights: mixture weights (default equal).
      separation: distance between mode centres before bending (default 10).
      rounds: number of {sine, flip, rotation} rounds (default 5).
      kappa: κ ∈ (0, 1], keeps the sine step strictly monotone (default 1e-4).

    Returns:
      A [`Dataset`][mmh_jax.data.synthetic.Dataset] with ``x`` of shape ``(n, D)`` and ``info = {"bases",
      "centres",
      "squiggle"}``: the flat pieces as in [`affine_mixture`][mmh_jax.data.synthetic.affine_mixture] (before
      bending) and the map's
      parameters (float32 rotations, ``rounds·D²`` numbers), which
      [`apply_squiggle`][mmh_jax.data.synthetic.apply_squiggle] applies.

    Raises:
      ValueError: as [`affine_mixture`][mmh_jax.data.synthetic.affine_mixture], plus ``frequency <= 0``,
        ``rounds < 0``, ``kappa`` outside (0, 1].

    Examples:
      >>> ds = squiggly_mixture(100, seed=0, dims=[1, 2], ambient_dim=4, frequency=5.0)
      >>> ds.x.shape, sorted(set(ds.lid.tolist()))
      ((100, 4), [1, 2])
    """
    n = _checks.positive_int("n", n)
    dims, D, distribution, separation = _check_mixture_args(dims, ambient_dim, distribution, separation)
    omega = _check_positive("frequency", frequency)
    rounds = _checks.positive_int("rounds", rounds, minimum=0)
    kappa = float(kappa)
    if not 0.0 < kappa <= 1.0:
        raise ValueError(f"kappa must lie in (0, 1] so the sine step stays a diffeomorphism, got kappa={kappa}.")
    rng = np.random.default_rng(seed)
    x, comp, bases, centres = _affine_parts(rng, n, dims, D, distribution, weights, separation)
    squiggle = _squiggle_params(rng, D, rounds)
    squiggle["frequency"] = np.float32(omega)
    squiggle["kappa"] = np.float32(kappa)
    x = apply_squiggle(x, squiggle)
    return _finish(
        x,
        dims,
        comp,
        bases=tuple(U.astype(np.float32) for U in bases),
        centres=centres.astype(np.float32),
        squiggle=squiggle,
    )


# --------------------------------------------------------------------------------------------
# helpers


def _take(ds: Dataset, idx: np.ndarray) -> Dataset:
    info = {k: (np.asarray(v)[idx] if k in PER_POINT_INFO else v) for k, v in ds.info.items()}
    return Dataset(np.asarray(ds.x)[idx], np.asarray(ds.lid)[idx], np.asarray(ds.component)[idx], info)


def duplicate(ds: Dataset, indices: Sequence[int] | np.ndarray, m: int, *, seed: int | None = None) -> Dataset:
    """Inject exact duplicates: each chosen point appears ``m`` times in total (m − 1 copies added).

    Convention (docs/design.md#the-science: "duplication ⇔ LID* = 0"): a point repeated m ≥ 2 times is an atom of
    the data distribution, so **every occurrence of it — the original and its copies — gets
    ``lid = 0``**; ``component`` keeps the original's value. ``m = 1`` changes nothing. The result's
    ``info`` gains per-point entries ``duplicated`` (bool, True for every occurrence of a
    duplicated point) and ``source`` (int32 index of the row of ``ds`` each row copies; the
    identity for the untouched rows). Other ``info`` entries are carried over.

    Args:
      ds: the data set.
      indices: distinct row indices of ``ds`` to duplicate (negative indices count from the end).
      m: total number of occurrences of each chosen point, m ≥ 1.
      seed: ``None`` (default) appends the copies after the original rows, in order; an int
        shuffles all rows with ``np.random.default_rng(seed)``.

    Returns:
      A [`Dataset`][mmh_jax.data.synthetic.Dataset] of ``len(ds) + len(indices)·(m − 1)`` rows.

    Raises:
      ValueError: ``m < 1``, indices out of range, repeated or not 1-D integers.

    Examples:
      >>> ds = duplicate(lollipop(10, seed=0), [0, 3], 3)
      >>> len(ds), int(ds.info["duplicated"].sum()), ds.lid[ds.info["duplicated"]].tolist()
      (14, 6, [0, 0, 0, 0, 0, 0])
      >>> ds.info["source"][10:].tolist()
      [0, 3, 0, 3]
    """
    m = _checks.positive_int("m", m, minimum=1)
    n = len(ds)
    idx = np.asarray(indices)
    if idx.ndim != 1 or not (idx.size == 0 or np.issubdtype(idx.dtype, np.integer)):
        raise ValueError(f"indices must be a 1-D sequence of ints, got {indices!r}.")
    if idx.size and (idx.min() < -n or idx.max() >= n):
        raise ValueError(f"indices must lie in [-{n}, {n}) for a data set of {n} points, got {idx.tolist()}.")
    idx = np.where(idx < 0, idx + n, idx).astype(np.int64)
    if np.unique(idx).size != idx.size:
        raise ValueError(f"indices must be distinct (use m for multiplicity), got {idx.tolist()}.")
    base_src = np.asarray(ds.info["source"]) if "source" in ds.info else np.arange(n)
    base_dup = np.asarray(ds.info["duplicated"]) if "duplicated" in ds.info else np.zeros(n, bool)
    rows = np.concatenate([np.arange(n), np.tile(idx, m - 1)])
    out = _take(ds, rows)
    dup = base_dup[rows].copy()
    lid = out.lid.copy()
    if m >= 2 and idx.size:
        hit = np.isin(rows, idx)
        dup |= hit
        lid[hit] = 0
    info = dict(out.info, duplicated=dup, source=base_src[rows].astype(np.int32))
    out = Dataset(out.x, lid, out.component, info)
    if seed is not None:
        out = _take(out, np.random.default_rng(seed).permutation(len(out)))
    return out


def subsample(ds: Dataset, n: int, *, seed: int) -> Dataset:
    """``n`` rows of ``ds`` drawn uniformly without replacement, kept in their original order.

    Per-point ``info`` entries (``PER_POINT_INFO``) are sub-selected; the others are kept.

    Args:
      ds: the data set.
      n: number of rows, 1 ≤ n ≤ len(ds).
      seed: numpy seed.

    Returns:
      A [`Dataset`][mmh_jax.data.synthetic.Dataset] with ``n`` rows.

    Raises:
      ValueError: ``n`` outside [1, len(ds)].

    Examples:
      >>> ds = subsample(lollipop(100, seed=0), 10, seed=1)
      >>> len(ds), ds.x.shape
      (10, (10, 2))
    """
    n = _checks.positive_int("n", n)
    if n > len(ds):
        raise ValueError(
            f"n must be <= len(ds) = {len(ds)} (sampling without replacement), got n={n}; "
            "generate more points or lower n."
        )
    idx = np.sort(np.random.default_rng(seed).choice(len(ds), size=n, replace=False))
    return _take(ds, idx)


#: name -> generator (explicit table); all take ``(n, *, seed, ...)``.
GENERATORS: dict[str, Callable[..., Dataset]] = {
    "lollipop": lollipop,
    "torus_circle": torus_circle,
    "swiss_roll": swiss_roll,
    "von_mises_point_mass": von_mises_point_mass,
    "gaussian_subspace": gaussian_subspace,
    "affine_mixture": affine_mixture,
    "squiggly_mixture": squiggly_mixture,
}
