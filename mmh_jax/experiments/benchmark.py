"""The synthetic LID benchmark of FLIPD (Kamkari et al. 2024, arXiv 2406.03537), end to end: ``mmh-jax run benchmark``.

For each data set of the configuration (`DATASETS`: fixed recipes of
[`mmh_jax.data.synthetic`][mmh_jax.data.synthetic], whose outputs per seed are pinned by
``tests/data/test_generator_pins.py``): draw training and held-out test points, train a diffusion
model (`train_config`) and LIDL's ensemble of flows (`flow_config`) on the training points, and
score every estimator at the test points against their true LID:

- model-based ([`mmh_jax.experiments.model_estimators.estimate`][mmh_jax.experiments.model_estimators.estimate]):
  ``flipd`` (four rows from one pass: FLIPD at the fixed ``t0``, at `COARSE_T0` (``flipd-t0=0.1``), ``flipd-knee`` and
  ``flipd-plateau``, the knee and plateau readouts of its curve), ``fp-regress``,
  ``normal-bundle`` on the diffusion model, ``lidl`` on the flows;
- model-free ([`mmh_jax.lid`][mmh_jax.lid]): ``lpca``, ``mle``, ``twonn``, ``ess``, each test point's
  neighbours taken among the training points.

Writes to the output directory:

- ``data/<name>_train.npz``: the training points (``x``, ``lid``, ``component``);
- ``models/<name>/diffusion`` and ``models/<name>/lidl``: the trained models (``mmh-jax train`` run
  directories: a rerun reuses a finished model and resumes a partial one);
- ``estimates/<name>.npz``: the per-point estimates of every row, with ``truth`` and ``component``;
- ``metrics.json``: the configuration, seed, provenance and per data set its D, its components'
  LIDs, the training seconds of each model and per row the numbers of `summarize`; rewritten after
  every data set, so an interrupted run keeps the finished ones;
- ``table.md``, ``estimates.png`` (per data set, each row's estimates per component against the
  truth) and ``report.html``.

Rerunning into the same directory resumes: a data set whose results are in ``metrics.json`` from
the same configuration and package versions is not computed again (``recompute=True`` scores it
again, reusing the models). A directory holding another report (``mmh-jax run``, ``mmh-jax run
validation``, or a benchmark of other models) is refused before any work unless ``overwrite=True``,
which removes that run's results (and its models) first.

Seconds per point exclude training and include compilation (the first data set of a shape pays it).

Examples:
  >>> cfg = preset("quick")
  >>> cfg.datasets, cfg.estimators[:3]
  (('lollipop', 'affine-10'), ('flipd', 'fp-regress', 'normal-bundle'))
  >>> row_names(cfg.estimators)[:3]
  ['flipd', 'flipd-t0=0.1', 'flipd-knee']
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import signal
import sys
import time
import zlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from mmh_jax import _interrupt, lid, report
from mmh_jax._compile import fast_compile
from mmh_jax.data import synthetic
from mmh_jax.experiments import model_estimators, training
from mmh_jax.experiments._outputs import write_npz
from mmh_jax.experiments._presets import from_preset
from mmh_jax.experiments.pipeline import run as pipeline_run
from mmh_jax.provenance import provenance
from mmh_jax.trained import load

__all__ = ["BenchmarkConfig", "COARSE_T0", "COLUMNS", "DATASETS", "DEFAULT_FLOWS", "ESTIMATORS", "MODEL_BASED", "MODEL_FREE", "PRESETS", "READOUTS",
           "ambient_dim", "check_out", "coarse_index", "flow_config", "identity", "make_data", "model_free_k", "plot_estimates",
           "preset", "row_names", "run", "summarize", "table_markdown", "table_rows", "train_config",
           "write_outputs"]

#: Data set name -> (generator of `mmh_jax.data.synthetic.GENERATORS`, its keyword arguments). Fixed forever:
#: tables of different versions compare only while these give the same points.
DATASETS: dict[str, tuple[str, dict[str, Any]]] = {
    "lollipop": ("lollipop", {}),
    "swiss_roll": ("swiss_roll", {}),
    "torus_circle": ("torus_circle", {}),
    "affine-10": ("affine_mixture", {"dims": (2, 4, 8), "ambient_dim": 10}),
    "affine-10-gauss": ("affine_mixture", {"dims": (2, 4, 8), "ambient_dim": 10, "distribution": "gaussian"}),
    "squiggly-10": ("squiggly_mixture", {"dims": (2, 4, 8), "ambient_dim": 10, "frequency": 1.0}),
    "squiggly-10-f5": ("squiggly_mixture", {"dims": (2, 4, 8), "ambient_dim": 10, "frequency": 5.0}),
    "affine-100": ("affine_mixture", {"dims": (10, 25, 50), "ambient_dim": 100}),
    "squiggly-100": ("squiggly_mixture", {"dims": (10, 25, 50), "ambient_dim": 100}),
    "affine-800": ("affine_mixture", {"dims": (10, 80, 200), "ambient_dim": 800}),
    "squiggly-800": ("squiggly_mixture", {"dims": (10, 80, 200), "ambient_dim": 800}),
}

#: Estimators on a trained model (`mmh_jax.experiments.model_estimators`): diffusion ones, then LIDL's flows.
MODEL_BASED = ("flipd", "fp-regress", "normal-bundle", "lidl")
#: Estimators of the data alone (functions of `mmh_jax.lid` of the same name).
MODEL_FREE = ("lpca", "mle", "twonn", "ess")
#: Every estimator a configuration may name.
ESTIMATORS = MODEL_BASED + MODEL_FREE
#: Rows of the table per estimator and the output of `estimate` each reads (the others: one row, ``lid``).
READOUTS = {"flipd": (("flipd", "lid"), ("flipd-t0=0.1", "lid_coarse"), ("flipd-knee", "lid_knee"),
                      ("flipd-plateau", "lid_plateau"))}

#: The coarser fixed time of the ``flipd-t0=0.1`` row, read off the FLIPD curve (a point of ``t0_grid``).
COARSE_T0 = 0.1


@dataclasses.dataclass(frozen=True)
class BenchmarkConfig:
    """What the benchmark runs. All sizes are Python ints (static).

    Attributes:
      datasets: names of `DATASETS`, run in this order.
      n_train: training points per data set: the models' data and the model-free estimators' neighbours.
      n_test_per_component: held-out test points per mixture component, where every estimator is scored
        (balanced, so each component weighs the same in the MAE whatever its mixture weight).
      seed: seed of the generators, the training runs and the estimators' keys.
      estimators: names of `ESTIMATORS`; ``flipd`` gives four rows (see `READOUTS`).
      diffusion: `TrainConfig` overrides of every data set's diffusion model (see `train_config`).
      flow: `TrainConfig` overrides of every data set's LIDL flows (see `flow_config`). The default
        preset's (`DEFAULT_FLOWS`) are small flows, since the project's own take 6 minutes at
        D = 10; ``full`` keeps the project's own.
      t0, t0_grid, normal_bundle_t, num_probes, batch_size: the `ModelLidConfig` options of the
        model-based estimators (``normal_bundle_t`` is its ``t``; its K is the default 4·D).
      exact_trace_max_dim: FLIPD and FPRegress take exact traces up to this D and Hutchinson
        estimates (``num_probes`` probes) above it.
      lpca_k: lPCA's neighbours; a data set in R^D takes max(lpca_k, D + 1), since k neighbours
        span at most k − 1 directions: 100 up to D = 99 (every piece there has at most 50
        dimensions, well inside 99 directions), D + 1 above (a piece of LID 200 at D = 800 needs
        more than 100).
      knn_k: neighbours of MLE, TwoNN and ESS (ESS's reference value).
      fast_compile: compile with XLA's optimisations mostly off: for tiny programs (the quick preset),
        where optimising costs more time than it saves.
      preset: the preset the sizes came from; ``quick`` marks a smoke run whose numbers mean nothing.
    """

    datasets: tuple[str, ...] = ("lollipop", "swiss_roll", "torus_circle", "affine-10", "affine-10-gauss",
                                 "squiggly-10", "squiggly-10-f5", "affine-100", "squiggly-100")
    n_train: int = 20000
    n_test_per_component: int = 300
    seed: int = 0
    estimators: tuple[str, ...] = ESTIMATORS
    diffusion: dict = dataclasses.field(default_factory=dict)
    flow: dict = dataclasses.field(default_factory=dict)
    t0: float = 0.05
    t0_grid: tuple[float, float, int] = (1e-3, 1.0, 31)
    normal_bundle_t: float = 0.01
    num_probes: int = 1
    batch_size: int = 64
    exact_trace_max_dim: int = 100
    lpca_k: int = 100
    knn_k: int = 100
    fast_compile: bool = False
    preset: str = "default"

    def __post_init__(self):
        unknown = [d for d in self.datasets if d not in DATASETS]
        if unknown or not self.datasets:
            raise ValueError(f"datasets must be a non-empty tuple of names of {tuple(DATASETS)}, got "
                             f"datasets={self.datasets!r}.")
        bad = [e for e in self.estimators if e not in ESTIMATORS]
        if bad or not self.estimators:
            raise ValueError(f"estimators must be a non-empty tuple of names of {ESTIMATORS}, got "
                             f"estimators={self.estimators!r}.")
        for name in ("n_train", "n_test_per_component", "num_probes", "batch_size", "lpca_k", "knn_k"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {name}={v!r}.")
        if "flipd" in self.estimators:
            coarse_index(self)  # the flipd-t0=0.1 row needs that point on the grid: fail before any training
        k = max(self.knn_k, self.lpca_k)
        if self.n_train < k:
            raise ValueError(f"n_train must be at least the neighbours asked for (knn_k, lpca_k: {k}), got "
                             f"n_train={self.n_train}; raise n_train or lower knn_k/lpca_k.")


#: LIDL's flows under the default preset: 4 couplings of width 32, batch 128, 2000 steps, so that the
#: 8 flows of a data set train in about a minute at D = 10 on 2 CPU cores (the project's full flows
#: took 6 minutes there). What this costs in accuracy, and what a higher learning rate would buy:
#: docs/benchmark.md.
DEFAULT_FLOWS: dict[str, Any] = {"steps": 2000, "batch_size": 128, "model_kwargs": {"num_coupling": 4, "hidden": 32}}

#: Preset name -> `BenchmarkConfig` fields. ``quick`` only exercises the code (a smoke run).
PRESETS: dict[str, dict[str, Any]] = {
    "quick": {
        "datasets": ("lollipop", "affine-10"), "n_train": 1000, "n_test_per_component": 16,
        "diffusion": {"steps": 200, "checkpoint_every": 100, "model_kwargs": {"hidden": 64, "num_layers": 2}},
        "flow": {"steps": 50, "checkpoint_every": 50, "batch_size": 128,
                 "model_kwargs": {"num_coupling": 2, "hidden": 16}},
        "t0_grid": (1e-3, 1.0, 7), "lpca_k": 50, "knn_k": 50, "fast_compile": True,
    },
    "default": {"flow": DEFAULT_FLOWS},
    "full": {"datasets": tuple(DATASETS)},
}


def preset(name: str, **overrides: Any) -> BenchmarkConfig:
    """The named preset (``quick``, ``default`` or ``full``) with field overrides (None keeps the preset's)."""
    return from_preset(BenchmarkConfig, PRESETS, name, {"preset": name, **overrides})


def train_config(name: str, D: int, config: BenchmarkConfig, data: str) -> training.TrainConfig:
    """The diffusion model of data set ``name`` (ambient dimension ``D``) trained on the file ``data``.

    The project's default MLP for data of dimension ``D`` (``training.preset("full", dim=D)``, tuned
    there), with ``config.diffusion``'s overrides; ``name`` is there to tune a data set on its own
    (none is yet).
    """
    return training.preset("full", dim=D, data=data, model="mlp", n=config.n_train, seed=config.seed,
                           **config.diffusion)


def flow_config(name: str, D: int, config: BenchmarkConfig, data: str) -> training.TrainConfig:
    """LIDL's flows (one per default noise scale) of data set ``name`` trained on the file ``data``, as
    `train_config` with ``config.flow``'s overrides."""
    return training.preset("full", data=data, model="lidl", n=config.n_train, seed=config.seed, **config.flow)


def row_names(estimators) -> list[str]:
    """The table's rows of ``estimators``: ``flipd`` becomes its four readouts (`READOUTS`)."""
    return [row for e in estimators for row, _ in READOUTS.get(e, ((e, "lid"),))]


# --------------------------------------------------------------------------------------------
# data


def ambient_dim(name: str) -> int:
    """D of data set ``name`` (one point drawn)."""
    generator, kwargs = DATASETS[name]
    return int(synthetic.GENERATORS[generator](1, seed=0, **kwargs).x.shape[1])


def make_data(name: str, n_train: int, n_per_component: int, seed: int) -> tuple[dict, dict]:
    """Training and test points of data set ``name``.

    The recipe draws ``n_train + m`` points with ``seed``: the first ``n_train`` are the training
    points; the test points are the first ``n_per_component`` of each component among the other
    ``m`` (kept in their order), with ``m`` starting at ``n_per_component`` and doubled until every
    component has enough.

    Returns:
      ``(train, test)``: dicts of numpy arrays ``x`` (float32), ``lid`` and ``component`` (int32).

    Raises:
      ValueError: a component too rare to fill (``m`` reached 256·``n_per_component``).
    """
    generator, kwargs = DATASETS[name]
    m = n_per_component
    while True:
        ds = synthetic.GENERATORS[generator](n_train + m, seed=seed, **kwargs)
        comp = np.asarray(ds.component, np.int32)
        tail = np.arange(n_train, n_train + m)
        picks = [tail[comp[tail] == c][:n_per_component] for c in np.unique(comp)]
        if all(p.size == n_per_component for p in picks):
            break
        if m >= 256 * n_per_component:
            raise ValueError(f"data set {name!r}: a component has fewer than n_test_per_component="
                             f"{n_per_component} points among {m} draws; lower n_test_per_component.")
        m *= 2
    test = np.sort(np.concatenate(picks))
    arrays = {"x": np.asarray(ds.x, np.float32), "lid": np.asarray(ds.lid, np.int32), "component": comp}
    return {k: v[:n_train] for k, v in arrays.items()}, {k: v[test] for k, v in arrays.items()}


def _data_path(name: str) -> str:
    """Where data set ``name``'s training points go, relative to the output directory."""
    return os.path.join("data", f"{name}_train.npz")


def _model_dir(name: str, kind: str) -> str:
    """Where data set ``name``'s ``kind`` model (``diffusion`` or ``lidl``) is trained, relative to the output."""
    return os.path.join("models", name, kind)


def _estimates_path(name: str) -> str:
    """Where data set ``name``'s per-point estimates go, relative to the output directory."""
    return os.path.join("estimates", f"{name}.npz")


# --------------------------------------------------------------------------------------------
# the summary of one row


def summarize(estimates, truth, component, seconds: float) -> dict[str, Any]:
    """One row of the table: how per-point ``estimates`` agree with the ``truth``, overall and per component.

    NaN or infinite estimates (a readout that could not read a curve, a degenerate neighbourhood)
    are counted and left out of every statistic.

    Args:
      estimates: ``(n,)`` estimated LID per test point.
      truth: ``(n,)`` true LID.
      component: ``(n,)`` mixture component of each point.
      seconds: the time the estimates took (compilation included).

    Returns:
      ``{"n", "non_finite", "mae", "concordance", "bias", "seconds", "seconds_per_point", "components"}``:
      ``mae``, ``concordance`` and ``bias`` of [`mmh_jax.lid.evaluate`][mmh_jax.lid.evaluate] over the
      finite estimates; ``components`` one dict per component (``component``, ``lid``, ``n``,
      ``mean`` of its finite estimates, ``non_finite``).

    Examples:
      >>> row = summarize([1.0, 3.0, float("nan")], [1, 2, 2], [0, 1, 1], seconds=0.3)
      >>> row["mae"], row["non_finite"], [c["mean"] for c in row["components"]]
      (0.5, 1, [1.0, 3.0])
    """
    est = np.asarray(estimates, np.float64).ravel()
    truth = np.asarray(truth, np.float64).ravel()
    component = np.asarray(component).ravel()
    finite = np.isfinite(est)
    metrics = lid.evaluate(est, truth)
    components = []
    for c in np.unique(component):
        sel = component == c
        ok = sel & finite
        components.append({"component": int(c), "lid": _number(np.unique(truth[sel])), "n": int(sel.sum()),
                           "mean": float(np.mean(est[ok])) if ok.any() else float("nan"),
                           "non_finite": int((sel & ~finite).sum())})
    return {"n": int(est.size), "non_finite": int((~finite).sum()), "mae": metrics["mae"],
            "concordance": metrics["concordance"], "bias": metrics["bias"], "seconds": float(seconds),
            "seconds_per_point": float(seconds) / max(int(est.size), 1), "components": components}


def _number(values: np.ndarray) -> float | int:
    """A component's true LID: its one value (an int when integral), else the mean of its values."""
    v = float(np.mean(values))
    return int(v) if values.size == 1 and v.is_integer() else v


# --------------------------------------------------------------------------------------------
# one data set


def _log(progress: bool, msg: str) -> None:
    """A stage's message (a stage boundary is a safe point to stop after a signal)."""
    _interrupt.check()
    if progress:
        tqdm.write(msg, file=sys.stderr)


def _train_model(tc: training.TrainConfig, run_dir: str, progress: bool) -> tuple[Any, dict[str, Any]]:
    """Train (or reuse, or resume) ``tc`` in ``run_dir``; the loaded model and its training record.

    The record holds ``steps``, ``start_step`` (= ``steps`` when a finished model was reused),
    ``seconds`` (this call, compilation included) and ``logged_step_seconds`` (the dispatches of
    optimisation steps of every call so far, from ``train_log.jsonl``: the first dispatch of a call
    includes compiling the training loop; checkpoint saves and data loading are excluded), which
    stays the model's training time when a later run reuses it.
    """
    done = training.newest_step(os.path.join(run_dir, "checkpoints"))
    what = "reusing" if done is not None and done >= tc.steps else "resuming" if done is not None else "training"
    _log(progress, f"[benchmark] {what} {tc.model} ({tc.steps} steps) in {run_dir}")
    tic = time.perf_counter()
    result = training.train_or_resume(tc, run_dir, resume=done is not None, progress=progress)
    seconds = time.perf_counter() - tic
    if result["interrupted"]:  # its checkpoint is saved: stop here, a rerun continues from it
        raise _interrupt.Interrupted(_interrupt.requested() or signal.SIGINT)
    record = {"steps": tc.steps, "start_step": int(result["start"]), "seconds": seconds,
              "logged_step_seconds": _logged_seconds(os.path.join(run_dir, "train_log.jsonl")),
              "loss": result["loss"]}
    return load(run_dir), record


def _logged_seconds(log_path: str) -> float:
    """The seconds of the optimisation steps logged in a training log (steps / steps_per_s per line)."""
    total, last = 0.0, 0
    with contextlib.suppress(OSError), open(log_path) as fh:
        for line in fh:
            if line.strip():
                entry = json.loads(line)
                total += (entry["step"] - last) / max(float(entry["steps_per_s"]), 1e-12)
                last = entry["step"]
    return total


def _model_based(estimator: str, model, run_dir: str, x: np.ndarray, key, D: int, config: BenchmarkConfig,
                 progress: bool) -> tuple[dict[str, np.ndarray], float, float]:
    """``estimator`` of the trained ``model`` at ``x``: ``({row: estimates}, compile seconds, run seconds)``."""
    trace = "exact" if D <= config.exact_trace_max_dim else "hutchinson"
    cfg = model_estimators.ModelLidConfig(
        checkpoint=run_dir, estimator=estimator, t0=config.t0, t0_grid=config.t0_grid, trace=trace,
        num_probes=config.num_probes, t=config.normal_bundle_t, batch_size=config.batch_size)
    keys = jax.random.split(key, x.shape[0])
    res, compile_s, run_s = model_estimators.estimate(cfg, model, x, keys, progress=progress)
    if estimator == "flipd":  # FLIPD at COARSE_T0 is the curve at that grid point
        res = {**res, "lid_coarse": np.asarray(res["curves"])[:, coarse_index(config)]}
    return {row: res[output] for row, output in READOUTS.get(estimator, ((estimator, "lid"),))}, compile_s, run_s


def coarse_index(config: BenchmarkConfig) -> int:
    """Index of `COARSE_T0` in ``geomspace(*t0_grid)``.

    Raises:
      ValueError: no grid point within 1 % of `COARSE_T0`.
    """
    lo, hi, num = config.t0_grid
    grid = np.geomspace(lo, hi, int(num))
    i = int(np.argmin(np.abs(np.log(grid / COARSE_T0))))
    if abs(grid[i] / COARSE_T0 - 1.0) > 0.01:
        raise ValueError(f"t0_grid={config.t0_grid!r} has no point within 1% of {COARSE_T0} (the flipd-t0=0.1 row); "
                         "use a grid such as (1e-3, 1.0, 31), whose points are 10^(k/10).")
    return i


def model_free_k(estimator: str, D: int, config: BenchmarkConfig) -> int:
    """The neighbours of a model-free estimator at ambient dimension ``D`` (see `BenchmarkConfig.lpca_k`)."""
    return max(config.lpca_k, D + 1) if estimator == "lpca" else config.knn_k


def _model_free(estimator: str, train_x: np.ndarray, test_x: np.ndarray, k: int) -> tuple[np.ndarray, float]:
    """``estimator`` at the test points, neighbours among the training points: (estimates, seconds)."""
    tic = time.perf_counter()
    est = getattr(lid, estimator)(jnp.asarray(train_x), k=k, queries=jnp.asarray(test_x))
    est = np.asarray(jax.block_until_ready(est), np.float32)
    return est, time.perf_counter() - tic


def _dataset_key(seed: int, name: str):
    """The estimators' key of data set ``name``: by its name, so it does not depend on the selection."""
    return jax.random.fold_in(jax.random.key(seed), zlib.crc32(name.encode()) % 2**31)


def _run_dataset(name: str, D: int, config: BenchmarkConfig, out: str, progress: bool) -> dict[str, Any]:
    """Data, models and every row of data set ``name``; writes its data and estimates, returns its metrics."""
    tic = time.perf_counter()
    train, test = make_data(name, config.n_train, config.n_test_per_component, config.seed)
    write_npz(_ensure_dir(os.path.join(out, _data_path(name))), **train)
    generator, kwargs = DATASETS[name]
    comps = np.unique(test["component"])
    entry: dict[str, Any] = {
        "D": D, "recipe": {"generator": generator, **kwargs}, "n_train": int(train["x"].shape[0]),
        "n_test": int(test["x"].shape[0]),
        "components": [{"component": int(c), "lid": int(test["lid"][test["component"] == c][0]),
                        "n_test": int((test["component"] == c).sum())} for c in comps],
        "training": {}, "rows": {}, "estimates": _estimates_path(name)}
    arrays = {"truth": test["lid"], "component": test["component"]}
    key = _dataset_key(config.seed, name)

    def add(rows: dict[str, np.ndarray], seconds: float, **extra: Any) -> None:
        for row, values in rows.items():
            arrays[row] = np.asarray(values, np.float32)
            entry["rows"][row] = {**summarize(values, test["lid"], test["component"], seconds), **extra}

    for kind, builder, names in (("diffusion", train_config, MODEL_BASED[:3]), ("lidl", flow_config, ("lidl",))):
        wanted = [e for e in config.estimators if e in names]
        if not wanted:
            continue
        run_dir = os.path.join(out, _model_dir(name, kind))
        model, entry["training"][kind] = _train_model(builder(name, D, config, os.path.join(out, _data_path(name))),
                                                      run_dir, progress)
        for estimator in wanted:
            _log(progress, f"[benchmark] {name}: {estimator} at {len(test['x'])} test points")
            rows, compile_s, run_s = _model_based(estimator, model, run_dir, test["x"],
                                                  jax.random.fold_in(key, ESTIMATORS.index(estimator)), D, config,
                                                  progress)
            add(rows, compile_s + run_s, compile_seconds=compile_s, run_seconds=run_s)
    for estimator in (e for e in config.estimators if e in MODEL_FREE):
        k = model_free_k(estimator, D, config)
        _log(progress, f"[benchmark] {name}: {estimator} (k={k}) at {len(test['x'])} test points")
        est, seconds = _model_free(estimator, train["x"], test["x"], k)
        add({estimator: est}, seconds, k=k)
    entry["rows"] = {row: entry["rows"][row] for row in row_names(config.estimators)}
    write_npz(_ensure_dir(os.path.join(out, _estimates_path(name))), **arrays)
    entry["seconds"] = time.perf_counter() - tic
    return entry


def _ensure_dir(path: str) -> str:
    """``path``, after creating its folder."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    return path


# --------------------------------------------------------------------------------------------
# resuming, and what else --out may hold


def identity(config: BenchmarkConfig, dims: dict[str, int]) -> dict[str, Any]:
    """What the models and data of a run depend on: results of one identity may share ``out``.

    The seed, the sizes that fix the drawn points, and per data set (D in ``dims``) the training
    configurations of its models, as metrics.json stores them (JSON: tuples become lists).
    """
    models = {}
    for name in config.datasets:
        data = _data_path(name)
        models[name] = {kind: dataclasses.asdict(builder(name, dims[name], config, data))
                        for kind, builder in (("diffusion", train_config), ("lidl", flow_config))}
    ident = {"seed": config.seed, "n_train": config.n_train, "n_test_per_component": config.n_test_per_component,
             "models": models}
    return json.loads(json.dumps(ident))


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What differs between two identities; data sets that only one of them has are not compared."""
    diff = [f"{k} {old.get(k)} vs {new[k]}" for k in ("seed", "n_train", "n_test_per_component")
            if old.get(k) != new[k]]
    old_models = old.get("models") if isinstance(old.get("models"), dict) else {}
    for name, models in new["models"].items():
        for kind, cfg in models.items():
            before = (old_models.get(name) or {}).get(kind)
            if isinstance(before, dict) and before != cfg:
                keys = [k for k in cfg if before.get(k) != cfg[k]]
                diff.append(f"{name} {kind} model ({', '.join(keys)})")
    return diff


def check_out(out: str, ident: dict[str, Any], *, overwrite: bool = False) -> dict[str, Any]:
    """Check, before any work, that ``out`` holds no other report; the earlier metrics to resume from.

    A benchmark of the same `identity` is resumed; another benchmark (other seed, sizes or training
    settings), an ``mmh-jax run`` report or an ``mmh-jax run validation`` report is refused, or with
    ``overwrite`` removed first (its results, data and models under ``out``). An unreadable
    ``metrics.json`` is replaced.

    Returns:
      the earlier metrics to build on ({} when none, or when they were removed).

    Raises:
      OtherRunError: (a ValueError) ``out`` holds another report and ``overwrite`` is False.
    """
    if not os.path.exists(os.path.join(out, "metrics.json")):
        return {}
    previous = pipeline_run.previous_metrics(out)
    if previous.get("kind") == "benchmark":
        diff = _differences(previous.get("identity") if isinstance(previous.get("identity"), dict) else {}, ident)
        if not diff:
            return previous
        kind = "benchmark"
        what = f"a benchmark of other data or models ({'; '.join(diff[:4])}{'; ...' if len(diff) > 4 else ''})"
    else:
        kind = pipeline_run.run_kind(previous)
        if kind == "other":  # unreadable or unknown: replaced (nothing tells whose it is)
            return {}
        what = "an `mmh-jax run` experiments report" if kind == "run" else "an `mmh-jax run validation` report"
    if not overwrite:
        raise pipeline_run.OtherRunError(
            f"--out {out!r} holds {what}; `mmh-jax run benchmark` would mix its results with it: choose another "
            "--out, or pass --overwrite to replace it (with the models it trained there).")
    if kind == "benchmark":
        _remove_benchmark(out, previous)
    else:
        pipeline_run.remove_run(out, previous, kind)
    return {}


def _remove_benchmark(out: str, previous: dict[str, Any]) -> None:
    """Remove what the benchmark of ``previous`` wrote into ``out``; its ``metrics.json`` last, so an
    interrupted removal is still refused and can be redone."""
    ident = previous.get("identity") if isinstance(previous.get("identity"), dict) else {}
    names = set(ident.get("models") or {}) | set(previous.get("datasets") or {})
    for name in sorted(n for n in names if n in DATASETS):
        for kind in ("diffusion", "lidl"):
            shutil.rmtree(os.path.join(out, _model_dir(name, kind)), ignore_errors=True)
        for rel in (_data_path(name), _estimates_path(name)):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(out, rel))
        with contextlib.suppress(OSError):
            os.rmdir(os.path.join(out, "models", name))  # only when empty
    for folder in ("models", "data", "estimates"):
        with contextlib.suppress(OSError):
            os.rmdir(os.path.join(out, folder))
    for rel in ("table.md", "estimates.png", "report.html", "metrics.json"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(out, rel))


def _finished(previous: dict[str, Any], name: str, metrics: dict[str, Any], out: str) -> bool:
    """Whether ``previous`` holds data set ``name``'s results from the configuration (but the data set
    selection) and package versions of ``metrics``, with its estimates still in ``out``."""
    old = (previous.get("datasets") or {}).get(name)
    if not isinstance(old, dict) or not isinstance(previous.get("config"), dict):
        return False

    def same(cfg):  # through JSON, as metrics.json stores it
        return json.loads(json.dumps({k: v for k, v in cfg.items() if k != "datasets"}))

    if same(previous["config"]) != same(metrics["config"]):
        return False
    if (previous.get("provenance") or {}).get("versions") != metrics["provenance"]["versions"]:
        return False
    return os.path.exists(os.path.join(out, _estimates_path(name)))


# --------------------------------------------------------------------------------------------
# the run


def run(config: BenchmarkConfig, out: str, *, progress: bool = True, overwrite: bool = False,
        recompute: bool = False) -> dict[str, Any]:
    """Run the benchmark into ``out`` (files in the module docstring); returns the metrics.

    Data sets finished by an earlier run into ``out`` with the same configuration are kept, not
    computed again, unless ``recompute`` (the models are reused either way). On ``KeyboardInterrupt``
    (Ctrl-C; SIGTERM under the CLI) ``metrics.json`` holds the data sets finished so far, the models
    their checkpoints, and the interrupt propagates.

    Raises:
      OtherRunError: (a ValueError) ``out`` holds another report (`check_out`), before any work.
      ValueError: ``lpca_k``'s D + 1 neighbours exceed ``n_train`` for a data set, before any work.
      mmh_jax.checkpoint.CheckpointError: a model under ``out/models`` of another configuration
        (e.g. left by an interrupted run of other settings).
    """
    dims = {name: ambient_dim(name) for name in config.datasets}
    for name, D in dims.items():
        if model_free_k("lpca", D, config) > config.n_train:
            raise ValueError(f"n_train={config.n_train} is fewer than lPCA's {model_free_k('lpca', D, config)} "
                             f"neighbours at D = {D} ({name}); raise n_train or drop lpca from estimators.")
    ident = identity(config, dims)
    previous = check_out(out, ident, overwrite=overwrite)
    os.makedirs(out, exist_ok=True)
    warning = pipeline_run.smoke_warning(config)
    metrics: dict[str, Any] = {
        "kind": "benchmark", "preset": config.preset, "seed": config.seed, "smoke_run": warning is not None,
        **({"warning": warning} if warning else {}), "identity": ident, "config": dataclasses.asdict(config),
        "provenance": provenance(), "backend": jax.default_backend(), "devices": jax.device_count(), "datasets": {}}
    for name in config.datasets:
        if not recompute and _finished(previous, name, metrics, out):
            metrics["datasets"][name] = previous["datasets"][name]
    report.write_json(os.path.join(out, "metrics.json"), metrics)  # the identity, before any training
    if warning:
        _log(progress, warning)
    start = time.perf_counter()
    todo = [name for name in config.datasets if name not in metrics["datasets"]]
    for name in config.datasets:
        if name not in todo:
            _log(progress, f"[benchmark] {name}: finished by an earlier run into {out} with the same configuration; "
                           "keeping its results (recompute=True / --recompute scores it again)")
    with fast_compile(config.fast_compile), \
            tqdm(total=len(todo), desc="benchmark", unit="data set", disable=not progress, file=sys.stderr) as bar:
        for name in todo:
            bar.set_postfix_str(name)
            try:
                _log(progress, f"== {name} (D = {dims[name]}) ==")
                entry = _run_dataset(name, dims[name], config, out, progress)
            except KeyboardInterrupt:
                done = [n for n in config.datasets if n in metrics["datasets"]]
                print(f"interrupted during {name}: {os.path.join(out, 'metrics.json')} holds "
                      f"{', '.join(done) if done else 'no finished data set'}; trained models are kept under "
                      f"{os.path.join(out, 'models')}. Rerun the same command to resume.", file=sys.stderr)
                raise
            metrics["datasets"] = {n: entry if n == name else metrics["datasets"][n]
                                   for n in config.datasets if n == name or n in metrics["datasets"]}
            metrics["timing"] = {"total_s": time.perf_counter() - start}
            write_outputs(config, metrics, out)
            bar.update()
    metrics.setdefault("timing", {"total_s": time.perf_counter() - start})
    write_outputs(config, metrics, out)
    if progress:
        print(table_markdown(config, metrics))
        if warning:
            print(f"\n{warning}")
        print(f"\nreport: {os.path.abspath(os.path.join(out, 'report.html'))} (with metrics.json, table.md, "
              "estimates.png)")
    return metrics


# --------------------------------------------------------------------------------------------
# outputs

#: The table's columns.
COLUMNS = ("dataset", "D", "estimator", "MAE", "concordance", "component means (truth)", "s/point", "non-finite",
           "n")


def table_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per data set × estimator of ``metrics`` (as `run` returns it), with the `COLUMNS`."""
    rows = []
    for name, entry in metrics["datasets"].items():
        for row, m in entry["rows"].items():
            means = " · ".join(f"{report.format_value(_nan(c['mean']), 2)} ({c['lid']})" for c in m["components"])
            rows.append({"dataset": name, "D": entry["D"], "estimator": row, "MAE": _nan(m["mae"]),
                         "concordance": _nan(m["concordance"]), "component means (truth)": means,
                         "s/point": _nan(m["seconds_per_point"]), "non-finite": m["non_finite"], "n": m["n"]})
    return rows


def _nan(v: Any) -> float:
    """A number from metrics (None, as JSON stores NaN, becomes NaN)."""
    return float("nan") if v is None else float(v)


def _notes(config: BenchmarkConfig) -> str:
    """What the table's numbers are, in a sentence or three."""
    lo, hi, num = config.t0_grid
    return (f"Estimates at {config.n_test_per_component} held-out test points per component; models trained on "
            f"{config.n_train} points. flipd: FLIPD at t0 = {config.t0}; flipd-t0=0.1, flipd-knee and flipd-plateau read the "
            f"same curve ({num} t0 in [{lo:g}, {hi:g}]); exact traces up to D = {config.exact_trace_max_dim}, "
            f"Hutchinson above. Model-free estimators take each test point's neighbours among the training points "
            f"(lpca: k = max({config.lpca_k}, D + 1); mle, twonn, ess: k = {config.knn_k}). MAE, concordance and "
            "component means are over the finite estimates; non-finite counts the others. s/point: seconds per test "
            "point, training excluded, compilation included (the four flipd rows share one pass and its time).")


def table_markdown(config: BenchmarkConfig, metrics: dict[str, Any]) -> str:
    """The markdown of ``table.md``: a title, the smoke-run warning if any, the notes and the table."""
    head = "# Synthetic LID benchmark (FLIPD paper's data sets)\n\n"
    if metrics.get("warning"):
        head += f"**{metrics['warning']}**\n\n"
    return head + _notes(config) + "\n\n" + report.markdown_table(table_rows(metrics), list(COLUMNS)) + "\n"


def write_outputs(config: BenchmarkConfig, metrics: dict[str, Any], out: str) -> None:
    """Write ``metrics.json``, ``table.md``, ``estimates.png`` and ``report.html`` of ``metrics`` into ``out``."""
    report.write_json(os.path.join(out, "metrics.json"), metrics)
    report.write_text(os.path.join(out, "table.md"), table_markdown(config, metrics))
    plot_estimates(os.path.join(out, "estimates.png"),
                   {name: os.path.join(out, entry["estimates"]) for name, entry in metrics["datasets"].items()},
                   row_names(config.estimators))
    sections = [{"title": "Every estimator on every data set", "reading": _notes(config),
                 "rows": table_rows(metrics), "figures": ["estimates.png"]}]
    training_rows = [{"dataset": name, "model": kind, "steps": t["steps"], "seconds (this run)": t["seconds"],
                      "training seconds (logged)": t["logged_step_seconds"]}
                     for name, entry in metrics["datasets"].items() for kind, t in entry["training"].items()]
    if training_rows:
        sections.append({"title": "Training", "rows": training_rows,
                         "reading": "Seconds of this run's training call (a reused model: its restore) and of the "
                                    "training dispatches logged so far (the first of each call compiles the "
                                    "loop; checkpoint saves excluded): the model's training time."})
    footer = (f"mmh-jax run benchmark, preset {config.preset}, seed {config.seed}, backend {metrics['backend']} × "
              f"{metrics['devices']}. Full configuration and every number in metrics.json; per-point estimates in "
              "estimates/.")
    page = report.html_report("Synthetic LID benchmark: mmh-jax run benchmark", sections, base_dir=out,
                              footer=footer, banner=metrics.get("warning", ""))
    report.write_text(os.path.join(out, "report.html"), page)


def plot_estimates(path: str, files: dict[str, str], rows: list[str]) -> None:
    """``path``: per data set a panel of each row's estimates per component (boxes: quartiles, whiskers
    5–95 %, a dot at the median), the true LID of each component as a black bar; one colour per estimator.

    ``files`` maps data set names to their estimates ``.npz`` (``truth``, ``component`` and one array per row).
    """
    from mmh_jax._plotting import pyplot

    plt = pyplot()
    names = list(files)
    cols = min(3, max(len(names), 1))
    nrows = max(math.ceil(len(names) / cols), 1)
    fig, axes = plt.subplots(nrows, cols, figsize=(max(5.2 * cols, 7.0), 3.4 * nrows + 0.4), squeeze=False)
    colors = plt.cm.tab10(np.arange(len(rows)) % 10)
    width = 0.8 / max(len(rows), 1)
    for ax in axes.flat[len(names):]:
        ax.axis("off")
    for ax, name in zip(axes.flat, names):
        with np.load(files[name]) as f:
            arrays = dict(f)
        comp, truth = arrays["component"], arrays["truth"]
        comps = np.unique(comp)
        for j, row in enumerate(r for r in rows if r in arrays):
            data = [arrays[row][(comp == c) & np.isfinite(arrays[row])] for c in comps]
            pos = np.arange(len(comps)) - 0.4 + width * (j + 0.5)
            keep = [i for i, d in enumerate(data) if d.size]
            if keep:
                ax.boxplot([data[i] for i in keep], positions=pos[keep], widths=width * 0.9, whis=(5, 95),
                           showfliers=False, patch_artist=True, manage_ticks=False,
                           boxprops={"facecolor": colors[j], "edgecolor": colors[j]},
                           medianprops={"color": "k", "lw": 0.6}, whiskerprops={"color": colors[j]},
                           capprops={"color": colors[j]})
                # a dot at each median: a constant estimate (a box of zero height) still shows
                ax.plot(pos[keep], [np.median(data[i]) for i in keep], "o", color=colors[j], ms=3, mec="k", mew=0.3)
        for i, c in enumerate(comps):
            ax.hlines(float(np.mean(truth[comp == c])), i - 0.45, i + 0.45, color="k", lw=2)
        ax.set_xticks(np.arange(len(comps)))
        ax.set_xticklabels([f"comp {int(c)}\nLID {report.format_value(float(np.mean(truth[comp == c])), 0)}"
                            for c in comps], fontsize=8)
        ax.set_title(name, fontsize=9)
        ax.set_ylabel("estimated LID")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colors[j]) for j in range(len(rows))]
    fig.legend(handles, rows, loc="lower center", ncol=min(len(rows), 5), fontsize=8, frameon=False)
    fig.suptitle("Estimates per component\n(boxes: quartiles, whiskers 5–95 %, dots: medians; black bars: true LID)",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0.05 + 0.02 * math.ceil(len(rows) / 5), 1, 1))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
