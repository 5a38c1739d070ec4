"""`mmh-jax` command-line entry point: parse → config → ``experiments.*.run``.

Each subcommand lives in an explicit table below (no import-time registries). Experiment modules
are imported only when their subcommand runs, so ``mmh-jax --help`` stays fast.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
import textwrap
import time
import traceback

from mmh_jax import _interrupt

DESCRIPTION = """\
mmh-jax: measure memorization in generative models through geometry
(the manifold memorization hypothesis, Ross et al., ICLR 2025, arXiv 2411.00113).

Subcommands:
  run     the main job on the embedded defaults; writes a report directory
  train   train a diffusion model (MLP or U-Net) or normalizing flows (flow, lidl) with resumable checkpoints
  sample  draw samples from a trained model
  lid     per-point LID: model-free LID* of data (lpca, mle, twonn, ess), or a trained
          model's LID_theta with --checkpoint (flipd, normal-bundle, fp-regress)
  bench   estimator throughput benchmarks

Run `mmh-jax SUBCOMMAND --help` for the options of each. Errors are one line on stderr with a
non-zero exit code; --debug (before or after the subcommand) shows the full traceback.

--out is the directory a command fills (lid: OUT/lid.npz, sample: OUT/samples.npz); outputs of an
earlier run are kept unless you pass --overwrite.

Interrupting (Ctrl-C, or SIGTERM from `kill` or a job scheduler) stops at the next safe point (between
training dispatches, between the stages of `run`, after a save) and saves what is worth saving:
`train` a checkpoint (continue with --resume), `run` its trained models and the finished experiments
(rerun the same command to resume). Exit code 130 after Ctrl-C (SIGINT), 143 after SIGTERM; a
second signal stops at once, without saving.
"""

#: Below this much free space on the disk of --out, a command stops before it starts its work.
MIN_FREE_BYTES = 64 * 2**20


def interrupt_exit_code() -> int:
    """130 after Ctrl-C (SIGINT), 143 after SIGTERM: the shell's 128 + signal number."""
    from mmh_jax import _interrupt

    return _interrupt.exit_code()


class OutError(ValueError):
    """``--out`` cannot be written (not a directory, not writable, disk full)."""


def _error(args, command: str, e: BaseException, *, prefix: str = "", suffix: str = "") -> None:
    """Print ``mmh-jax COMMAND: error: MESSAGE`` as one line; the traceback first under ``--debug``."""
    if _debug(args):
        traceback.print_exception(e)
    msg = " ".join(str(e).split()) or type(e).__name__
    print(f"mmh-jax {command}: error: {prefix}{msg}{suffix}", file=sys.stderr)


def _debug(args) -> bool:
    return bool(getattr(args, "debug", False) or getattr(args, "debug_sub", False))


def check_out(out: str) -> None:
    """Fail fast, before any long work, when ``out`` (a file or directory to be written) cannot be.

    Nothing is created: the nearest existing directory on the way to ``out`` must accept a new file
    (probed with a temporary file that is removed at once) and have ``MIN_FREE_BYTES`` free.

    Raises:
      OutError: a file stands where a directory is needed, the directory is not writable, or the
        disk is (nearly) full.
    """
    path = os.path.abspath(out)
    probe = path
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        if probe != path:
            raise OutError(f"--out {out!r}: {probe!r} is a file, not a directory; choose another --out.")
        probe = os.path.dirname(path)  # an existing output file: it is replaced, its folder must be writable
    try:
        fd, tmp = tempfile.mkstemp(dir=probe, prefix=".mmh-jax-write-test-")
        os.close(fd)
        os.remove(tmp)
    except OSError as e:
        raise OutError(f"--out {out!r} is not writable: cannot create a file in {probe!r} "
                       f"({e.strerror or e}); choose another --out.") from None
    free = shutil.disk_usage(probe).free
    if free < MIN_FREE_BYTES:
        raise OutError(f"--out {out!r}: only {free / 2**20:.1f} MiB free on its disk (need at least "
                       f"{MIN_FREE_BYTES // 2**20} MiB); free some space or choose another --out.")


def int_at_least(lo: int):
    """argparse type: an integer >= ``lo`` (argparse names the flag in its error)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if value < lo:
            raise argparse.ArgumentTypeError(f"must be at least {lo}, got {value}")
        return value

    parse.__name__ = f"integer >= {lo}"
    return parse


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def _common(p: argparse.ArgumentParser, default_out: str, *, fills: str = "", overwrite: str = "") -> None:
    p.add_argument("--out", default=default_out, metavar="DIR",
                   help=f"the directory this command fills{fills} (default: {default_out or 'runs/<timestamp>/'})")
    p.add_argument("--seed", type=int_at_least(0), default=0, help="PRNG seed, an integer >= 0 (default: 0)")
    p.add_argument("--overwrite", action="store_true",
                   help=overwrite or "replace the outputs an earlier run left in --out (default: refuse, keep them)")
    p.add_argument("--debug", dest="debug_sub", action="store_true", default=False,
                   help="on an error, show the full Python traceback (default: a one-line message)")


_RUN_DESCRIPTION = "\n\n".join(textwrap.fill(par, 100) for par in (
    "The main job: reproduce the validation of the manifold memorization hypothesis (Ross et al., ICLR 2025, "
    "arXiv 2411.00113) on embedded data, and write a report you can read and share: report.html (self-contained, "
    "figures embedded, a plain-language reading of each result), metrics.json and the PNGs.",
    "Experiments (default: all four, in this order): toy (OD-Mem vs DD-Mem on a von Mises circle plus a point "
    "mass), images (memorized digit samples and duplicated training digits have low LID_theta; OD-Mem vs DD-Mem "
    "with LID* on FLIPD's scale, checked on planted cases), conditional (can Wen et al.'s CFG norm detect "
    "memorization? per-image labels vs digit classes), mitigation (sampling steered towards higher LID_theta, "
    "judged with sample quality). 'validation' instead checks every LID estimator against closed-form ground "
    "truth.",
    "Every finding states its n, a bootstrap 95% interval and a verdict: holds, does not hold, or inconclusive "
    "(the interval straddles the threshold, or fewer than 10 positives).",
    "Presets: quick (tiny sizes, about 40 s on 2 CPU cores, compiled with XLA optimisations off; for tests), "
    "default (about 7 minutes on 2 CPU "
    "cores), full (larger models and samples; for a GPU).",
    "Resuming: models are cached under OUT/models, and metrics.json is written after each experiment. Rerunning "
    "into the same --out (after Ctrl-C or SIGTERM, exit code 130 / 143, or a crash) continues a partly trained "
    "model from its last checkpoint, reuses finished models, and keeps the results of experiments that finished "
    "with the same configuration, seed and package versions instead of computing them again (--recompute: run "
    "them again, still reusing the models).",
)) + """

examples:
  mmh-jax run                                  # everything, default preset, report in runs/<timestamp>/
  mmh-jax run toy --preset quick --out runs/toy
  mmh-jax run images conditional --out runs/digits
  mmh-jax run validation --preset quick"""


def _add_run(sub) -> None:
    from mmh_jax.experiments.pipeline.config import EXPERIMENTS

    p = sub.add_parser(
        "run",
        help="the main job: the paper's memorization validation end to end, with an HTML report",
        description=_RUN_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(p, None, fills=" (report.html, metrics.json, figures, trained models under models/)",
            overwrite="replace a run of another model or configuration in --out (default: refuse; a rerun of "
            "the same command resumes instead)")
    p.add_argument("experiments", nargs="*", metavar="EXPERIMENT", 
                   help=f"any of {', '.join(EXPERIMENTS)} (default: all), or 'validation'")
    p.add_argument("--preset", choices=("quick", "default", "full"), default="default",
                   help="quick: tiny, for tests; default: ~11 min on 2 CPU cores; full: larger, for a GPU")
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
    p.set_defaults(func=_cmd_run)


def _cmd_run(args) -> int:
    from mmh_jax.experiments.pipeline.config import EXPERIMENTS

    exps = list(dict.fromkeys(args.experiments))
    bad = [e for e in exps if e not in (*EXPERIMENTS, "validation")]
    if bad:
        print(f"mmh-jax run: error: unknown experiment {bad[0]!r}; choose from {', '.join(EXPERIMENTS)} "
              "or 'validation'", file=sys.stderr)
        return 2
    out = args.out or os.path.join("runs", time.strftime("%Y%m%d-%H%M%S"))
    if "validation" in exps:
        if len(exps) > 1:
            print("mmh-jax run: error: 'validation' runs alone; got experiments " + " ".join(exps), file=sys.stderr)
            return 2
        from mmh_jax.experiments import validation

        config = validation.preset("quick" if args.preset == "quick" else "full", seed=args.seed)
        try:
            validation.run(config, out, overwrite=args.overwrite)
        except ValueError as e:  # --out holds another kind of report
            _error(args, "run", e)
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
        _error(args, "run", e)
        return 2
    from mmh_jax.checkpoint import CheckpointError
    from mmh_jax.data.images import ImageDataError

    try:
        pipeline_run.run(config, out, recompute=args.recompute, overwrite=args.overwrite)
    except (CheckpointError, ImageDataError, FileNotFoundError, pipeline_run.OtherRunError) as e:
        _error(args, "run", e)
        return 2
    return 0


_LID_DESCRIPTION = "\n\n".join(textwrap.fill(par, 100) for par in (
    "Estimate the local intrinsic dimension of every point and write the estimates to OUT/lid.npz (--out is the "
    "directory to fill; an earlier lid.npz there is kept unless --overwrite); print a summary, "
    "per component with the mean absolute error when the true LID is known (synthetic data, or an .npz with "
    "'lid'/'component' arrays).",
    "Without --checkpoint: LID* of a data set with a model-free estimator (lpca, mle, twonn, ess); the .npz holds "
    "lid, plus truth and component when known.",
    "With --checkpoint DIR: LID_theta of the diffusion model trained by `mmh-jax train --out DIR` (flipd, "
    "normal-bundle, fp-regress) at its training data (--data train), at its own samples (--data samples) or at "
    "the points of a file; the .npz holds lid, x, index, truth/component when known and, for flipd, t0, t0s, "
    "curves, lid_knee, t0_knee, lid_plateau, t0_plateau. All points go through one jitted function, --batch-size points at a time per "
    "device.",
)) + """

examples:
  mmh-jax lid --estimator lpca --data lollipop --k 50 --out runs/lid             # writes runs/lid/lid.npz
  mmh-jax lid --checkpoint runs/lollipop --estimator flipd --data train --out runs/lid_theta
  mmh-jax lid --checkpoint runs/lollipop --step 2000 --estimator normal-bundle --data samples --n 500"""


def _add_lid(sub) -> None:
    from mmh_jax.data.synthetic import GENERATORS
    from mmh_jax.experiments.lid_cmd import DATA_DEFAULTS, ESTIMATORS, PRESETS
    from mmh_jax.experiments.model_lid import ESTIMATORS as MODEL_ESTIMATORS
    from mmh_jax.experiments.model_lid import PRESETS as MODEL_PRESETS
    from mmh_jax.experiments.model_lid import SAMPLERS, SAMPLES_DEFAULT_N

    p = sub.add_parser(
        "lid",
        help="per-point LID: model-free LID* of data (lpca, mle, twonn, ess), or a trained model's LID_theta "
        "with --checkpoint (flipd, normal-bundle, fp-regress)",
        description=_LID_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(p, "mmh_jax_out/lid", fills=" (lid.npz)")
    p.add_argument("--estimator", choices=ESTIMATORS + MODEL_ESTIMATORS, default=None,
                   help="model-free (without --checkpoint): lpca: local PCA (eigenvalues above alpha*max); mle: "
                   "Levina-Bickel; twonn: ratio of 2nd to 1st neighbour distance; ess: expected simplex skewness "
                   "(default: lpca). With --checkpoint: flipd: FLIPD at --t0 and at the knee of its curve over "
                   "--t0-grid; normal-bundle: singular-value gap of scores around x; fp-regress: FPRegress "
                   "(LIDL with one model) (default: flipd)")
    p.add_argument("--data", default=None, metavar="NAME|FILE",
                   help=f"without --checkpoint: a synthetic generator ({', '.join(GENERATORS)}) or a .npz (points "
                   "under 'x' or its only array; optional ground truth 'lid', 'component') or .npy file of shape "
                   "(N, D) (default: lollipop). With --checkpoint: 'train' (the model's training data rebuilt "
                   "from its saved config; ground truth known for synthetic data), 'samples' (--n samples drawn "
                   "from the model) or a path: .npz/.npy as above, or images (.npz/.npy, image folder, MNIST IDX, "
                   "CIFAR-10, 'digits') of the model's event shape (default: train)")
    p.add_argument("--n", type=int_at_least(1), default=None,
                   help=f"points to generate (default: {PRESETS['full']['n']}, or {PRESETS['quick']['n']} with "
                   "--preset quick); with a file or --data train, a seeded random subsample of N points when "
                   f"there are more (default: all; {MODEL_PRESETS['quick']['n']} with --checkpoint and --preset "
                   f"quick); with --data samples, the number of samples (default: {SAMPLES_DEFAULT_N})")
    p.add_argument("--preset", choices=tuple(PRESETS), default="full",
                   help=f"quick: {PRESETS['quick']['n']} points ({MODEL_PRESETS['quick']['n']} with --checkpoint), "
                   f"done in seconds; full (default): {PRESETS['full']['n']} generated points, every point of a "
                   "file or training set; --n overrides either")

    free = p.add_argument_group("model-free estimators (without --checkpoint)")
    free.add_argument("--k", type=int_at_least(1), default=None,
                      help="number of nearest neighbours (default: 20; the reference uses lpca/mle 1000, ess 100 on "
                      "4096-point subsamples)")
    free.add_argument("--queries", default=None, metavar="FILE",
                      help=".npz/.npy points at which to estimate (default: the data points themselves)")
    free.add_argument("--alpha", type=float, default=None,
                      help="lpca only: count eigenvalues above alpha times the largest (default: 0.05)")
    free.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                      help="generator keyword (Python literal), repeatable, e.g. --param dims=(2,5) --param "
                      "frequency=5; defaults: " + "; ".join(
                          f"{g}: " + ", ".join(f"{k}={v}" for k, v in kw.items()) for g, kw in DATA_DEFAULTS.items()))

    model = p.add_argument_group("model-based estimators (with --checkpoint)")
    model.add_argument("--checkpoint", default=None, metavar="DIR",
                       help="run directory of `mmh-jax train`: estimate the LID_theta of its model (EMA parameters, "
                       "unconditional score)")
    model.add_argument("--step", type=int_at_least(0), default=None,
                       help="the checkpoint step to use (default: the newest)")
    model.add_argument("--batch-size", type=int_at_least(1), default=None,
                       help="points evaluated at once per device inside the one jitted function (default: 64; lower "
                       "it for large images)")
    model.add_argument("--t0", type=float, default=None,
                       help="flipd: the fixed diffusion time of 'lid' (default: 0.05, DESIGN 3b)")
    model.add_argument("--t0-grid", type=float, nargs=3, default=None, metavar=("MIN", "MAX", "NUM"),
                       help="flipd: geometric grid of NUM times in [MIN, MAX] for the FLIPD curve and its knee "
                       "('lid_knee', 't0_knee') (default: 1e-3 1 24)")
    model.add_argument("--trace", choices=("auto", "exact", "hutchinson"), default=None,
                       help="flipd, fp-regress: divergence of the score by D Jacobian-vector products (exact) or "
                       "Rademacher probes (hutchinson); auto = exact when D <= 3500 (default: auto)")
    model.add_argument("--num-probes", type=int_at_least(1), default=None,
                       help="flipd, fp-regress: Hutchinson probes per point (default: 1)")
    model.add_argument("--t", type=float, default=None,
                       help="normal-bundle: the small diffusion time of the noisy copies (default: 0.01)")
    model.add_argument("--num-samples", type=int_at_least(1), default=None,
                       help="normal-bundle: number K of noisy copies of each point (default: 4*D)")
    model.add_argument("--sampler", choices=SAMPLERS, default=None,
                       help="--data samples: the sampler (default: ddim)")
    model.add_argument("--num-steps", type=int_at_least(1), default=None,
                       help="--data samples: sampler steps (default: 100)")
    model.add_argument("--tau", type=float, default=None,
                       help="flow checkpoints: flow-jacobian's log singular-value threshold, fast-flow-lidl's log "
                       "noise scale for 'lid' (default: -3)")
    model.add_argument("--tau-grid", type=float, nargs=3, default=None, metavar=("MIN", "MAX", "NUM"),
                       help="flow-jacobian, fast-flow-lidl: the tau curve linspace(MIN, MAX, NUM) and its plateau "
                       "('curves', 'lid_plateau') (default: -10 5 50)")
    p.set_defaults(func=_cmd_lid)


#: lid options of one mode or estimator: dest -> (flag, the estimators / data it applies to).
_MODEL_FREE_OPTIONS = {"k": "--k", "queries": "--queries", "alpha": "--alpha", "param": "--param"}
_MODEL_OPTIONS = {
    "batch_size": ("--batch-size", ("flipd", "normal-bundle", "fp-regress", "lidl", "flow-jacobian",
                                    "fast-flow-lidl")),
    "step": ("--step", ("flipd", "normal-bundle", "fp-regress", "lidl", "flow-jacobian", "fast-flow-lidl")),
    "tau": ("--tau", ("flow-jacobian", "fast-flow-lidl")),
    "tau_grid": ("--tau-grid", ("flow-jacobian", "fast-flow-lidl")),
    "t0": ("--t0", ("flipd",)),
    "t0_grid": ("--t0-grid", ("flipd",)),
    "trace": ("--trace", ("flipd", "fp-regress")),
    "num_probes": ("--num-probes", ("flipd", "fp-regress")),
    "t": ("--t", ("normal-bundle",)),
    "num_samples": ("--num-samples", ("normal-bundle",)),
}
_SAMPLE_OPTIONS = {"sampler": "--sampler", "num_steps": "--num-steps"}


def _check_lid_mode(args, model_free: tuple[str, ...]) -> str:
    """The estimator for this mode; ValueError naming the argument and the fix when options do not fit."""
    if args.checkpoint is None:
        estimator = args.estimator or "lpca"
        if estimator not in model_free:
            raise ValueError(
                f"--estimator {estimator} needs a trained model: pass --checkpoint DIR (a run directory of "
                f"`mmh-jax train`), or use a model-free estimator ({', '.join(model_free)})."
            )
        for dest, (flag, _) in {**_MODEL_OPTIONS, **{k: (v, ()) for k, v in _SAMPLE_OPTIONS.items()}}.items():
            if getattr(args, dest) is not None:
                raise ValueError(f"{flag} applies to the model-based estimators only: add --checkpoint DIR or drop "
                                 f"{flag}.")
        return estimator
    estimator = args.estimator or "flipd"
    if estimator in model_free:
        raise ValueError(
            f"--estimator {estimator} is model-free (LID* of data), but --checkpoint {args.checkpoint!r} was given: "
            "use flipd, normal-bundle or fp-regress with a model, or drop --checkpoint."
        )
    for dest, flag in _MODEL_FREE_OPTIONS.items():
        if getattr(args, dest) not in (None, []):
            raise ValueError(f"{flag} applies to the model-free estimators only; drop it with --checkpoint.")
    for dest, (flag, owners) in _MODEL_OPTIONS.items():
        if getattr(args, dest) is not None and estimator not in owners:
            raise ValueError(f"{flag} applies to {' and '.join(owners)} only, not to --estimator {estimator}; drop it.")
    for dest, flag in _SAMPLE_OPTIONS.items():
        if getattr(args, dest) is not None and args.data != "samples":
            raise ValueError(f"{flag} applies to --data samples only (got --data {args.data or 'train'}); drop it.")
    return estimator


def _tau_grid(grid):
    """``--tau-grid MIN MAX NUM`` with NUM an integer (None stays None)."""
    if grid is None:
        return None
    if not float(grid[2]).is_integer():
        raise ValueError(f"--tau-grid NUM must be an integer number of points, got {grid[2]:g}.")
    return (grid[0], grid[1], int(grid[2]))


def _cmd_lid(args) -> int:
    from mmh_jax.experiments import lid_cmd

    try:
        estimator = _check_lid_mode(args, lid_cmd.ESTIMATORS)
        if args.checkpoint is not None:
            from mmh_jax.experiments import model_lid

            grid = args.t0_grid
            if grid is not None:
                if not float(grid[2]).is_integer():
                    raise ValueError(f"--t0-grid NUM must be an integer number of times, got {grid[2]:g}.")
                grid = (grid[0], grid[1], int(grid[2]))
            config = model_lid.preset(
                args.preset, checkpoint=args.checkpoint, estimator=estimator, data=args.data, n=args.n,
                seed=args.seed, batch_size=args.batch_size, t0=args.t0, t0_grid=grid, trace=args.trace,
                num_probes=args.num_probes, t=args.t, num_samples=args.num_samples, sampler=args.sampler,
                num_steps=args.num_steps, tau=args.tau, tau_grid=_tau_grid(args.tau_grid), step=args.step)
            model_lid.run(config, args.out, overwrite=args.overwrite)
            return 0
        params = tuple(lid_cmd.parse_param(t) for t in args.param)
        config = lid_cmd.preset(args.preset, estimator=estimator, data=args.data, k=args.k, n=args.n,
                                seed=args.seed, queries=args.queries, params=params, alpha=args.alpha)
        lid_cmd.run(config, args.out, overwrite=args.overwrite)
    except (ValueError, FileNotFoundError) as e:  # CheckpointError and ImageDataError are ValueErrors
        _error(args, "lid", e)
        return 2
    return 0


#: name -> function adding the subcommand's parser (explicit table, STYLE §6).
def _add_train(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a diffusion model (MLP or U-Net) or normalizing flows (flow, lidl) with checkpoints; resumable",
        description="Train an epsilon-prediction diffusion model on the VP-SDE with AdamW (warm-up, cosine decay, "
        "clipping) and EMA. Checkpoints are written atomically every --checkpoint-every steps (last --keep kept); "
        "Ctrl-C or SIGTERM stops at the next safe point (between dispatches), saves a checkpoint and exits "
        "(code 130 / 143); a second signal stops at once, without saving. --steps is the TOTAL number of steps. "
        "--resume with the same --steps continues exactly: the parameters of an uninterrupted run. With a larger "
        "--steps it extends the run: the learning-rate schedule is planned anew for the new total (a warm "
        "restart), so the result is not that of an uninterrupted run of that length. Fewer --steps than the run "
        "has done is an error, and so is --resume where --out holds no run.",
    )
    _common(p, "mmh_jax_out/train", fills=" (checkpoints/, config.json, train_log.jsonl, loss.png)",
            overwrite="delete the run already in --out and start a new one (default: refuse; --resume continues it)")
    p.add_argument("--data", default="lollipop", metavar="NAME|PATH",
                   help="synthetic generator name (lollipop, torus_circle, ...), 'digits', or a path: images "
                   "(.npz/.npy, image folder, MNIST IDX, CIFAR-10 batches) or an (N, D) .npy/.npz (default: lollipop)")
    p.add_argument("--deltas", type=float, nargs="+", default=None, metavar="DELTA",
                   help="flow, lidl: noise scales of the training data x + delta*N(0, I), one flow per delta, "
                   "trained together (vmapped) (default: lidl geomspace(0.01, 0.1, 8); flow 0.01)")
    p.add_argument("--model", choices=("mlp", "unet", "flow", "lidl"), default=None,
                   help="mlp for vector data (images are flattened), unet for images (default: unet for images, else "
                   "mlp); flow: a normalizing flow (rational-quadratic spline couplings) of vector data; lidl: one "
                   "flow per --deltas noise scale, for `mmh-jax lid --estimator lidl`")
    p.add_argument("--steps", type=int_at_least(1), default=None,
                   help="total optimisation steps (default: 4000; quick: 300)")
    p.add_argument("--batch-size", type=int_at_least(1), default=None, help="batch size (default: 256 mlp, 128 unet)")
    p.add_argument("--lr", type=positive_float, default=None,
                   help="peak learning rate, a finite number > 0 (default: 1e-3 mlp, 5e-4 unet)")
    p.add_argument("--n", type=int_at_least(1), default=None,
                   help="points drawn from a synthetic generator (default: 20000)")
    p.add_argument("--class-conditional", action="store_true",
                   help="condition on labels (labelled images), with a null class for classifier-free guidance")
    p.add_argument("--checkpoint-every", type=int_at_least(1), default=None,
                   help="steps between checkpoints (default: 500)")
    p.add_argument("--keep", type=int_at_least(1), default=None, help="checkpoints kept, at least 1 (default: 3)")
    p.add_argument("--monitor-every", type=int_at_least(0), default=None,
                   help="FLIPD of a fixed probe batch every N steps, inside the jitted step (default: 0, off)")
    p.add_argument("--time-sampling", choices=("uniform", "log-sigma"), default=None,
                   help="mlp, unet: how the diffusion times of the loss are drawn: uniform, t ~ U(0.001, 1) "
                   "(default); log-sigma, log sigma(t) uniform: half the steps at noise sigma < 0.1, which makes "
                   "a model fit (memorize) its training points sooner. A --resume must use the run's own value")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")
    p.add_argument("--preset", choices=("quick", "full"), default="full",
                   help="quick: a 300-step run on a small model (seconds); full (default): the defaults above")
    p.set_defaults(func=_cmd_train)


def _cmd_train(args) -> int:
    from mmh_jax.checkpoint import CheckpointError
    from mmh_jax.data.images import ImageDataError
    from mmh_jax.experiments import train_cmd

    overrides = {k: v for k, v in {
        "data": args.data, "steps": args.steps, "batch_size": args.batch_size, "learning_rate": args.lr,
        "n": args.n, "checkpoint_every": args.checkpoint_every, "keep": args.keep,
        "monitor_every": args.monitor_every, "seed": args.seed,
        "deltas": tuple(args.deltas) if args.deltas else None, "time_sampling": args.time_sampling,
    }.items() if v is not None}
    if args.class_conditional:
        overrides["class_conditional"] = True
    try:
        overrides["model"] = args.model or train_cmd.default_model(args.data)
        config = train_cmd.preset(args.preset, **overrides)
        result = train_cmd.run(config, args.out, resume=args.resume, overwrite=args.overwrite)
    except (CheckpointError, ImageDataError, ValueError, FileNotFoundError) as e:
        _error(args, "train", e)
        return 2
    if result["interrupted"]:
        return interrupt_exit_code()
    done = "trained" if result["step"] > result["start"] else "already trained"
    print(f"{done} to step {result['step']} (loss {result['loss']:.4f}); run directory {os.path.abspath(args.out)}",
          file=sys.stderr)
    return 0


def _add_sample(sub) -> None:
    p = sub.add_parser(
        "sample",
        help="draw samples from a trained model (npz, plus a PNG grid for images)",
        description="Sample from the EMA parameters of a checkpoint written by `mmh-jax train`.",
    )
    _common(p, "mmh_jax_out/sample", fills=" (samples.npz, and samples.png for images)")
    p.add_argument("--checkpoint", required=True, metavar="DIR", help="run directory of `mmh-jax train`")
    p.add_argument("--step", type=int_at_least(0), default=None,
                   help="the checkpoint step to sample from (default: the newest)")
    p.add_argument("--n", type=int_at_least(1), default=None, help="number of samples (default: 1000; quick: 64)")
    p.add_argument("--method", choices=("ddim", "euler_maruyama", "probability_flow"), default=None,
                   help="sampler of a diffusion model (default: ddim); flows sample exactly")
    p.add_argument("--num-steps", type=int_at_least(1), default=None, help="sampler steps (default: 100; quick: 50)")
    p.add_argument("--label", type=int_at_least(0), default=None, help="class label (class-conditional models)")
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale (with --label)")
    p.add_argument("--preset", choices=("quick", "full"), default="full", help="quick: 64 samples, 50 steps")
    p.set_defaults(func=_cmd_sample)


def _cmd_sample(args) -> int:
    from mmh_jax.checkpoint import CheckpointError
    from mmh_jax.experiments import sample_cmd

    n = args.n if args.n is not None else (64 if args.preset == "quick" else 1000)
    try:
        paths = sample_cmd.run(args.checkpoint, args.out, n=n, seed=args.seed, method=args.method,
                               num_steps=args.num_steps, default_num_steps=50 if args.preset == "quick" else 100, label=args.label, guidance=args.guidance, step=args.step,
                               overwrite=args.overwrite)
    except (CheckpointError, ValueError, FileNotFoundError) as e:
        _error(args, "sample", e)
        return 2
    print("wrote " + ", ".join(paths), file=sys.stderr)
    return 0


def _add_bench(sub) -> None:
    from mmh_jax.experiments.bench_cmd import ESTIMATORS

    p = sub.add_parser(
        "bench",
        help="points/s of every LID estimator across data dimensions and batch sizes (JSON, markdown, PNG)",
        description="Throughput of every estimator: one jitted vmap of the single-example estimator per "
        "(estimator, D, batch), compile time reported separately, XLA's scratch memory and the device's peak "
        "memory where reported, and the ratio to the network's forward pass; scikit-dimension side by side for "
        "the model-free estimators when installed. Settings beyond --max-work are listed as not run.",
    )
    _common(p, "mmh_jax_out/bench", fills=" (bench.json, bench.md, PNGs)")
    p.add_argument("--preset", choices=("quick", "default", "full"), default="default",
                   help="quick: D in {2, 64}, batch 16 (well under a minute); default: D in {2, 64, 784, 3072}, "
                   "batch 64 and 512, settings within --max-work; full: batch up to 4096 and a 6x larger budget (for an "
                   "accelerator)")
    p.add_argument("--estimators", nargs="+", choices=ESTIMATORS, default=None, metavar="NAME",
                   help=f"subset of {', '.join(ESTIMATORS)} (default: all)")
    p.add_argument("--dims", nargs="+", type=int_at_least(1), default=None, metavar="D", help="data dimensions")
    p.add_argument("--batch-sizes", nargs="+", type=int_at_least(1), default=None, metavar="B", help="points per call")
    p.add_argument("--max-work", type=float, default=None,
                   help="largest batch x network-passes-per-point run (default 6e4; full: 3e5)")
    p.set_defaults(func=_cmd_bench)


def _cmd_bench(args) -> int:
    from mmh_jax.experiments import bench_cmd

    overrides = {k: v for k, v in {"estimators": args.estimators, "dims": args.dims, "batch_sizes": args.batch_sizes,
                                   "max_work": args.max_work, "seed": args.seed}.items() if v is not None}
    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
    try:
        cfg = bench_cmd.preset(args.preset, **overrides)
        bench_cmd.run(cfg, args.out, overwrite=args.overwrite)
    except ValueError as e:
        _error(args, "bench", e)
        return 2
    return 0


SUBCOMMANDS = {
    "run": _add_run,
    "lid": _add_lid,
    "train": _add_train,
    "sample": _add_sample,
    "bench": _add_bench,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmh-jax", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true",
                        help="on an error, show the full Python traceback (default: a one-line message)")
    sub = parser.add_subparsers(dest="command", metavar="SUBCOMMAND")
    for add in SUBCOMMANDS.values():
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Signals are recorded, not raised, from here on (mmh_jax/_interrupt.py): the work stops at its
    # next safe point, so an interrupt never lands inside an import, a compile, a save or a finalizer.
    with _interrupt.deferred():
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, or a bad flag (argparse printed the message): its exit code
        return 0 if e.code is None else int(e.code)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        _interrupt.check()  # a signal during the imports above
        if hasattr(args, "out"):
            check_out(args.out or os.curdir)  # `run` without --out writes under ./runs/
        return int(args.func(args) or 0)
    except OutError as e:
        _error(args, args.command, e)
        return 2
    except KeyboardInterrupt as e:
        signum = e.signum if isinstance(e, _interrupt.Interrupted) else None
        print(f"mmh-jax {args.command}: interrupted by {_signal_name(signum)}", file=sys.stderr)
        return _interrupt.exit_code(signum)
    except Exception as e:  # anything a subcommand did not report itself: one line, traceback with --debug
        _error(args, args.command, e, prefix=f"{type(e).__name__}: ",
               suffix="" if _debug(args) else " (run with --debug for the traceback)")
        return 1


def _signal_name(signum) -> str:
    import signal

    return signal.Signals(signum or _interrupt.requested() or signal.SIGINT).name


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
