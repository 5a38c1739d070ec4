"""Model-free LID* estimators: mmh_jax (JAX) against scikit-dimension, in one process.

    python bench/bench_model_free.py [--quick] [--no-scaling] [--out DIR] [--repeats N]

Data: N = 5000 points of a standard Gaussian on a random 10-dim affine subspace of R^100 (float32),
k = 100 neighbours. For each of lpca, mle, twonn, ess:

- ours: the estimator jitted once (``jax.jit(lambda x: lid.mle(x, k=k))``), compile time reported
  separately, one untimed run, then the median of ``--repeats`` calls under
  ``jax.block_until_ready``; the estimates come from the same executable. Twice: on one device
  (``ours_s``), and with the queries split over a mesh of ``--cpu-devices`` CPU devices
  (``mesh=parallel.make_mesh()``, ``ours_mesh_s``; default: one per core). XLA:CPU runs each
  device's program on its own thread, so the mesh puts the stages that run on one core within a
  device (top-k, gathers) on every core; not lPCA on CPU, whose batched LAPACK stage can deadlock
  XLA:CPU's thread pool when several CPU devices run it at once (see ``lid.lpca``). ``speedup`` is skdim over the faster of the two,
  ``speedup_one_device`` over one device;
- skdim: the wall time of one pointwise fit, including its own kNN search —
  ``lPCA().fit_pw``, ``TwoNN().fit_pw`` (``n_neighbors=k``), ``MLE().fit`` and ``ESS().fit``
  (``n_neighbors=k``, ``dimension_pw_``). ESS takes minutes in skdim, so it is timed on the
  neighbourhoods of the first ``--ess-points`` points (after skdim's kNN search of all N) and
  extrapolated linearly in the number of points; the row says so;
- agreement: fraction of identical estimates (lPCA), mean |ours − skdim| (the others).

Then (unless ``--no-scaling``) the growth of our time with N = 10³…10⁵ (D = 100) and with D
(N = 5000) for mle and lpca (see below for the large sets).

BLAS is limited to one thread for both sides (``threadpoolctl``): XLA's LAPACK calls and skdim's
numpy/scikit-learn go through the same OpenBLAS, whose threads only contend on small matrices
(one 100×100 PCA took 10× longer with threads on a busy 2-core machine). XLA's own ops keep their
thread pool (one thread per core), which this script does not limit: of our stages only the large
distance matmuls, elementwise ops and jaxlib's batched LAPACK calls (their batch is split over
that pool) use it (top-k, gathers and batched small matmuls run on one core), while skdim runs on one thread (scikit-learn's kNN with ``n_jobs=1``, its default in
skdim). So both the wall time and the process CPU time (all threads) of each side are reported:
``speedup`` is the wall-time ratio, ``cpu_speedup`` the CPU-time ratio, which does not credit our
second thread. Timings on a shared machine are noisy; the environment and the load average go into
the results.

In the growth sweep a set with N·D ≥ 10⁶ is compiled ahead of time without running (``lower`` +
``compile``) and then run once, timed; smaller sets are timed as in the comparison.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``bench`` and ``mmh_jax`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax
import numpy as np

from bench._common import DEFAULT_OUT, env_info, markdown_table, prepare, time_fn, write_results
from mmh_jax import lid, parallel

NAME = "bench_model_free"
ESTIMATORS = ("lpca", "mle", "twonn", "ess")
#: Issue targets: speed-up of ours over skdim (MLE: no slower).
TARGETS = {"lpca": 10.0, "twonn": 10.0, "ess": 50.0, "mle": 1.0}
COLUMNS = ["estimator", "N", "D", "k", "ours_s", "ours_mesh_s", "devices", "ours_compile_s", "skdim_s", "speedup",
           "speedup_one_device", "target", "ours_cpu_s", "skdim_cpu_s", "cpu_speedup", "agreement", "note"]
SCALE_COLUMNS = ["estimator", "N", "D", "k", "ours_s", "ours_compile_s", "points_per_s", "ours_cpu_s", "load_avg_1min"]


def subspace_data(n: int, dim: int, d: int, seed: int = 0) -> np.ndarray:
    """Standard Gaussian on a random d-dim affine subspace of R^dim, float32."""
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.standard_normal((dim, d)))
    x = rng.standard_normal((n, d)) @ basis.T + rng.standard_normal(dim)
    return x.astype(np.float32)


def one_blas_thread():
    """``threadpool_limits(1, "blas")`` once every OpenBLAS in use is loaded (it only limits loaded ones)."""
    import scipy.linalg  # noqa: F401  (scipy's OpenBLAS: XLA's LAPACK kernels and skdim's PCA)
    import skdim  # noqa: F401
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def ours(name: str, x: np.ndarray, k: int, repeats: int, mesh=None) -> tuple[dict, np.ndarray]:
    """Timing stats of our estimator (compile apart) and its estimates, from the same executable."""
    fn = getattr(lid, name)
    xj = jax.device_put(x)
    with one_blas_thread():
        prepared = prepare(jax.jit(lambda a: fn(a, k=k, mesh=mesh)), xj)  # compile, then one untimed run
        stats = time_fn(prepared, xj, repeats=repeats, warmup=0)
        return stats, np.asarray(prepared.call(xj))


def ours_once(name: str, x: np.ndarray, k: int) -> dict:
    """Compile without running, then one timed run (for the large sets of the growth sweep)."""
    fn = getattr(lid, name)
    xj = jax.device_put(x)
    t0 = time.perf_counter()
    compiled = jax.jit(lambda a: fn(a, k=k)).lower(xj).compile()
    compile_s = time.perf_counter() - t0
    with one_blas_thread():
        c0, t0 = time.process_time(), time.perf_counter()
        jax.block_until_ready(compiled(xj))
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"median_s": wall, "compile_s": compile_s, "cpu_median_s": cpu, "times_s": [wall]}


def skdim_pointwise(name: str, x: np.ndarray, k: int, ess_points: int) -> tuple[float, float, np.ndarray, str]:
    """(wall s, process CPU s, estimates, note); ESS on the first ``ess_points`` neighbourhoods, extrapolated."""
    with one_blas_thread():
        return _skdim_pointwise(name, x.astype(np.float64), k, ess_points)


def _clocks() -> np.ndarray:
    return np.array([time.perf_counter(), time.process_time()])


def _skdim_pointwise(name, x64, k, ess_points):
    import skdim
    from skdim._commonfuncs import get_nn

    t0 = _clocks()
    if name == "lpca":
        est = skdim.id.lPCA(ver="FO", alphaFO=0.05).fit_pw(x64, n_neighbors=k).dimension_pw_
    elif name == "twonn":
        est = skdim.id.TwoNN().fit_pw(x64, n_neighbors=k).dimension_pw_
    elif name == "mle":
        est = skdim.id.MLE().fit(x64, n_neighbors=k).dimension_pw_
    else:
        m = min(ess_points, len(x64))
        _, idx = get_nn(x64, k=k)
        t_nn = _clocks() - t0
        t1 = _clocks()
        ref = skdim.id.ESS(ver="a", d=1)
        est = np.array([ref.fit_once(x64[i]).dimension_ for i in idx[:m]])
        per_point = (_clocks() - t1) / m
        note = f"skdim timed on {m} of {len(x64)} neighbourhoods, extrapolated" if m < len(x64) else ""
        wall, cpu = t_nn + per_point * len(x64)
        return wall, cpu, est, note
    wall, cpu = _clocks() - t0
    return wall, cpu, np.asarray(est, np.float64), ""


def compare(name: str, x: np.ndarray, k: int, repeats: int, ess_points: int, mesh=None) -> dict:
    if name == "lpca" and mesh is not None and mesh.devices.flat[0].platform == "cpu":
        mesh = None  # refused: batched LAPACK on several CPU devices can deadlock (see lid.lpca)
    stats, est = ours(name, x, k, repeats)
    if mesh is not None:
        mesh_stats, mesh_est = ours(name, x, k, repeats, mesh=mesh)
        if name == "lpca":
            assert np.array_equal(mesh_est, est), "lpca on the mesh differs from one device"
        else:  # float32 rounding of other chunk shapes; a point on a float32 tie may move further
            off = ~np.isclose(mesh_est, est, rtol=1e-5, atol=0, equal_nan=True)
            assert off.mean() < 0.01, f"{name} on the mesh differs at {off.sum()} of {off.size} points"
    ref_s, ref_cpu_s, ref, note = skdim_pointwise(name, x, k, ess_points)
    best = stats if mesh is None or stats["median_s"] <= mesh_stats["median_s"] else mesh_stats
    mine = est[: len(ref)].astype(np.float64)
    if name == "lpca":
        agreement = float(np.mean(mine == ref))
        agreement_kind = "fraction identical"
    else:
        agreement = float(np.nanmean(np.abs(mine - ref)))
        agreement_kind = "mean |diff|"
    return {
        "estimator": name,
        "N": len(x),
        "D": x.shape[1],
        "k": k,
        "ours_s": stats["median_s"],
        "ours_mesh_s": None if mesh is None else mesh_stats["median_s"],
        "devices": 1 if mesh is None else mesh.size,
        "ours_compile_s": stats["compile_s"],
        "skdim_s": ref_s,
        "speedup": ref_s / best["median_s"],
        "speedup_one_device": ref_s / stats["median_s"],
        "target": TARGETS[name],
        "ours_cpu_s": best["cpu_median_s"],
        "skdim_cpu_s": ref_cpu_s,
        "cpu_speedup": ref_cpu_s / best["cpu_median_s"],
        "agreement": agreement,
        "agreement_kind": agreement_kind,
        "note": note,
        "load_avg_1min": os.getloadavg()[0],
        "ours_times_s": stats["times_s"],
    }


def scaling(name: str, n: int, dim: int, k: int, repeats: int) -> dict:
    x = subspace_data(n, dim, 10, seed=1)
    stats = ours(name, x, k, repeats)[0] if n * dim < 10**6 else ours_once(name, x, k)
    return {
        "estimator": name,
        "N": n,
        "D": dim,
        "k": k,
        "ours_s": stats["median_s"],
        "ours_compile_s": stats["compile_s"],
        "points_per_s": n / stats["median_s"],
        "ours_cpu_s": stats["cpu_median_s"],
        "load_avg_1min": os.getloadavg()[0],
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="N = 1000 and small sweeps (about a minute)")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="results directory (default bench/results)")
    p.add_argument("--repeats", type=int, default=None, help="timed calls of ours (default 5, quick 3)")
    p.add_argument("--ess-points", type=int, default=None, help="skdim ESS neighbourhoods timed (default 250)")
    p.add_argument("--no-scaling", action="store_true",
                   help="only the side-by-side comparison, not the growth with N (up to 10^5) and D")
    p.add_argument("--cpu-devices", type=int, default=os.cpu_count() or 1,
                   help="CPU devices (jax_num_cpu_devices) for the mesh timings (default: one per core); "
                        "ignored when JAX has already started its backend in this process")
    args = p.parse_args(argv)
    try:
        jax.config.update("jax_num_cpu_devices", args.cpu_devices)
    except Exception as err:  # the backend is already up (e.g. called from tests): use its devices
        print(f"--cpu-devices not applied ({err}); using {jax.local_device_count()} device(s)", file=sys.stderr)
    mesh = parallel.make_mesh(jax.local_devices()) if jax.local_device_count() > 1 else None

    quick = args.quick
    n, dim, d, k = (1000, 100, 10, 100) if quick else (5000, 100, 10, 100)
    repeats = args.repeats or (3 if quick else 5)
    ess_points = args.ess_points or (100 if quick else 250)
    sweep_n = (1000, 3000) if quick else (1000, 3000, 10000, 30000, 100000)
    sweep_d = (10, 100) if quick else (10, 100, 1000)
    sweep_n_est = ("mle",) if quick else ("mle", "lpca")

    rows, scale_rows = [], []
    load_start = list(os.getloadavg())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # skdim's numpy/sklearn deprecation noise
        x = subspace_data(n, dim, d)
        for name in ESTIMATORS:
            rows.append(compare(name, x, k, repeats, ess_points, mesh))
            r = rows[-1]
            on_mesh = "" if r["ours_mesh_s"] is None else f", on {mesh.size} devices {r['ours_mesh_s']:.3g}s"
            print(f"{name}: ours {r['ours_s']:.3g}s{on_mesh}, skdim {r['skdim_s']:.3g}s (x{r['speedup']:.3g}; CPU "
                  f"time x{r['cpu_speedup']:.3g}), load {r['load_avg_1min']:.2f}", flush=True)
        for name in () if args.no_scaling else sweep_n_est:
            for nn in sweep_n:
                scale_rows.append(scaling(name, nn, 100, k, repeats))
                print(f"scaling {name} N={nn}: {scale_rows[-1]['ours_s']:.3g}s", flush=True)
        for name in () if args.no_scaling else ("mle", "lpca"):
            for dd in sweep_d:
                scale_rows.append(scaling(name, n, dd, k, repeats))
                print(f"scaling {name} D={dd}: {scale_rows[-1]['ours_s']:.3g}s", flush=True)

    summary = {f"speedup_{r['estimator']}": r["speedup"] for r in rows}
    summary.update({f"target_met_{r['estimator']}": bool(r["speedup"] >= r["target"]) for r in rows})
    meta = env_info(
        blas_threads=1,
        xla_threads="XLA:CPU's own thread pool, not limited (one thread per core)",
        mesh_devices=1 if mesh is None else mesh.size,
        skdim_threads="1 (scikit-learn kNN n_jobs=1, BLAS limited to 1)",
        load_avg_start=load_start,
        load_avg_end=list(os.getloadavg()),
        quick=quick,
        data=f"Gaussian on a {d}-dim affine subspace of R^{dim}",
    )
    paths = write_results(NAME, rows, args.out, meta=meta, columns=COLUMNS, summary=summary)
    print()
    print(markdown_table(rows, COLUMNS))
    print(f"\nwrote {paths['json']}, {paths['md']}")
    if scale_rows:
        scale_paths = write_results(NAME + "_scaling", scale_rows, args.out, meta=meta, columns=SCALE_COLUMNS)
        print()
        print(markdown_table(scale_rows, SCALE_COLUMNS))
        print(f"\nwrote {scale_paths['json']}, {scale_paths['md']}")
    return {"rows": rows, "scaling": scale_rows, "summary": summary}


if __name__ == "__main__":
    main()
