"""Wall time of FLIPD over a batch: one device vs all devices with mmh_jax.parallel.map_points.

``python examples/parallel_speedup.py [--cpu-devices 4] [--n 2048] [--dim 64]`` prints the compile
time and the fastest of ``--repeats`` interleaved runs (``jax.block_until_ready``) for each mesh,
and their ratio.
On CPUs ``--cpu-devices`` emulates devices (set before JAX starts); with fewer cores than
emulated devices expect little gain: XLA:CPU already spreads one device's work over the cores.
"""

from __future__ import annotations

import argparse
import time


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu-devices", type=int, default=4)
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--trace", default="hutchinson", choices=["exact", "hutchinson"])
    args = ap.parse_args(argv)

    import jax

    jax.config.update("jax_num_cpu_devices", args.cpu_devices)
    import jax.numpy as jnp
    import numpy as np

    from mmh_jax import lid, parallel
    from mmh_jax.sde import VPSDE

    vp = VPSDE()
    k1, k2, k3, k4 = jax.random.split(jax.random.key(0), 4)
    w1 = jax.random.normal(k1, (args.dim + 1, args.width)) / np.sqrt(args.dim + 1)
    w2 = jax.random.normal(k2, (args.width, args.dim)) / np.sqrt(args.width)
    params = (w1, w2)
    xs = jax.random.normal(k3, (args.n, args.dim))
    keys = jax.random.split(k4, args.n)

    def point(p, x, key):
        score = lambda y, t: jnp.tanh(jnp.concatenate([y, t[None]]) @ p[0]) @ p[1] - y  # noqa: E731
        return lid.flipd(score, x, key, t0=0.05, sde=vp, trace=args.trace, num_probes=4)

    def build(mesh):
        f = jax.jit(lambda p, a, k: parallel.map_points(lambda x, kk: point(p, x, kk), a, k,
                                                        batch_size=args.batch_size, mesh=mesh))
        t = time.perf_counter()
        compiled = f.lower(params, xs, keys).compile()
        return compiled, time.perf_counter() - t, np.asarray(compiled(params, xs, keys))

    (f1, c1, o1), (fn, cn, on) = build(parallel.make_mesh(jax.devices()[:1])), build(parallel.make_mesh())
    assert np.allclose(o1, on, rtol=1e-5, atol=1e-5), "sharded result differs from one device"
    runs1, runsn = [], []
    for _ in range(args.repeats):  # interleaved, so both see the same machine load
        for f, runs in ((f1, runs1), (fn, runsn)):
            t = time.perf_counter()
            jax.block_until_ready(f(params, xs, keys))
            runs.append(time.perf_counter() - t)
    t1, tn = min(runs1), min(runsn)  # the least disturbed run of each
    nd = jax.device_count()
    print(f"FLIPD ({args.trace}, 4 probes), N={args.n}, D={args.dim}, batch_size={args.batch_size}")
    print(f"1 device : compile {c1:.2f} s, run {t1 * 1e3:.1f} ms ({args.n / t1:.0f} points/s)")
    print(f"{nd} devices: compile {cn:.2f} s, run {tn * 1e3:.1f} ms ({args.n / tn:.0f} points/s)")
    print(f"speed-up (1-device time / {nd}-device time): {t1 / tn:.2f} (fastest runs; medians "
          f"{np.median(runs1) * 1e3:.1f} / {np.median(runsn) * 1e3:.1f} ms)")


if __name__ == "__main__":
    main()
