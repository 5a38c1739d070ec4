"""`mmh-jax` command-line entry point: parse → config → ``experiments.*.run``.

Each subcommand lives in an explicit table below (no import-time registries). Experiment modules
are imported only when their subcommand runs, so ``mmh-jax --help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys

DESCRIPTION = """\
mmh-jax: measure memorization in generative models through geometry
(the manifold memorization hypothesis, Ross et al., ICLR 2025, arXiv 2411.00113).

Subcommands:
  run     the main job on the embedded defaults; writes a report directory
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


#: name -> function adding the subcommand's parser (explicit table, STYLE §6).
SUBCOMMANDS = {
    "run": _add_run,
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
