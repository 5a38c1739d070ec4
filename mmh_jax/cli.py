"""`mmh-jax` command-line entry point: parse → config → ``experiments.*.run``.

Each subcommand lives in an explicit table below (no import-time registries). Experiment modules
are imported only when their subcommand runs, so ``mmh-jax --help`` stays fast.
"""

from __future__ import annotations

import argparse
import os
import sys

DESCRIPTION = """\
mmh-jax: measure memorization in generative models through geometry
(the manifold memorization hypothesis, Ross et al., ICLR 2025, arXiv 2411.00113).

Subcommands:
  run     the main job on the embedded defaults; writes a report directory
  train   train a diffusion model (MLP or U-Net) with resumable checkpoints
  sample  draw samples from a trained model
  lid     model-free LID* (lpca, mle, twonn, ess) of a data set, per point
  bench   estimator throughput benchmarks

Run `mmh-jax SUBCOMMAND --help` for the options of each.
"""


def _common(p: argparse.ArgumentParser, default_out: str) -> None:
    p.add_argument("--out", default=default_out, help=f"output directory or file (default: {default_out})")
    p.add_argument("--seed", type=int, default=0, help="PRNG seed (default: 0)")


def _add_run(sub) -> None:
    p = sub.add_parser(
        "run",
        help="the main job: validate every LID estimator against closed-form ground truth",
        description="Validate the LID estimators on distributions whose score and LID are known in closed "
        "form; writes metrics.json, a markdown table and figures to --out.",
    )
    _common(p, "mmh_jax_out/run")
    p.add_argument("--preset", choices=("quick", "full"), default="full",
                   help="quick: a small sweep that finishes in well under a minute; full (default): the whole sweep")
    p.set_defaults(func=_cmd_run)


def _cmd_run(args) -> int:
    from mmh_jax.experiments import validation

    config = validation.preset(args.preset, seed=args.seed)
    validation.run(config, args.out)
    return 0


def _add_lid(sub) -> None:
    from mmh_jax.data.synthetic import GENERATORS
    from mmh_jax.experiments.lid_cmd import DATA_DEFAULTS, ESTIMATORS, PRESETS

    p = sub.add_parser(
        "lid",
        help="model-free LID* (lpca, mle, twonn, ess) of a data set, per point",
        description="Estimate the local intrinsic dimension of every point of a data set (or of query "
        "points) with a model-free estimator; write the estimates to an .npz (lid, plus truth and "
        "component when known) and print a summary, per component with the mean absolute error when "
        "the true LID is known (synthetic data, or an .npz with 'lid'/'component' arrays).",
    )
    _common(p, "mmh_jax_out/lid.npz")
    p.add_argument("--estimator", choices=ESTIMATORS, default="lpca",
                   help="lpca: local PCA (eigenvalues above alpha*max); mle: Levina-Bickel; twonn: ratio of "
                   "2nd to 1st neighbour distance; ess: expected simplex skewness (default: lpca)")
    p.add_argument("--data", default="lollipop", metavar="NAME|FILE",
                   help=f"a synthetic generator ({', '.join(GENERATORS)}) or a .npz (points under 'x' or its "
                   "only array; optional ground truth 'lid', 'component') or .npy file of shape (N, D) (default: lollipop)")
    p.add_argument("--k", type=int, default=20,
                   help="number of nearest neighbours (default: 20; the reference uses lpca/mle 1000, ess 100 on "
                   "4096-point subsamples)")
    p.add_argument("--n", type=int, default=None,
                   help=f"points to generate (default: {PRESETS['full']['n']}, or {PRESETS['quick']['n']} with "
                   "--preset quick); with a file, a random subsample of N rows when it has more")
    p.add_argument("--queries", default=None, metavar="FILE",
                   help=".npz/.npy points at which to estimate (default: the data points themselves)")
    p.add_argument("--alpha", type=float, default=0.05, help="lpca only: count eigenvalues above alpha times the largest (default: 0.05)")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="generator keyword (Python literal), repeatable, e.g. --param dims=(2,5) --param "
                   "frequency=5; defaults: " + "; ".join(
                       f"{g}: " + ", ".join(f"{k}={v}" for k, v in kw.items()) for g, kw in DATA_DEFAULTS.items()))
    p.add_argument("--preset", choices=tuple(PRESETS), default="full",
                   help=f"quick: {PRESETS['quick']['n']} points, done in seconds; full (default): {PRESETS['full']['n']} points; "
                   "--n overrides either")
    p.set_defaults(func=_cmd_lid)


def _cmd_lid(args) -> int:
    from mmh_jax.experiments import lid_cmd

    try:
        params = tuple(lid_cmd.parse_param(t) for t in args.param)
        config = lid_cmd.preset(args.preset, estimator=args.estimator, data=args.data, k=args.k, n=args.n,
                                seed=args.seed, queries=args.queries, params=params, alpha=args.alpha)
        lid_cmd.run(config, args.out)
    except (ValueError, FileNotFoundError) as e:
        print(f"mmh-jax lid: error: {e}", file=sys.stderr)
        return 2
    return 0


#: name -> function adding the subcommand's parser (explicit table, STYLE §6).
def _add_train(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a diffusion model (MLP or U-Net) with checkpoints; resumable",
        description="Train an epsilon-prediction diffusion model on the VP-SDE with AdamW (warm-up, cosine decay, "
        "clipping) and EMA. Checkpoints are written atomically every --checkpoint-every steps (last --keep kept); "
        "Ctrl-C saves and exits. --steps is the TOTAL number of steps: --resume --steps 300 after a 150-step run "
        "trains 150 more, with exactly the parameters of an uninterrupted run.",
    )
    _common(p, "mmh_jax_out/train")
    p.add_argument("--data", default="lollipop", metavar="NAME|PATH",
                   help="synthetic generator name (lollipop, torus_circle, ...), 'digits', or a path: images "
                   "(.npz/.npy, image folder, MNIST IDX, CIFAR-10 batches) or an (N, D) .npy/.npz (default: lollipop)")
    p.add_argument("--model", choices=("mlp", "unet"), default=None,
                   help="mlp for vector data (images are flattened), unet for images (default: unet for images, else mlp)")
    p.add_argument("--steps", type=int, default=None, help="total optimisation steps (default: 4000; quick: 300)")
    p.add_argument("--batch-size", type=int, default=None, help="batch size (default: 256)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default: 1e-3 mlp, 2e-4 unet)")
    p.add_argument("--n", type=int, default=None, help="points drawn from a synthetic generator (default: 20000)")
    p.add_argument("--class-conditional", action="store_true",
                   help="condition on labels (labelled images), with a null class for classifier-free guidance")
    p.add_argument("--checkpoint-every", type=int, default=None, help="steps between checkpoints (default: 500)")
    p.add_argument("--keep", type=int, default=None, help="checkpoints kept (default: 3)")
    p.add_argument("--monitor-every", type=int, default=None,
                   help="FLIPD of a fixed probe batch every N steps, inside the jitted step (default: 0, off)")
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
    }.items() if v is not None}
    model = args.model or train_cmd.default_model(args.data)
    overrides["model"] = model
    if args.class_conditional:
        overrides["class_conditional"] = True
    if args.preset == "quick" and model == "unet":
        overrides.setdefault("model_kwargs", {"channels": 16})
    try:
        config = train_cmd.preset(args.preset, **overrides)
        result = train_cmd.run(config, args.out, resume=args.resume)
    except (CheckpointError, ImageDataError, ValueError, FileNotFoundError) as e:
        print(f"mmh-jax train: error: {e}", file=sys.stderr)
        return 2
    if result["interrupted"]:
        return 130
    print(f"trained to step {result['step']} (loss {result['loss']:.4f}); run directory {os.path.abspath(args.out)}")
    return 0


def _add_sample(sub) -> None:
    p = sub.add_parser(
        "sample",
        help="draw samples from a trained model (npz, plus a PNG grid for images)",
        description="Sample from the EMA parameters of a checkpoint written by `mmh-jax train`.",
    )
    _common(p, "mmh_jax_out/samples.npz")
    p.add_argument("--checkpoint", required=True, metavar="DIR", help="run directory of `mmh-jax train`")
    p.add_argument("--n", type=int, default=None, help="number of samples (default: 1000; quick: 64)")
    p.add_argument("--method", choices=("ddim", "euler_maruyama", "probability_flow"), default="ddim",
                   help="sampler (default: ddim)")
    p.add_argument("--num-steps", type=int, default=None, help="sampler steps (default: 100; quick: 50)")
    p.add_argument("--label", type=int, default=None, help="class label (class-conditional models)")
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale (with --label)")
    p.add_argument("--preset", choices=("quick", "full"), default="full", help="quick: 64 samples, 50 steps")
    p.set_defaults(func=_cmd_sample)


def _cmd_sample(args) -> int:
    from mmh_jax.checkpoint import CheckpointError
    from mmh_jax.experiments import sample_cmd

    n = args.n if args.n is not None else (64 if args.preset == "quick" else 1000)
    steps = args.num_steps if args.num_steps is not None else (50 if args.preset == "quick" else 100)
    try:
        paths = sample_cmd.run(args.checkpoint, args.out, n=n, seed=args.seed, method=args.method,
                               num_steps=steps, label=args.label, guidance=args.guidance)
    except (CheckpointError, ValueError, FileNotFoundError) as e:
        print(f"mmh-jax sample: error: {e}", file=sys.stderr)
        return 2
    print("wrote " + ", ".join(paths))
    return 0


SUBCOMMANDS = {
    "run": _add_run,
    "lid": _add_lid,
    "train": _add_train,
    "sample": _add_sample,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmh-jax", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="SUBCOMMAND")
    for add in SUBCOMMANDS.values():
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
