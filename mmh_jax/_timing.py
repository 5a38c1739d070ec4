"""Timing and reporting for estimator benchmarks (``mmh-jax bench`` and the scripts in ``bench/``).

Every benchmark compiles once, times ``jax.block_until_ready`` over repeats, reports compile time
separately and prints ratios against a baseline measured in the same process:

    from mmh_jax._timing import time_fn, write_results, markdown_table
    stats = time_fn(jax.jit(f), x, repeats=10, warmup=1)   # {"compile_s", "median_s", ...}
    both = time_many({"f": (jax.jit(f), (x,)), "g": (g, (x,))})  # interleaved rounds
    rows = [{"method": "f", "points_per_s": n / stats["median_s"], **stats}]
    write_results("bench_f", rows, "bench/results", meta=env_info())
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Iterable, NamedTuple, Sequence

import jax
import numpy as np

__all__ = ["Prepared", "block", "env_info", "finish", "markdown_table", "prepare", "print_targets", "time_fn",
           "time_many", "write_results"]


def block(x: Any) -> Any:
    """Wait for every JAX array in the pytree ``x``; other leaves (numpy, torch) pass through."""
    return jax.block_until_ready(x)


class Prepared(NamedTuple):
    """A callable ready to time (a compiled executable, or the function itself) and its compile time."""

    call: Callable[..., Any]
    compile_s: float


def prepare(fn: Callable[..., Any], *args: Any) -> Prepared:
    """Compile ``fn`` for ``args`` ahead of time (if jitted) and run it once.

    For a jitted function ``compile_s`` is tracing + XLA compilation alone; for anything else it
    is the first call's wall time. Use this when outputs must be checked before timing: the
    checked executable is then the timed one (compiling again after a call would hit JAX's cache
    and under-report the compile time).
    """
    t0 = time.perf_counter()
    if hasattr(fn, "lower"):
        call = fn.lower(*args).compile()
        compile_s = time.perf_counter() - t0
        block(call(*args))  # first run of the executable: allocations, thread-pool start-up
        return Prepared(call, compile_s)
    block(fn(*args))
    return Prepared(fn, time.perf_counter() - t0)


def _prepare(fn: Any, args: tuple) -> Prepared:
    return fn if isinstance(fn, Prepared) else prepare(fn, *args)


def _timed(call: Callable[..., Any], args: tuple) -> tuple[float, float]:
    c0, t0 = time.process_time(), time.perf_counter()
    block(call(*args))
    return time.perf_counter() - t0, time.process_time() - c0


def _stats(compile_s: float, times: list[float], cpu_times: list[float], warmup: int) -> dict[str, Any]:
    return {
        "compile_s": compile_s,
        "median_s": statistics.median(times),
        "min_s": min(times),
        "mean_s": statistics.fmean(times),
        "std_s": statistics.pstdev(times) if len(times) > 1 else 0.0,
        "repeats": len(times),
        "warmup": warmup,
        "cpu_median_s": statistics.median(cpu_times),
        "times_s": times,
    }


def _check_counts(repeats: int, warmup: int) -> None:
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}.")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}.")


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
    _check_counts(repeats, warmup)
    call, compile_s = _prepare(fn, args)  # a Prepared ``fn`` is used as is
    for _ in range(warmup):
        block(call(*args))
    times, cpu_times = zip(*(_timed(call, args) for _ in range(repeats)))
    return _stats(compile_s, list(times), list(cpu_times), warmup)


def time_many(
    calls: dict[str, tuple[Callable[..., Any], tuple]],
    *,
    repeats: int = 10,
    warmup: int = 1,
) -> dict[str, dict[str, Any]]:
    """Time several ``name -> (fn, args)`` calls *interleaved*: round ``r`` times each once.

    Everything is compiled (or called once) and warmed up first, as in `time_fn`; then the
    ``repeats`` rounds run every call in turn, so all of them see the same background load and
    ratios between them (e.g. against a baseline) are robust on a shared machine. A ``fn`` that is
    already a `Prepared` is not compiled again. Returns ``name -> stats`` with the keys of
    `time_fn`.
    """
    _check_counts(repeats, warmup)
    prepared = {name: _prepare(fn, tuple(args)) for name, (fn, args) in calls.items()}
    for name, (call, _) in prepared.items():
        for _ in range(warmup):
            block(call(*calls[name][1]))
    times: dict[str, list[float]] = {name: [] for name in calls}
    cpu_times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, (call, _) in prepared.items():
            wall, cpu = _timed(call, tuple(calls[name][1]))
            times[name].append(wall)
            cpu_times[name].append(cpu)
    return {name: _stats(prepared[name][1], times[name], cpu_times[name], warmup) for name in calls}


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
    info["numpy"] = np.__version__
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
    out_dir: str | os.PathLike,
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


def print_targets(targets: dict) -> None:
    """One line per target of a benchmark summary: value, target and whether it was met."""
    for k, v in targets.items():
        status = "n/a" if v["met"] is None else ("met" if v["met"] else "NOT met")
        value = "—" if v["value"] is None else f"{v['value']:.2f}"
        where = f" (steps_per_call={v['steps_per_call']})" if "steps_per_call" in v else ""
        print(f"  {k}{where}: {value} (target >= {v['target']}) {status}")


def finish(name: str, rows: Sequence[dict[str, Any]], out_dir, *, meta: dict[str, Any], columns: Iterable[str],
           summary: dict[str, Any], notes: Sequence[str] = ()) -> dict[str, Any]:
    """The shared tail of a benchmark: write JSON + markdown, print the table, the targets (when the
    summary has ``"targets"``) and ``notes``; returns ``{"name", "meta", "rows", "summary", "paths"}``."""
    paths = write_results(name, rows, out_dir, meta=meta, columns=columns, summary=summary)
    print()
    print(markdown_table(rows, columns))
    print()
    if "targets" in summary:
        print_targets(summary["targets"])
    for line in notes:
        print(f"  {line}")
    print(f"\nwrote {paths['json']} and {paths['md']}")
    return {"name": name, "meta": meta, "rows": list(rows), "summary": summary, "paths": paths}
