"""Smoke run of bench/bench_train.py at tiny sizes: it runs in-process and writes the expected JSON.

Timings are not asserted; this pins the script's outputs and the honesty of its
baseline: the PyTorch twins of the MLP and the U-Net, given the JAX initial weights, must compute
the same forward pass (to 1e-4) with the same parameter count, and the torch learning-rate schedule
must be optax's. The PyTorch parts run whenever torch is importable (the ``bench`` extra).
"""

import dataclasses
import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import bench_train  # noqa: E402

HAVE_TORCH = importlib.util.find_spec("torch") is not None
needs_torch = pytest.mark.skipif(not HAVE_TORCH, reason="torch not installed (the 'bench' extra)")
TINY = ["--quick", "--batch", "8", "--n", "64", "--hidden", "16", "--layers", "3", "--embed", "8",
        "--channels", "8", "--repeats", "1", "--warmup", "0", "--torch-threads", "1"]
ROW_KEYS = {"impl", "model", "steps_per_call", "steps_per_s", "ms_per_step", "compile_s", "median_s", "min_s",
            "times_s"}


def _rows(payload):
    return {(r["impl"], r["model"], r["steps_per_call"]): r for r in payload["rows"]}


def test_bench_train_mlp_quick_writes_expected_json(tmp_path):
    result = bench_train.main([*TINY, "--models", "mlp", "--steps", "2", "--steps-per-call", "2,1",
                               "--out", str(tmp_path)])
    payload = json.loads((tmp_path / "bench_train.json").read_text())
    assert (tmp_path / "bench_train.md").read_text().startswith("# bench_train")
    assert payload["name"] == "bench_train" and result["rows"] == payload["rows"]
    assert payload["meta"]["config"]["steps"] == 2 and payload["meta"]["config"]["steps_per_call"] == [2, 1]
    model = payload["meta"]["models"]["mlp"]
    assert model["batch_size"] == 8 and model["data_shape"] == [64, 2] and model["data"] == "lollipop"
    assert model["model_kwargs"] == {"time_conditioning": "film", "hidden": 16, "num_layers": 3, "time_embed_dim": 8}
    assert model["learning_rate"] == 1e-3  # the CLI's default for the MLP
    assert len(payload["meta"]["load_average_before"]) == 3

    rows = _rows(payload)
    for k in (2, 1):
        row = rows[("jax", "mlp", k)]
        assert ROW_KEYS <= set(row), sorted(row)
        assert row["steps_per_s"] > 0 and row["compile_s"] > 0 and len(row["times_s"]) == 1
        assert row["ms_per_step"] == pytest.approx(1e3 / row["steps_per_s"])
    target = payload["summary"]["targets"]["mlp_jax_vs_torch"]
    assert target["target"] == bench_train.TARGET and target["steps_per_call"] == 2

    if HAVE_TORCH:
        row = rows[("torch", "mlp", 1)]
        assert ROW_KEYS <= set(row) and row["vs_torch"] == pytest.approx(1.0)
        assert rows[("jax", "mlp", 2)]["vs_torch"] > 0 and rows[("jax", "mlp", 1)]["vs_torch"] > 0
        checks = payload["meta"]["checks"]["mlp"]
        assert checks["forward"]["params"] == model["params"]
        assert checks["forward"]["max_abs_diff"] <= 1e-4 and checks["forward"]["max_abs_output"] > 0
        assert checks["lr_schedule_rel_diff"] <= 1e-5
        assert checks["torch_threads"] == 1
        assert payload["summary"]["mlp_jax_k2_vs_torch"] > 0 and target["met"] is not None
    else:
        assert {impl for impl, _, _ in rows} == {"jax"} and target["met"] is None


@pytest.mark.slow  # the U-Net train loop takes ~1 min to compile on 2 cores; its twin is checked below
@needs_torch
def test_bench_train_unet_quick_runs_against_torch(tmp_path):
    result = bench_train.main([*TINY, "--models", "unet", "--steps", "1", "--steps-per-call", "1",
                               "--out", str(tmp_path)])
    rows = _rows(result)
    assert set(rows) == {("jax", "unet", 1), ("torch", "unet", 1)}
    assert all(r["steps_per_s"] > 0 for r in rows.values())
    model = result["meta"]["models"]["unet"]
    assert model["data_shape"] == [1797, 8, 8, 1] and model["model_kwargs"]["channels"] == 8
    assert model["learning_rate"] == 5e-4 and model["batch_size"] == 8
    forward = result["meta"]["checks"]["unet"]["forward"]
    assert forward["params"] == model["params"] and forward["max_abs_diff"] <= 1e-4


@needs_torch
@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("mlp", {"hidden": 12, "num_layers": 4, "time_embed_dim": 9, "skip": True}),  # odd embedding
        ("mlp", {"hidden": 12, "num_layers": 2, "time_embed_dim": 8, "skip": False}),
        ("mlp", {"hidden": 12, "num_layers": 3, "time_embed_dim": 8, "time_conditioning": "film"}),
        pytest.param("unet", {"channels": 8, "channel_mults": (1, 2, 2), "num_res_blocks": 2, "num_heads": 2,
                              "num_groups": 4}, marks=pytest.mark.slow),  # ~35 s: three levels to compile
        ("unet", {"channels": 8}),  # the benchmark's U-Net at a tiny width
    ],
)
def test_torch_twin_computes_the_flax_forward(name, kwargs):
    """Copying the flax initial weights into the torch network gives the same outputs (1e-4)."""
    import torch

    args = bench_train.parse_args(["--n", "32"])
    cfg = dataclasses.replace(bench_train.model_config(name, args), model_kwargs=kwargs)
    setup = bench_train.JaxSetup(cfg)
    net = bench_train.build_torch_net(torch, name, cfg, setup.x.shape[1:])
    check = bench_train.check_forward(torch, setup, net, n=5)
    assert check["params"] == sum(p.numel() for p in net.parameters())
    assert check["max_abs_diff"] <= bench_train.FORWARD_TOL and check["max_abs_output"] > 0.1


@needs_torch
def test_parameter_count_mismatch_is_caught():
    import torch

    args = bench_train.parse_args(["--n", "32", "--hidden", "8", "--embed", "4"])
    setup = bench_train.JaxSetup(bench_train.model_config("mlp", args))
    other = dataclasses.replace(setup.cfg, model_kwargs={"hidden": 8, "time_embed_dim": 4, "num_layers": 2})
    net = bench_train.build_torch_net(torch, "mlp", other, setup.x.shape[1:])
    with pytest.raises(AssertionError, match="parameter counts differ"):
        bench_train.check_forward(torch, setup, net)


def test_lr_factor_matches_the_optax_schedule():
    args = bench_train.parse_args(["--n", "32"])
    cfg = bench_train.model_config("mlp", args)
    assert bench_train.check_schedule(cfg) <= 1e-5
    assert bench_train.check_schedule(dataclasses.replace(cfg, steps=30, warmup_steps=0)) <= 1e-5


@needs_torch
def test_torch_trainer_steps_the_unet():
    """Two torch training steps of the tiny U-Net on NCHW digits: finite loss, parameters and EMA move,
    the learning rate follows the schedule."""
    import numpy as np
    import torch

    from mmh_jax.sde import VPSDE

    torch.manual_seed(0)
    args = bench_train.parse_args(["--channels", "8", "--batch", "4"])
    cfg = bench_train.model_config("unet", args)
    setup = bench_train.JaxSetup(cfg)
    net = bench_train.build_torch_net(torch, "unet", cfg, setup.x.shape[1:])
    data = torch.from_numpy(np.array(setup.x.transpose(0, 3, 1, 2)))
    trainer = bench_train.TorchTrainer(torch, net, data, cfg, VPSDE())
    before = [p.detach().clone() for p in trainer.params]
    losses = [float(trainer.step()) for _ in range(2)]
    assert all(np.isfinite(losses)) and trainer.step_count == 2
    moved = [not torch.equal(b, p) for b, p in zip(before, trainer.params)]
    assert all(moved)
    # EMA decay at steps 0, 1 is 1/10, 2/11: the EMA sits between the initial and current weights.
    assert not torch.equal(trainer.ema[0], before[0]) and not torch.equal(trainer.ema[0], trainer.params[0])
    lr = cfg.learning_rate * bench_train.lr_factor(2, total_steps=cfg.steps, warmup_steps=cfg.warmup_steps)
    assert trainer.opt.param_groups[0]["lr"] == pytest.approx(lr)
