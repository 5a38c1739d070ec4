"""The toy's findings: groups defined without LID_θ, each claim with n, interval and verdict."""

import math

import numpy as np
import pytest

from mmh_jax import verdicts
from mmh_jax.experiments.pipeline import toy


def _arrays(*, n_copies=20, copy_lid=0.1, novel_lid=1.0, seed=0):
    """Hand-made samples: ``n_copies`` near-copies of isolated training points, 200 circle samples
    that copy nothing, 30 samples at the atom."""
    rng = np.random.default_rng(seed)
    lid = np.concatenate([rng.normal(copy_lid, 0.1, n_copies), rng.normal(novel_lid, 0.1, 200),
                          rng.normal(0.0, 0.1, 30)])
    star = np.concatenate([np.ones(n_copies + 200), np.zeros(30)]).astype(np.float32)
    ratio = np.concatenate([np.full(n_copies, 0.05), rng.uniform(0.4, 1.0, 200), np.full(30, 0.01)])
    iso = np.concatenate([np.ones(n_copies, bool), rng.random(200) < 0.2, np.zeros(30, bool)])
    return lid, star, ratio, iso


def _by_claim(found):
    return {f.claim.split(" ")[0] + " " + f.statistic: f for f in found}


def test_findings_hold_on_a_memorizing_model():
    lid, star, ratio, iso = _arrays()
    found = toy.findings(lid, star, ratio, iso, gap=0.5, small=0.5)
    assert len(found) == 6
    assert [f.verdict for f in found] == ["holds"] * 6, [f.text() for f in found]
    od, dd, copies, auroc, atom, novel = found
    assert od.n_positive == 20 and od.effect == pytest.approx(20 / 250) and od.n_negative == 230
    assert dd.n_positive == 30
    assert copies.effect == pytest.approx(1.0) and copies.n_positive == 20 and copies.n_negative == 200
    assert auroc.statistic == "AUROC of −LID_θ" and auroc.effect == pytest.approx(1.0)
    assert (auroc.n_positive, auroc.n_negative) == (20, 200)
    assert atom.direction == "below" and atom.effect < 0.2 and atom.n_positive == 30
    assert novel.n_positive == 200
    for f in found:
        assert f.low <= f.effect <= f.high and f.verdict in f.text()


def test_findings_do_not_hold_where_copies_are_not_low_dimensional():
    # the copies of isolated points sit *above* the rest of the circle, and the circle reads 2
    lid, star, ratio, iso = _arrays(copy_lid=2.6, novel_lid=2.0)
    found = toy.findings(lid, star, ratio, iso, gap=0.5, small=0.5)
    od, _, _, auroc, _, novel = found
    assert od.n_positive == 0 and od.verdict == "inconclusive"  # no OD-Mem at all
    assert auroc.effect < 0.05 and auroc.verdict == "does not hold"
    assert novel.verdict == "does not hold"


def test_findings_are_inconclusive_with_few_copies():
    lid, star, ratio, iso = _arrays(n_copies=3)
    found = toy.findings(lid, star, ratio, iso, gap=0.5, small=0.5)
    od, _, copies, auroc, atom, _ = found
    assert auroc.n_positive == 3 and auroc.effect == pytest.approx(1.0)
    assert auroc.verdict == "inconclusive" and "fewer than 10 positives" in auroc.text()
    assert od.verdict == copies.verdict == "inconclusive"
    assert atom.verdict == "holds"


def test_groups_are_defined_without_lid_theta():
    lid, star, ratio, iso = _arrays()
    g1 = toy.groups(lid, star, ratio, iso, gap=0.5, small=0.5)
    g2 = toy.groups(lid + 5.0, star, ratio, iso, gap=0.5, small=0.5)
    for name in ("atom", "circle", "copy", "isolated_copy", "novel"):
        np.testing.assert_array_equal(g1[name], g2[name])
    assert int(g1["isolated_copy"].sum()) == 20 and int(g1["novel"].sum()) == 200


def test_isolated_points_and_copy_ratio():
    ang = np.array([0.0, 0.02, 0.04, 0.06, 2.5, 3.0])
    train = np.concatenate([np.stack([np.cos(ang), np.sin(ang)], 1), np.zeros((3, 2))]).astype(np.float32)
    iso = toy.isolated_points(train, np.zeros(2), t0=0.02, isolation=2.0)
    uniq = np.unique(train, axis=0)
    assert iso.sum() == 2 and np.allclose(np.linalg.norm(uniq[iso], axis=1), 1.0)  # the atom is never isolated
    samples = np.array([[np.cos(3.0) + 0.01, np.sin(3.0)], [np.cos(0.01), np.sin(0.01)]], np.float32)
    ratio, nearest = toy.copy_ratio(samples, train)
    assert ratio[0] < 1 / 3 and iso[nearest[0]]
    assert not iso[nearest[1]]


def test_quick_run_reports_findings_and_isolated_points(quick_pipeline):
    _, _, metrics = quick_pipeline
    m = metrics["toy"]
    assert len(m["findings"]) == 6
    for d in m["findings"]:
        f = verdicts.Finding(**d)
        assert f.verdict in verdicts.VERDICTS and f.text() in m["reading"]
    for name, (lo, hi) in m["counts_interval"].items():
        assert 0.0 <= lo <= m["counts"][name] / sum(m["counts"].values()) <= hi <= 1.0
    assert m["isolated_train"], "the quick toy's training set has isolated points"
    for p in m["isolated_train"]:
        assert math.isfinite(p["lid_theta"]) and 0.0 <= p["cfdm"] < 0.5
    assert "isolated training points" in m["reading"]
