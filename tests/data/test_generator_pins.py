"""The synthetic generators give the pinned points for a seed: benchmark tables stay comparable
across versions (tests/data/generator_pins.py says how the pins were written)."""

import numpy as np
import pytest

from generator_pins import CASES, PINS, generate  # tests/data/ is on sys.path (pytest's prepend import mode)

from mmh_jax.data import synthetic


@pytest.fixture(scope="module")
def pins():
    with np.load(PINS) as f:
        return dict(f)


@pytest.mark.parametrize("name", sorted(CASES))
def test_generator_output_is_pinned(pins, name):
    ds = generate(name)
    np.testing.assert_array_equal(ds.lid, pins[f"{name}/lid"])
    np.testing.assert_array_equal(ds.component, pins[f"{name}/component"])
    x = pins[f"{name}/x"]
    # float32 points computed in float64 (QR, sin): allow last-bit differences between LAPACK builds.
    np.testing.assert_allclose(ds.x, x, rtol=1e-6, atol=1e-6 * float(np.abs(x).max()))


def test_the_pins_cover_every_generator():
    assert {generator for generator, _ in CASES.values()} == set(synthetic.GENERATORS)


def test_a_changed_recipe_breaks_its_pin(pins):
    ds = generate("squiggly_10_f1")
    with pytest.raises(AssertionError):
        np.testing.assert_allclose(ds.x * (1 + 1e-5), pins["squiggly_10_f1/x"], rtol=1e-6,
                                   atol=1e-6 * float(np.abs(pins["squiggly_10_f1/x"]).max()))
