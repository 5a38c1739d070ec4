"""Guided samples of the digits model, shared by ``images`` and ``conditional``.

Two kinds of label guide deterministic DDIM with classifier-free guidance ε̃ = ε_∅ + w(ε_c − ε_∅):

- ``digit``: the ten digit classes, ``n_samples`` samples balanced over them (each class ⌊n/10⌋ or
  ⌈n/10⌉ times, shuffled with the seed). A digit label covers ~30 distinct training images.
- ``own``: every label that names one training image (`common.digits_setup`),
  ``per_image_samples`` samples each — the analogue of a caption that pins down one picture.

For each sample: its CFG norm (Wen et al., ICLR 2024: ‖ε_c − ε_∅‖ averaged over the states of its
*own* DDIM trajectory, read from the very evaluations that drove the sampler), FLIPD(x | c) and
FLIPD(x) (exact trace, at ``t0``). Computed once per run (``Context.memo``).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mmh_jax import adapters, lid, sample
from mmh_jax.experiments.pipeline.common import Context, DigitsSetup, map_model, with_null_class
from mmh_jax.sde import VPSDE

__all__ = ["KINDS", "guidance", "guided_samples", "point_fns"]

#: The kinds of label, in the order their samples are stored.
KINDS = ("digit", "own")


@functools.lru_cache(maxsize=None)
def point_fns(beta_min: float, beta_max: float, T: float, shape: tuple[int, ...], num_steps: int,
              null_class: int):
    """``(sample_point, flipd_point)``: the single-example functions for one SDE, event shape, step
    count and null class. Cached so that `common.map_model` (which caches its jit per point
    function) compiles each once; ``label``, ``guidance`` and ``t0`` are traced rows.
    """
    sde = VPSDE(beta_min=beta_min, beta_max=beta_max, T=T)

    def sample_point(score_for, key, label, w):
        """(sample, CFG norm along its own DDIM trajectory) for one key and class.

        The norm ‖ε_c − ε_∅‖ = σ‖s_c − s_∅‖ of each step comes from the two evaluations that drive
        that step (``ddim(has_aux=True)``): the same value as [`mmh_jax.lid.cfg_norm`][mmh_jax.lid.cfg_norm]
        on the trajectory's states (tested), at half the network evaluations.
        """
        classes = with_null_class(label, null_class)

        def eps(x, t):  # both classes in one (vmapped) network call: one copy of the network to compile
            c, u = jax.vmap(lambda k: adapters.eps_from_score(score_for(k), sde)(x, t))(classes)
            return u + w * (c - u), jnp.sqrt(jnp.sum((c - u).astype(jnp.float32) ** 2))

        x, norms = sample.ddim(eps, key, shape, sde=sde, num_steps=num_steps, has_aux=True)
        return x, jnp.mean(norms)

    def flipd_point(score_for, x, label, t0):
        """(FLIPD with class ``label``, FLIPD unconditional) at x, exact trace (one vmapped FLIPD)."""
        classes = with_null_class(label, null_class)
        f = jax.vmap(lambda c: lid.flipd(score_for(c), x, t0=t0, sde=sde, trace="exact"))(classes)
        return f[0], f[1]

    return sample_point, flipd_point


def guidance(cfg) -> float:
    """The CFG scale w of the guided samples: ``guidance_scale`` when positive, else ``cfg_guidance``."""
    return float(cfg.guidance_scale) if cfg.guidance_scale > 0 else float(cfg.cfg_guidance)


def _labels(setup: DigitsSetup, cfg, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(labels, kind index into `KINDS`): balanced digit classes, then each own label in turn."""
    rng = np.random.default_rng([seed, 3])
    digit = rng.permutation(np.arange(int(cfg.n_samples)) % setup.digit_classes).astype(np.int32)
    own = np.repeat(np.sort(setup.unique_labels[setup.own_label]).astype(np.int32), int(cfg.per_image_samples))
    return np.concatenate([digit, own]), np.concatenate([np.zeros(digit.size, np.int32), np.ones(own.size, np.int32)])


def guided_samples(setup: DigitsSetup, cfg, ctx: Context) -> dict[str, Any]:
    """The run's guided samples: ``samples``, ``labels``, ``kind`` (index into `KINDS`),
    ``cfg_norm``, ``flipd_conditional``, ``flipd_unconditional``, ``key_data`` and ``guidance``."""
    key = ("guided", cfg)
    if key in ctx.memo:
        return ctx.memo[key]
    model = setup.model
    if not model.num_classes:
        raise ValueError("guided samples need a class-conditional model; this one is unconditional.")
    sde, w = model.sde, guidance(cfg)
    sample_point, flipd_point = point_fns(float(sde.beta_min), float(sde.beta_max), float(sde.T),
                                          tuple(model.event_shape), int(cfg.sample_steps), int(model.num_classes))
    labels, kind = _labels(setup, cfg, ctx.seed)
    n = labels.size
    keys = jax.random.split(jax.random.key(ctx.seed + 3), n)
    ctx.log(f"[guided] {n} CFG samples (w={w:g}, {cfg.sample_steps} DDIM steps): {int((kind == 0).sum())} by digit "
            f"class, {int((kind == 1).sum())} by {int(setup.own_label.sum())} per-image labels")
    with ctx.timed("guided_sample"):
        samples, norm = map_model(model, sample_point, keys, labels, np.full(n, w, np.float32), batch_size=cfg.batch)
    samples = np.asarray(samples, np.float32)
    ctx.log(f"[guided] FLIPD(x | c) and FLIPD(x) at t0={cfg.t0:g}, exact trace")
    with ctx.timed("guided_lid"):
        fc, fu = map_model(model, flipd_point, samples, labels, np.full(n, cfg.t0, np.float32), batch_size=cfg.batch)
    out = {"samples": samples, "labels": labels, "kind": kind, "cfg_norm": np.asarray(norm, np.float32),
           "flipd_conditional": np.asarray(fc, np.float32), "flipd_unconditional": np.asarray(fu, np.float32),
           "key_data": np.asarray(jax.random.key_data(keys)), "guidance": w}
    ctx.memo[key] = out
    return out
