"""ScoreMLP shapes, single-example vs batched agreement, and the ε → score adapter formula."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmh_jax import lid
from mmh_jax.models import ScoreMLP, as_eps_fn, as_score_fn, sinusoidal_embedding
from mmh_jax.sde import VPSDE

D = 5


@pytest.fixture
def model_and_params(key):
    model = ScoreMLP(hidden=32, num_layers=2, time_embed_dim=16)
    params = model.init(key, jnp.zeros(D), 0.5)
    return model, params


def test_param_shapes(model_and_params):
    _, params = model_and_params
    p = params["params"]
    assert p["hidden_0"]["kernel"].shape == (D, 32)
    assert p["time_0"]["kernel"].shape == (16, 32) and "bias" not in p["time_0"]
    assert p["hidden_1"]["kernel"].shape == (32, 32)
    assert p["out"]["kernel"].shape == (32, D)


def test_output_shapes_and_dtype(model_and_params, rng):
    model, params = model_and_params
    x = jnp.asarray(rng.normal(size=(7, D)), jnp.float32)
    assert model.apply(params, x[0], 0.3).shape == (D,)
    assert model.apply(params, x, jnp.full((7,), 0.3)).shape == (7, D)
    assert model.apply(params, x, 0.3).shape == (7, D)  # one time shared by the batch
    assert model.apply(params, x.reshape(7, 1, D), jnp.full((7, 1), 0.3)).shape == (7, 1, D)
    assert model.apply(params, x, 0.3).dtype == jnp.float32


def test_single_vs_batched_equal(model_and_params, rng):
    model, params = model_and_params
    x = jnp.asarray(rng.normal(size=(6, D)), jnp.float32)
    t = jnp.asarray(rng.uniform(0.01, 1.0, size=6), jnp.float32)
    batched = model.apply(params, x, t)
    vmapped = jax.vmap(lambda xi, ti: model.apply(params, xi, ti))(x, t)
    single = jnp.stack([model.apply(params, x[i], t[i]) for i in range(6)])
    np.testing.assert_allclose(batched, single, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(vmapped, single, rtol=1e-5, atol=1e-6)
    shared = model.apply(params, x, t[0])
    # float32 rounding of two fusions of the same math (a wrong broadcast would differ by O(1))
    np.testing.assert_allclose(shared, model.apply(params, x, jnp.full((6,), t[0])), rtol=1e-5, atol=1e-6)


def test_bad_inputs_raise(model_and_params):
    model, params = model_and_params
    with pytest.raises(ValueError, match="t must be a scalar"):
        model.apply(params, jnp.zeros((3, D)), jnp.zeros(4))
    with pytest.raises(TypeError, match="floating-point"):
        model.apply(params, jnp.zeros(D, jnp.int32), 0.5)
    with pytest.raises(ValueError, match="dim must be"):
        sinusoidal_embedding(0.5, 1)


def test_time_embedding_formula():
    emb = sinusoidal_embedding(jnp.float32(0.002), 4, scale=1000.0, max_period=100.0)
    # freqs = 100^(-k/2) for k = 0, 1 → 1, 0.1; scaled t = 2
    np.testing.assert_allclose(emb, [np.sin(2.0), np.sin(0.2), np.cos(2.0), np.cos(0.2)], rtol=1e-5)
    assert sinusoidal_embedding(0.1, 5).shape == (5,)


def test_adapters_formula(model_and_params, rng):
    model, params = model_and_params
    vp = VPSDE()
    x = jnp.asarray(rng.normal(size=D), jnp.float32)
    t = jnp.float32(0.2)
    eps = model.apply(params, x, t)
    np.testing.assert_allclose(as_eps_fn(model.apply, params)(x, t), eps)
    sigma = vp.marginal_coefs(t)[1]
    np.testing.assert_allclose(as_score_fn(model.apply, params, vp)(x, t), -eps / sigma, rtol=1e-6)


def test_flipd_through_adapter_eps_form(model_and_params, rng):
    """FLIPD via the score adapter equals its ε-form D − σ·tr ∇ε̂ + ‖ε̂‖²."""
    model, params = model_and_params
    vp = VPSDE()
    x = jnp.asarray(rng.normal(size=D), jnp.float32)
    t0 = 0.05
    alpha, sigma = vp.marginal_coefs(t0)

    @jax.jit
    def run(params, x):
        return lid.flipd(as_score_fn(model.apply, params, vp), x, t0=t0, sde=vp, trace="exact")

    eps_fn = as_eps_fn(model.apply, params)
    y = alpha * x
    jac = jax.jacfwd(lambda y: eps_fn(y, t0))(y)
    expected = D - sigma * jnp.trace(jac) + jnp.sum(eps_fn(y, t0) ** 2)
    np.testing.assert_allclose(run(params, x), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("num_layers", [1, 3, 4])
def test_skip_connections_match_the_formula(key, rng, num_layers):
    """h_l = SiLU(W_l h_{l-1} + b_l) + h_{L-1-l} for the decoder half; skip=False drops the sums."""
    x = jnp.asarray(rng.normal(size=D), jnp.float32)
    for skip in (True, False):
        model = ScoreMLP(hidden=8, num_layers=num_layers, time_embed_dim=4, skip=skip)
        params = model.init(key, jnp.zeros(D), 0.5)
        p = jax.tree.map(np.asarray, params["params"])
        emb = np.asarray(sinusoidal_embedding(0.3, 4))
        h = np.asarray(jax.nn.silu(x @ p["hidden_0"]["kernel"] + p["hidden_0"]["bias"] + emb @ p["time_0"]["kernel"]))
        hs = [h]
        for i in range(1, num_layers):
            h = np.asarray(jax.nn.silu(h @ p[f"hidden_{i}"]["kernel"] + p[f"hidden_{i}"]["bias"]))
            if skip and num_layers - 1 - i < i:
                h = h + hs[num_layers - 1 - i]
            hs.append(h)
        want = h @ p["out"]["kernel"] + p["out"]["bias"]
        np.testing.assert_allclose(model.apply(params, x, 0.3), want, rtol=1e-5, atol=1e-5)
    if num_layers >= 3:  # the skips change the function (same parameters, different outputs)
        a = ScoreMLP(hidden=8, num_layers=num_layers, time_embed_dim=4, skip=True)
        b = ScoreMLP(hidden=8, num_layers=num_layers, time_embed_dim=4, skip=False)
        params = a.init(key, jnp.zeros(D), 0.5)
        assert not np.allclose(a.apply(params, x, 0.3), b.apply(params, x, 0.3))


def test_image_events_equal_the_flattened_network(key):
    """event_ndim=3 flattens (H, W, C) inside: same parameters, same numbers as the flat MLP."""
    img = ScoreMLP(hidden=32, num_layers=3, time_embed_dim=16, event_ndim=3)
    flat = ScoreMLP(hidden=32, num_layers=3, time_embed_dim=16)
    params = img.init(key, jnp.zeros((4, 4, 2)), 0.5)
    assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, flat.init(key, jnp.zeros(32), 0.5))
    x = jax.random.normal(jax.random.key(1), (3, 4, 4, 2))
    t = jnp.array([0.1, 0.5, 0.9])
    out = img.apply(params, x, t)
    assert out.shape == x.shape
    np.testing.assert_allclose(out.reshape(3, 32), flat.apply(params, x.reshape(3, 32), t), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="event_ndim"):
        img.apply(params, jnp.zeros((4, 4)), 0.5)


def test_class_conditioning_with_a_null_class(key):
    """num_classes=K: labels 0..K-1 and the null class K (= label None) give different ε̂."""
    model = ScoreMLP(hidden=32, num_layers=2, time_embed_dim=16, num_classes=3)
    x = jax.random.normal(key, (4, D))
    params = model.init(key, x, 0.5, jnp.zeros(4, jnp.int32))
    table = params["params"]["label_embed"]["embedding"]
    assert table.shape == (4, 32)
    # A non-zero null row, so that "None means the null class" is a real check.
    params = jax.tree.map(lambda a: a, params)
    params["params"]["label_embed"]["embedding"] = table + 0.3
    none = model.apply(params, x, 0.5)
    np.testing.assert_allclose(none, model.apply(params, x, 0.5, 3), rtol=1e-6)
    per_example = model.apply(params, x, 0.5, jnp.array([0, 1, 2, 3]))
    np.testing.assert_allclose(per_example[3], none[3], rtol=1e-6)
    assert not np.allclose(per_example[0], none[0])
    with pytest.raises(TypeError, match="label must be integer"):
        model.apply(params, x, 0.5, jnp.zeros(4))
    with pytest.raises(ValueError, match="label must be None"):
        model.apply(params, x, 0.5, jnp.zeros(3, jnp.int32))
    with pytest.raises(ValueError, match="unconditional"):
        ScoreMLP(hidden=8, num_layers=1, time_embed_dim=4).init(key, x, 0.5, 1)
