"""``mmh-jax run`` experiment ``mitigation`` on the quick preset: metrics, files, and oracles.

The quick model is barely trained, so the numbers are not findings; the tests check the structure
and two oracles: the λ = 0 samples are plain DDIM samples drawn with the same keys (the guidance
adds exactly nothing), and the conditional baseline (embedding as trained) is plain CFG DDIM.
"""

import math
import os

import jax
import numpy as np
import pytest

from mmh_jax import sample
from mmh_jax.experiments.pipeline.config import preset
from mmh_jax.trained import load

EMBEDDING_KEYS = ("memorized_fraction_before", "memorized_fraction_after", "quality_before", "quality_after",
                  "flipd_late_before", "flipd_late_after", "late_t", "guidance")


@pytest.fixture(scope="module")
def result(quick_pipeline):
    _, out, all_metrics = quick_pipeline  # the session's shared quick run (tests/conftest.py)
    out = str(out)
    cfg = preset("quick", experiments=["mitigation"])
    with np.load(os.path.join(out, "mitigation.npz")) as f:
        saved = dict(f)
    return cfg, out, all_metrics["mitigation"], saved, load(os.path.join(out, "models", "digits_cfg"))


def _check_quality(q):
    assert set(q) == {"precision", "recall"}
    assert all(0.0 <= v <= 1.0 for v in q.values())


def test_metrics_and_files(result):
    cfg, out, m, saved, model = result
    mc = cfg.mitigation
    lams, n, steps = list(mc.lambdas), mc.n_samples, mc.sample_steps
    shape = tuple(model.event_shape)
    assert m["lambdas"] == lams and m["n_samples"] == n
    assert len(m["memorized_fraction"]) == len(m["quality"]) == len(m["mean_flipd"]) == len(lams)
    for q in m["quality"]:
        _check_quality(q)
    assert all(math.isfinite(v) for v in m["mean_flipd"])
    np.testing.assert_allclose(m["memorized_fraction"], saved["memorized"].mean(axis=1))
    # λ is relative to the median ‖s‖/‖∇FLIPD‖ over the unguided states
    assert saved["unit_ratios"].shape == (n, steps)
    assert m["lambda_unit"] > 0 and m["lambda_unit"] == pytest.approx(float(np.median(saved["unit_ratios"])), rel=1e-5)
    np.testing.assert_allclose(m["lambda_raw"], np.asarray(lams) * m["lambda_unit"], rtol=1e-6)

    e = m["embedding"]
    assert set(EMBEDDING_KEYS) <= set(e)
    for k in ("memorized_fraction_before", "memorized_fraction_after"):
        assert 0.0 <= e[k] <= 1.0
    _check_quality(e["quality_before"]), _check_quality(e["quality_after"])
    assert e["memorized_fraction_before"] == pytest.approx(saved["embedding_memorized_before"].mean())
    assert e["memorized_fraction_after"] == pytest.approx(saved["embedding_memorized_after"].mean())
    assert e["guidance"] == mc.cfg_guidance
    grid = np.asarray(sample.time_grid(model.sde, steps))
    assert e["late_t"] == pytest.approx(grid[np.argmin(np.abs(grid - mc.late_t))])
    assert math.isfinite(e["flipd_late_before"]) and math.isfinite(e["flipd_late_after"])

    assert saved["samples"].shape == (len(lams), n, *shape)
    assert np.all(np.isfinite(saved["samples"]))
    for k in ("calibrated_l2", "memorized", "nearest", "flipd"):
        assert saved[k].shape == (len(lams), n)
    for k in ("embedding_samples_before", "embedding_samples_after"):
        assert saved[k].shape == (n, *shape) and np.all(np.isfinite(saved[k]))
    assert saved["embedding_labels"].shape == (n,)
    assert set(np.unique(saved["embedding_labels"])) <= set(range(model.num_classes))

    assert m["figures"] == ["mitigation_tradeoff.png"]
    with open(os.path.join(out, "mitigation_tradeoff.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert "memorized" in m["reading"] and "precision" in m["reading"]


def test_lambda_zero_samples_are_plain_ddim_samples(result):
    cfg, _, m, saved, model = result
    steps = cfg.mitigation.sample_steps
    keys = jax.random.wrap_key_data(saved["prior_key_data"])
    plain = jax.jit(jax.vmap(lambda k: sample.ddim(model.eps_fn_for(None), k, model.event_shape, sde=model.sde,
                                                   num_steps=steps)))(keys)
    i = m["lambdas"].index(0.0)
    scale = max(1.0, float(np.abs(plain).max()))
    np.testing.assert_allclose(saved["samples"][i], plain, rtol=1e-4, atol=1e-5 * scale)
    for j, lam in enumerate(m["lambdas"]):
        if lam != 0.0:  # same noises and probes, only λ differs: guidance moves the samples
            assert not np.allclose(saved["samples"][j], plain, atol=1e-3)


def test_embedding_baseline_is_plain_cfg_sampling(result):
    cfg, _, _, saved, model = result
    steps, w = cfg.mitigation.sample_steps, cfg.mitigation.cfg_guidance
    keys = jax.random.wrap_key_data(saved["embedding_prior_key_data"])

    def one(k, label):
        eps = sample.guided_eps_fn(model.eps_fn_for(label), model.eps_fn_for(None), w)
        return sample.ddim(eps, k, model.event_shape, sde=model.sde, num_steps=steps)

    plain = np.asarray(jax.jit(jax.vmap(one))(keys, saved["embedding_labels"]))
    # float32 rounding (one batched CFG call vs two; 4 devices vs 1), on the scale of the samples
    scale = max(1.0, float(np.abs(plain).max()))
    np.testing.assert_allclose(saved["embedding_samples_before"], plain, rtol=1e-4, atol=1e-5 * scale)
