"""Timing and reporting helpers shared by the benchmarks (STYLE §14).

Every benchmark compiles once, times ``jax.block_until_ready`` over repeats, reports compile time
separately and prints ratios against a baseline measured in the same process::

    from bench._common import time_fn, write_results, markdown_table
    stats = time_fn(jax.jit(f), x, repeats=10, warmup=1)   # {"compile_s", "median_s", ...}
    rows = [{"method": "f", "points_per_s": n / stats["median_s"], **stats}]
    write_results("bench_f", rows, "bench/results", meta=env_info())

Scripts under ``bench/`` import this as ``bench._common``; run them from the repository root
(``python bench/bench_x.py``): :func:`ensure_importable` puts the root on ``sys.path``.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import jax

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "bench" / "results"


def ensure_importable() -> None:
    """Put the repository root on ``sys.path`` (for ``python bench/bench_x.py`` runs)."""
    root = str(REPO_ROOT)
    if root not in sys.path:
        sys.path.insert(0, root)


def block(x: Any) -> Any:
    """Wait for every JAX array in the pytree ``x``; other leaves (numpy, torch) pass through."""
    return jax.block_until_ready(x)


def time_fn(
    fn: Callable[..., Any],
    *args: Any,
    repeats: int = 10,
    warmup: int = 1,
) -> dict[str, Any]:
    """Time ``fn(*args)``: compile (or first call) once, then ``repeats`` blocked calls.

    A jitted function (anything with ``.lower``) is compiled ahead of time, so ``compile_s`` is the
    tracing + XLA compile time alone and the timed calls run the compiled executable. For any other
    callable (e.g. PyTorch) ``compile_s`` is the first call's wall time. ``warmup`` further untimed
    calls follow before the ``repeats`` timed ones.

    ``cpu_median_s`` is the median process CPU time (all threads, user + system) of a timed call:
    on a shared, loaded machine it tracks the work done better than wall time does, but it also
    counts threads that spin while waiting, so read it next to the wall-clock numbers.

    Returns:
      dict with ``compile_s``, ``median_s``, ``min_s``, ``mean_s``, ``std_s``, ``cpu_median_s``,
      ``repeats``, ``warmup`` and ``times_s`` (the list of timed calls, seconds).
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}.")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}.")
    call = fn
    t0 = time.perf_counter()
    if hasattr(fn, "lower"):
        call = fn.lower(*args).compile()
        compile_s = time.perf_counter() - t0
        block(call(*args))  # first run of the executable: allocations, thread-pool start-up
    else:
        block(call(*args))
        compile_s = time.perf_counter() - t0
    for _ in range(warmup):
        block(call(*args))
    times, cpu_times = [], []
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        block(call(*args))
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
    return {
        "compile_s": compile_s,
        "median_s": statistics.median(times),
        "min_s": min(times),
        "mean_s": statistics.fmean(times),
        "std_s": statistics.pstdev(times) if len(times) > 1 else 0.0,
        "repeats": repeats,
        "warmup": warmup,
        "cpu_median_s": statistics.median(cpu_times),
        "times_s": times,
    }


def env_info(**extra: Any) -> dict[str, Any]:
    """Machine and library facts worth keeping next to timings (XLA flags, core count, versions)."""
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "jax_backend": jax.default_backend(),
        "jax_devices": [str(d) for d in jax.devices()],
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
    }
    try:
        import numpy as np

        info["numpy"] = np.__version__
    except ImportError:  # pragma: no cover - numpy is a hard dependency
        pass
    info.update(extra)
    return info


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if v == 0.0:
            return "0"
        a = abs(v)
        if a >= 1e5 or a < 1e-3:
            return f"{v:.3g}"
        if a >= 100:
            return f"{v:,.0f}"
        return f"{v:.3g}"
    if v is None:
        return "—"
    return str(v)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Iterable[str] | None = None) -> str:
    """A GitHub markdown table of ``rows`` (list/dict cells are skipped unless named in ``columns``)."""
    if not rows:
        return ""
    if columns is None:
        columns = []
        for row in rows:
            for k, v in row.items():
                if k not in columns and not isinstance(v, (list, dict)):
                    columns.append(k)
    columns = list(columns)
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def write_results(
    name: str,
    rows: Sequence[dict[str, Any]],
    out_dir: str | os.PathLike = DEFAULT_OUT,
    *,
    meta: dict[str, Any] | None = None,
    columns: Iterable[str] | None = None,
    summary: dict[str, Any] | None = None,
) -> dict[str, Path]:
    """Write ``{out_dir}/{name}.json`` (``{"name", "meta", "rows"}``, plus ``"summary"`` when given,
    e.g. ratios against the baseline) and ``{name}.md`` (the table, the summary, the environment).

    Returns the two paths as ``{"json": ..., "md": ...}``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    payload = {"name": name, "meta": meta or {}, "rows": list(rows)}
    if summary is not None:
        payload["summary"] = summary
    json_path = out / f"{name}.json"
    json_path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    md = [f"# {name}", "", markdown_table(rows, columns), ""]
    if summary:
        md += ["", "Summary:", ""] + [f"- {k}: {_fmt(v)}" for k, v in summary.items()] + [""]
    if meta:
        md += ["", "Environment:", ""] + [f"- {k}: {v}" for k, v in meta.items()] + [""]
    md_path = out / f"{name}.md"
    md_path.write_text("\n".join(md))
    return {"json": json_path, "md": md_path}
