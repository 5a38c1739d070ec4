"""Run ``mmh-jax ARGS`` in this process and signal it at a named moment (tests/cli/test_interrupt_sweep.py).

Usage: ``python interrupt_child.py POINT SIGNAL ARGS...``. The signal is sent by this process to
itself at POINT, so the moment is the same on every run (no timing races): the sweep checks what a
user sees after a signal at that moment, whatever the machine's load. ``compile`` alone sends it
from a timer thread while the main thread is inside XLA (the real-world case of Ctrl-C mid-compile).
"""

import os
import signal
import sys
import threading

SIG = signal.SIGTERM  # set by main()


def fire() -> None:
    os.kill(os.getpid(), SIG)


class _AtImport:
    """Fires when ``jax`` is first imported (inside the CLI's parser set-up)."""

    def find_spec(self, name, path=None, target=None):
        if name == "jax":
            sys.meta_path.remove(self)
            fire()
        return None


def _wrap_method(owner, name, *, on_call: int, when: str) -> None:
    original = getattr(owner, name)
    calls = [0]

    def wrapped(*a, **k):
        calls[0] += 1
        hit = calls[0] == on_call
        if hit and when == "before":
            fire()
        if hit and when == "during":
            threading.Timer(0.3, fire).start()
        out = original(*a, **k)
        if hit and when == "after":
            fire()
        return out

    setattr(owner, name, wrapped)


def _wrap_loops(*, on_call: int, when: str) -> None:
    """Patch the training loops ``train.make_train_loop`` builds: fire around their ``on_call``-th call."""
    from mmh_jax import train

    make = train.make_train_loop
    calls = [0]

    def make_wrapped(*a, **k):
        loop = make(*a, **k)

        def wrapped(*args):
            calls[0] += 1
            hit = calls[0] == on_call
            if hit and when == "during":
                threading.Timer(0.3, fire).start()
            out = loop(*args)
            if hit and when == "after":
                fire()
            return out

        return wrapped

    train.make_train_loop = make_wrapped


def arm(point: str) -> None:
    if point == "import":
        sys.meta_path.insert(0, _AtImport())
    elif point == "data":  # before the model exists: nothing to save
        from mmh_jax.experiments import training

        _wrap_method(training, "load_training_data", on_call=1, when="before")
    elif point == "compile":
        _wrap_loops(on_call=1, when="during")
    elif point == "first_steps":
        _wrap_loops(on_call=1, when="after")
    elif point == "mid":
        _wrap_loops(on_call=5, when="after")
    elif point == "save":
        from mmh_jax.checkpoint import Checkpointer

        _wrap_method(Checkpointer, "save", on_call=1, when="before")
    elif point == "between_experiments":
        from mmh_jax.experiments.pipeline import toy

        _wrap_method(toy, "run", on_call=1, when="after")
    else:
        raise SystemExit(f"unknown point {point!r}")


def main() -> int:
    global SIG
    point, SIG, args = sys.argv[1], signal.Signals[sys.argv[2]], sys.argv[3:]
    # A test runner started in the background (`cmd &` in a script) ignores SIGINT, and children
    # inherit that; the CLI keeps an inherited SIG_IGN (as Python does), so install what Python
    # installs when started from a terminal.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    arm(point)
    from mmh_jax import cli  # after arming: the import point must see jax's import

    return cli.main(args)


if __name__ == "__main__":  # pytest's --doctest-modules imports this file too
    sys.exit(main())
