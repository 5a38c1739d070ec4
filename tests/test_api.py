"""The public API is pinned (docs/design.md, "API contract") and the estimators stay free of flax/optax."""

import subprocess
import sys

import mmh_jax
from mmh_jax import lid, memorization, parallel, quality, sde, verdicts

LID_CONSTANTS = {"LIDL_DELTAS", "MAX_SLOPE", "TRACES"}
LID_NAMES = {
    "cfdm", "cfg_norm", "ess", "evaluate", "fast_flow_lidl", "flipd", "flipd_curve", "fp_regress",
    "jacobian_spectrum", "knee", "knn", "lid_from_spectrum", "lidl", "lpca", "mle", "normal_bundle", "plateau", "twonn",
}


def test_public_names_are_pinned():
    assert set(lid.__all__) == LID_NAMES | LID_CONSTANTS
    assert lid.TRACES == ("auto", "exact", "hutchinson") and len(lid.LIDL_DELTAS) == 8
    for name in LID_NAMES:
        assert callable(getattr(lid, name))
    assert {"map_points", "make_mesh"} <= set(parallel.__all__)
    assert sde.__all__ == ["CosineVPSDE", "DiscreteVPSDE", "EDMSDE", "VPSDE"]
    assert {"lid", "memorization", "parallel", "quality", "sde", "verdicts"} <= set(mmh_jax.__all__)
    assert set(memorization.__all__) == {
        "CLASSES", "calibrate_threshold", "calibrated_l2", "class_counts", "classify", "detection_metrics",
        "memorized", "nearest_training",
    }
    assert quality.__all__ == ["energy_distance", "knn_precision_recall"]
    assert {"Finding", "decide", "finding", "bootstrap_interval", "auroc", "wilson_interval"} <= set(verdicts.__all__)


def test_lid_does_not_import_flax_or_optax():
    code = "import sys, mmh_jax.lid, mmh_jax.sde, mmh_jax.parallel, mmh_jax.memorization, mmh_jax.quality, mmh_jax.verdicts; print(sorted(m for m in ('flax', 'optax', 'orbax') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
