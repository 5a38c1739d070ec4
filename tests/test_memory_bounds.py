"""Memory bounded by the chunk: Hutchinson probes in chunks, points in batches (XLA's buffer
assignment of the compiled program, ``memory_analysis().temp_size_in_bytes``, is the measure)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmh_jax import lid, parallel
from mmh_jax.models import ScoreMLP, as_score_fn
from mmh_jax.models.unet import UNet
from mmh_jax.sde import VPSDE


def _temp_bytes(fn, *args) -> int:
    return jax.jit(fn).lower(*args).compile().memory_analysis().temp_size_in_bytes


def _unet_score(shape):
    net = UNet(channels=8, channel_mults=(1,), attention=False)
    params = net.init(jax.random.key(0), jnp.zeros(shape), 0.5)
    return as_score_fn(net.apply, params, VPSDE())


def test_chunked_probes_give_the_same_estimate(key):
    net = ScoreMLP(hidden=64, num_layers=3, time_embed_dim=16)
    params = net.init(key, jnp.zeros(16), 0.5)
    score, vp = as_score_fn(net.apply, params, VPSDE()), VPSDE()
    x = jax.random.normal(key, (16,))
    whole = lid.flipd(score, x, key, t0=0.1, sde=vp, trace="hutchinson", num_probes=8)
    chunked = lid.flipd(score, x, key, t0=0.1, sde=vp, trace="hutchinson", num_probes=8, chunk_size=3)
    np.testing.assert_allclose(chunked, whole, rtol=1e-5)


@pytest.mark.slow  # ~50 s on 2 busy cores (U-Net FLIPD compiles); .ci/run runs it after the default suite
def test_unet_memory_is_bounded_by_the_probe_chunk(key):
    """8×8×1 U-Net: 64 probes in chunks of 4 need about what 4 probes need; all 64 at once, > 5×."""
    shape, vp = (8, 8, 1), VPSDE()
    score = _unet_score(shape)

    def temp(num_probes, chunk):
        return _temp_bytes(lambda x, k: lid.flipd(score, x, k, t0=0.1, sde=vp, trace="hutchinson",
                                                  num_probes=num_probes, chunk_size=chunk), jnp.zeros(shape), key)

    few, many, unchunked = temp(4, 4), temp(64, 4), temp(64, None)
    assert many < 1.5 * few, (few, many)
    assert unchunked > 5 * few, (few, unchunked)


@pytest.mark.slow  # U-Net FLIPD compiles (~30 s on 2 cores)
def test_probes_one_at_a_time_need_what_one_probe_needs(key):
    """Chunks recompute the forward pass: none of the network's activations outlive a chunk (a
    forward pass hoisted out of the probe loop, as XLA does unless prevented, would keep them all)."""
    shape, vp = (16, 16, 1), VPSDE()
    net = UNet(channels=8, channel_mults=(1, 2), attention=False)
    score = as_score_fn(net.apply, net.init(jax.random.key(0), jnp.zeros(shape), 0.5), vp)

    def temp(num_probes, chunk):
        return _temp_bytes(lambda x, k: lid.flipd(score, x, k, t0=0.1, sde=vp, trace="hutchinson",
                                                  num_probes=num_probes, chunk_size=chunk), jnp.zeros(shape), key)

    one, chunked, linearized = temp(1, None), temp(8, 1), temp(8, None)
    assert chunked <= 1.2 * one, (one, chunked)
    assert linearized > 2 * one, (one, linearized)  # the measure sees what the chunks save


def test_memory_does_not_grow_with_the_number_of_points(key):
    net = ScoreMLP(hidden=256, num_layers=3, time_embed_dim=16)
    params = net.init(key, jnp.zeros(64), 0.5)
    score, vp = as_score_fn(net.apply, params, VPSDE()), VPSDE()
    f = lambda x, k: lid.flipd(score, x, k, t0=0.1, sde=vp, trace="hutchinson")  # noqa: E731
    mesh = parallel.make_mesh(jax.devices()[:1])

    def temp(n):
        xs, keys = jnp.zeros((n, 64)), jax.random.split(key, n)
        return _temp_bytes(lambda xs, ks: parallel.map_points(f, xs, ks, batch_size=8, mesh=mesh), xs, keys)

    assert temp(1024) < 1.5 * temp(32)
