"""``mmh-jax lid --checkpoint DIR``: the LID_θ of a trained model at points, per point.

The estimators, and the one compiled pass that runs them, are
`mmh_jax.experiments.model_estimators` (its table `ESTIMATORS`):
``flipd``, ``normal-bundle`` and ``fp-regress`` on a diffusion model, ``lidl``, ``flow-jacobian``
and ``fast-flow-lidl`` on a flow checkpoint (``mmh-jax train --model flow|lidl``). This module
picks the points, checks that the estimator fits the checkpoint's kind of model, writes the
``.npz`` and prints the summary.

Points (``data``):

- ``"train"``: the model's training data, rebuilt from its saved config with
  `mmh_jax.experiments.training.load_training_data`. Synthetic generators are deterministic
  given ``n`` and ``seed``, so the true LID* and the component of each point are known;
- ``"samples"``: ``n`` samples drawn from the model (``model.sample``; default 1000);
- a path: ``.npz`` (points under ``x`` or ``images`` or as the only array; optional ground truth
  ``lid`` — or ``truth``, which wins, as in the files this command writes — and ``component``,
  shape ``(N,)``) or ``.npy``. A 2-D array is taken as it is; images (3-D/4-D, and any other path:
  image folder, MNIST IDX, CIFAR-10, ``digits``) are read with [`mmh_jax.data.images`][mmh_jax.data.images],
  i.e. scaled to [−1, 1] exactly as for training. Points must have the model's event shape (images are
  flattened for an MLP model when the sizes agree).

``n`` subsamples train/file points when there are more: rows ``sorted(default_rng(seed).choice(N,
n, replace=False))``. Keys: ``k_est, k_sample = jax.random.split(jax.random.key(seed))``; the
i-th point written gets ``jax.random.split(k_est, N)[i]``; samples are
``model.sample(k_sample, n, method=sampler, num_steps=num_steps)``.

All points go through ONE jitted function of a fixed number of points (compiled once, timed
separately), which maps the single-example estimator with
[`mmh_jax.parallel.map_points`][mmh_jax.parallel.map_points] (``batch_size`` points at a time per device,
sharded over the devices); longer runs are fed through it chunk by chunk under a progress bar.

Output ``.npz`` keys (N points, G = ``t0_grid[2]`` or ``tau_grid[2]``, M flows):

- ``lid`` ``(N,)`` float32: the estimate (FLIPD at ``t0`` for ``flipd``);
- ``x`` ``(N, *event_shape)`` float32: the points; ``index`` ``(N,)`` int64: their rows in the
  training data / file (``arange(N)`` for samples);
- ``truth`` ``(N,)`` int32 (float32 for a file's fractional truth) and ``component`` ``(N,)``
  int32: ground truth, when known;
- ``flipd`` only: ``t0`` ``()`` float32, ``t0s`` ``(G,)`` float32 the grid, ``curves`` ``(N, G)``
  float32 FLIPD over the grid, ``lid_knee`` ``(N,)`` and ``t0_knee`` ``(N,)`` float32 the knee
  ([`mmh_jax.lid.knee`][mmh_jax.lid.knee]) of each curve, ``lid_plateau`` and ``t0_plateau`` the level and
  centre of its flattest stretch ([`mmh_jax.lid.plateau`][mmh_jax.lid.plateau], window 1, t0 ≤ 0.5);
- flows: ``deltas`` ``(M,)`` and, for ``lidl``, ``log_probs`` ``(N, M)``; for the Jacobian
  estimators ``tau`` ``()``, ``taus`` ``(G,)``, ``curves`` ``(N, G)``, ``lid_plateau`` and
  ``tau_plateau`` ``(N,)``, ``member`` ``()``; ``flow-jacobian`` adds ``singular_values`` ``(N, D)``.

A summary is printed (overall statistics, per component with mean, std and MAE when the truth is
known) through the same helpers as the model-free path (`mmh_jax.experiments.lid_cmd`).

Examples:
  >>> cfg = preset("quick", checkpoint="runs/lollipop", estimator="normal-bundle")
  >>> cfg.n, cfg.t, cfg.data
  (256, 0.01, 'train')

(then ``run(cfg, "out/lid_theta")``; the CLI is
``mmh-jax lid --checkpoint runs/lollipop --estimator normal-bundle --preset quick``).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any

import jax
import numpy as np

from mmh_jax.data import synthetic
from mmh_jax.data.files import read_points
from mmh_jax.experiments._outputs import write_npz
from mmh_jax.experiments._presets import from_preset
from mmh_jax.experiments.lid_cmd import out_path, print_summary, summarize
from mmh_jax.experiments.model_estimators import ESTIMATORS, ModelLidConfig, estimate, names

__all__ = ["DATA_MODES", "PRESETS", "SAMPLES_DEFAULT_N", "load_points", "preset", "run"]

#: ``data`` values that are not paths.
DATA_MODES = ("train", "samples")

#: Samples drawn for ``data="samples"`` when ``n`` is None.
SAMPLES_DEFAULT_N = 1000

#: Preset name -> ModelLidConfig fields; ``quick`` estimates at 256 points.
PRESETS: dict[str, dict[str, Any]] = {
    "quick": {"n": 256},
    "full": {},
}


def preset(name: str, **overrides) -> ModelLidConfig:
    """A `ModelLidConfig` from a preset (``"quick"``/``"full"``); None overrides keep the preset's value."""
    return from_preset(ModelLidConfig, PRESETS, name, overrides)


# --------------------------------------------------------------------------------------------
# points


def _subsample(n_all: int, n: int | None, seed: int) -> np.ndarray:
    if n is None or n >= n_all:
        return np.arange(n_all)
    return np.sort(np.random.default_rng(seed).choice(n_all, size=n, replace=False))


def _training_points(model) -> tuple[np.ndarray, Any, Any, str]:
    from mmh_jax.experiments import training

    saved = model.config
    fields = {f.name for f in dataclasses.fields(training.TrainConfig)}
    tc = training.TrainConfig(**{k: v for k, v in saved.items() if k in fields})
    try:
        x, _ = training.load_training_data(tc)
    except FileNotFoundError as e:
        raise ValueError(
            f"--data train: the model was trained on {tc.data!r}, which cannot be read from here ({e}); "
            "pass that file with --data PATH."
        ) from None
    truth = comp = None
    if tc.data in synthetic.GENERATORS:
        ds = synthetic.GENERATORS[tc.data](tc.n, seed=tc.seed)
        if ds.x.shape[0] == x.shape[0] and np.array_equal(np.asarray(ds.x, np.float32).reshape(x.shape), x):
            truth, comp = np.asarray(ds.lid, np.int32), np.asarray(ds.component, np.int32)
    return x, truth, comp, f"its training data ({tc.data})"


def _read_file(path: str):
    """(array, truth, component, truth's key) of a .npy/.npz file; the points under x, images or the only array."""
    try:
        stored = read_points(path, keys=("x", "images"))
    except ValueError as e:
        raise ValueError(f"--data {e}") from None
    # Ground truth: 'truth' (as written by `mmh-jax lid`, whose 'lid' are estimates), else 'lid'.
    truth_key = "truth" if "truth" in stored.arrays else "lid"
    return stored.x, stored.beside(truth_key), stored.beside("component"), truth_key


def _truth_array(t: np.ndarray, path: str, key: str) -> np.ndarray:
    """Integer truth as int32, fractional truth as float32; non-finite truth is refused."""
    if np.issubdtype(t.dtype, np.integer):
        return t.astype(np.int32)
    t = t.astype(np.float32)
    if not np.all(np.isfinite(t)):
        raise ValueError(f"--data {path!r}: the ground truth '{key}' has NaN/inf values; drop or fix them.")
    return t.astype(np.int32) if np.all(t == np.round(t)) else t


def _file_points(path: str):
    from mmh_jax.data import images

    if path.lower().endswith((".npz", ".npy")):
        if not os.path.exists(path):
            raise FileNotFoundError(f"--data {path!r}: no such file; pass 'train', 'samples' or an existing path.")
        raw, lid, comp, truth_key = _read_file(path)
        if raw.ndim < 2 or not (np.issubdtype(raw.dtype, np.floating) or np.issubdtype(raw.dtype, np.integer)):
            raise ValueError(
                f"--data {path!r}: points must be a numeric array with one point per row, got shape {raw.shape} "
                f"dtype {raw.dtype}."
            )
        if raw.ndim == 2:
            x = raw.astype(np.float32)
            if not np.all(np.isfinite(x)):
                raise ValueError(f"--data {path!r} has non-finite values (NaN/inf); clean them first.")
        else:  # images: the scaling used for training
            x = images.from_array(raw, source=path).x
        for name, arr in ((truth_key, lid), ("component", comp)):
            if arr is not None and np.shape(arr) != (x.shape[0],):
                raise ValueError(
                    f"--data {path!r}: '{name}' (ground truth) must have shape (N,) = ({x.shape[0]},), got "
                    f"{np.shape(arr)}."
                )
        truth = None if lid is None else _truth_array(np.asarray(lid), path, truth_key)
        comp = None if comp is None else np.asarray(comp, np.int32)
        return x, truth, comp, path
    if path != "digits" and not os.path.exists(path):
        raise FileNotFoundError(
            f"--data {path!r}: no such file or folder; pass 'train', 'samples' or an existing path."
        )
    return images.load(path).x, None, None, path


def _fit_event_shape(x: np.ndarray, event: tuple[int, ...], data: str, checkpoint: str) -> np.ndarray:
    if tuple(x.shape[1:]) == event:
        return x
    if len(event) == 1 and int(np.prod(x.shape[1:])) == event[0]:
        return x.reshape(x.shape[0], -1)  # images for an MLP trained on flattened images
    want = ", ".join(map(str, event))
    raise ValueError(
        f"--data {data!r}: points of shape {tuple(x.shape[1:])} (array {x.shape}) do not match the event shape "
        f"{event} of the model in --checkpoint {checkpoint!r}; pass points of shape (N, {want})."
    )


def load_points(config: ModelLidConfig, model, k_sample):
    """The points at which to estimate: ``(x, truth, component, index, number of points before subsampling,
    description)``; ``k_sample`` draws the samples of ``data="samples"``.

    Raises:
      FileNotFoundError: a ``data`` path that does not exist.
      ValueError: no points, unreadable data, or points whose shape does not match the model's event shape.
    """
    if config.data == "samples" and model.kind == "flow":  # a flow: exact samples in one pass
        n = config.n if config.n is not None else SAMPLES_DEFAULT_N
        x = np.asarray(model.sample(k_sample, n, member=int(np.argmin(model.deltas))), np.float32)
        return x, None, None, np.arange(n), n, "its samples (the flow at the smallest delta)"
    if config.data == "samples":
        n = config.n if config.n is not None else SAMPLES_DEFAULT_N
        print(f"mmh-jax lid: drawing {n} samples ({config.sampler}, {config.num_steps} steps) ...",
              file=sys.stderr, flush=True)
        x = np.asarray(model.sample(k_sample, n, method=config.sampler, num_steps=config.num_steps), np.float32)
        return x, None, None, np.arange(n), n, f"its samples ({config.sampler}, {config.num_steps} steps)"
    if config.data == "train":
        x, truth, comp, desc = _training_points(model)
    else:
        x, truth, comp, desc = _file_points(config.data)
    if x.shape[0] == 0:
        raise ValueError(f"--data {config.data!r} holds no points (shape {x.shape}); pass a non-empty data set.")
    x = _fit_event_shape(x, model.event_shape, config.data, config.checkpoint)
    n_all = x.shape[0]
    idx = _subsample(n_all, config.n, config.seed)
    if len(idx) < n_all:
        x, truth, comp = x[idx], None if truth is None else truth[idx], None if comp is None else comp[idx]
    return np.asarray(x, np.float32), truth, comp, idx, n_all, desc



# --------------------------------------------------------------------------------------------
# the command


def _check_model(config: ModelLidConfig, model) -> None:
    """The estimator must fit the checkpoint's kind of model, and its times the model's (0, T]."""
    kind = ESTIMATORS[config.estimator].kind
    if model.kind == "flow" and kind != "flow":
        raise ValueError(
            f"--estimator {config.estimator} needs a diffusion model, but --checkpoint {config.checkpoint!r} holds "
            f"a normalizing flow ({model.config['model']}); use one of {', '.join(names('flow'))}."
        )
    if model.kind == "flow" and config.estimator == "lidl" and model.num_members < 2:
        raise ValueError(
            f"--estimator lidl needs flows trained at >= 2 noise scales, but --checkpoint {config.checkpoint!r} holds "
            f"one flow (delta {model.deltas.tolist()}); train one with `mmh-jax train --model lidl`, or use "
            "flow-jacobian or fast-flow-lidl here."
        )
    if model.kind == "flow":
        return
    if kind == "flow":
        *first, last = names("diffusion")
        raise ValueError(f"--estimator {config.estimator} needs a normalizing flow (`mmh-jax train --model flow` or "
                         f"`--model lidl`), but --checkpoint {config.checkpoint!r} holds a diffusion model "
                         f"({model.config['model']}); use {', '.join(first)} or {last}.")
    T = float(model.sde.T)
    for name, v in (("t0", config.t0), ("t", config.t), ("t0_grid max", config.t0_grid[1])):
        if not 0.0 < float(v) <= T:
            raise ValueError(f"{name} must lie in (0, T] = (0, {T:g}] for this model, got {v!r}.")


def _describe(config: ModelLidConfig, model, dim: int) -> str:
    """The line that says what ``lid`` is."""
    if config.estimator == "flipd":
        return f"lid = FLIPD at t0 = {config.t0:g} (trace {config.trace}, D = {dim})"
    if config.estimator == "normal-bundle":
        k = 4 * dim if config.num_samples is None else config.num_samples
        return f"lid = normal bundle at t = {config.t:g} with K = {k} noisy copies"
    if config.estimator == "fp-regress":
        return "lid = FPRegress over log noise scales log(geomspace(0.01, 0.1, 8)) (trace " + config.trace + ")"
    if config.estimator == "lidl":
        d = model.deltas
        return (f"lid = LIDL: D = {dim} + slope of log p_delta(x) against log delta over {len(d)} flows, "
                f"delta in [{d.min():g}, {d.max():g}]")
    what = "#{singular values of J_g > e^tau}" if config.estimator == "flow-jacobian" else "Fast-Flow-LIDL"
    return (f"lid = {what} at tau = {config.tau:g}, flow trained at delta = "
            f"{float(model.deltas.min()):g}")


def _extra_outputs(config: ModelLidConfig, model, res: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The ``.npz`` arrays of this estimator besides ``lid``, ``x``, ``index``, ``truth`` and ``component``."""
    if config.estimator == "flipd":
        return dict(t0=np.float32(config.t0), t0s=config.t0s, curves=res["curves"], lid_knee=res["lid_knee"],
                    t0_knee=res["t0_knee"], lid_plateau=res["lid_plateau"], t0_plateau=res["t0_plateau"])
    if model.kind != "flow":
        return {}
    extra: dict[str, np.ndarray] = {"deltas": np.asarray(model.deltas, np.float32)}
    if config.estimator == "lidl":
        extra["log_probs"] = res["log_probs"]
    else:
        extra.update(tau=np.float32(config.tau), taus=config.taus, curves=res["curves"],
                     lid_plateau=res["lid_plateau"], tau_plateau=res["tau_plateau"],
                     member=np.int32(np.argmin(model.deltas)))
        if "singular_values" in res:
            extra["singular_values"] = res["singular_values"]
    return extra


def _write_results(config: ModelLidConfig, model, out: str, lid, points, extra: dict[str, np.ndarray], seconds,
                   description_line: str, *, what: str) -> dict[str, Any]:
    """Write the ``.npz`` (``lid``, ``x``, ``index``, ``truth``/``component`` when known, plus ``extra``) and
    print and return the summary of ``lid``; ``points`` is what `load_points` returns, ``seconds`` the
    (compile, run) times."""
    x, truth, comp, index, n_all, description = points
    compile_s, run_s = seconds
    n = x.shape[0]
    print(f"mmh-jax lid: compiled in {compile_s:.2f} s, estimated in {run_s:.2f} s "
          f"({n / max(run_s, 1e-9):.1f} points/s, batch size {config.batch_size})", file=sys.stderr, flush=True)
    path = out_path(out)  # refused before the work if it existed (see run)
    os.makedirs(out, exist_ok=True)
    arrays: dict[str, np.ndarray] = {"lid": lid, "x": x, "index": np.asarray(index, np.int64)}
    if truth is not None:
        arrays["truth"] = np.asarray(truth)
    if comp is not None:
        arrays["component"] = np.asarray(comp, np.int32)
    write_npz(path, **arrays, **extra)
    summary: dict[str, Any] = {
        "estimator": config.estimator,
        "checkpoint": config.checkpoint,
        "step": model.step,
        "data": description,
        "num_points": n,
        "num_available": n_all,
        "event_shape": tuple(int(s) for s in x.shape[1:]),
        "compile_seconds": compile_s,
        "seconds": run_s,
        **summarize(lid, truth, comp),
        "out": path,
    }
    header = (f"mmh-jax lid: {config.estimator} of the {what} in {config.checkpoint} (step {model.step}) on "
              f"{description}: {n} points" + (f" (a seeded subsample of {n_all})" if n < n_all else "")
              + f" of shape {summary['event_shape']}\n{description_line}")
    print_summary(header, summary)
    return summary


def run(config: ModelLidConfig, out: str, *, progress: bool = True, overwrite: bool = False) -> dict[str, Any]:
    """Estimate LID_θ per point, write ``out`` (.npz, keys in the module docstring), print a summary.

    Returns the summary: the settings, ``num_points``, ``event_shape``, ``compile_seconds``,
    ``seconds`` (run time after compiling), ``overall``/``group_by``/``groups`` of ``lid`` (see
    `mmh_jax.experiments.lid_cmd.summarize`), ``knee`` (the same for ``lid_knee``, flipd only),
    ``plateau`` (the same for ``lid_plateau``: flipd, flow-jacobian, fast-flow-lidl) and ``out`` (the
    path written: ``lid.npz`` in the directory ``out``, refused before any work when it exists,
    unless ``overwrite``).

    Raises:
      FileNotFoundError: no ``checkpoint`` directory or ``data`` file.
      ValueError: an estimator for another kind of model, data whose shape does not match the model's,
        times outside (0, T], unreadable data.
      mmh_jax.checkpoint.CheckpointError: no readable checkpoint in the directory.
    """
    from mmh_jax.checkpoint import CheckpointError, DamagedCheckpointError
    from mmh_jax.trained import load

    out_path(out, overwrite=overwrite)
    if not os.path.isdir(config.checkpoint):
        raise FileNotFoundError(
            f"--checkpoint {config.checkpoint!r}: no such directory; pass the run directory written by "
            "`mmh-jax train --out DIR`."
        )
    try:
        model = load(config.checkpoint, step=config.step)
    except DamagedCheckpointError:
        raise  # its one line names the step, the intact ones and --step already
    except CheckpointError as e:
        raise CheckpointError(
            f"--checkpoint {config.checkpoint!r}: {e} Pass the run directory written by `mmh-jax train --out DIR`."
        ) from None
    _check_model(config, model)
    what = "flow" if model.kind == "flow" else "model"
    k_est, k_sample = jax.random.split(jax.random.key(config.seed))
    x, truth, comp, index, n_all, description = load_points(config, model, k_sample)
    n, dim = x.shape[0], int(np.prod(x.shape[1:]))
    keys = jax.random.split(k_est, n)
    print(f"mmh-jax lid: {config.estimator} of the {what} in {config.checkpoint} (step {model.step}) at {n} "
          f"points of shape {tuple(x.shape[1:])} ...", file=sys.stderr, flush=True)
    res, compile_s, run_s = estimate(config, model, x, keys, progress=progress)
    summary = _write_results(config, model, out, res["lid"], (x, truth, comp, index, n_all, description),
                             _extra_outputs(config, model, res), (compile_s, run_s), _describe(config, model, dim),
                             what=what)
    if config.estimator == "flipd":
        summary["knee"] = summarize(res["lid_knee"], truth, comp)
        lo, hi, num = config.t0_grid
        finite = res["t0_knee"][np.isfinite(res["t0_knee"])]
        med = float(np.median(finite)) if finite.size else float("nan")
        print_summary(f"lid_knee = FLIPD at the knee of its curve over {num} t0 in [{lo:g}, {hi:g}] "
                      f"(median t0_knee {med:.3g})", summary["knee"])
        summary["plateau"] = summarize(res["lid_plateau"], truth, comp)
        print_summary(f"lid_plateau = FLIPD on the flattest stretch of its curve (t0 <= 0.5; median t0 "
                      f"{float(np.median(res['t0_plateau'])):.3g})", summary["plateau"])
    elif model.kind == "flow" and config.estimator != "lidl":
        summary["plateau"] = summarize(res["lid_plateau"], truth, comp)
        print_summary(f"lid_plateau = the flattest stretch of the curve over tau in [log delta, log delta + log 10] "
                      f"(median tau {float(np.median(res['tau_plateau'])):.3g})", summary["plateau"])
    print(f"mmh-jax lid: wrote {summary['out']}", file=sys.stderr)
    return summary
