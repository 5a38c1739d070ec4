"""Hypothesis property tests of the estimators: what the math says must hold for every input.

- batch order: estimating at permuted points gives the permuted estimates (``jax.vmap`` of FLIPD
  with each point's own key; the model-free lPCA, MLE, TwoNN and ESS on a permuted data set);
- rotation: rotating the data and the score together (s_R(y, t) = R s(Rᵀy, t)) leaves FLIPD
  unchanged (exact trace; the score is the closed-form one of a Gaussian mixture on subspaces);
- translation: shifting the data set leaves the model-free LID* unchanged;
- finiteness: finite input with a finite score gives a finite FLIPD, at any t0; data in general
  position give finite model-free estimates at any scale.

Shapes are fixed per test (one compile each) and hypothesis draws seeds, permutations, rotations
and magnitudes. The ``mmh-ci`` profile (default) is derandomized, so CI sees the same examples
every run; ``MMH_HYPOTHESIS_PROFILE=mmh-dev`` draws fresh, and more, examples.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from mmh_jax import lid
from mmh_jax.data.gaussian import random_gaussian_mixture
from mmh_jax.sde import VPSDE

settings.register_profile(
    "mmh-ci", max_examples=6, deadline=None, derandomize=True, database=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("mmh-dev", parent=settings.get_profile("mmh-ci"), max_examples=60, derandomize=False)
PROFILE = settings.get_profile(os.environ.get("MMH_HYPOTHESIS_PROFILE", "mmh-ci"))

VP = VPSDE()
D = 4
N_POINTS = 8
#: Points and neighbours of the model-free data sets in D = 4: the shape and k of test_model_free.py's
#: shared data set (SHARED_N, SHARED_D, SHARED_K), so a worker running both files compiles each
#: estimator once for the two.
N_DATA, K_DATA = 61, 20
GM = random_gaussian_mixture(0, [1, 3], D)  # two components: true LID 1 and 3
SCORE = GM.score_fn(VP)

MODEL_FREE = {
    "lpca": lambda data: lid.lpca(data, k=K_DATA),
    "mle": lambda data: lid.mle(data, k=K_DATA),
    "twonn": lambda data: lid.twonn(data, k=K_DATA),
    "ess": lambda data: lid.ess(data, k=K_DATA),
}


#: The score at every point at one time, compiled once (eagerly it dispatches op by op).
_scores = jax.jit(jax.vmap(SCORE, in_axes=(0, None)))


@jax.jit
def _flipd_batch(xs, keys):
    return jax.vmap(lambda x, k: lid.flipd(SCORE, x, k, t0=0.05, sde=VP, trace="hutchinson", num_probes=2))(xs, keys)


@jax.jit
def _flipd_exact(xs, rotation, t0):
    def score_rotated(y, t):
        return rotation @ SCORE(rotation.T @ y, t)

    def both(x):
        plain = lid.flipd(SCORE, x, None, t0=t0, sde=VP, trace="exact")
        rotated = lid.flipd(score_rotated, rotation @ x, None, t0=t0, sde=VP, trace="exact")
        return plain, rotated

    return jax.vmap(both)(xs)


@jax.jit
def _sample(key):
    return GM.sample(key, N_POINTS)[0]  # one compiled program, not a few dozen op-by-op ones


def _points(seed: int) -> jax.Array:
    return _sample(jax.random.key(seed))


def _manifold_data(seed: int, n: int = N_DATA) -> np.ndarray:
    """n points of a 2-D Gaussian on a random plane in R^4, plus small noise (general position)."""
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.normal(size=(D, 2)))
    return (rng.normal(size=(n, 2)) @ basis.T + 1e-3 * rng.normal(size=(n, D))).astype(np.float32)


def _orthogonal(seed: int) -> jax.Array:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(D, D)))
    return jnp.asarray(q * np.sign(np.diag(r)), jnp.float32)  # Haar-distributed rotation (or reflection)


@PROFILE
@given(seed=st.integers(0, 2**31 - 1), perm=st.permutations(range(N_POINTS)))
def test_flipd_is_invariant_to_batch_order(seed, perm):
    xs = _points(seed)
    keys = jax.random.split(jax.random.key(seed + 1), N_POINTS)
    p = np.asarray(perm)
    est = np.asarray(_flipd_batch(xs, keys))
    est_perm = np.asarray(_flipd_batch(xs[p], keys[p]))
    np.testing.assert_allclose(est_perm, est[p], rtol=1e-5, atol=1e-5)


@PROFILE
@given(seed=st.integers(0, 2**31 - 1), perm=st.permutations(range(N_DATA)))
@pytest.mark.parametrize("name", list(MODEL_FREE))
def test_model_free_is_invariant_to_batch_order(name, seed, perm):
    data = _manifold_data(seed)
    p = np.asarray(perm)
    est = np.asarray(MODEL_FREE[name](jnp.asarray(data)))
    est_perm = np.asarray(MODEL_FREE[name](jnp.asarray(data[p])))
    np.testing.assert_allclose(est_perm, est[p], rtol=1e-4, atol=1e-4)


@PROFILE
@given(seed=st.integers(0, 2**31 - 1), t0=st.floats(0.01, 1.0))
def test_flipd_is_invariant_to_rotating_data_and_score_together(seed, t0):
    xs = _points(seed)
    plain, rotated = _flipd_exact(xs, _orthogonal(seed), jnp.float32(t0))
    # float32 sums of D·(score terms of size up to ~1/σ²): compare on the scale of D.
    np.testing.assert_allclose(np.asarray(rotated), np.asarray(plain), rtol=0, atol=2e-3 * D)


@PROFILE
@given(seed=st.integers(0, 2**31 - 1),
       shift=st.lists(st.floats(-20.0, 20.0, allow_nan=False), min_size=D, max_size=D))
@pytest.mark.parametrize("name", list(MODEL_FREE))
def test_model_free_is_invariant_to_translation(name, seed, shift):
    data = _manifold_data(seed)
    est = np.asarray(MODEL_FREE[name](jnp.asarray(data)))
    moved = np.asarray(MODEL_FREE[name](jnp.asarray(data + np.asarray(shift, np.float32))))
    # Shifting by up to 20 costs float32 ~1e-6 relative in the coordinates: estimates move by far
    # less than the tolerance (lPCA's eigenvalue counts not at all: the plane's gap is ~1e6).
    np.testing.assert_allclose(moved, est, rtol=2e-3, atol=2e-3)


@PROFILE
@given(xs=arrays(np.float32, (N_POINTS, D), elements=st.floats(-30.0, 30.0, width=32)),
       t0=st.floats(1e-3, 1.0), seed=st.integers(0, 2**31 - 1))
def test_flipd_is_finite_for_finite_input(xs, t0, seed):
    xs = jnp.asarray(xs)
    t0 = jnp.float32(t0)
    assert np.isfinite(np.asarray(_scores(xs, t0))).all()  # premise: finite scores
    exact, _ = _flipd_exact(xs, jnp.eye(D), t0)
    hutch = _flipd_batch(xs, jax.random.split(jax.random.key(seed), N_POINTS))
    assert np.isfinite(np.asarray(exact)).all() and np.isfinite(np.asarray(hutch)).all()


@PROFILE
@given(seed=st.integers(0, 2**31 - 1), log_scale=st.floats(-3.0, 3.0))
@pytest.mark.parametrize("name", list(MODEL_FREE))
def test_model_free_is_finite_for_data_in_general_position(name, seed, log_scale):
    data = _manifold_data(seed) * np.float32(10.0**log_scale)
    est = np.asarray(MODEL_FREE[name](jnp.asarray(data)))
    assert np.isfinite(est).all(), est
