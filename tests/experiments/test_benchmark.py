"""`mmh-jax run benchmark`: the quick preset end to end through the CLI, a rerun that reuses what is done,
--out holding another report, the data recipe, and a summary that moves when an estimate is planted wrong.

Every test here is end-to-end by its folder (tests/conftest.py's E2E_FOLDERS); the quick preset's run is
the only long one (~45 s), the recompute check is marked slow.
"""

import json
import os

import numpy as np
import pytest

from mmh_jax import cli
from mmh_jax.experiments import benchmark
from mmh_jax.experiments.pipeline import run as pipeline_run

SMOKE = "Smoke run (preset quick): sizes are tiny; the numbers are not meaningful."


def _mtimes(folder) -> dict[str, int]:
    """Modification times of the checkpoints and training logs under ``folder`` (what training writes; a
    reused run rewrites only its config.json and loss.png)."""
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*"))
            if p.is_file() and ("checkpoints" in p.parts or p.name == "train_log.jsonl")}


def test_quick_preset_end_to_end_through_the_cli_and_a_rerun_reuses_it(tmp_path, capsys):
    out = tmp_path / "bench"
    assert cli.main(["run", "benchmark", "--preset", "quick", "--out", str(out)]) == 0
    config = benchmark.preset("quick")
    rows = benchmark.row_names(config.estimators)
    for name in ("metrics.json", "table.md", "estimates.png", "report.html"):
        assert (out / name).stat().st_size > 0, name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["kind"] == "benchmark" and metrics["smoke_run"] and metrics["warning"] == SMOKE
    assert metrics["seed"] == 0 and metrics["config"]["datasets"] == list(config.datasets)
    assert set(metrics["provenance"]["versions"]) >= {"jax", "numpy", "mmh_jax"}
    table = (out / "table.md").read_text()
    assert SMOKE in table
    for name in config.datasets:
        entry = metrics["datasets"][name]
        assert (out / "data" / f"{name}_train.npz").exists()
        for kind in ("diffusion", "lidl"):
            assert (out / "models" / name / kind / "checkpoints").is_dir()
            assert entry["training"][kind]["steps"] == getattr(config, "flow" if kind == "lidl" else kind)["steps"]
        assert list(entry["rows"]) == rows
        with np.load(out / entry["estimates"]) as f:
            arrays = dict(f)
        assert entry["n_test"] == config.n_test_per_component * len(entry["components"])
        for row, m in entry["rows"].items():
            est = arrays[row]
            finite = np.isfinite(est)
            # The reported numbers are those of the stored per-point estimates (NaN counted, left out).
            assert m["n"] == est.size == entry["n_test"] and m["non_finite"] == int((~finite).sum())
            if finite.any():
                assert m["mae"] == pytest.approx(float(np.mean(np.abs(est[finite] - arrays["truth"][finite]))))
            assert f"| {name} | {entry['D']} | {row} |" in table
        for row in benchmark.MODEL_FREE:
            assert np.isfinite(entry["rows"][row]["mae"]), (name, row)
    models_before = _mtimes(out / "models")
    assert any("checkpoints" in k for k in models_before) and any("train_log" in k for k in models_before)
    capsys.readouterr()

    # A rerun into the same --out keeps the finished data sets: nothing trained, results identical.
    assert cli.main(["run", "benchmark", "--preset", "quick", "--out", str(out)]) == 0
    assert "keeping its results" in capsys.readouterr().err
    again = json.loads((out / "metrics.json").read_text())
    assert again["datasets"] == metrics["datasets"]
    assert _mtimes(out / "models") == models_before


@pytest.mark.slow
def test_recompute_reuses_the_models_and_gives_the_same_estimates(tmp_path):
    config = benchmark.preset("quick", datasets=("lollipop",))
    out = tmp_path / "bench"
    first = benchmark.run(config, str(out), progress=False)
    with np.load(out / "estimates" / "lollipop.npz") as f:
        before = dict(f)
    models_before = _mtimes(out / "models")
    again = benchmark.run(config, str(out), progress=False, recompute=True)
    assert _mtimes(out / "models") == models_before  # no checkpoint or log was rewritten
    for kind, record in again["datasets"]["lollipop"]["training"].items():
        assert record["start_step"] == record["steps"], kind  # a finished model, loaded
        assert record["logged_step_seconds"] == pytest.approx(
            first["datasets"]["lollipop"]["training"][kind]["logged_step_seconds"])
    with np.load(out / "estimates" / "lollipop.npz") as f:
        after = dict(f)
    assert sorted(after) == sorted(before)
    for key in before:
        np.testing.assert_array_equal(after[key], before[key], err_msg=key)


def _model_free_config(**overrides):
    """No estimator that needs a model: the cheapest real run (no training)."""
    return benchmark.preset("quick", datasets=("lollipop",), estimators=("lpca", "mle"), **overrides)


def test_out_holding_another_report_is_refused_or_with_overwrite_replaced(tmp_path):
    out = tmp_path / "bench"
    benchmark.run(_model_free_config(), str(out), progress=False)
    planted = out / "models" / "lollipop" / "diffusion"
    planted.mkdir(parents=True)
    (planted / "marker").write_text("a model of the seed-0 run")

    with pytest.raises(pipeline_run.OtherRunError, match=r"seed 0 vs 1.*--overwrite"):
        benchmark.run(_model_free_config(seed=1), str(out), progress=False)
    assert json.loads((out / "metrics.json").read_text())["seed"] == 0  # nothing was touched

    metrics = benchmark.run(_model_free_config(seed=1), str(out), progress=False, overwrite=True)
    assert metrics["seed"] == 1 and json.loads((out / "metrics.json").read_text())["seed"] == 1
    assert not planted.exists()  # the other run's models went with its results

    for other, what in (({"config": {"experiments": ["toy"]}}, "`mmh-jax run` experiments report"),
                        ({"config": {"cases": []}, "results": []}, "`mmh-jax run validation` report")):
        (out / "metrics.json").write_text(json.dumps(other))
        with pytest.raises(pipeline_run.OtherRunError, match=what):
            benchmark.run(_model_free_config(), str(out), progress=False)
    benchmark.run(_model_free_config(), str(out), progress=False, overwrite=True)
    assert json.loads((out / "metrics.json").read_text())["kind"] == "benchmark"


def test_benchmark_runs_alone_and_takes_no_checkpoint(tmp_path, capsys):
    assert cli.main(["run", "benchmark", "toy", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "'benchmark' runs alone" in err and "`mmh-jax run benchmark` and `mmh-jax run toy`" in err
    assert cli.main(["run", "benchmark", "--checkpoint", str(tmp_path), "--out", str(tmp_path)]) == 2
    assert "--checkpoint apply to the images experiment" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "metrics.json")


def test_bad_configurations_name_the_field():
    with pytest.raises(ValueError, match="datasets must be .*'toy'"):
        benchmark.BenchmarkConfig(datasets=("toy",))
    with pytest.raises(ValueError, match="estimators must be"):
        benchmark.BenchmarkConfig(estimators=("flipd", "oracle"))
    with pytest.raises(ValueError, match="n_train must be at least"):
        benchmark.BenchmarkConfig(n_train=10)
    with pytest.raises(ValueError, match="preset must be one of"):
        benchmark.preset("huge")
    with pytest.raises(ValueError, match=r"t0_grid=\(0.001, 1.0, 8\) has no point within 1% of 0.1"):
        benchmark.BenchmarkConfig(t0_grid=(1e-3, 1.0, 8))
    for name in benchmark.PRESETS:  # every preset's grid holds COARSE_T0, the flipd-t0=0.1 row's time
        config = benchmark.preset(name)
        lo, hi, num = config.t0_grid
        assert np.geomspace(lo, hi, num)[benchmark.coarse_index(config)] == pytest.approx(benchmark.COARSE_T0, rel=1e-6)


def test_the_data_recipe_is_balanced_held_out_and_repeatable():
    train, test = benchmark.make_data("affine-10", 200, 7, seed=3)
    assert train["x"].shape == (200, 10)
    assert np.bincount(test["component"]).tolist() == [7, 7, 7]
    assert np.array_equal(test["lid"], np.array([2, 4, 8])[test["component"]])
    assert not (train["x"][:, None, :] == test["x"][None]).all(-1).any()  # no test point is a training point
    again = benchmark.make_data("affine-10", 200, 7, seed=3)
    for part, other in zip((train, test), again):
        for key in part:
            np.testing.assert_array_equal(part[key], other[key])
    _, rare = benchmark.make_data("lollipop", 50, 30, seed=0)  # the point mass has weight 1/7
    assert np.bincount(rare["component"]).tolist() == [30, 30, 30]


def test_the_summary_moves_with_an_estimate_planted_one_too_high():
    rng = np.random.default_rng(0)
    component = rng.integers(0, 3, size=120)
    truth = np.array([2, 4, 8])[component]
    good = truth + rng.uniform(-0.4, 0.4, size=truth.size)
    good[5] = np.nan  # a readout that could not read its curve
    bad = good + (component == 1)  # off by +1 on component 1
    base = benchmark.summarize(good, truth, component, seconds=1.2)
    off = benchmark.summarize(bad, truth, component, seconds=1.2)

    finite = np.isfinite(bad)
    assert off["non_finite"] == base["non_finite"] == 1 and off["n"] == truth.size
    assert off["mae"] == pytest.approx(np.mean(np.abs(bad[finite] - truth[finite])))
    assert off["mae"] - base["mae"] == pytest.approx(
        np.mean((np.abs(bad - truth) - np.abs(good - truth))[finite]))
    assert off["bias"] - base["bias"] == pytest.approx(np.mean((component == 1)[finite]))
    for c0, c1 in zip(base["components"], off["components"]):
        ok = (component == c0["component"]) & finite
        assert c1["mean"] == pytest.approx(np.mean(bad[ok]))
        assert c1["mean"] - c0["mean"] == pytest.approx(1.0 if c0["component"] == 1 else 0.0)
        assert c1["lid"] == c0["lid"] == int(truth[component == c0["component"]][0])
    assert off["seconds_per_point"] == pytest.approx(1.2 / truth.size)

    # The table shows the moved mean next to the truth.
    metrics = {"datasets": {"planted": {"D": 10, "rows": {"flipd": off}}}}
    (row,) = benchmark.table_rows(metrics)
    mean1 = off["components"][1]["mean"]
    assert f"{mean1:.2f} (4)" in row["component means (truth)"] and row["MAE"] == pytest.approx(off["mae"])
