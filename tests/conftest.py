"""Strict test settings (as in diffrax/equinox): several CPU devices, rank promotion raises."""

import atexit
import os
import shutil
import tempfile

# Must happen before JAX initialises its backends. XLA:CPU's backend optimisations off: the tests'
# programs are small, so compiling them optimised costs more than it saves (docs/performance.md).
# Child processes inherit the setting; MMH_JAX_TEST_XLA_FLAGS="" runs the suite optimised.
os.environ.setdefault("XLA_FLAGS", os.environ.get(
    "MMH_JAX_TEST_XLA_FLAGS", "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"))
# BLAS libraries single-threaded (numpy, scipy, scikit-learn, skdim): two xdist workers on two cores
# each starting a thread per core made the reference computations fight (docs/performance.md).
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 4)
jax.config.update("jax_numpy_rank_promotion", "raise")

# JAX's persistent compilation cache, private to this test process: many tests compile the same
# programs again (every training run, CLI call or resume builds fresh jitted functions), and a
# cache hit loads the executable XLA compiled before instead of compiling it anew (test_train.py:
# 111 -> 73 s). The folder is new per process and removed at exit; it is not passed to xdist's other
# worker or to child processes, because JAX writes cache entries without a lock.
_XLA_CACHE = tempfile.mkdtemp(prefix="mmh_jax_test_xla_cache_")
atexit.register(shutil.rmtree, _XLA_CACHE, ignore_errors=True)
jax.config.update("jax_compilation_cache_dir", _XLA_CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.3)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

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


#: Test folders whose every test is end-to-end (the ``e2e`` tier): CLI commands and their child
#: processes, the pipeline and benchmarks, the docs build and the notebooks. Elsewhere a test that
#: runs a command or a subprocess carries ``@pytest.mark.e2e`` itself.
E2E_FOLDERS = ("cli", "experiments", "bench", "docs")
_TESTS = os.path.dirname(os.path.abspath(__file__))


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the xdist_group marks
def pytest_collection_modifyitems(config, items):
    for item in items:
        folder = os.path.relpath(str(item.path), _TESTS).split(os.sep)[0]
        if folder in E2E_FOLDERS or item.get_closest_marker("slow"):  # so -m "not e2e" leaves out slow ones too
            item.add_marker(pytest.mark.e2e)
        for name in SHARED_SESSION_FIXTURES:
            if name in getattr(item, "fixturenames", ()):
                item.add_marker(pytest.mark.xdist_group(name))
                break
