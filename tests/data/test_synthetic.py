"""Synthetic data sets: shapes, determinism, ground-truth LID by independent checks, helpers.

Oracles: local PCA on tiny neighbourhoods of large noiseless samples (rank of the tangent space),
closed-form moments with tolerances derived from standard errors, and finite-difference Jacobians
of the squiggly map.
"""

import numpy as np
import pytest
from scipy import special
from scipy.spatial import cKDTree

from mmh_jax.data import synthetic as syn

# Small keyword sets that make every generator callable.
KWARGS = {
    "lollipop": {},
    "torus_circle": {},
    "swiss_roll": {},
    "von_mises_point_mass": {},
    "gaussian_subspace": {"dim": 2, "ambient_dim": 5},
    "affine_mixture": {"dims": [0, 1, 3], "ambient_dim": 6},
    "squiggly_mixture": {"dims": [1, 2], "ambient_dim": 6, "frequency": 5.0},
}

# Monte-Carlo checks use Z standard errors: |error| > 4.5 SE has probability ~7e-6 per check.
Z = 4.5


def test_generators_table_is_complete():
    assert set(syn.GENERATORS) == set(KWARGS)
    for name, fn in syn.GENERATORS.items():
        assert fn.__name__ == name


@pytest.mark.parametrize("name", sorted(KWARGS))
def test_shapes_dtypes_determinism(name):
    gen = syn.GENERATORS[name]
    a = gen(64, seed=3, **KWARGS[name])
    b = gen(64, seed=3, **KWARGS[name])
    c = gen(64, seed=4, **KWARGS[name])
    assert a.x.ndim == 2 and a.x.shape[0] == 64 and len(a) == 64
    assert a.x.dtype == np.float32 and a.lid.dtype == np.int32 and a.component.dtype == np.int32
    assert a.lid.shape == a.component.shape == (64,)
    assert np.all(np.isfinite(a.x))
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.lid, b.lid)
    np.testing.assert_array_equal(a.component, b.component)
    assert not np.array_equal(a.x, c.x)
    # The lid is a function of the component.
    for k in np.unique(a.component):
        assert np.unique(a.lid[a.component == k]).size == 1


def _local_rank(ds, comp, *, k=12, n_anchor=20, tau=0.15, seed=0):
    """Ranks of the k-NN neighbourhoods of random points of one component (local PCA).

    rank = #{singular values > tau·s₁}; 0 when the neighbourhood is a single point. On tiny
    neighbourhoods of noiseless data the tangent singular values are O(ε) and the normal ones
    O(ε²/curvature radius) (or float32 round-off for flat pieces), far apart on either side of tau.
    """
    pts = np.asarray(ds.x[ds.component == comp], np.float64)
    rng = np.random.default_rng(seed)
    anchors = pts[rng.choice(len(pts), size=min(n_anchor, len(pts)), replace=False)]
    _, nb = cKDTree(pts).query(anchors, k=k)
    scale = np.abs(pts).max() + 1.0
    ranks = []
    for row in nb:
        s = np.linalg.svd(pts[row] - pts[row].mean(axis=0), compute_uv=False)
        ranks.append(0 if s[0] <= 1e-6 * scale else int(np.sum(s > tau * s[0])))
    return np.array(ranks)


@pytest.mark.parametrize(
    "name, n, kwargs, k",
    [
        ("lollipop", 30000, {}, 12),
        ("torus_circle", 100000, {}, 12),
        ("swiss_roll", 30000, {}, 12),
        ("von_mises_point_mass", 20000, {}, 12),
        ("gaussian_subspace", 5000, {"dim": 3, "ambient_dim": 8}, 12),
        ("affine_mixture", 6000, {"dims": [0, 1, 2, 5], "ambient_dim": 8}, 20),
        ("affine_mixture", 6000, {"dims": [2, 4], "ambient_dim": 8, "distribution": "laplace"}, 20),
    ],
)
def test_lid_matches_local_pca(name, n, kwargs, k):
    ds = syn.GENERATORS[name](n, seed=0, **kwargs)
    for c in np.unique(ds.component):
        truth = np.unique(ds.lid[ds.component == c])
        assert truth.size == 1
        np.testing.assert_array_equal(_local_rank(ds, c, k=k), truth[0], err_msg=f"{name} component {c}")


def _check_proportions(component, weights):
    w = np.asarray(weights, float) / np.sum(weights)
    n = component.size
    counts = np.bincount(component, minlength=w.size)
    se = np.sqrt(w * (1 - w) / n)
    np.testing.assert_array_less(np.abs(counts / n - w), Z * se + 1e-12)


@pytest.mark.parametrize(
    "name, kwargs, weights",
    [
        ("lollipop", {}, (4, 2, 1)),
        ("lollipop", {"weights": (1, 1, 2)}, (1, 1, 2)),
        ("torus_circle", {}, (1, 1)),
        ("von_mises_point_mass", {}, (0.8, 0.2)),
        ("von_mises_point_mass", {"point_weight": 0.05}, (0.95, 0.05)),
        ("affine_mixture", {"dims": [1, 2, 3], "ambient_dim": 4, "weights": [3, 1, 1]}, (3, 1, 1)),
    ],
)
def test_component_proportions(name, kwargs, weights):
    ds = syn.GENERATORS[name](20000, seed=1, **kwargs)
    _check_proportions(ds.component, weights)


def test_lollipop_geometry():
    n = 20000
    ds = syn.lollipop(n, seed=2)
    disk, stick, point = (ds.x[ds.component == i].astype(np.float64) for i in range(3))
    r2 = np.sum((disk - 3.0) ** 2, axis=1)
    assert r2.max() <= 1.0 + 1e-5
    # Uniform by area: r² ~ U(0, 1), mean 1/2, variance 1/12.
    assert abs(r2.mean() - 0.5) < Z * np.sqrt(1 / 12 / r2.size)
    # Stick: on the diagonal y = x, between (1.5, 1.5) and the disk edge 3 − 1/√2.
    np.testing.assert_allclose(stick[:, 0], stick[:, 1], atol=1e-6)
    assert stick[:, 0].min() >= 1.5 - 1e-6 and stick[:, 0].max() <= 3 - 1 / np.sqrt(2) + 1e-6
    np.testing.assert_array_equal(point, 0.0)


def test_torus_circle_geometry():
    R, r = 10.0, 1.0
    ds = syn.torus_circle(40000, seed=2)
    torus = ds.x[ds.component == 0].astype(np.float64)
    circle = ds.x[ds.component == 1].astype(np.float64)
    rho = np.hypot(torus[:, 0], torus[:, 1])
    np.testing.assert_allclose((rho - R) ** 2 + torus[:, 2] ** 2, r**2, atol=1e-4)
    np.testing.assert_allclose(np.hypot(circle[:, 0], circle[:, 1]), R, atol=1e-4)
    np.testing.assert_allclose(circle[:, 2], 0.0, atol=1e-6)
    # Uniform by area: φ has density (R + r cos φ)/(2πR), so E[cos φ] = r/(2R).
    cos_phi = (rho - R) / r
    mean = r / (2 * R)
    var = 0.5 - mean**2  # E[cos² φ] = 1/2 (the cos³ term integrates to 0)
    assert abs(cos_phi.mean() - mean) < Z * np.sqrt(var / cos_phi.size)


def test_von_mises_moments():
    kappa = 2.0
    ds = syn.von_mises_point_mass(20000, seed=5, kappa=kappa, point=(0.0, 3.0))
    circ = ds.x[ds.component == 0].astype(np.float64)
    np.testing.assert_allclose(np.linalg.norm(circ, axis=1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(ds.x[ds.component == 1], np.array([[0.0, 3.0]], np.float32).repeat(
        int(np.sum(ds.component == 1)), axis=0))
    # E[cos θ] = I1(κ)/I0(κ), Var[cos θ] = E[cos² θ] − A² with E[cos² θ] = (1 + I2/I0)/2.
    a = special.i1(kappa) / special.i0(kappa)
    var = 0.5 * (1 + special.iv(2, kappa) / special.i0(kappa)) - a**2
    assert abs(circ[:, 0].mean() - a) < Z * np.sqrt(var / len(circ))
    assert abs(circ[:, 1].mean()) < Z * np.sqrt((1 - var - a**2) / len(circ))


def test_swiss_roll_parametrisation():
    ds = syn.swiss_roll(500, seed=0)
    t = ds.info["t"].astype(np.float64)
    np.testing.assert_allclose(ds.x[:, 0], t * np.cos(t), atol=1e-4)
    np.testing.assert_allclose(ds.x[:, 2], t * np.sin(t), atol=1e-4)
    assert np.all(ds.lid == 2) and np.all(ds.component == 0)


def test_gaussian_subspace_moments_and_info():
    n, d, D, s = 20000, 3, 7, 2.5
    ds = syn.gaussian_subspace(n, seed=0, dim=d, ambient_dim=D, scale=s)
    U, mu = ds.info["basis"].astype(np.float64), ds.info["mean"].astype(np.float64)
    np.testing.assert_allclose(U.T @ U, np.eye(d), atol=1e-6)
    z = (ds.x - mu) @ U / s  # latent coordinates, ~ N(0, I_d)
    np.testing.assert_allclose(ds.x - mu, s * z @ U.T, atol=1e-4)  # nothing off the plane
    assert np.all(np.abs(z.mean(axis=0)) < Z / np.sqrt(n))
    assert np.all(np.abs(z.var(axis=0) - 1) < Z * np.sqrt(2 / n))
    assert np.all(ds.lid == d)
    # dim = 0 is a point mass at the mean; a given mean is used as is.
    pm = syn.gaussian_subspace(10, seed=0, dim=0, ambient_dim=4, mean=np.arange(4.0))
    np.testing.assert_array_equal(pm.x, np.tile(np.arange(4.0, dtype=np.float32), (10, 1)))
    assert np.all(pm.lid == 0)


@pytest.mark.parametrize("distribution, bound", [("uniform", np.sqrt(3)), ("gaussian", None), ("laplace", None)])
def test_affine_mixture_standardised_and_separated(distribution, bound):
    n, D = 9000, 12
    ds = syn.affine_mixture(n, seed=0, dims=[1, 2, 4], ambient_dim=D, distribution=distribution)
    centres = ds.info["centres"].astype(np.float64)
    dist = np.linalg.norm(centres[:, None] - centres[None], axis=-1)
    np.testing.assert_allclose(dist[~np.eye(3, dtype=bool)], 10.0, rtol=1e-6)
    kurt = {"uniform": 1.8, "gaussian": 3.0, "laplace": 6.0}[distribution]  # E u⁴ for unit variance
    for i, U in enumerate(ds.info["bases"]):
        U = U.astype(np.float64)
        np.testing.assert_allclose(U.T @ U, np.eye(U.shape[1]), atol=1e-6)
        y = ds.x[ds.component == i] - centres[i]
        u = y @ U
        np.testing.assert_allclose(y, u @ U.T, atol=1e-4)  # on the affine plane
        m = len(u)
        assert np.all(np.abs(u.mean(axis=0)) < Z / np.sqrt(m))
        assert np.all(np.abs(u.var(axis=0) - 1) < Z * np.sqrt((kurt - 1) / m))
        if bound is not None:
            assert np.abs(u).max() <= bound + 1e-4


def test_mode_centres_beyond_ambient_dim():
    ds = syn.affine_mixture(50, seed=0, dims=[1] * 6, ambient_dim=3)
    c = ds.info["centres"].astype(np.float64)
    neighbours = np.linalg.norm(c - np.roll(c, 1, axis=0), axis=1)
    np.testing.assert_allclose(neighbours, 10.0, rtol=1e-6)
    line = syn.affine_mixture(50, seed=0, dims=[0, 1, 0], ambient_dim=1).info["centres"]
    np.testing.assert_allclose(np.diff(line[:, 0]), 10.0, rtol=1e-6)


def _tangent_singular_values(ds, comp, u, h=1e-5):
    """Singular values of d/du F(c + U u) (central differences) for the squiggly map F."""
    U = ds.info["bases"][comp].astype(np.float64)
    c = ds.info["centres"][comp].astype(np.float64)
    d = U.shape[1]
    steps = np.concatenate([np.eye(d), -np.eye(d)]) * h
    pts = c + (u + steps) @ U.T
    f = syn.apply_squiggle(pts, ds.info["squiggle"])
    jac = (f[:d] - f[d:]).T / (2 * h)  # (D, d)
    return np.linalg.svd(jac, compute_uv=False)


@pytest.mark.parametrize("frequency", [0.5, 1.0, 5.0, 10.0])
def test_squiggly_preserves_lid_and_bends(frequency):
    dims, D = [1, 2, 4], 8
    kw = dict(seed=7, dims=dims, ambient_dim=D)
    flat = syn.affine_mixture(3000, **kw)
    sq = syn.squiggly_mixture(3000, frequency=frequency, **kw)
    # Same flat pieces and labels, then the map.
    np.testing.assert_array_equal(flat.component, sq.component)
    np.testing.assert_array_equal(flat.lid, sq.lid)
    np.testing.assert_allclose(syn.apply_squiggle(flat.x, sq.info["squiggle"]), sq.x, atol=2e-3)
    # Tangent rank of each bent piece = d_i at random latent points: F is a diffeomorphism (each
    # sine step has derivative 1 + (1 − κ)cos(ωx) ≥ κ > 0), so dF·U_i keeps rank d_i. (The full
    # D×D Jacobian can be badly conditioned, ~κ^rounds where cos(ωx) ≈ −1, so the check is on the
    # tangent map, where the singular values stay well apart from 0.)
    rng = np.random.default_rng(0)
    # Tangent rank of each bent piece = d_i, at random latent points.
    for i, d in enumerate(dims):
        for u in rng.uniform(-np.sqrt(3), np.sqrt(3), size=(5, d)):
            s = _tangent_singular_values(sq, i, u)
            assert s.shape == (d,) and s[-1] > 1e-3 * s[0] and s[-1] > 1e-3
    # It bends: the best d-plane leaves a large share of the variance (≈ 0 for the flat pieces).
    for i, d in enumerate(dims):
        for ds, big in ((flat, False), (sq, True)):
            y = ds.x[ds.component == i].astype(np.float64)
            s2 = np.linalg.svd(y - y.mean(axis=0), compute_uv=False) ** 2
            resid = s2[d:].sum() / s2.sum()
            assert (resid > 0.01) if big else (resid < 1e-8), (frequency, i, resid)


def test_squiggly_high_dimension():
    ds = syn.squiggly_mixture(200, seed=0, dims=[3, 20], ambient_dim=1000, frequency=10.0)
    assert ds.x.shape == (200, 1000) and np.all(np.isfinite(ds.x))
    assert ds.info["squiggle"]["rotation"].shape == (5, 1000, 1000)
    assert sorted(np.unique(ds.lid).tolist()) == [3, 20]


def test_random_isometry_square_is_orthogonal():
    q = syn.random_isometry(np.random.default_rng(0), 300, 300)
    np.testing.assert_allclose(q.T @ q, np.eye(300), atol=1e-10)


def test_duplicate():
    base = syn.von_mises_point_mass(50, seed=0)
    idx = [1, 7, -1]
    ds = syn.duplicate(base, idx, 4)
    assert len(ds) == 50 + 3 * 3
    np.testing.assert_array_equal(ds.x[:50], base.x)
    src = ds.info["source"]
    np.testing.assert_array_equal(ds.x, base.x[src])
    np.testing.assert_array_equal(ds.component, base.component[src])
    chosen = np.isin(src, [1, 7, 49])
    np.testing.assert_array_equal(ds.info["duplicated"], chosen)
    np.testing.assert_array_equal(np.bincount(src[chosen]), np.where(np.isin(np.arange(50), [1, 7, 49]), 4, 0))
    assert np.all(ds.lid[chosen] == 0)
    np.testing.assert_array_equal(ds.lid[~chosen], base.lid[src[~chosen]])
    # Shuffled: same rows as a multiset, info stays aligned with the rows.
    sh = syn.duplicate(base, idx, 4, seed=3)
    assert len(sh) == len(ds) and not np.array_equal(sh.x, ds.x)
    np.testing.assert_array_equal(sh.x, base.x[sh.info["source"]])
    np.testing.assert_array_equal(np.sort(sh.info["source"]), np.sort(src))
    assert np.all(sh.lid[sh.info["duplicated"]] == 0)
    # m = 1 changes nothing; nested duplication keeps the original sources.
    same = syn.duplicate(base, idx, 1)
    np.testing.assert_array_equal(same.lid, base.lid)
    assert not same.info["duplicated"].any()
    twice = syn.duplicate(ds, [0], 2)
    np.testing.assert_array_equal(twice.x, base.x[twice.info["source"]])


def test_subsample():
    base = syn.duplicate(syn.lollipop(100, seed=0), [0], 3)
    sub = syn.subsample(base, 40, seed=2)
    assert len(sub) == 40
    again = syn.subsample(base, 40, seed=2)
    np.testing.assert_array_equal(sub.x, again.x)
    # Rows come from base, each at most once, per-point info re-indexed.
    src = sub.info["source"]
    np.testing.assert_array_equal(sub.x, syn.lollipop(100, seed=0).x[src])
    assert sub.info["duplicated"].shape == (40,)
    full = syn.subsample(base, len(base), seed=0)
    np.testing.assert_array_equal(full.x, base.x)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: syn.lollipop(0, seed=0), "n must be >= 1"),
        (lambda: syn.lollipop(10, seed=0, weights=(1, 1)), "weights must have 3 entries"),
        (lambda: syn.lollipop(10, seed=0, weights=(1, -1, 1)), "non-negative"),
        (lambda: syn.torus_circle(10, seed=0, minor_radius=11.0), "minor_radius must be smaller"),
        (lambda: syn.von_mises_point_mass(10, seed=0, point_weight=1.5), "point_weight must lie in"),
        (lambda: syn.von_mises_point_mass(10, seed=0, point=(1.0, 0.0)), "off the unit circle"),
        (lambda: syn.gaussian_subspace(10, seed=0, dim=4, ambient_dim=3), "dim must be <= ambient_dim"),
        (lambda: syn.gaussian_subspace(10, seed=0, dim=1, ambient_dim=3, mean=[0, 0]), "mean must have shape"),
        (lambda: syn.affine_mixture(10, seed=0, dims=[1, 5], ambient_dim=3), "dims must be <= ambient_dim=3"),
        (lambda: syn.affine_mixture(10, seed=0, dims=[], ambient_dim=3), "at least one"),
        (lambda: syn.affine_mixture(10, seed=0, dims=[1], ambient_dim=3, distribution="cauchy"),
         "distribution must be one of"),
        (lambda: syn.squiggly_mixture(10, seed=0, dims=[1], ambient_dim=3, frequency=0.0), "frequency must be"),
        (lambda: syn.squiggly_mixture(10, seed=0, dims=[1], ambient_dim=3, kappa=0.0), "kappa must lie in"),
        (lambda: syn.duplicate(syn.lollipop(5, seed=0), [5], 2), r"indices must lie in \[-5, 5\)"),
        (lambda: syn.duplicate(syn.lollipop(5, seed=0), [1, 1], 2), "distinct"),
        (lambda: syn.duplicate(syn.lollipop(5, seed=0), [1], 0), "m must be >= 1"),
        (lambda: syn.subsample(syn.lollipop(5, seed=0), 6, seed=0), "n must be <= len"),
    ],
)
def test_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_type_errors():
    with pytest.raises(TypeError, match="n must be a Python int"):
        syn.lollipop(10.0, seed=0)
    with pytest.raises(TypeError, match="dims must be a sequence"):
        syn.affine_mixture(10, seed=0, dims=2, ambient_dim=3)


def test_dataset_is_a_pytree():
    import jax

    ds = syn.gaussian_subspace(8, seed=0, dim=1, ambient_dim=3)
    leaves = jax.tree_util.tree_leaves(ds)
    assert len(leaves) == 3 + 3  # x, lid, component + basis, mean, scale
    moved = jax.device_put(ds)
    assert isinstance(moved, syn.Dataset) and moved.x.shape == (8, 3)
    with pytest.raises(ValueError, match="Dataset.lid and Dataset.component must have shape"):
        syn.Dataset(ds.x, ds.lid[:3], ds.component)
