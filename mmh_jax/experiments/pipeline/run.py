"""Run a selection of the experiments and write the report: ``metrics.json``, ``report.html``, PNGs.

``metrics.json`` is rewritten after every experiment, so an interrupted run keeps what finished; it
records the seed, the configuration and [`mmh_jax.provenance.provenance`][mmh_jax.provenance.provenance]
(package versions);
models are cached under ``<out>/models`` (`common.train_model`), so rerunning into the same
directory skips training that is already done and continues training that was interrupted.

Rerunning into the same directory resumes: an experiment whose results are in ``metrics.json``
from the same configuration (all of `RunConfig` but the experiment selection), seed and
package versions, with its figures still on disk, is not computed again (``recompute=True``
forces it); the others run. What a user expects after Ctrl-C or SIGTERM, when the experiments are
deterministic for a seed (``tests/test_determinism.py``).

One ``out`` holds one run: results are combined there only when they come from the same models
(`identity`: the preset, the seed, and either the preset's own model settings or the
``checkpoint`` and ``data``), so ``mmh-jax run images`` then ``mmh-jax run conditional`` give one
report, while a run of another model into the same ``out`` is refused before any work
(`check_out`; ``overwrite=True`` removes the other run's results first), as is a report of
``mmh-jax run validation`` or ``mmh-jax run benchmark``. A recomputed
experiment's figures that its new results no longer list are removed.

The ``quick`` preset (`SMOKE_PRESETS`) only exercises the code: ``metrics.json``
says ``"smoke_run": true`` with a ``"warning"``, the report shows it as a banner and the terminal
summary repeats it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import os
import shutil
import sys
import time
from typing import Any

import jax

from mmh_jax import report
from mmh_jax._compile import fast_compile
from mmh_jax.experiments.pipeline.common import Context
from mmh_jax.experiments.pipeline.config import EXPERIMENTS, SMOKE_PRESETS
from mmh_jax.provenance import provenance
from mmh_jax.verdicts import Finding

__all__ = ["OtherRunError", "SUMMARY", "check_out", "identity", "run", "smoke_warning", "summary_rows",
           "write_html"]

#: The columns of the summary: one row per finding of every experiment (`mmh_jax.verdicts`).
SUMMARY = ("experiment", "claim", "effect [95% CI]", "needs", "n", "verdict")

TITLES = {
    "toy": "1. Toy: OD-Mem and DD-Mem on a von Mises circle plus a point mass",
    "images": "2. Images: memorized digit samples have low LID_θ; OD-Mem vs DD-Mem on planted cases",
    "conditional": "3. Conditioning: can the CFG norm detect memorization? Per-image labels vs digit classes",
    "mitigation": "4. Mitigation: sampling steered towards higher LID_θ, judged with sample quality",
}


def finding_rows(m: Any) -> list[dict[str, Any]]:
    """One experiment's findings (``m["findings"]``, from `mmh_jax.verdicts.Finding.asdict`) as table rows."""
    found = m.get("findings") if isinstance(m, dict) else None
    if not isinstance(found, list):
        return []
    return [Finding.from_dict(f).row() for f in found]


def summary_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """Every finding of the experiments present in ``metrics``, as rows with the `SUMMARY` columns."""
    return [{"experiment": exp, **row} for exp in EXPERIMENTS if exp in metrics for row in finding_rows(metrics[exp])]


def run(config, out: str, *, progress: bool = True, recompute: bool = False,
        overwrite: bool = False) -> dict[str, Any]:
    """Run ``config.experiments`` into ``out``; returns the metrics (also in ``out/metrics.json``).

    Experiments finished by an earlier run into ``out`` with the same configuration are kept, not
    computed again, unless ``recompute`` (see the module docstring). On ``KeyboardInterrupt``
    (Ctrl-C; SIGTERM in the CLI) ``metrics.json`` holds the experiments finished so far, the
    models their checkpoints, and the interrupt propagates.

    Raises:
      OtherRunError: (a ValueError) ``out`` holds a run of other models (`check_out`), before
        any work; ``overwrite=True`` removes that run's results instead.
    """
    previous = check_out(config, out, overwrite=overwrite)

    os.makedirs(out, exist_ok=True)
    ctx = Context(out=out, progress=progress, seed=config.seed)
    warning = smoke_warning(config)
    metrics: dict[str, Any] = {"seed": config.seed, "preset": config.preset, "smoke_run": warning is not None,
                               **({"warning": warning} if warning else {}), "identity": identity(config),
                               "config": dataclasses.asdict(config),
                               "provenance": provenance(), "backend": jax.default_backend(),
                               "devices": jax.device_count()}
    if warning:
        ctx.log(warning)
    # Results of experiments run earlier into the same directory (and not rerun now) are kept, so
    # `mmh-jax run images` then `mmh-jax run conditional` gives one report with both.
    for name in EXPERIMENTS:
        if name in previous and name not in config.experiments:
            metrics[name] = previous[name]
    start = time.perf_counter()
    with fast_compile(config.fast_compile):
        _run_experiments(config, ctx, metrics, previous, out, start, recompute)
    rows = summary_rows(metrics)
    print(report.markdown_table(rows, list(SUMMARY)))
    if metrics.get("warning"):
        print(f"\n{metrics['warning']}")
    print(f"\nreport: {os.path.abspath(os.path.join(out, 'report.html'))} "
          f"({metrics['timing']['total_s']:.0f} s)", file=sys.stderr if not progress else sys.stdout)
    return metrics


class OtherRunError(ValueError):
    """``out`` holds the results of a run of other models (`check_out`)."""


#: The settings that define the models the preset trains itself (with the seed): ``toy`` trains
#: ``models/toy``; ``images`` trains ``models/digits_cfg``, shared by conditional and mitigation.
_MODEL_SETTINGS = {
    "toy": ("n_train", "steps", "hidden", "num_layers", "batch_size", "learning_rate", "time_sampling"),
    "images": ("n_train", "n_duplicated", "copies", "own_label_unique", "steps", "time_sampling", "model", "hidden",
               "num_layers", "channels", "channel_mults", "attention", "batch_size", "learning_rate"),
}

#: What a run with the preset's own models trains under ``out`` (removed with its results by ``overwrite``).
_TRAINED = (os.path.join("models", "toy"), os.path.join("models", "digits_cfg"),
            os.path.join("data", "digits_train.npz"))


def smoke_warning(config) -> str | None:
    """The warning of a smoke run (a preset in `SMOKE_PRESETS`), else None.

    Examples:
      >>> from mmh_jax.experiments.pipeline.config import preset
      >>> smoke_warning(preset("quick"))
      'Smoke run (preset quick): sizes are tiny; the numbers are not meaningful.'
      >>> smoke_warning(preset("default")) is None
      True
    """
    name = getattr(config, "preset", None)
    if name in SMOKE_PRESETS:
        return f"Smoke run (preset {name}): sizes are tiny; the numbers are not meaningful."
    return None


def identity(config) -> dict[str, Any]:
    """Which models a run's results come from: results of one identity may share a report.

    The preset and seed, and either the checkpoint (real path) and data (real path of a file, else
    the name as given) of ``--checkpoint`` runs, or the settings of the models the preset trains
    itself (`_MODEL_SETTINGS`). The experiment selection and the settings that do not change a
    model (sample counts, estimator settings) are not part of it: those results combine or rerun.

    Examples:
      >>> from mmh_jax.experiments.pipeline.config import preset
      >>> identity(preset("quick", experiments=["toy"])) == identity(preset("quick", experiments=["images"]))
      True
      >>> identity(preset("quick")) == identity(preset("quick", seed=1))
      False
    """
    return _identity(dataclasses.asdict(config), config.seed)


def _identity(cfg: dict[str, Any], seed: Any) -> dict[str, Any]:
    ident: dict[str, Any] = {"preset": cfg.get("preset"), "seed": seed}
    if cfg.get("checkpoint"):
        data = cfg.get("data")
        ident.update(checkpoint=os.path.realpath(cfg["checkpoint"]),
                     data=os.path.realpath(data) if isinstance(data, str) and os.path.exists(data) else data)
        if cfg.get("step") is not None:  # a checkpoint step other than the newest, where the config has one
            ident["step"] = cfg["step"]
    else:
        ident.update(checkpoint=None, data=None, models={
            section: {k: (cfg.get(section) or {}).get(k) for k in keys} for section, keys in _MODEL_SETTINGS.items()})
    return json.loads(json.dumps(ident))  # as metrics.json stores it (tuples become lists)


def run_kind(previous: dict[str, Any]) -> str:
    """``run`` (metrics.json of this module), ``validation`` (of ``mmh-jax run validation``),
    ``benchmark`` (of ``mmh-jax run benchmark``: ``"kind": "benchmark"``) or ``other`` (unreadable or
    unknown: {} from `previous_metrics`)."""
    if previous.get("kind") == "benchmark":
        return "benchmark"
    cfg = previous.get("config")
    if isinstance(cfg, dict) and "experiments" in cfg:
        return "run"
    if isinstance(cfg, dict) and "cases" in cfg and "results" in previous:
        return "validation"
    return "other"


def _previous_identity(previous: dict[str, Any]) -> dict[str, Any]:
    if isinstance(previous.get("identity"), dict):
        return previous["identity"]
    return _identity(previous["config"], previous.get("seed"))  # written before identities were recorded


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What differs between two identities; a key an older metrics.json lacks (``preset``) is not compared."""
    diff = []
    for key in ("preset", "seed", "checkpoint", "data", "step"):
        if old.get(key) != new.get(key) and not (key == "preset" and old.get(key) is None):
            diff.append(key)
    if "models" in old and "models" in new:
        for section, settings in new["models"].items():
            for k, v in settings.items():
                if (old["models"].get(section) or {}).get(k) != v:
                    diff.append(f"{section}.{k} {(old['models'].get(section) or {}).get(k)} vs {v}")
    return diff


def _describe(ident: dict[str, Any]) -> str:
    step = f" at step {ident['step']}" if ident.get("step") is not None else ""
    models = (f"the model of --checkpoint {ident['checkpoint']}{step} with --data {ident['data']}"
              if ident.get("checkpoint") else "the preset's own toy and digits models")
    preset = f"preset {ident['preset']}, " if ident.get("preset") is not None else ""  # unrecorded before
    return f"{preset}seed {ident.get('seed')}, {models}"


def check_out(config, out: str, *, overwrite: bool = False) -> dict[str, Any]:
    """Check, before any work, that ``out`` holds no run of other models than ``config``'s.

    An earlier ``metrics.json`` in ``out`` of the same `identity` is resumed and combined with
    (another experiment selection, other sample sizes); one of another identity (other preset or
    seed, the preset's own models vs a checkpoint, another checkpoint or data, other model
    settings) or of ``mmh-jax run validation`` or ``mmh-jax run benchmark`` is refused, since its
    results would mix with this run's in one report. An unreadable ``metrics.json`` is replaced, as
    before. With ``overwrite`` that run's results are removed instead (`remove_run`): ``report.html``,
    the figures, tables and ``.npz`` files its metrics list, the models and data it trained under
    ``out`` (never the ``--checkpoint`` or ``--data`` of this run), then its ``metrics.json``.

    Returns:
      the earlier metrics to build on ({} when there are none, or they were removed).

    Raises:
      OtherRunError: ``out`` holds another run and ``overwrite`` is False; the message names both
        runs and the fixes.
    """
    if not os.path.exists(os.path.join(out, "metrics.json")):
        return {}
    previous = previous_metrics(out)
    new = identity(config)
    kind = run_kind(previous)
    if kind == "run":
        old = _previous_identity(previous)
        diff = _differences(old, new)
        if not diff:
            return previous
        what = f"a run of {_describe(old)}"
        settings = [d for d in diff if " vs " in d]
        if settings and "preset" not in diff:  # another preset explains its settings
            what += f" (model settings {', '.join(settings[:4])}{', ...' if len(settings) > 4 else ''})"
    elif kind == "other":  # unreadable or unknown: replaced as before (nothing tells whose it is)
        return {}
    else:
        what = describe_report(previous, kind)
    refuse_or_remove(out, previous, kind, what=what, this=f"this run (of {_describe(new)})", overwrite=overwrite,
                     keep=(config.checkpoint, config.data))
    return {}


def describe_report(previous: dict[str, Any], kind: str) -> str:
    """What ``out`` holds, for messages: the report ``previous`` of ``kind`` (`run_kind`), not ``other``."""
    if kind == "run":
        return f"an `mmh-jax run` experiments report (of {_describe(_previous_identity(previous))})"
    if kind == "validation":
        return "an `mmh-jax run validation` report"
    names = sorted(n for n in _benchmark_models(previous) if isinstance(n, str))
    listed = f" of {', '.join(names[:4])}{', ...' if len(names) > 4 else ''}" if names else ""
    return f"an `mmh-jax run benchmark` report{listed} (with the data and models it trained there)"


def refuse_or_remove(out: str, previous: dict[str, Any], kind: str, *, what: str, this: str, overwrite: bool,
                     keep=()) -> None:
    """Refuse ``out`` holding ``what``, the report ``previous`` of another kind or models (``kind``, see
    `run_kind`), or with ``overwrite`` remove that report's results first (`remove_run`, never ``keep``).

    Raises:
      OtherRunError: ``overwrite`` is False: the message names ``out``, ``what`` it holds, ``this``
        (the run refused) and the fixes.
    """
    if not overwrite:
        raise OtherRunError(f"--out {out!r} holds {what}; {this} would mix its results with it in one report: "
                            "choose another --out, or pass --overwrite to replace it.")
    remove_run(out, previous, kind, keep=keep)


def _inside(out: str, rel: Any) -> str | None:
    """The real path of ``rel`` (a path from a metrics.json) when it lies inside ``out``, else None."""
    if not isinstance(rel, str) or not rel or os.path.isabs(rel):
        return None
    root = os.path.realpath(out)
    path = os.path.realpath(os.path.join(out, rel))
    return path if path.startswith(root + os.sep) else None


def _remove_files(out: str, names) -> None:
    for rel in names:
        path = _inside(out, rel)
        if path and os.path.isfile(path):
            os.remove(path)


def _benchmark_models(previous: dict[str, Any]) -> dict[str, Any]:
    """A benchmark's metrics: data set name -> its models' training configurations (from its
    ``identity``; data sets listed only under ``datasets`` map to {})."""
    ident = previous.get("identity") if isinstance(previous.get("identity"), dict) else {}
    models = ident.get("models") if isinstance(ident.get("models"), dict) else {}
    datasets = previous.get("datasets") if isinstance(previous.get("datasets"), dict) else {}
    return {name: models.get(name) if isinstance(models.get(name), dict) else {} for name in {*models, *datasets}}


def _plain(name: Any) -> bool:
    """Whether ``name`` (from a metrics.json) is one plain file name, usable as a path part."""
    return isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and os.sep not in name


def _written(out: str, previous: dict[str, Any], kind: str) -> tuple[list[Any], list[Any], list[str]]:
    """What the run of ``previous`` (of ``kind``) wrote into ``out``, as paths relative to it: its
    files, its trained models and data (files or folders), and the folders to drop once empty."""
    files: list[Any] = ["report.html"]
    if kind == "run":
        for name in EXPERIMENTS:
            if isinstance(previous.get(name), dict):
                figures = previous[name].get("figures")
                files += [f"{name}.npz", *(figures if isinstance(figures, list) else [])]
        if previous["config"].get("checkpoint"):
            return files, [], []
        return files, list(_TRAINED), ["models", "data"]  # the models the preset trained for that run
    if kind == "validation":
        return [*files, "table.md", "flipd_curves.png"], [], []
    # benchmark: per data set its estimates, training points and models (models/<name>/<kind>)
    files += ["table.md", "estimates.png"]
    trained, folders = [], []
    datasets = previous.get("datasets") if isinstance(previous.get("datasets"), dict) else {}
    for name, models in _benchmark_models(previous).items():
        if not _plain(name):
            continue
        entry = datasets.get(name) if isinstance(datasets.get(name), dict) else {}
        files.append(entry.get("estimates"))
        trained += [os.path.join("models", name, m) for m in models if _plain(m)]
        trained += [cfg.get("data") for cfg in models.values() if isinstance(cfg, dict)]
        folders.append(os.path.join("models", name))
    return files, trained, [*folders, "models", "data", "estimates"]


def remove_run(out: str, previous: dict[str, Any], kind: str, keep=()) -> None:
    """Remove what the run of ``previous`` (of ``kind``, see `run_kind`) wrote into ``out``, but
    never the paths ``keep`` (or what holds them); its ``metrics.json`` last, so an interrupted
    removal is still refused and can be redone."""
    files, trained, folders = _written(out, previous, kind)
    keep = [os.path.realpath(p) for p in keep if p]
    for rel in trained:
        path = _inside(out, rel)
        if path is None or any(k == path or k.startswith(path + os.sep) for k in keep):
            continue
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.isfile(path):
            os.remove(path)
    _remove_files(out, files)
    for folder in folders:
        with contextlib.suppress(OSError):
            os.rmdir(os.path.join(out, folder))  # only when empty
    _remove_files(out, ["metrics.json"])


def _remove_stale_figures(out: str, old: Any, metrics: dict[str, Any]) -> None:
    """Remove the figures an experiment's previous results (``old``) listed that no results in
    ``metrics`` list any more (a recomputed experiment may draw fewer)."""
    if not isinstance(old, dict) or not isinstance(old.get("figures"), list):
        return
    listed = {f for e in EXPERIMENTS if isinstance(metrics.get(e), dict) for f in metrics[e].get("figures") or []}
    _remove_files(out, [f for f in old["figures"] if f not in listed])


def _run_experiments(config, ctx: Context, metrics: dict[str, Any], previous: dict[str, Any], out: str,
                     start: float, recompute: bool) -> None:
    for name in config.experiments:
        try:
            ctx.log(f"== {name} ==")  # a safe point: a signal after the previous experiment stops here
            if not recompute and _finished(previous, name, metrics, out):
                metrics[name] = previous[name]
                ctx.log(f"[{name}] finished by an earlier run into {out} with the same configuration: keeping "
                        "its results from metrics.json (--recompute runs it again)")
                continue_with = None
            else:
                module = importlib.import_module(f"mmh_jax.experiments.pipeline.{name}")
                tic = time.perf_counter()
                metrics[name] = module.run(config, ctx)
                continue_with = name
        except KeyboardInterrupt:
            done = [e for e in EXPERIMENTS if e in metrics and e != name]
            print(f"interrupted during {name}: {os.path.join(out, 'metrics.json')} holds "
                  f"{', '.join(done) if done else 'no finished experiment'}; trained models are kept under "
                  f"{os.path.join(out, 'models')}. Rerun the same command to resume.", file=sys.stderr)
            raise
        if continue_with is not None:
            metrics[name]["seconds"] = time.perf_counter() - tic
            _remove_stale_figures(out, previous.get(name), metrics)
        metrics["timing"] = {"total_s": time.perf_counter() - start, **ctx.timings,
                             **{f"{e}_s": metrics[e]["seconds"] for e in EXPERIMENTS if e in metrics}}
        report.write_json(os.path.join(out, "metrics.json"), metrics)
        write_html(metrics, config, out)


def _finished(previous: dict[str, Any], name: str, metrics: dict[str, Any], out: str) -> bool:
    """Whether ``previous`` (an earlier metrics.json in ``out``) holds ``name``'s results computed with
    the configuration (but the experiment selection), seed and package versions of ``metrics``, with
    its figures still in ``out``."""
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


def previous_metrics(out: str) -> dict[str, Any]:
    """metrics.json of an earlier run in ``out`` ({} if none or unreadable)."""
    try:
        with open(os.path.join(out, "metrics.json")) as fh:
            old = json.load(fh)
    except (OSError, ValueError):
        return {}
    return old if isinstance(old, dict) else {}


def write_html(metrics: dict[str, Any], config, out: str) -> None:
    """``out/report.html``: the summary table, each experiment's reading and figures; the preset in
    the title and footer, and for a smoke run (`smoke_warning`) a banner above everything."""
    sections = [{"title": "Summary: every finding with its 95% bootstrap interval, n and verdict (inconclusive "
                          "when the interval straddles the threshold or fewer than 10 positives)",
                 "rows": summary_rows(metrics),
                 "reading": "The manifold memorization hypothesis (Ross et al., arXiv 2411.00113): a sample is "
                            "memorized where the model's local intrinsic dimension LID_θ is small; OD-Mem "
                            "(overfitting) when LID_θ < LID* of the data, DD-Mem (duplicated or degenerate data) "
                            "when LID* itself is small. Each section states whether its findings held in this run."}]
    for name in EXPERIMENTS:
        if name in metrics:
            m = metrics[name]
            title = TITLES[name]
            if name == "images" and config.checkpoint:
                title = f"2. Detection on the model of {config.checkpoint}: memorized samples have low LID_θ"
            sections.append({"title": title, "reading": m.get("reading", ""), "rows": finding_rows(m),
                             "figures": m.get("figures", [])})
            if isinstance(m.get("planted"), dict) and m["planted"]:
                sections.append({"title": f"{title}: planted cases (rows: what was planted; columns: the "
                                          "classification of their samples)",
                                 "rows": [{"planted": k, **v} for k, v in m["planted"].items()]})
    timing = metrics.get("timing", {})
    model = (f"the model of --checkpoint {config.checkpoint} with --data {config.data}" if config.checkpoint
             else "the preset's own models")
    footer = (f"mmh-jax run --preset {config.preset}, experiments {[e for e in EXPERIMENTS if e in metrics]}, "
              f"seed {config.seed}, {model}, backend {metrics['backend']} × {metrics['devices']}; total "
              f"{timing.get('total_s', 0):.0f} s. Full configuration and every number in metrics.json.")
    report.write_text(os.path.join(out, "report.html"),
                      report.html_report(f"Memorization through geometry: mmh-jax run (preset {config.preset})",
                                         sections, base_dir=out, footer=footer,
                                         banner=metrics.get("warning") or ""))
