"""Smoke runs of bench/training_sweep.py (--quick): in-process, one JSON line with the expected fields.

The estimates of a 50-step model mean nothing; this pins the script's output (finite MAE and
per-component means, the right truths per data set), the ``mixed`` time sampling, ``--out`` and
the argument errors.
"""

import json
import math
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmh_jax.sde import VPSDE

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import training_sweep  # noqa: E402

READOUTS = ("t0=0.05", "t0=0.1", "best_grid_t0", "knee", "plateau")


def _check(result, *, ambient_dim, truth):
    assert result["name"] == "training_sweep"
    assert result["data"] == {"ambient_dim": ambient_dim, "components": 3, "truth": truth,
                              "test_per_component": result["data"]["test_per_component"],
                              "median_nn_distance": result["data"]["median_nn_distance"]}
    assert len(result["data"]["median_nn_distance"]) == 3
    assert all(v >= 0 and math.isfinite(v) for v in result["data"]["median_nn_distance"])
    assert sum(result["data"]["test_per_component"]) == training_sweep.QUICK["n_test"]
    assert set(result["results"]) == set(READOUTS)
    for name in ("t0=0.05", "t0=0.1", "best_grid_t0"):
        r = result["results"][name]
        assert math.isfinite(r["mae"]) and r["mae"] >= 0, (name, r)
        assert len(r["means"]) == 3 and all(math.isfinite(m) for m in r["means"]), (name, r)
    for name in ("knee", "plateau"):  # may be unread (None / nan_fraction) on an untrained model
        assert len(result["results"][name]["means"]) == 3
    grid = result["t0_grid"]
    assert len(grid) == training_sweep.N_T0 and len(result["mean_curves"]) == 3
    for name, t in (("t0=0.05", 0.05), ("t0=0.1", 0.1)):  # the grid point nearest t
        assert result["results"][name]["t0"] == min(grid, key=lambda g: abs(g - t))
    assert result["results"]["best_grid_t0"]["chosen_with_truth"] is True
    assert result["results"]["best_grid_t0"]["mae"] <= result["results"]["t0=0.05"]["mae"]
    assert result["train_s"] > 0 and math.isfinite(result["final_loss"])


def test_quick_affine10_prints_one_json_line(capsys):
    result = training_sweep.main(["--quick", "--data", "affine10"])
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed == result
    _check(result, ambient_dim=10, truth=[2, 4, 8])
    cfg = result["config"]
    assert (cfg["steps"], cfg["n"], cfg["hidden"], cfg["n_test"], cfg["seed"]) == (50, 500, 32, 60, 7)
    assert cfg["time_sampling"] == "uniform" and cfg["param"] == "eps" and cfg["standardize"] is False


def test_quick_mix32_mixed_times_appends_to_out(tmp_path, capsys):
    out = tmp_path / "sweep" / "rows.jsonl"
    out.parent.mkdir()
    out.write_text('{"earlier": 1}\n')
    result = training_sweep.main(["--quick", "--data", "mix32", "--time-sampling", "mixed", "--param", "mix",
                                  "--standardize", "--seed", "0", "--out", str(out)])
    capsys.readouterr()
    lines = out.read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[1]) == result
    _check(result, ambient_dim=32, truth=[1, 4, 10])
    cfg = result["config"]
    assert (cfg["time_sampling"], cfg["param"], cfg["standardize"], cfg["seed"]) == ("mixed", "mix", True, 0)


@pytest.mark.parametrize("argv, message", [
    (["--steps", "0"], "--steps"),
    (["--batch-size", "0"], "--batch-size"),
    (["--lr", "-1"], "--lr"),
    (["--ema", "1"], "--ema"),
    (["--data", "mix32t"], "--data"),
    (["--time-sampling", "cosine"], "--time-sampling"),
])
def test_bad_arguments_are_named(argv, message, capsys):
    with pytest.raises(SystemExit):
        training_sweep.parse_args(argv)
    assert message in capsys.readouterr().err


def test_shell_readout_of_the_exact_eps_of_a_flat_gaussian_is_its_closed_form():
    """Planted case: for N(0, P) on a d-dimensional subspace the exact ε is σ Σ⁻¹ y with
    Σ = α² P + σ² I, its trace the same at every y, and the shell readout d·α²/(α² + σ²)."""
    D, d, sde = 12, 3, VPSDE()
    u = np.linalg.qr(np.random.default_rng(0).normal(size=(D, d)))[0]
    proj = jnp.asarray(u @ u.T, jnp.float32)

    def eps_apply(params, ys, ts):  # batched, as the sweep's networks
        a, s = sde.marginal_coefs(ts[:, None])
        py = ys @ proj
        return s * ((ys - py) / s**2 + py / (a**2 + s**2))

    x = np.random.default_rng(1).normal(size=(5, d)) @ u.T
    t0s = jnp.asarray([0.02, 0.1, 0.4])
    got = training_sweep.shell_curves(eps_apply, None, x.astype(np.float32), t0s, sde, jax.random.key(3))
    a, s = (np.asarray(v) for v in sde.marginal_coefs(t0s))
    np.testing.assert_allclose(got, np.broadcast_to(d * a**2 / (a**2 + s**2), got.shape), atol=2e-4)


def test_nn_spacing_is_the_median_distance_to_the_nearest_training_point():
    train = np.array([[0.0, 0.0], [10.0, 0.0]], np.float32)
    test = np.array([[0.0, 1.0], [0.0, 3.0], [10.0, 2.0], [7.0, 0.0], [10.0, 4.0]], np.float32)
    comp = np.array([0, 0, 1, 1, 1])
    assert training_sweep.nn_spacing(train, test, comp, [0, 1]) == [2.0, 3.0]


def test_quick_run_with_shell_reports_its_readouts(capsys):
    result = training_sweep.main(["--quick", "--data", "affine10", "--shell"])
    assert {"shell t0=0.05", "shell t0=0.1", "shell best_grid_t0"} <= set(result["results"])
    assert result["config"]["shell"] is True and len(result["shell_mean_curves"]) == 3
    assert all(math.isfinite(m) for m in result["results"]["shell t0=0.1"]["means"])

