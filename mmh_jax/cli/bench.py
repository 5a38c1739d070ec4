"""``mmh-jax bench``: estimator throughput benchmarks (parse, then call the command body)."""

from __future__ import annotations

from mmh_jax.cli._args import add_common, int_at_least, print_error


def add_parser(sub) -> None:
    """Add ``bench`` to the subparsers ``sub``."""
    from mmh_jax.experiments.bench_cmd import ESTIMATORS

    p = sub.add_parser(
        "bench",
        help="points/s of every LID estimator across data dimensions and batch sizes (JSON, markdown, PNG)",
        description="Throughput of every estimator: one jitted vmap of the single-example estimator per "
        "(estimator, D, batch), compile time reported separately, XLA's scratch memory and the device's peak "
        "memory where reported, and the ratio to the network's forward pass; scikit-dimension side by side for "
        "the model-free estimators when installed. Settings beyond --max-work are listed as not run.",
    )
    add_common(p, "mmh_jax_out/bench", fills=" (bench.json, bench.md, PNGs)")
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
    p.set_defaults(func=command)


def command(args) -> int:
    """Run the benchmarks ``args`` select; the exit code."""
    from mmh_jax.experiments import bench_cmd

    overrides = {k: v for k, v in {"estimators": args.estimators, "dims": args.dims, "batch_sizes": args.batch_sizes,
                                   "max_work": args.max_work, "seed": args.seed}.items() if v is not None}
    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
    try:
        cfg = bench_cmd.preset(args.preset, **overrides)
        bench_cmd.run(cfg, args.out, overwrite=args.overwrite)
    except ValueError as e:
        print_error(args, "bench", e)
        return 2
    return 0
