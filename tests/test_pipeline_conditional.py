"""``mmh-jax run`` experiment ``conditional`` on the quick preset: metrics, files, and oracles.

Oracles: one sample's guided DDIM trajectory, rebuilt step by step in Python from the saved key with
the model's ε-network, ends at the saved sample, and both :func:`mmh_jax.lid.cfg_norm` on it and the
plain mean of ‖ε_c − ε_∅‖ over its states equal the saved CFG norm; :func:`mmh_jax.lid.flipd` called
directly equals the saved conditional and unconditional FLIPD of two samples.
"""

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmh_jax import lid
from mmh_jax.experiments.pipeline import conditional
from mmh_jax.experiments.pipeline.config import preset
from mmh_jax.trained import load

KEYS = (
    [f"{p}_{s}" for p in ("auroc", "tpr_at_1fpr") for s in conditional.SCORES]
    + [f"mean_{s}_{t}" for s in conditional.SCORES for t in ("memorized", "not_memorized")]
    + ["fraction_cond_le_uncond", "memorized_fraction", "n_samples", "n_memorized", "mean_flipd_gap",
       "guidance", "t0", "figures", "reading"]
)


@pytest.fixture(scope="module")
def result(quick_pipeline):
    _, out, all_metrics = quick_pipeline  # the session's shared quick run (tests/conftest.py)
    out = str(out)
    cfg = preset("quick", experiments=["conditional"])
    metrics = all_metrics["conditional"]
    with np.load(os.path.join(out, "conditional.npz")) as f:
        saved = dict(f)
    return cfg, out, metrics, saved, load(os.path.join(out, "models", "digits_cfg"))


def test_metrics_and_files(result):
    cfg, out, m, saved, _ = result
    n = cfg.images.n_samples
    assert set(KEYS) <= set(m)
    assert m["n_samples"] == n
    assert m["guidance"] == cfg.images.cfg_guidance  # guidance_scale is 0 in the preset
    assert 0.0 <= m["fraction_cond_le_uncond"] <= 1.0
    assert m["memorized_fraction"] == pytest.approx(saved["memorized"].mean())
    mixed = 0 < m["n_memorized"] < n
    for s in conditional.SCORES:
        assert saved[s].shape == (n,) and np.all(np.isfinite(saved[s]))
        assert m[f"n_nonfinite_{s}"] == 0
        for k in (f"auroc_{s}", f"tpr_at_1fpr_{s}"):
            assert math.isfinite(m[k]) == mixed
            if mixed:
                assert 0.0 <= m[k] <= 1.0
        assert math.isfinite(m[f"mean_{s}_not_memorized"]) == (m["n_memorized"] < n)
        assert math.isfinite(m[f"mean_{s}_memorized"]) == (m["n_memorized"] > 0)
    assert np.all(saved["cfg_norm"] >= 0)
    assert saved["samples"].shape == (n, 8, 8, 1)
    counts = np.bincount(saved["labels"], minlength=10)
    assert counts.max() - counts.min() <= 1  # balanced classes
    assert m["fraction_cond_le_uncond"] == pytest.approx(
        np.mean(saved["flipd_conditional"] <= saved["flipd_unconditional"]))
    assert m["figures"] == ["conditional_scores.png"]
    assert os.path.getsize(os.path.join(out, "conditional_scores.png")) > 0
    assert isinstance(m["reading"], str) and "FLIPD(x | c) ≤ FLIPD(x)" in m["reading"]
    if not mixed:
        assert "undefined (NaN)" in m["reading"]


def test_cfg_norm_is_the_norm_along_the_samples_own_trajectory(result):
    """Rebuild sample i's DDIM trajectory step by step (x̂₀ = (x − σ_t ε̃)/α_t, x_s = α_s x̂₀ + σ_s ε̃,
    ε̃ = ε_∅ + w(ε_c − ε_∅), from x_T = prior_sample(key)), then compare the saved CFG norm with
    lid.cfg_norm on that trajectory and with the plain mean over steps of ‖ε_c − ε_∅‖."""
    cfg, _, m, saved, model = result
    i, steps, sde = 1, cfg.images.sample_steps, model.sde
    label, null = jnp.int32(saved["labels"][i]), jnp.int32(model.num_classes)
    eps_at = jax.jit(lambda x, t, lab: model.eps_fn_for(lab)(x, t))  # one compile, labels traced
    sigma = lambda t: sde.marginal_coefs(t)[1]  # noqa: E731

    x = sde.prior_sample(jax.random.wrap_key_data(jnp.asarray(saved["key_data"][i])), model.event_shape)
    ts = np.linspace(float(sde.T), 1e-3, steps + 1).astype(np.float32)
    xs, norms = [], []
    for t, s in zip(ts[:-1], ts[1:]):
        e_c, e_u = eps_at(x, t, label), eps_at(x, t, null)
        xs.append(x)
        norms.append(float(jnp.linalg.norm(e_c - e_u)))
        e = e_u + m["guidance"] * (e_c - e_u)
        (a_t, s_t), (a_s, s_s) = sde.marginal_coefs(t), sde.marginal_coefs(s)
        x = a_s * (x - s_t * e) / a_t + s_s * e
    e_c, e_u = eps_at(x, ts[-1], label), eps_at(x, ts[-1], null)
    a, sg = sde.marginal_coefs(ts[-1])
    x_final = (x - sg * (e_u + m["guidance"] * (e_c - e_u))) / a
    np.testing.assert_allclose(np.asarray(x_final), saved["samples"][i], atol=2e-3)

    direct = lid.cfg_norm(lambda x, t: -eps_at(x, t, label) / sigma(t), lambda x, t: -eps_at(x, t, null) / sigma(t),
                          jnp.stack(xs), jnp.asarray(ts[:-1]), sde=sde)
    np.testing.assert_allclose(saved["cfg_norm"][i], float(direct), rtol=2e-3, atol=1e-4)
    np.testing.assert_allclose(saved["cfg_norm"][i], np.mean(norms), rtol=2e-3, atol=1e-4)


def test_flipd_equals_direct_calls(result):
    """FLIPD of two samples with their class and with the null class (= unconditional)."""
    cfg, _, _, saved, model = result
    direct = jax.jit(lambda x, lab: lid.flipd(model.score_fn_for(lab), x, t0=cfg.images.t0, sde=model.sde,
                                              trace="exact"))
    for i in (0, 5):
        x = jnp.asarray(saved["samples"][i])
        for name, lab in (("flipd_conditional", saved["labels"][i]), ("flipd_unconditional", model.num_classes)):
            np.testing.assert_allclose(float(direct(x, jnp.int32(lab))), saved[name][i], rtol=1e-3, atol=1e-2)


def test_metrics_reading_and_figure_with_memorized_samples(tmp_path):
    """No model: hand-made scores where the CFG norm separates perfectly, FLIPD(x | c) half-separates."""
    mem = np.array([True, True, False, False, False, False])
    scores = {
        "cfg_norm": np.array([5.0, 4.0, 1.0, 2.0, 0.5, 1.5], np.float32),
        "flipd_conditional": np.array([1.0, 9.0, 3.0, 4.0, 5.0, 6.0], np.float32),
        "flipd_unconditional": np.array([2.0, 8.0, 3.0, 5.0, 4.0, np.nan], np.float32),
    }
    m = {"n_samples": 6, "guidance": 2.0, "t0": 0.05, **conditional._score_metrics(scores, mem)}
    assert m["auroc_cfg_norm"] == 1.0 and m["tpr_at_1fpr_cfg_norm"] == 1.0
    # −FLIPD(x|c): the memorized 1.0 beats all 4 negatives, 9.0 beats none -> 4/8.
    assert m["auroc_flipd_conditional"] == pytest.approx(0.5)
    assert m["n_nonfinite_flipd_unconditional"] == 1
    assert m["fraction_cond_le_uncond"] == pytest.approx(3 / 5)  # 1<=2, 3<=3, 4<=5 of the 5 finite pairs
    assert m["mean_flipd_gap"] == pytest.approx(np.mean([1.0, -1.0, 0.0, 1.0, -1.0]))
    assert m["mean_cfg_norm_memorized"] == pytest.approx(4.5)
    assert m["mean_flipd_unconditional_not_memorized"] == pytest.approx(4.0)
    assert m["memorized_fraction"] == pytest.approx(1 / 3) and m["n_memorized"] == 2
    reading = conditional._reading(m)
    assert "Best detector: CFG norm" in reading and "60%" in reading and "undefined" not in reading
    conditional._figure(str(tmp_path / "f.png"), scores, mem, m)
    assert os.path.getsize(tmp_path / "f.png") > 0
