"""After a failed orbax restore, only the closed-event-loop reports of orbax's stray reads are dropped."""

import asyncio
import sys
import types

from mmh_jax import _orbax_quiet


def _closed_loop_error():
    loop = asyncio.new_event_loop()
    loop.close()
    try:
        loop.call_soon_threadsafe(lambda: None)
    except RuntimeError as e:
        return e
    raise AssertionError("a closed loop accepted a callback")


def _check_closed(exc):
    """Named like asyncio's check: a report raised here differs from the dropped one only in ``exc``."""
    raise exc


def _raised(exc):
    try:
        _check_closed(exc)
    except Exception as e:  # noqa: BLE001 - whatever was passed
        return e


def test_only_closed_loop_reports_are_dropped(monkeypatch):
    seen = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: seen.append(("unraisable", u.exc_value)))
    monkeypatch.setattr(sys, "excepthook", lambda t, e, tb: seen.append(("except", e)))
    _orbax_quiet.quiet_closed_loop_reports()
    _orbax_quiet.quiet_closed_loop_reports()  # installed once: no second wrapper

    closed = _closed_loop_error()
    other = RuntimeError("something else")
    try:
        raise other
    except RuntimeError:
        other_tb = sys.exc_info()[2]
    same_text = RuntimeError("Event loop is closed")  # the message, but not raised by asyncio's check
    try:
        raise same_text
    except RuntimeError:
        same_text_tb = sys.exc_info()[2]
    not_runtime, other_text = _raised(ValueError("Event loop is closed")), _raised(RuntimeError("Event loop closed"))
    reports = ((closed, closed.__traceback__), (other, other_tb), (same_text, same_text_tb),
               (not_runtime, not_runtime.__traceback__), (other_text, other_text.__traceback__), (closed, None))
    for exc, tb in reports:
        sys.unraisablehook(types.SimpleNamespace(exc_type=type(exc), exc_value=exc, exc_traceback=tb,
                                                 err_msg=None, object=None))
        sys.excepthook(type(exc), exc, tb)
    assert seen == [(hook, exc) for exc in (other, same_text, not_runtime, other_text, closed)
                    for hook in ("unraisable", "except")]


def test_a_read_installs_the_filter_before_it_starts_and_keeps_it(monkeypatch):
    """Reports of a failed read can arrive while it still runs or long after it returned (on
    tensorstore's threads), so the filter is in place from the first read on, failed or not."""
    seen = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: seen.append(u.exc_value))
    closed, other = _closed_loop_error(), _raised(RuntimeError("something else"))

    def report(exc):
        sys.unraisablehook(types.SimpleNamespace(exc_type=type(exc), exc_value=exc, exc_traceback=exc.__traceback__,
                                                 err_msg=None, object=None))

    def failing_read():
        report(closed)
        raise OSError("a file is missing")

    try:
        _orbax_quiet.orbax_read(failing_read)
    except OSError as e:
        assert str(e) == "a file is missing"  # the read's own error, unchanged
    else:
        raise AssertionError("the failing read did not raise")
    report(closed)
    report(other)
    assert _orbax_quiet.orbax_read(lambda: 3) == 3
    report(closed)
    assert seen == [other]
