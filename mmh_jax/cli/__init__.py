"""`mmh-jax` command-line entry point: parse, check ``--out``, call the subcommand, report errors.

Each subcommand is one module of this package (``run``, ``lid``, ``train``, ``sample``, ``bench``)
with ``add_parser(sub)`` and ``command(args)``, listed in the explicit table `SUBCOMMANDS`.
Experiment modules are imported only when their subcommand runs, so ``mmh-jax --help`` stays fast.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from mmh_jax import _interrupt
from mmh_jax.cli import bench, lid, run, sample, train
from mmh_jax.cli._args import (MIN_FREE_BYTES, OutError, check_out, debug_requested, int_at_least, positive_float,
                               print_error)

__all__ = ["DESCRIPTION", "MIN_FREE_BYTES", "OutError", "SUBCOMMANDS", "build_parser", "check_out", "int_at_least",
           "interrupt_exit_code", "main", "positive_float"]

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

def interrupt_exit_code() -> int:
    """130 after Ctrl-C (SIGINT), 143 after SIGTERM: the shell's 128 + signal number."""
    return _interrupt.exit_code()


#: name -> function adding the subcommand's parser (an explicit table: no import-time registration).
SUBCOMMANDS = {
    "run": run.add_parser,
    "lid": lid.add_parser,
    "train": train.add_parser,
    "sample": sample.add_parser,
    "bench": bench.add_parser,
}


def build_parser() -> argparse.ArgumentParser:
    """The ``mmh-jax`` parser with every subcommand of `SUBCOMMANDS`."""
    parser = argparse.ArgumentParser(prog="mmh-jax", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true",
                        help="on an error, show the full Python traceback (default: a one-line message)")
    sub = parser.add_subparsers(dest="command", metavar="SUBCOMMAND")
    for add in SUBCOMMANDS.values():
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``mmh-jax`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
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
        print_error(args, args.command, e)
        return 2
    except KeyboardInterrupt as e:
        signum = e.signum if isinstance(e, _interrupt.Interrupted) else None
        print(f"mmh-jax {args.command}: interrupted by {_signal_name(signum)}", file=sys.stderr)
        return _interrupt.exit_code(signum)
    except Exception as e:  # anything a subcommand did not report itself: one line, traceback with --debug
        print_error(args, args.command, e, prefix=f"{type(e).__name__}: ",
               suffix="" if debug_requested(args) else " (run with --debug for the traceback)")
        return 1


def _signal_name(signum) -> str:
    return signal.Signals(signum or _interrupt.requested() or signal.SIGINT).name


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
