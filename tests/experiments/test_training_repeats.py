"""Training data with a ``repeats`` array: examples the sampler emphasises without the data holding copies."""

import numpy as np
import pytest

from mmh_jax.experiments import training
from mmh_jax.experiments.pipeline import common


def _cfg(path, **kw):
    return training.TrainConfig(data=str(path), model="mlp", **kw)


def test_repeats_expand_for_training_only(tmp_path):
    x = np.arange(8, dtype=np.float32).reshape(4, 2)
    np.savez(tmp_path / "d.npz", x=x, repeats=np.array([1, 3, 1, 2]))
    got, labels = training.load_training_data(_cfg(tmp_path / "d.npz"))
    assert labels is None
    np.testing.assert_array_equal(got, np.repeat(x, [1, 3, 1, 2], axis=0))
    stored, _ = training.load_training_data(_cfg(tmp_path / "d.npz"), expand=False)
    np.testing.assert_array_equal(stored, x)


def test_repeats_with_labelled_images(tmp_path):
    x = np.zeros((3, 8, 8, 1), np.float32) + np.arange(3, dtype=np.float32)[:, None, None, None] / 3
    np.savez(tmp_path / "i.npz", x=x, labels=np.array([0, 1, 2]), repeats=np.array([2, 1, 1], np.int32))
    got, labels = training.load_training_data(training.TrainConfig(data=str(tmp_path / "i.npz"), model="unet",
                                                                     class_conditional=True))
    assert got.shape == (4, 8, 8, 1) and labels.tolist() == [0, 0, 1, 2]


@pytest.mark.parametrize("repeats, match", [(np.array([1, 0, 1, 1]), r"repeats' must be >= 1.*min 0"),
                                            (np.array([1.0, 2.0, 1.0, 1.0]), "integer array of shape \\(4,\\)"),
                                            (np.array([1, 2]), "integer array of shape \\(4,\\).*shape \\(2,\\)")])
def test_bad_repeats_are_named(tmp_path, repeats, match):
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 2), np.float32), repeats=repeats)
    with pytest.raises(ValueError, match=match):
        training.load_training_data(_cfg(tmp_path / "d.npz"))


def test_label_calibration_bounds_the_heldout_rate(tmp_path):
    """Held-out digits that sit as close to the training set as each other: the threshold labels at
    most target_fpr of them in-sample, and the cross-fitted rate is reported with its interval."""
    rng = np.random.default_rng(0)
    train = rng.normal(size=(120, 4, 4, 1)).astype(np.float32)
    held = rng.normal(size=(400, 4, 4, 1)).astype(np.float32)
    setup = common.DigitsSetup(None, train, np.zeros(120, np.int32), train, np.zeros(120, np.int32),
                               np.zeros(120, np.int32), np.zeros(120, bool), np.zeros(120, bool), held,
                               rng.integers(0, 10, 400).astype(np.int32))

    class Cfg:
        calibration_n, label_fpr, threshold = 50, 0.01, 1 / 3

    ctx = common.Context(out=str(tmp_path), progress=False)
    cal = common.label_calibration(setup, Cfg, ctx)
    assert cal.in_sample_fpr <= 0.01 and cal.n_heldout == 400
    assert cal.fpr_low <= cal.fpr <= cal.fpr_high and cal.fpr < 0.05
    assert common.label_calibration(setup, Cfg, ctx) is cal  # once per run
    assert "cross-fitted false-positive rate" in cal.text()
    empty = common.DigitsSetup(None, train, None, train, None, None, None, None, held[:0], np.zeros(0, np.int32))
    none = common.label_calibration(empty, Cfg, common.Context(out=str(tmp_path), progress=False))
    assert none.threshold == 1 / 3 and "not measured" in none.text()
