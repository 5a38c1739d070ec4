"""pyplot for the library's figure files, without taking over the user's plotting session."""

from __future__ import annotations

import sys


def pyplot():
    """``matplotlib.pyplot``, on the headless Agg backend unless the session already chose one.

    A script or a server gets Agg (no display needed). In Jupyter (``ipykernel`` loaded) or after
    the user imported pyplot themselves, the backend is left alone, so their inline figures keep
    showing after a library call. The library closes every figure it saves.
    """
    import matplotlib

    if "matplotlib.pyplot" not in sys.modules and "ipykernel" not in sys.modules:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
