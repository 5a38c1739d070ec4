"""FLIPD throughput: JAX (Hutchinson, exact) against the network's forward pass and against PyTorch.

    python bench/bench_flipd.py [--quick] [--out DIR] [--batch 1024] [--repeats N]

Network: ``ScoreMLP`` (ε-prediction), D = 64, three hidden Dense(512) + SiLU layers, a 128-dim
sinusoidal time embedding entering the first layer (a Dense of [x, emb(t)], written as
Dense(x) + Dense(emb)); batch 1024, t₀ = 0.05, float32. Rows:

- ``forward``: the network's batched forward pass at y = α(t₀)x — the baseline;
- ``flipd_hutchinson``: FLIPD with one Rademacher probe per point (one JVP);
- ``flipd_exact``: FLIPD with the exact trace (D JVPs per point);
- ``flipd_exact_batched`` (when ``--point-batch`` < ``--batch``): the same, ``--point-batch`` points
  at a time (``lax.map(..., batch_size=...)``, as ``parallel.map_points(batch_size=...)`` does; a
  Python loop over slices in torch). Bounding the working set avoids re-faulting hundreds of MB of
  fresh temporaries on every call, which costs both frameworks a noticeable share of their time.

Every JAX function is jitted once with the parameters as an argument (not closed over) and vmaps
the single-example ``lid.flipd``. When PyTorch is importable (the ``bench`` extra) the same network
is rebuilt in PyTorch with identical weights, and FLIPD is written the straightforward torch.func
way: ``torch.func.jvp`` on the batched network for Hutchinson (same probes as JAX), and
``torch.func.vmap(torch.func.jacfwd(...))`` — i.e. a vmap of JVPs over the D basis vectors — for
the exact trace. Outputs are checked against JAX before anything is timed.

Timing (``bench._common``): each function is compiled (JAX; ``compile_s``) or called (torch; its
first call) once, then all rows are timed together in ``--repeats`` interleaved rounds, so they
share the same background load. Throughput and ratios use median wall times; the ``*_best`` ratios
use the fastest call, and ``cpu_median_s`` is the process CPU time per call.

Threads: XLA's CPU client uses one intra-op thread per core unless ``XLA_FLAGS`` says otherwise
(``intra_op_parallelism_threads=N`` / ``--xla_cpu_multi_thread_eigen=false``); torch gets the same
count, except that ``--torch-threads auto`` (default) falls back to 1 thread when a forward-pass
probe shows that to be faster — on a loaded machine OpenMP oversubscription can slow torch tenfold,
and the baseline should be torch at its best. No XLA flag is set here; run e.g.
``XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"`` for a
single-threaded comparison. The environment (XLA_FLAGS, threads, versions) goes into the results.

Results: a markdown table on stdout and ``{out}/bench_flipd.{json,md}`` (default ``bench/results``).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``bench`` and ``mmh_jax`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax
import jax.numpy as jnp
import numpy as np

from bench._common import DEFAULT_OUT, env_info, finish, prepare, time_many
from mmh_jax import lid
from mmh_jax.lid._trace import rademacher_probes
from mmh_jax.models import ScoreMLP, as_eps_fn, as_score_fn
from mmh_jax.sde import VPSDE

NAME = "bench_flipd"
METHODS = ("forward", "flipd_hutchinson", "flipd_exact")  # always reported
BATCHED = "flipd_exact_batched"  # reported when --point-batch < --batch
#: Issue targets: throughput ratios that the JAX implementation should reach.
TARGETS = {
    "hutchinson_vs_forward": 0.4,
    "hutchinson_jax_vs_torch": 2.0,
    "exact_jax_vs_torch": 2.0,
}
COLUMNS = ["impl", "method", "points_per_s", "median_s", "min_s", "cpu_median_s", "compile_s",
           "vs_forward", "jax_vs_torch"]


def pick_torch_threads(torch, fn, args, candidates) -> tuple[int, dict]:
    """The thread count in ``candidates`` with the fastest ``fn(*args)`` (min of 3), and all timings."""
    probe = {}
    for n in dict.fromkeys(candidates):
        torch.set_num_threads(n)
        fn(*args)
        times = []
        for _ in range(3):
            t = time.perf_counter()
            fn(*args)
            times.append(time.perf_counter() - t)
        probe[n] = min(times)
    best = min(probe, key=probe.get)
    torch.set_num_threads(best)
    return best, probe


def jax_cpu_threads() -> int:
    """Intra-op threads of XLA's CPU client, as set by ``XLA_FLAGS`` (default: one per core)."""
    flags = os.environ.get("XLA_FLAGS", "")
    m = re.search(r"intra_op_parallelism_threads=(\d+)", flags)
    if m:
        return max(1, int(m.group(1)))
    if re.search(r"xla_cpu_multi_thread_eigen=(false|0)", flags):
        return 1
    return num_cores()


def num_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small batch and few repeats (smoke run)")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="output directory for JSON + markdown")
    p.add_argument("--batch", type=int, default=None, help="points per call (default 1024; 64 with --quick)")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed calls per row (default 10; 2 with --quick)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls after the first one")
    p.add_argument("--dim", type=int, default=64, help="ambient dimension D")
    p.add_argument("--hidden", type=int, default=512, help="hidden width")
    p.add_argument("--layers", type=int, default=3, help="number of hidden layers")
    p.add_argument("--embed", type=int, default=128, help="time-embedding dimension")
    p.add_argument("--t0", type=float, default=0.05, help="FLIPD time")
    p.add_argument("--chunk-size", type=int, default=None, help="exact-trace chunk (default: library's)")
    p.add_argument("--point-batch", type=int, default=128,
                   help="points per lax.map step for the flipd_exact_batched row (0: no such row)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch baseline")
    p.add_argument("--torch-threads", default="auto",
                   help="PyTorch intra-op threads: an int, or 'auto' = the faster of {JAX's thread "
                        "count, 1} on a forward-pass probe (default; guards against OpenMP "
                        "oversubscription on a loaded machine, which can slow torch tenfold)")
    args = p.parse_args(argv)
    if args.batch is None:
        args.batch = 64 if args.quick else 1024
    if args.repeats is None:
        args.repeats = 2 if args.quick else 10
    if args.quick:
        args.warmup = min(args.warmup, 1)
    return args


# ----------------------------------------------------------------------------------------- JAX


def jax_functions(model: ScoreMLP, vp: VPSDE, *, chunk_size, point_batch=None):
    """The jitted batch functions, each ``f(params, xs, keys, t0) -> (B, ...)``."""

    def forward(params, xs, keys, t0):
        alpha = vp.marginal_coefs(t0)[0]
        eps_fn = as_eps_fn(model.apply, params)
        return jax.vmap(lambda x: eps_fn(alpha * x, t0))(xs)

    def flipd_with(trace, batch_size=None):
        def run(params, xs, keys, t0):
            score_fn = as_score_fn(model.apply, params, vp)
            one = lambda x, k: lid.flipd(  # noqa: E731
                score_fn, x, k, t0=t0, sde=vp, trace=trace, num_probes=1, chunk_size=chunk_size
            )
            if batch_size is None:
                return jax.vmap(one)(xs, keys)
            return jax.lax.map(lambda a: one(*a), (xs, keys), batch_size=batch_size)

        return run

    fns = {
        "forward": jax.jit(forward),
        "flipd_hutchinson": jax.jit(flipd_with("hutchinson")),
        "flipd_exact": jax.jit(flipd_with("exact")),
    }
    if point_batch:
        fns[BATCHED] = jax.jit(flipd_with("exact", point_batch))
    return fns


# --------------------------------------------------------------------------------------- torch


def torch_functions(params, *, dim: int, hidden: int, layers: int, embed: int, t0: float, vp: VPSDE,
                    point_batch=None):
    """The same network and FLIPD in PyTorch, written the straightforward torch.func way.

    Returns ``(fns, torch)``: ``fns[method](xs, probes) -> tensor`` on float32 CPU tensors.
    """
    import torch
    from torch import func as tf

    alpha, sigma = (float(v) for v in vp.marginal_coefs(jnp.float32(t0)))
    p = jax.tree.map(lambda a: np.array(a, np.float32), params)["params"]  # writable copies

    class TorchScoreMLP(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.time = torch.nn.Linear(embed, hidden, bias=False)
            self.hidden = torch.nn.ModuleList(
                [torch.nn.Linear(dim if i == 0 else hidden, hidden) for i in range(layers)]
            )
            self.out = torch.nn.Linear(hidden, dim)
            half = embed // 2
            freqs = np.exp(-np.log(10000.0) * np.arange(half, dtype=np.float32) / half).astype(np.float32)
            self.register_buffer("freqs", torch.from_numpy(freqs))

        def forward(self, x, t):  # x (..., D), t (...) or scalar
            a = (1000.0 * t)[..., None] * self.freqs
            emb = torch.cat([torch.sin(a), torch.cos(a)], dim=-1)
            h = torch.nn.functional.silu(self.hidden[0](x) + self.time(emb))
            for lin in self.hidden[1:]:
                h = torch.nn.functional.silu(lin(h))
            return self.out(h)

    net = TorchScoreMLP().eval()
    with torch.no_grad():
        for i, lin in enumerate(net.hidden):
            lin.weight.copy_(torch.from_numpy(p[f"hidden_{i}"]["kernel"].T))
            lin.bias.copy_(torch.from_numpy(p[f"hidden_{i}"]["bias"]))
        net.time.weight.copy_(torch.from_numpy(p["time_0"]["kernel"].T))
        net.out.weight.copy_(torch.from_numpy(p["out"]["kernel"].T))
        net.out.bias.copy_(torch.from_numpy(p["out"]["bias"]))
    t = torch.tensor(t0, dtype=torch.float32)

    def score(y):  # any leading batch shape
        return -net(y, t) / sigma

    @torch.no_grad()
    def forward(xs, probes):
        return net(alpha * xs, t)

    @torch.no_grad()
    def flipd_hutchinson(xs, probes):
        # the batched network's Jacobian is block-diagonal over points: one JVP gives every J_i v_i
        s, jv = tf.jvp(score, (alpha * xs,), (probes,))
        return dim + sigma**2 * ((probes * jv).sum(-1) + (s * s).sum(-1))

    def score_aux(y):
        s = score(y)
        return s, s

    jac_one = tf.vmap(tf.jacfwd(score_aux, has_aux=True))  # vmap over points of D JVPs each

    @torch.no_grad()
    def flipd_exact(xs, probes):
        jac, s = jac_one(alpha * xs)
        return dim + sigma**2 * (torch.diagonal(jac, dim1=-2, dim2=-1).sum(-1) + (s * s).sum(-1))

    fns = {"forward": forward, "flipd_hutchinson": flipd_hutchinson, "flipd_exact": flipd_exact}
    if point_batch:
        def flipd_exact_batched(xs, probes):
            starts = range(0, len(xs), point_batch)
            return torch.cat([flipd_exact(xs[i:i + point_batch], None) for i in starts])

        fns[BATCHED] = flipd_exact_batched
    return fns, torch


# ---------------------------------------------------------------------------------------- main


def _check_close(name, got, want, *, rtol, atol) -> dict:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    err = float(np.max(np.abs(got - want)))
    tol = atol + rtol * float(np.max(np.abs(want)))
    if not err <= tol:
        raise AssertionError(f"{name}: outputs disagree, max |diff| = {err:.3g} > tol {tol:.3g}.")
    return {"max_abs_diff": err, "tol": tol}


def run(args: argparse.Namespace) -> dict:
    """Run the benchmark; returns ``{"name", "meta", "rows", "summary", "paths"}``."""
    vp = VPSDE()
    model = ScoreMLP(hidden=args.hidden, num_layers=args.layers, time_embed_dim=args.embed, skip=False)
    kp, kx, kk = jax.random.split(jax.random.key(args.seed), 3)
    params = model.init(kp, jnp.zeros(args.dim, jnp.float32), 0.5)
    xs = jax.random.normal(kx, (args.batch, args.dim), jnp.float32)
    keys = jax.random.split(kk, args.batch)
    t0 = jnp.float32(args.t0)
    names = ("batch", "dim", "hidden", "layers", "embed", "t0", "repeats", "warmup")
    cfg = {k: getattr(args, k) for k in names}
    point_batch = args.point_batch if 0 < args.point_batch < args.batch else None
    cfg.update(chunk_size=args.chunk_size, point_batch=point_batch)
    print(f"{NAME}: {cfg}", flush=True)

    # 1. JAX: compile every function once (compile time kept apart) and keep its outputs.
    calls, results = {}, {}
    for method, fn in jax_functions(model, vp, chunk_size=args.chunk_size, point_batch=point_batch).items():
        args_ = (params, xs, keys, t0)
        calls[("jax", method)] = (prepare(fn, *args_), args_)
        results[("jax", method)] = np.asarray(calls[("jax", method)][0].call(*args_))
        print(f"  jax   {method:19s} compiled in {calls[('jax', method)][0].compile_s:.2f}s", flush=True)

    checks, torch_meta = {}, {"torch": None}
    if point_batch:  # same values whether the points are vmapped at once or mapped in batches
        checks["jax_batched_vs_vmap"] = _check_close(
            BATCHED, results[("jax", BATCHED)], results[("jax", "flipd_exact")], rtol=1e-6, atol=1e-4)

    # 2. PyTorch: identical weights and probes; outputs must match JAX before anything is timed.
    use_torch = not args.no_torch
    if use_torch:
        try:
            import torch  # noqa: F401
        except ImportError:
            use_torch = False
            torch_meta["torch"] = "not importable (install the 'bench' extra)"
    if use_torch:
        fns, torch = torch_functions(params, dim=args.dim, hidden=args.hidden, layers=args.layers,
                                     embed=args.embed, t0=args.t0, vp=vp, point_batch=point_batch)
        probes = jax.vmap(lambda k: rademacher_probes(k, (args.dim,), 1)[0])(keys)
        txs, tprobes = torch.from_numpy(np.array(xs)), torch.from_numpy(np.array(probes))
        if args.torch_threads == "auto":
            threads, probe = pick_torch_threads(torch, fns["forward"], (txs, tprobes), [jax_cpu_threads(), 1])
        else:
            threads, probe = int(args.torch_threads), {}
            torch.set_num_threads(threads)
        torch_meta = {"torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                      "torch_thread_probe_s": probe}
        print(f"  torch threads: {threads} (forward probe, s: {probe})", flush=True)
        # (network outputs to ~1e-5; FLIPD values, of size ~D, to 1e-3 absolute)
        tol = {"forward": (1e-5, 1e-5), "flipd_hutchinson": (1e-5, 1e-3), "flipd_exact": (1e-5, 1e-3)}
        tol[BATCHED] = tol["flipd_exact"]
        for method, fn in fns.items():
            prepared = prepare(fn, txs, tprobes)
            out = prepared.call(txs, tprobes).numpy()
            checks[method] = _check_close(method, out, results[("jax", method)], rtol=tol[method][0],
                                          atol=tol[method][1])
            calls[("torch", method)] = (prepared, (txs, tprobes))
        diffs = ", ".join(f"{k} {v['max_abs_diff']:.2g}" for k, v in checks.items())
        print(f"  outputs match (max |diff|: {diffs})", flush=True)

    # 3. Time everything interleaved (round-robin), so every row sees the same background load.
    print(f"  timing {len(calls)} functions, {args.repeats} interleaved rounds ...", flush=True)
    stats = time_many(calls, repeats=args.repeats, warmup=args.warmup)
    rows = [{"impl": impl, "method": method, "points_per_s": args.batch / st["median_s"], **st}
            for (impl, method), st in stats.items()]

    thr = {(r["impl"], r["method"]): r["points_per_s"] for r in rows}
    for r in rows:
        r["vs_forward"] = r["points_per_s"] / thr[(r["impl"], "forward")]
        if r["impl"] == "jax" and ("torch", r["method"]) in thr:
            r["jax_vs_torch"] = r["points_per_s"] / thr[("torch", r["method"])]

    # Throughput ratios from median times (the headline) and from the fastest call (``*_best``:
    # less sensitive to other processes on a shared machine).
    med = {(r["impl"], r["method"]): r["median_s"] for r in rows}
    best = {(r["impl"], r["method"]): r["min_s"] for r in rows}
    pairs = {"hutchinson_vs_forward": (("jax", "flipd_hutchinson"), ("jax", "forward"))}
    if use_torch:
        pairs.update({
            "hutchinson_jax_vs_torch": (("jax", "flipd_hutchinson"), ("torch", "flipd_hutchinson")),
            "exact_jax_vs_torch": (("jax", "flipd_exact"), ("torch", "flipd_exact")),
            "forward_jax_vs_torch": (("jax", "forward"), ("torch", "forward")),
        })
        if point_batch:
            pairs["exact_batched_jax_vs_torch"] = (("jax", BATCHED), ("torch", BATCHED))
    summary = {}
    for k, (num, den) in pairs.items():
        summary[k] = med[den] / med[num]
        summary[f"{k}_best"] = best[den] / best[num]
    summary["targets"] = {
        k: {"target": v, "value": summary.get(k), "met": summary[k] >= v if k in summary else None}
        for k, v in TARGETS.items()
    }

    meta = env_info(config=cfg, cores=num_cores(), jax_threads=jax_cpu_threads(), checks=checks, **torch_meta)
    return finish(NAME, rows, args.out, meta=meta, columns=COLUMNS, summary=summary)


def main(argv=None) -> dict:
    return run(parse_args(argv))


if __name__ == "__main__":
    main()
