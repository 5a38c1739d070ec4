"""Smoke run of bench/bench_flipd.py at tiny sizes: it runs in-process and writes the expected JSON.

Timings are not asserted; this only pins the script's outputs. The PyTorch rows are
required whenever torch is importable (the ``bench`` extra); without torch the JAX rows still are.
"""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import bench_flipd  # noqa: E402

HAVE_TORCH = importlib.util.find_spec("torch") is not None
TINY = ["--quick", "--batch", "8", "--dim", "4", "--hidden", "16", "--layers", "1", "--embed", "8",
        "--repeats", "1", "--warmup", "0", "--point-batch", "3"]
ROW_KEYS = {"impl", "method", "points_per_s", "compile_s", "median_s", "min_s", "times_s", "vs_forward"}


# torch's forward-mode AD loads its JVP decompositions through torch.jit.script on the first
# make_dual, which warns in torch 2.13; it is torch internals, not ours to fix.
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_bench_flipd_quick_writes_expected_json(tmp_path):
    result = bench_flipd.main([*TINY, "--out", str(tmp_path)])
    payload = json.loads((tmp_path / "bench_flipd.json").read_text())
    assert (tmp_path / "bench_flipd.md").read_text().startswith("# bench_flipd")
    assert payload["name"] == "bench_flipd"
    assert payload["meta"]["config"]["batch"] == 8 and payload["meta"]["config"]["dim"] == 4
    assert {"compile_s", "median_s"} <= set(result["rows"][0])

    rows = {(r["impl"], r["method"]): r for r in payload["rows"]}
    methods = (*bench_flipd.METHODS, bench_flipd.BATCHED)
    for method in methods:
        row = rows[("jax", method)]
        assert ROW_KEYS <= set(row), sorted(row)
        assert row["points_per_s"] > 0 and row["compile_s"] > 0 and len(row["times_s"]) == 1
    summary = payload["summary"]
    assert summary["hutchinson_vs_forward"] > 0 and summary["hutchinson_vs_forward_best"] > 0
    assert set(summary["targets"]) == set(bench_flipd.TARGETS)

    check = payload["meta"]["checks"]["jax_batched_vs_vmap"]
    assert check["max_abs_diff"] <= check["tol"]

    if HAVE_TORCH:
        for method in methods:
            assert ROW_KEYS <= set(rows[("torch", method)])
            assert rows[("jax", method)]["jax_vs_torch"] > 0
            check = payload["meta"]["checks"][method]
            assert check["max_abs_diff"] <= check["tol"]
        for k in ("hutchinson_jax_vs_torch", "exact_jax_vs_torch", "exact_batched_jax_vs_torch"):
            assert summary[k] > 0 and summary[f"{k}_best"] > 0
        assert all(t["met"] is not None for t in summary["targets"].values())
        assert payload["meta"]["torch_threads"] >= 1
    else:
        assert not any(impl == "torch" for impl, _ in rows)
        assert "not importable" in payload["meta"]["torch"]
        assert summary["targets"]["exact_jax_vs_torch"]["met"] is None


def test_bench_flipd_no_torch_flag_runs_jax_only(tmp_path):
    result = bench_flipd.main([*TINY, "--no-torch", "--point-batch", "0", "--out", str(tmp_path)])
    assert {r["impl"] for r in result["rows"]} == {"jax"}
    assert {r["method"] for r in result["rows"]} == set(bench_flipd.METHODS)
    assert result["meta"]["torch"] is None
