"""LID guidance (sample.lid_guided_score_fn & co.) against closed-form scores of Gaussian mixtures.

Compiling dominates these tests: each runs in one jitted program, and the parametrised times are
traced arguments of a module-level jitted function, so the cases share its compiled program.
"""

import functools

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
    tau = jnp.maximum(t, T0_MIN)
    return jax.grad(lambda z: lid.flipd(score, z / alpha, key, t0=tau, sde=VP, trace=trace,
                                        num_probes=num_probes))(x)


def _clean_points_and_noise(gm, n, seed=1):
    """``n`` clean samples of the mixture (a component by weight, then its Gaussian on its subspace)
    and ``n`` standard normal noises, drawn with numpy: jax's sampling program is larger than the
    guidance terms under test."""
    rng = np.random.default_rng(seed)
    weights = np.exp(np.asarray(gm.log_weights, np.float64))
    comp = rng.choice(weights.size, size=n, p=weights / weights.sum())
    z = rng.standard_normal((n, gm.bases.shape[2]))
    bases, means, scales = (np.asarray(a, np.float64) for a in (gm.bases, gm.means, gm.scales))
    x0 = means[comp] + scales[comp, None] * np.einsum("ndk,nk->nd", bases[comp], z)
    return x0.astype(np.float32), rng.standard_normal(x0.shape).astype(np.float32)


@functools.partial(jax.jit, static_argnames=("trace", "num_probes"))
def _added_terms(gm, x0, noise, t, key, lam, *, trace, num_probes):
    """At the sampler states α(t)·x0 + σ(t)·noise: what LID guidance adds to the score and to ε,
    and λ·∇ₓF straight from lid.flipd; and σ(t). One program per (trace, num_probes), shared by
    every t."""
    score = gm.score_fn(VP)
    eps = lambda y, s: -VP.marginal_coefs(s)[1] * score(y, s)  # noqa: E731
    alpha, sigma = VP.marginal_coefs(t)
    xs = alpha * x0 + sigma * noise  # states of a sampler at t
    guided = sample.lid_guided_score_fn(score, key, sde=VP, lam=lam, num_probes=num_probes, t0_min=T0_MIN,
                                        trace=trace)
    geps = sample.lid_guided_eps_fn(eps, key, sde=VP, lam=lam, num_probes=num_probes, t0_min=T0_MIN, trace=trace)
    one = lambda x: (guided(x, t) - score(x, t), geps(x, t) - eps(x, t),  # noqa: E731
                     lam * _direct_term(score, x, t, key, trace, num_probes))
    return (*jax.vmap(one)(xs), sigma)


@pytest.mark.parametrize("trace,num_probes", [("hutchinson", 1), ("hutchinson", 3), ("exact", 1)])
@pytest.mark.parametrize("t", [0.4, 0.01])  # t = 0.01 < t0_min: FLIPD read at the floor
def test_added_term_is_lambda_times_grad_of_flipd(trace, num_probes, t):
    gm = random_gaussian_mixture(3, [0, 2, 4], 5, scale=1.2)
    x0, noise = _clean_points_and_noise(gm, 4)
    added, added_eps, want, sigma = map(np.asarray, _added_terms(gm, x0, noise, t, jax.random.key(7), 0.37,
                                                                 trace=trace, num_probes=num_probes))
    norms = np.linalg.norm(want, axis=1, keepdims=True)
    assert np.all(norms > 0)
    np.testing.assert_allclose(added, want, rtol=2e-4, atol=2e-4 * float(np.max(norms)))
    # ε-form: ε̃ − ε = −σ·λ·∇F
    np.testing.assert_allclose(added_eps, -sigma * want, rtol=2e-4, atol=2e-4 * float(sigma * np.max(norms)))


@jax.jit
def _guidance_term_and_closed_forms(gm, t):
    """At a state x at time t: ``(g(x, t), closed-form ∇ₓF, state_flipd, closed-form F)``, F(x, t) =
    FLIPD(x/α(t), max(t, t0_min)). One program, shared by every t."""
    term = sample.lid_guidance_term(gm.score_fn(VP), None, sde=VP, t0_min=T0_MIN, trace="exact")
    alpha = VP.marginal_coefs(t)[0]
    tau = jnp.maximum(t, T0_MIN)
    x = jnp.array([0.3, -1.0, 2.0, 0.5]) * alpha
    closed = jax.grad(lambda z: gm.flipd_closed_form(z / alpha, tau, VP))(x)
    f = sample.state_flipd(gm.score_fn(VP), x, t, sde=VP, t0_min=T0_MIN, trace="exact")
    return term(x, t), closed, f, gm.flipd_closed_form(x / alpha, tau, VP)


@pytest.mark.parametrize("t", [0.5, 0.1, 0.02])
def test_guidance_term_matches_the_closed_form_flipd_gradient(t):
    """Single Gaussian on a 2-plane in R^4: FLIPD is known in closed form, so is its gradient."""
    gm = random_gaussian_mixture(5, [2], 4, scale=0.8)
    g, closed, f, f_closed = _guidance_term_and_closed_forms(gm, t)
    np.testing.assert_allclose(g, closed, rtol=1e-3, atol=1e-3 * float(np.linalg.norm(closed)))
    np.testing.assert_allclose(f, f_closed, rtol=1e-4, atol=1e-4)


def test_lambda_zero_is_the_plain_sampler_and_lambda_is_traced():
    gm = _atom_and_plane()
    score = gm.score_fn(VP)
    eps = sample.score_to_eps(score, sde=VP)
    keys = jax.random.split(jax.random.key(0), 64)
    probe_keys = jax.random.split(jax.random.key(1), 64)

    @jax.jit  # one program for the four samplers (compiling dominates, not the 40 steps)
    @chex.assert_max_traces(n=1)
    def samplers(keys, probe_keys, lam):
        """The plain samplers, and the LID-guided ones at λ, from the same noises."""
        plain_em = jax.vmap(lambda k: sample.euler_maruyama(score, k, (2,), sde=VP, num_steps=40))(keys)
        plain_ddim = jax.vmap(lambda k: sample.ddim(eps, k, (2,), sde=VP, num_steps=40))(keys)
        guided_em = jax.vmap(lambda k, kp: sample.euler_maruyama(
            sample.lid_guided_score_fn(score, kp, sde=VP, lam=lam), k, (2,), sde=VP, num_steps=40))(keys, probe_keys)
        guided_ddim = jax.vmap(lambda k, kp: sample.ddim(
            sample.lid_guided_eps_fn(eps, kp, sde=VP, lam=lam), k, (2,), sde=VP, num_steps=40))(keys, probe_keys)
        return plain_em, plain_ddim, guided_em, guided_ddim

    chex.clear_trace_counter()
    plain_em, plain_ddim, guided_em, guided_ddim = samplers(keys, probe_keys, 0.0)
    # equal up to float32 rounding (the guided samplers fuse the same operations differently)
    np.testing.assert_allclose(guided_em, plain_em, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(guided_ddim, plain_ddim, rtol=1e-5, atol=1e-5)
    # a new λ reuses the compiled sampler (assert_max_traces) and changes the samples
    _, _, guided_em, guided_ddim = samplers(keys, probe_keys, 0.05)
    assert not np.allclose(guided_em, plain_em, atol=1e-3)
    assert not np.allclose(guided_ddim, plain_ddim, atol=1e-3)


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

    @jax.jit  # one program: the samples at λ (traced) and their FLIPD
    def draw(lam):
        xs = jax.vmap(lambda k, kp: sample.ddim(
            sample.lid_guided_eps_fn(eps, kp, sde=VP, lam=lam), k, (2,), sde=VP, num_steps=50))(keys, probe_keys)
        return xs, jax.vmap(lambda x: lid.flipd(score, x, t0=T0_MIN, sde=VP, trace="exact"))(xs)

    atom = np.asarray(gm.means)[0]
    fractions, mean_flipd = [], []
    for lam in (0.0, 0.1):
        xs, flipd = map(np.asarray, draw(lam))
        assert np.all(np.isfinite(xs))
        fractions.append(float(np.mean(np.linalg.norm(xs - atom[None], axis=1) < 0.1)))
        mean_flipd.append(float(np.mean(flipd)))
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
