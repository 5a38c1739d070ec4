"""Verdicts with statistics: every finding of ``mmh-jax run`` states n, an interval, and one of three words.

A *finding* is a claim about an effect (an AUROC, a difference of fractions, a mean) and a
threshold it must clear in a stated direction. The effect gets a percentile bootstrap 95 %
interval, resampling each group of observations independently (stratified: positives and
negatives keep their counts). The verdict is

- ``holds`` when the whole interval clears the threshold in the claimed direction,
- ``does not hold`` when the whole interval lies on the other side,
- ``inconclusive`` otherwise, and always when there are fewer than
  [`MIN_POSITIVES`][mmh_jax.verdicts.MIN_POSITIVES]
  positives (a verdict on 3 memorized samples is an anecdote, whatever its interval).

The rule is [`decide`][mmh_jax.verdicts.decide]; [`finding`][mmh_jax.verdicts.finding] computes effect,
interval and verdict together. NumPy only. """

from __future__ import annotations

import dataclasses
import math
from statistics import NormalDist
from typing import Any, Callable, Sequence

import numpy as np

__all__ = ["DIRECTIONS", "Finding", "MIN_POSITIVES", "VERDICTS", "auroc", "bootstrap_interval", "decide",
           "finding", "tpr_at_fpr", "wilson_interval"]

#: The three verdicts, in the order "the data support the claim", "refute it", "cannot decide".
VERDICTS = ("holds", "does not hold", "inconclusive")
#: Fewer positives than this and a finding is inconclusive, whatever its interval.
MIN_POSITIVES = 10
#: A claim says the effect lies ``above`` or ``below`` its threshold.
DIRECTIONS = ("above", "below")


def decide(low: float, high: float, threshold: float, *, direction: str = "above", n_positive: int,
           min_positive: int = MIN_POSITIVES) -> str:
    """The verdict on a claim "effect ``direction`` ``threshold``" from the effect's interval [low, high].

    Args:
      low, high: the interval's ends (NaN: inconclusive).
      threshold: the value the effect must clear (strictly).
      direction: ``"above"`` (the claim is effect > threshold) or ``"below"``.
      n_positive: the number of positives the effect rests on (memorized samples, copies, …).
      min_positive: below this many positives the verdict is ``inconclusive``.

    Returns:
      one of [`VERDICTS`][mmh_jax.verdicts.VERDICTS].

    Raises:
      ValueError: unknown direction, low > high.

    Examples:
      >>> decide(0.7, 0.9, 0.5, n_positive=30), decide(0.2, 0.4, 0.5, n_positive=30)
      ('holds', 'does not hold')
      >>> decide(0.4, 0.9, 0.5, n_positive=30), decide(0.7, 0.9, 0.5, n_positive=3)
      ('inconclusive', 'inconclusive')
      >>> decide(-0.3, -0.1, 0.0, direction="below", n_positive=12)
      'holds'
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}.")
    if not (math.isnan(low) or math.isnan(high)) and low > high:
        raise ValueError(f"the interval must have low <= high, got [{low}, {high}].")
    if n_positive < min_positive or math.isnan(low) or math.isnan(high) or math.isnan(threshold):
        return "inconclusive"
    above, below = low > threshold, high < threshold
    if direction == "below":
        above, below = below, above
    return "holds" if above else "does not hold" if below else "inconclusive"


def bootstrap_interval(statistic: Callable[..., float], *groups: Sequence[Any], n_boot: int = 1000,
                       level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(*groups)``, each group resampled on its own.

    Each group (an array whose first axis indexes observations) is resampled with replacement to
    its own size, so a two-group statistic such as an AUROC keeps its numbers of positives and
    negatives. Resamples whose statistic is NaN (e.g. a fraction of an empty set) are dropped; with
    fewer than half left, or an empty group, the interval is (NaN, NaN).

    Args:
      statistic: a function of the groups returning a float.
      groups: one or more arrays (first axis: observations).
      n_boot: number of resamples.
      level: coverage of the interval, in (0, 1).
      seed: seed of the resampling (results are reproducible).

    Returns:
      ``(low, high)`` floats.

    Examples:
      >>> lo, hi = bootstrap_interval(np.mean, np.arange(100.0))
      >>> 40 < lo < 49.5 < hi < 59
      True
    """
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}.")
    if n_boot < 10:
        raise ValueError(f"n_boot must be >= 10, got {n_boot}.")
    arrays = [np.asarray(g) for g in groups]
    if not arrays or any(a.shape[0] == 0 for a in arrays):
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    stats = np.empty(n_boot)
    for b in range(n_boot):
        stats[b] = statistic(*(a[rng.integers(0, a.shape[0], a.shape[0])] for a in arrays))
    stats = stats[np.isfinite(stats)]
    if stats.size < n_boot / 2:
        return float("nan"), float("nan")
    tail = (1 - level) / 2
    return float(np.quantile(stats, tail)), float(np.quantile(stats, 1 - tail))


def wilson_interval(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n (sensible at k = 0 and small n; NaN for n = 0).

    Examples:
      >>> [round(v, 4) for v in wilson_interval(0, 700)]
      [0.0, 0.0055]
    """
    if n <= 0:
        return float("nan"), float("nan")
    z = NormalDist().inv_cdf(0.5 + level / 2)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (0.0 if k == 0 else max(0.0, centre - half)), (1.0 if k == n else min(1.0, centre + half))


def auroc(positive, negative) -> float:
    """P(score of a positive > score of a negative), ties counting 1/2 (Mann–Whitney U / (n₊ n₋)).

    NaN when either group is empty.

    Examples:
      >>> auroc([3.0, 2.0], [1.0, 2.0])
      0.875
    """
    pos, neg = np.asarray(positive, np.float64).ravel(), np.asarray(negative, np.float64).ravel()
    if pos.size == 0 or neg.size == 0:
        return float("nan")
    neg = np.sort(neg)
    below = np.searchsorted(neg, pos, side="left")
    ties = np.searchsorted(neg, pos, side="right") - below
    return float((below.sum() + 0.5 * ties.sum()) / (pos.size * neg.size))


def tpr_at_fpr(positive, negative, fpr: float = 0.01) -> float:
    """The fraction of positives scoring above the largest threshold that flags at most ``fpr`` of
    the negatives (scores strictly above it count as flagged; ties are never split).

    Examples:
      >>> tpr_at_fpr([5.0, 4.0, 0.5], [1.0, 2.0, 3.0], fpr=0.0)
      0.6666666666666666
    """
    pos, neg = np.asarray(positive, np.float64).ravel(), np.asarray(negative, np.float64).ravel()
    if pos.size == 0 or neg.size == 0:
        return float("nan")
    allowed = int(math.floor(fpr * neg.size + 1e-9))  # negatives that may score above the threshold
    thr = np.sort(neg)[::-1][allowed] if allowed < neg.size else -np.inf
    return float(np.mean(pos > thr))


@dataclasses.dataclass(frozen=True)
class Finding:
    """One claim, its effect with a 95 % interval, its sample sizes and its verdict.

    Attributes:
      claim: the claim in words, e.g. "memorized samples have lower LID_θ".
      statistic: what ``effect`` measures, e.g. "AUROC of −FLIPD".
      effect, low, high: the effect and its bootstrap interval.
      threshold, direction: the claim is effect > threshold (``above``) or < threshold (``below``).
      n_positive, n_negative: the sizes of the groups (``n_negative`` -1 when there is one group).
      verdict: one of [`VERDICTS`][mmh_jax.verdicts.VERDICTS].
      note: why a verdict is what it is, when the numbers alone do not say (e.g. too few positives).
    """

    claim: str
    statistic: str
    effect: float
    low: float
    high: float
    threshold: float
    direction: str
    n_positive: int
    n_negative: int
    verdict: str
    note: str = ""

    def interval(self) -> str:
        """``effect [low, high]`` with two decimals (``n/a`` for NaN)."""
        return f"{_f(self.effect)} [{_f(self.low)}, {_f(self.high)}]"

    def text(self) -> str:
        """One sentence: claim, statistic with interval, threshold, n, verdict."""
        n = f"n = {self.n_positive}" + (f" vs {self.n_negative}" if self.n_negative >= 0 else "")
        op = ">" if self.direction == "above" else "<"
        s = (f"{self.claim}: {self.statistic} {self.interval()} (95% CI; needs {op} {self.threshold:g}; {n}) "
             f"— {self.verdict}")
        return s + (f" ({self.note})." if self.note else ".")

    def row(self) -> dict[str, Any]:
        """The finding as a table row."""
        return {"claim": self.claim, "statistic": self.statistic, "effect [95% CI]": self.interval(),
                "needs": f"{'>' if self.direction == 'above' else '<'} {self.threshold:g}",
                "n": self.n_positive if self.n_negative < 0 else f"{self.n_positive} vs {self.n_negative}",
                "verdict": self.verdict}

    def asdict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Finding":
        """The inverse of `asdict`, also after a JSON round trip (which stores NaN as null).

        Examples:
          >>> f = Finding("c", "AUROC", float("nan"), float("nan"), float("nan"), 0.5, "above", 0, 9, "inconclusive")
          >>> Finding.from_dict({**f.asdict(), "effect": None}).interval()
          'n/a [n/a, n/a]'
        """
        return cls(**{k: float("nan") if v is None else v for k, v in d.items()})


def _f(v: float) -> str:
    return "n/a" if v != v else f"{v:.2f}"


def finding(claim: str, statistic: str, fn: Callable[..., float], *groups: Sequence[Any], threshold: float,
            direction: str = "above", n_positive: int | None = None, n_negative: int | None = None,
            seed: int = 0, n_boot: int = 1000, note: str = "") -> Finding:
    """Effect ``fn(*groups)``, its bootstrap interval
    ([`bootstrap_interval`][mmh_jax.verdicts.bootstrap_interval]) and verdict
    ([`decide`][mmh_jax.verdicts.decide]).

    ``n_positive`` defaults to the size of the first group, ``n_negative`` to that of the second
    (-1 with one group). With fewer than [`MIN_POSITIVES`][mmh_jax.verdicts.MIN_POSITIVES] positives the note
    says so.

    Examples:
      >>> rng = np.random.default_rng(0)
      >>> f = finding("positives score higher", "AUROC", auroc, rng.normal(2, 1, 40), rng.normal(0, 1, 200),
      ...             threshold=0.5)
      >>> f.verdict, f.n_positive, f.n_negative
      ('holds', 40, 200)
    """
    arrays = [np.asarray(g) for g in groups]
    n_pos = int(arrays[0].shape[0]) if n_positive is None else int(n_positive)
    n_neg = (int(arrays[1].shape[0]) if len(arrays) > 1 else -1) if n_negative is None else int(n_negative)
    effect = float(fn(*arrays)) if all(a.shape[0] for a in arrays) else float("nan")
    low, high = bootstrap_interval(fn, *arrays, n_boot=n_boot, seed=seed)
    verdict = decide(low, high, threshold, direction=direction, n_positive=n_pos)
    if n_pos < MIN_POSITIVES and not note:
        note = f"fewer than {MIN_POSITIVES} positives"
    return Finding(claim, statistic, effect, low, high, float(threshold), direction, n_pos, n_neg, verdict, note)
