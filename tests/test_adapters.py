"""The adapters turn each kind of prediction into the exact score, on a closed-form oracle.

Data x₀ ~ N(μ, U Uᵀ) on a d-dimensional affine subspace of R^D (U orthonormal). Under a schedule
x_t = α x₀ + σ ε the marginal is N(α μ, Σ), Σ = α² P + σ² I with P = U Uᵀ, so

    Σ⁻¹ r = (r − P r)/σ² + P r/(α² + σ²),        s(x) = −Σ⁻¹ (x − α μ),

and the optimal predictions follow from Gaussian conditioning (not from the adapters' formulas):
E[ε | x] = σ Σ⁻¹ (x − α μ) (Cov(ε, x) = σ I), E[x₀ | x] = μ + α P Σ⁻¹ (x − α μ) (Cov(x₀, x) = α P),
E[v | x] = α E[ε | x] − σ E[x₀ | x], and EDM's denoiser of y = x₀ + ς n is D(y; ς) = μ + P (y − μ)/(1 + ς²).
"""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmh_jax import adapters, lid
from mmh_jax.sde import EDMSDE, VPSDE, CosineVPSDE, DiscreteVPSDE

D, d = 6, 2
#: float32 precision of a score: the inputs' rounding is amplified by α x̂₀ − x ≈ σ ε̂ (≤ 6e-6 here).
RTOL = 3e-5


class Scaled:
    """α = 0.8 (a Python float), σ(t) = t: α ≠ 1 and α² + σ² ≠ 1, for the general formulas."""

    T = 10.0

    def marginal_coefs(self, t):
        return 0.8, jnp.asarray(t, jnp.float32)


#: name -> (schedule, times for the score checks, (small t0, mid t0) for FLIPD): the four shipped
#: schedules (Stable Diffusion's discrete one among them) and a hand-written one with α ≠ 1, α² + σ² ≠ 1.
SCHEDULES = {
    "vp": (VPSDE(), [0.02, 0.1, 0.4, 1.0], (0.005, 0.05)),
    "cosine": (CosineVPSDE(), [0.02, 0.1, 0.4, 0.9], (0.005, 0.05)),
    "discrete": (DiscreteVPSDE.scaled_linear(), [0.02, 0.1, 0.4, 1.0], (0.002, 0.05)),
    "edm": (EDMSDE(), [0.05, 0.2, 1.0, 5.0], (0.01, 0.5)),
    "scaled": (Scaled(), [0.05, 0.2, 1.0, 3.0], (0.01, 0.5)),
}


class Oracle:
    """The Gaussian on an affine d-plane of R^D and its exact score and optimal predictions (float32)."""

    def __init__(self, sde, seed=0):
        rng = np.random.default_rng(seed)
        self.sde = sde
        self.U = np.linalg.qr(rng.normal(size=(D, d)))[0]  # (D, d) orthonormal
        self.mu = rng.normal(size=D).astype(np.float32).astype(np.float64)  # the same μ in both precisions
        self.P = jnp.asarray(self.U @ self.U.T, jnp.float32)
        self.mu32 = jnp.asarray(self.mu, jnp.float32)

    def _coefs(self, t):
        alpha, sigma = self.sde.marginal_coefs(t)
        return jnp.asarray(alpha, jnp.float32), jnp.asarray(sigma, jnp.float32)

    def _sigma_inv(self, r, alpha, sigma):
        pr = self.P @ r
        return (r - pr) / sigma**2 + pr / (alpha**2 + sigma**2)

    def score(self, x, t):
        alpha, sigma = self._coefs(t)
        return -self._sigma_inv(x - alpha * self.mu32, alpha, sigma)

    def eps(self, x, t):
        alpha, sigma = self._coefs(t)
        return sigma * self._sigma_inv(x - alpha * self.mu32, alpha, sigma)

    def x0(self, x, t):
        alpha, sigma = self._coefs(t)
        return self.mu32 + alpha * (self.P @ (x - alpha * self.mu32)) / (alpha**2 + sigma**2)  # P Σ⁻¹ = P/(α² + σ²)

    def v(self, x, t):
        alpha, sigma = self._coefs(t)
        return alpha * self.eps(x, t) - sigma * self.x0(x, t)

    def denoiser(self, y, noise):
        return self.mu32 + self.P @ (y - self.mu32) / (1.0 + noise**2)

    def noised(self, t, n, seed=1):
        """``n`` draws of x_t = α x₀ + σ ε (float32), plus one point far off the plane."""
        rng = np.random.default_rng(seed)
        alpha, sigma = (float(c) for c in self._coefs(t))
        x0 = self.mu + rng.normal(size=(n, d)) @ self.U.T
        xs = alpha * x0 + sigma * rng.normal(size=(n, D))
        far = alpha * self.mu + 3.0 * rng.normal(size=(1, D))
        return jnp.asarray(np.concatenate([xs, far]), jnp.float32)

    def score64(self, x, t):
        """The score by a float64 solve with Σ, independent of the closed form above."""
        alpha, sigma = (float(c) for c in self._coefs(t))
        cov = alpha**2 * self.U @ self.U.T + sigma**2 * np.eye(D)
        return -np.linalg.solve(cov, (np.asarray(x, np.float64) - alpha * self.mu).T).T


#: adapter name -> (adapter, the oracle's prediction it takes)
ADAPTERS = {
    "eps": (adapters.score_from_eps, lambda o: o.eps),
    "x0": (adapters.score_from_x0, lambda o: o.x0),
    "v": (adapters.score_from_v, lambda o: o.v),
    "edm": (adapters.score_from_edm_denoiser, lambda o: o.denoiser),
}


def _close(got, want, rtol):
    """‖got − want‖ ≤ rtol·‖want‖ per point (the score's scale spans 1 to 1/σ²)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    err = np.linalg.norm(got - want, axis=-1)
    scale = np.linalg.norm(want, axis=-1)
    assert np.all(err <= rtol * scale), f"relative errors {(err / scale).tolist()}"


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_the_oracles_score_is_the_gaussian_score(schedule):
    sde, times, _ = SCHEDULES[schedule]
    o = Oracle(sde)
    for t in times:
        xs = o.noised(t, 4)
        _close(jax.vmap(o.score, (0, None))(xs, t), o.score64(xs, t), RTOL)
        # and its optimal predictions are Tweedie's, x̂₀ = (x + σ² s)/α, ε̂ = −σ s
        alpha, sigma = (float(c) for c in o._coefs(t))
        s = o.score64(xs, t)
        _close(jax.vmap(o.x0, (0, None))(xs, t), (np.asarray(xs) + sigma**2 * s) / alpha, RTOL)
        _close(jax.vmap(o.eps, (0, None))(xs, t), -sigma * s, RTOL)


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("name", ADAPTERS)
def test_adapter_gives_the_exact_score(name, schedule):
    sde, times, _ = SCHEDULES[schedule]
    o = Oracle(sde)
    adapter, prediction = ADAPTERS[name]
    score_fn = adapter(prediction(o), sde)
    for t in times:
        xs = o.noised(t, 4)
        got = jax.vmap(score_fn, (0, None))(xs, jnp.float32(t))
        assert got.shape == xs.shape and got.dtype == jnp.float32
        _close(got, o.score64(xs, t), RTOL)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_eps_from_x0_and_v_give_the_optimal_eps(schedule):
    sde, times, _ = SCHEDULES[schedule]
    o = Oracle(sde)
    for t in times:
        xs = o.noised(t, 4)
        want = -float(o._coefs(t)[1]) * o.score64(xs, t)
        for conv, pred in ((adapters.eps_from_x0, o.x0), (adapters.eps_from_v, o.v)):
            _close(jax.vmap(conv(pred, sde), (0, None))(xs, t), want, RTOL)


def test_edm_adapter_on_edms_own_schedule_is_denoiser_minus_x_over_sigma2():
    o = Oracle(EDMSDE())
    x, t = o.noised(0.5, 1)[0], 0.5
    got = adapters.score_from_edm_denoiser(o.denoiser, EDMSDE())(x, t)
    np.testing.assert_allclose(got, (o.denoiser(x, t) - x) / t**2, rtol=1e-6)


def _flipd_closed_form(o, x, t0):
    """FLIPD of the Gaussian at a point x of its plane, from Σ⁻¹'s eigenvalues (float64):
    tr ∇s = −(D − d)/σ² − d/(α² + σ²) and ‖s(αx)‖² = α² r²/(α² + σ²)², r = ‖x − μ‖, so
    FLIPD = D + σ²(tr ∇s + ‖s‖²) = α²/(α² + σ²) · (d + σ² r²/(α² + σ²))."""
    alpha, sigma = (float(c) for c in o._coefs(t0))
    a2, s2 = alpha**2, sigma**2
    r2 = float(np.sum((np.asarray(x, np.float64) - o.mu) ** 2))
    return a2 / (a2 + s2) * (d + s2 * r2 / (a2 + s2))


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("name", ADAPTERS)
def test_flipd_through_each_adapter_is_the_closed_form_and_d(name, schedule):
    sde, _, (t_small, t_mid) = SCHEDULES[schedule]
    o = Oracle(sde)
    adapter, prediction = ADAPTERS[name]
    x = jnp.asarray(o.mu + o.U @ np.array([0.5, -1.0]), jnp.float32)  # a point of the data plane
    score_fn = adapter(prediction(o), sde)
    flipd = jax.jit(lambda t0: lid.flipd(score_fn, x, t0=t0, sde=sde, trace="exact"))
    for t0 in (t_small, t_mid):
        got = float(flipd(jnp.float32(t0)))
        assert got == pytest.approx(_flipd_closed_form(o, x, t0), abs=1e-5), t0  # float32: ≤ 9e-7 seen
    assert float(flipd(jnp.float32(t_small))) == pytest.approx(d, abs=0.02)


def test_single_example_equals_the_batched_result_under_jit_vmap_grad():
    batched = lambda xs, ts: jnp.sin(xs) * ts[:, None]  # noqa: E731  (indexes the batch axis of ts)
    f = adapters.single_example(batched)
    xs, ts = jnp.arange(6.0).reshape(3, 2), jnp.array([0.5, 1.0, 2.0])
    want = batched(xs, ts)
    for i in range(3):
        np.testing.assert_allclose(f(xs[i], ts[i]), want[i])
        np.testing.assert_allclose(f(xs[i], float(ts[i])), want[i])  # a Python float t
    np.testing.assert_allclose(jax.jit(f)(xs[1], ts[1]), want[1])
    np.testing.assert_allclose(jax.vmap(f)(xs, ts), want)
    grad = jax.grad(lambda x, t: jnp.sum(f(x, t)), argnums=(0, 1))(xs[2], ts[2])
    np.testing.assert_allclose(grad[0], jnp.cos(xs[2]) * ts[2], rtol=1e-6)
    np.testing.assert_allclose(grad[1], jnp.sum(jnp.sin(xs[2])), rtol=1e-6)
    image = adapters.single_example(lambda xs, ts: xs * ts[:, None, None, None])
    assert image(jnp.ones((4, 4, 3)), 0.1).shape == (4, 4, 3)  # an image-shaped example


def test_single_example_batches_extra_arguments_and_passes_keywords():
    def batched(xs, ts, labels, *, scale):
        assert xs.shape == (1, 2) and ts.shape == (1,) and labels.shape == (1,)
        return xs * labels[:, None] * scale, {"t": ts}

    out, aux = adapters.single_example(batched)(jnp.ones(2), 0.5, 3, scale=2.0)
    np.testing.assert_allclose(out, [6.0, 6.0])
    assert aux["t"].shape == () and float(aux["t"]) == 0.5


def test_single_example_feeds_an_adapter_and_the_estimators():
    vp = VPSDE()
    o = Oracle(vp)
    batched_eps = lambda xs, ts: jax.vmap(o.eps)(xs, ts)  # noqa: E731
    score_fn = adapters.score_from_eps(adapters.single_example(batched_eps), vp)
    adapters.check_single_example("score_fn", score_fn, jnp.zeros(D), jnp.float32(0.1))
    x = o.noised(0.1, 1)[0]
    _close(score_fn(x, 0.1)[None], o.score64(x[None], 0.1), RTOL)


def test_check_single_example_names_the_fix_for_a_batched_function():
    x = jnp.ones(3)
    adapters.check_single_example("score_fn", lambda x, t: -x * t, x, 0.5)  # passes silently

    with pytest.raises(ValueError) as e:
        adapters.check_single_example("score_fn", lambda xs, ts: xs * ts[:, None], x, 0.5)
    msg = str(e.value)
    assert "score_fn" in msg and "single_example(batched_fn)" in msg and "ONE example" in msg
    assert "(3,)" in msg and "IndexError" in msg  # the shapes seen and the original error's first line
    assert isinstance(e.value.__cause__, IndexError)

    with pytest.raises(ValueError, match=r"eps_fn\(x, t\) returned shape \(1, 3\).*single_example") as e:
        adapters.check_single_example("eps_fn", lambda x, t: x[None] * t, x, 0.5)
    assert e.value.__cause__ is None
    with pytest.raises(ValueError, match="returned a tuple"):
        adapters.check_single_example("score_fn", lambda x, t: (x, t), x, 0.5)


def test_adapters_sde_and_lid_import_jax_only():
    code = ("import mmh_jax.adapters, mmh_jax.sde, mmh_jax.lid, sys; "
            "bad = sorted({m.split('.')[0] for m in sys.modules} & {'flax', 'optax', 'orbax', 'matplotlib'}); "
            "assert not bad, bad")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
