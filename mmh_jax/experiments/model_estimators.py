"""LID_θ of a trained model at many points: the table of model-based estimators and one jitted pass.

Each estimator of ``mmh-jax lid --checkpoint`` (and of the pipeline's LID_θ) is a row of
`ESTIMATORS`: the kind of model it needs (``"diffusion"`` or ``"flow"``, as
``TrainedModel.kind``), the builder of its single-example point function and the
`ModelLidConfig` options it reads. `estimate` maps that point function over many
points in one compiled function.

On a diffusion model (its unconditional score, [`mmh_jax.lid`][mmh_jax.lid]):

- ``flipd``: FLIPD at a fixed ``t0`` (default 0.05) **and** at the knee of the FLIPD curve over a
  geometric grid ``geomspace(*t0_grid)`` (default 24 times in [1e-3, 1]); the Hutchinson probes of
  a point are shared by its fixed-t0 value and its curve;
- ``normal-bundle``: the normal-bundle estimate at time ``t`` (default 0.01) with ``num_samples``
  noisy copies (default 4·D);
- ``fp-regress``: FPRegress with the defaults of [`mmh_jax.lid.fp_regress`][mmh_jax.lid.fp_regress].

On normalizing flows (``mmh-jax train --model flow|lidl``):

- ``lidl``: [`mmh_jax.lid.lidl`][mmh_jax.lid.lidl] over all members of a ``lidl`` run (LID = D + slope of
  log p_δ(x) against log δ); also gives each member's ``log_probs``;
- ``flow-jacobian``: singular values of the decoder's Jacobian J_g(z) at z = g⁻¹(x)
  ([`mmh_jax.lid.jacobian_spectrum`][mmh_jax.lid.jacobian_spectrum]); ``lid`` counts those above e^τ (τ =
  ``tau``, default −3) and ``curves`` over the grid ``linspace(*tau_grid)`` (default −10…5, 50 values);
- ``fast-flow-lidl``: [`mmh_jax.lid.fast_flow_lidl`][mmh_jax.lid.fast_flow_lidl] at log noise scale ``tau``
  and over the same grid.

Both Jacobian estimators use the flow trained with the smallest δ (``member``; the only one of a
``flow`` run). Plateau readout (``lid_plateau``, ``tau_plateau``): the flow was trained on data
blurred by δ_m·N(0, I), so every singular value is at least about δ_m, and the scales just above
δ_m are where the collapsed (normal) directions have dropped out while the tangent ones remain.
[`mmh_jax.lid.plateau`][mmh_jax.lid.plateau] (window 1) searches the grid points with
log δ_m ≤ τ ≤ log δ_m + log 10 — the decade LIDL's default deltas span — for the flattest stretch
of the curve; among equally flat stretches it takes the coarsest scale (largest τ).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from mmh_jax import _interrupt, lid, parallel
from mmh_jax.lid import TRACES
from mmh_jax.sample import SAMPLERS

__all__ = ["COMMON_OPTIONS", "ESTIMATORS", "Estimator", "ModelLidConfig", "estimate", "mesh_for", "names",
           "plateau_mask"]


def _is_int(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, np.integer))


@dataclasses.dataclass(frozen=True)
class ModelLidConfig:
    """What ``mmh-jax lid --checkpoint`` computes.

    Attributes:
      checkpoint: run directory of ``mmh-jax train``.
      estimator: a name of `ESTIMATORS`.
      data: ``"train"``, ``"samples"`` or a path (see `mmh_jax.experiments.model_lid`).
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
            raise ValueError(f"estimator must be one of {tuple(ESTIMATORS)} with a checkpoint, got "
                             f"{self.estimator!r}.")
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


# --------------------------------------------------------------------------------------------
# point functions: (model, config) -> single-example (params, x, key, t0, t0s) -> dict of outputs


def _flipd(model, config: ModelLidConfig):
    sde = model.sde

    def one(params, x, key, t0, t0s):
        score = model.score_fn_for(None, params=params)
        # One curve over [t0, *t0s]: the fixed-t0 value and the grid share the probes drawn from key.
        both = lid.flipd_curve(score, x, key, t0s=jnp.concatenate([t0[None], t0s]), sde=sde,
                               trace=config.trace, num_probes=config.num_probes)
        curve = both[1:]
        dim = x.size  # D: a flat stretch at ≈ D is the unresolved scale, not a plateau
        t_star, v_star = lid.knee(t0s, curve, ambient_dim=dim)
        t_flat, v_flat = lid.plateau(t0s, curve, window=1, ambient_dim=dim)
        return {"lid": both[0], "curves": curve, "lid_knee": v_star, "t0_knee": t_star,
                "lid_plateau": v_flat, "t0_plateau": t_flat}

    return one


def _normal_bundle(model, config: ModelLidConfig):
    sde = model.sde

    def one(params, x, key, t0, t0s):
        score = model.score_fn_for(None, params=params)
        return {"lid": lid.normal_bundle(score, x, key, t=config.t, sde=sde, num_samples=config.num_samples)}

    return one


def _fp_regress(model, config: ModelLidConfig):
    sde = model.sde

    def one(params, x, key, t0, t0s):
        score = model.score_fn_for(None, params=params)
        return {"lid": lid.fp_regress(score, x, key, sde=sde, trace=config.trace, num_probes=config.num_probes)}

    return one


def _lidl(model, config: ModelLidConfig):
    """LIDL over every member (``key``, ``t0`` and ``t0s`` are unused: it is deterministic)."""
    deltas = jnp.asarray(model.deltas)

    def one(params, x, key, t0, t0s):
        del key, t0, t0s
        log_p = jax.vmap(model.log_prob_fn, in_axes=(0, None))(params, x)
        return {"lid": lid.lidl(model.log_prob_fn, params, x, deltas=deltas), "log_probs": log_p}

    return one


def plateau_mask(taus: np.ndarray, delta: float) -> np.ndarray:
    """Grid points searched by the plateau readout: log δ ≤ τ ≤ log δ + log 10 (at least 3 points)."""
    lo = np.log(delta)
    mask = (taus >= lo) & (taus <= lo + np.log(10.0))
    if mask.sum() < 3:  # a coarse grid: the 3 grid points nearest the decade's centre
        mask = np.zeros_like(mask)
        mask[np.argsort(np.abs(taus - (lo + 0.5 * np.log(10.0))))[:3]] = True
    return mask


def _flow_spectrum(model, config: ModelLidConfig):
    """flow-jacobian or fast-flow-lidl of the flow at the smallest δ, at ``tau`` and over the τ grid, with the
    plateau readout (deterministic: ``key``, ``t0`` and ``t0s`` are unused)."""
    member = int(np.argmin(model.deltas))
    taus_np = config.taus
    mask = plateau_mask(taus_np, float(model.deltas[member]))
    taus, taus_win = jnp.asarray(taus_np), jnp.asarray(taus_np[mask])
    tau = jnp.float32(config.tau)

    def one(params, x, key, t0, t0s):
        del key, t0, t0s
        p = jax.tree_util.tree_map(lambda a: a[member], params)
        g, z = model.decoder(params=p), model.encoder(params=p)(x)
        out = {}
        if config.estimator == "flow-jacobian":
            sv = lid.jacobian_spectrum(g, z)
            curve = lid.lid_from_spectrum(sv, tau=taus)
            out.update(lid=lid.lid_from_spectrum(sv, tau=tau), singular_values=sv)
        else:
            both = lid.fast_flow_lidl(g, z, delta=jnp.concatenate([tau[None], taus]))
            curve = both[1:]
            out["lid"] = both[0]
        # exp(−τ): plateau's ties go to the smallest "time", here the largest τ. The curve is a count
        # (integer steps), so its flattest window is read whatever its slope (max_slope=None).
        t_flat, v_flat = lid.plateau(jnp.exp(-taus_win), curve[mask], window=1, t0_max=float("inf"),
                                     max_slope=None)
        out.update(curves=curve, lid_plateau=v_flat, tau_plateau=-jnp.log(t_flat))
        return out

    return one


class Estimator(NamedTuple):
    """A row of `ESTIMATORS`."""

    #: The model it needs: ``"diffusion"`` or ``"flow"`` (``TrainedModel.kind``).
    kind: str
    #: ``(model, config) -> point function`` (single example: ``(params, x, key, t0, t0s) -> dict``).
    point_fn: Callable[[Any, ModelLidConfig], Callable]
    #: The `ModelLidConfig` options it reads, besides `COMMON_OPTIONS`.
    options: tuple[str, ...]
    #: Whether each point takes an SVD (batched under the map): such estimators are mapped on one
    #: CPU device, see `mesh_for`.
    decomposes: bool = False


#: The `ModelLidConfig` options every estimator reads.
COMMON_OPTIONS = ("batch_size", "step")

#: ``--estimator`` name -> `Estimator`, diffusion models' first.
ESTIMATORS: dict[str, Estimator] = {
    "flipd": Estimator("diffusion", _flipd, ("t0", "t0_grid", "trace", "num_probes")),
    "normal-bundle": Estimator("diffusion", _normal_bundle, ("t", "num_samples"), decomposes=True),
    "fp-regress": Estimator("diffusion", _fp_regress, ("trace", "num_probes")),
    "lidl": Estimator("flow", _lidl, ()),
    "flow-jacobian": Estimator("flow", _flow_spectrum, ("tau", "tau_grid"), decomposes=True),
    "fast-flow-lidl": Estimator("flow", _flow_spectrum, ("tau", "tau_grid"), decomposes=True),
}


def mesh_for(estimator: str):
    """The mesh `estimate` maps ``estimator`` over: None (every device) unless it decomposes on
    several CPU devices, where it gets the first one. A batched SVD under a map sharded over
    emulated CPU devices can hang XLA:CPU (the deadlock described in `mmh_jax.parallel`); one
    device keeps every core busy through XLA's own thread pool."""
    if ESTIMATORS[estimator].decomposes and jax.default_backend() == "cpu" and jax.device_count() > 1:
        return parallel.make_mesh(jax.devices()[:1])
    return None


def names(kind: str | None = None) -> tuple[str, ...]:
    """The estimator names for models of ``kind`` (``"diffusion"``, ``"flow"``; None: all), in table order."""
    return tuple(name for name, e in ESTIMATORS.items() if kind is None or e.kind == kind)


# --------------------------------------------------------------------------------------------
# estimation


def estimate(config: ModelLidConfig, model, x: np.ndarray, keys, *, progress: bool):
    """The configured estimator at every point of ``x``: one compiled function, fed chunk by chunk.

    The single-example point function is mapped with
    [`mmh_jax.parallel.map_points`][mmh_jax.parallel.map_points]
    (``config.batch_size`` points at a time per device, sharded over the devices).

    Args:
      config: the estimator and its options.
      model: a loaded [`TrainedModel`][mmh_jax.trained.TrainedModel] or
        [`TrainedFlow`][mmh_jax.trained.TrainedFlow] of the kind the estimator needs.
      x: ``(N, *event_shape)`` float32 points.
      keys: ``(N,)`` PRNG keys, one per point.
      progress: show a progress bar over the chunks (when there is more than one).

    Returns:
      ``(outputs, compile_seconds, run_seconds)``: ``outputs`` a dict of float32 numpy arrays with
      leading axis N (``lid``, and the estimator's curves and readouts).
    """
    from tqdm.auto import tqdm

    one = ESTIMATORS[config.estimator].point_fn(model, config)
    mesh = mesh_for(config.estimator)
    devices = jax.device_count() if mesh is None else mesh.size

    def chunk_fn(params, xs, ks, t0, t0s):
        return parallel.map_points(lambda xi, ki: one(params, xi, ki, t0, t0s), xs, ks,
                                   batch_size=config.batch_size, mesh=mesh)

    n = x.shape[0]
    per_call = n if config.batch_size is None else min(n, config.batch_size * devices * 4)
    t0 = jnp.float32(config.t0)
    t0s = jnp.asarray(config.t0s)
    params = model.params
    if devices > 1:  # map_points splits points over every device: replicate the parameters once
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
