"""LID estimators: pure, single-example JAX functions (jit/vmap/grad friendly).

This subpackage depends on jax and numpy only; it never imports flax or optax.

Score-based: :func:`flipd`, :func:`flipd_curve`, :func:`knee`, :func:`plateau`, :func:`fp_regress`,
:func:`normal_bundle`, :func:`cfdm`, :func:`cfg_norm`.
Decoder/flow-based: :func:`jacobian_spectrum`, :func:`lid_from_spectrum`, :func:`fast_flow_lidl`, and
:func:`lidl` (an ensemble of density models at several noise scales).
Model-free (LID* of a data set): :func:`lpca`, :func:`mle`, :func:`twonn`, :func:`ess`, :func:`knn`.
Evaluation against ground truth: :func:`evaluate`.
"""

from mmh_jax.lid._flow import lidl
from mmh_jax.lid._metrics import evaluate
from mmh_jax.lid._model_free import ess, knn, lpca, mle, twonn
from mmh_jax.lid._score import cfdm, cfg_norm, flipd, flipd_curve, fp_regress, knee, normal_bundle, plateau
from mmh_jax.lid._spectrum import fast_flow_lidl, jacobian_spectrum, lid_from_spectrum

__all__ = [
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
