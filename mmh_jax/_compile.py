"""XLA compiler options for the command line's large programs (training loops, the pipeline's passes)."""

from __future__ import annotations

import contextlib
from typing import Any

import jax

__all__ = ["compiler_options", "fast_compile"]


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


@contextlib.contextmanager
def fast_compile(fast: bool):
    """With ``fast``, XLA compiles with most optimisations off (``jax_disable_most_optimizations``),
    for runs of tiny programs where optimising costs more than it saves; both settings restored on exit.

    ``jax_optimization_level`` is set to O0 as well: it is part of JAX's jit cache key, so programs
    compiled here are cached apart from the optimised ones of the same process (other runs, tests).
    """
    if not fast:
        yield
        return
    saved = {k: jax.config.values[k] for k in ("jax_disable_most_optimizations", "jax_optimization_level")}
    jax.config.update("jax_disable_most_optimizations", True)
    jax.config.update("jax_optimization_level", "O0")
    try:
        yield
    finally:
        for k, v in saved.items():
            jax.config.update(k, v)
