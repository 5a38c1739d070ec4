"""``mmh-jax run`` experiment ``mitigation``: the verdict logic on hand-made arrays, and the quick preset.

The verdict (`mitigation.judge`) is pure and tested on arrays built so that it must come out
``holds``, ``does not hold`` and ``inconclusive`` for each of its reasons. The quick model is barely
trained, so its numbers are not findings; those tests check the structure and two oracles: the λ = 0
samples are plain CFG DDIM samples drawn with the same keys and labels (the guidance adds exactly
nothing), and the conditional baseline (embedding as trained) is plain CFG DDIM.
"""

import math
import os
import types

import jax
import numpy as np
import pytest

from mmh_jax import sample, verdicts
from mmh_jax.experiments.pipeline import mitigation
from mmh_jax.experiments.pipeline.config import preset
from mmh_jax.trained import load

EMBEDDING_KEYS = ("memorized_fraction_before", "memorized_fraction_after", "memorized_interval_before",
                  "memorized_interval_after", "memorized_difference", "quality_before", "quality_after",
                  "quality_within", "flipd_late_before", "flipd_late_after", "late_t", "guidance", "n_samples")
Q = {"precision": 0.6, "recall": 0.5, "distance": 1.0}


def _mem(n, before, after, seed=0):
    """(2, n) bool: ``before`` memorized at the reference, of which ``before - after`` stop being so."""
    m = np.zeros((2, n), bool)
    m[0, :before] = True
    m[1, :after] = True
    perm = np.random.default_rng(seed).permutation(n)
    return m[:, perm]


def _grid(n, counts):
    """(L, n) bool, nested: the samples memorized at level i are the first counts[i] of the reference's."""
    m = np.zeros((len(counts), n), bool)
    for i, c in enumerate(counts):
        m[i, :c] = True
    return m


# ----------------------------------------------------------------------------- the verdict, pure


def test_holds_names_the_smallest_lambda_with_a_fall_and_quality():
    mem = _grid(100, [60, 58, 45, 30, 5])  # λ=0.01: 2 changed (too few); 0.02: 15; 0.05: 30; 0.1: 55
    q = [Q, Q, dict(Q, precision=0.58), dict(Q, recall=0.9), dict(Q, precision=0.1)]
    j = mitigation.judge(["λ=0", "λ=0.01", "λ=0.02", "λ=0.05", "λ=0.1"], mem, q, claim="guidance lowers memorization")
    f = j["finding"]
    assert (j["star"], j["reported"], f.verdict) == (2, 2, "holds")
    assert (f.n_positive, f.n_negative) == (60, 40)
    assert f.effect == pytest.approx(-0.15) and f.high < 0 and f.direction == "below" and f.threshold == 0
    assert "λ=0.02" in f.statistic and "quality within 10% of λ=0 at λ=0.02" in f.note
    assert j["changed"] == [0, 2, 15, 30, 55]
    assert j["quality_within"] == [True, True, True, True, False]
    assert j["best"] == 3  # the lowest memorized fraction with quality in the band
    assert j["fraction"] == pytest.approx([0.6, 0.58, 0.45, 0.3, 0.05])
    for (lo, hi), p in zip(j["fraction_interval"], j["fraction"]):
        assert lo <= p <= hi
    assert "holds" in f.text() and "n = 60 vs 40" in f.text()


def test_does_not_hold_when_quality_is_off_at_every_lambda():
    mem = _grid(100, [60, 40, 10])
    q = [Q, dict(Q, precision=0.5), dict(Q, distance=1.2)]  # 0.5 < 0.9·0.6; 1.2 > 1.0 + 10%
    j = mitigation.judge(["λ=0", "λ=0.05", "λ=0.1"], mem, q, claim="c")
    f = j["finding"]
    assert j["star"] is None and j["best"] is None and f.verdict == "does not hold"
    assert f.high < 0  # memorization does fall, only not where quality holds
    assert "quality leaves the 10% band at every setting" in f.note and "precision 0.50 < 0.9×0.60" in f.note
    assert "memorization falls (by its interval) from λ=0.05 on" in f.note


def test_does_not_hold_when_memorization_rises_where_quality_holds():
    m = np.zeros((2, 100), bool)
    m[0, :20] = True
    m[1, :50] = True
    j = mitigation.judge(["λ=0", "λ=0.1"], m, [Q, Q], claim="c")
    assert j["finding"].verdict == "does not hold" and j["finding"].low > 0


def test_inconclusive_with_few_positives_or_few_changed_samples():
    # 6 memorized at λ = 0, all gone: a fall by its interval, but fewer than 10 positives
    j = mitigation.judge(["λ=0", "λ=0.1"], _mem(100, 6, 0), [Q, Q], claim="c")
    assert j["finding"].verdict == "inconclusive" and j["finding"].n_positive == 6
    assert "only 6 memorized samples" in j["finding"].note
    # 50 positives, 4 stop being memorized: the percentile interval excludes 0, the rule does not count it
    mem = _mem(100, 50, 46)
    j = mitigation.judge(["λ=0", "λ=0.01"], mem, [Q, Q], claim="c")
    assert j["difference"][1][2] < 0 and j["changed"] == [0, 4]
    assert j["star"] is None and j["finding"].verdict == "inconclusive"
    assert "rests on 4 samples whose label changed" in j["finding"].note
    # no change at all: the interval is [0, 0], neither below nor above
    j = mitigation.judge(["λ=0", "λ=0.01"], _mem(100, 50, 50), [Q, Q], claim="c")
    assert j["finding"].verdict == "inconclusive"


def test_the_bootstrap_is_paired():
    # Every sample keeps its label except 12 that stop being memorized: the paired interval is tight
    # and below 0; resampling the two levels independently would straddle 0 at this size.
    mem = _mem(200, 100, 88)
    j = mitigation.judge(["a", "b"], mem, [Q, Q], claim="c")
    lo, hi = j["difference"][1][1:]
    assert hi < 0 and hi - lo < 0.1
    ind = verdicts.bootstrap_interval(lambda a, b: b.mean() - a.mean(), mem[0], mem[1])
    assert ind[0] < ind[1] and ind[1] > 0 > ind[0]
    assert j["finding"].verdict == "holds"


def test_two_level_note_and_errors():
    j = mitigation.judge(["trained", "optimised"], _mem(80, 60, 5), [Q, dict(Q, distance=2.0)], claim="c")
    assert j["finding"].verdict == "does not hold"
    assert j["finding"].note.startswith("quality leaves the 10% band at optimised (distance 2.00 > 1.00 + 10%), "
                                        "although memorization falls")
    with pytest.raises(ValueError, match="need"):
        mitigation.judge(["a"], np.zeros((1, 5), bool), [Q], claim="c")
    with pytest.raises(ValueError, match="need"):
        mitigation.judge(["a", "b"], np.zeros((3, 5), bool), [Q, Q], claim="c")


def test_quality_within():
    assert mitigation.quality_within(Q, Q) == (True, "")
    better = {"precision": 0.9, "recall": 0.9, "distance": 0.1}
    assert mitigation.quality_within(better, Q)[0]
    edge = {"precision": 0.54, "recall": 0.45, "distance": 1.1}  # exactly on the band: within
    assert mitigation.quality_within(edge, Q, 0.1)[0]
    ok, why = mitigation.quality_within(dict(Q, recall=float("nan")), Q)
    assert not ok and why.startswith("recall nan")
    # a negative reference distance (the unbiased estimate near 0): the band is |d0|·tol wide
    assert mitigation.quality_within(dict(Q, distance=-0.09), dict(Q, distance=-0.1))[0]
    assert not mitigation.quality_within(dict(Q, distance=-0.08), dict(Q, distance=-0.1))[0]


def _fake_setup():
    # 3 digit classes, labels 3 and 4 name distinct images of digits 2 and 0; held-out 10 / 20 / 6
    held = np.concatenate([np.full(10, 0), np.full(20, 1), np.full(6, 2)]).astype(np.int32)
    return types.SimpleNamespace(
        model=types.SimpleNamespace(num_classes=5), digit_classes=3,
        unique_x=np.arange(4 * 2, dtype=np.float32).reshape(4, 2), unique_labels=np.array([3, 1, 4, 0]),
        unique_digits=np.array([2, 1, 0, 0]), own_label=np.array([True, False, True, False]),
        duplicated=np.array([True, False, False, False]),
        heldout_x=np.arange(held.size, dtype=np.float32)[:, None], heldout_labels=held)


def test_sample_labels_and_reference_set():
    s = _fake_setup()
    assert mitigation.sample_labels(s, "duplicated", 5, 0).tolist() == [3] * 5
    assert mitigation.sample_labels(s, "own", 5, 0).tolist() == [3, 4, 3, 4, 3]
    assert sorted(mitigation.sample_labels(s, "digit", 6, 0).tolist()) == [0, 0, 1, 1, 2, 2]
    assert mitigation.sample_labels(s, "null", 3, 0).tolist() == [5, 5, 5]
    with pytest.raises(ValueError, match="labels must be one of"):
        mitigation.sample_labels(s, "prompts", 3, 0)
    # labels 3, 4 → digits 2, 0 equally often: class 2 has 6 held-out digits, so 6 of each
    ref = mitigation.reference_set(s, np.array([3, 4, 3, 4]), 0)
    digits = s.heldout_labels[ref[:, 0].astype(int)]
    assert np.bincount(digits, minlength=3).tolist() == [6, 0, 6]
    # twice as many 0s as 1s asked for: 10 zeros allow 5 ones
    ref = mitigation.reference_set(s, np.array([0, 0, 1]), 0)
    assert np.bincount(s.heldout_labels[ref[:, 0].astype(int)], minlength=3).tolist() == [10, 5, 0]
    assert mitigation.reference_set(s, np.array([5, 5]), 0).shape == s.heldout_x.shape  # null: all


# ----------------------------------------------------------------------------- the quick preset


@pytest.fixture(scope="module")
def result(quick_pipeline):
    _, out, all_metrics = quick_pipeline  # the session's shared quick run (tests/conftest.py)
    out = str(out)
    cfg = preset("quick", experiments=["mitigation"])
    with np.load(os.path.join(out, "mitigation.npz")) as f:
        saved = dict(f)
    return cfg, out, all_metrics["mitigation"], saved, load(os.path.join(out, "models", "digits_cfg"))


def _check_quality(q):
    assert set(q) == {"precision", "recall", "distance"}
    assert 0.0 <= q["precision"] <= 1.0 and 0.0 <= q["recall"] <= 1.0 and math.isfinite(q["distance"])


def test_metrics_and_files(result):
    cfg, out, m, saved, model = result
    mc = cfg.mitigation
    lams, n, steps = list(mc.lambdas), mc.n_samples, mc.sample_steps
    shape = tuple(model.event_shape)
    assert m["lambdas"] == lams and m["n_samples"] == n and m["labels"] == mc.labels
    for k in ("memorized_fraction", "memorized_interval", "memorized_difference", "quality", "quality_within",
              "mean_flipd", "fraction_flipd_above_D", "named_nearest_fraction"):
        assert len(m[k]) == len(lams), k
    for q in m["quality"]:
        _check_quality(q)
    assert all(math.isfinite(v) for v in m["mean_flipd"])
    np.testing.assert_allclose(m["memorized_fraction"], saved["memorized"].mean(axis=1))
    np.testing.assert_allclose(m["fraction_flipd_above_D"], (saved["flipd"] > m["ambient_dim"]).mean(axis=1))
    assert m["ambient_dim"] == int(np.prod(shape))
    # λ is relative to the median ‖s‖/‖∇FLIPD‖ over the unguided states
    assert saved["unit_ratios"].shape == (n, steps)
    assert m["lambda_unit"] > 0 and m["lambda_unit"] == pytest.approx(float(np.median(saved["unit_ratios"])), rel=1e-5)
    np.testing.assert_allclose(m["lambda_raw"], np.asarray(lams) * m["lambda_unit"], rtol=1e-6)
    # the guided samples cycle through the per-image labels of the duplicated images
    np.testing.assert_array_equal(saved["labels"], np.resize(np.sort(np.unique(saved["labels"])), n))
    assert np.all(saved["labels"] >= 10) and np.unique(saved["labels"]).size == cfg.images.n_duplicated

    # findings: both carry n, an interval and a verdict; the label's false-positive rate is in the reading
    assert len(m["findings"]) == 2
    for f in m["findings"]:
        assert f["verdict"] in verdicts.VERDICTS and f["direction"] == "below" and f["threshold"] == 0
        assert f["n_positive"] + f["n_negative"] in (n, mc.embedding_samples)
    assert m["findings"][0]["n_positive"] == int(saved["memorized"][0].sum())
    assert m["label_text"] in m["reading"] and m["label"]["threshold"] == pytest.approx(float(saved["threshold"]))
    star = m["lambda_star"]  # None is written as null, read back as NaN
    assert star is None or star != star or star in lams

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
    ne = mc.embedding_samples
    for k in ("embedding_samples_before", "embedding_samples_after"):
        assert saved[k].shape == (ne, *shape) and np.all(np.isfinite(saved[k]))
    assert saved["embedding_labels"].shape == (ne,)
    assert set(np.unique(saved["embedding_labels"])) <= set(np.unique(saved["labels"]))

    assert m["figures"] == ["mitigation_tradeoff.png"]
    with open(os.path.join(out, "mitigation_tradeoff.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert "memorized" in m["reading"] and "precision" in m["reading"]


def _plain_cfg(model, keys, labels, w, steps):
    def one(k, label):
        eps = sample.guided_eps_fn(model.eps_fn_for(label), model.eps_fn_for(None), w)
        return sample.ddim(eps, k, model.event_shape, sde=model.sde, num_steps=steps)

    return np.asarray(jax.jit(jax.vmap(one))(keys, labels))


def test_lambda_zero_samples_are_plain_cfg_samples(result):
    cfg, _, m, saved, model = result
    mc = cfg.mitigation
    keys = jax.random.wrap_key_data(saved["prior_key_data"])
    plain = _plain_cfg(model, keys, saved["labels"], mc.cfg_guidance, mc.sample_steps)
    i = m["lambdas"].index(0.0)
    # float32 rounding (one batched CFG call vs two), on the scale of the samples
    scale = max(1.0, float(np.abs(plain).max()))
    np.testing.assert_allclose(saved["samples"][i], plain, rtol=1e-4, atol=1e-5 * scale)
    for j, lam in enumerate(m["lambdas"]):
        if lam != 0.0:  # same noises and probes, only λ differs: guidance moves the samples
            assert not np.allclose(saved["samples"][j], plain, atol=1e-3)


def test_embedding_baseline_is_plain_cfg_sampling(result):
    cfg, _, _, saved, model = result
    mc = cfg.mitigation
    keys = jax.random.wrap_key_data(saved["embedding_prior_key_data"])
    plain = _plain_cfg(model, keys, saved["embedding_labels"], mc.cfg_guidance, mc.sample_steps)
    scale = max(1.0, float(np.abs(plain).max()))
    np.testing.assert_allclose(saved["embedding_samples_before"], plain, rtol=1e-4, atol=1e-5 * scale)
