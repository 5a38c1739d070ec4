"""``mmh-jax lid --checkpoint DIR``: the LID_θ of a trained diffusion model at points, per point.

Estimators (DESIGN §3, :mod:`mmh_jax.lid`), on the model's unconditional score:

- ``flipd``: FLIPD at a fixed ``t0`` (default 0.05, DESIGN §3b) **and** at the knee of the FLIPD
  curve over a geometric grid ``geomspace(*t0_grid)`` (default 24 times in [1e-3, 1]); the
  Hutchinson probes of a point are shared by its fixed-t0 value and its curve;
- ``normal-bundle``: the normal-bundle estimate at time ``t`` (default 0.01) with ``num_samples``
  noisy copies (default 4·D);
- ``fp-regress``: FPRegress with the defaults of :func:`mmh_jax.lid.fp_regress`;
- on a flow checkpoint (``mmh-jax train --model flow|lidl``): ``lidl``, ``flow-jacobian`` and
  ``fast-flow-lidl``, with the τ grid ``linspace(*tau_grid)`` (see
  :mod:`mmh_jax.experiments.flow_lid`, which also lists their ``.npz`` keys).

Points (``data``):

- ``"train"``: the model's training data, rebuilt from its saved config with
  :func:`mmh_jax.experiments.train_cmd.load_training_data`. Synthetic generators are deterministic
  given ``n`` and ``seed``, so the true LID* and the component of each point are known;
- ``"samples"``: ``n`` samples drawn from the model (``model.sample``; default 1000);
- a path: ``.npz`` (points under ``x`` or ``images`` or as the only array; optional ground truth
  ``lid`` — or ``truth``, which wins, as in the files this command writes — and ``component``,
  shape ``(N,)``) or ``.npy``. A 2-D array is taken as it is; images (3-D/4-D, and any other path:
  image folder, MNIST IDX, CIFAR-10, ``digits``) are read with :mod:`mmh_jax.data.images`, i.e.
  scaled to [−1, 1] exactly as for training. Points must have the model's event shape (images are
  flattened for an MLP model when the sizes agree).

``n`` subsamples train/file points when there are more: rows ``sorted(default_rng(seed).choice(N,
n, replace=False))``. Keys: ``k_est, k_sample = jax.random.split(jax.random.key(seed))``; the
i-th point written gets ``jax.random.split(k_est, N)[i]``; samples are
``model.sample(k_sample, n, method=sampler, num_steps=num_steps)``.

All points go through ONE jitted function of a fixed number of points (compiled once, timed
separately), which maps the single-example estimator with
:func:`mmh_jax.parallel.map_points` (``batch_size`` points at a time per device, sharded over the
devices); longer runs are fed through it chunk by chunk under a progress bar.

Output ``.npz`` keys (N points, G = ``t0_grid[2]``):

- ``lid`` ``(N,)`` float32: the estimate (FLIPD at ``t0`` for ``flipd``);
- ``x`` ``(N, *event_shape)`` float32: the points; ``index`` ``(N,)`` int64: their rows in the
  training data / file (``arange(N)`` for samples);
- ``truth`` ``(N,)`` int32 (float32 for a file's fractional truth) and ``component`` ``(N,)``
  int32: ground truth, when known;
- ``flipd`` only: ``t0`` ``()`` float32, ``t0s`` ``(G,)`` float32 the grid, ``curves`` ``(N, G)``
  float32 FLIPD over the grid, ``lid_knee`` ``(N,)`` and ``t0_knee`` ``(N,)`` float32 the knee
  (:func:`mmh_jax.lid.knee`) of each curve, ``lid_plateau`` and ``t0_plateau`` the level and centre
  of its flattest stretch (:func:`mmh_jax.lid.plateau`, window 1, t0 ≤ 0.5).

A summary is printed (overall statistics, per component with mean, std and MAE when the truth is
known) through the same helpers as the model-free path (:mod:`mmh_jax.experiments.lid_cmd`).

Example:
  >>> cfg = preset("quick", checkpoint="runs/lollipop", estimator="normal-bundle")
  >>> cfg.n, cfg.t, cfg.data
  (256, 0.01, 'train')

(then ``run(cfg, "out/lid_theta.npz")``; the CLI is
``mmh-jax lid --checkpoint runs/lollipop --estimator normal-bundle --preset quick``).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from typing import Any

import numpy as np

from mmh_jax.experiments._presets import from_preset
from mmh_jax import _interrupt
from mmh_jax.experiments._outputs import write_npz
from mmh_jax.experiments.lid_cmd import out_path, print_summary, summarize

__all__ = ["DATA_MODES", "ESTIMATORS", "ModelLidConfig", "PRESETS", "SAMPLES_DEFAULT_N", "preset", "run"]

#: ``--estimator`` names with a trained model (functions ``flipd``, ``normal_bundle``, ``fp_regress``;
#: the last three need a flow checkpoint, :mod:`mmh_jax.experiments.flow_lid`).
ESTIMATORS = ("flipd", "normal-bundle", "fp-regress", "lidl", "flow-jacobian", "fast-flow-lidl")

#: ``data`` values that are not paths.
DATA_MODES = ("train", "samples")

TRACES = ("auto", "exact", "hutchinson")
SAMPLERS = ("ddim", "euler_maruyama", "probability_flow")

#: Samples drawn for ``data="samples"`` when ``n`` is None.
SAMPLES_DEFAULT_N = 1000

#: Preset name -> ModelLidConfig fields; ``quick`` estimates at 256 points.
PRESETS: dict[str, dict[str, Any]] = {
    "quick": {"n": 256},
    "full": {},
}


def _is_int(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, np.integer))


@dataclasses.dataclass(frozen=True)
class ModelLidConfig:
    """What ``mmh-jax lid --checkpoint`` computes.

    Attributes:
      checkpoint: run directory of ``mmh-jax train``.
      estimator: one of ``ESTIMATORS``.
      data: ``"train"``, ``"samples"`` or a path (see the module docstring).
      n: points (subsample of train/file points; samples drawn, default 1000). None: all points.
      seed: seed of the subsample, the samples and the estimator keys.
      batch_size: points evaluated at once per device (None: all of a chunk at once).
      t0: FLIPD's fixed time (default 0.05).
      t0_grid: ``(min, max, num)`` of FLIPD's geometric grid, whose knee gives ``lid_knee``.
      trace: ``auto`` (exact when D ≤ 3500), ``exact`` or ``hutchinson`` (flipd, fp-regress).
      num_probes: Hutchinson probes per point (flipd, fp-regress).
      t: normal-bundle time (default 0.01).
      num_samples: normal-bundle noisy copies K (None: 4·D).
      sampler, num_steps: how samples are drawn for ``data="samples"``.
      tau: flow-jacobian's log threshold and fast-flow-lidl's log noise scale of ``lid`` (default −3).
      tau_grid: ``(min, max, num)`` of the τ curve ``linspace(*tau_grid)`` (default −10, 5, 50).
      step: the checkpoint step to load (None: the newest).
    """

    checkpoint: str
    estimator: str = "flipd"
    data: str = "train"
    n: int | None = None
    seed: int = 0
    batch_size: int | None = 64
    t0: float = 0.05
    t0_grid: tuple[float, float, int] = (1e-3, 1.0, 24)
    trace: str = "auto"
    num_probes: int = 1
    t: float = 0.01
    num_samples: int | None = None
    sampler: str = "ddim"
    num_steps: int = 100
    tau: float = -3.0
    tau_grid: tuple[float, float, int] = (-10.0, 5.0, 50)
    step: int | None = None

    def __post_init__(self):
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {ESTIMATORS} with a checkpoint, got {self.estimator!r}.")
        for name in ("n", "batch_size", "num_samples"):
            v = getattr(self, name)
            if v is not None and (not _is_int(v) or v < 1):
                raise ValueError(f"{name} must be an int >= 1 or None, got {name}={v!r}.")
        for name in ("num_probes", "num_steps"):
            v = getattr(self, name)
            if not _is_int(v) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {name}={v!r}.")
        for name in ("t0", "t"):
            if not float(getattr(self, name)) > 0.0:
                raise ValueError(f"{name} must be a diffusion time > 0, got {name}={getattr(self, name)!r}.")
        if len(self.t0_grid) != 3:
            raise ValueError(f"t0_grid must be (min, max, num), got {self.t0_grid!r}.")
        lo, hi, num = self.t0_grid
        if not (0.0 < float(lo) < float(hi)) or not _is_int(num) or num < 3:
            raise ValueError(
                f"t0_grid must be (min, max, num) with 0 < min < max and an int num >= 3 (the knee needs 3 "
                f"points), got {self.t0_grid!r}; e.g. 1e-3 1 24."
            )
        lo, hi, num = self.tau_grid
        if not float(lo) < float(hi) or not _is_int(num) or num < 3:
            raise ValueError(f"tau_grid must be (min, max, num) with min < max and an int num >= 3, got "
                             f"{self.tau_grid!r}; e.g. -10 5 50.")
        if self.trace not in TRACES:
            raise ValueError(f"trace must be one of {TRACES}, got {self.trace!r}.")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {self.sampler!r}.")

    @property
    def t0s(self) -> np.ndarray:
        """The FLIPD grid ``geomspace(*t0_grid)`` (float32)."""
        lo, hi, num = self.t0_grid
        return np.geomspace(float(lo), float(hi), int(num)).astype(np.float32)

    @property
    def taus(self) -> np.ndarray:
        """The τ grid ``linspace(*tau_grid)`` (float32) of the flow estimators' curves."""
        lo, hi, num = self.tau_grid
        return np.linspace(float(lo), float(hi), int(num)).astype(np.float32)


def preset(name: str, **overrides) -> ModelLidConfig:
    """A :class:`ModelLidConfig` from a preset (``"quick"``/``"full"``); None overrides keep the preset's value."""
    return from_preset(ModelLidConfig, PRESETS, name, overrides)


# --------------------------------------------------------------------------------------------
# points


def _subsample(n_all: int, n: int | None, seed: int) -> np.ndarray:
    if n is None or n >= n_all:
        return np.arange(n_all)
    return np.sort(np.random.default_rng(seed).choice(n_all, size=n, replace=False))


def _training_points(model) -> tuple[np.ndarray, Any, Any, str]:
    from mmh_jax.data import synthetic
    from mmh_jax.experiments import train_cmd

    saved = model.config
    fields = {f.name for f in dataclasses.fields(train_cmd.TrainConfig)}
    tc = train_cmd.TrainConfig(**{k: v for k, v in saved.items() if k in fields})
    try:
        x, _ = train_cmd.load_training_data(tc)
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


def _read_numpy(path: str):
    """(array, truth, component, truth's key) of a .npy/.npz file; the points under x, images or the only array."""
    from mmh_jax.data._npfile import read_numpy

    truth_key = "lid"
    try:
        f = read_numpy(path)
    except ValueError as e:
        raise ValueError(f"--data {e}") from None
    if isinstance(f, np.ndarray):
        return f, None, None, truth_key
    keys = list(f)
    name = next((k for k in ("x", "images") if k in keys), keys[0] if len(keys) == 1 else None)
    if name is None:
        raise ValueError(f"--data {path!r} holds arrays {keys}; store the points under the key 'x'.")
    # Ground truth: 'truth' (as written by `mmh-jax lid`, whose 'lid' are estimates), else 'lid'.
    truth_key = "truth" if "truth" in keys else "lid"
    lid = f[truth_key] if truth_key in keys and name != truth_key else None
    comp = f["component"] if "component" in keys and name != "component" else None
    return f[name], lid, comp, truth_key


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
        raw, lid, comp, truth_key = _read_numpy(path)
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


def _points(config: ModelLidConfig, model, k_sample):
    """(x, truth, component, index, number of points before subsampling, description) at which to estimate."""
    if config.data == "samples" and hasattr(model, "deltas"):  # a flow: exact samples in one pass
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
# estimation


def _point_fn(model, config: ModelLidConfig):
    """Single-example ``(params, x, key, t0, t0s) -> dict`` of the configured estimator."""
    import jax.numpy as jnp

    if config.estimator in ("lidl", "flow-jacobian", "fast-flow-lidl"):
        from mmh_jax.experiments import flow_lid

        return flow_lid.point_fn(model, config)

    from mmh_jax import lid

    sde = model.sde

    def one(params, x, key, t0, t0s):
        score = model.score_fn_for(None, params=params)
        if config.estimator == "flipd":
            # One curve over [t0, *t0s]: the fixed-t0 value and the grid share the probes drawn from key.
            both = lid.flipd_curve(score, x, key, t0s=jnp.concatenate([t0[None], t0s]), sde=sde,
                                   trace=config.trace, num_probes=config.num_probes)
            curve = both[1:]
            t_star, v_star = lid.knee(t0s, curve)
            t_flat, v_flat = lid.plateau(t0s, curve, window=1)
            return {"lid": both[0], "curves": curve, "lid_knee": v_star, "t0_knee": t_star,
                    "lid_plateau": v_flat, "t0_plateau": t_flat}
        if config.estimator == "normal-bundle":
            return {"lid": lid.normal_bundle(score, x, key, t=config.t, sde=sde, num_samples=config.num_samples)}
        return {"lid": lid.fp_regress(score, x, key, sde=sde, trace=config.trace, num_probes=config.num_probes)}

    return one


def estimate(config: ModelLidConfig, model, x: np.ndarray, keys, *, progress: bool):
    """Outputs (dict of numpy arrays, leading axis N), compile seconds, run seconds."""
    import jax
    import jax.numpy as jnp
    from tqdm.auto import tqdm

    from mmh_jax import parallel

    one = _point_fn(model, config)

    def chunk_fn(params, xs, ks, t0, t0s):
        return parallel.map_points(lambda xi, ki: one(params, xi, ki, t0, t0s), xs, ks,
                                   batch_size=config.batch_size)

    n = x.shape[0]
    per_call = n if config.batch_size is None else min(n, config.batch_size * jax.device_count() * 4)
    t0 = jnp.float32(config.t0)
    t0s = jnp.asarray(config.t0s)
    params = model.params
    if jax.device_count() > 1:  # map_points splits points over every device: replicate the parameters once
        from jax.sharding import NamedSharding, PartitionSpec

        params = jax.device_put(params, NamedSharding(parallel.make_mesh(), PartitionSpec()))
    tic = time.perf_counter()
    compiled = jax.jit(chunk_fn).lower(params, x[:per_call], keys[:per_call], t0, t0s).compile()
    compile_s = time.perf_counter() - tic
    outs: list[dict[str, np.ndarray]] = []
    tic = time.perf_counter()
    n_calls = -(-n // per_call)
    with tqdm(total=n, desc=config.estimator, unit="pt", disable=not progress or n_calls == 1,
              file=sys.stderr) as bar:
        for start in range(0, n, per_call):
            _interrupt.check()  # between chunks: a safe point to stop after a signal (CLI only)
            xs, ks = x[start:start + per_call], keys[start:start + per_call]
            m = xs.shape[0]
            if m < per_call:  # pad the last chunk with copies of its first point (one compiled shape)
                xs = np.concatenate([xs, np.repeat(xs[:1], per_call - m, axis=0)])
                ks = jnp.concatenate([ks, jnp.repeat(ks[:1], per_call - m, axis=0)])
            out = jax.device_get(compiled(params, xs, ks, t0, t0s))
            outs.append({k: np.asarray(v)[:m] for k, v in out.items()})
            bar.update(m)
    run_s = time.perf_counter() - tic
    result = {k: np.concatenate([o[k] for o in outs]).astype(np.float32) for k in outs[0]}
    return result, compile_s, run_s


def _describe(config: ModelLidConfig, dim: int) -> str:
    if config.estimator == "flipd":
        return f"lid = FLIPD at t0 = {config.t0:g} (trace {config.trace}, D = {dim})"
    if config.estimator == "normal-bundle":
        k = 4 * dim if config.num_samples is None else config.num_samples
        return f"lid = normal bundle at t = {config.t:g} with K = {k} noisy copies"
    return "lid = FPRegress over log noise scales log(geomspace(0.01, 0.1, 8)) (trace " + config.trace + ")"


def write_results(config: ModelLidConfig, model, out: str, lid, points, extra: dict[str, np.ndarray], seconds,
                  description_line: str, *, what: str = "model") -> dict[str, Any]:
    """Write the ``.npz`` (``lid``, ``x``, ``index``, ``truth``/``component`` when known, plus ``extra``) and
    print and return the summary of ``lid``; ``points`` is what :func:`_points` returns, ``seconds`` the
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
    :func:`mmh_jax.experiments.lid_cmd.summarize`), ``knee`` (the same for ``lid_knee``, flipd only)
    and ``out`` (the path written: ``lid.npz`` in the directory ``out``, refused before any work when
    it exists, unless ``overwrite``).

    Raises:
      FileNotFoundError: no ``checkpoint`` directory or ``data`` file.
      ValueError: data whose shape does not match the model's, times outside (0, T], unreadable data.
      mmh_jax.checkpoint.CheckpointError: no readable checkpoint in the directory.
    """
    import jax

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
    if hasattr(model, "deltas"):  # a normalizing flow (mmh-jax train --model flow|lidl)
        from mmh_jax.experiments import flow_lid

        return flow_lid.run(config, model, out, progress=progress)
    if config.estimator in ("lidl", "flow-jacobian", "fast-flow-lidl"):
        raise ValueError(f"--estimator {config.estimator} needs a normalizing flow (`mmh-jax train --model flow` or "
                         f"`--model lidl`), but --checkpoint {config.checkpoint!r} holds a diffusion model "
                         f"({model.config['model']}); use flipd, normal-bundle or fp-regress.")
    T = float(model.sde.T)
    for name, v in (("t0", config.t0), ("t", config.t), ("t0_grid max", config.t0_grid[1])):
        if not 0.0 < float(v) <= T:
            raise ValueError(f"{name} must lie in (0, T] = (0, {T:g}] for this model, got {v!r}.")
    k_est, k_sample = jax.random.split(jax.random.key(config.seed))
    x, truth, comp, index, n_all, description = _points(config, model, k_sample)
    n, dim = x.shape[0], int(np.prod(x.shape[1:]))
    keys = jax.random.split(k_est, n)
    print(f"mmh-jax lid: {config.estimator} of the model in {config.checkpoint} (step {model.step}) at {n} "
          f"points of shape {tuple(x.shape[1:])} ...", file=sys.stderr, flush=True)
    res, compile_s, run_s = estimate(config, model, x, keys, progress=progress)
    extra = {}
    if config.estimator == "flipd":
        extra = dict(t0=np.float32(config.t0), t0s=config.t0s, curves=res["curves"], lid_knee=res["lid_knee"],
                     t0_knee=res["t0_knee"], lid_plateau=res["lid_plateau"], t0_plateau=res["t0_plateau"])
    summary = write_results(config, model, out, res["lid"], (x, truth, comp, index, n_all, description), extra,
                            (compile_s, run_s), _describe(config, dim))
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
    print(f"mmh-jax lid: wrote {summary['out']}", file=sys.stderr)
    return summary
