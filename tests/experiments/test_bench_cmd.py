"""``mmh-jax bench``: the table has every requested setting, honest ratios and 'not run' rows."""

import json

import numpy as np
import pytest

from mmh_jax import cli
from mmh_jax.experiments import bench_cmd


def test_bench_writes_rows_ratios_and_not_run_settings(tmp_path, capsys):
    out = tmp_path / "bench"
    rc = cli.main(["bench", "--preset", "quick", "--estimators", "flipd_exact", "normal_bundle", "mle",
                   "--dims", "3", "--batch-sizes", "8", "--max-work", "50", "--out", str(out)])
    assert rc == 0
    rows = json.loads((out / "bench.json").read_text())["rows"]
    assert [r["estimator"] for r in rows] == ["forward", "flipd_exact", "normal_bundle", "mle"]
    by = {r["estimator"]: r for r in rows}
    # normal bundle: 8 points x 4*3 scores = 96 passes > 50 -> listed, not run, with the reason.
    assert by["normal_bundle"]["status"] == "not run" and "max_work" in by["normal_bundle"]["note"]
    for name in ("forward", "flipd_exact", "mle"):
        r = by[name]
        assert r["status"] == "ok" and r["finite"], r
        assert r["compile_s"] > 0 and r["median_s"] > 0 and r["temp_mb"] >= 0
        np.testing.assert_allclose(r["points_per_s"], 8 / r["median_s"], rtol=1e-9)
    np.testing.assert_allclose(by["flipd_exact"]["vs_forward"],
                               by["flipd_exact"]["points_per_s"] / by["forward"]["points_per_s"], rtol=1e-9)
    assert "vs_forward" not in by["mle"]  # no score network: no ratio to its forward pass
    assert by["mle"]["skdim_s"] > 0  # scikit-dimension is a test dependency: the baseline is measured
    assert (out / "bench.md").read_text().count("\n| ") >= 4 and (out / "throughput.png").stat().st_size > 0
    assert "not run" in capsys.readouterr().out


def test_bench_bad_arguments(tmp_path, capsys):
    assert cli.main(["bench", "--dims", "0", "--out", str(tmp_path / "b")]) == 2  # refused by argparse
    assert "argument --dims: must be at least 1, got 0" in capsys.readouterr().err
    with pytest.raises(ValueError, match="dims must be >= 1"):  # the library checks it too
        bench_cmd.run(bench_cmd.preset("quick", dims=(0,)), str(tmp_path / "b"))
    assert not (tmp_path / "b").exists()
    with pytest.raises(ValueError, match="estimators must be among"):
        bench_cmd.run(bench_cmd.preset("quick", estimators=("flipd",)), str(tmp_path / "c"))
