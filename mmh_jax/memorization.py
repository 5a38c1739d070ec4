"""Memorization labels, MMH classification and detection metrics.

Three steps turn LID estimates into the paper's claims (Ross et al., arXiv 2411.00113, §5):

1. **Labels** — which generated samples copy training data:
   [`nearest_training`][mmh_jax.memorization.nearest_training] (exact kNN
   among the training set, chunked), [`calibrated_l2`][mmh_jax.memorization.calibrated_l2] (Carlini et al.
   2023) and [`memorized`][mmh_jax.memorization.memorized] (calibrated ℓ2 below a threshold).
2. **MMH classes** — [`classify`][mmh_jax.memorization.classify] sorts points into ``CLASSES = ("generalized",
   "od_mem",
   "dd_mem")`` from LID_θ (the model's) and LID* (the data's); [`class_counts`][mmh_jax.memorization.class_counts]
   tallies them.
3. **Detection quality** of a memorization score (−LID_θ, CFG norm, …) against the labels:
   [`detection_metrics`][mmh_jax.memorization.detection_metrics] (AUROC and TPR at 1 % FPR).

Examples are sets of any event shape, ``(N, *event)``, e.g. vectors ``(N, D)`` or images
``(N, H, W, C)``; distances are Euclidean over the flattened ``D = prod(event)`` entries. The
search is [`mmh_jax.lid.knn`][mmh_jax.lid.knn] (exact float32 distances, memory bounded by chunking over
queries and data blocks). This module depends on jax and numpy; scikit-learn is imported only by
[`detection_metrics`][mmh_jax.memorization.detection_metrics].
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mmh_jax import _checks
from mmh_jax.lid import knn

__all__ = [
    "CLASSES",
    "calibrate_threshold",
    "calibrated_l2",
    "class_counts",
    "classify",
    "detection_metrics",
    "memorized",
    "nearest_training",
]

Array = jax.Array

#: Names of the MMH classes; `classify` returns indices into this tuple.
CLASSES = ("generalized", "od_mem", "dd_mem")

#: The false-positive rate at which `detection_metrics` reads the TPR.
_FPR = 0.01


# ----------------------------------------------------------------------------- inputs


def _train_and_queries(queries, train):
    train2 = _checks.points("train", train)
    if train2.shape[0] == 0:
        raise ValueError(f"train must hold at least one example, got shape {tuple(jnp.shape(train))}.")
    return _checks.points("queries", queries, event_shape=tuple(jnp.shape(train)[1:])), train2


# ----------------------------------------------------------------------------- labels


def nearest_training(queries, train, *, k: int = 1, chunk_size: int | None = None) -> tuple[Array, Array]:
    """Distances and indices of the ``k`` nearest training examples of each query (exact, Euclidean).

    dists[i, j] = ‖q_i − x_{idx[i, j]}‖₂ over the flattened entries, ascending in j. Queries are
    *not* excluded from the matches: a query equal to a training example finds it at distance 0
    (tied duplicates: lower training index first).

    Args:
      queries: (M, *event) floating point, e.g. generated samples.
      train: (N, *event) floating point, the training set.
      k: neighbours per query, 1 ≤ k ≤ N.
      chunk_size: queries per chunk (default: from a 16 MiB budget per intermediate).

    Returns:
      ``(dists, idx)``: float32 (M, k) and int32 (M, k).

    Raises:
      TypeError: integer dtype, non-int k. ValueError: rank < 2, event shapes differ, empty train,
        NaN/inf values, k out of range.

    Examples:
      >>> import jax.numpy as jnp
      >>> train = jnp.array([[0.0], [1.0], [3.0]])
      >>> d, i = nearest_training(jnp.array([[0.4], [3.0]]), train, k=2)
      >>> [[round(v, 4) for v in row] for row in d.tolist()], i.tolist()
      ([[0.4, 0.6], [0.0, 2.0]], [[0, 1], [2, 1]])
    """
    q, x = _train_and_queries(queries, train)
    k = _checks.positive_int("k", k)
    if k > x.shape[0]:
        raise ValueError(
            f"k must be <= N = {x.shape[0]} (the number of training examples), got k={k}; lower k."
        )
    return knn(x, k=k, queries=q, chunk_size=chunk_size)


def calibrated_l2(queries, train, *, n: int = 50, alpha: float = 0.5, chunk_size: int | None = None) -> Array:
    """Calibrated ℓ2 distance of each query to the training set, as Carlini et al. (2023) define it.

    ℓ(q) = ‖q − x₁‖ / ( α · (1/n) Σ_{j=1}^{n} ‖q − x_j‖ ),  x_1, …, x_n the n nearest training
    examples of q (n includes the nearest, so ℓ ∈ [0, 1/α]). ℓ is small when the nearest training
    example is much closer than the rest of the neighbourhood, i.e. q copies one example rather
    than lying in a dense region; ℓ = 0 for an exact copy. Where all n distances are 0 (a copy of
    an example duplicated ≥ n times) ℓ is defined as 0. Carlini et al. use α = 0.5 and n = 50;
    ``alpha=1`` gives the unscaled ratio. Pass *distinct* training examples: duplicates among the
    n nearest shrink the mean and make a copy of a duplicated example look less like a copy.

    Args:
      queries: (M, *event) floating point (generated samples).
      train: (N, *event) floating point (the training set).
      n: neighbourhood size, 1 ≤ n ≤ N (default 50, Carlini et al.).
      alpha: the scale of the neighbourhood's mean distance, > 0 (default 0.5, Carlini et al.).
      chunk_size: queries per chunk.

    Returns:
      float32 (M,).

    Raises:
      ValueError: n > N (naming both), n < 1, alpha ≤ 0, and as
        [`nearest_training`][mmh_jax.memorization.nearest_training].

    Reference: Carlini et al., "Extracting Training Data from Diffusion Models", arXiv 2301.13188, §5.

    Examples:
      >>> import jax.numpy as jnp
      >>> train = jnp.array([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0], [0.0, -10.0]])
      >>> calibrated_l2(jnp.array([[0.0, 0.0], [1.0, 0.0]]), train, n=3).tolist()   # 1 / (0.5 · 2) and 0
      [1.0, 0.0]
      >>> calibrated_l2(jnp.array([[0.0, 0.0]]), train, n=3, alpha=1.0).tolist()
      [0.5]
    """
    q, x = _train_and_queries(queries, train)
    n = _checks.positive_int("n", n)
    if n > x.shape[0]:
        raise ValueError(
            f"n must be <= N = {x.shape[0]} (the number of training examples), got n={n}; lower n "
            "or pass more training data."
        )
    if not float(alpha) > 0:
        raise ValueError(f"alpha must be > 0 (the scale of the mean neighbour distance), got alpha={alpha}; "
                         "Carlini et al. use 0.5.")
    dists, _ = knn(x, k=n, queries=q, chunk_size=chunk_size)
    mean = float(alpha) * jnp.mean(dists, axis=1)
    positive = mean > 0
    return jnp.where(positive, dists[:, 0] / jnp.where(positive, mean, 1.0), 0.0)


def memorized(calibrated, *, threshold: float = 1 / 3) -> Array:
    """Memorization labels: calibrated ℓ2 strictly below ``threshold`` (default 1/3).

    The default applies to the α = 0.5 ratio of [`calibrated_l2`][mmh_jax.memorization.calibrated_l2]. A
    threshold is only as good as its false-positive rate on real data the model never saw: set it with
    [`calibrate_threshold`][mmh_jax.memorization.calibrate_threshold] on held-out examples where you have
    them, and report that rate.

    Args:
      calibrated: (M,) floating point, from [`calibrated_l2`][mmh_jax.memorization.calibrated_l2]. NaN gives
        False.
      threshold: the cut-off (default 1/3); may be traced.

    Returns:
      bool (M,).

    Raises:
      TypeError: non-float ``calibrated``.

    Reference: Carlini et al., "Extracting Training Data from Diffusion Models", arXiv 2301.13188.

    Examples:
      >>> import jax.numpy as jnp
      >>> memorized(jnp.array([0.0, 0.2, 0.5])).tolist()
      [True, True, False]
    """
    calibrated = _checks.float_array("calibrated", calibrated)
    return calibrated < threshold


def calibrate_threshold(heldout_calibrated, *, fpr: float = 0.005) -> float:
    """The largest threshold of [`memorized`][mmh_jax.memorization.memorized] that labels at most ``fpr`` of
    held-out real examples.

    ``heldout_calibrated`` is [`calibrated_l2`][mmh_jax.memorization.calibrated_l2] of real examples that were
    *not* trained on,
    against the training set: none of them is a copy, so every one labelled memorized is a false
    positive. The threshold returned is the ⌊fpr·M⌋-th smallest value (0-based), so strictly fewer
    than ⌊fpr·M⌋ + 1 held-out values lie below it. Measure the rate it gives on *other* held-out
    examples than those it was set on (the rate on these is ≤ ``fpr`` by construction).

    Args:
      heldout_calibrated: (M,) finite calibrated ℓ2 values of held-out real examples, M ≥ 1.
      fpr: the largest fraction of them that may be labelled memorized, in [0, 1).

    Returns:
      the threshold (a Python float).

    Raises:
      ValueError: empty or non-finite input, fpr outside [0, 1).

    Examples:
      >>> t = calibrate_threshold(np.linspace(0.1, 1.0, 200), fpr=0.01)
      >>> round(t, 4), int(np.sum(np.linspace(0.1, 1.0, 200) < t))
      (0.109, 2)
    """
    c = np.sort(np.asarray(heldout_calibrated, np.float64).ravel())
    if c.size == 0:
        raise ValueError("heldout_calibrated must hold at least one value; pass calibrated_l2 of held-out examples.")
    if not np.all(np.isfinite(c)):
        raise ValueError(f"heldout_calibrated contains {int(np.sum(~np.isfinite(c)))} non-finite value(s); "
                         "filter them first.")
    if not 0 <= fpr < 1:
        raise ValueError(f"fpr must lie in [0, 1), got fpr={fpr}.")
    return float(c[int(np.floor(fpr * c.size + 1e-9))])


# ----------------------------------------------------------------------------- MMH classes


def classify(lid_theta, lid_star, *, gap: float = 0.5, small: float = 0.5, memorized=None) -> Array:
    """MMH class of each point: an index into ``CLASSES = ("generalized", "od_mem", "dd_mem")``.

    The stated tolerances are ``gap`` and ``small``, both in units of dimension:

    - ``gap`` (default 0.5): LID_θ counts as *lower* than LID* only when LID_θ < LID* − gap. With
      integer true dimensions, 0.5 separates "at least one dimension lower" from "equal" while
      tolerating estimation errors that sum to less than half a dimension.
    - ``small`` (default 0.5): LID* counts as (near) zero when LID* ≤ small, i.e. it rounds to 0,
      as at duplicated training points.

    Without labels (``memorized=None``), for each point:

    - ``od_mem`` (1, overfitting-driven) if LID_θ < LID* − gap: the model's manifold is
      lower-dimensional than the data's there;
    - else ``dd_mem`` (2, data-driven) if LID* ≤ small and LID_θ ≤ small + gap: the data
      themselves are (near) zero-dimensional there and the model reproduces that (a copy of an atom
      such as a duplicated training point);
    - else ``generalized`` (0) — including a point beside an atom where the model is *not*
      low-dimensional (LID_θ > small + gap): a blurry or novel sample, not a copy.

    With boolean labels ``memorized`` (e.g. from [`memorized`][mmh_jax.memorization.memorized] for images,
    where ``small`` has
    no absolute scale), ``small`` is not used: unlabelled points are ``generalized``; labelled ones
    are ``od_mem`` if LID_θ < LID* − gap, else ``dd_mem``.

    Comparisons with NaN are False: a NaN LID_θ is never ``od_mem`` and a NaN LID* never meets
    ``small``; filter non-finite estimates first. Jittable; ``gap`` and ``small`` may be traced.

    Args:
      lid_theta: (M,) floating point, LID of the model (e.g. FLIPD) at each point.
      lid_star: (M,) floating point, LID of the data (e.g. [`mmh_jax.lid.lpca`][mmh_jax.lid.lpca]) at each
        point.
      gap: tolerance of "LID_θ lower than LID*", ≥ 0.
      small: tolerance of "LID* is zero".
      memorized: optional bool (M,) labels.

    Returns:
      int32 (M,) codes into ``CLASSES``.

    Raises:
      TypeError: non-float LIDs, non-bool labels. ValueError: shapes differ, negative gap.

    Reference: Ross et al., arXiv 2411.00113, §3 (OD-Mem, DD-Mem).

    Examples:
      >>> import jax.numpy as jnp
      >>> codes = classify(jnp.array([1.0, 0.0, 0.0]), jnp.array([1.0, 1.0, 0.0]))
      >>> [CLASSES[c] for c in codes.tolist()]
      ['generalized', 'od_mem', 'dd_mem']
    """
    lid_theta = _checks.float_array("lid_theta", lid_theta)
    lid_star = _checks.float_array("lid_star", lid_star)
    _checks.same_shape("lid_theta", lid_theta, "lid_star", lid_star)
    if _checks.is_concrete(gap) and not float(np.asarray(gap)) >= 0:
        raise ValueError(f"gap must be >= 0 (a tolerance in dimensions), got gap={gap}.")
    od = lid_theta < lid_star - gap
    if memorized is None:
        dd = (lid_star <= small) & (lid_theta <= small + gap)
        return jnp.where(od, 1, jnp.where(dd, 2, 0)).astype(jnp.int32)
    mem_dtype = getattr(memorized, "dtype", None)
    if mem_dtype is None:
        memorized = np.asarray(memorized)
        mem_dtype = memorized.dtype
    if mem_dtype != jnp.bool_:
        raise TypeError(
            f"memorized must be a boolean array of labels, got dtype {mem_dtype}; pass e.g. "
            "labels.astype(bool) or the output of memorized(calibrated)."
        )
    _checks.same_shape("memorized", memorized, "lid_theta", lid_theta)
    return jnp.where(memorized, jnp.where(od, 1, 2), 0).astype(jnp.int32)


def class_counts(codes) -> dict[str, int]:
    """Number of points in each MMH class: ``{name: count}`` over ``CLASSES``, zeros included.

    Args:
      codes: (M,) integer codes from [`classify`][mmh_jax.memorization.classify].

    Returns:
      dict of Python ints, keys in the order of ``CLASSES``.

    Raises:
      TypeError: non-integer codes. ValueError: a code outside [0, len(CLASSES)).

    Examples:
      >>> class_counts([0, 1, 1])
      {'generalized': 1, 'od_mem': 2, 'dd_mem': 0}
    """
    codes = np.asarray(codes).ravel()
    if codes.size and not np.issubdtype(codes.dtype, np.integer):
        raise TypeError(f"codes must be integers (from classify), got dtype {codes.dtype}.")
    bad = (codes < 0) | (codes >= len(CLASSES))
    if np.any(bad):
        raise ValueError(
            f"codes must lie in [0, {len(CLASSES)}) (indices into CLASSES), got "
            f"{np.unique(codes[bad])[:5].tolist()}; pass the output of classify."
        )
    counts = np.bincount(codes.astype(np.int64), minlength=len(CLASSES))
    return {name: int(c) for name, c in zip(CLASSES, counts)}


# ----------------------------------------------------------------------------- detection


def detection_metrics(scores, labels) -> dict[str, float | int]:
    """AUROC and TPR at 1 % FPR of a memorization score against binary labels.

    A higher score means "more likely memorized" (pass −LID_θ for LID, the CFG norm as is).

    - ``auroc``: area under the ROC curve, P(score of a positive > score of a negative) with ties
      counting 1/2 (scikit-learn's ``roc_auc_score``);
    - ``tpr_at_1fpr``: the largest TPR among the ROC points (one per distinct threshold, from
      scikit-learn's ``roc_curve`` with no point dropped) whose FPR ≤ 0.01. Tied scores are one
      threshold, so a tie between positives and negatives is not split;
    - ``n_positive``, ``n_negative``: label counts.

    When the labels hold a single class (or none) both metrics are undefined: they are NaN and no
    error or warning is raised; check ``n_positive`` / ``n_negative``.

    Args:
      scores: (M,) real, finite (numpy or JAX).
      labels: (M,) bool, or integers/floats in {0, 1}; 1 = memorized.

    Returns:
      dict with float ``auroc``, ``tpr_at_1fpr`` and int ``n_positive``, ``n_negative``.

    Raises:
      ValueError: shapes differ or are not 1-D, labels not binary, non-finite scores (the count is
        in the message).

    Examples:
      >>> m = detection_metrics([0.9, 0.8, 0.3, 0.1], [1, 1, 0, 0])
      >>> m["auroc"], m["tpr_at_1fpr"]
      (1.0, 1.0)
    """
    scores = np.asarray(scores)
    labels = np.asarray(labels)
    if scores.ndim != 1 or labels.shape != scores.shape:
        raise ValueError(
            f"scores and labels must be 1-D of the same length, got shapes {scores.shape} and {labels.shape}."
        )
    if not (np.issubdtype(scores.dtype, np.floating) or np.issubdtype(scores.dtype, np.integer)):
        raise TypeError(f"scores must be real numbers, got dtype {scores.dtype}.")
    scores = scores.astype(np.float64)
    bad = int(np.count_nonzero(~np.isfinite(scores)))
    if bad:
        raise ValueError(
            f"scores contain {bad} non-finite value(s) (NaN or inf) out of {scores.size}; filter those "
            "points (e.g. keep np.isfinite(scores)) before computing detection metrics."
        )
    if labels.dtype != np.bool_:
        if not np.all((labels == 0) | (labels == 1)):
            raise ValueError(
                f"labels must be binary (bool or 0/1), got values {np.unique(labels)[:5].tolist()}."
            )
        labels = labels == 1
    n_pos = int(np.count_nonzero(labels))
    n_neg = int(labels.size - n_pos)
    out: dict[str, float | int] = {"n_positive": n_pos, "n_negative": n_neg}
    if n_pos == 0 or n_neg == 0:
        return {"auroc": float("nan"), "tpr_at_1fpr": float("nan"), **out}
    from sklearn.metrics import roc_auc_score, roc_curve  # heavy import, only needed here

    # drop_intermediate=False: the default drops the ROC points inside straight segments, and the
    # best point with FPR <= 1 % can be one of them.
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    return {
        "auroc": float(roc_auc_score(labels, scores)),
        "tpr_at_1fpr": float(np.max(tpr[fpr <= _FPR])),
        **out,
    }
