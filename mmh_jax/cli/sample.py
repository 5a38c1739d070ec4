"""``mmh-jax sample``: draw samples from a trained model (parse, then call the command body)."""

from __future__ import annotations

import sys

from mmh_jax.cli._args import add_common, int_at_least, print_error


def add_parser(sub) -> None:
    """Add ``sample`` to the subparsers ``sub``."""
    from mmh_jax.sample import SAMPLERS

    p = sub.add_parser(
        "sample",
        help="draw samples from a trained model (npz, plus a PNG grid for images)",
        description="Sample from the EMA parameters of a checkpoint written by `mmh-jax train`.",
    )
    add_common(p, "mmh_jax_out/sample", fills=" (samples.npz, and samples.png for images)")
    p.add_argument("--checkpoint", required=True, metavar="DIR", help="run directory of `mmh-jax train`")
    p.add_argument("--step", type=int_at_least(0), default=None,
                   help="the checkpoint step to sample from (default: the newest)")
    p.add_argument("--n", type=int_at_least(1), default=None, help="number of samples (default: 1000; quick: 64)")
    p.add_argument("--method", choices=SAMPLERS, default=None,
                   help="sampler of a diffusion model (default: ddim); flows sample exactly")
    p.add_argument("--num-steps", type=int_at_least(1), default=None, help="sampler steps (default: 100; quick: 50)")
    p.add_argument("--label", type=int_at_least(0), default=None, help="class label (class-conditional models)")
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale (with --label)")
    p.add_argument("--preset", choices=("quick", "full"), default="full", help="quick: 64 samples, 50 steps")
    p.set_defaults(func=command)


def command(args) -> int:
    """Draw the samples ``args`` ask for; the exit code."""
    from mmh_jax.checkpoint import CheckpointError
    from mmh_jax.experiments import sample_cmd

    n = args.n if args.n is not None else (64 if args.preset == "quick" else 1000)
    try:
        paths = sample_cmd.run(args.checkpoint, args.out, n=n, seed=args.seed, method=args.method,
                               num_steps=args.num_steps, default_num_steps=50 if args.preset == "quick" else 100,
                               label=args.label, guidance=args.guidance, step=args.step, overwrite=args.overwrite)
    except (CheckpointError, ValueError, FileNotFoundError) as e:
        print_error(args, "sample", e)
        return 2
    print("wrote " + ", ".join(paths), file=sys.stderr)
    return 0
