"""One process of a two-process run on 127.0.0.1 (used by tests/test_multihost.py).

``python tests/multihost_worker.py PROCESS_ID NUM_PROCESSES PORT MODE OUT``: joins the run through
[`mmh_jax.parallel.initialize`][mmh_jax.parallel.initialize] with 2 emulated CPU devices (gloo collectives),
maps FLIPD over its own share of `points` with
[`mmh_jax.parallel.map_points_global`][mmh_jax.parallel.map_points_global] and writes the
gathered and the local results to ``OUT`` (an ``.npz``). ``MODE="loop"`` repeats the map until
killed, printing ``iteration K`` after each.
"""

from __future__ import annotations

N_POINTS = 11
DIM = 3


def points():
    """All processes' points and keys (every process builds all, then keeps its own share)."""
    import jax

    xs = jax.random.normal(jax.random.key(1), (N_POINTS, DIM))
    keys = jax.random.split(jax.random.key(2), N_POINTS)
    return xs, keys


def share(process_id: int, num_processes: int) -> slice:
    """Uneven contiguous shares: process 0 gets the extra points."""
    bounds = [round(i * N_POINTS / num_processes + 0.49) for i in range(num_processes + 1)]
    return slice(bounds[process_id], bounds[process_id + 1])


def point_fn(x, key):
    """FLIPD (Hutchinson, 2 probes) of a fixed non-linear score field, and a second output."""
    import jax.numpy as jnp

    from mmh_jax import lid
    from mmh_jax.sde import VPSDE

    w = jnp.arange(DIM * DIM, dtype=jnp.float32).reshape(DIM, DIM) / DIM**2
    score = lambda y, t: -jnp.tanh(y @ w) - y  # noqa: E731
    return lid.flipd(score, x, key, t0=0.05, sde=VPSDE(), trace="hutchinson", num_probes=2), 2 * x


def main(argv) -> None:
    import jax

    process_id, num_processes, port, mode, out = int(argv[1]), int(argv[2]), int(argv[3]), argv[4], argv[5]
    jax.config.update("jax_num_cpu_devices", 2)
    from mmh_jax import parallel

    info = parallel.initialize(
        f"127.0.0.1:{port}", num_processes, process_id, initialization_timeout=60, heartbeat_timeout_seconds=5
    )
    print("joined", tuple(info), flush=True)
    import numpy as np

    xs, keys = points()
    mine = share(process_id, num_processes)
    gathered = parallel.map_points_global(point_fn, xs[mine], keys[mine], batch_size=2)
    local = parallel.map_points_global(point_fn, xs[mine], keys[mine], batch_size=2, gather=False)
    np.savez(out, flipd=gathered[0], twice=gathered[1], local_flipd=local[0], local_twice=local[1])
    print("wrote", out, flush=True)
    k = 0
    while mode == "loop":
        parallel.map_points_global(point_fn, xs[mine], keys[mine], batch_size=2)
        k += 1
        print("iteration", k, flush=True)


if __name__ == "__main__":
    import sys

    main(sys.argv)
