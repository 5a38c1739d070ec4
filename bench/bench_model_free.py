"""Model-free LID* estimators: mmh_jax (JAX) against scikit-dimension, in one process.

    python bench/bench_model_free.py [--quick] [--no-scaling] [--out DIR] [--repeats N]

Data: N = 5000 points of a standard Gaussian on a random 10-dim affine subspace of R^100 (float32),
k = 100 neighbours. For each of lpca, mle, twonn, ess:

- ours: the estimator jitted once (``jax.jit(lambda x: lid.mle(x, k=k))``), compile time reported
  separately, then the median of ``--repeats`` calls under ``jax.block_until_ready``;
- skdim: the wall time of one pointwise fit, including its own kNN search —
  ``lPCA().fit_pw``, ``TwoNN().fit_pw`` (``n_neighbors=k``), ``MLE().fit`` and ``ESS().fit``
  (``n_neighbors=k``, ``dimension_pw_``). ESS takes minutes in skdim, so it is timed on the
  neighbourhoods of the first ``--ess-points`` points (after skdim's kNN search of all N) and
  extrapolated linearly in the number of points; the row says so;
- agreement: fraction of identical estimates (lPCA), mean |ours − skdim| (the others).

Then (unless ``--no-scaling``) the growth of our time with N = 10³…10⁵ (D = 100) and with D
(N = 5000) for mle and lpca (one timed
call, after the compiling one, when N·D ≥ 10⁶).

BLAS is limited to one thread for both sides (``threadpoolctl``): XLA's LAPACK calls and skdim's
numpy/scikit-learn go through the same OpenBLAS, whose threads only contend on small matrices
(one 100×100 PCA took 10× longer with threads on a busy 2-core machine). XLA's own ops keep their
thread pool. Timings on a shared machine are noisy; the environment goes into the results.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``bench`` and ``mmh_jax`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax
import numpy as np

from bench._common import DEFAULT_OUT, env_info, markdown_table, time_fn, write_results
from mmh_jax import lid

NAME = "bench_model_free"
ESTIMATORS = ("lpca", "mle", "twonn", "ess")
#: Issue targets: speed-up of ours over skdim (MLE: no slower).
TARGETS = {"lpca": 10.0, "twonn": 10.0, "ess": 50.0, "mle": 1.0}
COLUMNS = ["estimator", "N", "D", "k", "ours_s", "ours_compile_s", "skdim_s", "speedup", "target", "agreement", "note"]
SCALE_COLUMNS = ["estimator", "N", "D", "k", "ours_s", "ours_compile_s", "points_per_s"]


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


def ours(name: str, x: np.ndarray, k: int, repeats: int) -> tuple[dict, np.ndarray]:
    fn = getattr(lid, name)
    jitted = jax.jit(lambda a: fn(a, k=k))
    xj = jax.device_put(x)
    with one_blas_thread():
        stats = time_fn(jitted, xj, repeats=repeats, warmup=0)
    return stats, np.asarray(jitted(xj))


def skdim_pointwise(name: str, x: np.ndarray, k: int, ess_points: int) -> tuple[float, np.ndarray, str]:
    """(seconds, estimates, note); ESS on the first ``ess_points`` neighbourhoods, extrapolated."""
    with one_blas_thread():
        return _skdim_pointwise(name, x.astype(np.float64), k, ess_points)


def _skdim_pointwise(name, x64, k, ess_points):
    import skdim
    from skdim._commonfuncs import get_nn

    t0 = time.perf_counter()
    if name == "lpca":
        est = skdim.id.lPCA(ver="FO", alphaFO=0.05).fit_pw(x64, n_neighbors=k).dimension_pw_
    elif name == "twonn":
        est = skdim.id.TwoNN().fit_pw(x64, n_neighbors=k).dimension_pw_
    elif name == "mle":
        est = skdim.id.MLE().fit(x64, n_neighbors=k).dimension_pw_
    else:
        m = min(ess_points, len(x64))
        _, idx = get_nn(x64, k=k)
        t_nn = time.perf_counter() - t0
        t1 = time.perf_counter()
        ref = skdim.id.ESS(ver="a", d=1)
        est = np.array([ref.fit_once(x64[i]).dimension_ for i in idx[:m]])
        per_point = (time.perf_counter() - t1) / m
        note = f"skdim timed on {m} of {len(x64)} neighbourhoods, extrapolated" if m < len(x64) else ""
        return t_nn + per_point * len(x64), est, note
    return time.perf_counter() - t0, np.asarray(est, np.float64), ""


def compare(name: str, x: np.ndarray, k: int, repeats: int, ess_points: int) -> dict:
    stats, est = ours(name, x, k, repeats)
    ref_s, ref, note = skdim_pointwise(name, x, k, ess_points)
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
        "ours_compile_s": stats["compile_s"],
        "skdim_s": ref_s,
        "speedup": ref_s / stats["median_s"],
        "target": TARGETS[name],
        "agreement": agreement,
        "agreement_kind": agreement_kind,
        "note": note,
        "ours_times_s": stats["times_s"],
    }


def scaling(name: str, n: int, dim: int, k: int, repeats: int) -> dict:
    x = subspace_data(n, dim, 10, seed=1)
    stats, _ = ours(name, x, k, repeats if n * dim < 10**6 else 1)  # large sets: one timed call
    return {
        "estimator": name,
        "N": n,
        "D": dim,
        "k": k,
        "ours_s": stats["median_s"],
        "ours_compile_s": stats["compile_s"],
        "points_per_s": n / stats["median_s"],
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="N = 1000 and small sweeps (about a minute)")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="results directory (default bench/results)")
    p.add_argument("--repeats", type=int, default=None, help="timed calls of ours (default 5, quick 3)")
    p.add_argument("--ess-points", type=int, default=None, help="skdim ESS neighbourhoods timed (default 250)")
    p.add_argument("--no-scaling", action="store_true",
                   help="only the side-by-side comparison, not the growth with N (up to 10^5) and D")
    args = p.parse_args(argv)

    quick = args.quick
    n, dim, d, k = (1000, 100, 10, 100) if quick else (5000, 100, 10, 100)
    repeats = args.repeats or (3 if quick else 5)
    ess_points = args.ess_points or (100 if quick else 250)
    sweep_n = (1000, 3000) if quick else (1000, 3000, 10000, 30000, 100000)
    sweep_d = (10, 100) if quick else (10, 100, 1000)
    sweep_n_est = ("mle",) if quick else ("mle", "lpca")

    rows, scale_rows = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # skdim's numpy/sklearn deprecation noise
        x = subspace_data(n, dim, d)
        for name in ESTIMATORS:
            rows.append(compare(name, x, k, repeats, ess_points))
            print(f"{name}: ours {rows[-1]['ours_s']:.3g}s, skdim {rows[-1]['skdim_s']:.3g}s", flush=True)
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
    meta = env_info(blas_threads=1, quick=quick, data=f"Gaussian on a {d}-dim affine subspace of R^{dim}")
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
