"""Normalizing flows (mmh_jax.models.flows): invertibility, change of variables, normalisation, errors."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmh_jax.models import Flow, make_model, make_nll_loss
from mmh_jax.models.flows import rq_spline


def _init(flow, seed=0):
    """Parameters of ``flow`` (jitted: eager Flax init dispatches many small ops)."""
    return jax.jit(lambda k: flow.init(k, jnp.zeros(flow.dim), method=Flow.log_prob))(jax.random.key(seed))


def _flow_and_params(dim, *, perturb=0.1, seed=0, **kw):
    """A small flow whose parameters are moved away from the identity initialisation (so the map is not trivial)."""
    kw = {"num_coupling": 2, "hidden": 8, **kw}
    flow = Flow(dim=dim, **kw)
    params = _init(flow, seed)
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    leaves = [a + perturb * jax.random.normal(k, a.shape) for a, k in zip(leaves, keys)]
    return flow, jax.tree_util.tree_unflatten(tree, leaves)


@pytest.mark.parametrize("dim", [1, 2, 3])
def test_forward_inverts_inverse(dim):
    flow, params = _flow_and_params(dim, shift=tuple(range(dim)), scale=(2.0,) * dim)
    # Points inside and far outside the spline interval (identity tails).
    x = jax.random.normal(jax.random.key(2), (64, dim)) * 3.0 + jnp.arange(dim, dtype=jnp.float32)[None]
    x = x.at[0].set(50.0)
    z0 = jax.random.normal(jax.random.key(3), (64, dim))

    @jax.jit
    def round_trips(x, z0):
        z = flow.apply(params, x, method=Flow.inverse)[0]
        x0 = flow.apply(params, z0, method=Flow.forward)
        return flow.apply(params, z, method=Flow.forward), flow.apply(params, x0, method=Flow.inverse)[0]

    back, z_back = round_trips(x, z0)
    np.testing.assert_allclose(back, x, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(z_back, z0, atol=1e-4, rtol=1e-4)  # and from latents


@pytest.mark.parametrize("dim", [2, 3])
def test_log_prob_is_change_of_variables_with_autodiff_jacobian(dim):
    """Oracle: log N(z) + log|det ∂z/∂x| with the Jacobian from jax.jacfwd, not the layers' own log-dets."""
    flow, params = _flow_and_params(dim, shift=(0.5,) * dim, scale=tuple(1.0 + 0.5 * i for i in range(dim)))
    x = jax.random.normal(jax.random.key(4), (16, dim)) * 2.0

    def encode(xi):
        return flow.apply(params, xi, method=Flow.inverse)[0]

    def oracle(xi):
        z = encode(xi)
        _, logdet = jnp.linalg.slogdet(jax.jacfwd(encode)(xi))
        return -0.5 * jnp.sum(z**2) - 0.5 * dim * math.log(2 * math.pi) + logdet

    want, got, single = jax.jit(lambda x: (jax.vmap(oracle)(x), flow.apply(params, x, method=Flow.log_prob),
                                           flow.apply(params, x[3], method=Flow.log_prob)))(x)
    np.testing.assert_allclose(got, want, atol=2e-4, rtol=1e-5)
    np.testing.assert_allclose(single, got[3], rtol=1e-6, atol=1e-6)  # single example and batch agree


def test_identity_at_initialisation_is_the_standardised_gaussian():
    """Zero-initialised conditioners and actnorm: z = (x − shift)/scale exactly."""
    shift, scale = (1.0, -2.0), (3.0, 0.5)
    flow = Flow(dim=2, num_coupling=2, hidden=8, shift=shift, scale=scale)
    params = _init(flow)
    x = jnp.array([[0.3, 1.0], [4.0, -2.5]])
    z = (x - jnp.array(shift)[None]) / jnp.array(scale)[None]
    want = -0.5 * jnp.sum(z**2, -1) - math.log(2 * math.pi) - math.log(3.0 * 0.5)
    got = jax.jit(lambda x: flow.apply(params, x, method=Flow.log_prob))(x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def _grid_mass(flow, params, lo, hi, num, dim):
    axes = [np.linspace(lo, hi, num)] * dim
    pts = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, dim).astype(np.float32)
    # params as an argument, not a closed-over constant: in 1-D the conditioners see no input, so
    # with constant params XLA constant-folds their (num, 1, bins) cumsum, for seconds.
    log_p = jax.jit(lambda params, p: flow.apply(params, p, method=Flow.log_prob))(params, pts)
    dens = np.exp(np.asarray(log_p, np.float64))
    h = (hi - lo) / (num - 1)
    # Trapezoid weights on the grid.
    w1 = np.full(num, h)
    w1[[0, -1]] = h / 2
    w = w1
    for _ in range(dim - 1):
        w = np.multiply.outer(w, w1)
    return float(np.sum(dens * w.reshape(-1)))


@pytest.mark.parametrize("dim, num", [(1, 20001), (2, 601)])
def test_density_integrates_to_one(dim, num):
    """∫ p = 1 on a grid wide enough that the Gaussian tails outside hold < 1e-6 of the mass.

    The splines act on [−bound, bound]·scale + shift = [−4, 4]·0.7 + 0.2; outside it the flow is
    affine and the density a Gaussian tail. Trapezoid error on a smooth density at these spacings
    (h = 1e-3 in 1-D, 0.033 in 2-D) is far below the 1e-3 / 1e-2 tolerances.
    """
    flow, params = _flow_and_params(dim, perturb=0.1, shift=(0.2,) * dim, scale=(0.7,) * dim)
    mass = _grid_mass(flow, params, -10.0, 10.0, num, dim)
    assert mass == pytest.approx(1.0, abs=1e-3 if dim == 1 else 1e-2)


def test_samples_follow_the_density():
    """Monte-Carlo check: E_p[1{x ∈ A}] from samples equals ∫_A p on a grid (A = a half-plane)."""
    flow, params = _flow_and_params(2, perturb=0.1, seed=5)
    xs = jax.jit(lambda k: flow.apply(params, k, 20000, method=Flow.sample))(jax.random.key(9))
    assert xs.shape == (20000, 2) and bool(jnp.all(jnp.isfinite(xs)))
    frac = float(jnp.mean(xs[:, 0] > 0.0))
    axes = np.linspace(-10, 10, 601)
    pts = np.stack(np.meshgrid(axes, axes, indexing="ij"), -1).reshape(-1, 2).astype(np.float32)
    log_p = jax.jit(lambda p: flow.apply(params, p, method=Flow.log_prob))(pts)
    dens = np.exp(np.asarray(log_p, np.float64)) * (axes[1] - axes[0]) ** 2
    want = dens[pts[:, 0] > 0].sum() / dens.sum()
    se = math.sqrt(want * (1 - want) / 20000)
    assert abs(frac - want) < 5 * se + 5e-3


def test_rq_spline_derivative_and_monotonicity():
    k = jax.random.split(jax.random.key(0), 3)
    w, h, d = (jax.random.normal(k[0], (7,)), jax.random.normal(k[1], (7,)), jax.random.normal(k[2], (6,)))
    x = jnp.linspace(-4.0, 4.0, 400)  # misses ±bound, where clip's derivative is ambiguous

    @jax.jit
    def run(x):
        y, logd = jax.vmap(lambda xi: rq_spline(xi, w, h, d, bound=3.0))(x)
        grad = jax.vmap(jax.grad(lambda xi: rq_spline(xi, w, h, d, bound=3.0)[0]))(x)
        back, inv_logd = jax.vmap(lambda yi: rq_spline(yi, w, h, d, bound=3.0, inverse=True))(y)
        return y, logd, grad, back, inv_logd

    y, logd, grad, back, inv_logd = run(x)
    assert bool(jnp.all(jnp.diff(y) > 0))
    np.testing.assert_allclose(jnp.log(grad), logd, atol=1e-4)
    np.testing.assert_allclose(back, x, atol=5e-5)  # float32: ~1e-5 relative round-off
    np.testing.assert_allclose(inv_logd, -logd, atol=1e-4)


def test_nll_loss_is_mean_negative_log_prob_and_perturbs_with_delta():
    flow, params = _flow_and_params(2)
    x = jax.random.normal(jax.random.key(1), (32, 2))
    loss = jax.jit(make_nll_loss(flow))
    log_prob = jax.jit(lambda x: flow.apply(params, x, method=Flow.log_prob))
    np.testing.assert_allclose(loss(params, {"x": x, "delta": 0.0}, jax.random.key(2)), -jnp.mean(log_prob(x)),
                               rtol=1e-5)
    key = jax.random.key(3)
    noisy = x + 0.5 * jax.random.normal(key, x.shape)
    np.testing.assert_allclose(loss(params, {"x": x, "delta": 0.5}, key), -jnp.mean(log_prob(noisy)), rtol=1e-5)


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
    with pytest.raises(ValueError, match="dim must be an int >= 1, got 0"):
        Flow(dim=0).init(jax.random.key(0), jnp.zeros(1), method=Flow.log_prob)
    with pytest.raises(ValueError, match="shift must have dim = 2 entries"):
        Flow(dim=2, shift=(1.0,)).init(jax.random.key(0), jnp.zeros(2), method=Flow.log_prob)
    with pytest.raises(ValueError, match="scale must be positive"):
        Flow(dim=2, scale=(1.0, 0.0)).init(jax.random.key(0), jnp.zeros(2), method=Flow.log_prob)
