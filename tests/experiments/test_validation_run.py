"""`mmh-jax run` (estimator validation): report files and sane numbers on a tiny configuration."""

import json

import pytest

from mmh_jax import cli
from mmh_jax.experiments import validation


def test_validation_writes_report_with_accurate_estimators(tmp_path):
    cfg = validation.ValidationConfig(
        cases=(validation.Case(6, (2,)),), num_points=8, t0_grid=(1e-4, 1.0, 8), cfdm_train=200,
        model_free_points=300, model_free_k=20, curves_per_case=2,
    )
    metrics = validation.run(cfg, str(tmp_path), progress=False)
    for name in ["metrics.json", "table.md", "flipd_curves.png"]:
        assert (tmp_path / name).stat().st_size > 0
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["seed"] == cfg.seed and saved["config"]["num_points"] == 8
    assert set(saved["provenance"]["versions"]) >= {"jax", "flax", "optax", "orbax-checkpoint", "numpy", "mmh_jax"}
    assert saved["results"] == json.loads(json.dumps(metrics["results"]))
    by_name = {r["estimator"].split(" ")[0]: r for r in metrics["results"]}
    # exact oracles: these must be right at every point
    for name in ["fp_regress", "normal_bundle", "cfdm@train", "lpca", "jacobian_threshold"]:
        assert by_name[name]["frac_exact"] == 1.0, by_name[name]
    assert by_name["flipd_exact"]["mae"] < 0.1
    assert "| flipd_exact |" in (tmp_path / "table.md").read_text()


def test_run_help_and_bad_preset(capsys):
    assert cli.main(["run", "--help"]) == 0  # argparse's exit codes come back from main()
    assert "--preset" in capsys.readouterr().out
    assert cli.main(["run", "--preset", "huge"]) == 2
    assert "invalid choice: 'huge'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="preset"):
        validation.preset("huge")
