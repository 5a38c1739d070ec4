"""Training times: ``uniform`` (unchanged) and ``log-sigma`` (log σ(t) uniform), config, CLI, resume."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmh_jax import cli, train
from mmh_jax.checkpoint import CheckpointError
from mmh_jax.experiments import training
from mmh_jax.sde import VPSDE

TINY = dict(data="lollipop", n=200, model="mlp", model_kwargs={"hidden": 16, "num_layers": 2}, batch_size=16,
            steps_per_call=5, checkpoint_every=5, warmup_steps=2)


def _ks_uniform(values, lo, hi):
    """Kolmogorov–Smirnov distance of ``values`` to U(lo, hi)."""
    u = np.sort((np.asarray(values, np.float64) - lo) / (hi - lo))
    n = u.size
    return max(np.max(np.arange(1, n + 1) / n - u), np.max(u - np.arange(n) / n))


@pytest.mark.parametrize("t_min", [1e-3, 0.05])
def test_log_sigma_times_have_log_sigma_uniform(t_min):
    sde = VPSDE()
    lo, hi = (float(np.log(sde.marginal_coefs(t)[1])) for t in (t_min, sde.T))
    n = 20000  # KS critical distance at level 0.001: 1.95 / sqrt(n) = 0.014
    t = train.sample_times(jax.random.key(0), (n,), sde, t_min=t_min, time_sampling="log-sigma")
    assert t.shape == (n,) and t.dtype == jnp.float32
    assert float(t.min()) >= t_min and float(t.max()) <= sde.T
    d = _ks_uniform(np.log(np.asarray(sde.marginal_coefs(t)[1])), lo, hi)
    assert d < 0.014, d
    # the same check cannot pass for uniform times (log σ piles up near 0)
    tu = train.sample_times(jax.random.key(0), (n,), sde, t_min=t_min, time_sampling="uniform")
    assert _ks_uniform(np.log(np.asarray(sde.marginal_coefs(tu)[1])), lo, hi) > 0.3


def test_uniform_is_the_draw_of_before():
    key = jax.random.key(3)
    t = train.sample_times(key, (64,), VPSDE(), t_min=1e-3)
    np.testing.assert_array_equal(np.asarray(t), np.asarray(jax.random.uniform(key, (64,), minval=1e-3, maxval=1.0)))


def _old_train_step(eps_apply, optimizer, sde, t_min=1e-3, ema_decay=0.999):
    """The step of make_train_step before time_sampling existed (unconditional, no monitoring)."""

    def loss_fn(params, x, key):
        k_t, k_eps, _ = jax.random.split(key, 3)
        b = x.shape[0]
        t = jax.random.uniform(k_t, (b,), minval=t_min, maxval=sde.T)
        alpha, sigma = sde.marginal_coefs(t)
        eps = jax.random.normal(k_eps, x.shape, x.dtype)
        xt = alpha[:, None] * x + sigma[:, None] * eps
        return jnp.mean(jnp.sum((eps_apply(params, xt, t) - eps) ** 2, axis=1))

    def step(state, batch, key):
        k_loss, _ = jax.random.split(key)
        loss, grads = jax.value_and_grad(loss_fn)(state.params, batch["x"], k_loss)
        return train.apply_gradients(state, grads, optimizer, ema_decay=ema_decay), loss

    return step


def test_uniform_train_step_is_bit_identical_to_before():
    def eps_apply(p, x, t):
        return jnp.tanh(x @ p["w"] + t[:, None] * p["b"][None, :])

    opt = train.make_optimizer(learning_rate=1e-2, total_steps=10, warmup_steps=0)
    state = train.init_train_state({"w": jnp.eye(2) * 0.3, "b": jnp.ones(2) * 0.1}, opt)
    batch = {"x": jax.random.normal(jax.random.key(1), (32, 2))}
    new = jax.jit(train.make_train_step(eps_apply, opt, VPSDE()))
    explicit = jax.jit(train.make_train_step(eps_apply, opt, VPSDE(), time_sampling="uniform"))
    old = jax.jit(_old_train_step(eps_apply, opt, VPSDE()))
    s_new, s_exp, s_old = state, state, state
    for i in range(3):
        key = jax.random.key(10 + i)
        s_new, m = new(s_new, batch, key)
        s_exp, _ = explicit(s_exp, batch, key)
        s_old, loss_old = old(s_old, batch, key)
        assert float(m["loss"]) == float(loss_old)
    for a, b, c in zip(jax.tree_util.tree_leaves(s_new), jax.tree_util.tree_leaves(s_exp),
                       jax.tree_util.tree_leaves(s_old), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(c))
        np.testing.assert_array_equal(np.asarray(b), np.asarray(c))
    # log-sigma trains on other times: another step
    ls = jax.jit(train.make_train_step(eps_apply, opt, VPSDE(), time_sampling="log-sigma"))
    _, m_ls = ls(state, batch, jax.random.key(10))
    _, m_u = new(state, batch, jax.random.key(10))
    assert float(m_ls["loss"]) != float(m_u["loss"])


def test_unknown_time_sampling_is_refused_with_the_fix():
    with pytest.raises(ValueError, match=r"time_sampling='log_sigma'.*--time-sampling uniform .*log-sigma"):
        training.TrainConfig(time_sampling="log_sigma")
    with pytest.raises(ValueError, match=r"must be one of \('uniform', 'log-sigma'\), got 'edm'"):
        train.make_train_step(lambda p, x, t: x, train.make_optimizer(total_steps=2), VPSDE(), time_sampling="edm")
    with pytest.raises(ValueError, match=r"got 'edm'"):
        train.sample_times(jax.random.key(0), (2,), VPSDE(), time_sampling="edm")
    flow = training.TrainConfig(data="lollipop", model="flow", time_sampling="log-sigma")
    with pytest.raises(ValueError, match=r"time_sampling='log-sigma' .* not 'flow'; drop --time-sampling"):
        training.run_config(flow, np.zeros((4, 2), np.float32), None)


def test_cli_flag_reaches_the_config(tmp_path, monkeypatch, capsys):
    seen = []

    def fake_run(config, out, **kw):
        seen.append(config)
        return {"step": 1, "start": 0, "loss": 0.0, "interrupted": False, "out": out, "saved": 1}

    monkeypatch.setattr(training, "train_or_resume", fake_run)
    out = str(tmp_path / "r")
    assert cli.main(["train", "--preset", "quick", "--time-sampling", "log-sigma", "--out", out]) == 0
    assert cli.main(["train", "--preset", "quick", "--out", out]) == 0
    assert cli.main(["train", "--model", "mlp", "--out", out]) == 0  # full preset: the MLP's own steps
    assert cli.main(["train", "--model", "unet", "--data", "digits", "--out", out]) == 0
    assert [c.time_sampling for c in seen] == ["log-sigma", "uniform", "uniform", "uniform"]
    assert [c.steps for c in seen] == [300, 300, training.MLP_DEFAULTS["steps"], training.TrainConfig.steps]
    assert training.MLP_DEFAULTS["steps"] != training.TrainConfig.steps  # the MLP's default is its own
    assert cli.main(["train", "--time-sampling", "edm", "--out", out]) == 2
    assert "invalid choice: 'edm'" in capsys.readouterr().err and len(seen) == 4


def test_resume_with_another_time_sampling_is_refused_and_legacy_runs_resume(tmp_path, monkeypatch):
    out = str(tmp_path / "run")
    training.train_or_resume(training.TrainConfig(steps=5, time_sampling="log-sigma", **TINY), out, progress=False)
    with pytest.raises(CheckpointError, match=r"time_sampling: checkpoint has 'log-sigma', this run has 'uniform'"):
        training.train_or_resume(training.TrainConfig(steps=10, **TINY), out, resume=True, progress=False)
    res = training.train_or_resume(training.TrainConfig(steps=10, time_sampling="log-sigma", **TINY), out, resume=True,
                        progress=False)
    assert res["step"] == 10
    # A run saved before the option existed (no time_sampling in its config) was uniform: it resumes
    # as uniform, and is refused as log-sigma.
    legacy = str(tmp_path / "legacy")
    real = training.run_config

    def without(config, x, labels):
        d = real(config, x, labels)
        d.pop("time_sampling")
        return d

    monkeypatch.setattr(training, "run_config", without)
    training.train_or_resume(training.TrainConfig(steps=5, **TINY), legacy, progress=False)
    monkeypatch.setattr(training, "run_config", real)
    with pytest.raises(CheckpointError, match=r"time_sampling: checkpoint has None, this run has 'log-sigma'"):
        training.train_or_resume(training.TrainConfig(steps=10, time_sampling="log-sigma", **TINY), legacy, resume=True,
                      progress=False)
    assert training.train_or_resume(training.TrainConfig(steps=10, **TINY), legacy, resume=True, progress=False)["step"] == 10
