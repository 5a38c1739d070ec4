"""Interrupt requests (Ctrl-C, SIGTERM) that long work honours at safe points.

The CLI's handlers only *record* a signal (`deferred`); training, sampling, LID and ``run``
call `check` between dispatches, between experiments and after saves, and it raises
`Interrupted` there. Raising from inside a handler instead (Python's default for SIGINT)
lands wherever the main thread is: in a GC callback or finalizer the exception is printed as
"Exception ignored" and lost, and mid-compile or mid-save it leaves half-done work behind.

A watcher thread reads the signals from `signal.set_wakeup_fd`, so a signal is acknowledged
at once even while the main thread is inside a long XLA compile or dispatch (Python runs handlers
only between bytecodes of the main thread); a second signal ends the process at once, without
saving. Library users who never enter `deferred` keep Python's own behaviour: `check`
is then a no-op and Ctrl-C raises ``KeyboardInterrupt`` as usual.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading

__all__ = ["Interrupted", "check", "deferred", "exit_code", "requested"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_requested: signal.Signals | None = None
_count = 0


class Interrupted(KeyboardInterrupt):
    """Raised by `check` at a safe point after a recorded SIGINT or SIGTERM.

    A ``KeyboardInterrupt``, so code that already cleans up after Ctrl-C handles it the same way.
    """

    def __init__(self, signum: signal.Signals):
        self.signum = signal.Signals(signum)
        super().__init__(f"received {self.signum.name}")


def requested() -> signal.Signals | None:
    """The signal recorded since `deferred` was entered (None if none)."""
    return _requested


def check() -> None:
    """Raise `Interrupted` if a signal was recorded: call only where stopping is safe."""
    if _requested is not None:
        raise Interrupted(_requested)


def exit_code(signum: int | None = None) -> int:
    """The shell's ``128 + signal`` (130 after SIGINT, 143 after SIGTERM) for ``signum`` (default:
    the recorded signal, else SIGINT)."""
    return 128 + int(signum if signum is not None else (_requested or signal.SIGINT))


def _record(signum: int, frame=None) -> None:
    """Signal handler: record only (never raise; see the module docstring)."""
    global _requested
    if _requested is None:
        _requested = signal.Signals(signum)


def _watch(read_fd: int) -> None:
    """Watcher thread: acknowledge the first signal at once; a second one ends the process."""
    global _count
    while True:
        try:
            data = os.read(read_fd, 64)
        except OSError:
            return
        if not data:
            return
        for signum in data:
            if signum not in _SIGNALS:
                continue
            _record(signum)
            _count += 1
            name = signal.Signals(signum).name
            if _count == 1:
                _say(f"mmh-jax: {name} received: stopping at the next safe point "
                     "(send it again to stop at once, without saving)")
            else:
                _say(f"mmh-jax: {name} received again: stopping now, without saving")
                os._exit(exit_code(signum))


def _say(msg: str) -> None:
    try:
        os.write(sys.stderr.fileno(), (msg + "\n").encode())
    except (OSError, ValueError, AttributeError):  # no usable stderr: stay silent
        pass


@contextlib.contextmanager
def deferred():
    """While inside, SIGINT and SIGTERM are recorded, not raised (the CLI's ``main``).

    A signal that the process inherited as ignored (e.g. SIGINT in a job started with ``&`` from a
    script) stays ignored, as Python itself does. Outside the main thread nothing is installed.
    The previous handlers and wake-up fd come back on exit.
    """
    global _requested, _count
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _requested, _count = None, 0
    previous = {s: signal.getsignal(s) for s in _SIGNALS}
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    old_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    watcher = threading.Thread(target=_watch, args=(read_fd,), name="mmh-jax-signals", daemon=True)
    try:
        for s in _SIGNALS:
            if previous[s] is not signal.SIG_IGN:
                signal.signal(s, _record)
        watcher.start()
        yield
    finally:
        for s, handler in previous.items():  # None: not set from Python; the default is the nearest
            signal.signal(s, signal.SIG_DFL if handler is None else handler)
        signal.set_wakeup_fd(old_fd)
        os.close(write_fd)  # the watcher reads EOF and ends
        if watcher.is_alive():
            watcher.join(timeout=1.0)
        if not watcher.is_alive():  # closing the fd under a blocked read would be unsafe
            os.close(read_fd)
        # Forget the signal: outside ``deferred`` check() is a no-op again (a later library call in the
        # same process, e.g. after cli.main returned 130, must not stop at its first safe point).
        _requested, _count = None, 0
