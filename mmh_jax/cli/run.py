"""``mmh-jax run``: the paper's memorization validation end to end (parse, then call the pipeline), or on
its own the estimator validation or the synthetic LID benchmark."""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
import time

from mmh_jax.cli._args import add_common, int_at_least, print_error


DESCRIPTION = "\n\n".join(textwrap.fill(par, 100) for par in (
    "The main job: reproduce the validation of the manifold memorization hypothesis (Ross et al., ICLR 2025, "
    "arXiv 2411.00113) on embedded data, and write a report you can read and share: report.html (self-contained, "
    "figures embedded, a plain-language reading of each result), metrics.json and the PNGs.",
    "Experiments (default: all four, in this order): toy (OD-Mem vs DD-Mem on a von Mises circle plus a point "
    "mass), images (memorized digit samples and duplicated training digits have low LID_theta; OD-Mem vs DD-Mem "
    "with LID* on FLIPD's scale, checked on planted cases), conditional (can Wen et al.'s CFG norm detect "
    "memorization? per-image labels vs digit classes), mitigation (sampling steered towards higher LID_theta, "
    "judged with sample quality). 'validation' instead checks every LID estimator against closed-form ground "
    "truth, and 'benchmark' runs the synthetic LID benchmark of the FLIPD paper (arXiv 2406.03537): a diffusion "
    "model and LIDL's flows trained per data set (mixtures of flat and bent pieces at D = 10, 100, 800, lollipop, "
    "swiss roll, torus with circle), every model-based and model-free estimator scored on held-out points (MAE, "
    "concordance, per-component means, seconds per point). Each of the two runs alone.",
    "Every finding states its n, a bootstrap 95% interval and a verdict: holds, does not hold, or inconclusive "
    "(the interval straddles the threshold, or fewer than 10 positives).",
    "Presets: quick (tiny sizes, about 40 s on 2 CPU cores, compiled with XLA optimisations off; for tests), "
    "default (about 7 minutes on 2 CPU "
    "cores), full (larger models and samples; for a GPU). For 'benchmark': quick (two small data sets, a smoke "
    "run: its numbers mean nothing), default (every data set with D <= 100), full (with the D = 800 ones; for a "
    "GPU).",
    "Resuming: models are cached under OUT/models, and metrics.json is written after each experiment "
    "(benchmark: after each data set). Rerunning "
    "into the same --out (after Ctrl-C or SIGTERM, exit code 130 / 143, or a crash) continues a partly trained "
    "model from its last checkpoint, reuses finished models, and keeps the results of experiments that finished "
    "with the same configuration, seed and package versions instead of computing them again (--recompute: run "
    "them again, still reusing the models).",
)) + """

examples:
  mmh-jax run                                  # everything, default preset, report in runs/<timestamp>/
  mmh-jax run toy --preset quick --out runs/toy
  mmh-jax run images conditional --out runs/digits
  mmh-jax run validation --preset quick
  mmh-jax run benchmark --preset quick --out runs/bench"""


#: Experiments that run alone, each with its own module and report.
ALONE = ("validation", "benchmark")


def add_parser(sub) -> None:
    """Add ``run`` to the subparsers ``sub``."""
    from mmh_jax.experiments.pipeline.config import EXPERIMENTS

    p = sub.add_parser(
        "run",
        help="the main job: the paper's memorization validation end to end, with an HTML report",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_common(p, None, fills=" (report.html, metrics.json, figures, trained models under models/)",
            overwrite="replace a run of another model or configuration in --out (default: refuse; a rerun of "
            "the same command resumes instead)")
    p.add_argument("experiments", nargs="*", metavar="EXPERIMENT", 
                   help=f"any of {', '.join(EXPERIMENTS)} (default: all), or 'validation' or 'benchmark' (alone)")
    p.add_argument("--preset", choices=("quick", "default", "full"), default="default",
                   help="quick: tiny, for tests; default: about 7 minutes on 2 CPU cores (benchmark: every data set "
                   "with D <= 100); full: larger, for a GPU")
    p.add_argument("--recompute", action="store_true",
                   help="run the selected experiments even when OUT/metrics.json already holds their results from "
                   "the same configuration (trained models under OUT/models are still reused)")
    p.add_argument("--checkpoint", metavar="DIR", default=None,
                   help="run the detection experiment (images) on your own model: a run directory of "
                   "`mmh-jax train`; needs --data")
    p.add_argument("--step", type=int_at_least(0), default=None,
                   help="with --checkpoint: the checkpoint step to use (default: the newest)")
    p.add_argument("--data", metavar="PATH", default=None,
                   help="the training data of --checkpoint (any path `mmh-jax train --data` reads); repeated "
                   "points are treated as the duplicated ones")
    p.set_defaults(func=command)


def command(args) -> int:
    """Run the pipeline (or the validation) as ``args`` say; the exit code."""
    from mmh_jax.experiments.pipeline.config import EXPERIMENTS

    exps = list(dict.fromkeys(args.experiments))
    bad = [e for e in exps if e not in (*EXPERIMENTS, *ALONE)]
    if bad:
        print(f"mmh-jax run: error: unknown experiment {bad[0]!r}; choose from {', '.join(EXPERIMENTS)} "
              "or 'validation' or 'benchmark'", file=sys.stderr)
        return 2
    alone = [e for e in exps if e in ALONE]
    if alone and len(exps) > 1:
        others = " ".join(e for e in exps if e != alone[0])
        print(f"mmh-jax run: error: {alone[0]!r} runs alone; got experiments {' '.join(exps)}: run "
              f"`mmh-jax run {alone[0]}` and `mmh-jax run {others}` as two commands", file=sys.stderr)
        return 2
    out = args.out or os.path.join("runs", time.strftime("%Y%m%d-%H%M%S"))
    if "benchmark" in exps:
        return _benchmark(args, out)
    if "validation" in exps:
        from mmh_jax.experiments import validation

        config = validation.preset("quick" if args.preset == "quick" else "full", seed=args.seed)
        try:
            validation.run(config, out, overwrite=args.overwrite)
        except ValueError as e:  # --out holds another kind of report
            print_error(args, "run", e)
            return 2
        return 0
    from mmh_jax.experiments.pipeline import config as pipeline_config
    from mmh_jax.experiments.pipeline import run as pipeline_run

    try:
        config = pipeline_config.preset(args.preset, experiments=exps or None, seed=args.seed,
                                        checkpoint=args.checkpoint, data=args.data, step=args.step)
        if config.checkpoint and not os.path.isdir(config.checkpoint):
            raise ValueError(f"--checkpoint {config.checkpoint!r} is not a directory; pass the --out of `mmh-jax train`.")
    except ValueError as e:
        print_error(args, "run", e)
        return 2
    from mmh_jax.checkpoint import CheckpointError
    from mmh_jax.data.images import ImageDataError

    try:
        pipeline_run.run(config, out, recompute=args.recompute, overwrite=args.overwrite)
    except (CheckpointError, ImageDataError, FileNotFoundError, pipeline_run.OtherRunError) as e:
        print_error(args, "run", e)
        return 2
    return 0


def _benchmark(args, out: str) -> int:
    """``mmh-jax run benchmark``: the synthetic LID benchmark into ``out``; the exit code."""
    from mmh_jax.experiments import benchmark

    given = [flag for flag, v in (("--checkpoint", args.checkpoint), ("--data", args.data), ("--step", args.step))
             if v is not None]
    if given:
        print(f"mmh-jax run: error: {', '.join(given)} apply to the images experiment, not to 'benchmark' (it trains "
              "its own models on its own data sets); drop them", file=sys.stderr)
        return 2
    config = benchmark.preset(args.preset, seed=args.seed)
    try:
        benchmark.run(config, out, overwrite=args.overwrite, recompute=args.recompute)
    except ValueError as e:  # --out holds another report, a model of other settings, a diverged training
        print_error(args, "run", e)
        return 2
    return 0
