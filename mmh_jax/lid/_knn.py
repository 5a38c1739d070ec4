"""Exact k-nearest-neighbour search in JAX: [`knn`][mmh_jax.lid.knn] and the search behind the model-free
estimators.

Squared distances of mean-centred coordinates by the ‖q‖² + ‖x‖² − 2q·x expansion (one matmul per
block, clipped at 0), ``lax.top_k`` per block merged into a running top-k of k + 8 candidates, whose
distances are then recomputed by direct subtraction (exact 0 for duplicates) to pick the k nearest;
so the expansion's rounding can only matter for neighbours tied to float32 precision. Memory is
bounded by chunking over queries (``lax.map``) and over data blocks (``lax.scan``), so N up to ~10⁶
fits on one device. Everything is vectorised over queries; there is no Python loop over points.

``queries=None`` makes every data point a query whose neighbours exclude itself *by index*; given
queries are new points and nothing is excluded. The names without an underscore other than
[`knn`][mmh_jax.lid.knn] (``prepare``, ``candidates``, ``refine``, ``map_chunks``, ``split_queries``, …) are
the interface ``_model_free`` builds its estimators on.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from mmh_jax import _checks, parallel

Array = jax.Array

#: Floats one chunk's largest intermediate may hold (16 MiB); sets the automatic chunk sizes.
_BUDGET = 1 << 22
#: The same on CPU (4 MiB): there the chunk's intermediates (the distance block before its top-k,
#: the gathered neighbourhoods) are best kept in cache.
_BUDGET_CPU = 1 << 20
#: Data points per block of the search when N is larger (a running top-k merges the blocks).
BLOCK = 16384
#: Extra candidates of the expansion-based search, re-ranked by exact distances.
MARGIN = 8
_HIGHEST = lax.Precision.HIGHEST


# ----------------------------------------------------------------------------- input checks


def prepare(data, queries, k: int, *, k_min: int):
    """Validate inputs; return float32 ``data``, ``queries``, query indices, ``exclude_self``."""
    data = _checks.float_array("data", data, ndim=2)
    n, dim = data.shape
    if n == 0 or dim == 0:
        raise ValueError(f"data must be a non-empty (N, D) array, got shape {data.shape}.")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"k must be a Python int (number of neighbours), got {k!r}.")
    k = int(k)
    if k < k_min:
        raise ValueError(f"k must be >= {k_min} for this estimator, got k={k}; use more neighbours.")
    _check_finite("data", data)
    data = data.astype(jnp.float32)
    if queries is None:
        if k > n - 1:
            raise ValueError(
                f"k must be <= N - 1 = {n - 1} when queries is None (each point's neighbours "
                f"exclude itself), got k={k}; lower k or pass more data."
            )
        return data, data, jnp.arange(n, dtype=jnp.int32), k, True
    queries = _checks.float_array("queries", queries, ndim=2)
    if queries.shape[1] != dim:
        raise ValueError(
            f"queries must have the data's dimension D = {dim}, got shape {queries.shape}; "
            "pass queries of shape (M, D)."
        )
    if k > n:
        raise ValueError(
            f"k must be <= N = {n} (the number of data points) for external queries, got k={k}; "
            "lower k or pass more data."
        )
    _check_finite("queries", queries)
    m = queries.shape[0]
    return data, queries.astype(jnp.float32), jnp.full((m,), -1, jnp.int32), k, False


def _check_finite(name: str, x: Array) -> None:
    if _checks.is_concrete(x):
        bad = int(jnp.size(x) - jnp.count_nonzero(jnp.isfinite(x)))
        if bad:
            raise ValueError(
                f"{name} contains {bad} non-finite value(s) (NaN or inf); remove or impute those rows."
            )


def chunk_length(m: int, per_query: int, chunk_size: int | None) -> int:
    """Queries per chunk: the user's ``chunk_size`` or the budget, balanced so padding is small."""
    if chunk_size is not None:
        c = _checks.positive_int("chunk_size", chunk_size)
    else:
        budget = _BUDGET_CPU if jax.default_backend() == "cpu" else _BUDGET
        c = max(1, budget // max(1, per_query))
    c = max(1, min(c, m))
    n_chunks = -(-m // c)
    return -(-m // n_chunks)


# ----------------------------------------------------------------------------- chunking


def map_chunks(fn, xs, chunk: int):
    """``fn`` over the leading axis of the pytree ``xs`` in chunks of ``chunk`` (zero-padded)."""
    m = jax.tree_util.tree_leaves(xs)[0].shape[0]
    n_chunks = -(-m // chunk)
    if n_chunks == 1:
        return fn(xs)
    pad = n_chunks * chunk - m

    def split(a):
        a = jnp.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1))
        return a.reshape((n_chunks, chunk) + a.shape[1:])

    out = lax.map(fn, jax.tree_util.tree_map(split, xs))
    return jax.tree_util.tree_map(lambda a: a.reshape((n_chunks * chunk,) + a.shape[2:])[:m], out)


# ----------------------------------------------------------------------------- search


def _sq_dists(q: Array, q_sq: Array, x: Array, x_sq: Array) -> Array:
    """‖q_i − x_j‖² = ‖q_i‖² + ‖x_j‖² − 2 q_i·x_j, clipped at 0. (B, D), (n, D) -> (B, n)."""
    cross = jnp.matmul(q, x.T, precision=_HIGHEST)
    return jnp.maximum(q_sq[:, None] + x_sq[None, :] - 2.0 * cross, 0.0)


def _search(data, queries, qidx, *, k: int, chunk: int, block: int, exclude_self: bool):
    """Indices (M, k) of the k nearest data points of each query (expansion distances)."""
    n, dim = data.shape
    sq = jnp.sum(data * data, axis=1)

    if n <= block:

        def one_chunk(args):
            q, qi = args
            d2 = _sq_dists(q, jnp.sum(q * q, axis=1), data, sq)
            if exclude_self:
                d2 = jnp.where(jnp.arange(n)[None, :] == qi[:, None], jnp.inf, d2)
            return lax.top_k(-d2, k)[1].astype(jnp.int32)

        return map_chunks(one_chunk, (queries, qidx), chunk)

    n_blocks = -(-n // block)
    pad = n_blocks * block - n
    xb = jnp.pad(data, [(0, pad), (0, 0)]).reshape(n_blocks, block, dim)
    sqb = jnp.pad(sq, (0, pad), constant_values=jnp.inf).reshape(n_blocks, block)
    offsets = jnp.arange(n_blocks, dtype=jnp.int32) * block

    def one_chunk(args):
        q, qi = args
        q_sq = jnp.sum(q * q, axis=1)

        def merge(best, blk):
            x, x_sq, off = blk
            d2 = _sq_dists(q, q_sq, x, x_sq)
            cols = jnp.broadcast_to(off + jnp.arange(block, dtype=jnp.int32)[None, :], d2.shape)
            if exclude_self:
                d2 = jnp.where(cols == qi[:, None], jnp.inf, d2)
            cand_d = jnp.concatenate([best[0], d2], axis=1)  # earlier blocks first: ties -> lower index
            cand_i = jnp.concatenate([best[1], cols], axis=1)
            neg, pos = lax.top_k(-cand_d, k)
            return (-neg, jnp.take_along_axis(cand_i, pos, axis=1)), None

        init = (jnp.full((q.shape[0], k), jnp.inf), jnp.zeros((q.shape[0], k), jnp.int32))
        (_, idx), _ = lax.scan(merge, init, (xb, sqb, offsets))
        return idx

    return map_chunks(one_chunk, (queries, qidx), chunk)


def candidates(data, queries, qidx, *, k, chunk, block, exclude_self):
    """Indices (M, k + margin) of candidate neighbours, searched on mean-centred coordinates.

    Centring shrinks ‖q‖² + ‖x‖² relative to ‖q − x‖², i.e. the expansion's rounding error; the
    ``MARGIN`` extra candidates let `refine` fix the order at the k-th place exactly.
    """
    avail = data.shape[0] - 1 if exclude_self else data.shape[0]
    mu = jnp.mean(data, axis=0, keepdims=True)
    return _search(
        data - mu, queries - mu, qidx, k=min(k + MARGIN, avail), chunk=chunk, block=block,
        exclude_self=exclude_self,
    )


def gather_rows(data: Array, idx: Array) -> Array:
    """``data[idx]`` for in-range indices: ``mode="clip"`` skips the wrap-around of negative indices
    that plain indexing adds to every element (a faster gather on CPU)."""
    return data.at[idx].get(mode="clip")


def _keep_nearest(dist: Array, k: int) -> Array:
    """Positions (B, k) of the k smallest of ``dist`` (B, c), c − k small, in no particular order.

    The same set as ``lax.top_k(-dist, k)`` (ties at the k-th place keep the earlier position), but
    cheaper: instead of that top-k (a heap of k per row) only the m = c − k largest are found (a heap
    of m), and each of them that sits among the first k positions is replaced by a kept one of the
    last m positions: (B, k, m) comparisons.
    """
    c = dist.shape[1]
    m = c - k
    drop = (c - 1) - lax.top_k(dist[:, ::-1], m)[1]  # the m largest; ties: the later position
    tail = k + jnp.arange(m, dtype=drop.dtype)
    hole = drop < k  # (B, m): dropped positions to refill
    tail_kept = ~jnp.any(drop[:, None, :] == tail[None, :, None], axis=2)  # (B, m), as many as holes
    before = jnp.tril(jnp.ones((m, m), bool), -1)[None]  # before[0, i, j] = j < i
    hole_rank = jnp.sum(hole[:, None, :] & before, axis=2)
    tail_rank = jnp.sum(tail_kept[:, None, :] & before, axis=2)
    pair = tail_kept[:, None, :] & (tail_rank[:, None, :] == hole_rank[:, :, None])  # (B, hole, tail)
    fill = jnp.sum(jnp.where(pair, tail[None, None, :], 0), axis=2)  # the tail position of each hole
    pos = jnp.arange(k, dtype=drop.dtype)
    at = (pos[None, :, None] == drop[:, None, :]) & hole[:, None, :]  # (B, k, m)
    return jnp.where(jnp.any(at, axis=2), jnp.sum(jnp.where(at, fill[:, None, :], 0), axis=2), pos[None, :])


def refine(q: Array, data: Array, cand: Array, k: int, *, sort: bool):
    """Exact distances ‖q − x‖ of the candidates (direct subtraction, 0 for duplicates); the k nearest.

    (B, D), (N, D), (B, c) -> dist (B, k), idx (B, k); ascending if ``sort`` (ties: the earlier
    candidate, i.e. the lower index for duplicates), otherwise the same set in any order.
    """
    dist = jnp.sqrt(jnp.sum((gather_rows(data, cand) - q[:, None, :]) ** 2, axis=2))
    if cand.shape[1] == k and not sort:
        return dist, cand
    if sort:
        neg, pos = lax.top_k(-dist, k)
        return -neg, jnp.take_along_axis(cand, pos, axis=1)
    pos = _keep_nearest(dist, k)
    return jnp.take_along_axis(dist, pos, axis=1), jnp.take_along_axis(cand, pos, axis=1)


@functools.partial(jax.jit, static_argnames=("k", "chunk_search", "chunk_local", "block", "exclude_self"))
def _knn_jit(data, queries, qidx, *, k, chunk_search, chunk_local, block, exclude_self):
    cand = candidates(data, queries, qidx, k=k, chunk=chunk_search, block=block, exclude_self=exclude_self)
    return map_chunks(lambda a: refine(a[0], data, a[1], k, sort=True), (queries, cand), chunk_local)


def knn(data, *, k: int, queries=None, chunk_size: int | None = None, block_size: int | None = None,
        mesh=None):
    """Exact k nearest neighbours (Euclidean) of queries among data, in JAX.

    The k + 8 best candidates by ‖q‖² + ‖x‖² − 2q·x (mean-centred, clipped at 0) are re-ranked by
    ‖q − x‖ computed by direct subtraction, so distances are exact float32 (duplicates at exactly
    0) and the order is exact up to float32 ties; tied duplicates keep the lower data index first.
    Memory is bounded by chunking over queries and over blocks of data points.

    Args:
      data: (N, D) floating point.
      k: number of neighbours, 1 ≤ k ≤ N − 1 (queries None) or ≤ N (external queries).
      queries: (M, D) or None. None = every data point, excluding itself *by index* (a duplicate
        of it is still a neighbour, at distance 0).
      chunk_size: queries per chunk (default: from a budget per intermediate, 4 MiB on CPU, 16 MiB
        on accelerators).
      block_size: data points per block of the search (default 16384; N ≤ block is one block).
      mesh: a one-axis `jax.sharding.Mesh` of this process's devices
        ([`mmh_jax.parallel.make_mesh`][mmh_jax.parallel.make_mesh]) to split the queries over, each device
        holding the whole data set (default None: one device). Results equal those without a mesh up to
        float32 rounding (the per-device chunks have other shapes). On a CPU host, as many CPU
        devices as cores (``jax_num_cpu_devices``) and a mesh over them keep every core busy.

    Returns:
      ``(distances, indices)``: float32 (M, k) ascending, int32 (M, k).

    Raises:
      TypeError: integer dtype, non-int k, a mesh that is not a Mesh. ValueError: data not 2-D or
        empty, NaN/inf values, k out of range, queries of another dimension, a mesh with more than one
        axis or with other processes' devices.

    Examples:
      >>> import jax.numpy as jnp
      >>> d, i = knn(jnp.array([[0.0], [1.0], [3.0]]), k=1)
      >>> i.ravel().tolist(), d.ravel().tolist()
      ([1, 0, 1], [1.0, 1.0, 2.0])
    """
    data, queries, qidx, k, exclude = prepare(data, queries, k, k_min=1)
    n, dim = data.shape
    m = queries.shape[0]
    block = BLOCK if block_size is None else _checks.positive_int("block_size", block_size)
    if m == 0:
        return jnp.zeros((0, k), jnp.float32), jnp.zeros((0, k), jnp.int32)
    per = -(-m // mesh_size(mesh))
    statics = dict(
        k=k,
        chunk_search=chunk_length(per, min(n, block) + k, chunk_size),
        chunk_local=chunk_length(per, (k + MARGIN) * dim, chunk_size),
        block=block,
        exclude_self=exclude,
    )
    return split_queries(_knn_jit, statics, mesh, data, queries, qidx)


# ----------------------------------------------------------------------------- queries over devices


def mesh_size(mesh) -> int:
    """Devices the queries are split over (1 without a mesh); checks the mesh."""
    if mesh is None:
        return 1
    if not isinstance(mesh, jax.sharding.Mesh):
        raise TypeError(f"mesh must be a jax.sharding.Mesh (mmh_jax.parallel.make_mesh()) or None, got {mesh!r}.")
    parallel.check_mesh(mesh)  # one axis
    if any(d.process_index != jax.process_index() for d in mesh.devices.flat):
        raise ValueError("mesh must hold only this process's devices (every device needs the whole data set); "
                         "on several hosts, give each process its own queries and a mesh of its local devices: "
                         "mmh_jax.parallel.make_mesh(jax.local_devices()).")
    return mesh.size


def split_queries(fn, statics: dict, mesh, data, queries, qidx, *rest):
    """``fn(data, queries, qidx, *rest, **statics)``, the queries split evenly over ``mesh``'s devices.

    Every device holds the whole data set and runs ``fn`` on its block of queries (padded with
    copies of the first query, dropped afterwards).
    """
    parts = mesh_size(mesh)
    if parts == 1:
        return fn(data, queries, qidx, *rest, **statics)
    m = queries.shape[0]
    queries, qidx = parallel.pad_points((queries, qidx), m, -(-m // parts) * parts)
    out = _sharded(fn, tuple(sorted(statics.items())), mesh, len(rest))(data, queries, qidx, *rest)
    return jax.tree_util.tree_map(lambda o: o[:m], out)


@functools.lru_cache(maxsize=64)
def _sharded(fn, statics: tuple, mesh, n_rest: int):
    """The jitted ``shard_map`` of ``fn`` with ``statics`` bound: queries and their indices split over
    the mesh axis, data and the ``n_rest`` further arguments whole on every device."""
    rows, whole = jax.sharding.PartitionSpec(mesh.axis_names[0]), jax.sharding.PartitionSpec()
    bound = functools.partial(fn, **dict(statics))
    return jax.jit(jax.shard_map(bound, mesh=mesh, in_specs=(whole, rows, rows) + (whole,) * n_rest,
                                 out_specs=rows, check_vma=False))
