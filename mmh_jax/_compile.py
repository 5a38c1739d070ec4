"""XLA compiler options for the command line's large programs (training loops, the pipeline's passes)."""

from __future__ import annotations

from typing import Any

__all__ = ["compiler_options"]


def compiler_options() -> dict[str, Any] | None:
    """On CPU, LLVM optimisation level 1 instead of XLA's default (3); elsewhere None (XLA's defaults).

    The programs of a U-Net's derivatives are large: at level 3, compiling them took about a third
    of a default ``mmh-jax run`` on 2 CPU cores (310 of 815 s; seven programs of 18-52 s). Measured
    there at level 1: the images FLIPD program compiles in 10 s instead of 17 and runs as fast
    (8.3-8.8 s against 9.7 s for 256 points), its values equal to 8e-6 on FLIPD ≈ 43; the digits
    training loop compiles in 18 s instead of 23 and its steps per second are unchanged (within
    the machine's noise, 16-19 either way). The heavy operations (dots, convolutions) are library
    kernels either way; what level 3 buys is faster elementwise fusions, which these programs do not
    need. Under ``jax_disable_most_optimizations`` (``fast_compile``: level 0) also None, so that
    setting is not overridden.
    """
    import jax

    if jax.default_backend() != "cpu" or jax.config.values["jax_disable_most_optimizations"]:
        return None
    return {"xla_backend_optimization_level": 1}
