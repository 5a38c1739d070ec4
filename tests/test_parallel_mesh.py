"""map_points over 4 emulated CPU devices (conftest): real estimators, the pmap backend, and the
batch_size=1 workaround for the XLA:CPU batched-SVD deadlock. The generic vmap-equality grid is in
tests/test_parallel.py."""

import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmh_jax import lid, parallel
from mmh_jax.sde import VPSDE

VP = VPSDE()
pytestmark = pytest.mark.xdist_group("parallel_mesh")  # one worker builds the module fixture once
W = jnp.arange(16, dtype=jnp.float32).reshape(4, 4) / 16.0


def _score(y, t):
    return -jnp.tanh(y @ W) - y


def _flipd_pair(x, key):
    exact = lid.flipd(_score, x, t0=0.05, sde=VP, trace="exact")
    hutch = lid.flipd(_score, x, key, t0=0.05, sde=VP, trace="hutchinson", num_probes=3)
    return {"exact": exact, "hutchinson": hutch}


N = 10  # not divisible by 4
BATCH = 3


@pytest.fixture(scope="module")
def flipd_case():
    xs = jax.random.normal(jax.random.key(1), (N, 4))
    keys = jax.random.split(jax.random.key(2), N)
    one = parallel.make_mesh(jax.devices()[:1])
    single = jax.jit(lambda a, k: parallel.map_points(_flipd_pair, a, k, batch_size=BATCH, mesh=one))(xs, keys)
    # the single-device chunked map is the unsharded, unchunked definition
    for name, v in jax.vmap(_flipd_pair)(xs, keys).items():
        np.testing.assert_allclose(single[name], v, rtol=1e-6, atol=1e-6)
    return xs, keys, single


@pytest.mark.parametrize("backend", parallel.BACKENDS)
def test_flipd_sharded_equals_single_device(flipd_case, backend):
    xs, keys, single = flipd_case
    sharded = jax.jit(lambda a, k: parallel.map_points(_flipd_pair, a, k, batch_size=BATCH, backend=backend))(xs, keys)
    for name in ("exact", "hutchinson"):
        assert sharded[name].shape == (N,)
        np.testing.assert_allclose(sharded[name], single[name], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(("n", "devices"), [(1, 4), (5, 4), (9, 2)])
def test_pmap_backend_equals_vmap(n, devices):
    xs = jnp.arange(n * 2, dtype=jnp.float32).reshape(n, 2)
    keys = jax.random.split(jax.random.key(0), n)
    fn = lambda x, k: (jnp.sum(x**2) + jax.random.normal(k), x[::-1])  # noqa: E731
    mesh = parallel.make_mesh(jax.devices()[:devices])
    out = parallel.map_points(fn, xs, keys, batch_size=2, mesh=mesh, backend="pmap")
    expected = jax.vmap(fn)(xs, keys)
    for o, e in zip(out, expected):
        assert o.shape == e.shape
        np.testing.assert_allclose(o, e, rtol=1e-6)


def test_bad_backend_and_mesh():
    with pytest.raises(ValueError, match=r"backend.*'shard_map', 'pmap'.*'vmap'"):
        parallel.map_points(lambda x: x, jnp.ones((4, 2)), backend="vmap")
    mesh2d = jax.sharding.Mesh(np.asarray(jax.devices()).reshape(2, 2), ("a", "b"))
    for backend in parallel.BACKENDS:
        with pytest.raises(ValueError, match="exactly one axis"):
            parallel.map_points(lambda x: x, jnp.ones((4, 2)), mesh=mesh2d, backend=backend)
    with pytest.raises(ValueError, match="at least one device"):
        parallel.make_mesh([])


@pytest.mark.e2e  # a child process
def test_normal_bundle_on_four_devices_with_batch_size_one_does_not_hang():
    """The documented workaround, in a fresh process bounded by a timeout (a hang fails, not stalls)."""
    code = textwrap.dedent(
        """
        import jax
        jax.config.update("jax_num_cpu_devices", 4)
        import jax.numpy as jnp, numpy as np
        from mmh_jax import lid, parallel
        from mmh_jax.sde import VPSDE
        vp = VPSDE()
        w = jnp.arange(36.0).reshape(6, 6) / 36.0
        score = lambda y, t: -jnp.tanh(y @ w) / vp.marginal_coefs(t)[1] ** 2
        fn = lambda x, k: lid.normal_bundle(score, x, k, sde=vp)
        xs = jax.random.normal(jax.random.key(1), (10, 6)); ks = jax.random.split(jax.random.key(2), 10)
        sharded = jax.jit(lambda a, k: parallel.map_points(fn, a, k, batch_size=1))(xs, ks)
        np.testing.assert_array_equal(np.asarray(sharded), np.asarray(jax.vmap(fn)(xs, ks)))
        print("ok", len(sharded.sharding.device_set))
        """
    )
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=150, cwd=root)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "ok 4"
