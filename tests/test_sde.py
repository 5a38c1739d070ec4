import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmh_jax.sde import VPSDE


def test_marginal_coefs_are_variance_preserving():
    vp = VPSDE()
    ts = jnp.linspace(1e-4, 1.0, 50)
    alpha, sigma = jax.vmap(vp.marginal_coefs)(ts)
    np.testing.assert_allclose(alpha**2 + sigma**2, 1.0, rtol=1e-6)
    assert np.all(np.diff(np.asarray(sigma)) > 0)


def test_beta_integral_is_antiderivative_of_beta():
    vp = VPSDE(beta_min=0.1, beta_max=20.0, T=1.0)
    for t in [0.0, 0.3, 0.9]:
        np.testing.assert_allclose(jax.grad(vp.beta_integral)(t), vp.beta(t), rtol=1e-6)
    np.testing.assert_allclose(vp.beta_integral(1.0), 0.1 + 19.9 / 2, rtol=1e-6)


def test_delta_round_trip_and_small_t_accuracy():
    vp = VPSDE()
    ts = jnp.geomspace(1e-5, 1.0, 40)
    np.testing.assert_allclose(vp.t_from_delta(vp.delta(ts)), ts, rtol=2e-4)
    # sigma/alpha = exp(delta) at every t, including where 1 - exp(-B) would cancel catastrophically
    alpha, sigma = vp.marginal_coefs(ts)
    np.testing.assert_allclose(jnp.exp(vp.delta(ts)), sigma / alpha, rtol=1e-5)


def test_sde_is_a_pytree_usable_under_jit_vmap_grad():
    vp = VPSDE(beta_min=0.2, beta_max=10.0)
    leaves = jax.tree_util.tree_leaves(vp)
    assert len(leaves) == 3

    @jax.jit
    def sigma_at(sde, t):
        return sde.marginal_coefs(t)[1]

    np.testing.assert_allclose(sigma_at(vp, 0.5), vp.marginal_coefs(0.5)[1], rtol=1e-6)
    g = jax.grad(lambda bmax: VPSDE(0.1, bmax).marginal_coefs(0.5)[0])(20.0)
    assert np.isfinite(g) and g < 0  # more noise -> smaller alpha
    batched = jax.vmap(lambda s: s.marginal_coefs(0.5)[0])(
        VPSDE(jnp.array([0.1, 0.2]), jnp.array([20.0, 10.0]), jnp.array([1.0, 1.0]))
    )
    assert batched.shape == (2,)


def test_perturb_moments(key):
    vp = VPSDE()
    x0 = jnp.full((20000,), 2.0)
    xt, eps = vp.perturb(x0, 0.5, key)
    alpha, sigma = vp.marginal_coefs(0.5)
    np.testing.assert_allclose(xt, alpha * x0 + sigma * eps, rtol=1e-6)
    se = float(sigma) / np.sqrt(x0.size)
    assert abs(float(jnp.mean(xt)) - 2.0 * float(alpha)) < 5 * se
    assert vp.prior_sample(key, (3, 4)).shape == (3, 4)


@pytest.mark.parametrize("kwargs", [dict(beta_min=-1.0), dict(beta_min=5.0, beta_max=1.0), dict(T=0.0)])
def test_bad_sde_arguments(kwargs):
    with pytest.raises(ValueError, match="VPSDE"):
        VPSDE(**kwargs)
