"""evaluate(): errors, bias and Harrell's concordance against brute-force oracles."""

import itertools

import jax.numpy as jnp
import numpy as np
import pytest

from mmh_jax.lid import evaluate


def _concordance_oracle(e, t):
    num = den = 0.0
    for i, j in itertools.combinations(range(len(e)), 2):
        if t[i] == t[j]:
            continue
        den += 1
        s = np.sign(e[j] - e[i]) * np.sign(t[j] - t[i])
        num += 1.0 if s > 0 else (0.5 if s == 0 else 0.0)
    return num / den


@pytest.mark.parametrize("n, levels", [(2, 2), (7, 3), (60, 4), (129, 100)])
def test_concordance_matches_pairwise_oracle(rng, n, levels):
    t = rng.integers(0, levels, n).astype(float)
    e = np.round(t + rng.normal(0, 1.0, n))  # rounded: many ties in the estimates
    if np.all(t == t[0]):
        t[0] += 1
    assert evaluate(e, t)["concordance"] == pytest.approx(_concordance_oracle(e, t), abs=1e-12)


def test_concordance_counts_every_strict_inversion(rng):
    """With distinct truths, 1 − concordance is (inversions + ½ ties) / pairs: each strict inversion of
    the estimates in truth order counts exactly (block sizes that are and are not powers of two)."""
    for n in (2, 5, 33, 100, 257):
        r = rng.integers(0, max(1, n // 3), n).astype(float)  # many ties
        perm = rng.permutation(n)
        pairs = list(itertools.combinations(range(n), 2))
        inversions = sum(1 for i, j in pairs if r[i] > r[j])
        ties = sum(1 for i, j in pairs if r[i] == r[j])
        want = 1.0 - (inversions + 0.5 * ties) / len(pairs)
        assert evaluate(r[perm], perm.astype(float))["concordance"] == pytest.approx(want, rel=0, abs=1e-12)


def test_errors_bias_and_types():
    m = evaluate(jnp.array([1.0, 3.0, 2.0, 6.0]), np.array([1.0, 2.0, 2.0, 4.0]))
    assert m["mae"] == pytest.approx(0.75)
    assert m["mse"] == pytest.approx(1.25)
    assert m["bias"] == pytest.approx(0.75)
    assert m["relative_bias"] == pytest.approx(0.75 / 2.25)
    assert m["concordance"] == pytest.approx(1.0)
    assert all(type(v) is float for v in m.values())


def test_zero_truth_and_nonfinite_estimates():
    m = evaluate([0.5, np.nan, 0.0], [0.0, 0.0, 0.0])
    assert np.isnan(m["relative_bias"]) and np.isnan(m["concordance"])
    assert m["n"] == 2.0 and m["n_nonfinite"] == 1.0
    assert m["mae"] == pytest.approx(0.25)


def test_perfect_and_reversed_ranking():
    t = np.arange(10.0)
    assert evaluate(t * 2, t)["concordance"] == 1.0
    assert evaluate(-t, t)["concordance"] == 0.0
    assert evaluate(np.ones(10), t)["concordance"] == 0.5


def test_bad_inputs():
    with pytest.raises(ValueError, match="same shape"):
        evaluate([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="truth must be finite"):
        evaluate([1.0, 2.0], [1.0, np.nan])
