"""Resumable, device-parallel sweeps: an estimator over a grid of settings × many points.

A sweep maps a single-example ``point_fn`` over N points (sharded over devices with
[`mmh_jax.parallel.map_points`][mmh_jax.parallel.map_points]) and, for each point, over every setting of a
grid (e.g. 50
values of t0), ``chunk_size`` points per dispatch so memory stays bounded. Each finished chunk is
written to ``workdir`` atomically (``.npz`` written to a temporary name, then ``os.replace``), so a
killed or failed run restarts where it stopped: finished chunks are read back, not recomputed.
A fingerprint of everything that determines the result (points, per-point arrays, grid, params,
the function's name, chunk size, the caller's ``config``) is stored in ``workdir/sweep.json``; a
restart with anything different raises instead of mixing results of two runs.

For example, a FLIPD curve over 50 values of t0 for 10^5 points:

    from mmh_jax import lid, sweep
    def point_fn(x, key, *, t0, params):
        return lid.flipd(model.score_fn_for(None, params=params), x, key, t0=t0, sde=vp,
                         trace="hutchinson", num_probes=4)
    curves = sweep.sweep(point_fn, xs, keys, workdir="runs/curves",
                         grid={"t0": jnp.geomspace(1e-3, 1.0, 50)}, params=model.params,
                         chunk_size=2048, batch_size=64, config={"num_probes": 4})
    curves.shape  # (100000, 50)

The grid values and ``params`` are traced, not baked in: one compile serves every chunk (the last
chunk is padded to ``chunk_size``). Static choices made inside ``point_fn`` (trace method, probe
count) are invisible to the fingerprint: name them in ``config``.

Many hosts: run one sweep per process on its own points and its own ``workdir`` (e.g.
``f"{out}/process{jax.process_index()}"``) with ``mesh=parallel.make_mesh(jax.local_devices())``;
each host then resumes independently.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from mmh_jax import _checks, parallel

__all__ = ["sweep", "fingerprint"]

_MANIFEST = "sweep.json"
_FORMAT = 1


def _is_key(a) -> bool:
    return isinstance(a, jax.Array) and jnp.issubdtype(a.dtype, jax.dtypes.prng_key)


def _host(a) -> np.ndarray:
    return np.asarray(jax.random.key_data(a) if _is_key(a) else a)


def _digest(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(_host(a))
        h.update(repr((a.shape, a.dtype.str)).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:32]


def _fn_name(fn) -> str:
    fn = getattr(fn, "func", fn)  # functools.partial
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__name__)}"


def fingerprint(point_fn, xs, *keys_or_arrays, grid=None, params=None, chunk_size: int, config=None) -> dict:
    """What identifies a sweep's result (stored in ``workdir/sweep.json`` and checked on restart).

    Returns:
      A JSON-able dict: format, function name, number of points, chunk size, sha256 digests of the
      points and per-point arrays, of the grid (names and values) and of ``params`` (structure and
      leaves), and the caller's ``config``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from mmh_jax import sweep
      >>> fp = sweep.fingerprint(jnp.sum, jnp.ones((3, 2)), chunk_size=2)
      >>> fp["n_points"], fp["chunk_size"]
      (3, 2)
    """
    grid = {} if grid is None else dict(grid)
    leaves, treedef = jax.tree_util.tree_flatten(params)
    return {
        "format": _FORMAT,
        "fn": _fn_name(point_fn),
        "n_points": int(jnp.shape(xs)[0]),
        "chunk_size": int(chunk_size),
        "points": _digest(xs, *keys_or_arrays),
        "grid": {name: _digest(v) for name, v in sorted(grid.items())},
        "params": _digest(*leaves) + ":" + hashlib.sha256(str(treedef).encode()).hexdigest()[:16],
        "config": json.loads(json.dumps(config, sort_keys=True, default=repr)),
    }


def _write_atomic(path: Path, write: Callable) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _check_grid(grid) -> tuple[dict, int | None]:
    if grid is None:
        return {}, None
    if not isinstance(grid, Mapping) or not grid:
        raise ValueError(f"grid must be a non-empty dict of name -> 1-D array of settings, got {grid!r}.")
    grid = {k: jnp.asarray(v) for k, v in grid.items()}
    sizes = {k: v.shape for k, v in grid.items()}
    if any(len(s) != 1 for s in sizes.values()) or len({s[0] for s in sizes.values()}) != 1:
        raise ValueError(f"grid values must be 1-D arrays of one common length, got shapes {sizes}.")
    return grid, next(iter(sizes.values()))[0]


def _per_point(prm, grd, *row, point_fn, with_params, with_grid):
    kw = {"params": prm} if with_params else {}
    if not with_grid:
        return point_fn(*row, **kw)
    return jax.vmap(lambda g: point_fn(*row, **g, **kw))(grd)


@functools.partial(jax.jit, static_argnames=("point_fn", "with_params", "with_grid", "batch_size", "mesh"))
def _run_chunk(prm, grd, *chunk, point_fn, with_params, with_grid, batch_size, mesh):
    """One chunk over the devices; module-level so that repeated sweeps of one function reuse the compile."""
    row_fn = functools.partial(_per_point, prm, grd, point_fn=point_fn, with_params=with_params, with_grid=with_grid)
    return parallel.map_points(row_fn, *chunk, batch_size=batch_size, mesh=mesh)


def sweep(
    point_fn: Callable[..., Any],
    xs,
    *keys_or_arrays,
    workdir,
    grid: Mapping[str, Any] | None = None,
    params: Any = None,
    chunk_size: int = 1024,
    batch_size: int | None = None,
    mesh=None,
    config: Any = None,
    progress: bool = True,
    on_chunk: Callable[[int, int, int], None] | None = None,
) -> Any:
    """Evaluate ``point_fn`` at every point (× every grid setting), resumably, over all devices.

    ``out[i, s] = point_fn(xs[i], *(a[i] for a in keys_or_arrays), **{k: grid[k][s]}, params=params)``
    (the ``s`` axis only with a ``grid``; ``params=`` only when given).

    Args:
      point_fn: single-example function returning a pytree of arrays.
      xs: ``(N, *E)`` points; ``keys_or_arrays``: per-point arrays with the same leading N (PRNG
        keys included).
      workdir: directory of the chunk files and ``sweep.json`` (created; reused on restart).
      grid: ``{name: (S,) array}`` settings swept for every point, passed as keyword arguments.
      params: a pytree passed to every call as ``params=`` (e.g. network weights), traced.
      chunk_size: points per dispatch and per file (memory and restart granularity).
      batch_size: points evaluated at once on each device
        ([`mmh_jax.parallel.map_points`][mmh_jax.parallel.map_points]).
      mesh: device mesh (default: all devices).
      config: JSON-able description of static choices inside ``point_fn`` (part of the fingerprint).
      progress: show a tqdm bar (points done, including those read back from ``workdir``).
      on_chunk: called as ``on_chunk(chunk_index, points_done, n_points)`` after each chunk is saved.

    Returns:
      ``point_fn``'s output pytree as numpy arrays with leading axes ``(N,)`` or ``(N, S)``.

    Raises:
      ValueError: ``chunk_size < 1``; mismatched numbers of points; a malformed ``grid``;
        ``workdir`` holding a sweep with a different fingerprint (the message lists what differs).

    Examples:
      >>> import tempfile, jax.numpy as jnp
      >>> from mmh_jax import sweep
      >>> f = lambda x, *, scale: scale * jnp.sum(x)
      >>> out = sweep.sweep(f, jnp.ones((5, 2)), workdir=tempfile.mkdtemp(), chunk_size=2,
      ...                   grid={"scale": jnp.array([1.0, 10.0])}, progress=False)
      >>> out.tolist()
      [[2.0, 20.0], [2.0, 20.0], [2.0, 20.0], [2.0, 20.0], [2.0, 20.0]]
    """
    if isinstance(chunk_size, bool) or int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}.")
    chunk_size = int(chunk_size)
    n = _checks.leading_axis("xs", xs)
    for i, a in enumerate(keys_or_arrays):
        if jnp.shape(a)[:1] != (n,):
            raise ValueError(f"keys_or_arrays[{i}] must have the same number of points as xs ({n}), got shape {jnp.shape(a)}.")
    grid, num_settings = _check_grid(grid)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)

    fp = fingerprint(point_fn, xs, *keys_or_arrays, grid=grid, params=params, chunk_size=chunk_size, config=config)
    manifest = workdir / _MANIFEST
    if manifest.exists():
        old = json.loads(manifest.read_text())
        if old != fp:
            diff = sorted(k for k in set(old) | set(fp) if old.get(k) != fp.get(k))
            raise ValueError(
                f"workdir {str(workdir)!r} holds a sweep with different settings (differs in: "
                f"{', '.join(diff)}); resuming would mix two runs' results. Use a new workdir, or "
                "delete this one to start over."
            )
    else:
        _write_atomic(manifest, lambda f: f.write(json.dumps(fp, indent=1).encode()))

    arrays = (xs, *keys_or_arrays)
    row0 = tuple(a[:1] for a in arrays)
    static = {"point_fn": point_fn, "with_params": params is not None, "with_grid": num_settings is not None}
    out_shape = jax.eval_shape(lambda *r: jax.vmap(lambda *x: _per_point(params, grid, *x, **static))(*r), *row0)
    leaves_shape, treedef = jax.tree_util.tree_flatten(out_shape)

    num_chunks = -(-n // chunk_size)
    paths = [workdir / f"chunk_{c:06d}.npz" for c in range(num_chunks)]

    def rows(c):
        return c * chunk_size, min(n, (c + 1) * chunk_size)

    def load(c):
        try:
            with np.load(paths[c]) as z:
                leaves = [z[f"leaf_{j}"] for j in range(len(leaves_shape))]
        except (OSError, KeyError, ValueError):
            return None  # missing or unreadable: compute it (again)
        lo, hi = rows(c)
        if any(l.shape != (hi - lo,) + s.shape[1:] for l, s in zip(leaves, leaves_shape)):
            return None
        return leaves

    def dispatch(c):
        lo, hi = rows(c)
        chunk = [a[lo:hi] for a in arrays]
        if hi - lo < chunk_size:  # pad the last chunk: one compile for all chunks
            chunk = [jnp.concatenate([a, jnp.repeat(a[:1], chunk_size - (hi - lo), axis=0)]) for a in chunk]
        return _run_chunk(params, grid, *chunk, batch_size=batch_size, mesh=mesh, **static)

    results: list = [None] * num_chunks
    todo = []
    for c in range(num_chunks):
        results[c] = load(c) if paths[c].exists() else None
        if results[c] is None:
            todo.append(c)

    done = n - sum(rows(c)[1] - rows(c)[0] for c in todo)
    with tqdm(total=n, initial=done, unit="pt", desc="sweep", disable=not progress) as bar:
        pending = (todo[0], dispatch(todo[0])) if todo else None
        for k in range(len(todo)):
            c, out = pending
            pending = (todo[k + 1], dispatch(todo[k + 1])) if k + 1 < len(todo) else None  # overlap
            lo, hi = rows(c)
            leaves = [np.asarray(l)[: hi - lo] for l in jax.tree_util.tree_leaves(jax.device_get(out))]
            _write_atomic(paths[c], lambda f: np.savez(f, **{f"leaf_{j}": l for j, l in enumerate(leaves)}))
            results[c] = leaves
            done += hi - lo
            bar.update(hi - lo)
            if on_chunk is not None:
                on_chunk(c, done, n)
    if n == 0:
        leaves = [np.zeros((0,) + s.shape[1:], s.dtype) for s in leaves_shape]
    else:
        leaves = [np.concatenate([r[j] for r in results]) for j in range(len(leaves_shape))]
    return jax.tree_util.tree_unflatten(treedef, leaves)
