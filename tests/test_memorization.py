"""Memorization labels, MMH classes and detection metrics against hand-made cases and brute force.

Float32 tolerance: a distance ‖q − x‖ is a float32 sum of D squares, relative error ≤ (D + 2)·u
(u = 2⁻²⁴); a ratio of two such (calibrated ℓ2) or a mean of them stays within 2(D + 2)·u, so the
comparisons with float64 numpy use rtol = 4(D + 2)·u (margin 2).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmh_jax import memorization as mem

U = 2.0**-24


def _rtol(dim):
    return 4 * (dim + 2) * U


def _brute_dists(queries, train):
    """float64 (M, N) Euclidean distances over flattened examples."""
    q = np.asarray(queries, np.float64).reshape(len(queries), -1)
    x = np.asarray(train, np.float64).reshape(len(train), -1)
    return np.sqrt(((q[:, None, :] - x[None, :, :]) ** 2).sum(-1))


#: Queries, training examples, neighbours and chunk of the brute-force tests (nearest_training,
#: calibrated ℓ2, exact copies, the pipeline): the same sizes, so they share one compiled search
#: (it sees the examples flattened, (M, 24) and (N, 24)).
M, N, K, CHUNK = 17, 60, 10, 5


def _brute_calibrated(queries, train, n):
    d = np.sort(_brute_dists(queries, train), axis=1)[:, :n]
    return d[:, 0] / d.mean(axis=1)


# ----------------------------------------------------------------------------- nearest_training


def test_nearest_training_hand_made():
    train = jnp.array([[0.0, 0.0], [3.0, 4.0], [0.0, 1.0]])
    d, i = mem.nearest_training(jnp.array([[0.0, 0.0], [3.0, 0.0]]), train, k=3)
    # query 0 is training example 0 (not excluded): 0, then 1, then 5; query 1: 3, √10, 4.
    np.testing.assert_array_equal(i, [[0, 2, 1], [0, 2, 1]])
    np.testing.assert_allclose(d, [[0.0, 1.0, 5.0], [3.0, np.sqrt(10.0), 4.0]], rtol=_rtol(2))
    assert d.dtype == jnp.float32 and i.dtype == jnp.int32


def test_nearest_training_images_against_brute_force(rng):
    train = rng.standard_normal((N, 4, 3, 2)).astype(np.float32)
    queries = rng.standard_normal((M, 4, 3, 2)).astype(np.float32)
    queries[:3] = train[[5, 0, N - 1]]  # exact copies find themselves at distance 0
    full = _brute_dists(queries, train)
    order = np.argsort(full, axis=1, kind="stable")[:, :K]
    for chunk in (None, CHUNK):  # CHUNK does not divide M: a last, partial chunk
        d, i = mem.nearest_training(queries, train, k=K, chunk_size=chunk)
        np.testing.assert_array_equal(i, order)
        np.testing.assert_allclose(d, np.take_along_axis(full, order, axis=1), rtol=_rtol(24))
        np.testing.assert_array_equal(d[:3, 0], 0.0)
        np.testing.assert_array_equal(i[:3, 0], [5, 0, N - 1])


def test_nearest_training_errors():
    train = jnp.zeros((5, 2, 2))
    with pytest.raises(ValueError, match=r"event shape of train, \(2, 2\).*\(3, 4\)"):
        mem.nearest_training(jnp.zeros((3, 4)), train)
    with pytest.raises(ValueError, match=r"k must be <= N = 5.*k=6"):
        mem.nearest_training(jnp.zeros((3, 2, 2)), train, k=6)
    with pytest.raises(ValueError, match="train must hold at least one"):
        mem.nearest_training(jnp.zeros((3, 2)), jnp.zeros((0, 2)))
    with pytest.raises(TypeError, match="queries must have a floating-point dtype"):
        mem.nearest_training(jnp.zeros((3, 2, 2), jnp.int32), train)
    with pytest.raises(ValueError, match="queries contains 1 non-finite"):
        mem.nearest_training(jnp.zeros((3, 2, 2)).at[1, 0, 0].set(jnp.nan), train)


# ----------------------------------------------------------------------------- calibrated ℓ2


def test_calibrated_l2_hand_made():
    # From the origin the training points lie at distances 1, 2, 3, 10.
    train = jnp.array([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0], [0.0, -10.0]])
    q = jnp.zeros((1, 2))
    for n, expected in [(1, 1.0), (2, 1 / 1.5), (3, 1 / 2), (4, 1 / 4)]:
        np.testing.assert_allclose(mem.calibrated_l2(q, train, n=n, alpha=1.0), [expected], rtol=_rtol(2))
        # Carlini et al.'s alpha = 0.5 (the default) scales the mean distance: twice the ratio.
        np.testing.assert_allclose(mem.calibrated_l2(q, train, n=n), [2 * expected], rtol=_rtol(2))


def test_calibrated_l2_against_brute_force_images(rng):
    train = rng.standard_normal((N, 3, 4, 2)).astype(np.float32)
    queries = rng.standard_normal((M, 3, 4, 2)).astype(np.float32)
    # A near copy: tiny ratio, far below the threshold; the others are ~1.
    queries[0] = train[7] + 1e-3 * rng.standard_normal((3, 4, 2)).astype(np.float32)
    expected = _brute_calibrated(queries, train, K)
    for chunk in (None, CHUNK):
        got = mem.calibrated_l2(queries, train, n=K, alpha=1.0, chunk_size=chunk)
        assert got.shape == (M,) and got.dtype == jnp.float32
        np.testing.assert_allclose(got, expected, rtol=_rtol(24))
    labels = mem.memorized(mem.calibrated_l2(queries, train, n=K))
    np.testing.assert_array_equal(labels, 2 * expected < 1 / 3)
    assert labels[0] and not labels[1:].any()


def test_exact_copies_are_zero_and_memorized(rng):
    train = rng.standard_normal((N, 3, 4, 2)).astype(np.float32)
    c = mem.calibrated_l2(train[:M], train, n=K)
    np.testing.assert_array_equal(c, 0.0)
    assert bool(mem.memorized(c).all())


def test_calibrated_l2_all_duplicates_defined_as_zero():
    # The query copies an example present 3 times; with n = 3 all distances are 0 (0/0 -> 0).
    train = jnp.array([[1.0, 1.0], [1.0, 1.0], [1.0, 1.0], [5.0, 5.0]])
    np.testing.assert_array_equal(mem.calibrated_l2(jnp.array([[1.0, 1.0]]), train, n=3), [0.0])


def test_calibrated_l2_errors():
    train = jnp.zeros((4, 3))
    with pytest.raises(ValueError, match=r"n must be <= N = 4.*got n=5"):
        mem.calibrated_l2(jnp.zeros((2, 3)), train, n=5)
    with pytest.raises(ValueError, match="n must be >= 1"):
        mem.calibrated_l2(jnp.zeros((2, 3)), train, n=0)
    with pytest.raises(TypeError, match="n must be a Python int"):
        mem.calibrated_l2(jnp.zeros((2, 3)), train, n=2.0)
    with pytest.raises(ValueError, match=r"alpha must be > 0.*got alpha=0"):
        mem.calibrated_l2(jnp.zeros((2, 3)), train, n=2, alpha=0.0)


def test_calibrate_threshold_bounds_the_heldout_rate(rng):
    heldout = rng.uniform(0.0, 2.0, 1000)
    for fpr in (0.0, 0.005, 0.05):
        t = mem.calibrate_threshold(heldout, fpr=fpr)
        assert np.mean(heldout < t) <= fpr
        # the largest such threshold: the next value up would label one more
        assert np.mean(heldout <= t) > fpr
    with pytest.raises(ValueError, match="fpr must lie in"):
        mem.calibrate_threshold(heldout, fpr=1.0)
    with pytest.raises(ValueError, match="at least one value"):
        mem.calibrate_threshold(np.zeros(0))
    with pytest.raises(ValueError, match="1 non-finite"):
        mem.calibrate_threshold(np.array([0.1, np.nan]))


def test_memorized_threshold():
    c = jnp.array([0.0, 0.3, 0.34, 0.9, jnp.nan])
    np.testing.assert_array_equal(mem.memorized(c), [True, True, False, False, False])
    np.testing.assert_array_equal(mem.memorized(c, threshold=0.5), [True, True, True, False, False])
    jitted = jax.jit(lambda c, t: mem.memorized(c, threshold=t))
    np.testing.assert_array_equal(jitted(c, 0.5), [True, True, True, False, False])


# ----------------------------------------------------------------------------- classify

GEN, OD, DD = (mem.CLASSES.index(n) for n in ("generalized", "od_mem", "dd_mem"))

# (lid_theta, lid_star, expected class) with gap = small = 0.5.
UNLABELLED = [
    (1.0, 1.0, GEN),   # equal, data 1-D: generalized
    (0.0, 1.0, OD),    # model collapsed below the data: OD-Mem
    (0.4, 1.0, OD),    # 0.4 < 1 - 0.5
    (0.6, 1.0, GEN),   # within the gap: not lower
    (0.0, 0.0, DD),    # both zero: DD-Mem (duplicated data)
    (0.2, 0.5, DD),    # LID* = small counts as zero
    (0.2, 0.6, GEN),   # LID* just above small, LID_θ within the gap
    (-1.0, 0.3, OD),   # OD takes precedence over DD
    (2.0, 0.2, GEN),   # data zero-dimensional there but the model is not: a blurry/novel sample, no copy
    (1.0, 0.0, DD),    # LID_θ = small + gap still counts as small
    (1.01, 0.0, GEN),  # just above small + gap
    (3.0, 1.0, GEN),   # model higher-dimensional: generalized
]


def test_classify_every_branch_without_labels():
    theta, star, expected = (np.array(c) for c in zip(*UNLABELLED))
    codes = mem.classify(jnp.asarray(theta, jnp.float32), jnp.asarray(star, jnp.float32))
    assert codes.dtype == jnp.int32
    np.testing.assert_array_equal(codes, expected)
    assert set(expected.tolist()) == {GEN, OD, DD}


def test_classify_tolerances_move_the_boundaries():
    theta, star = jnp.array([0.6, 0.2]), jnp.array([1.0, 0.6])
    np.testing.assert_array_equal(mem.classify(theta, star), [GEN, GEN])
    np.testing.assert_array_equal(mem.classify(theta, star, gap=0.0), [OD, OD])
    np.testing.assert_array_equal(mem.classify(theta, star, small=0.6), [GEN, DD])


def test_classify_with_labels_every_branch():
    cases = [
        (0.0, 5.0, False, GEN),  # not memorized: generalized even though LID_θ ≪ LID*
        (0.0, 0.0, False, GEN),
        (1.0, 5.0, True, OD),    # memorized, LID_θ < LID* − gap
        (4.8, 5.0, True, DD),    # memorized, LID_θ ≈ LID* (large: `small` is not used)
        (0.0, 0.0, True, DD),
        (6.0, 5.0, True, DD),
    ]
    theta, star, labels, expected = (np.array(c) for c in zip(*cases))
    codes = mem.classify(jnp.asarray(theta, jnp.float32), jnp.asarray(star, jnp.float32), memorized=labels)
    np.testing.assert_array_equal(codes, expected)


def test_classify_is_jittable():
    theta, star, expected = (np.array(c) for c in zip(*UNLABELLED))
    theta, star = jnp.asarray(theta, jnp.float32), jnp.asarray(star, jnp.float32)
    f = jax.jit(lambda a, b, g, s: mem.classify(a, b, gap=g, small=s))
    np.testing.assert_array_equal(f(theta, star, 0.5, 0.5), expected)
    labels = jnp.asarray(np.arange(theta.size) % 2 == 0)
    g = jax.jit(lambda a, b, m: mem.classify(a, b, memorized=m))
    np.testing.assert_array_equal(g(theta, star, labels), mem.classify(theta, star, memorized=labels))


def test_classify_errors():
    a = jnp.zeros(3)
    with pytest.raises(ValueError, match="lid_theta and lid_star must have the same shape"):
        mem.classify(a, jnp.zeros(4))
    with pytest.raises(TypeError, match="memorized must be a boolean array.*int"):
        mem.classify(a, a, memorized=np.array([0, 1, 0]))
    with pytest.raises(ValueError, match="memorized and lid_theta must have the same shape"):
        mem.classify(a, a, memorized=np.array([True, False]))
    with pytest.raises(ValueError, match="gap must be >= 0.*-0.1"):
        mem.classify(a, a, gap=-0.1)


def test_class_counts():
    counts = mem.class_counts(jnp.array([0, 1, 1, 2, 2, 2], jnp.int32))
    assert counts == {"generalized": 1, "od_mem": 2, "dd_mem": 3}
    empty = mem.class_counts(np.zeros((0,), np.int32))
    assert empty == {"generalized": 0, "od_mem": 0, "dd_mem": 0}
    assert list(empty) == list(mem.CLASSES)
    with pytest.raises(ValueError, match=r"\[0, 3\).*\[3\]"):
        mem.class_counts([0, 3])
    with pytest.raises(TypeError, match="integers"):
        mem.class_counts([0.0, 1.0])


# ----------------------------------------------------------------------------- detection metrics


def _auroc_oracle(scores, labels):
    """Mann–Whitney: P(score_pos > score_neg) + P(tie)/2 over all pairs."""
    pos, neg = scores[labels], scores[~labels]
    diff = pos[:, None] - neg[None, :]
    return float(np.mean((diff > 0) + 0.5 * (diff == 0)))


def _tpr_oracle(scores, labels, max_fpr=0.01):
    """Largest TPR over all thresholds 'score >= t' (t over the scores, plus +inf) with FPR <= max_fpr."""
    best = 0.0
    for t in np.unique(scores):
        pred = scores >= t
        fpr = np.count_nonzero(pred & ~labels) / np.count_nonzero(~labels)
        if fpr <= max_fpr:
            best = max(best, np.count_nonzero(pred & labels) / np.count_nonzero(labels))
    return best


def test_detection_perfect_and_reversed():
    scores = np.array([3.0, 4.0, 5.0, 0.0, 1.0, 2.0])
    labels = np.array([1, 1, 1, 0, 0, 0])
    m = mem.detection_metrics(scores, labels)
    assert (m["auroc"], m["tpr_at_1fpr"]) == (1.0, 1.0)
    assert (m["n_positive"], m["n_negative"]) == (3, 3)
    r = mem.detection_metrics(-scores, labels)
    assert (r["auroc"], r["tpr_at_1fpr"]) == (0.0, 0.0)


def test_tpr_at_1fpr_hand_computed():
    # 4 positives, 100 negatives. Thresholds from the top: 11 passes one positive (FPR 0, TPR 1/4);
    # 10 passes a tied positive/negative pair (FPR 1/100, TPR 2/4); 9 another pair (FPR 2/100 > 1 %).
    # So TPR at 1 % FPR = 0.5. The ROC points (0, 1/4), (0.01, 2/4), (0.02, 3/4) are collinear: a
    # curve with intermediate points dropped (roc_curve's default) loses the answer and reads 0.25.
    scores = np.concatenate([[11.0, 10.0, 10.0, 9.0, 9.0, 1.0], np.zeros(98)])
    labels = np.concatenate([[True, True, False, True, False, True], np.zeros(98, bool)])
    m = mem.detection_metrics(scores, labels)
    assert m["tpr_at_1fpr"] == 0.5
    # AUROC by hand over the 4 × 100 pairs (ties count 1/2): the positive at 11 beats all 100;
    # at 10 it ties one and beats 99 (99.5); at 9 it loses to one, ties one, beats 98 (98.5); at 1
    # it loses to two and beats 98 (98).
    assert m["auroc"] == pytest.approx((100 + 99.5 + 98.5 + 98) / 400, abs=1e-12)
    assert (m["n_positive"], m["n_negative"]) == (4, 100)


def test_detection_against_oracles(rng):
    n_pos, n_neg = 40, 300
    labels = np.concatenate([np.ones(n_pos, bool), np.zeros(n_neg, bool)])
    scores = np.concatenate([rng.normal(1.5, 1.0, n_pos), rng.normal(0.0, 1.0, n_neg)])
    scores = np.round(scores, 1)  # create ties
    m = mem.detection_metrics(jnp.asarray(scores, jnp.float32), jnp.asarray(labels))
    s32 = np.asarray(jnp.asarray(scores, jnp.float32), np.float64)
    assert m["auroc"] == pytest.approx(_auroc_oracle(s32, labels), abs=1e-12)
    assert m["tpr_at_1fpr"] == pytest.approx(_tpr_oracle(s32, labels), abs=1e-12)
    assert 0.0 < m["tpr_at_1fpr"] < 1.0 and 0.5 < m["auroc"] < 1.0


def test_detection_single_class_is_nan():
    for labels in (np.ones(5, bool), np.zeros(5, int), np.zeros(0, bool)):
        m = mem.detection_metrics(np.arange(labels.size, dtype=float), labels)
        assert np.isnan(m["auroc"]) and np.isnan(m["tpr_at_1fpr"])
        assert m["n_positive"] + m["n_negative"] == labels.size
    assert mem.detection_metrics(np.arange(5.0), np.ones(5, bool))["n_positive"] == 5


def test_detection_errors():
    with pytest.raises(ValueError, match="2 non-finite.*filter"):
        mem.detection_metrics([0.1, np.nan, np.inf, 0.3], [1, 0, 1, 0])
    with pytest.raises(ValueError, match="binary"):
        mem.detection_metrics([0.1, 0.2, 0.3], [0, 1, 2])
    with pytest.raises(ValueError, match="same length"):
        mem.detection_metrics([0.1, 0.2, 0.3], [0, 1])


def test_memorization_pipeline_end_to_end(rng):
    """Labels from calibrated ℓ2 + a score that ranks the copies first: perfect detection."""
    # In D = 24 distances concentrate: a fresh sample's nearest training point is about as far as
    # its 10th (ratio near 1), a near copy's is ~0. (The sizes of the brute-force tests: one search.)
    train = rng.standard_normal((N, 24)).astype(np.float32)
    copies = train[:5] + 1e-3 * rng.standard_normal((5, 24)).astype(np.float32)
    fresh = rng.standard_normal((M - 5, 24)).astype(np.float32)
    samples = np.concatenate([copies, fresh])
    c = mem.calibrated_l2(samples, train, n=K, alpha=1.0)
    np.testing.assert_allclose(c, _brute_calibrated(samples, train, K), rtol=_rtol(24), atol=1e-6)
    labels = mem.memorized(c)
    np.testing.assert_array_equal(labels, np.arange(M) < 5)
    m = mem.detection_metrics(-c, labels)
    assert (m["auroc"], m["tpr_at_1fpr"]) == (1.0, 1.0)
    codes = mem.classify(jnp.zeros(M), jnp.full(M, 2.0), memorized=labels)
    assert mem.class_counts(codes) == {"generalized": M - 5, "od_mem": 5, "dd_mem": 0}


def test_class_names():
    assert mem.CLASSES == ("generalized", "od_mem", "dd_mem")
