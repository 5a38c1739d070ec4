"""ScoreMLP shapes, single-example vs batched agreement, and the ε → score adapter formula.

Parameters are drawn on the host from the abstract ``init`` (``jax.eval_shape``: no compile) and
each test jits one function that computes what it compares: eager Flax dispatches (and on first
use compiles) every small op on its own, which is what cost time here.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmh_jax import lid
from mmh_jax.models import ScoreMLP, as_eps_fn, as_score_fn, sinusoidal_embedding
from mmh_jax.sde import VPSDE

D = 5


def _host_params(model, *args, seed=0):
    """Random parameters of ``model`` for the inputs ``args``, drawn with numpy (no XLA compile).

    Kernels get fan-in-scaled normals, embedding tables unit normals and biases small nonzero
    normals (``init`` would give zero biases, which a formula check could not see).
    """
    rng = np.random.default_rng(seed)
    abstract = jax.eval_shape(model.init, jax.random.key(0), *args)

    def fill(path, leaf):
        if leaf.ndim >= 2:
            std = 1.0 if "embedding" in jax.tree_util.keystr(path) else 1.0 / math.sqrt(leaf.shape[0])
        else:
            std = 0.1
        return jnp.asarray((std * rng.normal(size=leaf.shape)).astype(leaf.dtype))

    return jax.tree_util.tree_map_with_path(fill, abstract)


def _silu(h):
    return h / (1.0 + np.exp(-h))


@pytest.fixture(scope="module", params=["add", "film"])
def model_and_params(request):
    """One model of each time conditioning and its parameters, read (never changed) by the tests below."""
    model = ScoreMLP(hidden=32, num_layers=2, time_embed_dim=16, time_conditioning=request.param)
    return model, _host_params(model, jnp.zeros(D), 0.5)


def test_param_shapes():
    model = ScoreMLP(hidden=32, num_layers=2, time_embed_dim=16)
    p = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(D), 0.5)["params"]
    assert p["hidden_0"]["kernel"].shape == (D, 32)
    assert p["time_0"]["kernel"].shape == (16, 32) and "bias" not in p["time_0"]
    assert p["hidden_1"]["kernel"].shape == (32, 32)
    assert p["out"]["kernel"].shape == (32, D)


def test_output_shapes_and_dtype(model_and_params, rng):
    model, params = model_and_params
    # Output shapes and dtypes by abstract evaluation: the same trace as a call, without compiling.
    out = lambda *a: jax.eval_shape(model.apply, params, *a)  # noqa: E731
    x = rng.normal(size=(7, D)).astype(np.float32)
    assert out(x[0], 0.3).shape == (D,)
    assert out(x, np.full((7,), 0.3, np.float32)).shape == (7, D)
    assert out(x, 0.3).shape == (7, D)  # one time shared by the batch
    assert out(x.reshape(7, 1, D), np.full((7, 1), 0.3, np.float32)).shape == (7, 1, D)
    assert out(x, 0.3).dtype == jnp.float32


def test_single_vs_batched_equal(model_and_params, rng):
    model, params = model_and_params
    x = rng.normal(size=(6, D)).astype(np.float32)
    t = rng.uniform(0.01, 1.0, size=6).astype(np.float32)

    @jax.jit
    def outputs(params, x, t):
        apply = lambda *a: model.apply(params, *a)  # noqa: E731
        single = jax.lax.map(lambda a: apply(*a), (x, t))  # one example at a time: no batch axis
        return (apply(x, t), jax.vmap(apply)(x, t), single,
                apply(x, t[0]), apply(x, jnp.full((6,), t[0])))

    batched, vmapped, single, shared, full = outputs(params, x, t)
    np.testing.assert_allclose(batched, single, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(vmapped, single, rtol=1e-5, atol=1e-6)
    # float32 rounding of two fusions of the same math (a wrong broadcast would differ by O(1))
    np.testing.assert_allclose(shared, full, rtol=1e-5, atol=1e-6)


def test_bad_inputs_raise(model_and_params):
    model, params = model_and_params
    with pytest.raises(ValueError, match="t must be a scalar"):
        model.apply(params, jnp.zeros((3, D)), jnp.zeros(4))
    with pytest.raises(TypeError, match="floating-point"):
        model.apply(params, jnp.zeros(D, jnp.int32), 0.5)
    with pytest.raises(ValueError, match="dim must be"):
        sinusoidal_embedding(0.5, 1)


def test_time_embedding_formula():
    emb = jax.jit(lambda t: sinusoidal_embedding(t, 4, scale=1000.0, max_period=100.0))(jnp.float32(0.002))
    # freqs = 100^(-k/2) for k = 0, 1 → 1, 0.1; scaled t = 2
    np.testing.assert_allclose(emb, [np.sin(2.0), np.sin(0.2), np.cos(2.0), np.cos(0.2)], rtol=1e-5)
    assert jax.eval_shape(lambda t: sinusoidal_embedding(t, 5), 0.1).shape == (5,)


def test_adapters_formula(model_and_params, rng):
    model, params = model_and_params
    vp = VPSDE()
    x = rng.normal(size=D).astype(np.float32)

    @jax.jit
    def outputs(params, x, t):
        return (model.apply(params, x, t), as_eps_fn(model.apply, params)(x, t),
                as_score_fn(model.apply, params, vp)(x, t), vp.marginal_coefs(t)[1])

    eps, eps_adapted, score, sigma = (np.asarray(a) for a in outputs(params, x, jnp.float32(0.2)))
    np.testing.assert_allclose(eps_adapted, eps)
    np.testing.assert_allclose(score, -eps / sigma, rtol=1e-6)


def test_flipd_through_adapter_eps_form(model_and_params, rng):
    """FLIPD via the score adapter equals its ε-form D − σ·tr ∇ε̂ + ‖ε̂‖²."""
    model, params = model_and_params
    vp = VPSDE()
    x = rng.normal(size=D).astype(np.float32)
    t0 = 0.05

    @jax.jit  # one compile for the estimate and its ε-form
    def run(params, x):
        flipd = lid.flipd(as_score_fn(model.apply, params, vp), x, t0=t0, sde=vp, trace="exact")
        alpha, sigma = vp.marginal_coefs(t0)
        eps_fn = as_eps_fn(model.apply, params)
        y = alpha * x
        jac = jax.jacfwd(lambda y: eps_fn(y, t0))(y)
        return flipd, D - sigma * jnp.trace(jac) + jnp.sum(eps_fn(y, t0) ** 2)

    flipd, expected = run(params, x)
    np.testing.assert_allclose(flipd, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("num_layers", [1, 3, 4])
def test_skip_connections_match_the_formula(rng, num_layers):
    """h_l = SiLU(W_l h_{l-1} + b_l) + h_{L-1-l} for the decoder half; skip=False drops the sums."""
    x = rng.normal(size=D).astype(np.float32)
    # The sinusoidal embedding of t = 0.3 (dim 4, scale 1000, max_period 1e4: frequencies 1, 1e-2).
    args = 1000.0 * 0.3 * np.array([1.0, 1e-2])
    emb = np.concatenate([np.sin(args), np.cos(args)])
    # skip=True and skip=False have the same parameters: one set serves both.
    models = {skip: ScoreMLP(hidden=8, num_layers=num_layers, time_embed_dim=4, skip=skip) for skip in (True, False)}
    params = _host_params(models[True], jnp.zeros(D), 0.5)
    outs = jax.jit(lambda params, x: {skip: m.apply(params, x, 0.3) for skip, m in models.items()})(params, x)
    p = jax.tree.map(np.asarray, params["params"])
    for skip in (True, False):
        h = _silu(x @ p["hidden_0"]["kernel"] + p["hidden_0"]["bias"] + emb @ p["time_0"]["kernel"])
        hs = [h]
        for i in range(1, num_layers):
            h = _silu(h @ p[f"hidden_{i}"]["kernel"] + p[f"hidden_{i}"]["bias"])
            if skip and num_layers - 1 - i < i:
                h = h + hs[num_layers - 1 - i]
            hs.append(h)
        want = h @ p["out"]["kernel"] + p["out"]["bias"]
        np.testing.assert_allclose(outs[skip], want, rtol=1e-5, atol=1e-5)
    if num_layers >= 3:  # the skips change the function (same parameters, different outputs)
        assert not np.allclose(outs[True], outs[False])


@pytest.mark.parametrize("num_layers", [1, 3])
def test_film_conditioning_matches_the_formula(rng, num_layers):
    """time_conditioning="film": c = SiLU(W_c emb + b_c) (embedding-wide), (γ_l, β_l) = V_l c + u_l and
    h_l = SiLU((1 + γ_l)(W_l h_{l-1} + b_l) + β_l) [+ h_{L-1-l}], with h_{-1} = x."""
    x = rng.normal(size=D).astype(np.float32)
    args = 1000.0 * 0.3 * np.array([1.0, 1e-2])
    emb = np.concatenate([np.sin(args), np.cos(args)])
    model = ScoreMLP(hidden=8, num_layers=num_layers, time_embed_dim=4, time_conditioning="film")
    params = _host_params(model, jnp.zeros(D), 0.5)
    out = jax.jit(lambda params, x: model.apply(params, x, 0.3))(params, x)
    p = jax.tree.map(np.asarray, params["params"])
    cond = _silu(emb @ p["time_0"]["kernel"] + p["time_0"]["bias"])
    assert cond.shape == (4,)
    h, hs = x, []
    for i in range(num_layers):
        gb = cond @ p[f"film_{i}"]["kernel"] + p[f"film_{i}"]["bias"]
        gamma, beta = gb[:8], gb[8:]
        h = _silu((1 + gamma) * (h @ p[f"hidden_{i}"]["kernel"] + p[f"hidden_{i}"]["bias"]) + beta)
        if num_layers - 1 - i < i:
            h = h + hs[num_layers - 1 - i]
        hs.append(h)
    np.testing.assert_allclose(out, h @ p["out"]["kernel"] + p["out"]["bias"], rtol=1e-5, atol=1e-5)


def test_film_starts_as_a_time_free_mlp_and_rejects_unknown_conditionings(key):
    """FiLM's V_l start at zero: at init the output does not depend on t. An unknown value is named."""
    model = ScoreMLP(hidden=16, num_layers=2, time_embed_dim=8, time_conditioning="film")
    x = jnp.linspace(-1.0, 1.0, D)

    @jax.jit
    def outputs(key):
        params = model.init(key, x, 0.5)
        return model.apply(params, x, 0.01), model.apply(params, x, 0.9)

    a, b = outputs(key)
    np.testing.assert_allclose(a, b, rtol=0, atol=0)
    with pytest.raises(ValueError, match="time_conditioning must be one of .*'film'.*got 'scale'"):
        jax.eval_shape(ScoreMLP(hidden=8, num_layers=1, time_conditioning="scale").init, key, x, 0.5)


def test_image_events_equal_the_flattened_network(key):
    """event_ndim=3 flattens (H, W, C) inside: same parameters, same numbers as the flat MLP."""
    img = ScoreMLP(hidden=32, num_layers=3, time_embed_dim=16, event_ndim=3)
    flat = ScoreMLP(hidden=32, num_layers=3, time_embed_dim=16)
    params = _host_params(img, jnp.zeros((4, 4, 2)), 0.5)
    assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, jax.eval_shape(flat.init, key, jnp.zeros(32), 0.5))
    x = np.random.default_rng(1).normal(size=(3, 4, 4, 2)).astype(np.float32)
    t = np.array([0.1, 0.5, 0.9], np.float32)
    out, want = jax.jit(lambda params, x, t: (img.apply(params, x, t), flat.apply(params, x.reshape(3, 32), t)))(params, x, t)
    assert out.shape == x.shape
    np.testing.assert_allclose(np.asarray(out).reshape(3, 32), want, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="event_ndim"):
        img.apply(params, jnp.zeros((4, 4)), 0.5)


@pytest.mark.parametrize("time_conditioning, width", [("add", 32), ("film", 16)])
def test_class_conditioning_with_a_null_class(key, time_conditioning, width):
    """num_classes=K: labels 0..K-1 and the null class K (= label None) give different ε̂. The label
    embedding is as wide as the time branch: hidden (add), time_embed_dim (FiLM's conditioning)."""
    model = ScoreMLP(hidden=32, num_layers=2, time_embed_dim=16, num_classes=3, time_conditioning=time_conditioning)
    x = np.random.default_rng(2).normal(size=(4, D)).astype(np.float32)
    params = _host_params(model, x, 0.5, jnp.zeros(4, jnp.int32))
    table = params["params"]["label_embed"]["embedding"]
    assert table.shape == (4, width)
    # A non-zero null row, so that "None means the null class" is a real check.
    params = jax.tree.map(lambda a: a, params)
    params["params"]["label_embed"]["embedding"] = jnp.asarray(np.asarray(table) + np.float32(0.3))
    assert np.all(np.asarray(params["params"]["label_embed"]["embedding"])[3] != 0)

    @jax.jit
    def outputs(params, x):
        return (model.apply(params, x, 0.5), model.apply(params, x, 0.5, 3),
                model.apply(params, x, 0.5, jnp.array([0, 1, 2, 3])))

    none, null, per_example = outputs(params, x)
    np.testing.assert_allclose(none, null, rtol=1e-6)
    np.testing.assert_allclose(per_example[3], none[3], rtol=1e-6)
    assert not np.allclose(per_example[0], none[0])
    # The errors are raised while tracing: abstract evaluation raises them without running anything.
    with pytest.raises(TypeError, match="label must be integer"):
        jax.eval_shape(model.apply, params, x, 0.5, np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="label must be None"):
        jax.eval_shape(model.apply, params, x, 0.5, np.zeros(3, np.int32))
    with pytest.raises(ValueError, match="unconditional"):
        jax.eval_shape(ScoreMLP(hidden=8, num_layers=1, time_embed_dim=4).init, key, x, 0.5, 1)
