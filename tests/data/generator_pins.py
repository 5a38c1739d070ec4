"""The pinned outputs of the synthetic generators (``generator_pins.npz``), and how to rewrite them.

The benchmark tables compare runs across versions, so a generator must give the same points for the
same seed in every version. `tests/data/test_generator_pins.py` checks each case below against the
pinned file. Rewrite the file only for an intended change of a recipe, and say so in the change:

    python tests/data/generator_pins.py
"""

import pathlib

import numpy as np

from mmh_jax.data import synthetic

PINS = pathlib.Path(__file__).with_name("generator_pins.npz")

#: name -> (generator, keyword arguments): every generator, the benchmark mixtures at D = 10, 100, 800.
CASES = {
    "lollipop": ("lollipop", {"n": 7}),
    "torus_circle": ("torus_circle", {"n": 7}),
    "swiss_roll": ("swiss_roll", {"n": 7}),
    "swiss_roll_hole": ("swiss_roll", {"n": 7, "hole": True}),
    "von_mises_point_mass": ("von_mises_point_mass", {"n": 7}),
    "gaussian_subspace": ("gaussian_subspace", {"n": 7, "dim": 2, "ambient_dim": 5}),
    "affine_10_uniform": ("affine_mixture", {"n": 9, "dims": [2, 4, 8], "ambient_dim": 10}),
    "affine_10_gaussian": ("affine_mixture", {"n": 9, "dims": [2, 4, 8], "ambient_dim": 10, "distribution": "gaussian"}),
    "squiggly_10_f1": ("squiggly_mixture", {"n": 9, "dims": [2, 4, 8], "ambient_dim": 10, "frequency": 1.0}),
    "squiggly_10_f5": ("squiggly_mixture", {"n": 9, "dims": [2, 4, 8], "ambient_dim": 10, "frequency": 5.0}),
    "affine_100": ("affine_mixture", {"n": 6, "dims": [10, 25, 50], "ambient_dim": 100}),
    "squiggly_100": ("squiggly_mixture", {"n": 6, "dims": [10, 25, 50], "ambient_dim": 100}),
    "affine_800": ("affine_mixture", {"n": 6, "dims": [10, 80, 200], "ambient_dim": 800}),
    "squiggly_800": ("squiggly_mixture", {"n": 6, "dims": [10, 80, 200], "ambient_dim": 800}),
}
SEED = 3


def generate(name: str) -> synthetic.Dataset:
    generator, kwargs = CASES[name]
    return synthetic.GENERATORS[generator](seed=SEED, **kwargs)


def write() -> None:
    arrays = {}
    for name in CASES:
        ds = generate(name)
        arrays.update({f"{name}/x": ds.x, f"{name}/lid": ds.lid, f"{name}/component": ds.component})
    np.savez_compressed(PINS, **arrays)


if __name__ == "__main__":
    write()
    print(f"wrote {PINS}")
