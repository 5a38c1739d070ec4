"""examples/flipd_in_train_step.py: FLIPD inside a jitted train step compiles once, reports the
same FLIPD as a direct call, and its gradient is exactly ∇dsm + lam·∇mean FLIPD."""

import importlib.util
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mmh_jax.sde import VPSDE

_PATH = Path(__file__).resolve().parents[1] / "examples" / "flipd_in_train_step.py"
_spec = importlib.util.spec_from_file_location("flipd_in_train_step", _PATH)
ex = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ex)

SDE = VPSDE()
LR = 1e-2


def _setup(width=16):
    params = ex.init_mlp(jax.random.key(0), width=width)
    batch = ex.circle(jax.random.key(1), 32)
    probe = ex.circle(jax.random.key(2), 8)
    return params, batch, probe


def test_step_compiles_once_across_steps():
    opt = optax.adam(1e-3)
    step = jax.jit(chex.assert_max_traces(ex.make_train_step(opt, SDE), n=1))
    params, _, probe = _setup()
    state = opt.init(params)
    flipds = []
    for s, (lam, t0) in enumerate([(0.0, 0.05), (0.1, 0.05), (-0.2, 0.1), (0.3, 0.02)]):
        batch = ex.circle(jax.random.key(10 + s), 32)  # new data every step
        params, state, m = step(params, state, batch, probe, jax.random.key(s), lam, t0)
        flipds.append(float(m["flipd"]))
    assert step._cache_size() == 1
    assert np.all(np.isfinite(flipds)) and len(set(flipds)) == 4
    # the trace counter is live: a new batch shape is a new trace, which it refuses
    with pytest.raises(AssertionError, match="traced"):
        step(params, state, ex.circle(jax.random.key(0), 16), probe, jax.random.key(0), 0.0, 0.05)


def test_metric_and_gradient_are_flipd():
    params, batch, probe = _setup()
    key, lam, t0 = jax.random.key(5), 0.3, 0.05
    opt = optax.sgd(LR)
    step = jax.jit(ex.make_train_step(opt, SDE, num_probes=2))
    plain, _, m0 = step(params, opt.init(params), batch, probe, key, 0.0, t0)
    reg, _, m1 = step(params, opt.init(params), batch, probe, key, lam, t0)

    k_lid = jax.random.split(key)[1]  # the step splits its key into (dsm, lid)
    flipd_fn = jax.jit(lambda p: ex.flipd_mean(p, probe, k_lid, t0, SDE, num_probes=2))
    direct, grad = jax.value_and_grad(flipd_fn)(params)
    np.testing.assert_allclose(m0["flipd"], direct, rtol=1e-6)
    np.testing.assert_allclose(m1["loss"], m1["dsm"] + lam * direct, rtol=1e-6)
    # SGD: reg - plain = -LR·lam·∇ mean FLIPD, leaf by leaf
    for r, p, g in zip(jax.tree.leaves(reg), jax.tree.leaves(plain), jax.tree.leaves(grad)):
        np.testing.assert_allclose(r - p, -LR * lam * g, rtol=1e-3, atol=1e-7)
    # the regulariser's gradient is informative: a small step along it lowers FLIPD (same probes)
    gnorm = optax.tree.norm(grad)
    assert gnorm > 1e-3
    h = 1e-2 / gnorm
    lowered = flipd_fn(jax.tree.map(lambda p, g: p - h * g, params, grad))
    assert lowered < direct - 0.5 * h * gnorm**2
