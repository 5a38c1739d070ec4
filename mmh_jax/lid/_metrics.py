"""Agreement of pointwise LID estimates with a ground truth: errors, bias and concordance."""

from __future__ import annotations

import numpy as np


def _dense_ranks(x: np.ndarray) -> np.ndarray:
    """0-based ranks with ties sharing a rank: [3., 1., 3.] -> [1, 0, 1]."""
    return np.unique(x, return_inverse=True)[1].ravel().astype(np.int64)


def _tied_pairs(*keys: np.ndarray) -> int:
    """Number of pairs i < j equal in every key."""
    _, counts = np.unique(np.stack(keys, axis=1), axis=0, return_counts=True)
    return int(np.sum(counts * (counts - 1) // 2))


def _strict_inversions(r: np.ndarray) -> int:
    """#{i < j : r_i > r_j} for integer ranks in [0, n), O(n log² n) by bottom-up merge levels.

    At the level with block size s, every element of a right block counts the elements of its left
    partner block that exceed it; sorting by (pair of blocks, rank) gives all counts with one
    ``searchsorted``. Ranks are < n, so ``block · n + rank`` sorts by block, then rank.
    """
    n = r.size
    pos = np.arange(n)
    total = 0
    s = 1
    while s < n:
        pair = pos // (2 * s)
        right = (pos // s) % 2 == 1
        left_keys = np.sort(pair[~right] * n + r[~right])
        rk = pair[right] * n + r[right]
        not_greater = np.searchsorted(left_keys, rk, side="right") - np.searchsorted(
            left_keys, pair[right] * n, side="left"
        )
        left_size = np.minimum(s, n - pair[right] * 2 * s)
        total += int(np.sum(left_size - not_greater))
        s *= 2
    return total


def _concordance(est: np.ndarray, truth: np.ndarray) -> float:
    """Harrell's C over pairs with different truth; ties in the estimates count 1/2."""
    n = est.size
    order = np.lexsort((est, truth))  # by truth, then estimate
    re = _dense_ranks(est)[order]
    rt = _dense_ranks(truth)
    total = n * (n - 1) // 2
    comparable = total - _tied_pairs(rt)
    if comparable == 0:
        return float("nan")
    est_tied_only = _tied_pairs(re) - _tied_pairs(rt[order], re)  # tied in estimate, not in truth
    # Within a truth group estimates are sorted, so every strict inversion is a discordant pair.
    discordant = _strict_inversions(re)
    return 1.0 - (discordant + 0.5 * est_tied_only) / comparable


def evaluate(estimates, truth) -> dict[str, float]:
    """Errors of pointwise LID estimates against the true LID: MAE, MSE, bias, concordance.

    With e = estimates and t = truth over the n points where e is finite:

    - ``mae`` = mean |e − t|, ``mse`` = mean (e − t)², ``bias`` = mean (e − t);
    - ``relative_bias`` = mean (e − t) / mean |t| (NaN when every t is 0, e.g. only point masses);
    - ``concordance`` = Harrell's C: over pairs with t_i ≠ t_j, the fraction ordered the same way by
      e, ties in e counting 1/2 (1 = perfect ranking, 0.5 = chance; NaN if all t are equal);
    - ``n`` = points used, ``n_nonfinite`` = points dropped because e is NaN/inf.

    Args:
      estimates: (n,) array-like (numpy or JAX).
      truth: (n,) array-like, the true LID of each point.

    Returns:
      dict of Python floats with the keys above.

    Raises:
      ValueError: shapes differ, or truth is not finite.

    Examples:
      >>> m = evaluate([1.0, 2.0, 2.0], [1.0, 2.0, 3.0])
      >>> m["mae"], m["concordance"]
      (0.3333333333333333, 0.8333333333333334)
    """
    if np.shape(estimates) != np.shape(truth):
        raise ValueError(
            f"estimates and truth must have the same shape, got {np.shape(estimates)} and {np.shape(truth)}."
        )
    e = np.asarray(estimates, dtype=np.float64).ravel()
    t = np.asarray(truth, dtype=np.float64).ravel()
    if not np.all(np.isfinite(t)):
        raise ValueError("truth must be finite; got NaN or inf values.")
    ok = np.isfinite(e)
    e, t = e[ok], t[ok]
    n = int(e.size)
    if n == 0:
        nan = float("nan")
        return {"mae": nan, "mse": nan, "bias": nan, "relative_bias": nan, "concordance": nan,
                "n": 0.0, "n_nonfinite": float(np.sum(~ok))}
    err = e - t
    scale = float(np.mean(np.abs(t)))
    return {
        "mae": float(np.mean(np.abs(err))),
        "mse": float(np.mean(err**2)),
        "bias": float(np.mean(err)),
        "relative_bias": float(np.mean(err) / scale) if scale > 0 else float("nan"),
        "concordance": _concordance(e, t) if n > 1 else float("nan"),
        "n": float(n),
        "n_nonfinite": float(np.sum(~ok)),
    }
