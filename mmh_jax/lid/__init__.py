"""LID estimators: pure, single-example JAX functions (jit/vmap/grad friendly).

This subpackage depends on jax and numpy only; it never imports flax or optax.

The estimators, most used first:

- score-based: [`flipd`][mmh_jax.lid.flipd], [`flipd_curve`][mmh_jax.lid.flipd_curve] and its
  readouts [`knee`][mmh_jax.lid.knee] and [`plateau`][mmh_jax.lid.plateau],
  [`fp_regress`][mmh_jax.lid.fp_regress], [`normal_bundle`][mmh_jax.lid.normal_bundle],
  [`cfdm`][mmh_jax.lid.cfdm], [`cfg_norm`][mmh_jax.lid.cfg_norm];
- decoder/flow-based: [`lidl`][mmh_jax.lid.lidl] (an ensemble of density models at several noise
  scales), [`fast_flow_lidl`][mmh_jax.lid.fast_flow_lidl],
  [`jacobian_spectrum`][mmh_jax.lid.jacobian_spectrum], [`lid_from_spectrum`][mmh_jax.lid.lid_from_spectrum];
- model-free (LID* of a data set): [`lpca`][mmh_jax.lid.lpca], [`mle`][mmh_jax.lid.mle],
  [`twonn`][mmh_jax.lid.twonn], [`ess`][mmh_jax.lid.ess], on the exact search [`knn`][mmh_jax.lid.knn].

Evaluation against ground truth: [`evaluate`][mmh_jax.lid.evaluate]. The trace options of the
FLIPD-type estimators: [`TRACES`][mmh_jax.lid.TRACES].
"""

from mmh_jax.lid._score import cfdm, cfg_norm, flipd, flipd_curve, fp_regress, normal_bundle
from mmh_jax.lid._readouts import knee, plateau
from mmh_jax.lid._lidl import lidl
from mmh_jax.lid._spectrum import fast_flow_lidl, jacobian_spectrum, lid_from_spectrum
from mmh_jax.lid._model_free import ess, lpca, mle, twonn
from mmh_jax.lid._knn import knn
from mmh_jax.lid._metrics import evaluate
from mmh_jax.lid import _lidl, _readouts, _trace

LIDL_DELTAS = tuple(float(d) for d in _lidl.NOISE_SCALES)
"""LIDL's default noise scales δ, ``geomspace(0.01, 0.1, 8)``: [`lidl`][mmh_jax.lid.lidl]'s ``deltas``,
FPRegress's ``log δ`` grid ([`fp_regress`][mmh_jax.lid.fp_regress]) and the flows ``mmh-jax train
--model lidl`` trains."""

MAX_SLOPE = _readouts.MAX_SLOPE
"""Default ``max_slope`` of [`knee`][mmh_jax.lid.knee] and [`plateau`][mmh_jax.lid.plateau]: a FLIPD
curve whose flattest stretch still changes by more than this many dimensions per decade of t₀ has
no plateau, and both readouts return NaN for it."""

TRACES = _trace.TRACES
"""The ``trace`` options of [`flipd`][mmh_jax.lid.flipd], [`flipd_curve`][mmh_jax.lid.flipd_curve] and
[`fp_regress`][mmh_jax.lid.fp_regress]: ``("auto", "exact", "hutchinson")``. ``"exact"`` takes D
Jacobian-vector products, ``"hutchinson"`` Rademacher probes, ``"auto"`` the exact trace for D ≤ 3500."""

__all__ = [
    "LIDL_DELTAS",
    "MAX_SLOPE",
    "TRACES",
    "cfdm",
    "cfg_norm",
    "ess",
    "evaluate",
    "fast_flow_lidl",
    "flipd",
    "flipd_curve",
    "fp_regress",
    "jacobian_spectrum",
    "knee",
    "knn",
    "lid_from_spectrum",
    "lidl",
    "lpca",
    "mle",
    "normal_bundle",
    "plateau",
    "twonn",
]
