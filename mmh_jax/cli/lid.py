"""``mmh-jax lid``: per-point LID, model-free (LID* of data) or of a trained model (parse, then call)."""

from __future__ import annotations

import argparse
import textwrap

from mmh_jax.cli._args import add_common, int_at_least, print_error


DESCRIPTION = "\n\n".join(textwrap.fill(par, 100) for par in (
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


def add_parser(sub) -> None:
    """Add ``lid`` to the subparsers ``sub``."""
    from mmh_jax.data.synthetic import GENERATORS
    from mmh_jax.experiments.lid_cmd import DATA_DEFAULTS, ESTIMATORS, PRESETS
    from mmh_jax.experiments.model_estimators import ESTIMATORS as MODEL_ESTIMATORS
    from mmh_jax.experiments.model_lid import PRESETS as MODEL_PRESETS
    from mmh_jax.experiments.model_lid import SAMPLES_DEFAULT_N
    from mmh_jax.lid import TRACES
    from mmh_jax.sample import SAMPLERS

    p = sub.add_parser(
        "lid",
        help="per-point LID: model-free LID* of data (lpca, mle, twonn, ess), or a trained model's LID_theta "
        "with --checkpoint (flipd, normal-bundle, fp-regress)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_common(p, "mmh_jax_out/lid", fills=" (lid.npz)")
    p.add_argument("--estimator", choices=(*ESTIMATORS, *MODEL_ESTIMATORS), default=None,
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
                       help="flipd: the fixed diffusion time of 'lid' (default: 0.05)")
    model.add_argument("--t0-grid", type=float, nargs=3, default=None, metavar=("MIN", "MAX", "NUM"),
                       help="flipd: geometric grid of NUM times in [MIN, MAX] for the FLIPD curve and its knee "
                       "('lid_knee', 't0_knee') (default: 1e-3 1 24)")
    model.add_argument("--trace", choices=TRACES, default=None,
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
    p.set_defaults(func=command)


#: lid options of one mode or of --data samples: dest -> flag.
_MODEL_FREE_OPTIONS = {"k": "--k", "queries": "--queries", "alpha": "--alpha", "param": "--param"}
_SAMPLE_OPTIONS = {"sampler": "--sampler", "num_steps": "--num-steps"}
#: The model-based estimators' options, in the order they are checked: dest -> flag.
_MODEL_FLAGS = {"batch_size": "--batch-size", "step": "--step", "tau": "--tau", "tau_grid": "--tau-grid",
                "t0": "--t0", "t0_grid": "--t0-grid", "trace": "--trace", "num_probes": "--num-probes",
                "t": "--t", "num_samples": "--num-samples"}


def _model_options() -> dict[str, tuple[str, tuple[str, ...]]]:
    """dest -> (flag, the estimators that read it), from the estimator table."""
    from mmh_jax.experiments.model_estimators import COMMON_OPTIONS, ESTIMATORS

    return {dest: (flag, tuple(name for name, e in ESTIMATORS.items() if dest in (*COMMON_OPTIONS, *e.options)))
            for dest, flag in _MODEL_FLAGS.items()}


def _check_lid_mode(args, model_free: tuple[str, ...]) -> str:
    """The estimator for this mode; ValueError naming the argument and the fix when options do not fit."""
    if args.checkpoint is None:
        estimator = args.estimator or "lpca"
        if estimator not in model_free:
            raise ValueError(
                f"--estimator {estimator} needs a trained model: pass --checkpoint DIR (a run directory of "
                f"`mmh-jax train`), or use a model-free estimator ({', '.join(model_free)})."
            )
        for dest, flag in {**_MODEL_FLAGS, **_SAMPLE_OPTIONS}.items():
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
    for dest, (flag, owners) in _model_options().items():
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


def command(args) -> int:
    """Estimate per-point LID as ``args`` say (model-free, or with --checkpoint); the exit code."""
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
        print_error(args, "lid", e)
        return 2
    return 0
