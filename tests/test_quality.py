"""Improved precision/recall (Kynkäänniemi et al. 2019) against hand-made cases and brute force."""

import jax.numpy as jnp
import numpy as np
import pytest

from mmh_jax import quality


def _brute_precision_recall(real, fake, k):
    """float64 oracle straight from the definition: full distance matrices, closed balls."""
    x = np.asarray(real, np.float64).reshape(len(real), -1)
    y = np.asarray(fake, np.float64).reshape(len(fake), -1)

    def dist(a, b):
        return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))

    def radii(a):
        d = dist(a, a)
        np.fill_diagonal(d, np.inf)
        return np.sort(d, axis=1)[:, k - 1]

    def covered(q, c):
        d = dist(q, c)
        r = radii(c)
        # Margin of the closest call, to make sure the float32 answer cannot differ.
        margin = np.min(np.abs(d - r[None, :]) / r[None, :])
        return np.any(d <= r[None, :], axis=1), margin

    p, mp = covered(y, x)
    r, mr = covered(x, y)
    return p.mean(), r.mean(), min(mp, mr)


def test_identical_sets_give_one(rng):
    x = rng.standard_normal((40, 3, 2, 2)).astype(np.float32)
    pr = quality.knn_precision_recall(x, x, k=3)
    assert (float(pr["precision"]), float(pr["recall"])) == (1.0, 1.0)


def test_disjoint_far_sets_give_zero(rng):
    # The shapes of test_against_brute_force: the same compiled program.
    real = rng.standard_normal((60, 2, 3)).astype(np.float32)
    fake = (rng.standard_normal((45, 2, 3)) + 1000.0).astype(np.float32)
    pr = quality.knn_precision_recall(real, fake, k=3)
    assert (float(pr["precision"]), float(pr["recall"])) == (0.0, 0.0)


def test_hand_made_fractions():
    # k = 1. Real balls: radius 1 around 0, 1, 2, 3 -> [-1, 4]; fakes 0.5, 0.7, 3.9 are in, 10 and
    # 11 are not: precision 3/5. Fake radii: 0.2, 0.2, 3.2, 1, 1 -> balls [0.3, 0.7], [0.5, 0.9],
    # [0.7, 7.1], [9, 11], [10, 12]: real 1, 2, 3 are covered, 0 is not: recall 3/4.
    real = jnp.array([[0.0], [1.0], [2.0], [3.0]])
    fake = jnp.array([[0.5], [0.7], [3.9], [10.0], [11.0]])
    pr = quality.knn_precision_recall(real, fake, k=1)
    assert float(pr["precision"]) == pytest.approx(3 / 5)
    assert float(pr["recall"]) == pytest.approx(3 / 4)
    assert pr["precision"].dtype == jnp.float32 and pr["precision"].shape == ()


def test_a_far_large_ball_covers_what_the_nearest_balls_do_not():
    # k = 1. A 3 × 4 grid of real points with spacing 0.1 at the origin (radii 0.1) and an isolated
    # real point at (5, 0) whose radius is its distance to the grid, 4.8. The fake at (1, 0) is
    # ≥ 0.8 from every grid point (outside all their balls, and the grid holds its 8+ nearest real
    # points) but 4 from (5, 0): inside the real manifold. The fake at (0, 3) is 2.7 from the grid
    # and √34 ≈ 5.83 > 4.8 from (5, 0): outside. Precision 1/2.
    grid = [[0.1 * i, 0.1 * j] for i in range(3) for j in range(4)]
    real = jnp.array(grid + [[5.0, 0.0]])
    fake = jnp.array([[1.0, 0.0], [0.0, 3.0]])
    pr = quality.knn_precision_recall(real, fake, k=1)
    assert float(pr["precision"]) == 0.5
    # Both fake radii are √10 ≈ 3.16: the grid is covered (≤ 1.05 from (1, 0)), (5, 0) is not.
    assert float(pr["recall"]) == pytest.approx(12 / 13)


@pytest.mark.parametrize("shift", [0.0, 1.0])
def test_against_brute_force(rng, shift):
    real = rng.standard_normal((60, 2, 3)).astype(np.float32)
    fake = (rng.standard_normal((45, 2, 3)) * 0.7 + shift).astype(np.float32)
    p, r, margin = _brute_precision_recall(real, fake, k=3)
    # No boundary call within float32 error (relative (D + 2)·u per distance, margin 4): the answers
    # must then agree exactly.
    assert margin > 4 * (6 + 2) * 2.0**-24
    assert 0.0 < p < 1.0 and 0.0 < r < 1.0  # a non-trivial case
    for chunk in (None, 7):
        pr = quality.knn_precision_recall(real, fake, k=3, chunk_size=chunk)
        assert float(pr["precision"]) == pytest.approx(p, abs=1e-6)
        assert float(pr["recall"]) == pytest.approx(r, abs=1e-6)


def test_errors():
    real = jnp.zeros((5, 2, 2))
    with pytest.raises(ValueError, match=r"event shape of real, \(2, 2\)"):
        quality.knn_precision_recall(real, jnp.zeros((5, 4)))
    with pytest.raises(ValueError, match=r"fake must hold at least k \+ 1 = 4 .*got 3"):
        quality.knn_precision_recall(real, jnp.zeros((3, 2, 2)), k=3)
    with pytest.raises(ValueError, match=r"real must hold at least k \+ 1 = 6"):
        quality.knn_precision_recall(real, jnp.zeros((8, 2, 2)), k=5)
    with pytest.raises(TypeError, match="k must be a Python int"):
        quality.knn_precision_recall(real, real, k=2.5)
    with pytest.raises(ValueError, match="fake contains 1 non-finite"):
        quality.knn_precision_recall(real, real.at[0, 0, 0].set(jnp.inf))


def _brute_energy(real, fake):
    """float64 oracle: full distance matrices, diagonals left out of the within-set means."""
    x = np.asarray(real, np.float64).reshape(len(real), -1)
    y = np.asarray(fake, np.float64).reshape(len(fake), -1)
    d = lambda a, b: np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))  # noqa: E731
    n, m = len(x), len(y)
    return 2 * d(x, y).mean() - d(x, x).sum() / (n * (n - 1)) - d(y, y).sum() / (m * (m - 1))


@pytest.mark.parametrize("shift", [0.0, 0.5, 3.0])
def test_energy_distance_against_brute_force(rng, shift):
    real = rng.standard_normal((50, 2, 4)).astype(np.float32)
    fake = (rng.standard_normal((23, 2, 4)) * 0.8 + shift).astype(np.float32)
    want = _brute_energy(real, fake)
    for chunk in (None, 6):
        got = float(quality.energy_distance(real, fake, chunk_size=chunk))
        assert got == pytest.approx(want, rel=1e-4, abs=1e-4)


def test_energy_distance_properties(rng):
    real = rng.standard_normal((40, 5)).astype(np.float32)
    other = rng.standard_normal((40, 5)).astype(np.float32)
    # Unbiased: near 0 for two samples of one distribution (either sign), clearly positive otherwise,
    # growing with the shift; symmetric in its arguments.
    same = float(quality.energy_distance(real, other))
    assert abs(same) < 0.3
    shifted = [float(quality.energy_distance(real, other + s)) for s in (1.0, 2.0, 4.0)]
    assert same < shifted[0] < shifted[1] < shifted[2]
    assert float(quality.energy_distance(other + 1.0, real)) == pytest.approx(shifted[0], rel=1e-5)
    # Far apart, ℰ → 2·(shift distance) − the two within-set means
    far = float(quality.energy_distance(real, other + 100.0))
    assert far == pytest.approx(_brute_energy(real, other + 100.0), rel=1e-5)
    assert quality.energy_distance(real, other).dtype == jnp.float32


def test_energy_distance_errors():
    with pytest.raises(ValueError, match=r"event shape of real, \(2, 2\)"):
        quality.energy_distance(jnp.zeros((5, 2, 2)), jnp.zeros((5, 4)))
    with pytest.raises(ValueError, match="fake must hold at least 2 examples"):
        quality.energy_distance(jnp.zeros((5, 3)), jnp.zeros((1, 3)))
    with pytest.raises(ValueError, match="real contains 1 non-finite"):
        quality.energy_distance(jnp.zeros((5, 3)).at[0, 0].set(jnp.nan), jnp.zeros((5, 3)))
