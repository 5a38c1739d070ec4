"""LID guidance (sample.lid_guided_score_fn & co.) against closed-form scores of Gaussian mixtures."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmh_jax import lid, sample
from mmh_jax.data.gaussian import GaussianMixture, random_gaussian_mixture
from mmh_jax.sde import VPSDE

VP = VPSDE()
T0_MIN = 0.05


def _atom_and_plane(weight_atom=0.5):
    """R²: a point mass (LID 0) at (−2, 0) and a standard Gaussian (LID 2) at (2, 0)."""
    w = np.array([weight_atom, 1.0 - weight_atom])
    return GaussianMixture(
        means=jnp.array([[-2.0, 0.0], [2.0, 0.0]]),
        bases=jnp.array([[[0.0, 0.0], [0.0, 0.0]], [[1.0, 0.0], [0.0, 1.0]]]),
        dims=jnp.array([0, 2], jnp.int32),
        scales=jnp.ones(2),
        log_weights=jnp.asarray(np.log(w), jnp.float32),
    )


def _direct_term(score, x, t, key, trace, num_probes=1):
    """∇ₓ FLIPD(x/α(t), max(t, t0_min)) straight from lid.flipd."""
    alpha = VP.marginal_coefs(t)[0]
    tau = max(float(t), T0_MIN)
    return jax.grad(lambda z: lid.flipd(score, z / alpha, key, t0=tau, sde=VP, trace=trace,
                                        num_probes=num_probes))(x)


@pytest.mark.parametrize("trace,num_probes", [("hutchinson", 1), ("hutchinson", 3), ("exact", 1)])
@pytest.mark.parametrize("t", [0.4, 0.01])  # t = 0.01 < t0_min: FLIPD read at the floor
def test_added_term_is_lambda_times_grad_of_flipd(trace, num_probes, t):
    gm = random_gaussian_mixture(3, [0, 2, 4], 5, scale=1.2)
    score = gm.score_fn(VP)
    eps = lambda y, s: -VP.marginal_coefs(s)[1] * score(y, s)  # noqa: E731
    key = jax.random.key(7)
    lam = 0.37
    alpha, sigma = VP.marginal_coefs(t)
    xs, _ = gm.sample(jax.random.key(1), 4)
    xs = alpha * xs + sigma * jax.random.normal(jax.random.key(2), xs.shape)  # states of a sampler at t

    @jax.jit
    def compare(xs):
        guided = sample.lid_guided_score_fn(score, key, sde=VP, lam=lam, num_probes=num_probes, t0_min=T0_MIN,
                                            trace=trace)
        geps = sample.lid_guided_eps_fn(eps, key, sde=VP, lam=lam, num_probes=num_probes, t0_min=T0_MIN,
                                        trace=trace)
        one = lambda x: (guided(x, t) - score(x, t), geps(x, t) - eps(x, t),  # noqa: E731
                         lam * _direct_term(score, x, t, key, trace, num_probes))
        return jax.vmap(one)(xs)

    added, added_eps, want = compare(xs)
    norms = jnp.linalg.norm(want, axis=1, keepdims=True)
    assert bool(jnp.all(norms > 0))
    np.testing.assert_allclose(added, want, rtol=2e-4, atol=2e-4 * float(jnp.max(norms)))
    # ε-form: ε̃ − ε = −σ·λ·∇F
    np.testing.assert_allclose(added_eps, -sigma * want, rtol=2e-4, atol=2e-4 * float(sigma * jnp.max(norms)))


@pytest.mark.parametrize("t", [0.5, 0.1, 0.02])
def test_guidance_term_matches_the_closed_form_flipd_gradient(t):
    """Single Gaussian on a 2-plane in R^4: FLIPD is known in closed form, so is its gradient."""
    gm = random_gaussian_mixture(5, [2], 4, scale=0.8)
    term = sample.lid_guidance_term(gm.score_fn(VP), None, sde=VP, t0_min=T0_MIN, trace="exact")
    alpha = VP.marginal_coefs(t)[0]
    tau = max(t, T0_MIN)
    x = jnp.array([0.3, -1.0, 2.0, 0.5]) * alpha
    closed = jax.jit(jax.grad(lambda z: gm.flipd_closed_form(z / alpha, tau, VP)))(x)
    np.testing.assert_allclose(jax.jit(term)(x, t), closed, rtol=1e-3, atol=1e-3 * float(jnp.linalg.norm(closed)))
    f = jax.jit(lambda x: sample.state_flipd(gm.score_fn(VP), x, t, sde=VP, t0_min=T0_MIN, trace="exact"))(x)
    np.testing.assert_allclose(f, gm.flipd_closed_form(x / alpha, tau, VP), rtol=1e-4, atol=1e-4)


def test_lambda_zero_is_the_plain_sampler_and_lambda_is_traced():
    gm = _atom_and_plane()
    score = gm.score_fn(VP)
    eps = sample.score_to_eps(score, sde=VP)
    keys = jax.random.split(jax.random.key(0), 64)
    probe_keys = jax.random.split(jax.random.key(1), 64)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def guided_em(keys, probe_keys, lam):
        return jax.vmap(lambda k, kp: sample.euler_maruyama(
            sample.lid_guided_score_fn(score, kp, sde=VP, lam=lam), k, (2,), sde=VP, num_steps=40))(keys, probe_keys)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def guided_ddim(keys, probe_keys, lam):
        return jax.vmap(lambda k, kp: sample.ddim(
            sample.lid_guided_eps_fn(eps, kp, sde=VP, lam=lam), k, (2,), sde=VP, num_steps=40))(keys, probe_keys)

    chex.clear_trace_counter()
    plain_em = jax.jit(jax.vmap(lambda k: sample.euler_maruyama(score, k, (2,), sde=VP, num_steps=40)))(keys)
    plain_ddim = jax.jit(jax.vmap(lambda k: sample.ddim(eps, k, (2,), sde=VP, num_steps=40)))(keys)
    # equal up to float32 rounding (the two programs fuse the same operations differently)
    np.testing.assert_allclose(guided_em(keys, probe_keys, 0.0), plain_em, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(guided_ddim(keys, probe_keys, 0.0), plain_ddim, rtol=1e-5, atol=1e-5)
    # a new λ reuses the compiled sampler (assert_max_traces) and changes the samples
    assert not np.allclose(guided_em(keys, probe_keys, 0.05), plain_em, atol=1e-3)
    assert not np.allclose(guided_ddim(keys, probe_keys, 0.05), plain_ddim, atol=1e-3)


def test_guidance_moves_samples_off_the_zero_dimensional_atom():
    """Atom (LID 0) + plane (LID 2), half and half: unguided DDIM puts ~half the samples on the
    atom; steering towards higher FLIPD must pull a clearly smaller fraction there, from the same
    initial noises, and raise the samples' FLIPD."""
    gm = _atom_and_plane()
    score = gm.score_fn(VP)
    eps = sample.score_to_eps(score, sde=VP)
    n = 1000
    keys = jax.random.split(jax.random.key(3), n)
    probe_keys = jax.random.split(jax.random.key(4), n)

    @jax.jit
    def draw(lam):
        return jax.vmap(lambda k, kp: sample.ddim(
            sample.lid_guided_eps_fn(eps, kp, sde=VP, lam=lam), k, (2,), sde=VP, num_steps=50))(keys, probe_keys)

    @jax.jit
    def flipd(xs):
        return jax.vmap(lambda x: lid.flipd(score, x, t0=T0_MIN, sde=VP, trace="exact"))(xs)

    atom = gm.means[0]
    fractions, mean_flipd = [], []
    for lam in (0.0, 0.1):
        xs = draw(lam)
        assert bool(jnp.all(jnp.isfinite(xs)))
        fractions.append(float(jnp.mean(jnp.linalg.norm(xs - atom[None], axis=1) < 0.1)))
        mean_flipd.append(float(jnp.mean(flipd(xs))))
    p0, p1 = fractions
    se = np.sqrt(p0 * (1 - p0) / n)  # binomial standard error of the unguided fraction
    assert abs(p0 - 0.5) < 4 * se + 0.03  # the plain sampler is right (+ discretisation)
    assert p1 < p0 - 6 * se, (fractions, mean_flipd)
    assert mean_flipd[1] > mean_flipd[0]


def test_bad_arguments():
    score = lambda x, t: -x  # noqa: E731
    with pytest.raises(ValueError, match="num_probes"):
        sample.lid_guided_score_fn(score, jax.random.key(0), sde=VP, lam=1.0, num_probes=0)
    with pytest.raises(ValueError, match="trace"):
        sample.lid_guided_eps_fn(score, jax.random.key(0), sde=VP, lam=1.0, trace="dense")
    with pytest.raises(ValueError, match="key"):  # Hutchinson needs probes
        sample.lid_guided_score_fn(score, None, sde=VP, lam=1.0)(jnp.ones(2), 0.5)
