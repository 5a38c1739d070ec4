"""Model-free LID* estimators of a data set: lPCA, MLE, TwoNN and ESS.

Every estimator is pointwise: ``est(data, *, k, queries=None) -> (M,)`` float32, the LID* of each
query estimated from its ``k`` nearest neighbours in ``data``. Definitions and defaults follow
scikit-dimension 0.5 (``skdim.id``), which the tests compare against:

- ``queries=None`` (the default): the queries are the data points themselves and each point's
  neighbourhood is its ``k`` nearest *other* points (the point itself is excluded by index, exactly
  like ``sklearn.neighbors.NearestNeighbors.kneighbors()`` that skdim uses, so a duplicated point
  still sees its twin at distance 0). Needs ``k <= N - 1``.
- ``queries`` given: they are treated as new points; their neighbourhoods are their ``k`` nearest
  data points, nothing is excluded (a query equal to a data point sees it at distance 0).
  Needs ``k <= N``.

Each estimator runs the exact search of [`mmh_jax.lid.knn`][mmh_jax.lid.knn] (``_knn``), then a kernel on each
chunk of neighbourhoods, all in one jitted function. On CPU, lPCA's eigenvalue count runs LAPACK (through
XLA): on a busy machine set ``OPENBLAS_NUM_THREADS=1``, as OpenBLAS threads contending for cores
slow it down many times.

Reference defaults: lPCA k = 1000, ESS k = 100, MLE k = 1000; ``k`` is required.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from mmh_jax import _checks
from mmh_jax.lid import _knn

Array = jax.Array

#: TwoNN discards this fraction of the largest ratios in each neighbourhood (skdim's default).
_TWONN_DISCARD = 0.1
#: ESS reference curve tabulated for n = 1 … _ESS_NMAX (skdim extends it by doubling: 20, 38, …).
_ESS_NMAX = 9218
_HIGHEST = lax.Precision.HIGHEST


# ----------------------------------------------------------------------------- shared driver


@functools.partial(
    jax.jit,
    static_argnames=("kernel", "finish", "points", "k", "chunk_search", "chunk_local", "block", "exclude_self"),
)
def _pointwise(
    data, queries, qidx, params, *, kernel, finish, points, k, chunk_search, chunk_local, block, exclude_self
):
    """kNN search, then ``kernel(dist, nbrs, params)`` per chunk, then ``finish(out, params)``.

    ``nbrs`` (B, k, D) are the neighbours' coordinates in no particular order (None unless
    ``points``); ``dist`` (B, k) their exact distances in the same order.
    """
    cand = _knn.candidates(data, queries, qidx, k=k, chunk=chunk_search, block=block, exclude_self=exclude_self)

    def local(args):
        dist, idx = _knn.refine(args[0], data, args[1], k, sort=False)
        return kernel(dist, _knn.gather_rows(data, idx) if points else None, params)

    return finish(_knn.map_chunks(local, (queries, cand), chunk_local), params).astype(jnp.float32)


def _run(data, queries, k, *, k_min, kernel, finish, params, local_cost, chunk_size, mesh, points=True):
    """Validate, pick chunk sizes (``local_cost(k, D)`` floats per query), run `_pointwise`
    (on each device of ``mesh`` for its share of the queries)."""
    data, queries, qidx, k, exclude = _knn.prepare(data, queries, k, k_min=k_min)
    n, dim = data.shape
    m = queries.shape[0]
    if m == 0:
        return jnp.zeros((0,), jnp.float32)
    per = -(-m // _knn.mesh_size(mesh))
    statics = dict(
        kernel=kernel,
        finish=finish,
        points=points,
        k=k,
        chunk_search=_knn.chunk_length(per, min(n, _knn.BLOCK) + k, chunk_size),
        chunk_local=_knn.chunk_length(per, local_cost(k, dim) + _knn.MARGIN * dim, chunk_size),
        block=_knn.BLOCK,
        exclude_self=exclude,
    )
    return _knn.split_queries(_pointwise, statics, mesh, data, queries, qidx, params)


def _identity(out, params):
    return out


def _shift(nbrs: Array) -> Array:
    """Neighbourhood relative to one of its points: small numbers, exact 0 for identical points."""
    return nbrs - nbrs[:, :1, :]


def _centred_gram(y: Array) -> Array:
    """Gram matrix of the mean-centred neighbourhood, (B, k, D) -> (B, k, k).

    G = J (Y Yᵀ) J with J = I − 11ᵀ/k, i.e. P − r1ᵀ − 1rᵀ + m for P = Y Yᵀ, r its row means and
    m their mean; Y is already shifted to a neighbourhood point so the centring loses no precision.
    """
    p = jnp.einsum("bkd,bjd->bkj", y, y, precision=_HIGHEST)
    r = jnp.mean(p, axis=2)
    m = jnp.mean(r, axis=1)
    return p - r[:, :, None] - r[:, None, :] + m[:, None, None]


def _centred_scatter(y: Array) -> Array:
    """Scatter matrix Σ_i (y_i − ȳ)(y_i − ȳ)ᵀ = YᵀY − k ȳȳᵀ, (B, k, D) -> (B, D, D)."""
    mu = jnp.mean(y, axis=1)
    return jnp.einsum("bkd,bke->bde", y, y, precision=_HIGHEST) - y.shape[1] * mu[:, :, None] * mu[:, None, :]


# ----------------------------------------------------------------------------- MLE


def _mle_kernel(dist, nbrs, params):
    """Levina–Bickel: (k − 1) / Σ_{j ≤ k} log(r_k / r_j) from sorted distances (B, k)."""
    k = dist.shape[1]
    return (k - 1) / jnp.sum(jnp.log(jnp.max(dist, axis=1, keepdims=True) / dist), axis=1)


def mle(data, *, k: int, queries=None, chunk_size: int | None = None, mesh=None) -> Array:
    """Pointwise maximum-likelihood LID (Levina & Bickel 2004), as skdim's ``MLE().dimension_pw_``.

    MLE(x) = (k − 1) / Σ_{j=1}^{k} log(r_k(x) / r_j(x)),  r_j the distance to the j-th neighbour
    (skdim defaults: no noise model, ``unbiased=False``; the j = k term is 0). A neighbour at
    distance 0 (duplicate) gives 0; all k at 0 gives NaN. Reference default k = 1000.

    Args:
      data: (N, D) floating point. k: neighbours, ≥ 2. queries: (M, D) or None (see module doc).
      chunk_size: queries per chunk (memory bound; default automatic).
      mesh: devices to split the queries over, as in [`knn`][mmh_jax.lid.knn] (default None: one device).

    Returns:
      float32 (M,) (M = N when queries is None). NaN at a point whose k nearest neighbours all lie
      at distance 0 (a point repeated more than k times in ``data``: log 0/0); a single duplicate
      neighbour gives 0. De-duplicate the data first, e.g. ``np.unique(data, axis=0)``.

    Raises:
      TypeError/ValueError: as [`knn`][mmh_jax.lid.knn], and k < 2.

    Reference: Levina & Bickel, NeurIPS 2004; skdim ``id.MLE``.

    Examples:
      >>> import jax.numpy as jnp
      >>> mle(jnp.arange(8.0).reshape(4, 2), k=2).shape
      (4,)
    """
    return _run(
        data, queries, k, k_min=2, kernel=_mle_kernel, finish=_identity, params=jnp.zeros(()),
        local_cost=lambda k, d: k * d, chunk_size=chunk_size, mesh=mesh, points=False,
    )


# ----------------------------------------------------------------------------- lPCA


def _lpca_kernel(dist, nbrs, params):
    """Tridiagonal form (d, e) of the neighbourhood's scatter matrix, scaled to max diagonal 1."""
    y = _shift(nbrs)
    s = _centred_gram(y) if y.shape[1] <= y.shape[2] else _centred_scatter(y)
    scale = jnp.max(jnp.diagonal(s, axis1=1, axis2=2), axis=1)
    s = s / jnp.where(scale > 0, scale, 1.0)[:, None, None]

    def via_tridiagonal(s):
        # ssytrd on the upper triangle (the faster one); jaxlib splits the batch over XLA:CPU's thread pool.
        _, d, e, _ = lax.linalg.tridiagonal(s, lower=False)
        return d, e

    def via_eigvalsh(s):
        w = jnp.linalg.eigvalsh(s)
        return w, jnp.zeros(w.shape[:-1] + (w.shape[-1] - 1,), w.dtype)

    # On CPU, LAPACK sytrd + a Sturm count beats eigvalsh, which also forms the eigenvectors.
    return lax.platform_dependent(s, cpu=via_tridiagonal, default=via_eigvalsh)


def _sturm_less(d: Array, e2: Array, x: Array) -> Array:
    """Number of eigenvalues < x of symmetric tridiagonal (d (M, n), e² (M, n−1)) at x (M, P).

    Sturm sequence q_1 = d_1 − x, q_i = d_i − x − e_{i−1}²/q_{i−1}; the count is #{q_i < 0}
    (LAPACK ``slaebz``, with |q| < pivmin replaced by −pivmin).
    """
    pivmin = jnp.finfo(jnp.float32).tiny * jnp.maximum(1.0, jnp.max(e2, axis=1, initial=0.0))[:, None]

    def guard(q):
        return jnp.where(jnp.abs(q) < pivmin, -pivmin, q)

    q0 = guard(d[:, :1] - x)

    def step(carry, de):
        q, cnt = carry
        di, e2i = de
        q = guard(di[:, None] - x - e2i[:, None] / q)
        return (q, cnt + (q < 0).astype(jnp.int32)), None

    (_, cnt), _ = lax.scan(step, (q0, (q0 < 0).astype(jnp.int32)), (d[:, 1:].T, e2.T))
    return cnt


def _fo_finish(de, alpha):
    """FO count #{λ_i > α λ_max} from the tridiagonal form: λ_max by multisection, then a Sturm count."""
    d, e = de
    n = d.shape[1]
    e2 = e * e
    ae = jnp.abs(e)
    radius = jnp.pad(ae, ((0, 0), (0, 1))) + jnp.pad(ae, ((0, 0), (1, 0)))
    lo = jnp.zeros(d.shape[:1], jnp.float32)
    hi = jnp.maximum(jnp.max(d + radius, axis=1), 0.0)  # Gershgorin bound; the matrix is PSD
    points = 31
    frac = jnp.arange(1, points + 1, dtype=jnp.float32)[None, :] / (points + 1)

    def refine(_, bounds):
        lo, hi = bounds
        x = lo[:, None] + (hi - lo)[:, None] * frac
        below = _sturm_less(d, e2, x) < n  # λ_max ≥ x
        lo = jnp.max(jnp.where(below, x, lo[:, None]), axis=1)
        hi = jnp.min(jnp.where(below, hi[:, None], x), axis=1)
        return lo, hi

    lo, hi = lax.fori_loop(0, 7, refine, (lo, hi))  # 32⁷ = 2³⁵: λ_max to float32 precision
    lam_max = 0.5 * (lo + hi)
    above = n - _sturm_less(d, e2, (alpha * lam_max)[:, None])[:, 0]
    return jnp.where(lam_max > 0, above, 0)


def lpca(data, *, k: int, alpha: float = 0.05, queries=None, chunk_size: int | None = None, mesh=None) -> Array:
    """Pointwise local PCA LID (version FO), as skdim's ``lPCA(ver="FO", alphaFO=alpha).fit_pw``.

    lPCA(x) = #{i : λ_i > α·λ_1}, λ_1 ≥ λ_2 ≥ … the eigenvalues of the covariance of the k nearest
    neighbours of x (x itself excluded, as in skdim's ``fit_pw``; Fukunaga & Olsen 1971). The
    spectrum comes from the k×k Gram or the D×D scatter matrix, whichever is smaller; on CPU it is
    counted on the LAPACK tridiagonal form by Sturm sequences (no eigenvectors). Reference k = 1000.

    Args:
      data: (N, D) floating point. k: neighbours, ≥ 2. alpha: threshold in (0, 1), traced.
      queries: (M, D) or None (see module doc). chunk_size: queries per chunk.
      mesh: devices to split the queries over, as in [`knn`][mmh_jax.lid.knn] (default None: one device).

    Returns:
      float32 (M,) of integers.

    Raises:
      TypeError/ValueError: as [`knn`][mmh_jax.lid.knn], k < 2, alpha outside (0, 1).

    Reference: Fukunaga & Olsen, IEEE Trans. Comput. 1971; skdim ``id.lPCA``.

    Examples:
      >>> import jax.numpy as jnp
      >>> x = jnp.stack([jnp.arange(6.0), jnp.zeros(6)], axis=1)   # points on a line
      >>> lpca(x, k=3).tolist()
      [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    """
    if _checks.is_concrete(alpha):
        a = np.asarray(alpha)
        if a.ndim != 0 or not 0.0 < float(a) < 1.0:
            raise ValueError(f"alpha must be a scalar in (0, 1) (FO threshold), got {alpha!r}.")
    if _knn.mesh_size(mesh) > 1 and any(d.platform == "cpu" for d in mesh.devices.flat):
        raise ValueError(
            "lpca cannot split its queries over several CPU devices: its spectra go through jaxlib's "
            "batched LAPACK kernels there, which split their batch over XLA:CPU's thread pool and wait "
            "for it, so one kernel per device at once can leave no thread to do the work (a deadlock; "
            "see mmh_jax.parallel's notes). Pass mesh=None on CPU, where that LAPACK stage already uses "
            "every core (accelerator meshes are fine)."
        )
    return _run(
        data, queries, k, k_min=2, kernel=_lpca_kernel, finish=_fo_finish,
        params=jnp.asarray(alpha, jnp.float32),
        local_cost=lambda k, d: k * d + min(k, d) ** 2 * 2, chunk_size=chunk_size, mesh=mesh,
    )


# ----------------------------------------------------------------------------- TwoNN


@functools.lru_cache(maxsize=None)
def _twonn_keep(k: int) -> np.ndarray:
    """skdim's number of ratios kept out of N valid ones: int(N · (1 − discard)), N = 0 … k."""
    return np.array([int(n * (1 - _TWONN_DISCARD)) for n in range(k + 1)], np.int32)


def _twonn_kernel(dist, nbrs, params):
    """TwoNN (linear fit, 10 % discarded) on each neighbourhood (B, k, D) -> (B,)."""
    y = _shift(nbrs)
    k = y.shape[1]
    g = _centred_gram(y)
    sq = jnp.diagonal(g, axis1=1, axis2=2)
    d2 = sq[:, :, None] + sq[:, None, :] - 2.0 * g
    eye = jnp.eye(k, dtype=bool)[None]
    d2 = jnp.where(eye, jnp.inf, d2)  # exclusion by index
    j1 = jnp.argmin(d2, axis=2)
    j2 = jnp.argmin(jnp.where(jnp.arange(k)[None, None, :] == j1[:, :, None], jnp.inf, d2), axis=2)
    # Exact r1, r2 by direct subtraction: Gram-based distances lose ~u·R²/r₁² (R the neighbourhood
    # radius), i.e. up to 1e-3 relative for 1-D data, while the gather costs about one Gram matrix.
    pair = jnp.take_along_axis(y, jnp.stack([j1, j2], axis=2).reshape(y.shape[0], 2 * k, 1), axis=1)
    diff = pair.reshape(y.shape[0], k, 2, y.shape[2]) - y[:, :, None, :]
    r = jnp.sqrt(jnp.sum(diff * diff, axis=3))
    r1, r2 = jnp.min(r, axis=2), jnp.max(r, axis=2)
    valid = r1 > 0  # skdim drops r1 == 0 (duplicates) with a warning
    x = jnp.where(valid, jnp.log(r2 / jnp.where(valid, r1, 1.0)), jnp.inf)
    # rank of each log μ in the neighbourhood (ties by index), instead of a sort
    less = (x[:, None, :] < x[:, :, None]) | ((x[:, None, :] == x[:, :, None]) & jnp.tril(eye[0], -1)[None])
    rank = jnp.sum(less, axis=2)
    n_valid = jnp.sum(valid, axis=1)
    n_keep = jnp.asarray(_twonn_keep(k))[n_valid]
    use = valid & (rank < n_keep[:, None])
    femp = (rank + 1).astype(jnp.float32) / jnp.maximum(n_valid, 1)[:, None].astype(jnp.float32)
    yy = jnp.where(use, -jnp.log1p(-jnp.where(use, femp, 0.0)), 0.0)
    x = jnp.where(use, x, 0.0)
    sxx = jnp.sum(x * x, axis=1)
    slope = jnp.where(sxx > 0, jnp.sum(x * yy, axis=1) / jnp.where(sxx > 0, sxx, 1.0), 0.0)
    return jnp.where(n_keep >= 2, slope, jnp.nan)


def twonn(data, *, k: int, queries=None, chunk_size: int | None = None, mesh=None) -> Array:
    """Pointwise TwoNN LID, as skdim's ``TwoNN().fit_pw(data, n_neighbors=k)``.

    On the neighbourhood of x (its k nearest neighbours, x excluded), each point i has
    μ_i = r₂(i)/r₁(i) (second over first nearest-neighbour distance *within the neighbourhood*).
    Points with r₁ = 0 are dropped (N' ≤ k remain); the n = ⌊N'·0.9⌋ smallest μ are kept and
    TwoNN(x) = Σ_i log μ_(i) · y_i / Σ_i log² μ_(i),  y_i = −log(1 − i/N'),
    the least-squares slope through the origin of Facco et al. (2017). NaN where n < 2 (skdim raises).

    Args:
      data: (N, D) floating point. k: neighbours, ≥ 3. queries: (M, D) or None (see module doc).
      chunk_size: queries per chunk.
      mesh: devices to split the queries over, as in [`knn`][mmh_jax.lid.knn] (default None: one device).

    Returns:
      float32 (M,). NaN where fewer than 2 ratios are kept, which happens at exactly duplicated
      points: neighbours with r₁ = 0 are dropped, so a neighbourhood made mostly of copies of one
      point (a point repeated about k times in ``data``) has none left. De-duplicate the data
      first, e.g. ``np.unique(data, axis=0)``.

    Raises:
      TypeError/ValueError: as [`knn`][mmh_jax.lid.knn], and k < 3.

    Reference: Facco, d'Errico, Rodriguez & Laio, Sci. Rep. 7, 12140 (2017); skdim ``id.TwoNN``.

    Examples:
      >>> import jax.numpy as jnp
      >>> twonn(jax.random.normal(jax.random.key(0), (40, 2)), k=20).shape
      (40,)
    """
    return _run(
        data, queries, k, k_min=3, kernel=_twonn_kernel, finish=_identity, params=jnp.zeros(()),
        local_cost=lambda k, d: 3 * k * d + 3 * k * k, chunk_size=chunk_size, mesh=mesh,
    )


# ----------------------------------------------------------------------------- ESS


@functools.lru_cache(maxsize=None)
def _ess_table() -> tuple[np.ndarray, np.ndarray]:
    """1 − ESS_a(n) for d = 1, n = 1 … _ESS_NMAX, and its decrements (float64 -> float32).

    ESS_a(n) = Γ(n/2)² / (Γ((n+1)/2) Γ((n−1)/2)) (skdim ``_essReference``, ver "a", d = 1),
    ESS_a(1) = 0; it rises to 1 like 1 − 1/(2n).
    """
    n = np.arange(2, _ESS_NMAX + 1, dtype=np.float64)
    lg = np.frompyfunc(math.lgamma, 1, 1)
    log_ess = (2 * lg(n / 2) - lg((n + 1) / 2) - lg((n - 1) / 2)).astype(np.float64)
    comp = np.concatenate([[1.0], -np.expm1(log_ess)])
    return comp.astype(np.float32), (comp[:-1] - comp[1:]).astype(np.float32)


def _ess_kernel(dist, nbrs, params):
    """1 − ESS of each neighbourhood: Σ_{i<j} (w_ij − v_ij) / Σ_{i<j} w_ij (see [`ess`][mmh_jax.lid.ess])."""
    y = _shift(nbrs)
    b, k, dim = y.shape
    if dim < 2:  # skdim: a 2-simplex cannot span a 1-D space, ESS = 0
        return jnp.ones((b,), jnp.float32)
    g = _centred_gram(y)
    sq = jnp.diagonal(g, axis1=1, axis2=2)
    nrm = jnp.sqrt(sq)
    w = nrm[:, :, None] * nrm[:, None, :]
    det = sq[:, :, None] * sq[:, None, :] - g * g
    v = jnp.sqrt(jnp.maximum(det, 0.0))
    # w − v = c²/(w + v): no cancellation when the pair is nearly orthogonal (high dimension).
    gap = jnp.where(det > 0, g * g / jnp.where(det > 0, w + v, 1.0), w)
    off = ~jnp.eye(k, dtype=bool)[None]
    return jnp.sum(jnp.where(off, gap, 0.0), axis=(1, 2)) / jnp.sum(jnp.where(off, w, 0.0), axis=(1, 2))


def _ess_finish(comp, params):
    """Invert the reference curve: n + (ESS − ESS(n)) / (ESS(n+1) − ESS(n)), ESS(n) ≤ ESS < ESS(n+1)."""
    table, step = (jnp.asarray(t) for t in _ess_table())
    s = jnp.clip(comp, 0.0, 1.0)
    n_int = jnp.searchsorted(-table, -s, side="right")  # #{n : ESS(n) ≤ ESS}, ≥ 1
    j = jnp.clip(n_int - 1, 0, step.shape[0] - 1)
    de = n_int.astype(jnp.float32) + (table[j] - s) / step[j]
    return jnp.where(jnp.isnan(comp) | (n_int >= table.shape[0]), jnp.nan, de)


def ess(data, *, k: int, queries=None, chunk_size: int | None = None, mesh=None) -> Array:
    """Pointwise expected-simplex-skewness LID (version a, d = 1), as skdim's ``ESS().fit(...)``.

    On the neighbourhood of x (k nearest neighbours, x excluded) centred at its mean, u_1 … u_k:
    ESS = Σ_{i<j} vol(u_i, u_j) / Σ_{i<j} ‖u_i‖‖u_j‖,  vol = √det[[u_i·u_i, u_i·u_j], [·, u_j·u_j]],
    computed from one k×k Gram matrix per point (1 − ESS as Σ(u_i·u_j)²/(w + vol) / Σ w, which keeps
    float32 precision where ESS → 1). The LID is ESS inverted on the reference curve ESS_a(n) of
    uniform balls, linearly between integers (skdim's rule). NaN if all u_i = 0 (as skdim) or
    beyond n = 9218. For (nearly) collinear pairs vol² = ‖u_i‖²‖u_j‖² − (u_i·u_j)² cancels in
    float32, leaving vol ≈ √u·w (u = 2⁻²⁴): a 1-D neighbourhood reads ≈ 1.0004, not 1.

    skdim averages over all C(k, 2) pairs only when C(k, 2) ≤ 5000 (k ≤ 100); for larger k it
    draws 5000 random pairs, whereas this uses all pairs (the exact mean), so the two then differ
    by skdim's sampling error. Reference default k = 100.

    Args:
      data: (N, D) floating point. k: neighbours, ≥ 2. queries: (M, D) or None (see module doc).
      chunk_size: queries per chunk.
      mesh: devices to split the queries over, as in [`knn`][mmh_jax.lid.knn] (default None: one device).

    Returns:
      float32 (M,). NaN where all k neighbours coincide (every u_i = 0: at or next to a point
      repeated k or more times in ``data``), and beyond n = 9218. De-duplicate the data first,
      e.g. ``np.unique(data, axis=0)``.

    Raises:
      TypeError/ValueError: as [`knn`][mmh_jax.lid.knn], and k < 2.

    Reference: Johnsson, Soneson & Fontes, IEEE TPAMI 37(1), 2015; skdim ``id.ESS``.

    Examples:
      >>> import jax.numpy as jnp
      >>> x = jnp.stack([jnp.arange(6.0), 2 * jnp.arange(6.0)], axis=1)   # a line in R²
      >>> [round(v, 2) for v in ess(x, k=3).tolist()]
      [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    """
    return _run(
        data, queries, k, k_min=2, kernel=_ess_kernel, finish=_ess_finish, params=jnp.zeros(()),
        local_cost=lambda k, d: k * d + 6 * k * k, chunk_size=chunk_size, mesh=mesh,
    )
