"""Smoke run of bench/flipd_terms.py (--quick): trains a tiny model, writes one row per t with every term."""

import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import flipd_terms  # noqa: E402

FIELDS = {"t", "sigma", "flipd_model", "flipd_exact", "sigma_trace_model_at_data", "sigma_trace_exact",
          "sigma_trace_model_on_shell", "eps_sq_model", "eps_sq_exact", "eps_mse_at_data", "eps_mse_on_shell"}


def test_quick_run_writes_a_row_per_time_with_the_exact_terms(tmp_path, capsys):
    rows = flipd_terms.main(["--quick", "--out", str(tmp_path)])
    assert [r["t"] for r in rows] == list(flipd_terms.TIMES)
    written = [json.loads(line) for line in (tmp_path / "flipd_terms.jsonl").read_text().splitlines()]
    assert written == rows
    for r in rows:
        assert set(r) == FIELDS and all(math.isfinite(v) for v in r.values()), r
        # the exact side does not depend on the model: FLIPD of N(0, P) on a 10-dimensional subspace
        a2 = 1.0 - r["sigma"] ** 2  # VP: α² + σ² = 1
        assert abs(r["sigma_trace_exact"] - (flipd_terms.D - flipd_terms.d * a2)) < 0.05, r
