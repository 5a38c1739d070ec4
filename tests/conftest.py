"""Strict test settings (as in diffrax/equinox): several CPU devices, rank promotion raises."""

import os

# Must happen before JAX initialises its backends.
os.environ.setdefault("XLA_FLAGS", "")
import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 4)
jax.config.update("jax_numpy_rank_promotion", "raise")

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def key():
    return jax.random.key(0)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def quick_pipeline(tmp_path_factory):
    """One ``mmh-jax run --preset quick`` (all experiments) shared by the pipeline tests.

    Returns ``(rc, out, metrics)`` with metrics as read back from ``metrics.json`` (where NaN is
    written as null; read back here as NaN). Training and compiling the quick models dominates these
    tests, so every pipeline test reads this one run instead of training its own.
    """
    import json

    from mmh_jax import cli

    out = tmp_path_factory.mktemp("quick_run")
    rc = cli.main(["run", "--preset", "quick", "--out", str(out)])
    def nan_for_null(obj):
        if isinstance(obj, dict):
            return {k: nan_for_null(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [nan_for_null(v) for v in obj]
        return float("nan") if obj is None else obj

    return rc, out, nan_for_null(json.loads((out / "metrics.json").read_text()))


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A run directory of ``mmh-jax train`` at the smallest useful size (quick MLP, 3 steps, 64 points
    of lollipop, seed 7), shared by the reliability tests. Tests copy it before changing anything."""
    from mmh_jax import cli

    out = tmp_path_factory.mktemp("tiny_run") / "run"
    assert cli.main(["train", "--preset", "quick", "--steps", "3", "--n", "64", "--seed", "7", "--out", str(out)]) == 0
    return out


#: Session fixtures that are expensive to build: under pytest-xdist every test that uses one runs
#: on the same worker (``--dist loadgroup``), so each is built once per run, not once per worker.
SHARED_SESSION_FIXTURES = ("quick_pipeline", "tiny_run")


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the xdist_group marks
def pytest_collection_modifyitems(config, items):
    for item in items:
        for name in SHARED_SESSION_FIXTURES:
            if name in getattr(item, "fixturenames", ()):
                item.add_marker(pytest.mark.xdist_group(name))
                break
