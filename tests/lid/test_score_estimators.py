"""Score-based estimators against closed-form oracles (Gaussians on affine subspaces, VP-SDE).

Compiling dominates these tests: each computes its estimates and oracles in one jitted program
where it can (a t0 closed over as a Python float compiles a program per value; eager ops compile one
small program per primitive and shape), from points drawn with numpy (`_points`).
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmh_jax import lid
from mmh_jax.data.gaussian import random_gaussian_mixture
from mmh_jax.sde import VPSDE

VP = VPSDE()

CASES = [(3, 0), (3, 3), (5, 2), (10, 4), (16, 15), (32, 8)]


def _points(gm, n, seed=1):
    """``n`` clean samples of the mixture, as ``gm.sample`` draws them (a component by weight, then
    its Gaussian on its subspace) but with numpy: jax's sampling program is larger than most of the
    estimators under test, and compiling it for every shape cost as much as they do."""
    rng = np.random.default_rng(seed)
    weights = np.exp(np.asarray(gm.log_weights, np.float64))
    comp = rng.choice(weights.size, size=n, p=weights / weights.sum())
    z = rng.standard_normal((n, gm.bases.shape[2]))
    bases, means, scales = (np.asarray(a, np.float64) for a in (gm.bases, gm.means, gm.scales))
    return (means[comp] + scales[comp, None] * np.einsum("ndk,nk->nd", bases[comp], z)).astype(np.float32)


@pytest.mark.parametrize("D,d", CASES)
def test_flipd_exact_matches_closed_form_and_tends_to_d(D, d):
    gm = random_gaussian_mixture(D * 10 + d, [d], D)
    t0s = [1e-3, 0.05, 0.5]  # against the closed form; and 1e-4, against d

    @jax.jit  # one program for every t0 (traced, batched) and the oracle
    def run(xs, t0s):
        over = lambda f, t0s: jax.vmap(lambda t0: jax.vmap(lambda x: f(x, t0))(xs))(t0s)  # noqa: E731
        est = over(lambda x, t0: lid.flipd(gm.score_fn(VP), x, t0=t0, sde=VP, trace="exact"), t0s)
        return est, over(lambda x, t0: gm.flipd_closed_form(x, t0, VP), t0s[:-1])

    est, oracle = map(np.asarray, run(_points(gm, 8), np.array(t0s + [1e-4], np.float32)))
    for t0, e, o in zip(t0s, est, oracle):
        # float32: the trace is a sum of D terms of size 1/sigma^2, scaled back by sigma^2.
        np.testing.assert_allclose(e, o, atol=2e-5 * D + 1e-5, rtol=1e-5, err_msg=f"t0={t0}")
    # As t0 -> 0 FLIPD -> d. The closed-form bias is d*sigma^2/(alpha^2 s^2 + sigma^2) + O(sigma^2 |x|^2).
    np.testing.assert_allclose(est[-1], d, atol=0.01 * max(d, 1))


@pytest.mark.parametrize("D,d", [(5, 2), (16, 15), (32, 8)])
def test_hutchinson_within_standard_error_of_exact(D, d):
    gm = random_gaussian_mixture(7 + D, [d], D)
    t0, num_probes, reps = 0.05, 4, 400

    @jax.jit  # one program: the exact value, the probes' theoretical spread and the estimates
    def run(x, keys):
        alpha, sigma = VP.marginal_coefs(t0)
        exact = lid.flipd(gm.score_fn(VP), x, t0=t0, sde=VP, trace="exact")
        # Rademacher variance of v^T A v: 2 (||A||_F^2 - sum_i A_ii^2) for symmetric A (a score Jacobian).
        jac = jax.jacfwd(lambda y: gm.score(y, t0, VP))(alpha * x)
        var = 2.0 * (jnp.sum(jac**2) - jnp.sum(jnp.diag(jac) ** 2))
        est = jax.vmap(
            lambda k: lid.flipd(gm.score_fn(VP), x, k, t0=t0, sde=VP, trace="hutchinson", num_probes=num_probes)
        )(keys)
        return exact, sigma**2 * jnp.sqrt(var / num_probes), jnp.mean(est), jnp.std(est)

    exact, se, mean, std = map(float, run(_points(gm, 1)[0], jax.random.split(jax.random.key(3), reps)))
    assert abs(mean - exact) < 4.0 * se / np.sqrt(reps) + 1e-4
    # the spread of single estimates matches the theory (chi-square band for 400 draws is ~ +-15%)
    assert 0.75 * se <= std <= 1.25 * se


def _probe_second_moment(key, dim, num_probes, t0):
    """(1/P) Σ_p v_p v_pᵀ of the probes ``lid.flipd(..., key, trace="hutchinson", num_probes=P)`` draws, read
    back through flipd: at x = 0 the linear field s(y)_i = y_j gives D + σ²·mean_p v_p,i·v_p,j."""
    sigma = VP.marginal_coefs(t0)[1]

    def entry(e):  # e = e_i e_jᵀ
        return lid.flipd(lambda y, t: e @ y, jnp.zeros(dim), key, t0=t0, sde=VP, trace="hutchinson",
                         num_probes=num_probes)

    return ((jax.vmap(entry)(jnp.eye(dim * dim).reshape(-1, dim, dim)) - dim) / sigma**2).reshape(dim, dim)


def test_hutchinson_paths_average_the_quadratic_form_over_their_probes(key):
    """One probe (a single JVP) and several (linearize + vmap) each give
    D + σ²·[mean_p v_pᵀ ∇s v_p + ‖s‖²] = D + σ²·[tr(∇s·M) + ‖s‖²], M the probes' second moment."""
    gm = random_gaussian_mixture(0, [3], 6)
    t0 = 0.1
    score = lambda y: gm.score(y, t0, VP)  # noqa: E731

    @jax.jit  # one program for both probe counts: eager is slow here
    def run(x, key):
        alpha, sigma = VP.marginal_coefs(t0)
        jac, s = jax.jacfwd(score)(alpha * x), score(alpha * x)
        out = {}
        for num_probes in (1, 3):
            est = lid.flipd(gm.score_fn(VP), x, key, t0=t0, sde=VP, trace="hutchinson", num_probes=num_probes)
            m = _probe_second_moment(key, 6, num_probes, t0)
            out[num_probes] = est, m, 6 + sigma**2 * (jnp.sum(jac * m.T) + jnp.sum(s**2))
        return out

    for num_probes, (est, m, want) in run(_points(gm, 1)[0], key).items():
        m = np.asarray(m)
        np.testing.assert_allclose(np.diag(m), 1.0, rtol=1e-5)  # Rademacher: v_i² = 1
        np.testing.assert_allclose(m * num_probes, np.round(m * num_probes), atol=1e-4)
        np.testing.assert_allclose(est, want, rtol=1e-5)


def test_exact_trace_chunking_is_invariant():
    gm = random_gaussian_mixture(1, [5], 23)
    chunks = [1, 4, 7, 23]

    @jax.jit  # one program for every chunk size: op-by-op dispatch made this test 5x slower
    def run(x):
        def flipd(chunk):
            return lid.flipd(gm.score_fn(VP), x, t0=0.05, sde=VP, trace="exact", chunk_size=chunk)

        return flipd(None), [flipd(chunk) for chunk in chunks]

    full, parts = run(_points(gm, 1)[0])
    for chunk, part in zip(chunks, parts):
        np.testing.assert_allclose(part, full, rtol=1e-5, atol=1e-4, err_msg=f"chunk_size={chunk}")


def test_flipd_on_image_shaped_events():
    D, d = 2 * 3 * 2, 5
    gm = random_gaussian_mixture(2, [d], D)
    score_img = lambda y, t: gm.score(y.reshape(-1), t, VP).reshape(y.shape)  # noqa: E731

    @jax.jit
    def run(x):
        return lid.flipd(gm.score_fn(VP), x, t0=0.05, sde=VP), lid.flipd(score_img, x.reshape(2, 3, 2), t0=0.05, sde=VP)

    flat, img = run(_points(gm, 1)[0])
    np.testing.assert_allclose(img, flat, rtol=1e-5)


def test_mixture_of_dimensions_each_point_near_its_component():
    gm = random_gaussian_mixture(4, [2, 4, 8], 10)

    @jax.jit
    def run(key):
        xs, comp = gm.sample(key, 60)
        return jax.vmap(lambda x: lid.flipd(gm.score_fn(VP), x, t0=1e-3, sde=VP))(xs), comp

    est, comp = run(jax.random.key(0))
    truth = gm.dims[comp]
    np.testing.assert_allclose(est, truth, atol=0.1)
    assert set(np.asarray(comp).tolist()) == {0, 1, 2}


@pytest.mark.parametrize("D,d", [(10, 0), (4, 1), (5, 2), (10, 4), (16, 15)])
def test_normal_bundle_returns_d(D, d, key):
    gm = random_gaussian_mixture(D + d, [d], D)

    @jax.jit  # one program for both rules
    def run(xs, keys):
        def rule(**kw):
            return jax.vmap(lambda x, k: lid.normal_bundle(gm.score_fn(VP), x, k, sde=VP, **kw))(xs, keys)

        # The threshold variant must sit above the tangential "drift" of the scores towards the mode,
        # of relative size ~ sigma(t)*|x - mean|, hence a smaller t than the gap rule needs.
        return rule(t=0.01), rule(t=1e-3, threshold=0.1)

    est, thr = run(_points(gm, 4), jax.random.split(key, 4))
    np.testing.assert_array_equal(est, d)
    np.testing.assert_array_equal(thr, d)


def test_flipd_curve_knee_reads_the_plateau():
    D, d = 12, 5
    gm = random_gaussian_mixture(5, [d], D)
    t0s = np.geomspace(1e-4, 1.0, 40).astype(np.float32)

    @jax.jit  # one program: the curves and their knees (jittable, batched)
    def run(key, t0s):
        # jax's draw, not _points': how far the knee's shoulder rises above d depends on the points
        xs = gm.sample(key, 6)[0]
        curves = jax.vmap(lambda x: lid.flipd_curve(gm.score_fn(VP), x, t0s=t0s, sde=VP))(xs)
        return curves, jax.vmap(lid.knee, in_axes=(None, 0))(t0s, curves)

    curves, (t_star, v_star) = run(jax.random.key(1), t0s)
    assert curves.shape == (6, 40)
    # plateau at d for small t0, towards 0 at t0 = T
    np.testing.assert_allclose(curves[:, 0], d, atol=0.05)
    assert np.all(np.asarray(curves[:, -1]) < 0.5 * d)
    # For points far from the mean the ‖s‖² term lifts the curve above d just before it falls, and
    # the knee sits on that shoulder: within 15% of d.
    np.testing.assert_allclose(v_star, d, rtol=0.15)
    assert np.all((np.asarray(t_star) > 1e-4) & (np.asarray(t_star) < 1.0))


def test_flipd_curve_equals_pointwise_flipd_and_reuses_probes(key):
    gm = random_gaussian_mixture(8, [3], 7)

    @jax.jit  # one program: the curve, and flipd at each of its times on its own (same key)
    def run(x, t0s):
        curve = lid.flipd_curve(gm.score_fn(VP), x, key, t0s=t0s, sde=VP, trace="hutchinson")
        return curve, jax.vmap(lambda t: lid.flipd(gm.score_fn(VP), x, key, t0=t, sde=VP, trace="hutchinson"))(t0s)

    curve, single = run(_points(gm, 1)[0], np.array([0.01, 0.1, 0.3], np.float32))
    np.testing.assert_allclose(curve, single, rtol=1e-5, atol=1e-5)


def test_jitted_curve_does_not_retrace_for_new_t0s():
    gm = random_gaussian_mixture(9, [2], 4)
    x = _points(gm, 1)[0]

    @jax.jit
    @chex.assert_max_traces(n=1)
    def curve(mixture, x, key, t0s):
        return lid.flipd_curve(mixture.score_fn(VP), x, key, t0s=t0s, sde=VP, trace="hutchinson")

    chex.clear_trace_counter()
    key = jax.random.key(0)
    a = curve(gm, x, key, np.geomspace(1e-3, 1.0, 16).astype(np.float32))
    b = curve(gm, x, key, np.geomspace(2e-3, 0.5, 16).astype(np.float32))
    assert a.shape == b.shape == (16,)
    assert not np.allclose(a, b)


def test_knee_of_a_synthetic_corner():
    t0s = np.geomspace(1e-3, 1.0, 31).astype(np.float32)  # log10(t0) = -3 + k/10
    k = np.arange(31)
    # flat at 4 up to t0 = 0.1 (k = 20), then a linear drop in log10(t0) to 0; built from k, not from
    # log10(t0s), so the corner's value is exactly 4 whatever the last bit of XLA's log10
    curve = np.where(k <= 20, 4.0, 4.0 - 0.4 * (k - 20)).astype(np.float32)
    t_star, v = lid.knee(t0s[::-1], curve[::-1])  # order of the grid does not matter
    np.testing.assert_allclose(t_star, 0.1, rtol=1e-5)
    np.testing.assert_allclose(v, 4.0)


def _tiny_mlp_params(seed, D, hidden=16):
    rng = np.random.default_rng(seed)  # numpy: a random initialisation, without compiling jax's sampler
    return {
        "w1": (rng.standard_normal((D + 1, hidden)) / np.sqrt(D + 1)).astype(np.float32),
        "w2": (rng.standard_normal((hidden, D)) / np.sqrt(hidden)).astype(np.float32),
    }


def _tiny_score(params, x, t):
    h = jnp.tanh(jnp.concatenate([x, t[None]]) @ params["w1"])
    return h @ params["w2"] - x


@pytest.mark.parametrize("trace", ["exact", "hutchinson"])
def test_flipd_is_differentiable_in_x_t0_and_params(trace):
    D = 6
    params = _tiny_mlp_params(0, D)
    x = np.linspace(-1.0, 1.0, D, dtype=np.float32)

    def f(params, x, t0):
        return lid.flipd(lambda y, t: _tiny_score(params, y, t), x, jax.random.key(1), t0=t0, sde=VP, trace=trace)

    gp, gx, gt = jax.jit(jax.grad(f, argnums=(0, 1, 2)))(params, x, np.float32(0.05))
    for g in jax.tree_util.tree_leaves((gp, gx, gt)):
        assert np.all(np.isfinite(np.asarray(g)))
    assert float(np.sum(np.abs(gx))) > 0


@pytest.mark.parametrize("D,d", [(4, 2), (10, 3), (8, 8)])
def test_fp_regress_recovers_d(D, d, key):
    gm = random_gaussian_mixture(D + 2 * d, [d], D)

    @jax.jit  # one program for both traces
    def run(xs, key):
        return (jax.vmap(lambda x: lid.fp_regress(gm.score_fn(VP), x, sde=VP))(xs),
                lid.fp_regress(gm.score_fn(VP), xs[0], key, sde=VP, trace="hutchinson", num_probes=64))

    est, hut = run(_points(gm, 4), key)
    np.testing.assert_allclose(est, d, atol=0.05 * max(d, 1))
    assert abs(float(hut) - d) < 1.0


def test_cfdm_is_zero_at_training_points():
    gm = random_gaussian_mixture(3, [2], 5)

    @jax.jit  # one program: the closest pair of the data, and both estimates
    def run(data):
        d2 = jnp.sum((data[:, None] - data[None]) ** 2, axis=-1) + jnp.diag(jnp.full(500, jnp.inf))
        nearest = jnp.sqrt(jnp.min(d2))
        # "small t": a noise scale delta = e^delta(t) ten times below the closest pair of training points
        t = VP.t_from_delta(jnp.log(nearest / 10))
        return (t, jax.vmap(lambda x: lid.cfdm(x, data, t=t, sde=VP))(data[:20]),
                jax.vmap(lambda x: lid.cfdm(x, data, t=t, sde=VP, chunk_size=128))(data[:20]))

    t, est, chunked = run(_points(gm, 500))
    assert 0.0 < float(t) <= 1.0  # traced, so cfdm could not check it
    np.testing.assert_allclose(est, 0.0, atol=1e-6)
    np.testing.assert_allclose(chunked, est, atol=1e-6)


def test_cfdm_plateaus_near_d_at_held_out_points():
    D, d = 6, 2
    gm = random_gaussian_mixture(11, [d], D)

    @jax.jit  # one program: the mean curve of the held-out points
    def run(data, held_out, ts):
        return jnp.mean(jax.vmap(lambda x: jax.vmap(lambda t: lid.cfdm(x, data, t=t, sde=VP))(ts))(held_out), axis=0)

    mean_curve = np.asarray(run(_points(gm, 20000, seed=1), _points(gm, 32, seed=2),
                                np.geomspace(1e-4, 1.0, 25).astype(np.float32)))
    near = np.abs(mean_curve - d) < 0.25 * d
    # at least three consecutive grid points (half a decade of t) on the plateau
    runs = np.convolve(near.astype(int), np.ones(3, int), mode="valid")
    assert runs.max() == 3, mean_curve
    # tiny t: a held-out point is off the memorizing model's manifold (the training points), the
    # nearest one dominates and the value is ~ dist²/δ², far above d; large t: everything blurs to 0.
    assert mean_curve[0] > 2 * d and mean_curve[-1] < 0.1 * d


def test_cfg_norm_matches_its_definition():
    gm = random_gaussian_mixture(6, [1, 3], 5)
    one = random_gaussian_mixture(6, [1], 5)

    def term(x, t):
        return VP.marginal_coefs(t)[1] * jnp.linalg.norm(one.score(x, t, VP) - gm.score(x, t, VP))

    @jax.jit  # one program: cfg_norm, and the definition's term at each (x, t)
    def run(xs, ts):
        return lid.cfg_norm(one.score_fn(VP), gm.score_fn(VP), xs, ts, sde=VP), jax.vmap(term)(xs, ts)

    val, terms = run(_points(gm, 4), np.array([0.9, 0.5, 0.2, 0.05], np.float32))
    manual = np.mean(np.asarray(terms))
    np.testing.assert_allclose(val, manual, rtol=1e-5)
    assert float(val) > 0


# ---------------------------------------------------------------------------------------------
# Bad input: errors name the argument, the value and what is expected.

SCORE = lambda x, t: -x  # noqa: E731


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda: lid.flipd(SCORE, jnp.ones(3), t0=0.05, sde=VP, trace="dense"), ValueError, "trace.*dense"),
        (lambda: lid.flipd(SCORE, jnp.ones(3), jax.random.key(0), t0=0.05, sde=VP, trace="hutchinson", num_probes=0),
         ValueError, "num_probes.*0"),
        (lambda: lid.flipd(SCORE, jnp.ones(3, jnp.int32), t0=0.05, sde=VP), TypeError, "x.*int32"),
        (lambda: lid.flipd(SCORE, jnp.float32(1.0), t0=0.05, sde=VP), ValueError, "x.*shape"),
        (lambda: lid.flipd(SCORE, jnp.ones(3), t0=0.0, sde=VP), ValueError, r"t0.*\(0, 1.0\]"),
        (lambda: lid.flipd(SCORE, jnp.ones(3), t0=1.5, sde=VP), ValueError, "t0.*1.5"),
        (lambda: lid.flipd(SCORE, jnp.ones(3), None, t0=0.05, sde=VP, trace="hutchinson"), ValueError, "key"),
        (lambda: lid.flipd_curve(SCORE, jnp.ones(3), t0s=jnp.ones((2, 2)) * 0.1, sde=VP), ValueError, "t0s.*shape"),
        (lambda: lid.flipd_curve(SCORE, jnp.ones(3), t0s=jnp.array([0.1, -0.1, 0.2]), sde=VP), ValueError, "t0s"),
        (lambda: lid.knee(jnp.ones(4), jnp.ones(5)), ValueError, "same shape"),
        (lambda: lid.cfdm(jnp.ones(3), jnp.zeros((0, 3)), t=0.1, sde=VP), ValueError, "data.*empty"),
        (lambda: lid.cfdm(jnp.ones(3), jnp.zeros((5, 4)), t=0.1, sde=VP), ValueError, r"data.*\(5, 4\)"),
        (lambda: lid.cfdm(jnp.ones(3), jnp.zeros((5, 3), jnp.int32), t=0.1, sde=VP), TypeError, "data"),
        (lambda: lid.normal_bundle(SCORE, jnp.ones(3), jax.random.key(0), sde=VP, num_samples=0), ValueError,
         "num_samples"),
        (lambda: lid.normal_bundle(SCORE, jnp.ones(3), jax.random.key(0), sde=VP, threshold=2.0), ValueError,
         "threshold"),
        (lambda: lid.fp_regress(SCORE, jnp.ones(3), sde=VP, deltas=jnp.array([-3.0])), ValueError, "deltas"),
        (lambda: lid.fp_regress(SCORE, jnp.ones(3), sde=VP, deltas=jnp.array([-3.0, 10.0])), ValueError,
         "t_from_delta"),
        (lambda: lid.cfg_norm(SCORE, SCORE, jnp.ones((3, 2)), jnp.array([0.1, 0.2]), sde=VP), ValueError, "ts"),
        (lambda: lid.flipd(lambda x, t: jnp.sum(x), jnp.ones(3), t0=0.1, sde=VP), ValueError, r"score_fn.*\(3,\)"),
        (lambda: lid.normal_bundle(lambda x, t: x[:2], jnp.ones(3), jax.random.key(0), sde=VP), ValueError,
         "score_fn"),
        (lambda: lid.cfg_norm(SCORE, lambda x, t: x[None], jnp.ones((2, 3)), jnp.array([0.1, 0.2]), sde=VP),
         ValueError, "uncond_score_fn"),
    ],
)
def test_bad_input_raises_clear_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_concrete_checks_do_not_break_tracing():
    # Under jit, t0 is a tracer: the range check is skipped rather than failing.
    f = jax.jit(lambda t0: lid.flipd(SCORE, jnp.ones(3), t0=t0, sde=VP))
    assert np.isfinite(float(f(0.05)))


@pytest.fixture(scope="module")
def point_mass_beside_disk():
    """FLIPD curves from exact scores at the centres of a point mass (d = 0) and a disk (d = 2),
    with their knees and plateaus read in the same jitted, batched program: ``(t0s, curves, (t_knee,
    v_knee), (t_plateau, v_plateau))``. Shared by the two tests below, which read the same curves."""
    gm = random_gaussian_mixture(3, [0, 2], 2, separation=4.0, weights=[0.2, 0.8])
    t0s = jnp.geomspace(1e-3, 1.0, 24)

    @jax.jit
    def run(t0s):
        curves = jax.vmap(lambda x: lid.flipd_curve(gm.score_fn(VP), x, t0s=t0s, sde=VP))(gm.means)
        return (curves, jax.vmap(lid.knee, in_axes=(None, 0))(t0s, curves),
                jax.vmap(lambda c: lid.plateau(t0s, c))(curves))

    return t0s, *run(t0s)


def test_knee_at_a_point_mass_reads_the_plateau_not_the_bump(point_mass_beside_disk):
    """Exact scores of a point mass (d = 0) beside a disk (d = 2): the curve plateaus at 0, rises
    while the noise reaches the disk, then falls. The knee must sit on the 0 plateau."""
    _, curves, (_, v), _ = point_mass_beside_disk
    assert float(np.max(np.asarray(curves)[0])) > 0.5  # the bump is there: plain kneedle would land on it
    np.testing.assert_allclose(v, [0.0, 2.0], atol=0.15)


def test_knee_of_a_plateau_then_bump():
    t0s = np.geomspace(1e-3, 1.0, 31).astype(np.float32)  # numpy: the curve is built without compiling ops
    u = np.log10(t0s)
    bump = np.where(u < -1.5, 0.0, np.where(u < -0.5, 2.0 * (u + 1.5), 2.0 - 4.0 * (u + 0.5)))
    t_star, v = lid.knee(t0s, np.maximum(bump, 0.0).astype(np.float32))
    np.testing.assert_allclose(t_star, 10**-1.5, rtol=1e-4)
    np.testing.assert_allclose(v, 0.0, atol=1e-6)


def test_plateau_and_knee_read_the_level_after_an_unresolved_fall():
    """A trained-model-like curve at an atom: unresolved (≈ D) at tiny t0, flat at 0, bump, collapse.
    Kneedle from the grid's start would take the corner at the top of the concave fall (> 0.5); the
    knee's segment starts on the plateau instead, so it reads the plateau's end, like plateau."""
    t0s = jnp.geomspace(1e-3, 1.0, 24)
    u = np.log10(np.asarray(t0s))
    curve = np.where(u < -2.2, 1.8 * (1.0 - ((u + 3.0) / 0.8) ** 2), 0.0)  # concave fall from 1.8 to 0 by 6e-3
    curve = curve + np.where((u > -0.6) & (u < -0.2), 1.3, 0.0)  # bump near t0 ≈ 0.4
    curve = jnp.asarray(curve, jnp.float32)
    _, v = lid.plateau(t0s, curve)
    np.testing.assert_allclose(v, 0.0, atol=1e-6)
    t_knee, v_knee = lid.knee(t0s, curve)
    np.testing.assert_allclose(v_knee, 0.0, atol=1e-6)
    assert 6e-3 < float(t_knee) < 0.3  # on the plateau, before the bump
    # a grid too short for the plateau window: kneedle from the start, the corner of the fall
    _, v_short = lid.knee(t0s[:4], curve[:4], window=2)
    assert float(v_short) > 0.5


def test_plateau_with_exact_scores_and_errors(point_mass_beside_disk):
    t0s, curves, _, (t, v) = point_mass_beside_disk
    np.testing.assert_allclose(v, [0.0, 2.0], atol=0.05)
    assert np.all(np.asarray(t) <= 0.5)
    with pytest.raises(ValueError, match="window"):
        lid.plateau(t0s, curves[0], window=0)
    with pytest.raises(ValueError, match="at least"):
        lid.plateau(t0s[:4], curves[0][:4], window=2)


def test_readouts_flag_a_curve_without_a_plateau():
    """A curve falling steadily in log t0 (1.5·MAX_SLOPE LID per decade everywhere, the shape of a
    trained network that never settles) has no plateau: knee and plateau say NaN rather than pick a
    number on it; the same fall with a flat stretch inserted is read at that stretch."""
    t0s = np.geomspace(1e-3, 1.0, 31).astype(np.float32)  # 10 points per decade
    u = np.log10(t0s)
    falling = (20.0 - 1.5 * lid.MAX_SLOPE * (u + 3.0)).astype(np.float32)
    _, v_plateau = lid.plateau(t0s, falling)
    _, v_knee = lid.knee(t0s, falling)
    assert np.isnan(float(v_plateau)) and np.isnan(float(v_knee))
    # a slope just under the limit is a plateau (the flag is the threshold, not "any slope")
    gentle = (5.0 - 0.9 * lid.MAX_SLOPE * (u + 3.0)).astype(np.float32)
    assert np.isfinite(float(lid.plateau(t0s, gentle)[1])) and np.isfinite(float(lid.knee(t0s, gentle)[1]))
    # max_slope=None never flags
    assert np.isfinite(float(lid.plateau(t0s, falling, max_slope=None)[1]))
    assert np.isfinite(float(lid.knee(t0s, falling, max_slope=None)[1]))
    with_flat = np.where(np.abs(u + 1.5) <= 0.3, 11.5, falling).astype(np.float32)  # flat at 11.5 around 0.03
    t_flat, v_flat = lid.plateau(t0s, with_flat)
    np.testing.assert_allclose(v_flat, 11.5)
    assert 10**-1.8 <= float(t_flat) <= 10**-1.2


def test_readouts_skip_the_unresolved_stretch_at_the_ambient_dimension():
    """Flat at D = 10 for the smallest t0 (the network does not resolve the manifold there), then a
    fall onto a plateau at 3 and a collapse: with ambient_dim the plateau at 3 is read; without it
    the (equally flat) stretch at ≈ D comes first and wins. Full-dimensional data, flat at D
    throughout, and a curve whose only flat stretch is at ≈ D still read D."""
    t0s = np.geomspace(1e-3, 1.0, 31).astype(np.float32)
    u = np.log10(t0s)
    curve = np.where(u < -2.2, 10.0, np.where(u < -1.8, 10.0 - 17.5 * (u + 2.2),
                                             np.where(u < -0.6, 3.0, 3.0 - 5.0 * (u + 0.6))))
    curve = curve.astype(np.float32)
    _, v = lid.plateau(t0s, curve, ambient_dim=10)
    np.testing.assert_allclose(v, 3.0)
    _, v_knee = lid.knee(t0s, curve, ambient_dim=10)
    np.testing.assert_allclose(v_knee, 3.0, atol=1e-5)
    _, v_blind = lid.plateau(t0s, curve)
    np.testing.assert_allclose(v_blind, 10.0)
    flat_at_d = np.full(31, 10.2, np.float32)
    np.testing.assert_allclose(lid.plateau(t0s, flat_at_d, ambient_dim=10)[1], 10.2)
    unresolved_then_falling = np.where(u < -2.2, 10.0, 10.0 - 1.5 * lid.MAX_SLOPE * (u + 2.2)).astype(np.float32)
    np.testing.assert_allclose(lid.plateau(t0s, unresolved_then_falling, ambient_dim=10)[1], 10.0)


@pytest.mark.parametrize("kw", [{"max_slope": 0.0}, {"max_slope": -1.0}, {"ambient_dim": 0}])
def test_readout_limits_must_be_positive(kw):
    t0s = np.geomspace(1e-3, 1.0, 8).astype(np.float32)
    name = next(iter(kw))
    for readout in (lid.plateau, lid.knee):
        with pytest.raises(ValueError, match=name):
            readout(t0s, np.ones(8, np.float32), **kw)


def test_readouts_in_two_dimensions_scale_the_slope_limit():
    """In R² a FLIPD curve spans only [0, 2]: a disk's curve (flat at D = 2, then a collapse of
    2 per decade) must read 2, not a window of its collapse, and an unresolved point mass (≈ 2 at
    the smallest t0, then flat at 0) must read 0. The limit MAX_SLOPE·D/10 tells them apart."""
    t0s = np.geomspace(1e-3, 1.0, 24).astype(np.float32)
    u = np.log10(t0s)
    disk = np.where(u < -1.0, 2.0, np.maximum(2.0 - 2.0 * (u + 1.0), 0.0)).astype(np.float32)
    atom = np.where(u < -2.3, 2.0, np.where(u < -2.0, 2.0 - (u + 2.3) / 0.15, 0.0)).astype(np.float32)
    for readout in (lid.knee, lid.plateau):
        np.testing.assert_allclose(readout(t0s, disk, ambient_dim=2)[1], 2.0)
        np.testing.assert_allclose(readout(t0s, atom, ambient_dim=2)[1], 0.0, atol=1e-6)
    # the collapse alone is flat under the unscaled limit: without the scaling the disk reads < 2
    assert float(lid.plateau(t0s, disk, ambient_dim=2, max_slope=lid.MAX_SLOPE * 5)[1]) < 1.5


def test_a_batched_network_gets_a_message_naming_single_example():
    """A network written for batches (xs[B, D], ts[B]) fed one example fails inside JAX; the estimators
    say what they call and name the fix, and the wrapped network then gives the single-example result."""
    from mmh_jax.adapters import single_example

    vp = VPSDE()
    batched = lambda xs, ts: -xs / vp.marginal_coefs(ts)[1][:, None] ** 2  # noqa: E731 (N(0, 0) data)
    x = jnp.ones(3)
    for call in (lambda f: lid.flipd(f, x, None, t0=0.05, sde=vp),
                 lambda f: lid.normal_bundle(f, x, jax.random.key(0), t=0.05, sde=vp, num_samples=8)):
        with pytest.raises(ValueError, match=r"single_example\(batched_fn\)") as err:
            call(batched)
        assert "ONE example" in str(err.value) and "(3,)" in str(err.value)
        assert np.isfinite(float(call(single_example(batched))))


def _sphere_score(radius: float, sde):
    """Exact score of the uniform 4-sphere of ``radius`` in the first p = 5 coordinates, noised by
    ``sde``: its density integrates exp(κ cos θ) over the sphere, κ = α·radius·|y_sub|/σ², which is
    κ^{-3/2} I_{3/2}(κ) up to a constant, and I_{3/2}(κ) = √(2/(πκ)) (cosh κ − sinh κ / κ)."""
    p = 5

    def log_density(y, t):
        a, s = sde.marginal_coefs(t)
        r = jnp.linalg.norm(y[:p])
        k = a * radius * r / s**2
        bessel = k + jnp.log1p(jnp.exp(-2 * k)) + jnp.log1p(-(1 - jnp.exp(-2 * k)) / (k * (1 + jnp.exp(-2 * k))))
        return -(jnp.sum(y**2) + (a * radius) ** 2) / (2 * s**2) + bessel - 2 * jnp.log(k)

    return jax.grad(log_density)


def test_flipd_reads_a_curved_manifold_at_small_t0_and_its_curvature_at_large_t0():
    """Planted case on a curved manifold: the 4-sphere in R^32 with its exact noised score. FLIPD
    reads 4 while σ is small against the radius; at σ comparable to it the curvature shows."""
    D, p = 32, 5
    z = np.random.default_rng(0).normal(size=(20, p))
    on_unit_sphere = np.concatenate([z / np.linalg.norm(z, axis=1, keepdims=True), np.zeros((20, D - p))], 1)

    @jax.jit
    def flipd_means(x, radius, t0):
        score = _sphere_score(radius, VP)
        return jnp.mean(jax.vmap(lambda xx: lid.flipd(score, xx, t0=t0, sde=VP, trace="exact"))(x))

    x = jnp.asarray(on_unit_sphere, jnp.float32)
    for t0 in (0.02, 0.05):
        assert abs(float(flipd_means(2.0 * x, 2.0, t0)) - 4.0) < 0.05, t0
    assert float(flipd_means(x, 1.0, 0.2)) < 3.0  # σ ≈ 0.6 against radius 1: no longer 4
