"""Same seed, same numbers; results say what made them; checkpoints never run code.

- ``mmh-jax train`` twice with one seed gives bit-identical parameters, and ``mmh-jax lid`` on them
  bit-identical estimates (same machine, same process);
- ``config.json`` records the seed, the configuration and the package versions (provenance);
- loading a checkpoint reads JSON and array files only: a pickle with a ``__reduce__`` payload
  dropped into the run directory (even named like a config) is never executed, and no pickle
  function is called at all while loading.
"""

import json
import os
import pickle

import jax
import numpy as np
import pytest

import mmh_jax
from mmh_jax import cli
from mmh_jax.provenance import PACKAGES

pytestmark = pytest.mark.e2e  # runs `mmh-jax train` and `mmh-jax lid` twice

TRAIN = ["train", "--preset", "quick", "--steps", "3", "--n", "64", "--seed", "7"]
LID = ["lid", "--estimator", "flipd", "--preset", "quick", "--n", "8", "--t0-grid", "1e-3", "1", "4",
       "--seed", "3"]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, tiny_run):
    """The shared tiny run (conftest: the TRAIN command below) and a second run of the same command."""
    import shutil

    base = tmp_path_factory.mktemp("determinism")
    a, b = base / "a", base / "b"
    shutil.copytree(tiny_run, a)
    assert cli.main([*TRAIN, "--out", str(b)]) == 0
    for out in (a, b):
        assert cli.main([*LID, "--checkpoint", str(out), "--out", str(out / "lid")]) == 0  # writes lid/lid.npz
    return a, b


def test_same_seed_gives_identical_parameters_and_estimates(two_runs):
    a, b = (mmh_jax.load(str(r)) for r in two_runs)
    leaves_a, leaves_b = jax.tree_util.tree_leaves(a.params), jax.tree_util.tree_leaves(b.params)
    assert len(leaves_a) == len(leaves_b) > 0
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    with np.load(two_runs[0] / "lid" / "lid.npz") as fa, np.load(two_runs[1] / "lid" / "lid.npz") as fb:
        assert sorted(fa.files) == sorted(fb.files)
        for k in fa.files:
            np.testing.assert_array_equal(fa[k], fb[k], err_msg=k)
        assert np.all(np.isfinite(fa["lid"]))


def test_another_seed_gives_other_estimates(two_runs, tmp_path):
    out = tmp_path / "lid"
    assert cli.main([*LID[:-1], "4", "--checkpoint", str(two_runs[0]), "--out", str(out)]) == 0
    with np.load(two_runs[0] / "lid" / "lid.npz") as fa, np.load(out / "lid.npz") as fb:
        assert not np.array_equal(fa["index"], fb["index"])  # another seed, another subsample


def test_config_json_records_seed_config_and_versions(two_runs):
    cfg = json.loads((two_runs[0] / "config.json").read_text())
    assert cfg["seed"] == 7 and cfg["steps"] == 3 and cfg["model"] == "mlp"
    versions = cfg["provenance"]["versions"]
    assert set(versions) == {*PACKAGES, "mmh_jax"}
    assert versions["jax"] == jax.__version__ and versions["mmh_jax"] == mmh_jax.__version__
    assert versions["flax"] and versions["optax"] and versions["orbax-checkpoint"] and versions["numpy"]
    assert cfg["provenance"]["backend"] == jax.default_backend()


class _Payload:
    """Unpickling this runs ``os.system`` (here: creating a marker file) — what a loader must never do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_loading_a_checkpoint_never_executes_code_from_its_directory(two_runs, tmp_path, monkeypatch):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(two_runs[0], run)
    marker = tmp_path / "PWNED"
    step_dir = run / "checkpoints" / os.listdir(run / "checkpoints")[0]
    for path in (run / "config.pkl", run / "model.pkl", step_dir / "config.pkl", step_dir / "meta" / "config.pkl",
                 run / "checkpoints" / "state.pkl"):
        path.write_bytes(pickle.dumps(_Payload(marker)))
    # Sanity: the payload does run when unpickled (so the test below could fail).
    pickle.loads(pickle.dumps(_Payload(tmp_path / "sanity")))
    assert (tmp_path / "sanity").exists()

    def forbidden(*a, **k):
        raise AssertionError("checkpoint loading called pickle")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, forbidden)
    model = mmh_jax.load(str(run))
    monkeypatch.undo()

    assert not marker.exists()
    # The configuration came from the checkpoint's JSON metadata.
    meta = json.loads((step_dir / "meta" / "metadata").read_text())
    assert meta["config"] == model.config and meta["format"] == "mmh_jax.train/1"
    x = np.zeros((4, 2), np.float32)
    assert np.all(np.isfinite(np.asarray(jax.vmap(lambda p: model.score_fn(p, 0.5))(x))))
