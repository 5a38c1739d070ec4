"""mmh_jax.verdicts: the three-way verdict rule, bootstrap intervals, AUROC and TPR oracles."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from mmh_jax import verdicts as V


def test_decide_each_way_and_the_positive_floor():
    assert V.decide(0.6, 0.9, 0.5, n_positive=10) == "holds"
    assert V.decide(0.1, 0.4, 0.5, n_positive=10) == "does not hold"
    assert V.decide(0.4, 0.6, 0.5, n_positive=10) == "inconclusive"
    assert V.decide(0.6, 0.9, 0.5, n_positive=9) == "inconclusive"  # 9 positives: never a verdict
    assert V.decide(0.5, 0.9, 0.5, n_positive=50) == "inconclusive"  # touching the threshold does not clear it
    assert V.decide(-2.0, -1.0, 0.0, direction="below", n_positive=20) == "holds"
    assert V.decide(1.0, 2.0, 0.0, direction="below", n_positive=20) == "does not hold"
    assert V.decide(float("nan"), float("nan"), 0.5, n_positive=100) == "inconclusive"
    with pytest.raises(ValueError, match="direction must be one of"):
        V.decide(0.1, 0.2, 0.0, direction="up", n_positive=20)
    with pytest.raises(ValueError, match="low <= high"):
        V.decide(0.3, 0.2, 0.0, n_positive=20)


def test_auroc_and_tpr_match_scikit_learn(rng):
    pos, neg = rng.normal(1, 1, 37).round(1), rng.normal(0, 1, 113).round(1)  # rounded: ties
    labels = np.r_[np.ones(pos.size), np.zeros(neg.size)]
    assert V.auroc(pos, neg) == pytest.approx(roc_auc_score(labels, np.r_[pos, neg]))
    # TPR at 1 % FPR: one negative of 113 may score above the threshold
    thr = np.sort(neg)[::-1][1]
    assert V.tpr_at_fpr(pos, neg, 0.01) == pytest.approx(np.mean(pos > thr))
    assert np.isnan(V.auroc([], neg)) and np.isnan(V.tpr_at_fpr(pos, []))


def test_bootstrap_interval_covers_and_is_reproducible(rng):
    x = rng.normal(3.0, 1.0, 400)
    lo, hi = V.bootstrap_interval(np.mean, x, seed=1)
    assert lo < 3.0 < hi and hi - lo == pytest.approx(2 * 1.96 / 20, rel=0.25)
    assert (lo, hi) == V.bootstrap_interval(np.mean, x, seed=1)
    assert all(np.isnan(V.bootstrap_interval(np.mean, np.zeros(0))))
    # stratified: each group keeps its size, so an AUROC of separated groups stays 1 in every resample
    assert V.bootstrap_interval(V.auroc, np.ones(5) + 1, np.zeros(7)) == (1.0, 1.0)


def test_wilson_interval():
    lo, hi = V.wilson_interval(5, 1000)
    assert lo < 0.005 < hi and lo > 0
    assert V.wilson_interval(0, 10)[0] == 0.0 and all(np.isnan(V.wilson_interval(0, 0)))


def test_finding_each_verdict_from_data(rng):
    strong = V.finding("c", "AUROC", V.auroc, rng.normal(3, 1, 30), rng.normal(0, 1, 100), threshold=0.5)
    reversed_ = V.finding("c", "AUROC", V.auroc, rng.normal(-3, 1, 30), rng.normal(0, 1, 100), threshold=0.5)
    noise = V.finding("c", "AUROC", V.auroc, rng.normal(0, 1, 30), rng.normal(0, 1, 100), threshold=0.5)
    few = V.finding("c", "AUROC", V.auroc, rng.normal(3, 1, 3), rng.normal(0, 1, 100), threshold=0.5)
    assert [f.verdict for f in (strong, reversed_, noise, few)] == ["holds", "does not hold", "inconclusive",
                                                                     "inconclusive"]
    assert few.note == "fewer than 10 positives" and (few.n_positive, few.n_negative) == (3, 100)
    assert "— holds" in strong.text() and "n = 30 vs 100" in strong.text()
    assert strong.row()["verdict"] == "holds" and V.Finding(**strong.asdict()) == strong
