"""Training a diffusion model (or normalizing flows) on a synthetic manifold or on images, with checkpoints.

What ``mmh-jax train`` runs and the pipeline trains its models with: `load_training_data`
reads the data of a `TrainConfig`, `train_or_resume` trains it and writes into ``out``:
``checkpoints/<step>/`` (orbax, atomic, last ``keep`` kept), ``config.json``, ``train_log.jsonl``
(one line per dispatch: step, loss, grad norm, steps/s) and ``loss.png``.
``model`` ``flow``/``lidl`` trains normalizing flows instead (`mmh_jax.train_flow`):
one flow, or LIDL's ensemble of flows (one per noise scale δ, vmapped: one compile, one loop).
``steps`` is the total number of optimisation steps: ``resume=True`` continues from the newest
checkpoint up to ``steps``. With the ``steps`` of the interrupted run it gives exactly the
parameters of an uninterrupted run with the same seed (keys are derived from the step number).
With a larger ``steps`` it *extends* the run: the learning-rate schedule (warm-up, cosine decay
over ``steps``) is planned anew for the new total, so the learning rate rises again where the run
resumes (a warm restart) and the result differs from an uninterrupted run of the new length.
Ctrl-C (SIGTERM too, under the CLI) saves a checkpoint and returns cleanly; a non-finite loss
stops the run with `TrainingDiverged`, keeping the last good checkpoint.

Examples:
  >>> cfg = preset("quick", data="lollipop")
  >>> cfg.model, cfg.steps
  ('mlp', 300)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from mmh_jax import _interrupt, report, train, train_flow
from mmh_jax._compile import compiler_options
from mmh_jax.checkpoint import Checkpointer, CheckpointError, NonFiniteError, abstract_like
from mmh_jax.data import images, synthetic
from mmh_jax.data.files import read_numpy, read_points
from mmh_jax.experiments._presets import from_preset
from mmh_jax.models import FLOW_MODELS, TIME_CONDITIONINGS, kind_of
from mmh_jax.provenance import provenance
from mmh_jax.sde import VPSDE
from mmh_jax.train import TIME_SAMPLINGS
from mmh_jax.train_flow import FLOW_PRESETS
from mmh_jax.trained import make_batched_eps_apply

__all__ = ["IDENTITY_KEYS", "MLP_DEFAULTS", "MLP_HIGH_DIM_STEPS", "MLP_MODEL_DEFAULTS", "PRESETS", "TrainConfig", "TrainingDiverged", "UNET_DEFAULTS", "WIDTH_KWARG",
           "default_model", "load_training_data", "newest_step", "plot_loss", "preset", "run_config", "train_or_resume",
           "vector_dim", "with_time_conditioning", "with_width"]

#: Config entries that must match to resume a run (``steps`` may grow).
IDENTITY_KEYS = ("data", "n", "model", "model_kwargs", "class_conditional", "seed", "batch_size",
                 "learning_rate", "warmup_steps", "ema_decay", "event_shape", "num_classes", "sde", "deltas",
                 "time_sampling")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """What ``mmh-jax train`` does.

    Attributes:
      data: a synthetic generator name (``mmh_jax.data.synthetic.GENERATORS``), ``digits``, or a
        path to images (npz/npy, image folder, MNIST IDX, CIFAR-10) or to an ``(N, D)`` array.
      n: points drawn from a synthetic generator (ignored for images).
      model: ``mlp`` (flat data; images are flattened) or ``unet`` (images); ``flow`` / ``lidl``:
        normalizing flow(s) on flat data (see `mmh_jax.train_flow`).
      model_kwargs: keyword arguments of the network (e.g. ``{"hidden": 256}``).
      steps: total optimisation steps.
      class_conditional: train with labels (images with labels only), null class for CFG.
      steps_per_call: optimisation steps per jitted dispatch (``lax.scan``).
      checkpoint_every: steps between checkpoints (rounded up to whole dispatches).
      keep: checkpoints kept.
      monitor_every: FLIPD of a fixed probe batch every this many steps (0: off).
      deltas: ``flow``/``lidl`` only: noise scales δ (data units) of the training data x + δ·N(0, I),
        one flow per δ (None: lidl geomspace(0.01, 0.1, 8), flow (0.01,)).
      time_sampling: diffusion models: how training times are drawn
        ([`mmh_jax.train.sample_times`][mmh_jax.train.sample_times]):
        ``uniform`` t ~ U(t_min, T) (default), or ``log-sigma``: log σ(t) uniform, which spends half
        the steps at σ < 0.1 (low noise, where a model overfits its training points). Recorded in
        the run's config: a resume with another value is refused.
    """

    data: str = "lollipop"
    n: int = 20000
    model: str = "mlp"
    model_kwargs: dict = dataclasses.field(default_factory=dict)
    steps: int = 4000
    batch_size: int = 256
    learning_rate: float = 1e-3
    warmup_steps: int = 100
    ema_decay: float = 0.999
    class_conditional: bool = False
    cond_drop_prob: float = 0.1
    steps_per_call: int = 50
    checkpoint_every: int = 500
    keep: int = 3
    monitor_every: int = 0
    seed: int = 0
    deltas: tuple[float, ...] | None = None
    time_sampling: str = "uniform"

    def __post_init__(self):
        for name, lo in (("steps", 1), ("n", 1), ("batch_size", 1), ("steps_per_call", 1),
                         ("checkpoint_every", 1), ("keep", 1), ("monitor_every", 0), ("warmup_steps", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
                raise ValueError(f"{name} must be an integer >= {lo}, got {name}={v!r}.")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got seed={self.seed!r}.")
        lr = self.learning_rate
        if isinstance(lr, bool) or not isinstance(lr, (int, float, np.floating)) or not math.isfinite(lr) or lr <= 0:
            raise ValueError(f"learning_rate must be a finite number > 0, got learning_rate={lr!r}.")
        if self.time_sampling not in TIME_SAMPLINGS:
            raise ValueError(f"time_sampling must be one of {', '.join(TIME_SAMPLINGS)}, got "
                             f"time_sampling={self.time_sampling!r}; pass --time-sampling uniform "
                             "or log-sigma.")


class TrainingDiverged(ValueError):
    """The loss became non-finite: training stopped, no checkpoint of the diverged state was written."""


PRESETS: dict[str, dict[str, Any]] = {
    "quick": {"steps": 300, "n": 4000, "checkpoint_every": 100, "model_kwargs": {"hidden": 128, "num_layers": 3}},
    "full": {},
}


#: Defaults of the U-Net (images) that differ from the MLP's: 16 base channels, batch 128.
UNET_DEFAULTS: dict[str, Any] = {"learning_rate": 5e-4, "batch_size": 128, "model_kwargs": {"channels": 16}}

#: Defaults of the MLP (vector data) under every preset, beneath the preset's own entries: 8000
#: steps, with uniform training times (docs/benchmark.md, "Training that fits manifolds", says why).
MLP_DEFAULTS: dict[str, Any] = {"steps": 8000}

#: Vector data of at least ``dim`` coordinates get the MLP ``steps`` under the ``full`` preset
#: (docs/benchmark.md, "Time conditioning": at D = 100 FiLM needs twice the steps it needs at D ≤ 32).
MLP_HIGH_DIM_STEPS: dict[str, int] = {"dim": 64, "steps": 16000}

#: ``model_kwargs`` entries every MLP preset fills in where ``model_kwargs`` does not name them: FiLM
#: time conditioning (docs/benchmark.md, "Time conditioning", says why). ``ScoreMLP`` itself stays
#: additive by default, so networks built and saved before keep their parameters' layout.
MLP_MODEL_DEFAULTS: dict[str, Any] = {"time_conditioning": "film"}


def preset(name: str, *, dim: int | None = None, **overrides: Any) -> TrainConfig:
    """The named preset with overrides; the MLP gets ``MLP_DEFAULTS`` (beneath the preset), the
    ``model_kwargs`` entries of ``MLP_MODEL_DEFAULTS`` it does not name and, under ``full`` without
    ``steps``, ``MLP_HIGH_DIM_STEPS`` on vector data of that many coordinates or more (``dim``, or
    else `vector_dim` reads it from the data); the U-Net image-appropriate defaults
    (``UNET_DEFAULTS``), flows ``FLOW_PRESETS``.

    Examples:
      >>> preset("full").steps, preset("quick").steps, preset("full", model="unet").steps
      (8000, 300, 4000)
      >>> preset("quick").model_kwargs
      {'time_conditioning': 'film', 'hidden': 128, 'num_layers': 3}
      >>> preset("full", dim=100).steps, preset("full", dim=100, steps=500).steps
      (16000, 500)
    """
    model = overrides.get("model", TrainConfig.model)
    if model == "unet":
        overrides = {**UNET_DEFAULTS, **overrides}
    if model in FLOW_MODELS:
        return from_preset(TrainConfig, FLOW_PRESETS, name, overrides)
    if model != "mlp":
        return from_preset(TrainConfig, PRESETS, name, overrides)
    config = from_preset(TrainConfig, {k: {**MLP_DEFAULTS, **v} for k, v in PRESETS.items()}, name, overrides)
    config = dataclasses.replace(config, model_kwargs={**MLP_MODEL_DEFAULTS, **config.model_kwargs})
    dim = vector_dim(config) if dim is None else dim
    if name == "full" and overrides.get("steps") is None and (dim or 0) >= MLP_HIGH_DIM_STEPS["dim"]:
        config = dataclasses.replace(config, steps=MLP_HIGH_DIM_STEPS["steps"])
    return config


def vector_dim(config: TrainConfig) -> int | None:
    """D of ``config.data`` when it is vector data (a synthetic generator, or an (N, D) array file), else None.

    Examples:
      >>> vector_dim(TrainConfig(data="lollipop")), vector_dim(TrainConfig(data="digits"))
      (2, None)
    """
    if config.data in synthetic.GENERATORS:
        try:
            return int(synthetic.GENERATORS[config.data](8, seed=config.seed).x.shape[1])
        except (TypeError, ValueError):  # a generator that needs more arguments: training reports it
            return None
    if isinstance(config.data, str) and config.data.endswith((".npy", ".npz")):
        arr = _vector_array(config.data)
        return None if arr is None else int(arr.shape[1])
    return None


#: The ``model_kwargs`` entry that sets each network's width (``mmh-jax train --width``).
WIDTH_KWARG = {"mlp": "hidden", "unet": "channels", "flow": "hidden", "lidl": "hidden"}


def with_width(config: TrainConfig, width: int) -> TrainConfig:
    """``config`` with its network's width set (the MLP's and flows' ``hidden``, the U-Net's ``channels``).

    Examples:
      >>> with_width(preset("full"), 1024).model_kwargs
      {'time_conditioning': 'film', 'hidden': 1024}
    """
    return dataclasses.replace(config, model_kwargs={**config.model_kwargs, WIDTH_KWARG[config.model]: width})


def with_time_conditioning(config: TrainConfig, time_conditioning: str) -> TrainConfig:
    """``config`` with the MLP's ``time_conditioning`` set (one of ``ScoreMLP``'s ``TIME_CONDITIONINGS``).

    Raises:
      ValueError: a model other than ``mlp``, or an unknown value.

    Examples:
      >>> with_time_conditioning(preset("full"), "add").model_kwargs
      {'time_conditioning': 'add'}
    """
    if config.model != "mlp":
        raise ValueError(f"time_conditioning applies to --model mlp, not {config.model!r}; drop --time-conditioning.")
    if time_conditioning not in TIME_CONDITIONINGS:
        raise ValueError(f"time_conditioning must be one of {TIME_CONDITIONINGS}, got {time_conditioning!r}.")
    return dataclasses.replace(config, model_kwargs={**config.model_kwargs, "time_conditioning": time_conditioning})


def load_training_data(config: TrainConfig, *, expand: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """(x, labels) as numpy: x is ``(N, D)`` for the MLP, ``(N, H, W, C)`` for the U-Net.

    A ``.npz`` may hold an integer ``repeats`` array (N,), each ≥ 1: training draws example i
    ``repeats[i]`` times as often as an example with 1 — the data set holds it once, the sampler
    emphasises it (e.g. to make a model overfit chosen examples). With ``expand`` (the default, what
    training sees) the examples come repeated; ``expand=False`` gives the data as stored.
    """
    labels = None
    if config.data in synthetic.GENERATORS:
        x = synthetic.GENERATORS[config.data](config.n, seed=config.seed).x
    elif config.data.endswith((".npy", ".npz")) and _vector_array(config.data) is not None:
        x = _vector_array(config.data)
    else:
        img = images.load(config.data)
        x, labels = img.x, (img.labels if img.num_classes else None)
    x = np.asarray(x, np.float32)
    if x.shape[0] == 0 or x.size == 0:
        raise ValueError(f"data {config.data!r} holds no points (shape {x.shape}); pass a non-empty data set.")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"data {config.data!r} has non-finite values (NaN/inf); clean them first.")
    event_ndim = int(config.model_kwargs.get("event_ndim", 1)) if config.model == "mlp" else 1
    if config.model in ("mlp", "flow", "lidl") and event_ndim == 1:
        x = x.reshape(x.shape[0], -1)
    elif config.model == "mlp" and x.ndim != event_ndim + 1:
        raise ValueError(f"model_kwargs event_ndim={event_ndim} needs data of shape (N, *event) with {event_ndim} "
                         f"event axes; data {config.data!r} has shape {x.shape}. Drop event_ndim to flatten.")
    elif config.model == "unet" and x.ndim != 4:
        raise ValueError(f"model 'unet' needs images (N, H, W, C); data {config.data!r} has shape {x.shape}. "
                         "Use --model mlp for vector data.")
    if config.class_conditional and labels is None:
        raise ValueError(f"class_conditional needs labelled images; data {config.data!r} has no labels.")
    labels = labels if config.class_conditional else None
    repeats = _repeats(config.data, x.shape[0]) if expand else None
    if repeats is not None:
        x = np.repeat(x, repeats, axis=0)
        labels = None if labels is None else np.repeat(labels, repeats)
    return x, labels


def _repeats(path: str, n: int) -> np.ndarray | None:
    """The ``repeats`` array of a ``.npz`` (see `load_training_data`), checked; None if absent."""
    if not path.endswith(".npz") or not os.path.isfile(path):
        return None
    stored = read_numpy(path)
    if not isinstance(stored, dict) or "repeats" not in stored:
        return None
    r = np.asarray(stored["repeats"])
    if r.shape != (n,) or not np.issubdtype(r.dtype, np.integer):
        raise ValueError(f"data {path!r}: 'repeats' must be an integer array of shape ({n},) (one count per "
                         f"example), got dtype {r.dtype} and shape {r.shape}.")
    if np.any(r < 1):
        raise ValueError(f"data {path!r}: 'repeats' must be >= 1 everywhere (got min {int(r.min())}); drop the "
                         "examples instead of giving them 0.")
    return r.astype(np.int64)


def default_model(data: str) -> str:
    """``mlp`` for synthetic generators and (N, D) arrays, ``unet`` for images."""
    if data in synthetic.GENERATORS or (data.endswith((".npy", ".npz")) and _vector_array(data) is not None):
        return "mlp"
    return "unet"


def _vector_array(path: str) -> np.ndarray | None:
    """The (N, D) array of a .npy/.npz file (key ``x`` or the only array), None if it is not 2-D."""
    try:
        arr = read_points(path).x
    except (OSError, ValueError):
        return None  # missing, unreadable or ambiguous: images.load reports it with a clear message
    if arr.ndim != 2 or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        return None  # not a numeric (N, D) array: images.load reads it or says what is wrong
    return arr.astype(np.float32)


def run_config(config: TrainConfig, x: np.ndarray, labels) -> dict[str, Any]:
    """The configuration saved with a run (JSON-ready): ``config``'s fields, the data's event shape,
    the number of classes and the SDE; its `IDENTITY_KEYS` are compared on resume.

    Raises:
      ValueError: ``time_sampling`` other than uniform for a flow model.
    """
    d = dataclasses.asdict(config)
    d["event_shape"] = list(x.shape[1:])
    d["num_classes"] = int(labels.max()) + 1 if labels is not None else None
    vp = VPSDE()
    d["sde"] = {"beta_min": float(vp.beta_min), "beta_max": float(vp.beta_max), "T": float(vp.T)}
    if config.model in ("flow", "lidl") and config.time_sampling != "uniform":
        raise ValueError(f"time_sampling={config.time_sampling!r} (diffusion times) applies to --model mlp or unet, "
                         f"not {config.model!r}; drop --time-sampling.")
    if config.model in ("flow", "lidl"):
        if d["num_classes"]:
            raise ValueError(f"model {config.model!r} is unconditional; drop --class-conditional.")
        d.update(train_flow.config_entries(config.model, config.deltas, x))
    elif config.deltas is not None:
        raise ValueError(f"deltas (noise scales of flows) apply to --model flow or lidl, not {config.model!r}; "
                         "drop --deltas.")
    d["kind"] = kind_of(config.model)  # what mmh_jax.load builds: "diffusion" or "flow"
    return d


def train_or_resume(config: TrainConfig, out: str, *, resume: bool = False, overwrite: bool = False,
                    progress: bool = True) -> dict[str, Any]:
    """Train (or resume) and return ``{"step", "start", "loss", "interrupted", "out", "saved"}``.

    ``start`` is the step this call began from, ``loss`` the last logged loss, ``saved`` the step of
    the newest checkpoint on disk when the function returns (None if none).

    Raises:
      CheckpointError: ``out`` holds a run and neither ``resume`` nor ``overwrite`` was given;
        ``resume`` where ``out`` holds no run, or a run of another configuration, or one that has done
        more than ``steps`` steps.
      TrainingDiverged: the loss became non-finite (the last good checkpoint is kept).
      ValueError: unusable data or settings (before anything is written).
    """
    x, labels = load_training_data(config)
    cfg = run_config(config, x, labels)
    ckpt_dir = os.path.join(out, "checkpoints")
    existing = newest_step(ckpt_dir)
    if existing is not None and not resume:
        if not overwrite:
            raise CheckpointError(
                f"{out} already holds a run (checkpoint at step {existing}); pass --resume to continue it, "
                "--overwrite to replace it, or choose another --out. Nothing was overwritten."
            )
        _remove_run(out)
        existing = None
    if resume and existing is None:
        raise CheckpointError(f"--resume: {out} holds no checkpoint to resume (nothing was saved there yet); "
                              "drop --resume to start a new run.")
    os.makedirs(out, exist_ok=True)
    ckpt = Checkpointer(ckpt_dir, max_to_keep=config.keep, identity_keys=_identity_keys(ckpt_dir, existing, config))
    try:
        _interrupt.check()  # a signal while the data loaded: stop before the model is built
        return _train(config, cfg, x, labels, out, ckpt, existing, progress)
    except KeyboardInterrupt:  # before the training loop began (the loop handles its own)
        step = existing or 0
        print(_interrupted_message(out, step, existing, step), file=sys.stderr)
        return {"step": step, "start": step, "loss": float("nan"), "interrupted": True, "out": out,
                "saved": existing}
    finally:
        ckpt.close()


def _identity_keys(ckpt_dir: str, existing: int | None, config: TrainConfig) -> tuple[str, ...]:
    """`IDENTITY_KEYS`, less ``time_sampling`` where the run in ``ckpt_dir`` predates that
    option (its config does not record it: it was trained with ``uniform``) and this run is ``uniform``."""
    if existing is None or config.time_sampling != "uniform":
        return IDENTITY_KEYS
    ckpt = Checkpointer(ckpt_dir, read_only=True)
    try:
        saved = ckpt.read_meta(existing).get("config", {})
    except CheckpointError:  # damaged: the restore skips it and checks the steps it tries
        return IDENTITY_KEYS
    finally:
        ckpt.close()
    return IDENTITY_KEYS if "time_sampling" in saved else tuple(k for k in IDENTITY_KEYS if k != "time_sampling")


def newest_step(ckpt_dir: str) -> int | None:
    """The newest complete checkpoint step in ``ckpt_dir`` (None if none, or no such folder)."""
    if not os.path.isdir(ckpt_dir):
        return None
    ckpt = Checkpointer(ckpt_dir, read_only=True)
    try:
        return ckpt.latest_step()
    finally:
        ckpt.close()


def _remove_run(out: str) -> None:
    """Delete what ``mmh-jax train`` wrote in ``out`` (``--overwrite``); other files stay."""
    shutil.rmtree(os.path.join(out, "checkpoints"), ignore_errors=True)
    for name in ("config.json", "train_log.jsonl", "loss.png"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(out, name))


def _train(config, cfg, x, labels, out, ckpt, existing, progress) -> dict[str, Any]:
    key = jax.random.key(config.seed)
    k_init, k_probe, k_train = jax.random.split(key, 3)
    optimizer = train.make_optimizer(learning_rate=config.learning_rate, total_steps=config.steps,
                                     warmup_steps=config.warmup_steps)
    if cfg["kind"] == "flow":  # flow / lidl: an ensemble of flows, the step vmapped over its members
        if config.monitor_every:
            raise ValueError(f"monitor_every (FLIPD of a probe batch) applies to diffusion models, not to model "
                             f"{config.model!r}; drop --monitor-every.")
        _, state, step_fn = train_flow.init_state(cfg, optimizer, k_init, ema_decay=config.ema_decay,
                                                  abstract=existing is not None)
    else:
        module, eps_apply = make_batched_eps_apply(cfg)
        init_args = [jnp.zeros((1, *x.shape[1:])), jnp.zeros((1,))]
        if labels is not None:
            init_args.append(jnp.zeros((1,), jnp.int32))

        def init(k):
            return train.init_train_state(module.init(k, *init_args), optimizer)

        # A fresh run: one jitted init (eagerly, each initializer op of each layer compiles on its own).
        # A resumed or finished run: its shapes only, restored below (compiling the init is not needed).
        state = jax.eval_shape(init, k_init) if existing is not None else \
            jax.jit(init, compiler_options=compiler_options())(k_init)
        step_fn = train.make_train_step(
            eps_apply, optimizer, VPSDE(**cfg["sde"]), ema_decay=config.ema_decay, num_classes=cfg["num_classes"],
            cond_drop_prob=config.cond_drop_prob, monitor_every=config.monitor_every,
            time_sampling=config.time_sampling,
        )
    log_path = os.path.join(out, "train_log.jsonl")
    if existing is not None:
        state, existing = _restore(ckpt, abstract_like(state), cfg, config.steps, out)
        _trim_log(log_path, existing)
    _interrupt.check()
    data = jnp.asarray(x)
    lab = None if labels is None else jnp.asarray(labels, jnp.int32)
    probe = data[jax.random.choice(k_probe, data.shape[0], (min(16, data.shape[0]),), replace=False)] \
        if config.monitor_every else None
    loops: dict[int, Any] = {}

    def loop_for(n_steps):
        if n_steps not in loops:
            loops[n_steps] = train.make_train_loop(step_fn, batch_size=config.batch_size, steps_per_call=n_steps,
                                                   compiler_options=compiler_options())
        return loops[n_steps]

    report.write_json(os.path.join(out, "config.json"), {**cfg, "provenance": provenance()})
    start_step = int(state.step)
    saved = existing
    bar = tqdm(total=config.steps, initial=start_step, desc="train", unit="step",
               disable=not progress or start_step >= config.steps)
    interrupted, loss = False, _last_loss(log_path)
    try:
        while int(state.step) < config.steps:
            _interrupt.check()
            step = int(state.step)
            n = min(config.steps_per_call, config.steps - step)
            t = time.perf_counter()
            new_state, metrics = loop_for(n)(state, data, lab, probe, k_train)
            new_loss = float(jnp.mean(metrics["loss"]))
            if not np.isfinite(new_loss):
                raise TrainingDiverged(
                    f"the loss became {new_loss} between steps {step} and {step + n} (learning rate "
                    f"{config.learning_rate:g}); training stopped, "
                    + (f"the last good checkpoint is step {saved}" if saved is not None else "no checkpoint was saved")
                    + ". Lower --lr, or check the data for extreme values."
                )
            state, loss = new_state, new_loss
            rate = n / (time.perf_counter() - t)
            entry = {"step": int(state.step), "loss": loss, "grad_norm": float(jnp.mean(metrics["grad_norm"])),
                     "steps_per_s": rate}
            if "flipd" in metrics:
                f = np.asarray(metrics["flipd"])
                if np.isfinite(f).any():
                    entry["flipd_probe"] = float(f[np.isfinite(f)][-1])
            with open(log_path, "a") as fh:
                fh.write(json.dumps(entry) + "\n")
            bar.update(n)
            bar.set_postfix(loss=f"{loss:.4f}", steps_per_s=f"{rate:.0f}")
            if int(state.step) - (saved or 0) >= config.checkpoint_every or int(state.step) >= config.steps:
                try:
                    ckpt.save(int(state.step), state, cfg)
                except NonFiniteError as e:  # a finite loss, but the last update broke the parameters
                    raise TrainingDiverged(
                        f"{e} Training stopped; " + (f"the last good checkpoint is step {saved}" if saved is not None
                                                     else "no checkpoint was saved") + ". Lower --lr."
                    ) from e
                saved = int(state.step)
    except KeyboardInterrupt:
        interrupted = True
        step = int(state.step)
        # A library caller's Ctrl-C may have cut the periodic save short after orbax renamed the step
        # into place; under the CLI signals only stop the loop at its safe points.
        if step != (saved or 0) and step > start_step and \
                not os.path.isdir(os.path.join(ckpt.directory, str(step))):
            ckpt.save(step, state, cfg)
            saved = step
        bar.close()
        print(_interrupted_message(out, step, saved, start_step), file=sys.stderr)
    finally:
        bar.close()
    plot_loss(log_path, os.path.join(out, "loss.png"),
               "negative log-likelihood" if cfg["kind"] == "flow" else "denoising loss")
    return {"step": int(state.step), "start": start_step, "loss": loss, "interrupted": interrupted, "out": out,
            "saved": saved}


def _restore(ckpt, abstract, cfg: dict[str, Any], steps: int, out: str):
    """The newest restorable state of this run and its step. Damaged newer checkpoints are skipped and
    said so (a save of the same step later keeps the damaged one aside as ``<step>.damaged``); a
    checkpoint of another configuration is refused."""
    state, step, skipped = ckpt.restore_newest_intact(abstract, config=cfg)
    step = int(step)
    if step > steps:
        raise CheckpointError(
            f"--steps {steps} is fewer than the {step} steps the run in {out} has already done; pass --steps "
            f"{step} or more to continue it, or choose another --out."
        )
    # A finished run (the pipeline reusing its model) is not resumed: nothing to say unless it skipped.
    notes = [f"resuming the run in {out} from its checkpoint at step {step}"] if step < steps else []
    if skipped:
        notes.append(f"newer checkpoint(s) at step {', '.join(map(str, skipped))} are damaged and were skipped "
                     "(kept aside as <step>.damaged when that step is saved again)")
    interrupted_saves = ckpt.interrupted_saves()
    if interrupted_saves:
        notes.append(f"{len(interrupted_saves)} save(s) cut short (e.g. by kill -9) are ignored")
    saved_steps = ckpt.read_meta(step)["config"].get("steps")
    if saved_steps is not None and int(saved_steps) != steps and step < steps:
        notes.append(f"extending it from {saved_steps} to {steps} steps: the learning-rate schedule is planned anew "
                     f"for {steps} steps, so the result differs from an uninterrupted {steps}-step run")
    if notes:
        print("mmh-jax train: " + "; ".join(notes), file=sys.stderr)
    return state, step


def _trim_log(log_path: str, step: int) -> None:
    """Drop log lines past ``step`` (dispatches after the checkpoint a resume starts from)."""
    if not os.path.exists(log_path):
        return
    with open(log_path) as fh:
        lines = [ln for ln in fh if ln.strip()]
    keep = [ln for ln in lines if json.loads(ln).get("step", 0) <= step]
    if len(keep) != len(lines):
        report.write_text(log_path, "".join(keep))


def _last_loss(log_path: str) -> float:
    """The loss of the last logged dispatch (NaN if none): what a finished run reports again."""
    try:
        with open(log_path) as fh:
            lines = [ln for ln in fh if ln.strip()]
        return float(json.loads(lines[-1])["loss"]) if lines else float("nan")
    except (OSError, ValueError, KeyError):
        return float("nan")


def _interrupted_message(out: str, step: int, saved: int | None, start_step: int) -> str:
    """What an interrupted training says: the truth about what is on disk."""
    if saved is None:
        return (f"interrupted at step {step}: no checkpoint yet, nothing to resume; rerun the command without "
                f"--resume to start again (into {out})")
    if saved == step and step == start_step:
        return f"interrupted: no new steps since the checkpoint at step {step} in {out}; continue with --resume"
    if saved == step:
        return f"interrupted: checkpoint saved at step {step} in {out}; continue with --resume"
    return (f"interrupted at step {step}: the newest checkpoint is step {saved} in {out}; continue from it "
            "with --resume")


def plot_loss(log_path: str, png: str, ylabel: str = "denoising loss") -> None:
    """Write ``png``, the loss of each logged step of the JSON-lines log ``log_path`` (nothing if absent)."""
    if not os.path.exists(log_path):
        return
    from mmh_jax._plotting import pyplot

    plt = pyplot()

    with open(log_path) as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(5, 3))
    # Markers too: a run of one or two dispatches (<= 100 steps) has one or two points, no visible line.
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], lw=1, marker="o" if len(rows) <= 20 else None,
            ms=3)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    if all(r["loss"] > 0 for r in rows):  # a log-likelihood loss may be negative
        ax.set_yscale("log")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
