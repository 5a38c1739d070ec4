"""Jacobian-spectrum estimators against linear decoders with known singular values."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmh_jax import lid


def _linear_decoder(rng, D, k, singular_values):
    u, _ = np.linalg.qr(rng.standard_normal((D, D)))
    v, _ = np.linalg.qr(rng.standard_normal((k, k)))
    s = np.zeros((D, k))
    m = len(singular_values)
    s[np.arange(m), np.arange(m)] = singular_values
    a = jnp.asarray(u @ s @ v.T, jnp.float32)
    return (lambda z: a @ z), a


@pytest.mark.parametrize("D,k", [(5, 5), (8, 3), (3, 6)])
def test_jacobian_spectrum_of_linear_decoder(rng, D, k):
    m = min(D, k)
    sv = np.sort(rng.uniform(0.1, 4.0, m))[::-1]
    g, _ = _linear_decoder(rng, D, k, sv)
    est = lid.jacobian_spectrum(g, jnp.asarray(rng.standard_normal(k), jnp.float32))
    np.testing.assert_allclose(est, sv, rtol=1e-5, atol=1e-5)


def test_jacobian_spectrum_event_shapes(rng):
    g, a = _linear_decoder(rng, 12, 4, [3.0, 2.0, 1.0, 0.5])
    img_g = lambda z: g(z.reshape(-1)).reshape(2, 3, 2)  # noqa: E731
    est = lid.jacobian_spectrum(img_g, jnp.ones((2, 2)))
    np.testing.assert_allclose(est, [3.0, 2.0, 1.0, 0.5], rtol=1e-5)


def test_lid_from_spectrum_counts_above_exp_tau():
    sv = jnp.array([10.0, 1.0, 0.1, 1e-3, 0.0])
    assert float(lid.lid_from_spectrum(sv, tau=-3.0)) == 3.0
    taus = jnp.linspace(-10.0, 5.0, 50)
    curve = lid.lid_from_spectrum(sv, tau=taus)
    assert curve.shape == (50,)
    expected = [(np.asarray(sv) > np.exp(t)).sum() for t in np.asarray(taus)]
    np.testing.assert_array_equal(curve, expected)
    assert np.all(np.diff(np.asarray(curve)) <= 0)
    # vmap over thresholds gives the same as broadcasting
    np.testing.assert_array_equal(jax.vmap(lambda t: lid.lid_from_spectrum(sv, tau=t))(taus), curve)


def test_fast_flow_lidl_tends_to_rank_with_exact_zeros(rng):
    g, _ = _linear_decoder(rng, 6, 6, [2.0, 1.5, 1.0, 0.0, 0.0, 0.0])
    z = jnp.asarray(rng.standard_normal(6), jnp.float32)
    vals = lid.fast_flow_lidl(g, z, delta=jnp.array([-8.0, -10.0]))
    np.testing.assert_allclose(vals, 3.0, atol=1e-3)  # float32 round-off floor of the zero singular values
    # large noise: everything is blurred away
    assert float(lid.fast_flow_lidl(g, z, delta=6.0)) < 0.05


def test_fast_flow_lidl_plateau_at_numerical_rank(rng):
    g, _ = _linear_decoder(rng, 5, 5, [1.0, 1.0, 1e-4, 1e-4, 1e-4])
    z = jnp.asarray(rng.standard_normal(5), jnp.float32) * 0.5
    deltas = jnp.linspace(-5.0, -3.0, 9)  # e^delta in [7e-3, 5e-2]: far above 1e-4, below 1
    plateau = lid.fast_flow_lidl(g, z, delta=deltas)
    np.testing.assert_allclose(plateau, 2.0, atol=0.02)
    # far below the tiny singular values the full rank comes back
    np.testing.assert_allclose(lid.fast_flow_lidl(g, z, delta=-16.0), 5.0, atol=0.01)


def test_fast_flow_lidl_matches_finite_difference_of_log_density(rng):
    """LID(δ) = k + ∂ log ϱ(x; δ)/∂δ for x = g(z), ϱ the density of g(Z) + e^δ N(0, I) (Gaussian here)."""
    D = 4
    g, a = _linear_decoder(rng, D, D, [2.0, 1.0, 0.5, 0.1])
    z = jnp.asarray(rng.standard_normal(D), jnp.float32)
    x = a @ z

    def log_rho(delta):
        cov = a @ a.T + jnp.exp(2 * delta) * jnp.eye(D)
        return jax.scipy.stats.multivariate_normal.logpdf(x, jnp.zeros(D), cov)

    for delta in [-2.0, -1.0, 0.0]:
        expected = D + jax.grad(log_rho)(delta)
        np.testing.assert_allclose(lid.fast_flow_lidl(g, z, delta=delta), expected, rtol=1e-4, atol=1e-4)


def test_spectrum_bad_input():
    with pytest.raises(TypeError, match="z"):
        lid.jacobian_spectrum(lambda z: z, jnp.ones(3, jnp.int32))
    with pytest.raises(ValueError, match="singular_values"):
        lid.lid_from_spectrum(jnp.ones((2, 2)), tau=0.0)
