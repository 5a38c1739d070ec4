"""SVD-taking estimators are mapped on one CPU device (a batched SVD under a map sharded over
emulated CPU devices can hang XLA:CPU; mmh_jax.parallel's docstring); the others on every device."""

import jax

from mmh_jax.experiments import model_estimators

SVD_BASED = {"normal-bundle", "flow-jacobian", "fast-flow-lidl"}


def test_the_svd_based_estimators_are_marked():
    assert {name for name, e in model_estimators.ESTIMATORS.items() if e.decomposes} == SVD_BASED


def test_svd_based_estimators_map_on_one_cpu_device_the_others_on_all():
    assert jax.default_backend() == "cpu" and jax.device_count() == 4  # tests/conftest.py emulates 4
    for name in model_estimators.names():
        mesh = model_estimators.mesh_for(name)
        if name in SVD_BASED:
            assert mesh is not None and list(mesh.devices.flat) == jax.devices()[:1], name
        else:
            assert mesh is None, name
