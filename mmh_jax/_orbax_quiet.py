"""Keep orbax's leftovers of a failed restore off the terminal.

When one read of a restore fails, orbax closes its event loop with other reads still pending; they
later print "Exception ignored in <coroutine ...>", "exception was never retrieved" or "Event loop
is closed" tracebacks at arbitrary moments. [`mmh_jax.checkpoint`][mmh_jax.checkpoint] raises one clear error
instead and uses these helpers to silence exactly those reports (every other error is reported as before).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import sys
import warnings

import orbax.checkpoint as ocp

__all__ = ["close_abandoned_reads", "leftover_reads_quiet", "orbax_read", "quiet_closed_loop_reports"]


def orbax_read(read):
    """``read()`` (one orbax read: a restore or a metadata lookup), with what a failure leaves behind
    finished quietly: inside `leftover_reads_quiet`, the abandoned reads are closed before the error
    propagates. The closed-loop reports that come later from tensorstore's threads are dropped by
    `quiet_closed_loop_reports`, installed before the first read."""
    quiet_closed_loop_reports()
    with leftover_reads_quiet():
        try:
            return read()
        except Exception:
            gc.collect()
            close_abandoned_reads()
            gc.collect()
            raise


@contextlib.contextmanager
def leftover_reads_quiet():
    """Silence, while a restore runs and what it left behind is collected, the reports of reads a
    failed orbax restore abandons: coroutines created but never awaited (a RuntimeWarning, or an
    unraisable exception from their finalizer) and gathered futures whose error nobody retrieved
    (an ``asyncio`` log record). The CheckpointError raised afterwards says what went wrong."""
    asyncio_log = logging.getLogger("asyncio")
    drop = _DropUnretrieved()
    asyncio_log.addFilter(drop)
    hook, sys.unraisablehook = sys.unraisablehook, _ignore_unraisable
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="coroutine .* was never awaited", category=RuntimeWarning)
            yield
    finally:
        sys.unraisablehook = hook
        asyncio_log.removeFilter(drop)


class _DropUnretrieved(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "exception was never retrieved" not in record.getMessage()


def _ignore_unraisable(unraisable) -> None:
    """``sys.unraisablehook`` that drops the report (see
    [`Checkpointer.restore`][mmh_jax.checkpoint.Checkpointer.restore])."""


def close_abandoned_reads() -> None:
    """Finish, now, the reads a failed orbax restore abandoned.

    Orbax runs a restore's reads as asyncio tasks on an event loop of its own, and when one read
    fails it closes that loop with the other reads still pending (and some finished with errors
    nobody retrieved). Left alone they are finalized by the garbage collector at some later moment —
    or at exit — and each prints a report: "Exception ignored in: <coroutine object
    _read_array_index_and_device_put ...>" with a traceback (orbax turns the GeneratorExit of the
    finalizer into an exception), or "Task/_GatheringFuture exception was never retrieved". Here,
    inside `leftover_reads_quiet`, the pending tasks of orbax's closed loops are closed (their
    errors dropped) and the errors of the finished ones retrieved, so nothing is left to report.
    Only tasks and futures of closed loops that ran orbax coroutines are touched."""
    orbax_dir = os.path.dirname(os.path.dirname(os.path.abspath(ocp.__file__)))  # .../orbax
    on_closed = []
    for obj in gc.get_objects():
        if isinstance(obj, asyncio.Future):
            try:
                if obj.get_loop().is_closed():
                    on_closed.append(obj)
            except Exception:  # a future-like object without a usable loop
                continue

    def from_orbax(task) -> bool:
        code = getattr(task.get_coro(), "cr_code", None)
        return code is not None and os.path.abspath(code.co_filename).startswith(orbax_dir + os.sep)

    loops = {id(f.get_loop()) for f in on_closed if isinstance(f, asyncio.Task) and from_orbax(f)}
    for f in on_closed:
        if id(f.get_loop()) not in loops:
            continue
        if not f.done():
            if isinstance(f, asyncio.Task):
                f._log_destroy_pending = False  # "Task was destroyed but it is pending!"
                coro = f.get_coro()
                try:
                    coro.close()  # GeneratorExit at its await; orbax's read raises instead: dropped
                except BaseException:  # noqa: BLE001 - whatever the abandoned read raises
                    pass
        elif not f.cancelled():
            f.exception()  # marks the error retrieved: no "exception was never retrieved" report


def _is_closed_loop_error(exc_type, exc, tb) -> bool:
    """``RuntimeError('Event loop is closed')`` raised by asyncio's ``_check_closed``."""
    if exc_type is not RuntimeError or str(exc) != "Event loop is closed":
        return False
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and tb.tb_frame.f_code.co_name == "_check_closed"


def quiet_closed_loop_reports() -> None:
    """After a failed restore, reads that orbax had in flight finish on tensorstore's threads and try
    to wake the event loop orbax already closed; each prints a "RuntimeError: Event loop is closed"
    traceback at some later moment, even once the failed read has returned. Drop exactly those
    reports (unraisable or excepthook); every other error is reported as before. Installed once per
    process, before the first read (a report can arrive while the read that failed still runs)."""
    if getattr(sys.unraisablehook, "_mmh_quiet", False):
        return
    unraisable_hook, except_hook = sys.unraisablehook, sys.excepthook

    def unraisable(u):
        if not _is_closed_loop_error(u.exc_type, u.exc_value, u.exc_traceback):
            unraisable_hook(u)

    def excepthook(exc_type, exc, tb):
        if not _is_closed_loop_error(exc_type, exc, tb):
            except_hook(exc_type, exc, tb)

    unraisable._mmh_quiet = True
    sys.unraisablehook, sys.excepthook = unraisable, excepthook
