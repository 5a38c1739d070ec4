"""Map a single-example function over many points: chunked on one device, sharded over several.

``map_points(fn, xs, *args)`` is ``jax.vmap(fn)(xs, *args)`` with bounded memory
(``batch_size`` points at a time, via ``lax.map``) and, when a mesh is given or several devices
exist, the points split over a one-axis device mesh with ``jax.shard_map``: each device maps its
own slice, nothing is gathered. Results equal a plain ``jax.vmap``.

Reference: JAX "Distributed arrays and automatic parallelization", ``jax.shard_map``.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec

__all__ = ["POINTS_AXIS", "make_mesh", "map_points"]

#: Name of the mesh axis over which points are split.
POINTS_AXIS = "points"


def make_mesh(devices=None) -> Mesh:
    """A one-axis mesh named ``"points"`` over ``devices`` (default: all devices, all hosts)."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (POINTS_AXIS,))


def _leading(name: str, a: Any) -> int:
    shape = jnp.shape(a)
    if len(shape) == 0:
        raise ValueError(f"{name} must have a leading axis of points, got a scalar of shape ().")
    return shape[0]


def _local_map(fn: Callable, batch_size: int | None, *arrays):
    """vmap over everything at once, or lax.map in chunks of ``batch_size`` (bounded memory)."""
    n = jnp.shape(arrays[0])[0]
    if batch_size is None or batch_size >= n:
        return jax.vmap(fn)(*arrays)
    return jax.lax.map(lambda a: fn(*a), arrays, batch_size=batch_size)


def map_points(
    fn: Callable[..., Any],
    xs,
    *keys_or_arrays,
    batch_size: int | None = None,
    mesh: Mesh | None = None,
) -> Any:
    """Apply a single-example ``fn`` to every point: ``out[i] = fn(xs[i], *(a[i] for a in args))``.

    Args:
      fn: single-example function; returns a pytree of arrays.
      xs: ``(N, *E)`` points.
      *keys_or_arrays: further per-point arguments with the same leading N (PRNG keys included).
        Broadcast arguments (the same for every point) belong in ``fn``'s closure.
      batch_size: points evaluated at once on each device (``None``: all of them). Memory is that
        of ``batch_size`` simultaneous calls.
      mesh: a one-axis :class:`jax.sharding.Mesh` (see :func:`make_mesh`) to split the points over.
        Default: all devices when there are several, otherwise none.

    Returns:
      ``fn``'s outputs stacked along a new leading axis of length N (sharded over the mesh when
      one is used).

    Raises:
      ValueError: arguments with different numbers of points, ``batch_size < 1``, or a mesh with
      more than one axis.

    Example:
      >>> import jax.numpy as jnp
      >>> from mmh_jax.parallel import map_points
      >>> map_points(lambda x, y: jnp.sum(x) * y, jnp.ones((5, 3)), jnp.arange(5.0), batch_size=2).tolist()
      [0.0, 3.0, 6.0, 9.0, 12.0]
    """
    arrays = (xs, *keys_or_arrays)
    n = _leading("xs", xs)
    for i, a in enumerate(keys_or_arrays):
        m = _leading(f"keys_or_arrays[{i}]", a)
        if m != n:
            raise ValueError(
                f"keys_or_arrays[{i}] must have the same number of points as xs ({n}), got {m}."
            )
    if batch_size is not None and (isinstance(batch_size, bool) or int(batch_size) < 1):
        raise ValueError(f"batch_size must be a positive int or None, got {batch_size!r}.")
    if mesh is None and jax.device_count() > 1:
        mesh = make_mesh()
    if mesh is None or mesh.size == 1:
        return _local_map(fn, batch_size, *arrays)
    if len(mesh.axis_names) != 1:
        raise ValueError(
            f"mesh must have exactly one axis to split points over, got axes {mesh.axis_names}; "
            "build one with mmh_jax.parallel.make_mesh()."
        )
    axis = mesh.axis_names[0]
    num_shards = mesh.size
    padded = -(-n // num_shards) * num_shards
    if padded != n:  # pad with copies of the first point so padding never produces NaNs
        arrays = tuple(
            jnp.concatenate([a, jnp.repeat(a[:1], padded - n, axis=0)], axis=0) for a in arrays
        )
    spec = PartitionSpec(axis)
    sharded = jax.shard_map(
        lambda *local: _local_map(fn, batch_size, *local),
        mesh=mesh,
        in_specs=(spec,) * len(arrays),
        out_specs=spec,
        # Users' functions build constants (basis vectors, probes) that are not typed as varying
        # over the mesh axis; every shard is independent, so the check buys nothing here.
        check_vma=False,
    )
    out = sharded(*arrays)
    if padded != n:
        out = jax.tree_util.tree_map(lambda o: o[:n], out)
    return out
