"""Run a selection of the experiments and write the report: ``metrics.json``, ``report.html``, PNGs.

``metrics.json`` is rewritten after every experiment, so an interrupted run keeps what finished; it
records the seed, the configuration and :func:`mmh_jax.provenance.provenance` (package versions);
models are cached under ``<out>/models`` (:func:`.common.train_model`), so rerunning into the same
directory skips training that is already done and continues training that was interrupted.

Rerunning into the same directory resumes: an experiment whose results are in ``metrics.json``
from the same configuration (all of :class:`RunConfig` but the experiment selection), seed and
package versions, with its figures still on disk, is not computed again (``recompute=True``
forces it); the others run. What a user expects after Ctrl-C or SIGTERM, when the experiments are
deterministic for a seed (``tests/test_determinism.py``).
"""

from __future__ import annotations

import contextlib
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


def run(config, out: str, *, progress: bool = True, recompute: bool = False) -> dict[str, Any]:
    """Run ``config.experiments`` into ``out``; returns the metrics (also in ``out/metrics.json``).

    Experiments finished by an earlier run into ``out`` with the same configuration are kept, not
    computed again, unless ``recompute`` (see the module docstring). On ``KeyboardInterrupt``
    (Ctrl-C; SIGTERM in the CLI) ``metrics.json`` holds the experiments finished so far, the
    models their checkpoints, and the interrupt propagates.
    """
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
    with _compile_mode(config.fast_compile):
        _run_experiments(config, ctx, metrics, previous, out, start, recompute)
    rows = summary_rows(metrics)
    print(report.markdown_table(rows, ["experiment", "metric", "value"]))
    print(f"\nreport: {os.path.abspath(os.path.join(out, 'report.html'))} "
          f"({metrics['timing']['total_s']:.0f} s)", file=sys.stderr if not progress else sys.stdout)
    return metrics


@contextlib.contextmanager
def _compile_mode(fast: bool):
    """With ``fast``, XLA compiles with most optimisations off (``jax_disable_most_optimizations``).

    ``jax_optimization_level`` is set to O0 as well: it is part of JAX's jit cache key, so programs
    compiled here are cached apart from the optimised ones of the same process (other runs, tests).
    Both settings are restored on exit.
    """
    import jax

    if not fast:
        yield
        return
    saved = {k: jax.config.values[k] for k in ("jax_disable_most_optimizations", "jax_optimization_level")}
    jax.config.update("jax_disable_most_optimizations", True)
    jax.config.update("jax_optimization_level", "O0")
    try:
        yield
    finally:
        for k, v in saved.items():
            jax.config.update(k, v)


def _run_experiments(config, ctx: Context, metrics: dict[str, Any], previous: dict[str, Any], out: str,
                     start: float, recompute: bool) -> None:
    for name in config.experiments:
        ctx.log(f"== {name} ==")
        if not recompute and _finished(previous, name, metrics, out):
            metrics[name] = previous[name]
            ctx.log(f"[{name}] finished by an earlier run into {out} with the same configuration: keeping its "
                    "results from metrics.json (--recompute runs it again)")
        else:
            module = importlib.import_module(f"mmh_jax.experiments.pipeline.{name}")
            tic = time.perf_counter()
            try:
                metrics[name] = module.run(config, ctx)
            except KeyboardInterrupt:
                done = [e for e in EXPERIMENTS if e in metrics]
                print(f"interrupted during {name}: {os.path.join(out, 'metrics.json')} holds "
                      f"{', '.join(done) if done else 'no finished experiment'}; trained models are kept under "
                      f"{os.path.join(out, 'models')}. Rerun the same command to resume.", file=sys.stderr)
                raise
            metrics[name]["seconds"] = time.perf_counter() - tic
        metrics["timing"] = {"total_s": time.perf_counter() - start, **ctx.timings,
                             **{f"{e}_s": metrics[e]["seconds"] for e in EXPERIMENTS if e in metrics}}
        report.write_json(os.path.join(out, "metrics.json"), metrics)
        _write_html(metrics, config, out)


def _finished(previous: dict[str, Any], name: str, metrics: dict[str, Any], out: str) -> bool:
    """Whether ``previous`` (an earlier metrics.json in ``out``) holds ``name``'s results computed with
    the configuration (but the experiment selection), seed and package versions of ``metrics``, with
    its figures still in ``out``."""
    import json

    old = previous.get(name)
    if not isinstance(old, dict) or not isinstance(previous.get("config"), dict):
        return False
    if metrics["config"].get("checkpoint"):  # a user's own model may have been retrained since
        return False

    def same_config(cfg):  # through JSON, as metrics.json stores it (tuples read back as lists)
        return json.loads(json.dumps({k: v for k, v in cfg.items() if k != "experiments"}))

    if same_config(previous["config"]) != same_config(metrics["config"]) or previous.get("seed") != metrics["seed"]:
        return False
    if (previous.get("provenance") or {}).get("versions") != metrics["provenance"]["versions"]:
        return False
    figures = old.get("figures", [])
    return isinstance(figures, list) and all(os.path.exists(os.path.join(out, f)) for f in figures)


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
