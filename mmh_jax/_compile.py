"""XLA compiler options for the command line's large programs (training loops, the pipeline's passes)."""

from __future__ import annotations

from typing import Any

import jax

__all__ = ["compiler_options"]


def compiler_options() -> dict[str, Any] | None:
    """On CPU, LLVM optimisation level 1 instead of XLA's default (3); elsewhere None (XLA's defaults).

    A U-Net's derivative programs compile much faster at level 1 and run as fast: their heavy
    operations are library kernels either way (measurements: docs/performance.md). Under
    ``jax_disable_most_optimizations`` (``fast_compile``: level 0) also None, so that setting is not
    overridden.
    """
    if jax.default_backend() != "cpu" or jax.config.values["jax_disable_most_optimizations"]:
        return None
    return {"xla_backend_optimization_level": 1}
