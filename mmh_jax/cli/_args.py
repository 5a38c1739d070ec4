"""What every ``mmh-jax`` subcommand shares: argument types, the common options, ``--out`` checks, errors."""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
import traceback

#: Below this much free space on the disk of --out, a command stops before it starts its work.
MIN_FREE_BYTES = 64 * 2**20


class OutError(ValueError):
    """``--out`` cannot be written (not a directory, not writable, disk full)."""


def print_error(args, command: str, e: BaseException, *, prefix: str = "", suffix: str = "") -> None:
    """Print ``mmh-jax COMMAND: error: MESSAGE`` as one line; the traceback first under ``--debug``."""
    if debug_requested(args):
        traceback.print_exception(e)
    msg = " ".join(str(e).split()) or type(e).__name__
    print(f"mmh-jax {command}: error: {prefix}{msg}{suffix}", file=sys.stderr)


def debug_requested(args) -> bool:
    """``--debug`` was given, before or after the subcommand."""
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


def add_common(p: argparse.ArgumentParser, default_out: str, *, fills: str = "", overwrite: str = "") -> None:
    """Add ``--out``, ``--seed``, ``--overwrite`` and ``--debug`` to a subcommand's parser."""
    p.add_argument("--out", default=default_out, metavar="DIR",
                   help=f"the directory this command fills{fills} (default: {default_out or 'runs/<timestamp>/'})")
    p.add_argument("--seed", type=int_at_least(0), default=0, help="PRNG seed, an integer >= 0 (default: 0)")
    p.add_argument("--overwrite", action="store_true",
                   help=overwrite or "replace the outputs an earlier run left in --out (default: refuse, keep them)")
    p.add_argument("--debug", dest="debug_sub", action="store_true", default=False,
                   help="on an error, show the full Python traceback (default: a one-line message)")

