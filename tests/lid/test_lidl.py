"""LIDL (mmh_jax.lid.lidl) against closed-form densities, and the vmapped ensemble training."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmh_jax import lid, train
from mmh_jax.data.synthetic import random_isometry
from mmh_jax.models import Flow, make_nll_loss

DELTAS = np.geomspace(0.01, 0.1, 8).astype(np.float32)


def _subspace_log_prob(basis):
    """Exact log p_δ of N(0, B Bᵀ) (a d-dim subspace of R^D, unit variance along it) blurred by N(0, δ²I):
    covariance B Bᵀ + δ² I, eigenvalues 1 + δ² (d times) and δ² (D − d times)."""
    D, d = basis.shape

    def log_prob(delta, x):
        t = basis.T @ x                       # coordinates along the subspace
        r2 = jnp.sum(x * x) - jnp.sum(t * t)  # squared distance to it
        v_in, v_out = 1.0 + delta**2, delta**2
        return -0.5 * (jnp.sum(t * t) / v_in + r2 / v_out + d * jnp.log(2 * jnp.pi * v_in)
                       + (D - d) * jnp.log(2 * jnp.pi * v_out))

    return log_prob


@pytest.mark.parametrize("d", [0, 1, 2, 4, 5])
def test_lidl_on_exact_gaussian_densities_of_a_subspace_gives_its_dimension(d):
    """Oracle independent of any training. On the subspace, log p_δ = c − (D − d) log δ − (d/2) log(1 + δ²)
    − ‖t‖²/(2(1 + δ²)); the last two terms bend the line by at most about (d + ‖t‖²)·δ²_max < 0.05
    here, and the float64 slope of exactly these terms is matched to 2e-3."""
    D = 5
    rng = np.random.default_rng(d)
    basis = jnp.asarray(random_isometry(rng, D, d) if d else np.zeros((D, 0)), jnp.float32)
    t = rng.normal(size=(32, d)).astype(np.float32) * 0.5
    xs = jnp.asarray(t @ np.asarray(basis).T if d else np.zeros((32, D), np.float32))
    log_prob = _subspace_log_prob(basis)
    deltas = jnp.asarray(DELTAS)
    est = jax.jit(jax.vmap(lambda x: lid.lidl(log_prob, deltas, x, deltas=deltas)))(xs)
    np.testing.assert_allclose(est, d, atol=0.05)
    # The exact slope for these δ: −(D − d) plus the small curvature terms, computed in float64.
    u = np.log(DELTAS.astype(np.float64))
    for i in range(3):
        tt = float(np.sum(t[i] ** 2)) if d else 0.0
        lp = -(D - d) * u - 0.5 * d * np.log1p(np.exp(2 * u)) - 0.5 * tt / (1 + np.exp(2 * u))
        want = D + np.polyfit(u, lp, 1)[0]
        assert float(est[i]) == pytest.approx(want, abs=2e-3)


def test_lidl_accepts_any_stacked_pytree_and_default_deltas():
    basis = jnp.eye(3)[:, :1]
    log_prob = _subspace_log_prob(basis)
    params = {"delta": jnp.asarray(DELTAS), "unused": jnp.zeros((8, 2))}
    got = lid.lidl(lambda p, x: log_prob(p["delta"], x), params, jnp.array([0.3, 0.0, 0.0]))  # default deltas
    assert got.shape == () and got.dtype == jnp.float32
    assert float(got) == pytest.approx(1.0, abs=0.05)


def test_lidl_bad_inputs_name_the_argument():
    x = jnp.zeros(2)
    fn = _subspace_log_prob(jnp.eye(2)[:, :1])
    with pytest.raises(ValueError, match=r"deltas must hold at least 2 noise scales.*\(1,\)"):
        lid.lidl(fn, jnp.ones(1), x, deltas=jnp.ones(1))
    with pytest.raises(ValueError, match=r"deltas must be positive noise scales, got \[0.0, 0.1\]"):
        lid.lidl(fn, jnp.ones(2), x, deltas=jnp.array([0.0, 0.1]))
    with pytest.raises(ValueError, match=r"params must be stacked with a leading axis of len\(deltas\) = 8.*\(3,\)"):
        lid.lidl(fn, jnp.ones(3), x, deltas=DELTAS)
    with pytest.raises(TypeError, match="x must have a floating-point dtype, got dtype int32"):
        lid.lidl(fn, jnp.asarray(DELTAS), jnp.zeros(2, jnp.int32), deltas=DELTAS)


@pytest.mark.slow  # ~32 s on 2 busy cores; .ci/run runs it after the default suite
def test_vmapped_ensemble_training_equals_members_trained_one_by_one():
    """make_ensemble_step: member m of the vmapped run == train_step(state_m, {**batch, delta_m}, fold_in(key, m))
    run alone through the same make_train_loop (same batches, same keys)."""
    flow = Flow(dim=2, num_coupling=2, hidden=8, num_bins=4)
    deltas = jnp.array([0.01, 0.05, 0.2])
    opt = train.make_optimizer(learning_rate=1e-2, total_steps=12, warmup_steps=2)
    keys = jax.random.split(jax.random.key(0), 3)
    params = jax.vmap(lambda k: flow.init(k, jnp.zeros(2), method=Flow.log_prob))(keys)
    step = train.make_loss_train_step(make_nll_loss(flow), opt, ema_decay=0.9)
    data = jax.random.normal(jax.random.key(1), (64, 2))
    base = jax.random.key(2)

    loop = train.make_train_loop(train.make_ensemble_step(step, {"delta": deltas}), batch_size=16, steps_per_call=6)
    state = train.init_ensemble_state(params, opt)
    for _ in range(2):
        state, metrics = loop(state, data, None, None, base)
    assert metrics["loss"].shape == (6, 3) and int(state.step) == 12

    @jax.jit  # one compile for every member: the member's delta and index are traced
    def train_alone(params_m, delta_m, m):
        def member_step(s, batch, key):
            return step(s, {**batch, "delta": delta_m}, jax.random.fold_in(key, m))

        one = train.make_train_loop(member_step, batch_size=16, steps_per_call=12)
        return one(train.init_train_state(params_m, opt), data, None, None, base)

    for m in range(3):
        alone, m_metrics = train_alone(jax.tree.map(lambda a: a[m], params), deltas[m], m)
        for got, want in zip(jax.tree.leaves(jax.tree.map(lambda a: a[m], (state.params, state.ema_params))),
                             jax.tree.leaves((alone.params, alone.ema_params))):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(metrics["loss"][:, m], m_metrics["loss"][6:], rtol=1e-4, atol=1e-5)
    # The members differ (different noise and keys): the vmapped axis is not a broadcast copy.
    w = jax.tree.leaves(state.params)[0]
    assert not np.allclose(w[0], w[1])


def test_make_ensemble_step_rejects_mismatched_member_arrays():
    step = train.make_loss_train_step(lambda p, b, k: jnp.sum(p**2), train.make_optimizer(total_steps=2))
    with pytest.raises(ValueError, match="member_batch entries must share one leading"):
        train.make_ensemble_step(step, {"delta": jnp.ones(3), "other": jnp.ones(2)})


@pytest.mark.slow
@pytest.mark.parametrize("data", ["lollipop", "torus_circle"])
def test_default_lidl_run_recovers_per_component_lid(data, tmp_path):
    """Acceptance (minutes): `mmh-jax train --model lidl` with default settings, then LIDL and the flow
    Jacobian (τ = −3 and its plateau) on 600 training points: every component's mean within 0.5 of the
    true LID (lollipop: disk 2, stick 1, point 0; torus_circle: torus 2, circle 1)."""
    from mmh_jax.experiments import model_lid, training

    out = str(tmp_path / "run")
    training.train_or_resume(training.preset("full", model="lidl", data=data), out, progress=False)
    for estimator, keys in (("lidl", ("lid",)), ("flow-jacobian", ("lid", "lid_plateau"))):
        lid_dir = tmp_path / estimator  # --out is the directory lid fills: lid.npz inside
        model_lid.run(model_lid.preset("full", checkpoint=out, estimator=estimator, n=600), str(lid_dir),
                      progress=False)
        with np.load(lid_dir / "lid.npz") as f:
            for key in keys:
                for c in np.unique(f["component"]):
                    sel = f["component"] == c
                    truth = float(f["truth"][sel][0])
                    assert abs(float(np.mean(f[key][sel])) - truth) < 0.5, (estimator, key, int(c), truth)
