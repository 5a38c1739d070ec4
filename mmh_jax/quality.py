"""Sample quality: improved precision and recall (Kynkäänniemi et al. 2019) and the energy distance.

Used to price mitigation (docs/design.md#validation, experiment 3): steering sampling towards higher LID_θ should
lower the memorized fraction at a small cost in quality. Examples are sets ``(N, *event)``
compared by Euclidean distance over their flattened entries (in the paper, over feature
embeddings; pass embeddings here to do the same). The searches are [`mmh_jax.lid.knn`][mmh_jax.lid.knn]: exact
float32 distances, memory bounded by chunking. Precision and recall say whether samples lie on the
data and cover it; [`energy_distance`][mmh_jax.quality.energy_distance] is one number for how far the two
distributions are
apart (a distribution distance that needs no feature network and no bandwidth, usable with ~100
samples). Depends on jax and numpy only.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from mmh_jax import _checks
from mmh_jax.lid import knn

__all__ = ["energy_distance", "knn_precision_recall"]

Array = jax.Array

#: Candidate balls per query re-checked with exact distances (see `_covered`).
_CANDIDATES = 8
#: Floats one chunk of the re-check may hold (16 MiB, as the kNN search's budget).
_BUDGET = 1 << 22


def _radii(points: Array, k: int, chunk_size: int | None) -> Array:
    """Distance of each point to its k-th nearest *other* point of the same set, (N,)."""
    dists, _ = knn(points, k=k, chunk_size=chunk_size)
    return dists[:, k - 1]


def _covered(queries: Array, centres: Array, radii: Array, chunk_size: int | None) -> Array:
    """bool (M,): whether each query lies in some ball B(centres_j, radii_j) (closed).

    A query q is covered iff min_j (‖q − c_j‖² − r_j²) ≤ 0. With R² = max_j r_j², lifting
    c'_j = (c_j, √(R² − r_j²)) and q' = (q, 0) gives ‖q' − c'_j‖² = ‖q − c_j‖² + R² − r_j²,
    so the minimising ball is the nearest neighbour of q' among the lifted centres, which the kNN
    search finds (not merely the nearest centre: its ball may be small while a farther, larger
    ball covers q). The lift rounds at the float32 precision of R², which can only reorder balls
    whose margins tie at that precision, so the ``_CANDIDATES`` best are re-checked with
    ‖q − c_j‖ ≤ r_j, distances computed by direct subtraction like the radii. The re-check is
    chunked over queries like the search, so memory stays bounded.
    """
    m, dim = queries.shape
    r2 = radii * radii
    # Clipped: under jit XLA may fuse max(r²) − r² into an FMA whose exact residual is < 0 (NaN).
    lift = jnp.sqrt(jnp.maximum(jnp.max(r2) - r2, 0.0))
    centres_l = jnp.concatenate([centres, lift[:, None]], axis=1)
    queries_l = jnp.concatenate([queries, jnp.zeros((m, 1), queries.dtype)], axis=1)
    c = min(_CANDIDATES, centres.shape[0])
    _, idx = knn(centres_l, k=c, queries=queries_l, chunk_size=chunk_size)

    def one(args):
        q, i = args
        dist = jnp.sqrt(jnp.sum((centres[i] - q[None, :]) ** 2, axis=1))
        return jnp.any(dist <= radii[i])

    batch = chunk_size if chunk_size is not None else max(1, _BUDGET // (c * dim))
    return lax.map(one, (queries, idx), batch_size=max(1, min(batch, m)))


def knn_precision_recall(real, fake, *, k: int = 3, chunk_size: int | None = None) -> dict[str, Array]:
    """Improved precision and recall of ``fake`` samples against ``real`` data (Kynkäänniemi et al.).

    The real manifold is the union of closed balls B(x, r_k(x)) over real points x, r_k(x) the
    distance from x to its k-th nearest *other* real point; the fake manifold likewise. Then

    - precision = (1/M) Σ_{fake f} 1[f lies in the real manifold]   (are samples realistic?),
    - recall    = (1/N) Σ_{real x} 1[x lies in the fake manifold]   (is the data covered?).

    Exact (no approximate neighbours); memory bounded by chunking over queries and data blocks.

    Args:
      real: (N, *event) floating point, N ≥ k + 1.
      fake: (M, *event) floating point, same event shape, M ≥ k + 1.
      k: neighbour whose distance is the ball radius (default 3, the paper's choice).
      chunk_size: queries per chunk (default: from a 16 MiB budget per intermediate).

    Returns:
      ``{"precision": p, "recall": r}``, float32 scalars in [0, 1].

    Raises:
      TypeError: integer dtype, non-int k. ValueError: rank < 2, event shapes differ, NaN/inf
        values, a set with ≤ k points.

    Reference: Kynkäänniemi, Karras, Laine, Lehtinen & Aila, "Improved Precision and Recall Metric
    for Assessing Generative Models", NeurIPS 2019, arXiv 1904.06991.

    Examples:
      >>> import jax.numpy as jnp
      >>> real = jnp.array([[0.0], [1.0], [2.0], [3.0]])          # balls of radius 1: [-1, 4]
      >>> fake = jnp.array([[0.5], [0.7], [3.9], [10.0], [11.0]])
      >>> pr = knn_precision_recall(real, fake, k=1)
      >>> round(float(pr["precision"]), 3), round(float(pr["recall"]), 3)
      (0.6, 0.75)
    """
    real2 = _checks.points("real", real)
    fake2 = _checks.points("fake", fake, event_shape=tuple(jnp.shape(real)[1:]), other="real")
    k = _checks.positive_int("k", k)
    for name, x in (("real", real2), ("fake", fake2)):
        if x.shape[0] < k + 1:
            raise ValueError(
                f"{name} must hold at least k + 1 = {k + 1} examples (each ball's radius is the "
                f"distance to the k-th nearest other {name} example), got {x.shape[0]}; lower k or "
                "pass more examples."
            )
    return _precision_recall(real2, fake2, k=k, chunk_size=chunk_size)


@functools.partial(jax.jit, static_argnames=("k", "chunk_size"))
def _precision_recall(real: Array, fake: Array, *, k: int, chunk_size: int | None) -> dict[str, Array]:
    """One compiled program for the four searches (validated (N, D), (M, D) float32 inputs)."""
    r_real = _radii(real, k, chunk_size)
    r_fake = _radii(fake, k, chunk_size)
    precision = jnp.mean(_covered(fake, real, r_real, chunk_size).astype(jnp.float32))
    recall = jnp.mean(_covered(real, fake, r_fake, chunk_size).astype(jnp.float32))
    return {"precision": precision, "recall": recall}


def energy_distance(real, fake, *, chunk_size: int | None = None) -> Array:
    """Unbiased energy distance between the distributions of ``real`` and ``fake`` (Székely & Rizzo).

    ℰ(P, Q) = 2·E‖X − Y‖ − E‖X − X′‖ − E‖Y − Y′‖  (X, X′ ~ P, Y, Y′ ~ Q independent), which is ≥ 0
    and 0 only when P = Q (it is the squared MMD of the distance kernel; no bandwidth to choose).
    Estimated without bias by U-statistics: the mean over all pairs (x_i, y_j) for the cross term and
    over pairs i ≠ i′ (j ≠ j′) within each set, so the estimate can be slightly negative when the
    distributions agree. No square root is taken (``scipy.stats.energy_distance``, 1-D only, returns
    √ℰ of the plug-in estimate). Euclidean distance over the flattened entries, computed by direct
    subtraction (a point's distance to itself is exactly 0), chunked over rows so that memory stays
    bounded; O((N + M)²·D) time.

    Args:
      real: (N, *event) floating point, N ≥ 2.
      fake: (M, *event) floating point, same event shape, M ≥ 2.
      chunk_size: rows per chunk (default: from a 16 MiB budget per intermediate).

    Returns:
      float32 scalar ℰ̂, on the scale of a distance between points.

    Raises:
      TypeError: integer dtype. ValueError: rank < 2, event shapes differ, NaN/inf values, a set with
        fewer than 2 examples.

    Reference: Székely & Rizzo, "Energy statistics: A class of statistics based on distances",
    J. Stat. Planning and Inference 143 (2013); Sejdinovic et al., "Equivalence of distance-based and
    RKHS-based statistics in hypothesis testing", Ann. Stat. 41 (2013).

    Examples:
      >>> import jax.numpy as jnp
      >>> real = jnp.array([[0.0], [2.0]])    # E‖X − X′‖ over i ≠ i′: 2
      >>> fake = jnp.array([[1.0], [5.0]])    # E‖Y − Y′‖: 4; cross mean (1 + 5 + 1 + 3)/4 = 2.5
      >>> float(energy_distance(real, fake))  # 2·2.5 − 2 − 4
      -1.0
      >>> float(energy_distance(real, real + 10.0))  # cross mean (10 + 12 + 8 + 10)/4 = 10: 2·10 − 2 − 2
      16.0
    """
    real2 = _checks.points("real", real)
    fake2 = _checks.points("fake", fake, event_shape=tuple(jnp.shape(real)[1:]), other="real")
    for name, x in (("real", real2), ("fake", fake2)):
        if x.shape[0] < 2:
            raise ValueError(f"{name} must hold at least 2 examples (the within-set term averages over "
                             f"pairs of distinct examples), got {x.shape[0]}.")
    return _energy_distance(real2, fake2, chunk_size=chunk_size)


def _distance_sum(a: Array, b: Array, chunk_size: int | None) -> Array:
    """Σ_{i,j} ‖a_i − b_j‖ in float32, rows of ``a`` mapped in chunks."""
    batch = chunk_size if chunk_size is not None else max(1, _BUDGET // (b.shape[0] * b.shape[1]))

    def row(x):
        return jnp.sum(jnp.sqrt(jnp.sum((b - x[None, :]) ** 2, axis=1)))

    return jnp.sum(lax.map(row, a, batch_size=max(1, min(batch, a.shape[0]))))


@functools.partial(jax.jit, static_argnames=("chunk_size",))
def _energy_distance(real: Array, fake: Array, *, chunk_size: int | None) -> Array:
    n, m = real.shape[0], fake.shape[0]
    cross = _distance_sum(real, fake, chunk_size) / (n * m)
    within_real = _distance_sum(real, real, chunk_size) / (n * (n - 1))  # the diagonal adds exactly 0
    within_fake = _distance_sum(fake, fake, chunk_size) / (m * (m - 1))
    return 2.0 * cross - within_real - within_fake
