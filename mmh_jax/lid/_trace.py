"""Trace of the Jacobian of a vector field: exact (chunked JVPs) or Hutchinson (Rademacher probes).

Both return the field's value too, since every caller (FLIPD, FPRegress) needs it and the value
comes for free with the Jacobian-vector products.

Reference: Hutchinson, "A stochastic estimator of the trace of the influence matrix" (1989);
matfree's ``stochtrace`` for the probe/estimate split.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

Array = jax.Array

#: The ``trace`` options of the FLIPD-type estimators: ``"exact"`` (D Jacobian-vector products),
#: ``"hutchinson"`` (Rademacher probes), or ``"auto"`` (exact up to ``EXACT_TRACE_MAX_DIM``).
TRACES = ("auto", "exact", "hutchinson")
#: Largest ambient dimension for which ``trace="auto"`` computes the exact trace.
EXACT_TRACE_MAX_DIM = 3500
#: Default number of basis vectors pushed through the network at once by the exact trace.
DEFAULT_CHUNK = 256


def rademacher_probes(key, shape: tuple[int, ...], num_probes: int) -> Array:
    """``num_probes`` i.i.d. Rademacher (±1) vectors of event ``shape``: shape ``(num_probes, *shape)``."""
    return jax.random.rademacher(key, (num_probes, *shape), jnp.float32)


def exact_trace(fn: Callable[[Array], Array], x: Array, *, chunk_size: int | None = None) -> tuple[Array, Array]:
    """``(fn(x), tr ∂fn/∂x)`` from D Jacobian-vector products, ``chunk_size`` at a time.

    ``fn`` maps an array of shape ``x.shape`` to one of the same shape. Memory is that of
    ``chunk_size`` simultaneous JVPs, whatever D is.
    """
    dim = x.size
    chunk = min(dim, chunk_size or DEFAULT_CHUNK)
    value, f_jvp = jax.linearize(fn, x)

    def diag_entry(i):
        e = jnp.zeros(dim, x.dtype).at[i].set(1.0).reshape(x.shape)
        return f_jvp(e).reshape(-1)[i]

    idx = jnp.arange(dim)
    if chunk >= dim:
        diag = jax.vmap(diag_entry)(idx)
    else:
        diag = jax.lax.map(diag_entry, idx, batch_size=chunk)
    return value, jnp.sum(diag)


def hutchinson_trace(fn: Callable[[Array], Array], x: Array, probes: Array, *,
                     chunk_size: int | None = None) -> tuple[Array, Array]:
    """``(fn(x), mean_v vᵀ (∂fn/∂x) v)`` over the given probes of shape ``(P, *x.shape)``.

    With one probe this is a single ``jax.jvp`` (value and tangent in one pass). With several at
    once (``chunk_size`` None or ≥ P) the network is linearized once and every probe pushed through
    the linear map: the fastest, but the linearization holds every activation of the network. With
    ``chunk_size`` < P each chunk is ``chunk_size`` JVPs of their own (``lax.map``), the forward pass
    recomputed per chunk: memory is that of ``chunk_size`` JVPs and no more, whatever P is, at the
    cost of P/``chunk_size`` extra forward passes (docs/performance.md).
    """
    if probes.shape[0] == 1:
        value, jv = jax.jvp(fn, (x,), (probes[0].astype(x.dtype),))
        return value, jnp.vdot(probes[0], jv)
    if chunk_size is None or chunk_size >= probes.shape[0]:
        value, f_jvp = jax.linearize(fn, x)
        quad = jax.vmap(lambda v: jnp.vdot(v, f_jvp(v.astype(x.dtype))))(probes)
        return value, jnp.mean(quad)

    def value_and_quad(v):
        # The barrier ties x to the chunk's probes, so XLA cannot hoist the forward pass out of the
        # loop (which would keep all of its activations alive across chunks, as a linearization does).
        y, v = jax.lax.optimization_barrier((x, v))
        value, jv = jax.jvp(fn, (y,), (v.astype(x.dtype),))
        return value, jnp.vdot(v, jv)

    values, quad = jax.lax.map(value_and_quad, probes, batch_size=chunk_size)
    return values[0], jnp.mean(quad)


def resolve_trace(trace: str, dim: int) -> str:
    """Map ``"auto"`` to ``"exact"`` (D ≤ 3500) or ``"hutchinson"``."""
    if trace == "auto":
        return "exact" if dim <= EXACT_TRACE_MAX_DIM else "hutchinson"
    return trace
