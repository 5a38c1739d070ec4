"""Samplers against closed-form scores: they must reproduce the data distribution.

Compiling dominates these tests, so each runs its samplers in one jitted program (an eager
sampler compiles its scan and then every small op around it on its own).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmh_jax import lid, sample
from mmh_jax.data.gaussian import random_gaussian_mixture
from mmh_jax.sde import VPSDE

VP = VPSDE()
N = 2000


def _gm():
    return random_gaussian_mixture(0, [2], 4, scale=1.5)


def _eps_fn(gm):
    return lambda x, t: -VP.marginal_coefs(t)[1] * gm.score(x, t, VP)


def _check_distribution(gm, xs):
    xs, mu, u = np.asarray(xs), np.asarray(gm.means)[0], np.asarray(gm.bases)[0]  # numpy: no ops to compile
    resid = (xs - mu[None]) - ((xs - mu[None]) @ u) @ u.T
    assert float(np.max(np.abs(resid))) < 0.05  # on the subspace (Tweedie step projects exactly)
    coords = (xs - mu[None]) @ u  # should be N(0, 1.5^2 I_2)
    se_mean = 1.5 / np.sqrt(N)
    assert np.all(np.abs(coords.mean(0)) < 4 * se_mean)
    se_std = 1.5 / np.sqrt(2 * N)
    assert np.all(np.abs(coords.std(0) - 1.5) < 4 * se_std + 0.03)  # + discretisation bias


@pytest.mark.parametrize("name", ["euler_maruyama", "ddim", "probability_flow"])
def test_samplers_reproduce_a_gaussian_on_a_subspace(name):
    gm = _gm()
    keys = jax.random.split(jax.random.key(1), N)
    if name == "euler_maruyama":
        f = lambda k: sample.euler_maruyama(gm.score_fn(VP), k, (4,), sde=VP, num_steps=200)  # noqa: E731
    elif name == "ddim":
        f = lambda k: sample.ddim(_eps_fn(gm), k, (4,), sde=VP, num_steps=50)  # noqa: E731
    else:
        f = lambda k: sample.probability_flow(gm.score_fn(VP), jax.random.normal(k, (4,)), sde=VP,  # noqa: E731
                                              num_steps=50)
    xs = jax.jit(jax.vmap(f))(keys)
    assert xs.shape == (N, 4)
    _check_distribution(gm, xs)


def test_trajectory_and_cfg_norm():
    gm = _gm()

    @jax.jit
    def run(key):
        x, (xs, ts) = sample.ddim(_eps_fn(gm), key, (4,), sde=VP, num_steps=10, return_trajectory=True)
        return xs, ts, lid.cfg_norm(gm.score_fn(VP), gm.score_fn(VP), xs, ts, sde=VP)

    xs, ts, val = run(jax.random.key(0))
    assert xs.shape == (10, 4) and ts.shape == (10,)
    assert float(ts[0]) == pytest.approx(1.0)
    assert float(val) == 0.0


def test_ddim_aux_is_read_at_the_trajectory_states():
    """has_aux returns each step's aux from the evaluation at the state before that step; the sample
    is unchanged. Oracle: the aux ‖ε‖ recomputed at the returned trajectory's states."""
    gm = _gm()
    eps = _eps_fn(gm)

    @jax.jit  # one program for the three samplers and the oracle
    def run(key):
        plain, (xs, ts) = sample.ddim(eps, key, (4,), sde=VP, num_steps=12, return_trajectory=True)
        x_aux, norms = sample.ddim(lambda x, t: (eps(x, t), jnp.linalg.norm(eps(x, t))), key, (4,), sde=VP,
                                   num_steps=12, has_aux=True)
        x_both, (xs2, _), norms2 = sample.ddim(lambda x, t: (eps(x, t), jnp.linalg.norm(eps(x, t))), key, (4,),
                                               sde=VP, num_steps=12, has_aux=True, return_trajectory=True)
        expected = jax.vmap(lambda x, t: jnp.linalg.norm(eps(x, t)))(xs, ts)
        return plain, xs, x_aux, norms, x_both, xs2, norms2, expected

    plain, xs, x_aux, norms, x_both, xs2, norms2, expected = run(jax.random.key(3))
    np.testing.assert_array_equal(x_aux, plain)
    np.testing.assert_array_equal(x_both, plain)
    np.testing.assert_array_equal(xs2, xs)
    assert norms.shape == (12,)
    np.testing.assert_allclose(norms, expected, rtol=1e-6)
    np.testing.assert_array_equal(norms2, norms)


def test_probability_flow_is_a_decoder_with_spectrum():
    gm = _gm()
    dec = lambda z: sample.probability_flow(gm.score_fn(VP), z, sde=VP, num_steps=40)  # noqa: E731
    sv = jax.jit(lambda z: lid.jacobian_spectrum(dec, z))(jnp.ones(4) * 0.3)  # eager: 5x slower
    # The ODE maps R^4 onto the 2-d support: two singular values ~ scale, two collapse.
    assert float(lid.lid_from_spectrum(sv, tau=-3.0)) == 2.0


def test_guidance_scale_one_is_conditional():
    cond = lambda x, t: x + 1.0  # noqa: E731
    uncond = lambda x, t: x  # noqa: E731
    np.testing.assert_allclose(sample.guided_eps_fn(cond, uncond, 1.0)(jnp.zeros(2), 0.3), [1.0, 1.0])
    np.testing.assert_allclose(sample.guided_eps_fn(cond, uncond, 0.0)(jnp.zeros(2), 0.3), [0.0, 0.0])


def test_sampler_bad_input():
    with pytest.raises(ValueError, match="num_steps"):
        sample.ddim(lambda x, t: x, jax.random.key(0), (2,), sde=VP, num_steps=0)
    with pytest.raises(ValueError, match="t_min"):
        sample.euler_maruyama(lambda x, t: x, jax.random.key(0), (2,), sde=VP, t_min=2.0)


def test_ddim_on_an_explicit_grid_splits_a_trajectory_exactly():
    eps = _eps_fn(_gm())
    ts = np.asarray(sample.time_grid(VP, 12))  # sliced in numpy, not op by op (checks: test_ddim_rejects_a_bad_grid)

    @jax.jit  # one program for the five samplers
    def run(key):
        whole = sample.ddim(eps, key, (4,), sde=VP, num_steps=12)
        on_grid = sample.ddim(eps, key, (4,), sde=VP, ts=ts)
        late = sample.ddim(eps, key, (4,), sde=VP, ts=ts[:6], denoise=False)
        split = sample.ddim(eps, None, (4,), sde=VP, ts=ts[5:], x_init=late)
        # The aux of an explicit grid is one per step, as with num_steps.
        return whole, on_grid, split, sample.ddim(lambda x, t: (eps(x, t), t), key, (4,), sde=VP, ts=ts, has_aux=True)

    whole, on_grid, split, (x, aux) = run(jax.random.key(3))
    np.testing.assert_array_equal(on_grid, whole)
    np.testing.assert_array_equal(split, whole)
    np.testing.assert_array_equal(x, whole)
    np.testing.assert_array_equal(aux, ts[:-1])


@pytest.mark.parametrize("kwargs, match", [
    ({"ts": jnp.array([1.0, 0.5]), "num_steps": 4}, "either ts or num_steps"),
    ({"ts": jnp.array([0.5])}, "at least two times"),
    ({"ts": jnp.array([0.2, 0.5, 0.1])}, "not decreasing"),
    ({"ts": jnp.array([1.0, 0.0])}, r"\(0, T\]"),
    ({"ts": jnp.array([1.5, 0.5])}, r"\(0, T\]"),
    ({"ts": jnp.ones((2, 2))}, "ts must have 1 dimension"),
])
def test_ddim_rejects_a_bad_grid(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sample.ddim(lambda x, t: x, jax.random.key(0), (2,), sde=VP, **kwargs)
