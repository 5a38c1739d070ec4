"""UNet: shapes, per-example normalisation (single == batched), class conditioning, FLIPD through it.

Compiling is what costs here (XLA on CPU; the random draws of ``model.init`` alone take ~20 s), so
shapes are checked abstractly with ``jax.eval_shape`` (which traces ``init`` and ``apply`` fully),
parameters are filled on the host from the abstract ``init``, and each test jits one function that
computes everything it compares.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmh_jax import lid
from mmh_jax.models.unet import UNet
from mmh_jax.sde import VPSDE

TINY = dict(channels=8, num_groups=4)


def _host_params(model, x, seed=0):
    """Random parameters of ``model`` for input like ``x``, drawn with numpy (no XLA compile).

    Kernels get fan-in-scaled normals; 1-D leaves (biases, GroupNorm scales) 1 or 0 plus noise, so
    every parameter influences the output.
    """
    rng = np.random.default_rng(seed)
    abstract = jax.eval_shape(model.init, jax.random.key(0), x, 0.5)

    def fill(path, leaf):
        name = jax.tree_util.keystr(path)
        if leaf.ndim >= 2:
            std = 1.0 if "embedding" in name else 1.0 / math.sqrt(math.prod(leaf.shape[:-1]))
            value = std * rng.normal(size=leaf.shape)
        else:
            value = float("scale" in name) + 0.1 * rng.normal(size=leaf.shape)
        return jnp.asarray(np.asarray(value, leaf.dtype))  # cast on the host: no convert compile per shape

    return jax.tree_util.tree_map_with_path(fill, abstract)


def _images(seed, shape):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


@pytest.fixture(scope="module")
def digits():
    """The default architecture on 8×8×1 digits, class-conditional (10 classes), at the TINY width.

    Two levels (down- and upsampling), attention and the label embedding as in the default; only
    the width is smaller (compile time does not depend on it). Also returns ``eps``: the network
    jitted for a scalar time and ``label=None``, shared by the tests below so that they compile it
    once (``eps(params, x, jnp.float32(t))`` with x of shape (3, 8, 8, 1) in both).
    """
    model = UNet(num_classes=10, **TINY)
    eps = jax.jit(lambda params, x, t: model.apply(params, x, t))
    return model, _host_params(model, jnp.zeros((8, 8, 1))), eps


#: The tests that use ``digits`` run on one xdist worker, which builds the fixture and ``eps`` once.
shares_digits = pytest.mark.xdist_group("unet_digits")


@pytest.mark.parametrize(
    "shape, kwargs",
    [((8, 8, 1), {}), ((28, 28, 1), dict(TINY, channel_mults=(1, 2, 2))),
     ((32, 32, 3), dict(TINY, channel_mults=(1, 2, 2, 2), num_res_blocks=2))],
)
def test_shapes(shape, kwargs):
    model = UNet(num_classes=3, **kwargs)
    params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(shape), 0.5)
    x = jax.ShapeDtypeStruct((2, 3, *shape), jnp.float32)  # any number of leading batch axes
    out = jax.eval_shape(model.apply, params, x, jax.ShapeDtypeStruct((2, 3), jnp.float32), 1)
    assert (out.shape, out.dtype) == ((2, 3, *shape), jnp.float32)
    assert jax.eval_shape(model.apply, params, jax.ShapeDtypeStruct(shape, jnp.float32), 0.3).shape == shape


@shares_digits
def test_single_vs_batched_and_conditioning(digits):
    """One image alone (``lax.map``: no batch axis at all) and inside a batch: the same ε̂.

    Also: the same image and time with classes 0 and 1 give different outputs, and a scalar time
    with ``label=None`` equals per-example times with the null label ``num_classes``.
    """
    model, params, eps = digits
    x = _images(1, (5, 8, 8, 1))
    x[1:3] = x[0]  # rows 0, 1, 2: one image with classes 0, 1 and the null class
    t = np.asarray([0.3, 0.3, 0.3, 0.05, 1.0], np.float32)
    labels = np.asarray([0, 1, 10, 9, 2], np.int32)

    @jax.jit
    def outputs(params, x, t, labels):
        apply = lambda *a: model.apply(params, *a)  # noqa: E731
        single = jax.lax.map(lambda a: apply(*a), (x, t, labels))
        return apply(x, t, labels), single

    batched, single = (np.asarray(a) for a in outputs(params, x, t, labels))
    null = np.asarray(eps(params, x[:3], jnp.float32(0.3)))  # scalar t, label None
    assert np.all(np.isfinite(batched))
    np.testing.assert_allclose(batched, single, atol=1e-5)
    assert model.null_label == 10
    np.testing.assert_allclose(null[2], batched[2], atol=1e-5)  # label None ≡ null label 10
    assert np.max(np.abs(batched[0] - batched[1])) > 1e-3  # conditioning changes ε̂
    assert np.max(np.abs(batched[0] - batched[2])) > 1e-3


def test_param_count():
    model = UNet()  # the default configuration
    params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((8, 8, 1)), 0.5)
    count = sum(p.size for p in jax.tree.leaves(params))
    assert 2e5 < count < 1.5e6, count  # ~0.67M parameters
    conditional = jax.eval_shape(UNet(num_classes=10).init, jax.random.key(0), jnp.zeros((8, 8, 1)), 0.5)
    assert conditional["params"]["label_embed"]["embedding"].shape == (11, 4 * model.channels)


@shares_digits
def test_bad_inputs_raise(digits):
    model, params, _ = digits
    shape = lambda *a, **k: jax.eval_shape(model.apply, params, *a, **k)  # noqa: E731
    with pytest.raises(ValueError, match="divisible by 2"):
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((7, 7, 1)), 0.5)
    with pytest.raises(ValueError, match="t must be a scalar"):
        shape(jnp.zeros((3, 8, 8, 1)), jnp.zeros(4))
    with pytest.raises(ValueError, match="label must be None"):
        shape(jnp.zeros((3, 8, 8, 1)), 0.5, jnp.zeros(4, jnp.int32))
    with pytest.raises(TypeError, match="label must be integer"):
        shape(jnp.zeros((8, 8, 1)), 0.5, 1.0)
    with pytest.raises(ValueError, match="image"):
        shape(jnp.zeros((8, 8)), 0.5)
    with pytest.raises(TypeError, match="floating-point"):
        shape(jnp.zeros((8, 8, 1), jnp.int32), 0.5)
    with pytest.raises(ValueError, match="num_groups"):
        jax.eval_shape(UNet(channels=12).init, jax.random.key(0), jnp.zeros((8, 8, 1)), 0.5)
    with pytest.raises(ValueError, match="unconditional"):
        jax.eval_shape(UNet().init, jax.random.key(0), jnp.zeros((8, 8, 1)), 0.5, 3)


def test_dropout_only_in_training():
    model = UNet(dropout=0.5, channel_mults=(1,), attention=False, **TINY)
    x = _images(3, (8, 8, 1))
    params = _host_params(model, x)

    @jax.jit
    def outputs(params):
        train = model.apply(params, x, 0.3, train=True, rngs={"dropout": jax.random.key(1)})
        return model.apply(params, x, 0.3), train

    det, train = (np.asarray(a) for a in outputs(params))
    assert np.max(np.abs(train - det)) > 1e-3  # train=False needs no rng and is dropout-free


def _flipd_probe(key, shape, t0, sde):
    """The probe v of ``lid.flipd(..., key, trace="hutchinson")``, read back through flipd: at x = 0 the
    field s(y) = u·y₀ gives D + σ²·(v·u)·v₀, so u = e_i gives v_i·v₀ = ±1 (v up to a sign, which
    vᵀJv does not see)."""
    dim = math.prod(shape)

    def one(u):
        field = lambda y, t: u.reshape(shape) * y.reshape(-1)[0]  # noqa: E731
        return lid.flipd(field, jnp.zeros(shape), key, t0=t0, sde=sde, trace="hutchinson")

    return jnp.sign(jax.vmap(one)(jnp.eye(dim)) - dim).reshape(shape)


@shares_digits
def test_flipd_through_unet(digits):
    """Hutchinson FLIPD (a JVP through the network) under jit is finite and equals its ε-form
    D − σ·vᵀ∇ε̂(y)v + ‖ε̂(y)‖² at y = α x (vᵀ∇ε̂ v by a central finite difference)."""
    model, params, eps = digits
    vp = VPSDE()
    t0, h = 0.05, 1e-2

    @jax.jit
    def estimates(params, x, key):
        score_fn = lambda y, t: -model.apply(params, y, t) / vp.marginal_coefs(t)[1]  # noqa: E731
        hutch = lid.flipd(score_fn, x, key, t0=t0, sde=vp, trace="hutchinson")
        return hutch, _flipd_probe(key, x.shape, t0, vp), *vp.marginal_coefs(t0)

    x = _images(4, (8, 8, 1))
    hutch, v, alpha, sigma = (np.asarray(a) for a in estimates(params, x, jax.random.key(5)))
    # ε̂ at y = αx and y ± h·v (float32, as the network sees them), by the jitted network shared with
    # the test above: scalar t, label None (the ∅ class, as in score_fn).
    ys = np.stack([alpha * x, alpha * x + h * v, alpha * x - h * v]).astype(np.float32)
    e = np.asarray(eps(params, ys, jnp.float32(t0)), np.float64)
    vjv = np.vdot(v, e[1] - e[2]) / (2 * h)
    formula = x.size - sigma * vjv + np.sum(e[0] ** 2)
    assert np.isfinite(hutch)
    np.testing.assert_allclose(hutch, formula, rtol=1e-3, atol=1e-2)


@pytest.mark.parametrize("shape,kernel,strides", [((8, 8, 3), (3, 3), (1, 1)), ((8, 8, 3), (3, 3), (2, 2)),
                                                  ((7, 5, 2), (3, 3), (2, 2)), ((4, 4, 6), (1, 1), (1, 1))])
def test_patch_conv_equals_flax_conv(shape, kernel, strides):
    """_Conv (im2col matmul) is nn.Conv with SAME padding: same parameters, same outputs."""
    # Private on purpose: the U-Net's public output cannot tell its convolution apart from a reference.
    from mmh_jax.models.unet import _Conv

    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, *shape)).astype(np.float32)
    ours = _Conv(4, kernel, strides)
    ref = nn.Conv(4, kernel, strides, padding="SAME")
    abstract = jax.eval_shape(ours.init, jax.random.key(0), x)  # names and shapes, no init compile
    assert jax.tree.map(jnp.shape, jax.eval_shape(ref.init, jax.random.key(0), x)) == jax.tree.map(jnp.shape, abstract)
    # A fan-in-scaled random kernel and a nonzero bias, drawn on the host.
    fill = lambda a: rng.normal(size=a.shape) / math.sqrt(math.prod(a.shape[:-1]))  # noqa: E731
    params = jax.tree.map(lambda a: jnp.asarray(fill(a).astype(a.dtype)), abstract)
    got, want = jax.jit(lambda p, x: (ours.apply(p, x), ref.apply(p, x)))(params, x)  # one compile
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
