"""What the experiments of ``mmh-jax run`` share: the run context, cached training, batched LID_θ.

Models are trained into ``<out>/models/<name>/`` with `mmh_jax.experiments.training.train_or_resume`
and ``resume=True``: a rerun (or a second experiment that needs the same model, e.g. ``images``
and ``conditional`` share the class-conditional digits U-Net) continues or reuses the checkpoint
instead of training again, and a config that differs from the saved one is a clear error. An
interrupted training (Ctrl-C, SIGTERM) saves its checkpoint and stops the run with
``KeyboardInterrupt`` rather than going on with a half-trained model. Under the CLI a signal is
honoured at the safe points here: every logged stage, every network pass (`map_model`).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import signal
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mmh_jax import _interrupt, memorization, parallel, verdicts
from mmh_jax._compile import compiler_options
from mmh_jax.data import images
from mmh_jax.experiments import model_estimators, training
from mmh_jax.trained import load

__all__ = ["Context", "lid_theta", "train_model", "with_null_class"]


@dataclasses.dataclass
class Context:
    """Where an experiment writes and how loudly. ``timings`` collects seconds per stage."""

    out: str
    progress: bool = True
    seed: int = 0
    timings: dict = dataclasses.field(default_factory=dict)
    memo: dict = dataclasses.field(default_factory=dict)  # results shared by the experiments of one run

    def path(self, *parts: str) -> str:
        p = os.path.join(self.out, *parts)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        return p

    def log(self, msg: str) -> None:
        """Print a stage's message; a stage boundary is a safe point to stop after a signal."""
        _interrupt.check()
        if self.progress:
            print(msg, file=sys.stderr, flush=True)

    def timed(self, name: str):
        """Context manager adding the seconds of a block to ``timings[name]``."""
        ctx = self

        class _Timer:
            def __enter__(self):
                self.t = time.perf_counter()

            def __exit__(self, exc_type, *exc):
                ctx.timings[name] = ctx.timings.get(name, 0.0) + time.perf_counter() - self.t
                if exc_type is None:
                    _interrupt.check()

        return _Timer()


def train_model(ctx: Context, name: str, config) -> Any:
    """Train (or reuse) ``config`` (a `TrainConfig`) in
    ``<out>/models/<name>`` and return the loaded [`TrainedModel`][mmh_jax.trained.TrainedModel]."""
    run_dir = ctx.path("models", name, "")
    done = training.newest_step(os.path.join(run_dir, "checkpoints"))
    with ctx.timed(f"train_{name}"):
        if done is None:
            ctx.log(f"[{name}] training {config.model} for {config.steps} steps on {config.data} -> {run_dir}")
        elif done < config.steps:
            ctx.log(f"[{name}] resuming the training in {run_dir} from its checkpoint at step {done} of "
                    f"{config.steps}")
        else:
            ctx.log(f"[{name}] reusing the model trained earlier in {run_dir} (step {done})")
        result = training.train_or_resume(config, run_dir, resume=done is not None, progress=ctx.progress)
    if result["interrupted"]:  # its checkpoint is saved; stop the run (a rerun continues from it)
        raise _interrupt.Interrupted(_interrupt.requested() or signal.SIGINT)
    return load(run_dir)


def lid_theta(model, x: np.ndarray, key, *, estimator: str = "flipd", progress: bool = False,
              **options: Any) -> dict[str, np.ndarray]:
    """LID_θ of ``model`` at the points ``x`` (N, *event), one jitted pass (see
    `mmh_jax.experiments.model_estimators.estimate`); ``options`` are ``ModelLidConfig`` fields
    (``t0``, ``t0_grid``, ``trace``, ``t``, ``num_samples``, ``batch_size``). Keys are split per point.
    Returns ``{"lid": (N,)}`` plus, for FLIPD, ``curves``, ``lid_knee``, ``t0_knee`` and ``t0s``."""
    cfg = model_estimators.ModelLidConfig(checkpoint="", estimator=estimator, **options)
    keys = jax.random.split(key, x.shape[0])
    res, _, _ = model_estimators.estimate(cfg, model, np.asarray(x, np.float32), keys, progress=progress)
    if estimator == "flipd":
        res["t0s"] = cfg.t0s
    return res


def with_null_class(label, null_class: int):
    """``[label, null_class]`` (int32): a class and the null class ∅ of classifier-free guidance,
    to evaluate both with one vmapped (batched) network call rather than two copies of the network."""
    return jnp.stack([jnp.asarray(label, jnp.int32), jnp.asarray(null_class, jnp.int32)])


def map_model(model, point_fn, *arrays, batch_size: int = 64):
    """``point_fn(score_fn_of_label, *single_arrays)`` at every row of ``arrays``, one jitted pass.

    ``point_fn`` receives ``score_for(label)`` (a function giving the single-example score with
    class ``label``; ``None`` or the null class = unconditional) and one row of each array. The
    parameters stay traced (one compile per shape, whatever the checkpoint), and rows are mapped
    with [`mmh_jax.parallel.map_points`][mmh_jax.parallel.map_points] ``batch_size`` at a time.
    """
    fn = _mapped_model_fn(point_fn, batch_size)
    _interrupt.check()
    out = jax.device_get(fn(model, *arrays))  # the model is a pytree: its parameters are traced
    _interrupt.check()
    return out


@functools.lru_cache(maxsize=16)  # keyed on point_fn: bounded, as callers may pass fresh closures
def _mapped_model_fn(point_fn, batch_size: int):
    """The jitted ``run(model, *arrays)`` of `map_model`; jit caches a program per model's static part."""
    # One device: batched SVDs inside a sharded map can hang XLA:CPU (docs/performance.md); the
    # experiments are sized for one device anyway.
    mesh = parallel.make_mesh(jax.devices()[:1])

    def run(model, *arrs):
        score_for = lambda label: model.score_fn_for(label)  # noqa: E731
        return parallel.map_points(lambda *row: point_fn(score_for, *row), *arrs, batch_size=batch_size,
                                   mesh=mesh)

    return jax.jit(run, compiler_options=compiler_options())


@dataclasses.dataclass(frozen=True)
class DigitsSetup:
    """The digits experiment's data and model.

    Attributes:
      model: the class-conditional U-Net (CFG; null class = unconditional).
      train_x, train_labels: the training set as stored (duplicates included, planted emphasis not).
      unique_x, unique_labels: its distinct images and the label each was trained with.
      unique_digits: the digit each distinct image shows.
      duplicated: ``(n_train,)`` bool, which distinct images were repeated ``copies`` times.
      own_label: ``(n_train,)`` bool, which distinct images carry a label of their own.
      heldout_x, heldout_labels: digits never trained on (label calibration, LID* scale, quality).
      digit_classes: the labels that name a digit class (0 … 9); own labels come after them.
    """

    model: Any
    train_x: np.ndarray
    train_labels: np.ndarray
    unique_x: np.ndarray
    unique_labels: np.ndarray
    unique_digits: np.ndarray
    duplicated: np.ndarray
    own_label: np.ndarray
    heldout_x: np.ndarray
    heldout_labels: np.ndarray
    digit_classes: int = 10


def _digits_model_kwargs(cfg) -> dict[str, Any]:
    if cfg.model == "unet":
        return {"channels": cfg.channels, "channel_mults": tuple(cfg.channel_mults), "attention": cfg.attention}
    if cfg.model == "mlp":
        return {"hidden": cfg.hidden, "num_layers": cfg.num_layers, "event_ndim": 3}
    raise ValueError(f"images model must be 'unet' or 'mlp', got {cfg.model!r}.")


def digits_setup(cfg, ctx: Context) -> DigitsSetup:
    """Build the digits training set (duplicates, per-image labels, planted emphasis), train (or
    reuse) the class-conditional model on it.

    - ``n_duplicated`` images are stored ``copies`` times (the data hold them repeatedly: a point mass,
      LID* = 0): the first half of the copies carry the image's own label, the rest its digit, so
      both a per-image label and a digit class lead to it;
    - ``own_label_unique`` images are stored once with a label of their own, and training draws each
      ``copies`` times as often (the file's ``repeats``): the model is made to overfit images that the
      data hold once — the planted OD-Mem cases;
    - every other image is stored once with its digit.
    """
    d = images.digits()
    rng = np.random.default_rng(ctx.seed)
    perm = rng.permutation(d.x.shape[0])
    tr, ho = perm[: cfg.n_train], perm[cfg.n_train:]
    dup = np.zeros(cfg.n_train, bool)
    dup[rng.choice(cfg.n_train, cfg.n_duplicated, replace=False)] = True
    own = dup.copy()
    own[rng.choice(np.flatnonzero(~dup), cfg.own_label_unique, replace=False)] = True
    digits = np.asarray(d.labels[tr], np.int32)
    labels = digits.copy()
    labels[own] = 10 + np.arange(int(own.sum()), dtype=np.int32)
    stored = np.where(dup, cfg.copies, 1)  # rows of each distinct image in the file
    train_x = np.repeat(d.x[tr], stored, axis=0)
    row_labels = np.repeat(labels, stored)
    first = np.repeat(np.cumsum(stored) - stored, stored)  # index of each row's first copy
    copy_no = np.arange(train_x.shape[0]) - first
    row_dup = np.repeat(dup, stored)
    row_labels = np.where(row_dup & (copy_no >= (cfg.copies + 1) // 2), np.repeat(digits, stored), row_labels)
    repeats = np.repeat(np.where(own & ~dup, cfg.copies, 1), stored).astype(np.int32)
    path = ctx.path("data", "digits_train.npz")
    np.savez(path, x=train_x, labels=row_labels, repeats=repeats)
    train_cfg = training.TrainConfig(
        data=os.path.abspath(path), model=cfg.model, model_kwargs=_digits_model_kwargs(cfg), steps=cfg.steps,
        batch_size=cfg.batch_size, learning_rate=cfg.learning_rate, class_conditional=True,
        checkpoint_every=max(cfg.steps // 4, 1), seed=ctx.seed, time_sampling=cfg.time_sampling,
    )
    model = train_model(ctx, "digits_cfg", train_cfg)
    return DigitsSetup(model, train_x, row_labels, d.x[tr], labels, digits, dup, own, d.x[ho],
                       np.asarray(d.labels[ho], np.int32))


def user_setup(checkpoint: str, data: str, ctx: Context, *, step: int | None = None) -> DigitsSetup:
    """A user's own model (``mmh-jax train`` run directory) and training data (any path that
    ``mmh-jax train`` reads), for the detection experiment. Duplicated training points are found as
    exact repeats in the data; there is no held-out set."""
    model = load(checkpoint, step=step)
    cfg = training.TrainConfig(data=data, model=model.config["model"],
                                model_kwargs=dict(model.config.get("model_kwargs") or {}))
    x, labels = training.load_training_data(cfg, expand=False)  # the data as stored: repeats are not copies
    if tuple(x.shape[1:]) != tuple(model.event_shape):
        raise ValueError(f"data {data!r} has points of shape {x.shape[1:]}, but the model at {checkpoint!r} was "
                         f"trained on shape {tuple(model.event_shape)}; pass the data it was trained on.")
    flat = x.reshape(x.shape[0], -1)
    uniq, inverse, counts = np.unique(flat, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    labels = np.full(x.shape[0], -1, np.int32) if labels is None else np.asarray(labels, np.int32)
    first = np.zeros(uniq.shape[0], np.int64)
    first[inverse[::-1]] = np.arange(x.shape[0])[::-1]
    ctx.log(f"[user] {checkpoint}: {x.shape[0]} training points, {uniq.shape[0]} distinct, "
            f"{int(np.sum(counts > 1))} repeated")
    empty = np.zeros((0, *x.shape[1:]), np.float32)
    none = np.zeros(uniq.shape[0], bool)
    return DigitsSetup(model, x, labels, x[first], labels[first], labels[first], counts > 1, none, empty,
                       np.zeros(0, np.int32), digit_classes=int(model.num_classes or 0))


@dataclasses.dataclass(frozen=True)
class LabelCalibration:
    """The memorization threshold and the false-positive rate it gives on real digits never trained on.

    ``threshold`` is set on all ``n_heldout`` held-out digits
    ([`mmh_jax.memorization.calibrate_threshold`][mmh_jax.memorization.calibrate_threshold]
    at ``target_fpr``), so ``in_sample_fpr`` ≤ ``target_fpr`` by construction. ``fpr`` is the honest
    estimate: two-fold cross-fitting (a threshold set the same way on one half labels the other
    half), with its 95 % Wilson interval; ``worst_digit`` and ``worst_digit_fpr`` the digit class
    with the highest cross-fitted rate. Without held-out data (a user's model) the configured
    threshold is used and the rates are NaN.
    """

    threshold: float
    target_fpr: float
    neighbours: int
    n_heldout: int
    in_sample_fpr: float
    fpr: float
    fpr_low: float
    fpr_high: float
    worst_digit: int
    worst_digit_fpr: float

    def text(self) -> str:
        if self.n_heldout == 0:
            return (f"memorized = calibrated ℓ2 (Carlini et al., α = 0.5) < {self.threshold:.3f}; no held-out data, "
                    "so its false-positive rate is not measured")
        return (f"memorized = calibrated ℓ2 (Carlini et al., α = 0.5, n = {self.neighbours}) < {self.threshold:.3f}, "
                f"set so that "
                f"{self.in_sample_fpr:.2%} of {self.n_heldout} held-out real digits are labelled memorized (target "
                f"≤ {self.target_fpr:.1%}); cross-fitted false-positive rate {self.fpr:.2%} [{self.fpr_low:.2%}, "
                f"{self.fpr_high:.2%}] (worst digit {self.worst_digit}: {self.worst_digit_fpr:.2%})")


def label_calibration(setup: DigitsSetup, cfg, ctx: Context) -> LabelCalibration:
    """The run's `LabelCalibration` (computed once per run and shared by the experiments)."""
    key = ("label_calibration", cfg.calibration_n, cfg.label_fpr, cfg.threshold, setup.heldout_x.shape[0])
    if key in ctx.memo:
        return ctx.memo[key]
    ho = setup.heldout_x
    n = min(cfg.calibration_n, setup.unique_x.shape[0])
    if ho.shape[0] < 2:
        cal = LabelCalibration(float(cfg.threshold), float(cfg.label_fpr), n, 0, *(float("nan"),) * 4, -1,
                               float("nan"))
    else:
        c = np.asarray(memorization.calibrated_l2(ho, setup.unique_x, n=n))
        thr = memorization.calibrate_threshold(c, fpr=cfg.label_fpr)
        perm = np.random.default_rng([ctx.seed, 17]).permutation(ho.shape[0])
        halves = (perm[: ho.shape[0] // 2], perm[ho.shape[0] // 2:])
        flagged = np.zeros(ho.shape[0], bool)
        for a, b in (halves, halves[::-1]):  # set on one half, count on the other
            flagged[b] = c[b] < memorization.calibrate_threshold(c[a], fpr=cfg.label_fpr)
        lo, hi = verdicts.wilson_interval(int(flagged.sum()), flagged.size)
        rates = {int(k): float(np.mean(flagged[setup.heldout_labels == k])) for k in np.unique(setup.heldout_labels)}
        worst = max(rates, key=rates.get)
        cal = LabelCalibration(thr, float(cfg.label_fpr), n, int(c.size), float(np.mean(c < thr)),
                               float(flagged.mean()), lo, hi, worst, rates[worst])
    ctx.memo[key] = cal
    return cal


def memorization_labels(samples: np.ndarray, setup: DigitsSetup, cfg, threshold: float
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(calibrated ℓ2, memorized, index of the nearest distinct training image) of each sample.

    Calibrated against the *distinct* training images: with duplicates among the n nearest, the
    mean distance would shrink and a copy of a duplicated image would look less like a copy.
    """
    n = min(cfg.calibration_n, setup.unique_x.shape[0])
    calib = np.asarray(memorization.calibrated_l2(samples, setup.unique_x, n=n))
    _, idx = memorization.nearest_training(samples, setup.unique_x, k=1)
    return calib, np.asarray(memorization.memorized(calib, threshold=threshold)), np.asarray(idx)[:, 0]
