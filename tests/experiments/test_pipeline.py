"""`mmh-jax run --preset quick`: every experiment end to end, the report and the metrics.json contract.

One quick run (tiny models, a few dozen training steps) serves every test here; the numbers it gives
are not findings (the models are barely trained), so only structure, consistency and finiteness are
checked. The findings are checked on the default preset and stated in the report.
"""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmh_jax import cli
from mmh_jax._compile import compiler_options
from mmh_jax.experiments.pipeline import config as pipeline_config
from mmh_jax.experiments.pipeline import run as pipeline_run
from mmh_jax.experiments.pipeline import toy
from mmh_jax.experiments.pipeline.run import summary_rows

# metrics.json keys readers rely on (others may be added): every experiment states its findings.
REQUIRED = [
    "toy.counts.generalized", "toy.counts.od_mem", "toy.counts.dd_mem", "toy.findings",
    "images.findings", "images.label.threshold", "images.label.fpr", "images.planted.od_mem", "images.planted.dd_mem",
    "images.od_dd.gap", "conditional.findings", "conditional.label.fpr",
    "mitigation.findings", "mitigation.lambdas", "mitigation.memorized_fraction", "mitigation.quality",
    "config", "timing", "seed", "provenance.versions.jax", "provenance.versions.mmh_jax",
]


def _has(d, path):
    for part in path.split("."):
        if not isinstance(d, dict) or part not in d:
            return False
        d = d[part]
    return True


@pytest.fixture(scope="module")
def quick_run(quick_pipeline):
    return quick_pipeline  # the session's shared quick run (tests/conftest.py)


def test_quick_run_writes_the_contracted_metrics_and_report(quick_run, capsys):
    rc, out, metrics = quick_run
    assert rc == 0
    missing = [k for k in REQUIRED if not _has(metrics, k)]
    assert not missing, missing
    page = (out / "report.html").read_text()
    for exp in pipeline_config.EXPERIMENTS:
        for fig in metrics[exp]["figures"]:
            assert (out / fig).stat().st_size > 0
        assert metrics[exp]["reading"] and metrics[exp]["reading"][:40] in page.replace("&#x27;", "'")
    assert page.count("data:image/png;base64,") == sum(len(metrics[e]["figures"]) for e in pipeline_config.EXPERIMENTS)
    assert "is missing" not in page


def test_quick_run_counts_and_samples_are_consistent(quick_run):
    _, out, metrics = quick_run
    q = pipeline_config.preset("quick")
    assert sum(metrics["toy"]["counts"].values()) == q.toy.n_samples
    toy = np.load(out / "toy.npz")
    for i, name in enumerate(("generalized", "od_mem", "dd_mem")):
        assert int(np.sum(toy["mmh_class"] == i)) == metrics["toy"]["counts"][name]
    img = np.load(out / "images.npz")
    m = metrics["images"]
    assert img["samples"].shape == (q.images.n_unconditional, 8, 8, 1)
    assert m["n_memorized_unconditional"] == int(np.sum(img["memorized"]))
    n_own = q.images.per_image_samples * (q.images.n_duplicated + q.images.own_label_unique)
    assert img["guided_samples"].shape == (q.images.n_samples + n_own, 8, 8, 1)
    # every memorized sample is OD-Mem, DD-Mem or neither; the rest are generalized
    mem = np.concatenate([img["memorized"], img["guided_memorized"]])
    assert np.array_equal(mem, (img["mmh_class"] > 0) | img["neither"])
    assert not np.any(img["neither"] & (img["mmh_class"] > 0))
    # the planted table counts each per-image-label sample once
    planted = {k: sum(v.values()) for k, v in m["planted"].items()}
    assert planted == {"od_mem": q.images.per_image_samples * q.images.own_label_unique,
                       "dd_mem": q.images.per_image_samples * q.images.n_duplicated}
    assert np.all(np.isfinite(img["flipd"])) and np.all(np.isfinite(img["lid_star"]))
    dd = img["mmh_class"] == 2
    assert np.all(img["lid_star"][dd] <= m["od_dd"]["small"]) and np.all(img["lid_theta"][dd] <= m["od_dd"]["small"])


def test_rerun_reuses_the_trained_models(quick_run, tmp_path):
    _, out, _ = quick_run
    before = {p: p.stat().st_mtime_ns for p in (out / "models").rglob("*") if p.is_file() and "checkpoints" in str(p)}
    assert cli.main(["run", "toy", "--preset", "quick", "--recompute", "--out", str(out)]) == 0
    after = {p: p.stat().st_mtime_ns for p in (out / "models").rglob("*") if p.is_file() and "checkpoints" in str(p)}
    assert before == after  # no checkpoint rewritten: training was skipped


def test_summary_rows_and_cli_errors(quick_run, capsys):
    _, _, metrics = quick_run
    rows = summary_rows(metrics)
    assert {r["experiment"] for r in rows} == set(pipeline_config.EXPERIMENTS)
    assert cli.main(["run", "bogus"]) == 2
    assert "unknown experiment 'bogus'" in capsys.readouterr().err
    assert cli.main(["run", "validation", "toy"]) == 2
    with pytest.raises(ValueError, match="preset"):
        pipeline_config.preset("huge")


@pytest.mark.slow  # ~45 s on 2 cores (a second images run); .ci/run runs it after the default suite
def test_detection_on_a_users_checkpoint_and_data(quick_run, tmp_path):
    """--checkpoint/--data: the images experiment on a given model; duplicates are found as exact repeats."""
    _, out, metrics = quick_run
    q = pipeline_config.preset("quick")
    user_out = tmp_path / "user"
    rc = cli.main(["run", "--preset", "quick", "--checkpoint", str(out / "models" / "digits_cfg"),
                   "--data", str(out / "data" / "digits_train.npz"), "--out", str(user_out)])
    assert rc == 0
    got = json.loads((user_out / "metrics.json").read_text())
    assert set(pipeline_config.EXPERIMENTS) & set(got) == {"images"}
    img = np.load(user_out / "images.npz")
    assert int(img["duplicated"].sum()) == q.images.n_duplicated  # the repeats of the digits training set
    # same model, same seed, same unconditional samples: the same memorized count as the embedded run
    assert got["images"]["n_unconditional"] == metrics["images"]["n_unconditional"]
    assert got["images"]["od_dd"] is None and "no held-out data" in got["images"]["label_text"]
    assert not (user_out / "models").exists()  # nothing trained


def _failing_toy(monkeypatch, seen):
    """The toy experiment replaced by one that records the compile settings it runs under, then fails."""
    def run(config, ctx):
        seen.append((jax.config.values["jax_disable_most_optimizations"], jax.config.jax_optimization_level,
                     compiler_options()))
        raise RuntimeError("boom")

    monkeypatch.setattr(toy, "run", run)


def test_quick_compiles_with_optimisations_off_and_restores_the_setting(quick_run, tmp_path, monkeypatch):
    _, _, metrics = quick_run
    assert metrics["config"]["fast_compile"] is True
    assert pipeline_config.preset("default").fast_compile is False
    assert jax.config.values["jax_disable_most_optimizations"] is False  # the quick run restored it
    seen = []
    _failing_toy(monkeypatch, seen)
    with pytest.raises(RuntimeError, match="boom"):  # restored after an error too
        pipeline_run.run(pipeline_config.preset("quick", experiments=["toy"]), str(tmp_path), progress=False)
    assert seen == [(True, "O0", None)]  # O0 keys the jit cache apart
    assert jax.config.values["jax_disable_most_optimizations"] is False
    assert jax.config.jax_optimization_level == "UNKNOWN"


def test_compiler_options_lower_the_llvm_level_on_cpu_outside_fast_compile(tmp_path, monkeypatch):
    assert jax.default_backend() == "cpu"
    opts = compiler_options()
    assert opts == {"xla_backend_optimization_level": 1}
    seen = []
    _failing_toy(monkeypatch, seen)
    quick = pipeline_config.preset("quick", experiments=["toy"])
    for config in (quick, dataclasses.replace(quick, fast_compile=False)):
        with pytest.raises(RuntimeError, match="boom"):
            pipeline_run.run(config, str(tmp_path), progress=False)
    # the quick preset's own level 0 is left alone; without fast_compile the settings are untouched
    assert seen == [(True, "O0", None), (False, "UNKNOWN", opts)]

    def f(x):
        return jnp.tanh(x @ x.T).sum(axis=1) * jnp.exp(-x[:, 0])

    x = jax.random.normal(jax.random.key(0), (64, 32))
    np.testing.assert_allclose(jax.jit(f, compiler_options=opts)(x), jax.jit(f)(x), rtol=1e-5, atol=1e-5)
