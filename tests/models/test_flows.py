"""Normalizing flows (mmh_jax.models.flows): invertibility, change of variables, normalisation, errors."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmh_jax.models import Flow, make_model, make_nll_loss
from mmh_jax.models.flows import rq_spline


def _flow_and_params(dim, *, perturb=0.1, seed=0, **kw):
    """A small flow whose parameters are moved away from the identity initialisation (so the map is not trivial).

    Drawn on the host from the abstract ``init`` (no init compile, no random-draw compile per leaf
    shape): about what ``init`` gives (hidden kernels of variance 1/fan_in; zero biases, output
    layers and actnorms: the identity) plus ``perturb``·N(0, 1) on every leaf.
    """
    kw = {"num_coupling": 2, "hidden": 8, **kw}
    flow = Flow(dim=dim, **kw)
    abstract = jax.eval_shape(lambda k: flow.init(k, jnp.zeros(dim), method=Flow.log_prob), jax.random.key(seed))
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = jax.tree_util.keystr(path)
        value = perturb * rng.normal(size=leaf.shape)
        if leaf.ndim == 2 and "'out'" not in name:  # a hidden layer's kernel
            value += rng.normal(size=leaf.shape) / math.sqrt(leaf.shape[0])
        return jnp.asarray(value.astype(leaf.dtype))

    return flow, jax.tree_util.tree_map_with_path(fill, abstract)


def _normal(seed, shape):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


@pytest.mark.parametrize("dim", [1, 2, 3])
def test_forward_inverts_inverse(dim):
    flow, params = _flow_and_params(dim, shift=tuple(range(dim)), scale=(2.0,) * dim)
    # Points inside and far outside the spline interval (identity tails).
    x = _normal(2, (64, dim)) * 3.0 + np.arange(dim, dtype=np.float32)[None]
    x[0] = 50.0
    z0 = _normal(3, (64, dim))

    @jax.jit
    def round_trips(x, z0):
        z = flow.apply(params, x, method=Flow.inverse)[0]
        # One decoder pass over both batches: forward(inverse(x)) and forward(z0).
        back, x0 = jnp.split(flow.apply(params, jnp.concatenate([z, z0]), method=Flow.forward), 2)
        return back, flow.apply(params, x0, method=Flow.inverse)[0]

    back, z_back = round_trips(x, z0)
    np.testing.assert_allclose(back, x, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(z_back, z0, atol=1e-4, rtol=1e-4)  # and from latents


@pytest.mark.parametrize("dim", [2, 3])
def test_log_prob_is_change_of_variables_with_autodiff_jacobian(dim):
    """Oracle: log N(z) + log|det ∂z/∂x| with the Jacobian from jax.jacfwd, not the layers' own log-dets."""
    flow, params = _flow_and_params(dim, shift=(0.5,) * dim, scale=tuple(1.0 + 0.5 * i for i in range(dim)))
    x = _normal(4, (16, dim)) * 2.0

    def encode(xi):
        z = flow.apply(params, xi, method=Flow.inverse)[0]
        return z, z  # the second z rides along as jacfwd's aux: one pass gives z and ∂z/∂x

    def oracle(xi):
        jac, z = jax.jacfwd(encode, has_aux=True)(xi)
        _, logdet = jnp.linalg.slogdet(jac)
        return -0.5 * jnp.sum(z**2) - 0.5 * dim * math.log(2 * math.pi) + logdet

    want, got, single = jax.jit(lambda x: (jax.vmap(oracle)(x), flow.apply(params, x, method=Flow.log_prob),
                                           flow.apply(params, x[3], method=Flow.log_prob)))(x)
    np.testing.assert_allclose(got, want, atol=2e-4, rtol=1e-5)
    np.testing.assert_allclose(single, got[3], rtol=1e-6, atol=1e-6)  # single example and batch agree


def test_identity_at_initialisation_is_the_standardised_gaussian():
    """Zero-initialised conditioners and actnorm: z = (x − shift)/scale exactly."""
    shift, scale = (1.0, -2.0), (3.0, 0.5)
    flow = Flow(dim=2, num_coupling=2, hidden=8, shift=shift, scale=scale)
    x = np.array([[0.3, 1.0], [4.0, -2.5]], np.float32)
    z = (x - np.array(shift)[None]) / np.array(scale)[None]
    want = -0.5 * np.sum(z**2, -1) - math.log(2 * math.pi) - math.log(3.0 * 0.5)
    # log p(x) of the freshly initialised flow: init and evaluation in one compiled program.
    got, _ = jax.jit(lambda k, x: flow.init_with_output(k, x, method=Flow.log_prob))(jax.random.key(0), x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def _grid(lo, hi, num, dim):
    """The ``(num**dim, dim)`` points of the grid of ``num`` points per axis over [lo, hi]^dim."""
    axes = [np.linspace(lo, hi, num)] * dim
    return np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, dim).astype(np.float32)


def _density(log_p):
    return np.exp(np.asarray(log_p, np.float64))


def _trapezoid(dens, lo, hi, num, dim):
    h = (hi - lo) / (num - 1)
    # Trapezoid weights on the grid.
    w1 = np.full(num, h)
    w1[[0, -1]] = h / 2
    w = w1
    for _ in range(dim - 1):
        w = np.multiply.outer(w, w1)
    return float(np.sum(dens * w.reshape(-1)))


def _density_flow(dim):
    return _flow_and_params(dim, perturb=0.1, shift=(0.2,) * dim, scale=(0.7,) * dim)


@pytest.fixture(scope="module")
def plane():
    """The 2-D flow of the density tests: the grid of 301×301 points over [−10, 10]², the density
    there and 20000 samples (one compiled program, run once for the two tests that read them).

    The samples test's half-plane x₀ > 0 lies off the flow's centre 0.2, so a wrong scale of the
    samples moves the fraction in it, as a wrong shift does."""
    flow, params = _density_flow(2)
    pts = _grid(-10.0, 10.0, 301, 2)

    @jax.jit
    def run(params, pts, key):
        return flow.apply(params, pts, method=Flow.log_prob), flow.apply(params, key, 20000, method=Flow.sample)

    log_p, samples = run(params, pts, jax.random.key(9))
    return pts, _density(log_p), np.asarray(samples)


#: The tests that read ``plane`` run on one xdist worker, which builds it once.
shares_plane = pytest.mark.xdist_group("flow_plane")


@pytest.mark.parametrize("dim, num", [(1, 20001), pytest.param(2, 301, marks=shares_plane)])
def test_density_integrates_to_one(dim, num, request):
    """∫ p = 1 on a grid wide enough that the Gaussian tails outside hold < 1e-6 of the mass.

    The splines act on [−bound, bound]·scale + shift = [−4, 4]·0.7 + 0.2; outside it the flow is
    affine and the density a Gaussian tail. The density is continuous (the splines' derivatives are)
    and smooth between the knots, so the trapezoid error is O(h²), ~h²/12 at unit curvature: at
    these spacings (h = 1e-3 in 1-D, 0.067 in 2-D) ~1e-7 and ~4e-4, far below the 1e-3 / 1e-2
    tolerances.
    """
    if dim == 2:
        _, dens, _ = request.getfixturevalue("plane")
    else:
        flow, params = _density_flow(dim)
        # params as an argument, not a closed-over constant: in 1-D the conditioners see no input,
        # so with constant params XLA constant-folds their (num, 1, bins) cumsum, for seconds.
        log_p = jax.jit(lambda params, p: flow.apply(params, p, method=Flow.log_prob))(params, _grid(-10.0, 10.0, num, dim))
        dens = _density(log_p)
    mass = _trapezoid(dens, -10.0, 10.0, num, dim)
    assert mass == pytest.approx(1.0, abs=1e-3 if dim == 1 else 1e-2)


@shares_plane
def test_samples_follow_the_density(plane):
    """Monte-Carlo check: E_p[1{x ∈ A}] from samples equals ∫_A p on a grid (A = a half-plane)."""
    pts, dens, xs = plane
    assert xs.shape == (20000, 2) and np.all(np.isfinite(xs))
    frac = np.mean(xs[:, 0] > 0.0)
    # ∫_A p / ∫ p by the trapezoid rule across the boundary x₀ = 0 (a grid line): the points on it
    # count half, so the grid's error is O(h²), not the O(h) of leaving them out.
    inside = (pts[:, 0] > 0) + 0.5 * (pts[:, 0] == 0)
    want = np.sum(dens * inside) / dens.sum()  # equal cell areas cancel
    se = math.sqrt(want * (1 - want) / 20000)
    assert 0.1 < want < 0.9  # a half-plane that cuts the mass: a real check
    assert abs(frac - want) < 5 * se + 5e-3


def test_rq_spline_derivative_and_monotonicity():
    w, h, d = _normal(0, (7,)), _normal(1, (7,)), _normal(2, (6,))
    x = np.linspace(-4.0, 4.0, 400, dtype=np.float32)  # misses ±bound, where clip's derivative is ambiguous

    @jax.jit
    def run(x):
        y, logd = jax.vmap(lambda xi: rq_spline(xi, w, h, d, bound=3.0))(x)
        grad = jax.vmap(jax.grad(lambda xi: rq_spline(xi, w, h, d, bound=3.0)[0]))(x)
        back, inv_logd = jax.vmap(lambda yi: rq_spline(yi, w, h, d, bound=3.0, inverse=True))(y)
        return y, logd, grad, back, inv_logd

    y, logd, grad, back, inv_logd = (np.asarray(a) for a in run(x))
    assert np.all(np.diff(y) > 0)
    np.testing.assert_allclose(np.log(grad), logd, atol=1e-4)
    np.testing.assert_allclose(back, x, atol=5e-5)  # float32: ~1e-5 relative round-off
    np.testing.assert_allclose(inv_logd, -logd, atol=1e-4)


def test_nll_loss_is_mean_negative_log_prob_and_perturbs_with_delta():
    flow, params = _flow_and_params(2)
    x = _normal(1, (32, 2))
    loss = make_nll_loss(flow)

    @jax.jit  # one program, run at δ = 0 and δ = 0.5
    def loss_and_reference(params, x, delta, loss_key, ref_key):
        # reference: −mean log p(x + δ·ε), ε from ref_key as the loss draws it; at δ = 0, x itself
        noisy = x + delta * jax.random.normal(ref_key, x.shape)
        return loss(params, {"x": x, "delta": delta}, loss_key), -jnp.mean(flow.apply(params, noisy, method=Flow.log_prob))

    key = jax.random.key(3)
    clean, want_clean = loss_and_reference(params, x, 0.0, jax.random.key(2), key)
    noisy, want_noisy = loss_and_reference(params, x, 0.5, key, key)
    np.testing.assert_allclose(clean, want_clean, rtol=1e-5)
    np.testing.assert_allclose(noisy, want_noisy, rtol=1e-5)


def test_make_model_builds_flows_and_refuses_labels():
    assert isinstance(make_model("flow", dim=3), Flow)
    assert isinstance(make_model("lidl", dim=2, hidden=8), Flow)
    with pytest.raises(ValueError, match="unconditional"):
        make_model("flow", num_classes=10, dim=2)


def test_bad_inputs_name_the_argument_and_the_fix():
    flow, params = _flow_and_params(2)
    with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., 2\).*got shape \(3,\)"):
        flow.apply(params, jnp.zeros(3), method=Flow.log_prob)
    with pytest.raises(TypeError, match=r"z must be a floating-point array, got dtype int32; use z.astype"):
        flow.apply(params, jnp.zeros(2, jnp.int32), method=Flow.forward)
    with pytest.raises(ValueError, match="dim must be >= 1, got 0"):
        Flow(dim=0).init(jax.random.key(0), jnp.zeros(1), method=Flow.log_prob)
    with pytest.raises(ValueError, match="shift must have dim = 2 entries"):
        Flow(dim=2, shift=(1.0,)).init(jax.random.key(0), jnp.zeros(2), method=Flow.log_prob)
    with pytest.raises(ValueError, match="scale must be positive"):
        Flow(dim=2, scale=(1.0, 0.0)).init(jax.random.key(0), jnp.zeros(2), method=Flow.log_prob)
