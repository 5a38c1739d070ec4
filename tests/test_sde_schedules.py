"""The noise schedules of ``mmh_jax.sde`` (VP, cosine, discrete DDPM, EDM) and the schedule-generic
estimators and samplers: values against hand computations, the protocol's identities, pytrees under
jit/vmap/grad, every score-based estimator and sampler on each schedule against closed forms of
Gaussian data, and the range checks of t0."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmh_jax import lid, sample, train
from mmh_jax.data.gaussian import GaussianMixture, random_gaussian_mixture
from mmh_jax.sde import EDMSDE, CosineVPSDE, DiscreteVPSDE, VPSDE

SCHEDULES = {
    "vp": VPSDE(),
    "cosine": CosineVPSDE(),
    "ddpm-linear": DiscreteVPSDE.linear(),
    "sd-scaled-linear": DiscreteVPSDE.scaled_linear(),
    "discrete-10": DiscreteVPSDE(jnp.asarray(np.cumprod(1.0 - np.linspace(0.05, 0.6, 10)), jnp.float32)),
    "edm": EDMSDE(),
}
VP_TYPES = ["vp", "cosine", "ddpm-linear", "sd-scaled-linear", "discrete-10"]
ALL = list(SCHEDULES)


def _times(sde, n=40):
    """Times spread (geometrically) over the schedule's range; on the cosine schedule they stop short
    of the clip of ᾱ, which holds ᾱ constant over the last 0.2 % of the time."""
    lo = max(float(sde.t_min), 1e-4 * float(sde.T))
    return jnp.geomspace(lo, float(sde.T) * (0.997 if isinstance(sde, CosineVPSDE) else 1.0), n)


# ----------------------------------------------------------------------------- values at known points


def test_vp_values_and_coefs_are_the_closed_forms():
    vp = VPSDE(beta_min=0.1, beta_max=20.0, T=1.0)
    alpha, sigma = vp.marginal_coefs(1.0)
    b = 0.1 + 19.9 / 2
    np.testing.assert_allclose([alpha, sigma], [math.exp(-b / 2), math.sqrt(1 - math.exp(-b))], rtol=1e-6)
    ts = _times(vp)
    f, g2 = vp.sde_coefs(ts)
    np.testing.assert_array_equal(f, -0.5 * vp.beta(ts))  # exactly −β/2 and β
    np.testing.assert_array_equal(g2, vp.beta(ts))
    assert vp.t_min == 0.0 and vp.variance_preserving


def test_cosine_values_at_known_points():
    s = 0.008
    cos = CosineVPSDE(s=s, T=2.0)
    f = lambda t: math.cos((t / 2.0 + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    ab = lambda t: f(t) / f(0.0)  # noqa: E731
    alpha, sigma = cos.marginal_coefs(0.0)
    assert float(alpha) == 1.0 and float(sigma) == 0.0
    for t in [1.0, 0.3, 1.9]:  # T/2 and two others
        alpha, sigma = cos.marginal_coefs(t)
        np.testing.assert_allclose(alpha**2, ab(t), rtol=2e-6)
        np.testing.assert_allclose(sigma**2, 1 - ab(t), rtol=2e-6)
    # at T the unclipped ᾱ is 0: it is clipped to alpha_bar_min, so α > 0, σ < 1 and δ finite
    alpha, sigma = cos.marginal_coefs(2.0)
    np.testing.assert_allclose(alpha**2, cos.alpha_bar_min, rtol=1e-4)
    assert float(sigma) < 1.0 and np.isfinite(cos.delta(2.0))
    # small t stays accurate (no cancellation): ᾱ ≈ 1 − β(0)·t
    beta0 = math.pi * math.tan(s / (1 + s) * math.pi / 2) / (2.0 * (1 + s))
    np.testing.assert_allclose(cos.marginal_coefs(1e-5)[1] ** 2, beta0 * 1e-5, rtol=1e-3)


def test_discrete_values_at_steps_and_between():
    sde = SCHEDULES["discrete-10"]
    ab = np.asarray(sde.alphas_cumprod, np.float64)
    n = ab.size
    i = np.arange(1, n + 1)
    alpha, sigma = sde.marginal_coefs(jnp.asarray(i / n, jnp.float32))
    np.testing.assert_allclose(alpha**2, ab, rtol=2e-6)  # step i at t = i/N (1-based)
    np.testing.assert_allclose(sigma**2, 1 - ab, rtol=2e-6)
    # log ᾱ is linear in t between steps: the geometric mean at the midpoints
    mid = jnp.asarray((i[:-1] + 0.5) / n, jnp.float32)
    np.testing.assert_allclose(sde.marginal_coefs(mid)[0] ** 2, np.sqrt(ab[:-1] * ab[1:]), rtol=2e-6)
    # and between t = 0 (ᾱ = 1) and t = 1/N
    np.testing.assert_allclose(sde.marginal_coefs(0.25 / n)[0] ** 2, ab[0] ** 0.25, rtol=2e-6)
    assert float(sde.marginal_coefs(0.0)[0]) == 1.0
    assert sde.T == 1.0 and sde.t_min == 0.0 and sde.num_steps == n


def test_discrete_builders_match_the_published_schedules():
    sd = DiscreteVPSDE.scaled_linear()
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2
    np.testing.assert_allclose(sd.alphas_cumprod, np.cumprod(1 - betas), rtol=1e-6)
    np.testing.assert_allclose(sd.alphas_cumprod[-1], 0.0046600, rtol=1e-4)  # Stable Diffusion's ᾱ at step 1000
    ddpm = DiscreteVPSDE.linear()
    np.testing.assert_allclose(ddpm.alphas_cumprod, np.cumprod(1 - np.linspace(1e-4, 0.02, 1000)), rtol=1e-6)
    assert DiscreteVPSDE.linear(num_steps=50).num_steps == 50


def test_edm_values():
    edm = EDMSDE(sigma_min=0.01, sigma_max=10.0)
    ts = jnp.array([0.01, 0.5, 10.0])
    alpha, sigma = edm.marginal_coefs(ts)
    np.testing.assert_array_equal(alpha, 1.0)
    np.testing.assert_array_equal(sigma, ts)
    np.testing.assert_allclose(edm.delta(ts), np.log(np.asarray(ts)), rtol=1e-6)
    assert edm.T == 10.0 and edm.t_min == 0.01 and not edm.variance_preserving
    f, g2 = edm.sde_coefs(ts)
    np.testing.assert_array_equal(f, 0.0)
    np.testing.assert_allclose(g2, 2 * np.asarray(ts), rtol=1e-6)


# ----------------------------------------------------------------------------- the protocol's identities


@pytest.mark.parametrize("name", VP_TYPES)
def test_vp_types_preserve_variance(name):
    sde = SCHEDULES[name]
    alpha, sigma = sde.marginal_coefs(_times(sde))
    np.testing.assert_allclose(alpha**2 + sigma**2, 1.0, rtol=1e-6)
    assert sde.variance_preserving


@pytest.mark.parametrize("name", ALL)
def test_sigma_and_delta_increase_and_invert(name):
    sde = SCHEDULES[name]
    ts = _times(sde)
    alpha, sigma = sde.marginal_coefs(ts)
    assert np.all(np.diff(np.asarray(sigma)) > 0)
    delta = sde.delta(ts)
    assert np.all(np.diff(np.asarray(delta)) > 0)
    np.testing.assert_allclose(jnp.exp(delta), sigma / alpha, rtol=2e-5)
    np.testing.assert_allclose(sde.t_from_delta(delta), ts, rtol=3e-5)
    np.testing.assert_allclose(sde.t_from_log_sigma(jnp.log(sigma)), ts, rtol=2e-3)  # 1 − σ² cancels at large t


@pytest.mark.parametrize("name", ALL)
def test_drift_and_diffusion_match_finite_differences(name):
    """f = d log α/dt and g² = dσ²/dt − 2fσ² (central differences in float64 of the float32 marginals)."""
    sde = SCHEDULES[name]
    T = float(sde.T)
    if name.startswith("ddpm") or name.startswith("sd") or name == "discrete-10":
        n = sde.num_steps
        ts = (np.array([0.6, 3.4, 0.45 * n, 0.8 * n]).round() + 0.5) / n  # mid-step: log ᾱ is linear there
        h = 0.25 / n
    else:
        ts = np.array([0.05, 0.3, 0.6, 0.9]) * T
        h = 1e-3 * T

    def log_alpha_sigma2(t):
        a, s = sde.marginal_coefs(jnp.asarray(t, jnp.float32))
        return np.log(np.asarray(a, np.float64)), np.asarray(s, np.float64) ** 2

    (la_p, s2_p), (la_m, s2_m), (_, s2) = log_alpha_sigma2(ts + h), log_alpha_sigma2(ts - h), log_alpha_sigma2(ts)
    f_fd = (la_p - la_m) / (2 * h)
    g2_fd = (s2_p - s2_m) / (2 * h) - 2 * f_fd * s2
    f, g2 = sde.sde_coefs(jnp.asarray(ts, jnp.float32))
    np.testing.assert_allclose(f, f_fd, rtol=2e-2, atol=1e-6)
    np.testing.assert_allclose(g2, g2_fd, rtol=2e-2)
    if name == "cosine":  # and the closed form f = −β/2, g² = β, β = π tan(u)/(T(1 + s))
        u = (ts / T + sde.s) / (1 + sde.s) * np.pi / 2
        beta = np.pi * np.tan(u) / (T * (1 + sde.s))
        np.testing.assert_allclose(g2, beta, rtol=1e-4)
        np.testing.assert_allclose(f, -beta / 2, rtol=1e-4)


def test_cosine_clip_stops_the_process_near_T():
    cos = CosineVPSDE()
    f, g2 = cos.sde_coefs(jnp.array([0.999, 1.0]))
    np.testing.assert_array_equal([f, g2], 0.0)
    assert 0.997 < float(cos.t_from_delta(50.0)) < 1.0  # δ beyond δ(T): the time the clip starts


@pytest.mark.parametrize("name", ALL)
def test_prior_and_perturb(name):
    sde = SCHEDULES[name]
    key = jax.random.key(0)
    prior = sde.prior_sample(key, (20000,))
    scale = float(sde.T) if name == "edm" else 1.0  # EDM's prior N(0, sigma_max² I), VP types' N(0, I)
    assert abs(float(jnp.std(prior)) / scale - 1.0) < 0.03 and abs(float(jnp.mean(prior))) / scale < 0.03
    x0 = jnp.full((20000,), 2.0)
    t = 0.5 * float(sde.T)
    xt, eps = sde.perturb(x0, t, key)
    alpha, sigma = sde.marginal_coefs(t)
    np.testing.assert_allclose(xt, alpha * x0 + sigma * eps, rtol=1e-6)


# ----------------------------------------------------------------------------- pytrees, bad parameters


@pytest.mark.parametrize("name", ALL)
def test_schedules_are_pytrees_under_jit_and_vmap(name):
    sde = SCHEDULES[name]
    ts = _times(sde, 8)

    @jax.jit
    def coefs(s, t):
        return s.marginal_coefs(t), s.sde_coefs(t), s.delta(t), s.t_from_delta(s.delta(t))

    got, want = coefs(sde, ts), (sde.marginal_coefs(ts), sde.sde_coefs(ts), sde.delta(ts), ts)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=3e-5), got, want)
    sig = jax.vmap(lambda t: sde.marginal_coefs(t)[1])(ts)
    np.testing.assert_allclose(sig, sde.marginal_coefs(ts)[1], rtol=1e-6)
    dsig = jax.vmap(jax.grad(lambda t: sde.marginal_coefs(t)[1]))(ts[1:-1])
    assert np.all(np.asarray(dsig) > 0)  # σ increases
    stacked = jax.tree.map(lambda a, b: jnp.stack([jnp.asarray(a), jnp.asarray(b)]), sde, sde)
    both = jax.vmap(lambda s: s.marginal_coefs(ts[3])[1])(stacked)
    np.testing.assert_allclose(both, sde.marginal_coefs(ts[3])[1], rtol=1e-6)


def test_gradients_through_schedule_parameters():
    alpha = lambda s: CosineVPSDE(s=s).marginal_coefs(0.5)[0]  # noqa: E731
    np.testing.assert_allclose(jax.grad(alpha)(0.008), (alpha(0.012) - alpha(0.004)) / 0.008, rtol=1e-2)
    ab = SCHEDULES["discrete-10"].alphas_cumprod
    g = jax.grad(lambda a: DiscreteVPSDE(a).marginal_coefs(0.37)[1])(ab)  # between steps 3 and 4
    assert np.flatnonzero(np.asarray(g)).tolist() == [2, 3] and np.all(np.asarray(g)[2:4] < 0)
    g = jax.grad(lambda smax: sample.time_grid(EDMSDE(0.002, smax), 4, spacing="delta")[1])(80.0)
    assert np.isfinite(g) and g > 0


@pytest.mark.parametrize("make, match", [
    (lambda: CosineVPSDE(s=-0.1), r"CosineVPSDE.*s >= 0.*s=-0.1"),
    (lambda: CosineVPSDE(T=0.0), r"CosineVPSDE.*T > 0.*T=0.0"),
    (lambda: CosineVPSDE(alpha_bar_min=0.0), r"alpha_bar_min in \(0, 1\).*alpha_bar_min=0.0"),
    (lambda: DiscreteVPSDE(jnp.array([0.5, 0.7])), r"alphas_cumprod strictly decreasing.*0.5 then 0.7.*from_betas"),
    (lambda: DiscreteVPSDE(jnp.array([1.0, 0.5])), r"alphas_cumprod in \(0, 1\), got \[1\] at steps \[1\]"),
    (lambda: DiscreteVPSDE(jnp.array(0.5)), r"alphas_cumprod as a non-empty 1-D.*shape \(\)"),
    (lambda: DiscreteVPSDE(jnp.zeros((0,))), r"alphas_cumprod as a non-empty 1-D.*shape \(0,\)"),
    (lambda: DiscreteVPSDE.from_betas([0.1, 1.5]), r"betas must .* in \(0, 1\).*1.5"),
    (lambda: DiscreteVPSDE.linear(num_steps=0), r"num_steps must be an int >= 1, got 0"),
    (lambda: EDMSDE(sigma_min=0.0), r"EDMSDE needs sigma_min > 0, got sigma_min=0.0"),
    (lambda: EDMSDE(sigma_min=1.0, sigma_max=0.5), r"sigma_max > sigma_min=1.0, got sigma_max=0.5"),
])
def test_bad_schedule_parameters(make, match):
    with pytest.raises(ValueError, match=match):
        make()


# ----------------------------------------------------------------------------- estimators on each schedule


def _gaussian_plane():
    """N(μ, U Uᵀ) on a 2-D affine plane in R^5 (LID 2), with its closed-form score on any schedule."""
    return random_gaussian_mixture(0, [2], 5, scale=1.0)


def _cfdm_closed_form(x, data, alpha, sigma):
    """Σ_j w_j ‖x − x_j‖²/δ², w = softmax(−‖x − x_j‖²/(2δ²)), δ = σ/α."""
    d2 = jnp.sum((data - x[None]) ** 2, axis=1)
    v = (sigma / alpha) ** 2
    w = jax.nn.softmax(-d2 / (2 * v))
    return jnp.sum(w * d2) / v


@pytest.mark.parametrize("name", ALL)
def test_score_estimators_run_under_jit_on_each_schedule(name):
    sde = SCHEDULES[name]
    gm = _gaussian_plane()
    xs, _ = gm.sample(jax.random.key(0), 64)
    x = xs[0]
    key = jax.random.key(1)

    @jax.jit
    def run(sde, x, xs, key):
        score = gm.score_fn(sde)
        t0 = sde.t_from_delta(jnp.log(0.01))  # σ/α = 0.01: close to the data
        t0s = sde.t_from_delta(jnp.linspace(jnp.log(0.01), jnp.log(0.5), 6))
        ts = sde.t_from_delta(jnp.array([0.5, 0.0, -1.0]))
        half = lambda y, t: 0.5 * score(y, t)  # noqa: E731
        return dict(
            flipd=lid.flipd(score, x, t0=t0, sde=sde),
            flipd_hutch=lid.flipd(score, x, key, t0=t0, sde=sde, trace="hutchinson", num_probes=64),
            closed=gm.flipd_closed_form(x, t0, sde),
            curve=lid.flipd_curve(score, x, t0s=t0s, sde=sde),
            closed_curve=jax.vmap(lambda t: gm.flipd_closed_form(x, t, sde))(t0s),
            fp_regress=lid.fp_regress(score, x, sde=sde),
            normal_bundle=lid.normal_bundle(score, x, key, t=t0, sde=sde),
            cfdm=lid.cfdm(xs[0], xs, t=t0, sde=sde),
            cfdm_mid=lid.cfdm(xs[0] + 0.1, xs, t=ts[1], sde=sde),
            cfdm_want=_cfdm_closed_form(xs[0] + 0.1, xs, *sde.marginal_coefs(ts[1])),
            cfg=lid.cfg_norm(score, half, xs[:3], ts, sde=sde),
            cfg_want=jnp.mean(jax.vmap(lambda y, t: 0.5 * sde.marginal_coefs(t)[1] * jnp.linalg.norm(score(y, t)))(
                xs[:3], ts)),
        )

    out = run(sde, x, xs, key)
    assert abs(float(out["flipd"]) - 2.0) < 0.05  # LID 2 at a small noise level, on every schedule
    np.testing.assert_allclose(out["flipd"], out["closed"], rtol=1e-4, atol=1e-4)
    assert abs(float(out["flipd_hutch"]) - float(out["closed"])) < 0.5
    np.testing.assert_allclose(out["curve"], out["closed_curve"], rtol=1e-4, atol=1e-4)
    assert abs(float(out["fp_regress"]) - 2.0) < 0.2
    assert float(out["normal_bundle"]) == 2.0
    assert float(out["cfdm"]) < 1e-3  # a training point of the memorizing model: LID 0
    np.testing.assert_allclose(out["cfdm_mid"], out["cfdm_want"], rtol=1e-4)
    np.testing.assert_allclose(out["cfg"], out["cfg_want"], rtol=1e-5)


def test_flipd_and_cfdm_depend_on_the_schedule_only_through_delta():
    """x_t/α = x₀ + e^δ ε: FLIPD and the CFDM are functions of δ, the same on every schedule."""
    gm = _gaussian_plane()
    xs, _ = gm.sample(jax.random.key(0), 64)
    x = xs[1] + 0.05

    @jax.jit
    def at_deltas(sde):
        ts = sde.t_from_delta(jnp.log(jnp.array([0.02, 0.2, 1.0])))
        flipd = jax.vmap(lambda t: lid.flipd(gm.score_fn(sde), x, t0=t, sde=sde))(ts)
        cfdm = jax.vmap(lambda t: lid.cfdm(x, xs, t=t, sde=sde))(ts)
        return flipd, cfdm

    ref = at_deltas(SCHEDULES["vp"])
    for name in ALL[1:]:
        got = at_deltas(SCHEDULES[name])
        np.testing.assert_allclose(got[0], ref[0], rtol=1e-3, atol=1e-3, err_msg=name)
        np.testing.assert_allclose(got[1], ref[1], rtol=1e-3, atol=1e-3, err_msg=name)


# ----------------------------------------------------------------------------- samplers on each schedule

N = 2000
#: 1-D Gaussian data in R^2: coordinate 0 ~ N(0, 1.5²), coordinate 1 = 2 (the mean is normal to the line,
#: so the terminal prior's small mismatch does not bias the sample mean along it).
LINE = GaussianMixture(means=jnp.array([[0.0, 2.0]]), bases=jnp.array([[[1.0], [0.0]]]),
                       dims=jnp.array([1], jnp.int32), scales=jnp.array([1.5]), log_weights=jnp.zeros(1))


@pytest.mark.parametrize("name", ALL)
def test_samplers_reproduce_gaussian_data_on_each_schedule(name):
    sde = SCHEDULES[name]
    score = LINE.score_fn(sde)
    eps = lambda x, t: -sde.marginal_coefs(t)[1] * score(x, t)  # noqa: E731
    em_ts = sample.time_grid(sde, 200, spacing="delta")
    ts = sample.time_grid(sde, 100, spacing="delta")
    keys = jax.random.split(jax.random.key(1), N)

    @jax.jit
    def run(keys):
        em = jax.vmap(lambda k: sample.euler_maruyama(score, k, (2,), sde=sde, ts=em_ts))(keys)
        dd = jax.vmap(lambda k: sample.ddim(eps, k, (2,), sde=sde, ts=ts))(keys)
        pf = jax.vmap(lambda k: sample.probability_flow(score, sde.prior_sample(k, (2,)), sde=sde, ts=ts))(keys)
        return em, dd, pf

    for sampler, xs in zip(["euler_maruyama", "ddim", "probability_flow"], run(keys)):
        xs = np.asarray(xs)
        np.testing.assert_allclose(xs[:, 1], 2.0, atol=1e-3, err_msg=sampler)  # Tweedie's step lands on the line
        assert abs(xs[:, 0].mean()) < 4 * 1.5 / np.sqrt(N), sampler
        assert abs(xs[:, 0].std() - 1.5) < 4 * 1.5 / np.sqrt(2 * N) + 0.05, (sampler, xs[:, 0].std())


@pytest.mark.parametrize("name", ALL)
def test_default_grids_lie_in_the_schedule_range(name):
    sde = SCHEDULES[name]
    for spacing in sample.GRID_SPACINGS:
        ts = np.asarray(sample.time_grid(sde, 16, spacing=spacing))
        assert ts[0] == np.float32(sde.T) and ts[-1] == np.float32(max(1e-3, float(sde.t_min)))
        assert np.all(np.diff(ts) < 0)
    d = np.asarray(sde.delta(sample.time_grid(sde, 16, spacing="delta")[1:-1]))
    np.testing.assert_allclose(np.diff(d), np.diff(d).mean(), rtol=1e-3, atol=1e-4)  # uniform in δ
    x = sample.euler_maruyama(LINE.score_fn(sde), jax.random.key(0), (2,), sde=sde, num_steps=8)
    assert np.all(np.isfinite(np.asarray(x)))


@pytest.mark.parametrize("name", ALL)
def test_log_sigma_training_times_on_each_schedule(name):
    sde = SCHEDULES[name]
    t_min = max(1e-3, float(sde.t_min))
    t = train.sample_times(jax.random.key(0), (20000,), sde, t_min=t_min, time_sampling="log-sigma")
    assert float(t.min()) >= t_min and float(t.max()) <= float(sde.T)
    log_sigma = jnp.log(sde.marginal_coefs(t)[1])
    lo, hi = (float(jnp.log(sde.marginal_coefs(v)[1])) for v in (t_min, sde.T))
    assert abs(float(jnp.median(log_sigma)) - (lo + hi) / 2) < 0.05 * (hi - lo)


# ----------------------------------------------------------------------------- the range of t0


@pytest.mark.parametrize("name, t0, match", [
    ("vp", 0.0, r"t0 must lie in \(0, T\] = \(0, 1.0\], got 0.0"),
    ("cosine", 1.5, r"t0 must lie in \(0, T\] = \(0, 1.0\], got 1.5"),
    ("sd-scaled-linear", 1.25, r"t0 must lie in \(0, T\] = \(0, 1.0\], got 1.25"),
    ("edm", 0.001, r"t0 must lie in \[t_min, T\] = \[0.002, 80.0\] of EDMSDE, got 0.001"),
    ("edm", 81.0, r"t0 must lie in \[t_min, T\] = \[0.002, 80.0\] of EDMSDE, got 81.0"),
])
def test_concrete_t0_outside_the_range_raises(name, t0, match):
    sde = SCHEDULES[name]
    with pytest.raises(ValueError, match=match):
        lid.flipd(lambda x, t: -x, jnp.ones(3), t0=t0, sde=sde)


def test_traced_times_outside_the_range_give_nan():
    edm = EDMSDE()
    score = lambda x, t: -x / (1 + t**2)  # noqa: E731
    f = jax.jit(lambda t: lid.flipd(score, jnp.ones(3), t0=t, sde=edm))
    assert np.isnan(f(0.001)) and np.isfinite(f(0.002)) and np.isnan(f(80.5))
    g = jax.jit(lambda s, t: lid.flipd(score, jnp.ones(3), t0=t, sde=s))  # the schedule traced too
    assert np.isnan(g(edm, 0.001)) and np.isfinite(g(edm, 0.01))


def test_sampler_grids_outside_the_range_raise():
    edm = EDMSDE()
    with pytest.raises(ValueError, match=r"t_min must lie in \[t_min, T\) = \[0.002, 80.0\) of EDMSDE, got 0.001"):
        sample.time_grid(edm, 10, t_min=0.001)
    with pytest.raises(ValueError, match=r"ts must strictly decrease within \[t_min, T\] = \[0.002, 80.0\]"):
        sample.ddim(lambda x, t: x, jax.random.key(0), (2,), sde=edm, ts=jnp.array([80.0, 1.0, 0.001]))
    with pytest.raises(ValueError, match=r"ts must strictly decrease within \(0, T\] = \(0, 1.0\]"):
        sample.euler_maruyama(lambda x, t: -x, jax.random.key(0), (2,), sde=CosineVPSDE(), ts=jnp.array([1.5, 0.1]))
    with pytest.raises(ValueError, match="spacing must be one of"):
        sample.time_grid(edm, 10, spacing="karras")
    with pytest.raises(ValueError, match="Give either ts or num_steps"):
        sample.probability_flow(lambda x, t: -x, jnp.ones(2), sde=edm, ts=jnp.array([80.0, 1.0]), num_steps=3)
