"""Map a single-example function over many points: one device, many devices, many hosts.

``map_points(fn, xs, *args)`` is ``jax.vmap(fn)(xs, *args)`` with bounded memory
(``batch_size`` points at a time, via ``lax.map``) and, when a mesh is given or several devices
exist, the points split over a one-axis device mesh with ``jax.shard_map``: each device maps its
own slice, nothing is gathered. Points are padded (with copies of the first point) to a multiple
of the device count and the padding is dropped again, so any N works and the results come back in
the order of ``xs``. Results equal a plain ``jax.vmap``. ``backend="pmap"`` does the same with
``jax.pmap`` over the local devices, for code bases still built around it.

**One CPU, one GPU, several local devices.** Nothing to set up: the same call runs on whatever
``jax.devices()`` holds. A laptop CPU is one device (XLA already uses all its cores inside it); a
machine with 8 GPUs is a mesh of 8. Tests emulate several CPU devices with
``jax.config.update("jax_num_cpu_devices", 4)`` before JAX starts.

**Many hosts (a TPU pod slice, a multi-GPU cluster).** JAX is multi-controller: start one Python
process per host (per GPU node; on a TPU pod, the same script on every worker), each running the
same program:

    from mmh_jax import parallel
    info = parallel.initialize()            # TPU pods, Slurm, Open MPI: arguments detected
    # elsewhere: parallel.initialize("10.0.0.1:1234", num_processes=4, process_id=rank)
    my_xs = all_xs[info.process_index::info.process_count]  # or each host loads its own files
    lids = parallel.map_points_global(point_fn, my_xs, my_keys, batch_size=64)
    # lids: every host's points, in process order, as numpy on every host

``initialize`` wraps `jax.distributed.initialize` (and must run before any other JAX call);
[`map_points_global`][mmh_jax.parallel.map_points_global] builds one global array from each host's own points
(`jax.make_array_from_process_local_data`), maps it over the mesh of all devices of all hosts
and assembles the result (``gather=False``: each host keeps its own rows). Launch examples:
``gcloud compute tpus tpu-vm ssh NAME --worker=all --command="python run.py"`` on a TPU pod;
``srun --ntasks-per-node=1 python run.py`` under Slurm; by hand, one
``python run.py --process-id I`` per host with the coordinator address of host 0. On CPUs the
cross-host collectives use gloo (``jax_cpu_collectives_implementation``); a process that dies
makes the others fail with an error naming the lost peer (a collective fails, or JAX's coordination
service stops the process after ``heartbeat_timeout_seconds``), never a silent hang.

**Known XLA:CPU deadlock (emulated devices, SVD/eigh).** jaxlib's CPU LAPACK kernels split a
*batched* decomposition (``lapack_sgesdd_ffi`` for ``jnp.linalg.svd`` under ``vmap``) over XLA:CPU's
intra-op thread pool and block one pool thread until the parts are done. That pool has
max(#cores, #CPU devices) threads. When every emulated device runs a batched SVD at the same time
(e.g. [`mmh_jax.lid.normal_bundle`][mmh_jax.lid.normal_bundle] under a 4-device ``map_points`` on a 2-core
machine), every
pool thread waits and none is left to run the parts: the process sits idle in ``device_get``. It
needs #emulated CPU devices ≥ #cores; GPUs/TPUs and real multi-core hosts with fewer devices than
cores are not affected. Workarounds: emulate fewer CPU devices than cores, map SVD-based
estimators on one device (``mesh=make_mesh(jax.devices()[:1])``), or use ``batch_size=1`` (each
SVD unbatched; a test runs it in a subprocess under a timeout).

Reference: JAX "Distributed arrays and automatic parallelization", ``jax.shard_map``,
"Multi-process environments" (``jax.distributed``).
"""

from __future__ import annotations

import functools
import re
import zlib
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mmh_jax import _checks

__all__ = [
    "BACKENDS",
    "POINTS_AXIS",
    "ProcessInfo",
    "check_mesh",
    "initialize",
    "make_mesh",
    "map_points",
    "map_points_global",
    "pad_points",
]

#: Name of the mesh axis over which points are split.
POINTS_AXIS = "points"

#: ``map_points`` backends: ``shard_map`` over a mesh (the core path) or ``jax.pmap``.
BACKENDS = ("shard_map", "pmap")


class ProcessInfo(NamedTuple):
    """Where this process stands in a (possibly multi-host) run (returned by
    [`initialize`][mmh_jax.parallel.initialize]).

    Attributes:
      process_index: this process's rank, ``0 .. process_count - 1``.
      process_count: number of processes (hosts) in the run.
      local_device_count: devices this process drives.
      device_count: devices of all processes together.

    Examples:
      >>> from mmh_jax import parallel
      >>> info = parallel.initialize(num_processes=1)
      >>> info.process_index, info.process_count
      (0, 1)
    """

    process_index: int
    process_count: int
    local_device_count: int
    device_count: int


def _process_info() -> ProcessInfo:
    return ProcessInfo(jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count())


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    local_device_ids=None,
    initialization_timeout: int = 300,
    heartbeat_timeout_seconds: int = 100,
    cpu_collectives: str = "gloo",
) -> ProcessInfo:
    """Join a multi-host run (wraps `jax.distributed.initialize`); a no-op on one process.

    Call it first, before any other JAX computation, with the same arguments on every process
    except ``process_id``. On a TPU pod, under Slurm or Open MPI all arguments may be omitted
    (detected by JAX). ``num_processes=1`` (or a process that is already initialised) does nothing,
    so the same script runs unchanged on one machine.

    Args:
      coordinator_address: ``"host:port"`` of process 0 (reachable from every host).
      num_processes: number of processes (one per host, usually).
      process_id: this process's rank in ``0 .. num_processes - 1``.
      local_device_ids: restrict this process to these local devices (e.g. one GPU per process).
      initialization_timeout: seconds to wait for all processes to join.
      heartbeat_timeout_seconds: a process silent for this long is declared dead and the others
        are stopped with an error naming it (lower it to fail fast).
      cpu_collectives: cross-process collectives on CPU devices, ``"gloo"`` or ``"mpi"``.

    Returns:
      [`ProcessInfo`][mmh_jax.parallel.ProcessInfo]
      ``(process_index, process_count, local_device_count, device_count)``.

    Raises:
      ValueError: a malformed ``coordinator_address``, ``num_processes < 1``, ``process_id``
        outside ``[0, num_processes)``, an unknown ``cpu_collectives``.
      RuntimeError: JAX already ran a computation in this process (initialise first).

    Examples:
      >>> from mmh_jax import parallel
      >>> parallel.initialize(num_processes=1).process_count   # one process: nothing to join
      1
    """
    if cpu_collectives not in ("gloo", "mpi"):
        raise ValueError(f"cpu_collectives must be 'gloo' or 'mpi', got {cpu_collectives!r}.")
    if num_processes is not None and (isinstance(num_processes, bool) or int(num_processes) < 1):
        raise ValueError(f"num_processes must be a positive int, got {num_processes!r}.")
    if process_id is not None:
        if num_processes is None:
            raise ValueError(f"process_id={process_id!r} needs num_processes as well.")
        if not 0 <= int(process_id) < int(num_processes):
            raise ValueError(
                f"process_id must lie in [0, num_processes) = [0, {num_processes}), got {process_id!r}."
            )
    if coordinator_address is not None and not re.fullmatch(r"[^\s:]+:\d+|\[[0-9a-fA-F:]+\]:\d+", coordinator_address):
        raise ValueError(
            f"coordinator_address must be 'host:port' (process 0's address), got {coordinator_address!r}."
        )
    if jax.distributed.is_initialized() or (num_processes == 1 and coordinator_address is None):
        return _process_info()
    jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    try:
        jax.distributed.initialize(
            coordinator_address,
            num_processes,
            process_id,
            local_device_ids=local_device_ids,
            initialization_timeout=initialization_timeout,
            heartbeat_timeout_seconds=heartbeat_timeout_seconds,
        )
    except RuntimeError as e:
        raise RuntimeError(
            f"parallel.initialize failed: {e} (call it at the very start of the program, before any "
            "JAX computation, with the same coordinator_address and num_processes on every process)."
        ) from e
    return _process_info()


def make_mesh(devices=None) -> Mesh:
    """A one-axis mesh named ``"points"`` over ``devices`` (default: all devices of all hosts).

    Devices are ordered by (process, id), so each process owns one contiguous block of points.

    Args:
      devices: the devices to split points over (any order; default ``jax.devices()``).

    Returns:
      a `jax.sharding.Mesh` with the single axis [`POINTS_AXIS`][mmh_jax.parallel.POINTS_AXIS].

    Raises:
      ValueError: an empty ``devices``.

    Examples:
      >>> from mmh_jax import parallel
      >>> parallel.make_mesh().axis_names
      ('points',)
    """
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("devices must hold at least one device, got an empty list.")
    devices = sorted(devices, key=lambda d: (d.process_index, d.id))
    return Mesh(np.asarray(devices), (POINTS_AXIS,))


def _check_args(xs, keys_or_arrays, batch_size) -> int:
    """Shared argument checks; returns the number of points."""
    n = _checks.leading_axis("xs", xs)
    for i, a in enumerate(keys_or_arrays):
        m = _checks.leading_axis(f"keys_or_arrays[{i}]", a)
        if m != n:
            raise ValueError(
                f"keys_or_arrays[{i}] must have the same number of points as xs ({n}), got {m}."
            )
    if batch_size is not None and (isinstance(batch_size, bool) or int(batch_size) < 1):
        raise ValueError(f"batch_size must be a positive int or None, got {batch_size!r}.")
    return n


def check_mesh(mesh: Mesh) -> str:
    """Check that ``mesh`` has exactly one axis (the one points are split over) and return its name.

    Args:
      mesh: a `jax.sharding.Mesh`, e.g. from [`make_mesh`][mmh_jax.parallel.make_mesh].

    Returns:
      the name of the mesh's single axis.

    Raises:
      ValueError: a mesh with more than one axis.

    Examples:
      >>> from mmh_jax import parallel
      >>> parallel.check_mesh(parallel.make_mesh())
      'points'
    """
    if len(mesh.axis_names) != 1:
        raise ValueError(
            f"mesh must have exactly one axis to split points over, got axes {mesh.axis_names}; "
            "build one with mmh_jax.parallel.make_mesh()."
        )
    return mesh.axis_names[0]


def _local_map(fn: Callable, batch_size: int | None, *arrays):
    """vmap over everything at once, or lax.map in chunks of ``batch_size`` (bounded memory)."""
    n = jnp.shape(arrays[0])[0]
    if batch_size is None or batch_size >= n:
        return jax.vmap(fn)(*arrays)
    return jax.lax.map(lambda a: fn(*a), arrays, batch_size=batch_size)


def pad_points(arrays: tuple, n: int, padded: int) -> tuple:
    """Pad arrays of ``n`` points to ``padded`` rows with copies of their first row.

    Copies of a real point never make NaNs where zeros could; drop the padded rows' results again
    with ``out[:n]``.

    Args:
      arrays: a tuple of arrays, each with a leading axis of ``n`` points (n ≥ 1 when padding).
      n: the number of points.
      padded: the number of rows wanted, ≥ ``n`` (e.g. a multiple of the device count).

    Returns:
      the tuple of padded arrays (``arrays`` itself when ``padded == n``).

    Examples:
      >>> import jax.numpy as jnp
      >>> from mmh_jax import parallel
      >>> parallel.pad_points((jnp.array([1.0, 2.0, 3.0]),), 3, 4)[0].tolist()
      [1.0, 2.0, 3.0, 1.0]
    """
    if padded == n:
        return arrays
    return tuple(jnp.concatenate([a, jnp.repeat(a[:1], padded - n, axis=0)], axis=0) for a in arrays)


def _map_pmap(fn, batch_size, arrays, n, mesh):
    devices = list(mesh.devices.flat) if mesh is not None else jax.local_devices()
    if any(d.process_index != jax.process_index() for d in devices):
        raise ValueError(
            "backend='pmap' maps over this process's devices only, got a mesh with other processes' "
            "devices; use backend='shard_map' (or map_points_global) for multi-host runs."
        )
    k = len(devices)
    per = -(-n // k)
    arrays = pad_points(arrays, n, per * k)
    stacked = tuple(a.reshape((k, per) + a.shape[1:]) for a in arrays)
    out = jax.pmap(lambda *local: _local_map(fn, batch_size, *local), devices=devices)(*stacked)
    return jax.tree_util.tree_map(lambda o: o.reshape((k * per,) + o.shape[2:])[:n], out)


def map_points(
    fn: Callable[..., Any],
    xs,
    *keys_or_arrays,
    batch_size: int | None = None,
    mesh: Mesh | None = None,
    backend: str = "shard_map",
) -> Any:
    """Apply a single-example ``fn`` to every point: ``out[i] = fn(xs[i], *(a[i] for a in args))``.

    Args:
      fn: single-example function; returns a pytree of arrays.
      xs: ``(N, *E)`` points.
      *keys_or_arrays: further per-point arguments with the same leading N (PRNG keys included).
        Broadcast arguments (the same for every point) belong in ``fn``'s closure.
      batch_size: points evaluated at once on each device (``None``: all of them). Memory is that
        of ``batch_size`` simultaneous calls.
      mesh: a one-axis `jax.sharding.Mesh` (see [`make_mesh`][mmh_jax.parallel.make_mesh]) to split the points
        over.
        Default: all devices when there are several, otherwise none.
      backend: ``"shard_map"`` (default; works inside ``jit`` and across hosts) or ``"pmap"``
        (``jax.pmap`` over the mesh's devices or all local devices; same results).

    Returns:
      ``fn``'s outputs stacked along a new leading axis of length N, in the order of ``xs``
      (sharded over the devices when several are used). N need not divide by the device count.

    Raises:
      ValueError: arguments with different numbers of points, ``batch_size < 1``, a mesh with
        more than one axis, an unknown ``backend``, ``backend="pmap"`` with other hosts' devices.

    Examples:
      >>> import jax.numpy as jnp
      >>> from mmh_jax.parallel import map_points
      >>> map_points(lambda x, y: jnp.sum(x) * y, jnp.ones((5, 3)), jnp.arange(5.0), batch_size=2).tolist()
      [0.0, 3.0, 6.0, 9.0, 12.0]
      >>> map_points(lambda x: 2 * x, jnp.arange(5.0), backend="pmap").tolist()
      [0.0, 2.0, 4.0, 6.0, 8.0]
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}.")
    arrays = (xs, *keys_or_arrays)
    n = _check_args(xs, keys_or_arrays, batch_size)
    if mesh is not None:
        check_mesh(mesh)
    if backend == "pmap":
        return _map_pmap(fn, batch_size, arrays, n, mesh)
    if mesh is None and jax.device_count() > 1:
        mesh = make_mesh()
    if mesh is None or mesh.size == 1:
        return _local_map(fn, batch_size, *arrays)
    axis = check_mesh(mesh)
    padded = -(-n // mesh.size) * mesh.size
    arrays = pad_points(arrays, n, padded)
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


def _is_key(a) -> bool:
    return isinstance(a, jax.Array) and jnp.issubdtype(a.dtype, jax.dtypes.prng_key)


def _collective(what: str, f, *args):
    """Run a cross-process step; a failure (a peer died) becomes an error that says so."""
    try:
        return f(*args)
    except jax.errors.JaxRuntimeError as e:
        raise RuntimeError(
            f"map_points_global: {what} failed in process {jax.process_index()} of "
            f"{jax.process_count()}; another process most likely died or was killed (see its log). "
            f"Cause: {e}"
        ) from e


@functools.partial(jax.jit, static_argnames=("fn", "impls", "batch_size", "mesh"))
def _global_map(*arrays, fn, impls, batch_size, mesh):
    """The global map, jitted once per (fn, key types, batch_size, mesh): repeated calls reuse it."""

    def row_fn(*row):
        row = [jax.random.wrap_key_data(a, impl=impl) if impl is not None else a for a, impl in zip(row, impls)]
        return fn(*row)

    return map_points(row_fn, *arrays, batch_size=batch_size, mesh=mesh)


def map_points_global(
    fn: Callable[..., Any],
    xs,
    *keys_or_arrays,
    batch_size: int | None = None,
    mesh: Mesh | None = None,
    gather: bool = True,
) -> Any:
    """Multi-host [`map_points`][mmh_jax.parallel.map_points]: every process passes only its own points.

    Each process calls this with its local ``xs`` (``(N_p, *E)``; N_p may differ between processes,
    even be 0) and per-point arrays. The rows are padded to a common count, turned into one global
    array sharded over ``mesh`` (`jax.make_array_from_process_local_data`), mapped with
    [`map_points`][mmh_jax.parallel.map_points], and brought back to the host. On one process this equals
    ``map_points``.

    Args:
      fn, xs, keys_or_arrays, batch_size: as in [`map_points`][mmh_jax.parallel.map_points] (local rows; keys
        may be typed PRNG key arrays).
      mesh: one-axis mesh over the devices of all processes (default
        [`make_mesh`][mmh_jax.parallel.make_mesh]); every process must own the same number of its devices.
      gather: ``True``: every process receives all points' results, process 0's rows first, then
        process 1's, ... ``False``: each process receives the results of its own rows only.

    Returns:
      ``fn``'s outputs as numpy arrays stacked along a leading axis of ``sum_p N_p`` rows
      (``gather=True``) or ``N_p`` rows (``gather=False``).

    Raises:
      ValueError: as [`map_points`][mmh_jax.parallel.map_points]; processes owning different numbers of mesh
        devices, or passing different event shapes.
      RuntimeError: a cross-process step failed (another process died); the message says so.

    Examples:
      >>> import jax.numpy as jnp
      >>> from mmh_jax import parallel
      >>> parallel.map_points_global(lambda x: jnp.sum(x), jnp.ones((3, 2))).tolist()
      [2.0, 2.0, 2.0]
    """
    from jax.experimental import multihost_utils  # multi-host only; parallel is imported by `mmh-jax --help`

    arrays = (xs, *keys_or_arrays)
    n = _check_args(xs, keys_or_arrays, batch_size)
    mesh = make_mesh() if mesh is None else mesh
    axis = check_mesh(mesh)
    me = jax.process_index()
    owners = [d.process_index for d in mesh.devices.flat]
    local_dev = owners.count(me)
    # Typed keys travel as their raw uint32 data and are wrapped again inside fn.
    impls = [jax.random.key_impl(a) if _is_key(a) else None for a in arrays]
    raw = [np.asarray(jax.random.key_data(a) if impl is not None else a) for a, impl in zip(arrays, impls)]
    sig = np.array([n, local_dev] + [zlib.crc32(repr((r.shape[1:], r.dtype.str)).encode()) % (2**31) for r in raw], np.int64)
    sigs = _collective("exchanging point counts", multihost_utils.process_allgather, sig)
    sigs = np.asarray(sigs).reshape(jax.process_count(), -1)
    counts = sigs[:, 0]
    if not (sigs[:, 1] == local_dev).all():
        raise ValueError(f"every process must own the same number of mesh devices, got {sigs[:, 1].tolist()}.")
    if not (sigs[:, 2:] == sigs[me, 2:]).all():
        raise ValueError("every process must pass points and per-point arrays of the same event shapes and dtypes.")
    if local_dev == 0:
        raise ValueError(f"the mesh holds no device of process {me}; build it with make_mesh() (all devices).")
    rows = max(1, -(-int(counts.max()) // local_dev)) * local_dev  # rows per process, a multiple of its devices
    sharding = NamedSharding(mesh, PartitionSpec(axis))
    glob = []
    for r in raw:
        pad = np.repeat(r[:1], rows - n, axis=0) if n else np.zeros((rows,) + r.shape[1:], r.dtype)
        local = np.concatenate([r, pad], axis=0) if n else pad
        glob.append(jax.make_array_from_process_local_data(sharding, local, (rows * jax.process_count(),) + r.shape[1:]))

    out = _global_map(*glob, fn=fn, impls=tuple(impls), batch_size=batch_size, mesh=mesh)
    if not gather:
        def local_rows(o):
            shards = sorted(o.addressable_shards, key=lambda s: s.index[0].start or 0)
            return np.concatenate([np.asarray(s.data) for s in shards], axis=0)[:n]

        return _collective("computing this process's rows", jax.tree_util.tree_map, local_rows, out)
    full = _collective("gathering the results", multihost_utils.process_allgather, out, True)
    return jax.tree_util.tree_map(
        lambda o: np.concatenate([np.asarray(o)[p * rows : p * rows + counts[p]] for p in range(len(counts))]),
        full,
    )
