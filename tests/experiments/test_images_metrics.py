"""Experiment ``images`` without a model: the OD/DD rule on FLIPD's scale, the planted table, the findings."""

import numpy as np
import pytest

from mmh_jax.experiments.pipeline import images


def _heldout(rng, n=400):
    """Held-out images where LID_θ tracks LID* (lPCA 4..12 mapped to FLIPD ~ 3·lPCA + noise)."""
    lp = rng.integers(4, 13, n).astype(np.float64)
    return 3.0 * lp + rng.normal(0, 1.0, n), lp


def test_od_dd_can_come_out_either_way(rng):
    hf, hl = _heldout(rng)
    # four memorized samples: collapsed at a typical lPCA (OD), copy of an atom with low LID_θ (DD),
    # an atom copy whose LID_θ is typical (neither), a sample at typical LID_θ (neither); one not memorized.
    lid_theta = np.array([2.0, 5.0, 30.0, 27.0, 1.0])
    lpca = np.array([9.0, 9.0, 9.0, 9.0, 9.0])
    atom = np.array([False, True, True, False, False])
    mem = np.array([True, True, True, True, False])
    out = images.od_dd(lid_theta, lpca, atom, mem, hf, hl)
    assert out["codes"].tolist() == [1, 2, 0, 0, 0]
    assert out["neither"].tolist() == [False, False, True, True, False]
    assert out["lid_star"][1] == 0.0 and out["lid_star"][0] == pytest.approx(27.0, abs=2.0)
    # gap and small are set on held-out half A; on half B real digits are rarely called OD
    assert 0 < out["gap"] < 10 and out["small"] == pytest.approx(np.quantile(3 * 4 + 0.0, 0.5), abs=3)
    assert out["heldout_od_rate"] <= 0.12 and out["n_heldout_b"] == 200
    with pytest.raises(ValueError, match="at least 4 held-out images"):
        images.od_dd(lid_theta, lpca, atom, mem, hf[:3], hl[:3])


def test_balanced_subset():
    mem = np.array([True, False, True, True, False, False, True])
    idx = np.arange(7)
    assert images.balanced_subset(idx, mem, 4).tolist() == [0, 2, 1, 4]
    assert images.balanced_subset(idx, mem, 6).tolist() == [0, 2, 3, 1, 4, 5]
    assert images.balanced_subset(idx[:2], mem, 6).tolist() == [0, 1]


def test_planted_table_and_findings_each_way(rng):
    hf, hl = _heldout(rng)
    n_d, per = 60, 4
    # 10 unique (labels 10..19) and 10 duplicated (20..29) per-image labels, 4 samples each
    labels = np.r_[np.arange(n_d) % 10, np.repeat(np.arange(10, 30), per)].astype(np.int32)
    planted = np.r_[np.full(n_d, ""), np.where(np.repeat(np.arange(10, 30), per) < 20, "od_mem", "dd_mem")]
    mem = np.r_[np.arange(n_d) < 20, np.ones(20 * per, bool)]

    def classify(od_ok: bool):
        theta = np.where(planted == "od_mem", 3.0 if od_ok else 40.0, np.where(planted == "dd_mem", 5.0, 30.0))
        atom = planted == "dd_mem"
        return images.od_dd(theta, np.full(labels.size, 9.0), atom, mem, hf, hl)

    good = classify(True)
    table = images.planted_table(good["codes"], good["neither"], mem, planted)
    assert table == {"od_mem": {"od_mem": 40, "dd_mem": 0, "neither": 0, "not_memorized": 0},
                     "dd_mem": {"od_mem": 0, "dd_mem": 40, "neither": 0, "not_memorized": 0}}
    own_mem = np.arange(90) < 40
    det = {"own_flipd_c": np.where(own_mem, 5.0, 30.0) + rng.uniform(0, 1, 90),
           "own_flipd_u": rng.uniform(0, 1, 90), "own_mem": own_mem,
           "digit_flipd_c": np.where(mem[:n_d], 30.0, 5.0), "digit_mem": mem[:n_d],
           "uncond_flipd": rng.uniform(0, 1, 50), "uncond_mem": np.arange(50) < 2,
           "knee_value": rng.uniform(0, 1, 8), "normal_bundle": np.full(8, 63.0), "curve_mem": np.arange(8) < 4,
           "train_flipd": np.r_[np.full(10, 5.0), np.full(40, 30.0)] + rng.uniform(0, 1, 50),
           "train_duplicated": np.arange(50) < 10}
    found = {f.claim: f for f in images.findings(det, planted, good["codes"], labels, mem)}
    assert found["memorized samples of per-image labels have lower LID_θ(x | c)"].verdict == "holds"
    assert found["memorized samples of per-image labels have lower unconditional LID_θ(x)"].verdict == "inconclusive"
    assert found["memorized digit-guided samples have lower LID_θ(x | c)"].verdict == "does not hold"
    assert found["memorized unconditional samples have lower LID_θ(x)"].verdict == "inconclusive"  # 2 positives
    assert found["duplicated training images have lower LID_θ than unique ones"].verdict == "holds"
    assert found["memorized samples of a planted unique image are OD-Mem"].verdict == "holds"
    assert found["memorized samples of a planted duplicated image are DD-Mem"].verdict == "holds"
    assert found["memorized samples of a planted unique image are OD-Mem"].n_positive == 10  # labels, not samples
    # planted samples that are not copies do not count against the classification
    few = mem.copy()
    few[n_d:n_d + 4 * per] = False  # the first 4 unique labels' samples are not memorized
    found = {f.claim: f for f in images.findings(det, planted, good["codes"], labels, few)}
    assert found["memorized samples of a planted unique image are OD-Mem"].n_positive == 6
    assert found["memorized samples of a planted unique image are OD-Mem"].verdict == "inconclusive"  # 6 labels
    bad = classify(False)
    found = {f.claim: f for f in images.findings(det, planted, bad["codes"], labels, mem)}
    assert found["memorized samples of a planted unique image are OD-Mem"].verdict == "does not hold"
