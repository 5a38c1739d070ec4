"""Smoke run of bench/bench_sd_scale.py at its tiny ``--quick`` size, and the CFG score it measures.

Timings are not asserted; this pins the script's outputs, that FLIPD's probes in chunks give what
the same probes at once give, and that the guided score is the conditional/unconditional one at
w = 1/0.
"""

import json
import math
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import bench_sd_scale  # noqa: E402

NUMERIC = ("compile_s", "median_s", "points_per_s", "vs_forward", "temp_mb", "peak_mb", "temp_vs_forward")


def test_bench_sd_scale_quick_writes_expected_json(tmp_path):
    result = bench_sd_scale.main(["--quick", "--out", str(tmp_path)])
    payload = json.loads((tmp_path / "sd_scale.json").read_text())
    assert (tmp_path / "sd_scale.md").read_text().startswith("# sd_scale")
    assert payload["name"] == "sd_scale" and len(result["rows"]) == len(payload["rows"])

    rows = payload["rows"]
    assert [(r["row"], r["probes"], r["chunk"]) for r in rows] == [
        ("forward", None, None), ("flipd", 1, None), ("flipd", 8, 2), ("flipd", 8, None), ("cfg_norm", None, None)]
    assert rows[-1]["states"] == 4
    for r in rows:
        assert set(bench_sd_scale.COLUMNS) <= set(r), sorted(r)
        for k in NUMERIC:
            assert math.isfinite(r[k]) and r[k] > 0, (r["row"], k, r[k])
        assert len(r["times_s"]) == 1
        if r["row"] != "forward":
            assert math.isfinite(r["value"])
    assert rows[0]["vs_forward"] == 1.0 and rows[0]["temp_vs_forward"] == 1.0
    assert rows[-1]["value"] > 0  # the CFG norm of two different contexts

    meta = payload["meta"]
    assert meta["config"]["latent"] == [8, 8, 4] and meta["config"]["quick"] is True
    assert meta["params"] > 0 and meta["config"]["num_steps"] == 1000
    check = meta["checks"]["flipd_chunked_vs_at_once"]
    assert check["rel_diff"] <= 1e-4, check  # the same probes, pushed through 2 at a time or all at once
    ratios = {k: v for k, v in payload["summary"].items() if k.endswith("_vs_forward")}
    assert len(ratios) == len(rows) - 1 and all(v > 0 for v in ratios.values())


@pytest.fixture(scope="module")
def tiny():
    net = bench_sd_scale.UNet2DCondition(channels=8, channel_mults=(1, 2), attention_levels=(0,), heads=2)
    k = jax.random.split(jax.random.key(0), 4)
    x, cond, null = jax.random.normal(k[0], (8, 8, 4)), jax.random.normal(k[1], (7, 16)), jax.random.normal(k[2], (7, 16))
    params = net.init(k[3], x[None], jnp.zeros((1,)), cond[None])
    return net, params, x, cond, null


def test_cfg_score_is_the_unconditional_score_at_w0_and_the_conditional_at_w1(tiny):
    net, params, x, cond, null = tiny
    sde = bench_sd_scale.DiscreteVPSDE.scaled_linear()

    @jax.jit
    def scores(params, x, t):
        out = []
        for w in (0.0, 1.0):
            cfg, s_cond, s_uncond = bench_sd_scale.score_fns(net.apply, params, cond, null, sde, w)
            out.append((cfg(x, t), s_cond(x, t), s_uncond(x, t)))
        return out

    (cfg0, s_cond, s_uncond), (cfg1, _, _) = scores(params, x, 0.3)
    scale = float(jnp.max(jnp.abs(s_uncond)))
    assert float(jnp.max(jnp.abs(s_cond - s_uncond))) > 1e-3 * scale  # the contexts do matter
    assert jnp.allclose(cfg0, s_uncond, rtol=1e-5, atol=1e-5 * scale)
    assert jnp.allclose(cfg1, s_cond, rtol=1e-5, atol=1e-5 * scale)


def test_timestep_is_the_zero_based_step_of_the_schedule_time():
    sde = bench_sd_scale.DiscreteVPSDE.scaled_linear()
    assert float(bench_sd_scale.timestep(1.0, sde)) == 999.0
    assert float(bench_sd_scale.timestep(1.0 / 1000, sde)) == pytest.approx(0.0, abs=1e-4)
    with pytest.raises(ValueError, match="t0"):
        bench_sd_scale.main(["--quick", "--t0", "1e-4", "--out", "unused"])
