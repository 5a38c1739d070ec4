"""Model-free LID estimators and the kNN search against scikit-dimension and brute-force oracles.

Data are cast to float32 once; scikit-dimension gets the same values in float64, so differences come
only from our float32 arithmetic. Tolerances (u = 2⁻²⁴, the float32 unit roundoff):

- distances: each ‖q − x‖ is a float32 sum of D squares, relative error ≤ (D + 2)·u;
- MLE = (k − 1)/S, S = Σ log(r_k/r_j): each log has absolute error ≤ 2(D + 2)u, so S has relative
  error ≤ 2(D + 2)u·k/S = 2(D + 2)u·MLE·k/(k − 1): rtol = 4(D + 2)·u·MLE;
- TwoNN: a slope Σxy/Σx² with x = log μ known to 2(D + 2)u absolute (r₁, r₂ by direct
  subtraction) and y exact; first order, Δslope/slope ≤ 2(D + 2)u·(Σ|y|/Σxy + 2Σ|x|/Σx²) and
  Σ|y|/Σxy ≈ Σ|x|/Σx² ≈ 1/mean(log μ) ≈ TwoNN (log μ ~ Exp(TwoNN)): rtol = 8(D + 2)u·TwoNN;
- ESS: 1 − ESS = Σ(w − v)/Σw is a ratio of positive float32 sums of Gram-matrix terms, relative
  error ρ ≤ 8(D + 2)u; the reference curve has 1 − ESS(n) ≈ 1/(2n), slope ≈ 1/(2n²), so the
  inverted dimension moves by Δn ≈ 2n²·ρ/(2n) = n·ρ: atol = 8(D + 2)u·n (margin 2: 16(D + 2)u·n);
- lPCA is an integer count; it changes only if an eigenvalue lies within float32 error of α·λ₁,
  so ≥ 99 % of the points must agree exactly.

A point whose k-th and (k+1)-th neighbours are at distances equal to within float32 resolution
(relative gap < 4(D + 2)u) has an ill-posed neighbourhood at float32 precision; such points (< 1 %)
are left out of the comparisons.
"""

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmh_jax import lid

import skdim  # noqa: E402  (test extra: a missing reference must fail, not skip)
from threadpoolctl import threadpool_limits  # scikit-learn's dependency, so skdim's

U = 2.0**-24

#: scikit-dimension's references run small BLAS calls point by point, which contending threads slow
#: down many times (docs/performance.md); one thread gives the same float64 reference.
_serial = functools.partial(threadpool_limits, limits=1)


def _subspace_data(seed, n, dim, d, noise, offset=3.0):
    """Gaussian on a random d-dim affine subspace of R^D plus isotropic noise, as float32."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((dim, d)))
    x = rng.standard_normal((n, d)) @ q.T + noise * rng.standard_normal((n, dim))
    x = x + offset * rng.standard_normal(dim)
    return x.astype(np.float32)


#: One data set, k and chunk size for the tests of query semantics, chunking, meshes, warnings and
#: duplicates (and, at the same shape and k, test_properties.py's model-free tests): an estimator
#: compiles anew per data shape, k and chunking, so at one (N, D, k) a worker compiles each
#: estimator's default and chunked programs once for all of these tests. N = 61 is a multiple
#: neither of the 4 emulated devices nor of the chunk size.
SHARED_N, SHARED_D, SHARED_K, SHARED_CHUNK = 61, 4, 20, 5


def _shared_data():
    """The shared (SHARED_N, SHARED_D) data set: a 2-D Gaussian plus noise, in general position."""
    return _subspace_data(14, SHARED_N, SHARED_D, 2, 0.05)


def _shared_queries():
    """23 external queries near (not at) the shared data points."""
    return _shared_data()[:23] + 0.01


def _brute_knn(data, queries=None, k=1):
    """float64 oracle: (distances, indices), ties by lower index."""
    x = np.asarray(data, np.float64)
    q = x if queries is None else np.asarray(queries, np.float64)
    d = np.sqrt(((q[:, None, :] - x[None, :, :]) ** 2).sum(-1))
    if queries is None:
        np.fill_diagonal(d, np.inf)
    idx = np.argsort(d, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d, idx, axis=1), idx


def _well_posed(x, k):
    """Points whose k-neighbourhood is the same in float32 as in float64 arithmetic."""
    d, _ = _brute_knn(x, k=k + 1)
    ok = (d[:, k] - d[:, k - 1]) > 4 * (x.shape[1] + 2) * U * d[:, k]
    assert ok.mean() > 0.99
    return ok


# ----------------------------------------------------------------------------- kNN


@pytest.mark.parametrize(
    "n, dim, k, chunk, block",
    [(97, 3, 5, 10, None), (130, 7, 1, None, 29), (61, 2, 60, 7, 16), (200, 12, 17, 33, 64), (300, 5, 3, 50, 64)],
)
def test_knn_matches_brute_force(n, dim, k, chunk, block):
    x = _subspace_data(n, n, dim, min(dim, 2), 0.3)
    x[5] = x[17]  # a duplicate pair: each must see the other at exactly 0
    x[40] = x[17]
    dist, idx = lid.knn(x, k=k, chunk_size=chunk, block_size=block)
    want_d, want_i = _brute_knn(x, k=k)
    assert dist.shape == (n, k) and dist.dtype == jnp.float32 and idx.dtype == jnp.int32
    np.testing.assert_allclose(dist, want_d, rtol=(dim + 2) * U * 4, atol=1e-6)
    np.testing.assert_array_equal(idx, want_i)
    assert float(dist[5, 0]) == 0.0 and float(dist[17, 0]) == 0.0
    assert np.all(np.diff(np.asarray(dist), axis=1) >= 0)


def test_knn_external_queries_and_k_equal_n():
    x = _subspace_data(1, 50, 4, 2, 0.1)
    q = _subspace_data(2, 23, 4, 2, 0.1)
    q[3] = x[10]  # a query equal to a data point sees it at distance 0
    dist, idx = lid.knn(x, k=50, queries=q, chunk_size=6, block_size=17)
    want_d, want_i = _brute_knn(x, q, k=50)
    np.testing.assert_array_equal(idx, want_i)
    np.testing.assert_allclose(dist, want_d, rtol=1e-6, atol=1e-6)
    assert int(idx[3, 0]) == 10 and float(dist[3, 0]) == 0.0


# ----------------------------------------------------------------------------- parity with skdim

CASES = [  # seed, N, D, d, noise, k
    (0, 300, 20, 5, 0.01, 50),
    (1, 300, 10, 3, 0.0, 40),
    (2, 250, 50, 8, 0.05, 60),
    (3, 400, 3, 2, 0.1, 30),
    (4, 250, 30, 12, 0.0, 20),  # k < D: spectrum from the k×k Gram
    (5, 300, 5, 1, 1e-3, 40),  # nearly 1-D: tiny r₁ relative to the neighbourhood radius
]


@pytest.mark.parametrize("case", CASES)
def test_lpca_matches_skdim(case):
    seed, n, dim, d, noise, k = case
    x = _subspace_data(seed, n, dim, d, noise)
    ours = np.asarray(lid.lpca(x, k=k))
    with _serial():
        ref = skdim.id.lPCA(ver="FO", alphaFO=0.05).fit_pw(x.astype(np.float64), n_neighbors=k).dimension_pw_
    assert ours.dtype == np.float32 and ours.shape == (n,)
    assert np.mean(ours == ref) >= 0.99
    assert np.all(ours == np.round(ours))


def test_lpca_alpha_is_used():
    x = _subspace_data(7, 300, 10, 4, 0.05)  # the shape and k of CASES[1]: one compiled program for both
    for alpha in (0.01, 0.2):
        ours = np.asarray(lid.lpca(x, k=40, alpha=alpha))
        with _serial():
            ref = skdim.id.lPCA(alphaFO=alpha).fit_pw(x.astype(np.float64), n_neighbors=40).dimension_pw_
        assert np.mean(ours == ref) >= 0.99


@pytest.mark.parametrize("case", CASES)
def test_mle_matches_skdim(case):
    seed, n, dim, d, noise, k = case
    x = _subspace_data(seed, n, dim, d, noise)
    ours = np.asarray(lid.mle(x, k=k))
    with _serial():
        ref = skdim.id.MLE().fit(x.astype(np.float64), n_neighbors=k).dimension_pw_
    ok = _well_posed(x, k)
    np.testing.assert_allclose(ours[ok], ref[ok], rtol=4 * (dim + 2) * U * ref.max())


@pytest.mark.parametrize("case", CASES)
def test_twonn_matches_skdim(case):
    seed, n, dim, d, noise, k = case
    x = _subspace_data(seed, n, dim, d, noise)
    ours = np.asarray(lid.twonn(x, k=k))
    with _serial():
        ref = skdim.id.TwoNN().fit_pw(x.astype(np.float64), n_neighbors=k).dimension_pw_
    ok = _well_posed(x, k)
    np.testing.assert_allclose(ours[ok], ref[ok], rtol=8 * (dim + 2) * U * ref.max())


# skdim's ESS loops over the points in Python (~10 ms each at k = 30-40): N is small, as the tolerance
# does not depend on it.
@pytest.mark.parametrize("case", [(0, 125, 20, 5, 0.01, 40), (2, 125, 50, 8, 0.05, 30), (3, 150, 3, 2, 0.1, 25)])
def test_ess_matches_skdim(case):
    seed, n, dim, d, noise, k = case
    x = _subspace_data(seed, n, dim, d, noise)
    ours = np.asarray(lid.ess(x, k=k))
    with _serial():
        ref = skdim.id.ESS(ver="a", d=1).fit(x.astype(np.float64), n_neighbors=k).dimension_pw_
    ok = _well_posed(x, k)
    np.testing.assert_allclose(ours[ok], ref[ok], rtol=0, atol=16 * (dim + 2) * U * ref.max())


def test_ess_nearly_one_dimensional():
    """Near-parallel pairs: vol = √(w² − c²) loses half the float32 digits, |Δ ESS| ≲ √(8(D+2)u)."""
    x = _subspace_data(5, 100, 5, 1, 1e-3)
    ours = np.asarray(lid.ess(x, k=30))
    with _serial():
        ref = skdim.id.ESS().fit(x.astype(np.float64), n_neighbors=30).dimension_pw_
    # dimension = 1 + ESS/ESS(2) near 1, ESS(2) = 2/π
    np.testing.assert_allclose(ours, ref, atol=np.sqrt(8 * 7 * U) * np.pi / 2)


# ----------------------------------------------------------------------------- queries semantics


def _ref_external(name, x, q, k):
    """skdim on the oracle neighbourhoods of external queries."""
    dist, idx = _brute_knn(x, q, k=k)
    x64 = x.astype(np.float64)
    with _serial():
        return _skdim_external(name, x64, dist, idx, k)


def _skdim_external(name, x64, dist, idx, k):
    if name == "lpca":
        return skdim.id.lPCA().fit_pw(x64, precomputed_knn=idx, n_neighbors=k).dimension_pw_
    if name == "mle":
        return skdim.id.MLE().fit(x64, precomputed_knn_arrays=(dist, idx), n_neighbors=k).dimension_pw_
    if name == "twonn":
        return skdim.id.TwoNN().fit_pw(x64, precomputed_knn=idx, n_neighbors=k).dimension_pw_
    return np.array([skdim.id.ESS().fit_once(x64[i]).dimension_ for i in idx])


@pytest.mark.parametrize("name", ["lpca", "mle", "twonn", "ess"])
def test_external_queries_match_skdim_on_their_neighbourhoods(name):
    x, k, q = _shared_data(), SHARED_K, _shared_queries()  # 23 queries in chunks of 5, the last one padded
    ours = np.asarray(getattr(lid, name)(x, k=k, queries=q, chunk_size=SHARED_CHUNK))
    ref = _ref_external(name, x, q, k)
    assert ours.shape == (len(q),)
    if name == "lpca":
        assert np.mean(ours == ref) >= 0.99
    else:  # loosest bound above (ESS)
        np.testing.assert_allclose(ours, ref, rtol=16 * (SHARED_D + 2) * U * ref.max())


@pytest.mark.parametrize("name", ["lpca", "mle", "twonn", "ess"])
def test_default_queries_are_leave_one_out(name):
    """queries=None == each point queried against the data without it."""
    x, k = _shared_data(), SHARED_K
    fn = getattr(lid, name)
    full = np.asarray(fn(x, k=k, chunk_size=SHARED_CHUNK))
    for i in (0, SHARED_N // 2, SHARED_N - 1):
        rest = np.delete(x, i, axis=0)
        one = np.asarray(fn(rest, k=k, queries=x[i : i + 1]))
        np.testing.assert_allclose(one[0], full[i], rtol=1e-5)


def test_point_mass_duplicates():
    """A point mass (> k copies): lPCA gives 0; MLE (0/0), ESS and TwoNN are NaN, as in skdim.

    A point with a few twins among its k neighbours has MLE 0 (a log(r_k/0) = ∞ term).
    """
    k = SHARED_K  # the shared shape: 30 copies of one point (> k) and 31 points of a plane
    x = np.concatenate([np.zeros((30, SHARED_D), np.float32) + 2.5,
                        _subspace_data(11, SHARED_N - 30, SHARED_D, 2, 0.0)])
    x[40] = x[41]
    assert np.all(np.asarray(lid.lpca(x, k=k))[:30] == 0)
    mle = np.asarray(lid.mle(x, k=k))
    assert np.all(np.isnan(mle[:30])) and mle[40] == 0 and mle[41] == 0
    assert np.all(np.isnan(np.asarray(lid.ess(x, k=k))[:30]))
    assert np.all(np.isnan(np.asarray(lid.twonn(x, k=k))[:30]))


def test_works_under_jit_and_chunking_is_invisible():
    x, k = _shared_data(), SHARED_K  # 61 queries in chunks of 5: 13 chunks, the last one padded
    ref = lid.mle(x, k=k)
    np.testing.assert_allclose(jax.jit(lambda a: lid.mle(a, k=k))(x), ref, rtol=1e-6)
    for name in ("lpca", "twonn", "ess", "mle"):
        fn = getattr(lid, name)
        np.testing.assert_allclose(fn(x, k=k, chunk_size=SHARED_CHUNK), fn(x, k=k), rtol=1e-5)


@pytest.mark.parametrize("name", ["knn", "mle", "twonn", "ess"])
def test_queries_split_over_a_mesh_match_one_device(name):
    """conftest emulates 4 CPU devices: 61 queries (not a multiple of 4) split over all of them.

    Each split run is compared with the plain one-device run of the same queries: the data's own
    points (excluded by their global index) in chunks on every device, external queries, and the
    default chunks inside the user's jit.
    """
    from mmh_jax import parallel

    mesh = parallel.make_mesh(jax.local_devices())
    assert mesh.size > 1
    fn = getattr(lid, name)
    x, k, q = _shared_data(), SHARED_K, _shared_queries()

    def check(split, one):
        if name == "knn":  # the same neighbours; distances up to float32 rounding (summation order)
            np.testing.assert_array_equal(split[1], one[1])
            np.testing.assert_allclose(split[0], one[0], rtol=1e-6)
        else:  # other chunk shapes per device: float32 rounding only
            assert split.shape == one.shape
            np.testing.assert_allclose(split, one, rtol=1e-5)

    whole = fn(x, k=k)
    check(fn(x, k=k, mesh=mesh, chunk_size=SHARED_CHUNK), whole)
    check(fn(x, k=k, mesh=mesh, queries=q), fn(x, k=k, queries=q, chunk_size=SHARED_CHUNK))
    check(jax.jit(lambda a: fn(a, k=k, mesh=mesh))(x), whole)  # inside the user's jit too


def test_bad_mesh():
    from jax.sharding import Mesh

    x, k = _shared_data(), SHARED_K
    devs = np.asarray(jax.local_devices()[:4]).reshape(2, 2)
    with pytest.raises(ValueError, match="mesh must have exactly one axis"):
        lid.mle(x, k=k, mesh=Mesh(devs, ("a", "b")))
    with pytest.raises(TypeError, match="mesh must be a jax.sharding.Mesh"):
        lid.mle(x, k=k, mesh=jax.local_devices())
    # jaxlib's batched LAPACK on several CPU devices at once can deadlock XLA:CPU's pool: refused, not hung
    from mmh_jax import parallel

    with pytest.raises(ValueError, match="lpca cannot split its queries over several CPU devices"):
        lid.lpca(x, k=k, mesh=parallel.make_mesh(jax.local_devices()))
    one = parallel.make_mesh(jax.local_devices()[:1])
    np.testing.assert_array_equal(lid.lpca(x, k=k, mesh=one), lid.lpca(x, k=k))  # one device is fine


# ----------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize("name", ["knn", "lpca", "mle", "twonn", "ess"])
def test_bad_inputs(name):
    fn = getattr(lid, name)
    x = _subspace_data(13, 20, 3, 2, 0.1)
    bad = x.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="data contains 1 non-finite"):
        fn(bad, k=3)
    bad[3, 1] = np.inf
    with pytest.raises(ValueError, match="queries contains 1 non-finite"):
        fn(x, k=3, queries=bad)
    with pytest.raises(ValueError, match=r"k must be <= N - 1 = 19 when queries is None"):
        fn(x, k=20)
    with pytest.raises(ValueError, match=r"k must be <= N = 20"):
        fn(x, k=21, queries=x[:2])
    fn(x, k=20, queries=x[:2])  # k = N is fine for external queries
    with pytest.raises(ValueError, match="must have 2 dimension"):
        fn(x[0], k=3)
    with pytest.raises(ValueError, match=r"queries must have the data's dimension D = 3"):
        fn(x, k=3, queries=x[:, :2])
    with pytest.raises(TypeError, match="floating-point dtype"):
        fn(np.arange(40).reshape(20, 2), k=3)
    with pytest.raises(TypeError, match="k must be a Python int"):
        fn(x, k=3.0)
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        fn(x, k=3, chunk_size=0)


@pytest.mark.parametrize("name, k_min", [("knn", 1), ("lpca", 2), ("mle", 2), ("twonn", 3), ("ess", 2)])
def test_k_below_estimator_minimum(name, k_min):
    x = _subspace_data(14, 20, 3, 2, 0.1)
    with pytest.raises(ValueError, match=f"k must be >= {k_min}"):
        getattr(lid, name)(x, k=k_min - 1)


def test_lpca_alpha_range():
    x = _subspace_data(15, 20, 3, 2, 0.1)
    for alpha in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match="alpha must be a scalar in"):
            lid.lpca(x, k=5, alpha=alpha)


def test_skdim_warning_free():
    """Our estimators emit no warnings (pytest turns them into errors anyway)."""
    x = _subspace_data(16, SHARED_N, SHARED_D, 2, 0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name in ("lpca", "mle", "twonn", "ess"):
            getattr(lid, name)(x, k=SHARED_K)


def test_lpca_counts_eigenvalues_above_alpha_times_the_largest(rng):
    """The Fukunaga–Olsen count on neighbourhoods of known spectrum: each query's k nearest points are
    its own cluster, whose scatter matrix has eigenvalues over four decades and one just above or
    below each threshold α·λ₁ (relative gap 2·10⁻⁴, well above float32 error). The count runs on the
    tridiagonal form on CPU and on the eigenvalues elsewhere: on an accelerator this covers that branch."""
    n_q, k, dim, gap = 64, 30, 12, 2e-4
    alphas = (0.05, 0.3)
    lam = 10.0 ** rng.uniform(-4, 0, (n_q, dim))
    near = [(lam > 0.8 * a) & (lam < 1.25 * a) for a in alphas]
    for mask in near:
        lam[mask] *= 0.5  # out of every threshold's ±20 % band
    lam[:, 0] = 1.0
    for j, a in enumerate(alphas, start=1):
        lam[:, j] = a * (1 + gap * rng.choice([-1.0, 1.0], n_q))
    scale = rng.uniform(0.5, 2.0, (n_q, 1))
    basis, _ = np.linalg.qr(rng.standard_normal((n_q, dim, dim)))
    draw = rng.standard_normal((n_q, k, dim))
    centred, _ = np.linalg.qr(draw - draw.mean(axis=1, keepdims=True))  # orthonormal columns ⟂ 1
    points = np.einsum("bkd,bd,bed->bke", centred, np.sqrt(lam * scale), basis)  # scatter Q diag(λ·s) Qᵀ
    centres = 4.0 * rng.standard_normal((n_q, dim))
    apart = np.linalg.norm(centres[:, None] - centres[None], axis=2) + np.diag(np.full(n_q, np.inf))
    assert apart.min() > 2 * np.linalg.norm(points, axis=2).max()  # each query's k nearest: its cluster
    data = (centres[:, None, :] + points).reshape(-1, dim).astype(np.float32)
    for a in alphas:
        np.testing.assert_array_equal(lid.lpca(data, k=k, alpha=a, queries=centres.astype(np.float32)),
                                      np.sum(lam > a, axis=1))


def test_empty_queries():
    x = _subspace_data(17, 20, 3, 2, 0.1)
    d, i = lid.knn(x, k=4, queries=x[:0])
    assert d.shape == (0, 4) and i.shape == (0, 4)
    for name in ("lpca", "mle", "twonn", "ess"):
        assert getattr(lid, name)(x, k=4, queries=x[:0]).shape == (0,)


def _fo_counts(nbrs, alphas):
    """float64 oracle of lPCA: #{λ_i > α·λ₁} of each neighbourhood's scatter, (M, k, D) -> (M, len(alphas))."""
    c = nbrs - nbrs.mean(axis=1, keepdims=True)
    w = np.linalg.eigvalsh(np.einsum("bkd,bke->bde", c, c))
    return np.stack([np.sum(w > a * w[:, -1:], axis=1) for a in alphas], axis=1)


ALPHAS = (0.0123, 0.0537, 0.1234, 0.2345, 0.4321, 0.7654)  # α·λ₁ far from every eigenvalue below


def test_estimators_keep_the_k_nearest_of_misordered_candidates():
    """The refine keeps the k exactly nearest of the k + 8 candidates in whatever order the search's
    ‖q‖² + ‖x‖² − 2q·x put them: queries 10⁴ from the data mean (rounding ≫ the spread of a cluster)
    whose own cluster of k + 1 … k + 8 points at distinct distances holds their k nearest. lPCA at
    several α (the neighbourhood's spectrum profile) equals the brute-force neighbourhood's."""
    rng = np.random.default_rng(1)
    for dim, k, extra in ((4, 12, 5), (6, 24, 8)):
        dirs = rng.standard_normal((32, dim))
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        centres = 1e4 * np.concatenate([dirs, -dirs])  # mean 0, clusters far apart
        r = np.sqrt(rng.uniform(0.25, 1.0, (64, k + extra, 1)))
        u = rng.standard_normal((64, k + extra, dim))
        x = (centres[:, None, :] + r * u / np.linalg.norm(u, axis=2, keepdims=True)).astype(np.float32)
        q = centres.astype(np.float32)
        sq = np.sum((x.astype(np.float64) - q[:, None, :]) ** 2, axis=2)
        nbrs = np.take_along_axis(x.astype(np.float64), np.argsort(sq, axis=1)[:, :k, None], axis=1)
        got = np.stack([lid.lpca(x.reshape(-1, dim), k=k, alpha=a, queries=q) for a in ALPHAS], axis=1)
        np.testing.assert_array_equal(got, _fo_counts(nbrs, ALPHAS))


def test_estimators_keep_the_k_nearest_with_ties_to_the_lower_index():
    """Many candidates tied at the k-th place: symmetric small-integer points (exact float32 distances,
    mean 0, duplicates too) whose lPCA at several α equals that of the brute-force neighbourhood with
    ties broken by the lower index; m = min(k + 8, N − 1) − k = 8 and 1 extra candidates."""
    rng = np.random.default_rng(0)
    for n, dim, k, top in ((200, 3, 20, 2), (26, 3, 24, 1)):
        half = rng.integers(-top, top + 1, (n // 2, dim))
        x = np.concatenate([half, -half]).astype(np.float32)
        sq = np.sum((x[:, None].astype(np.float64) - x[None]) ** 2, axis=2) + np.diag(np.full(n, np.inf))
        assert np.mean(np.sort(sq, axis=1)[:, k - 1] == np.sort(sq, axis=1)[:, k]) > 0.25  # ties at the cut
        nbrs = x[np.argsort(sq, axis=1, kind="stable")[:, :k]].astype(np.float64)
        got = np.stack([lid.lpca(x, k=k, alpha=a) for a in ALPHAS], axis=1)
        np.testing.assert_array_equal(got, _fo_counts(nbrs, ALPHAS))
