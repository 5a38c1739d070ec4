"""What produced a result: package versions, Python, platform and JAX backend, in one JSON-ready dict.

Every ``metrics.json`` (``mmh-jax run``, ``mmh-jax run validation``) and ``config.json``
(``mmh-jax train``) records [`provenance`][mmh_jax.provenance.provenance] next to its seed and configuration,
so a number can be traced back to the code and libraries that computed it. Only distribution metadata is read:
nothing here imports flax, optax or orbax.

Examples:
  >>> p = provenance()
  >>> sorted(p["versions"])
  ['flax', 'jax', 'jaxlib', 'mmh_jax', 'numpy', 'optax', 'orbax-checkpoint']
  >>> p["versions"]["mmh_jax"] == __import__("mmh_jax").__version__
  True
"""

from __future__ import annotations

import platform
import sys
from importlib import metadata
from typing import Any

import jax

from mmh_jax._version import __version__

__all__ = ["PACKAGES", "provenance", "versions"]

#: Distributions whose versions are recorded (``mmh_jax`` itself is added from ``mmh_jax.__version__``).
PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy")


def versions() -> dict[str, str | None]:
    """Installed versions of [`PACKAGES`][mmh_jax.provenance.PACKAGES] and of ``mmh_jax`` (None for a package
    not installed).

    Returns:
      ``{distribution name: version string or None}``, one entry per package plus ``mmh_jax``.

    Examples:
      >>> v = versions()
      >>> v["jax"] == __import__("jax").__version__
      True
    """
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    out["mmh_jax"] = __version__
    return out


def provenance() -> dict[str, Any]:
    """Versions, interpreter, platform and JAX backend of this process, as a JSON-ready dict.

    Returns:
      ``{"versions": versions(), "python": "3.11.x", "platform": platform.platform(),
      "backend": jax.default_backend(), "devices": jax.device_count()}``. It holds no time stamp,
      so two runs on one machine record the same provenance.

    Examples:
      >>> p = provenance()
      >>> sorted(p)
      ['backend', 'devices', 'platform', 'python', 'versions']
    """
    return {
        "versions": versions(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "backend": jax.default_backend(),
        "devices": jax.device_count(),
    }
