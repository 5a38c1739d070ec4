"""map_points: chunked and sharded maps equal a plain vmap (4 emulated CPU devices, see conftest)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmh_jax import lid, parallel
from mmh_jax.sde import VPSDE


def _fn(x, k):
    return jnp.sum(x**2) + jax.random.normal(k), x[::-1]


def test_several_devices_are_emulated():
    assert jax.device_count() == 4


@pytest.mark.parametrize("n", [1, 7, 16, 33])
@pytest.mark.parametrize("batch_size", [None, 1, 5])
@pytest.mark.parametrize("devices", [1, 4])
def test_map_points_equals_vmap(n, batch_size, devices):
    xs = jnp.arange(n * 3, dtype=jnp.float32).reshape(n, 3)
    keys = jax.random.split(jax.random.key(0), n)
    expected = jax.vmap(_fn)(xs, keys)
    mesh = parallel.make_mesh(jax.devices()[:devices])
    out = parallel.map_points(_fn, xs, keys, batch_size=batch_size, mesh=mesh)
    for o, e in zip(out, expected):
        assert o.shape == e.shape
        np.testing.assert_allclose(o, e, rtol=1e-6)


def test_default_uses_all_devices_and_output_is_sharded():
    xs = jnp.ones((8, 2))
    out = parallel.map_points(lambda x: jnp.sum(x), xs)
    assert len(out.sharding.device_set) == 4
    np.testing.assert_allclose(out, 2.0)


def test_map_points_runs_flipd_inside_jit():
    vp = VPSDE()
    xs = jax.random.normal(jax.random.key(1), (10, 3))

    @jax.jit
    def batch(xs):
        return parallel.map_points(lambda x: lid.flipd(lambda y, t: -y, x, t0=0.05, sde=vp), xs, batch_size=2)

    out = batch(xs)
    expected = jax.vmap(lambda x: lid.flipd(lambda y, t: -y, x, t0=0.05, sde=vp))(xs)
    np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_map_points_bad_input():
    with pytest.raises(ValueError, match=r"keys_or_arrays\[0\].*\(4\).*3"):
        parallel.map_points(_fn, jnp.ones((4, 2)), jax.random.split(jax.random.key(0), 3))
    with pytest.raises(ValueError, match="batch_size"):
        parallel.map_points(lambda x: x, jnp.ones((4, 2)), batch_size=0)
    with pytest.raises(ValueError, match="xs"):
        parallel.map_points(lambda x: x, jnp.float32(1.0))
