"""Memory of FLIPD (Hutchinson) on a U-Net at image scale: bounded by the chunk, not by N or P.

    python bench/bench_memory.py [--sizes 32 64] [--out DIR]

For a U-Net (32 channels, mults 1-2-2, no attention) on H×H×3 images, each setting is compiled
(not run) and XLA's buffer assignment of the program is read: ``temp_mb`` =
``memory_analysis().temp_size_in_bytes``, the scratch memory beyond inputs and outputs — on a GPU
the same program's peak use. Settings:

- P Hutchinson probes at once (``chunk_size=None``) against P probes in chunks of 2;
- N points in ``map_points`` batches of 4 (N = 8 vs 64);
- the gradient of FLIPD with respect to x (LID guidance, regularisers), with and without
  ``jax.checkpoint`` around the score (rematerialisation).
"""

from __future__ import annotations

import argparse
import time

if __package__ in (None, ""):
    import os
    import sys

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp

from bench._common import DEFAULT_OUT, env_info, finish
from mmh_jax import lid, parallel
from mmh_jax.models import as_score_fn
from mmh_jax.models.unet import UNet
from mmh_jax.sde import VPSDE

NAME = "bench_memory"
COLUMNS = ("image", "setting", "probes", "chunk", "points", "temp_mb", "compile_s")


def _temp(fn, *args) -> tuple[float, float]:
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    return compiled.memory_analysis().temp_size_in_bytes / 2**20, time.perf_counter() - t0


def measure(size: int) -> list[dict]:
    shape, vp, key = (size, size, 3), VPSDE(), jax.random.key(0)
    net = UNet(channels=32, channel_mults=(1, 2, 2), attention=False)
    params = net.init(key, jnp.zeros(shape), 0.5)
    score = as_score_fn(net.apply, params, vp)
    x = jnp.zeros(shape)
    rows = []

    def row(setting, probes, chunk, points, fn, *args):
        mb, s = _temp(fn, *args)
        rows.append({"image": f"{size}x{size}x3", "setting": setting, "probes": probes, "chunk": chunk,
                     "points": points, "temp_mb": mb, "compile_s": s})
        print(f"{size}: {setting} P={probes} chunk={chunk} N={points}: {mb:.1f} MiB", flush=True)

    for p, c in ((1, None), (8, None), (8, 2), (32, 2)):
        row("probes", p, c, 1, lambda x, k, p=p, c=c: lid.flipd(score, x, k, t0=0.1, sde=vp, trace="hutchinson",
                                                                 num_probes=p, chunk_size=c), x, key)
    single = lambda x, k: lid.flipd(score, x, k, t0=0.1, sde=vp, trace="hutchinson")  # noqa: E731
    mesh = parallel.make_mesh(jax.devices()[:1])
    for n in (8, 64):
        xs, keys = jnp.zeros((n, *shape)), jax.random.split(key, n)
        row("points, batches of 4", 1, None, n,
            lambda xs, ks: parallel.map_points(single, xs, ks, batch_size=4, mesh=mesh), xs, keys)
    remat_score = jax.checkpoint(score)
    for name, s in (("grad_x", score), ("grad_x + jax.checkpoint", remat_score)):
        row(name, 1, None, 1, jax.grad(lambda x, k, s=s: lid.flipd(s, x, k, t0=0.1, sde=vp, trace="hutchinson")),
            x, key)
    return rows


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 64], help="image sizes H (H×H×3)")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="results directory (default bench/results)")
    args = p.parse_args(argv)
    rows = [r for size in args.sizes for r in measure(size)]
    return finish(NAME, rows, args.out, meta=env_info(sizes=args.sizes), columns=COLUMNS, summary={})


if __name__ == "__main__":
    main()
