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
    for exc, tb in ((closed, closed.__traceback__), (other, other_tb)):
        sys.unraisablehook(types.SimpleNamespace(exc_type=type(exc), exc_value=exc, exc_traceback=tb,
                                                 err_msg=None, object=None))
        sys.excepthook(type(exc), exc, tb)
    assert seen == [("unraisable", other), ("except", other)]
    assert _orbax_quiet._is_closed_loop_error(type(closed), closed, closed.__traceback__)
    assert not _orbax_quiet._is_closed_loop_error(ValueError, ValueError("Event loop is closed"), None)
