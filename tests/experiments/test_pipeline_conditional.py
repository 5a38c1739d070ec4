"""``mmh-jax run`` experiment ``conditional`` on the quick preset: metrics, files, and oracles.

Oracles: one sample's guided DDIM trajectory, rebuilt step by step in Python from the saved key with
the model's ε-network, ends at the saved sample, and both [`mmh_jax.lid.cfg_norm`][mmh_jax.lid.cfg_norm] on it
and the plain mean of ‖ε_c − ε_∅‖ over its states equal the saved CFG norm;
[`mmh_jax.lid.flipd`][mmh_jax.lid.flipd] called
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

KEYS = ("label", "label_text", "guidance", "t0", "n_samples", "n", "n_memorized", "mean", "findings", "figures",
        "reading")


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
    cfg, out, m, saved, model = result
    icfg = cfg.images
    n_digit, n_own = icfg.n_samples, icfg.per_image_samples * (icfg.n_duplicated + icfg.own_label_unique)
    assert set(KEYS) <= set(m)
    assert m["n"] == {"digit": n_digit, "own": n_own} and m["n_samples"] == n_digit + n_own
    assert m["guidance"] == icfg.cfg_guidance  # guidance_scale is 0 in the preset
    assert m["n_memorized"]["digit"] + m["n_memorized"]["own"] == int(saved["memorized"].sum())
    for s in conditional.SCORES:
        assert saved[s].shape == (n_digit + n_own,) and np.all(np.isfinite(saved[s]))
    assert np.all(saved["cfg_norm"] >= 0)
    assert saved["samples"].shape == (n_digit + n_own, 8, 8, 1)
    digit = saved["kind"] == 0
    counts = np.bincount(saved["labels"][digit], minlength=10)
    assert counts.max() - counts.min() <= 1 and saved["labels"][digit].max() < 10  # balanced digit classes
    own = saved["labels"][~digit]
    assert own.min() >= 10 and np.all(np.bincount(own)[own] == icfg.per_image_samples)
    # Every finding is a verdict with its n; with this few positives nothing can hold.
    assert [f["verdict"] for f in m["findings"]] and all(f["verdict"] == "inconclusive" or f["n_positive"] >= 10
                                                        for f in m["findings"])
    le = [f for f in m["findings"] if f["claim"].startswith("conditioning lowers")][0]
    assert le["effect"] == pytest.approx(np.mean(saved["flipd_conditional"] <= saved["flipd_unconditional"]))
    assert m["figures"] == ["conditional_scores.png"]
    assert os.path.getsize(os.path.join(out, "conditional_scores.png")) > 0
    assert "held-out" in m["label_text"] and m["label_text"] in m["reading"]


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


def test_findings_on_hand_made_scores_come_out_each_way(tmp_path):
    """No model: the CFG norm separates memorized per-image samples perfectly (holds), FLIPD(x | c)
    ranks them last (does not hold), and the digit-class control has 3 memorized (inconclusive)."""
    rng = np.random.default_rng(0)
    n_own, n_digit = 40, 60
    kind = np.r_[np.ones(n_own, np.int32), np.zeros(n_digit, np.int32)]
    mem = np.r_[np.arange(n_own) < 30, np.arange(n_digit) < 3]
    cfg_norm = np.where(mem, 5.0, 1.0) + rng.uniform(0, 0.5, mem.size)
    flipd_c = np.where(mem, 40.0, 10.0) + rng.uniform(0, 1, mem.size)
    flipd_u = flipd_c + 1.0
    flipd_u[::4] = flipd_c[::4] - 1.0  # FLIPD(x | c) <= FLIPD(x) at 3/4 of samples
    scores = {"cfg_norm": cfg_norm, "flipd_conditional": flipd_c, "flipd_unconditional": flipd_u}
    found = {(f.claim, f.statistic): f for f in conditional.findings(scores, mem, kind)}
    get = lambda claim: [f for (c, _), f in found.items() if c == claim][0]  # noqa: E731
    assert get("+CFG norm flags memorized samples (all guided samples)").verdict == "holds"
    assert get("−FLIPD(x | c) flags memorized samples (all guided samples)").verdict == "does not hold"
    control = get("+CFG norm flags memorized samples (digit classes (control))")
    assert control.verdict == "inconclusive" and control.n_positive == 3 and "cannot test" in control.note
    le = get("conditioning lowers LID_θ: FLIPD(x | c) ≤ FLIPD(x)")
    assert le.effect == pytest.approx(0.75) and le.verdict == "holds"
    conditional.plot_scores(str(tmp_path / "f.png"), scores, mem, kind)
    assert os.path.getsize(tmp_path / "f.png") > 0
