"""``mmh-jax lid``: model-free LID* of a data set, per point, with a summary against ground truth.

The data are a synthetic generator (``mmh_jax.data.synthetic.GENERATORS``; ground truth known) or a
``.npz``/``.npy`` file. The estimator (lPCA, MLE, TwoNN or ESS from [`mmh_jax.lid`][mmh_jax.lid]) runs at
every data point, or at the points of a ``queries`` file. The per-point estimates are written to an
``.npz`` (``lid``; plus ``truth`` and ``component`` when known) and a summary is printed: overall,
and per component (or per true LID value) with the mean absolute error where the truth is known.

Examples:
  >>> cfg = preset("quick", estimator="mle", k=10)
  >>> cfg.n, cfg.k, cfg.data
  (500, 10, 'lollipop')

(then ``run(cfg, "out/lid")``, which writes ``out/lid/lid.npz``; the CLI is ``mmh-jax lid --estimator mle --k 10 --preset quick``).
"""

from __future__ import annotations

import ast
import dataclasses
import os
import sys
import time
from typing import Any

import jax.numpy as jnp
import numpy as np

from mmh_jax import lid as lid_lib
from mmh_jax.data import synthetic
from mmh_jax.data.files import read_points
from mmh_jax.experiments._outputs import output_paths, write_npz
from mmh_jax.experiments._presets import from_preset

__all__ = ["DATA_DEFAULTS", "ESTIMATORS", "LidConfig", "PRESETS", "load_array", "out_path", "preset",
           "print_summary", "run", "summarize"]

#: Estimator names accepted by ``--estimator`` (functions of `mmh_jax.lid` of the same name).
ESTIMATORS = ("lpca", "mle", "twonn", "ess")

#: Keyword arguments given to generators that need more than ``(n, seed)``; ``params`` override them.
DATA_DEFAULTS: dict[str, dict[str, Any]] = {
    "gaussian_subspace": {"dim": 4, "ambient_dim": 16},
    "affine_mixture": {"dims": (2, 4, 8), "ambient_dim": 16},
    "squiggly_mixture": {"dims": (2, 4, 8), "ambient_dim": 16, "frequency": 1.0},
}

#: Preset name -> LidConfig fields. ``quick`` uses few points so it finishes in seconds.
PRESETS: dict[str, dict[str, Any]] = {
    "quick": {"n": 500},
    "full": {"n": 2000},
}


@dataclasses.dataclass(frozen=True)
class LidConfig:
    """What ``mmh-jax lid`` computes.

    Attributes:
      estimator: one of ``ESTIMATORS``.
      data: a generator name (``mmh_jax.data.synthetic.GENERATORS``) or a ``.npz``/``.npy`` path.
        An ``.npz`` holds the points under ``x`` (or as its only array) and may hold ground truth
        under ``lid`` and ``component``.
      k: number of nearest neighbours of the estimator.
      n: points to generate; for a file, a random subsample of ``n`` rows when it has more
        (``None``: 2000 generated points, or every row of a file).
      seed: seed of the generator / subsample.
      queries: optional ``.npz``/``.npy`` path of points to estimate at (default: the data points).
      params: generator keyword overrides, as ``(name, value)`` pairs (see ``DATA_DEFAULTS``).
      alpha: lPCA's eigenvalue cut-off fraction (ignored by the other estimators).
    """

    estimator: str = "lpca"
    data: str = "lollipop"
    k: int = 20
    n: int | None = None
    seed: int = 0
    queries: str | None = None
    params: tuple[tuple[str, Any], ...] = ()
    alpha: float = 0.05

    def __post_init__(self):
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {ESTIMATORS}, got {self.estimator!r}.")
        if isinstance(self.k, bool) or not isinstance(self.k, (int, np.integer)) or self.k < 1:
            raise ValueError(f"k must be an int >= 1 (number of neighbours), got k={self.k!r}.")
        if self.n is not None and (isinstance(self.n, bool) or not isinstance(self.n, (int, np.integer)) or self.n < 1):
            raise ValueError(f"n must be an int >= 1 (number of points) or None, got n={self.n!r}.")
        if not 0.0 < float(self.alpha) < 1.0:
            raise ValueError(f"alpha must lie in (0, 1), got alpha={self.alpha!r}.")


def preset(name: str, **overrides) -> LidConfig:
    """A `LidConfig` from a preset (``"quick"`` or ``"full"``) with field overrides.

    Overrides equal to ``None`` are ignored, so CLI defaults of ``None`` keep the preset's value.

    Raises:
      ValueError: unknown preset name or invalid field values.
    """
    return from_preset(LidConfig, PRESETS, name, overrides)


def parse_param(text: str) -> tuple[str, Any]:
    """``"KEY=VALUE"`` -> ``(KEY, value)``; VALUE is a Python literal (``2``, ``(1, 2)``, ``0.5``) or a string.

    Examples:
      >>> parse_param("dims=[1, 2]"), parse_param("distribution=laplace")
      (('dims', [1, 2]), ('distribution', 'laplace'))
    """
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key.isidentifier():
        raise ValueError(f"--param must look like KEY=VALUE (e.g. dims=2,4 or frequency=5), got {text!r}.")
    try:
        parsed = ast.literal_eval(value.strip())
    except (ValueError, SyntaxError):
        parsed = value.strip()
    return key, parsed


def load_array(path: str, *, what: str = "data") -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Points (N, D) float32 and, if stored, ``lid`` and ``component`` (N,) from a ``.npz``/``.npy`` file.

    An ``.npz`` must hold the points under ``x`` or as its only array. Images ``(N, H, W)`` or
    ``(N, H, W, C)`` are flattened to ``(N, H·W·C)``, with a note on stderr.

    Raises:
      FileNotFoundError: the file does not exist.
      ValueError: unknown extension, unreadable or damaged file or one that is not a NumPy file, an
        object (pickled) array, ambiguous ``.npz``, a shape other than ``(N, D)``/``(N, H, W)``/
        ``(N, H, W, C)``, no points, non-numeric dtype, non-finite values, or ``lid``/``component``
        of the wrong length.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what} file not found: {path!r}.")
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".npy", ".npz"):
        raise ValueError(f"{what} file must end in .npz or .npy, got {path!r}.")
    try:
        stored = read_points(path)
    except ValueError as e:
        raise ValueError(f"{what} file {e}") from None
    x, lid, component = stored.x, stored.beside("lid"), stored.beside("component")
    _check_point_shape(x.shape, path, what)
    if x.shape[0] == 0 or x.size == 0:
        raise ValueError(f"{what} in {path!r} is empty (shape {x.shape}); it needs at least one point with at "
                         "least one coordinate.")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise ValueError(f"{what} in {path!r} must be numeric, got dtype {x.dtype}.")
    if x.ndim > 2:
        print(f"mmh-jax lid: note: {what} in {path!r} of shape {x.shape} read as images (N, H, W[, C]); "
              f"flattened to (N, D) = ({x.shape[0]}, {int(np.prod(x.shape[1:]))}).", file=sys.stderr)
    x = x.reshape(x.shape[0], -1).astype(np.float32)
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{what} in {path!r} has non-finite values (NaN/inf); clean them first.")
    for name, arr in (("lid", lid), ("component", component)):
        if arr is not None and arr.shape != (x.shape[0],):
            raise ValueError(
                f"{what} file {path!r}: '{name}' must have shape (N,) = ({x.shape[0]},), got {arr.shape}."
            )
    return x, lid, component


def _check_point_shape(shape: tuple[int, ...], path: str, what: str) -> None:
    """Points are (N, D), or images (N, H, W) / (N, H, W, C) to flatten; any other rank is refused, not
    flattened, since what a row would be is a guess."""
    if len(shape) not in (2, 3, 4):
        raise ValueError(
            f"{what} in {path!r} must have shape (N, D) (one point per row) or be images (N, H, W) / (N, H, W, C), "
            f"got shape {shape}; reshape it, e.g. x.reshape(len(x), -1) for one point per first-axis entry."
        )


def _is_file(data: str) -> bool:
    return data.lower().endswith((".npz", ".npy")) or os.sep in data or os.path.exists(data)


def _load_data(config: LidConfig):
    """(x, truth, component, description) of the configured data."""
    if config.data in synthetic.GENERATORS and not os.path.exists(config.data):
        kwargs = dict(DATA_DEFAULTS.get(config.data, {}))
        kwargs.update(dict(config.params))
        n = config.n if config.n is not None else PRESETS["full"]["n"]
        try:
            ds = synthetic.GENERATORS[config.data](n, seed=config.seed, **kwargs)
        except TypeError as e:  # e.g. an unknown --param keyword
            raise ValueError(f"generator {config.data!r}: {e}") from None
        shown = ", ".join(f"{k}={v}" for k, v in kwargs.items())
        return ds.x, ds.lid, ds.component, f"{config.data}({shown})" if shown else config.data
    if not _is_file(config.data):
        raise ValueError(
            f"data must be a generator name (one of {sorted(synthetic.GENERATORS)}) or a .npz/.npy file, "
            f"got {config.data!r}."
        )
    if config.params:
        raise ValueError("--param applies to generated data only; drop it when --data is a file.")
    x, lid, comp = load_array(config.data)
    if config.n is not None and config.n < len(x):
        idx = np.sort(np.random.default_rng(config.seed).choice(len(x), size=config.n, replace=False))
        x, lid, comp = x[idx], None if lid is None else lid[idx], None if comp is None else comp[idx]
    return x, lid, comp, config.data


def _stats(e: np.ndarray) -> dict[str, Any]:
    """mean/median/std of the finite estimates, and how many were not finite (NaN: degenerate
    neighbourhoods, e.g. all k neighbours at distance 0 for some estimators)."""
    f = e[np.isfinite(e)]
    nan = float("nan")
    out: dict[str, Any] = {
        "mean": float(np.mean(f)) if f.size else nan,
        "median": float(np.median(f)) if f.size else nan,
        "std": float(np.std(f)) if f.size else nan,
    }
    out["non_finite"] = int(e.size - f.size)
    return out


def _summary_rows(est: np.ndarray, truth, comp) -> list[dict[str, Any]]:
    """Per-group statistics; groups are components, else true LID values."""
    if comp is None and truth is None:
        return []
    groups = np.asarray(comp if comp is not None else truth)
    rows = []
    for g in np.unique(groups):
        sel = groups == g
        e = est[sel]
        st = _stats(e)
        row: dict[str, Any] = {"group": g.item(), "count": int(sel.sum()), "mean": st["mean"], "std": st["std"]}
        if truth is not None:
            t = np.asarray(truth)[sel].astype(np.float64)
            const = np.ptp(t) == 0
            row["truth"] = int(t[0]) if const and float(t[0]).is_integer() else float(np.mean(t))
            # Per group MAE directly: concordance/relative bias are undefined on one true value.
            ok = np.isfinite(e)
            row["mae"] = float(np.mean(np.abs(e[ok] - t[ok]))) if ok.any() else float("nan")
        row["non_finite"] = st["non_finite"]
        rows.append(row)
    return rows


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def summarize(est: np.ndarray, truth, comp) -> dict[str, Any]:
    """Overall and per-group statistics of per-point estimates (shared by both ``mmh-jax lid`` paths).

    Args:
      est: ``(N,)`` estimates; NaN/inf are counted as ``non_finite`` and left out of the statistics.
      truth: ``(N,)`` true LID, or None.
      comp: ``(N,)`` mixture component, or None.

    Returns:
      ``{"overall", "group_by", "groups"}``: ``overall`` holds mean/median/std/non_finite, plus the
      [`mmh_jax.lid.evaluate`][mmh_jax.lid.evaluate] metrics of the finite estimates when ``truth`` is known;
      ``groups`` one row per component (else per true LID value; empty when neither is known) with
      count, truth, mean, std, mae, non_finite.
    """
    est = np.asarray(est, np.float32)
    overall = _stats(est)
    if truth is not None and np.isfinite(est).any():
        # evaluate() scores the finite estimates; it counts the others as n_nonfinite = non_finite.
        metrics = lid_lib.evaluate(est, np.asarray(truth, np.float32))
        overall.update({str(k): float(v) for k, v in metrics.items() if k != "n_nonfinite"})
    return {
        "overall": overall,
        "group_by": "component" if comp is not None else "truth",
        "groups": _summary_rows(est, truth, comp),
    }


def print_summary(header: str, stats: dict[str, Any], file=None) -> None:
    """Print ``header``, the overall line and the per-group table of a `summarize` result."""
    file = sys.stdout if file is None else file
    print(header, file=file)
    o = stats["overall"]
    shown = {k: v for k, v in o.items() if k != "non_finite" or v}
    print("overall: " + ", ".join(f"{k} {_fmt(v)}" for k, v in shown.items()), file=file)
    rows = stats["groups"]
    if rows:
        cols = [c for c in ("group", "count", "truth", "mean", "std", "mae") if c in rows[0]]
        if any(r["non_finite"] for r in rows):
            cols.append("non_finite")
        head = {"group": stats["group_by"]}
        widths = [max(len(head.get(c, c)), *(len(_fmt(r[c])) for r in rows)) for c in cols]
        print("  ".join(head.get(c, c).rjust(w) for c, w in zip(cols, widths)), file=file)
        for r in rows:
            print("  ".join(_fmt(r[c]).rjust(w) for c, w in zip(cols, widths)), file=file)


def _print_summary(summary: dict[str, Any], file=None) -> None:
    header = (
        f"mmh-jax lid: {summary['estimator']} (k={summary['k']}) on {summary['data']}: "
        f"{summary['num_points']} points in R^{summary['ambient_dim']}"
        + (f", estimated at {summary['num_queries']} query points" if summary["queries"] else "")
    )
    print_summary(header, summary, file=file)


def _warn_non_finite(count: int, total: int) -> None:
    """Say why estimates are NaN (mostly exact duplicates: k neighbours at distance 0) and what to do."""
    if count:
        print(
            f"mmh-jax lid: note: {count} of {total} estimates are NaN/inf, usually at exactly duplicated points "
            "(all k neighbours at distance 0); de-duplicate the data, e.g. x = np.unique(x, axis=0), or raise --k.",
            file=sys.stderr,
        )


def out_path(out: str, *, overwrite: bool = True) -> str:
    """``out/lid.npz``; with ``overwrite=False`` refused when it exists or ``out`` names a file
    (`mmh_jax.experiments._outputs.output_paths`)."""
    return output_paths(out, ("lid.npz",), command="lid", overwrite=overwrite)["lid.npz"]


def run(config: LidConfig, out: str, *, overwrite: bool = False) -> dict[str, Any]:
    """Estimate LID* per point, write ``out`` (.npz) and print a summary; returns the summary.

    The ``.npz`` holds ``lid`` (float32, one estimate per query point) and, when known, ``truth``
    (int32 true LID) and ``component`` (int32). The summary dict has the run's settings, ``overall``
    statistics (mean/median/std of the finite estimates, ``non_finite`` = how many are NaN/inf —
    estimators return NaN on degenerate neighbourhoods such as a point mass — plus
    [`mmh_jax.lid.evaluate`][mmh_jax.lid.evaluate] metrics of the finite estimates against the truth when
    known), ``groups`` (per component, or per true LID value: count, truth, mean, std, mae, non_finite)
    and ``out`` (the path written: ``lid.npz`` inside the directory ``out``, refused when it exists
    unless ``overwrite``).

    Raises:
      ValueError, FileNotFoundError: bad data/queries file or parameters (the CLI prints these).
    """
    path = out_path(out, overwrite=overwrite)
    x, truth, comp, description = _load_data(config)
    n_data = len(x)
    queries = None
    if config.queries is not None:
        queries, truth, comp = load_array(config.queries, what="queries")
        if queries.shape[1] != x.shape[1]:
            raise ValueError(
                f"queries must have the data's dimension D={x.shape[1]}, got shape {queries.shape} "
                f"from {config.queries!r}."
            )
    # A data point is not its own neighbour; an external query may use every data point.
    k_max = n_data - 1 if queries is None else n_data
    if config.k > k_max:
        raise ValueError(
            f"k must be at most {k_max} with {n_data} data points"
            + ("" if queries is None else " and external queries")
            + f", got k={config.k}; lower --k or use more points (--n)."
        )
    kwargs: dict[str, Any] = {"k": config.k}
    if config.estimator == "lpca":
        kwargs["alpha"] = config.alpha
    if queries is not None:
        kwargs["queries"] = jnp.asarray(queries)
    n_est = n_data if queries is None else len(queries)
    print(
        f"mmh-jax lid: {config.estimator} (k={config.k}) at {n_est} points of {n_data} x {x.shape[1]} data ...",
        file=sys.stderr,
        flush=True,
    )
    t0 = time.perf_counter()
    est = np.asarray(getattr(lid_lib, config.estimator)(jnp.asarray(x), **kwargs), dtype=np.float32)
    seconds = time.perf_counter() - t0
    print(f"mmh-jax lid: done in {seconds:.2f} s", file=sys.stderr, flush=True)

    stats = summarize(est, truth, comp)
    _warn_non_finite(stats["overall"]["non_finite"], n_est)

    os.makedirs(out, exist_ok=True)
    arrays: dict[str, np.ndarray] = {"lid": est}
    if truth is not None:
        arrays["truth"] = np.asarray(truth)
    if comp is not None:
        arrays["component"] = np.asarray(comp, np.int32)
    write_npz(path, **arrays)

    summary: dict[str, Any] = {
        "estimator": config.estimator,
        "k": config.k,
        "data": description,
        "num_points": n_data,
        "ambient_dim": int(x.shape[1]),
        "queries": config.queries,
        "num_queries": n_est,
        "seconds": seconds,
        **stats,
        "out": path,
    }
    _print_summary(summary)
    print(f"mmh-jax lid: wrote {path}", file=sys.stderr)
    return summary
