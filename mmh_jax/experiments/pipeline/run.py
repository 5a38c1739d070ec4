"""Run a selection of the experiments and write the report: ``metrics.json``, ``report.html``, PNGs.

``metrics.json`` is rewritten after every experiment, so an interrupted run keeps what finished; it
records the seed, the configuration and :func:`mmh_jax.provenance.provenance` (package versions);
models are cached under ``<out>/models`` (:func:`.common.train_model`), so rerunning into the same
directory skips training that is already done.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import sys
import time
from typing import Any

from mmh_jax import report
from mmh_jax.experiments.pipeline.common import Context
from mmh_jax.experiments.pipeline.config import EXPERIMENTS
from mmh_jax.provenance import provenance

__all__ = ["SUMMARY", "run", "summary_rows"]

#: (experiment, metric key path, what it is) shown in the terminal summary and the report's table.
SUMMARY = (
    ("toy", "counts.generalized", "samples generalized"),
    ("toy", "counts.od_mem", "samples OD-Mem"),
    ("toy", "counts.dd_mem", "samples DD-Mem"),
    ("toy", "mean_lid_theta.generalized", "mean LID_θ, generalized (truth 1)"),
    ("toy", "mean_lid_theta.od_mem", "mean LID_θ, OD-Mem (< 1 expected)"),
    ("toy", "mean_lid_theta.dd_mem", "mean LID_θ, DD-Mem (truth 0)"),
    ("images", "memorized_fraction", "fraction of samples memorized"),
    ("images", "auroc_flipd", "AUROC of −FLIPD, memorized vs not"),
    ("images", "tpr_at_1fpr_flipd", "TPR at 1% FPR of −FLIPD"),
    ("images", "auroc_normal_bundle", "AUROC of −normal bundle"),
    ("images", "auroc_duplicated_vs_unique", "AUROC of −FLIPD, duplicated vs unique training images"),
    ("images", "counts.od_mem", "memorized samples OD-Mem"),
    ("images", "counts.dd_mem", "memorized samples DD-Mem"),
    ("conditional", "auroc_cfg_norm", "AUROC of CFG norm"),
    ("conditional", "auroc_flipd_conditional", "AUROC of −FLIPD(x|c)"),
    ("conditional", "auroc_flipd_unconditional", "AUROC of −FLIPD(x)"),
    ("conditional", "fraction_cond_le_uncond", "fraction with LID_θ(x|c) ≤ LID_θ(x)"),
    ("mitigation", "lambdas", "λ of LID guidance"),
    ("mitigation", "memorized_fraction", "memorized fraction per λ"),
)

TITLES = {
    "toy": "1. Toy: OD-Mem and DD-Mem on a von Mises circle plus a point mass",
    "images": "2. Images: memorized digit samples have low LID_θ",
    "conditional": "3. Conditioning: CFG norm vs conditional and unconditional FLIPD",
    "mitigation": "4. Mitigation: sampling steered towards higher LID_θ",
}


def _get(d: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(d, dict) or part not in d:
            return None
        d = d[part]
    return d


def summary_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """The :data:`SUMMARY` rows present in ``metrics`` (experiments not run are left out)."""
    rows = []
    for exp, path, what in SUMMARY:
        if exp in metrics:
            v = _get(metrics[exp], path)
            if isinstance(v, list):
                v = ", ".join(report.format_value(x) if not isinstance(x, dict) else
                              "/".join(report.format_value(y) for y in x.values()) for x in v)
            rows.append({"experiment": exp, "metric": what, "value": v})
    return rows


def run(config, out: str, *, progress: bool = True) -> dict[str, Any]:
    """Run ``config.experiments`` into ``out``; returns the metrics (also in ``out/metrics.json``)."""
    import jax

    os.makedirs(out, exist_ok=True)
    ctx = Context(out=out, progress=progress, seed=config.seed)
    metrics: dict[str, Any] = {"seed": config.seed, "config": dataclasses.asdict(config),
                               "provenance": provenance(), "backend": jax.default_backend(),
                               "devices": jax.device_count()}
    # Results of experiments run earlier into the same directory (and not rerun now) are kept, so
    # `mmh-jax run images` then `mmh-jax run conditional` gives one report with both.
    previous = _previous(out)
    for name in EXPERIMENTS:
        if name in previous and name not in config.experiments:
            metrics[name] = previous[name]
    start = time.perf_counter()
    for name in config.experiments:
        module = importlib.import_module(f"mmh_jax.experiments.pipeline.{name}")
        ctx.log(f"== {name} ==")
        tic = time.perf_counter()
        metrics[name] = module.run(config, ctx)
        metrics[name]["seconds"] = time.perf_counter() - tic
        metrics["timing"] = {"total_s": time.perf_counter() - start, **ctx.timings,
                             **{f"{e}_s": metrics[e]["seconds"] for e in EXPERIMENTS if e in metrics}}
        report.write_json(os.path.join(out, "metrics.json"), metrics)
        _write_html(metrics, config, out)
    rows = summary_rows(metrics)
    print(report.markdown_table(rows, ["experiment", "metric", "value"]))
    print(f"\nreport: {os.path.abspath(os.path.join(out, 'report.html'))} "
          f"({metrics['timing']['total_s']:.0f} s)", file=sys.stderr if not progress else sys.stdout)
    return metrics


def _previous(out: str) -> dict[str, Any]:
    """metrics.json of an earlier run in ``out`` ({} if none or unreadable)."""
    import json

    try:
        with open(os.path.join(out, "metrics.json")) as fh:
            old = json.load(fh)
    except (OSError, ValueError):
        return {}
    return old if isinstance(old, dict) else {}


def _write_html(metrics: dict[str, Any], config, out: str) -> None:
    sections = [{"title": "Summary", "rows": summary_rows(metrics),
                 "reading": "The manifold memorization hypothesis (Ross et al., arXiv 2411.00113): a sample is "
                            "memorized where the model's local intrinsic dimension LID_θ is small; OD-Mem "
                            "(overfitting) when LID_θ < LID* of the data, DD-Mem (duplicated or degenerate data) "
                            "when LID* itself is small. Each section states whether its finding held in this run."}]
    for name in EXPERIMENTS:
        if name in metrics:
            m = metrics[name]
            sections.append({"title": TITLES[name], "reading": m.get("reading", ""), "figures": m.get("figures", [])})
    timing = metrics.get("timing", {})
    footer = (f"mmh-jax run, experiments {[e for e in EXPERIMENTS if e in metrics]}, seed {config.seed}, backend "
              f"{metrics['backend']} × {metrics['devices']}; total {timing.get('total_s', 0):.0f} s. "
              "Full configuration and every number in metrics.json.")
    report.write_text(os.path.join(out, "report.html"),
                      report.html_report("Memorization through geometry: mmh-jax run", sections, base_dir=out,
                                         footer=footer))
