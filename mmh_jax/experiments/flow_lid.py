"""``mmh-jax lid --checkpoint DIR`` on flows (``mmh-jax train --model flow|lidl``): LID_θ per point.

Estimators (DESIGN §3, :mod:`mmh_jax.lid`):

- ``lidl``: :func:`mmh_jax.lid.lidl` over all members of a ``lidl`` run (LID = D + slope of
  log p_δ(x) against log δ); also writes each member's ``log_probs``.
- ``flow-jacobian``: singular values of the decoder's Jacobian J_g(z) at z = g⁻¹(x)
  (:func:`mmh_jax.lid.jacobian_spectrum`); ``lid`` counts those above e^τ (τ = ``tau``, default −3)
  and ``curves`` over the grid ``linspace(*tau_grid)`` (default −10…5, 50 values, DESIGN §3b).
- ``fast-flow-lidl``: :func:`mmh_jax.lid.fast_flow_lidl` at log noise scale ``tau`` and over the
  same grid.

Both Jacobian estimators use the flow trained with the smallest δ (``member``; the only one of a
``flow`` run). Plateau readout (``lid_plateau``, ``tau_plateau``): the flow was trained on data
blurred by δ_m·N(0, I), so every singular value is at least about δ_m, and the scales just above
δ_m are where the collapsed (normal) directions have dropped out while the tangent ones remain.
:func:`mmh_jax.lid.plateau` (window 1) searches the grid points with
log δ_m ≤ τ ≤ log δ_m + log 10 — the decade LIDL's default deltas span — for the flattest stretch
of the curve; among equally flat stretches it takes the coarsest scale (largest τ).

Output ``.npz`` keys besides those of every estimator (``lid``, ``x``, ``index``, ``truth``,
``component``): ``deltas`` ``(M,)`` and, for ``lidl``, ``log_probs`` ``(N, M)``; for the Jacobian
estimators ``tau`` ``()``, ``taus`` ``(G,)``, ``curves`` ``(N, G)``, ``lid_plateau`` and
``tau_plateau`` ``(N,)``, ``member`` ``()``; ``flow-jacobian`` adds ``singular_values`` ``(N, D)``.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

__all__ = ["FLOW_ESTIMATORS", "plateau_mask", "point_fn", "run"]

#: ``--estimator`` names for a flow checkpoint.
FLOW_ESTIMATORS = ("lidl", "flow-jacobian", "fast-flow-lidl")


def plateau_mask(taus: np.ndarray, delta: float) -> np.ndarray:
    """Grid points searched by the plateau readout: log δ ≤ τ ≤ log δ + log 10 (at least 3 points)."""
    lo = np.log(delta)
    mask = (taus >= lo) & (taus <= lo + np.log(10.0))
    if mask.sum() < 3:  # a coarse grid: the 3 grid points nearest the decade's centre
        mask = np.zeros_like(mask)
        mask[np.argsort(np.abs(taus - (lo + 0.5 * np.log(10.0))))[:3]] = True
    return mask


def point_fn(model, config):
    """Single-example ``(params, x, key, t0, t0s) -> dict`` (the signature of model_lid's point
    functions; ``key``, ``t0`` and ``t0s`` are unused: these estimators are deterministic)."""
    import jax
    import jax.numpy as jnp

    from mmh_jax import lid

    deltas = jnp.asarray(model.deltas)
    member = int(np.argmin(model.deltas))
    taus_np = config.taus
    mask = plateau_mask(taus_np, float(model.deltas[member]))
    taus, taus_win = jnp.asarray(taus_np), jnp.asarray(taus_np[mask])
    tau = jnp.float32(config.tau)

    def one(params, x, key, t0, t0s):
        del key, t0, t0s
        if config.estimator == "lidl":
            log_p = jax.vmap(model.log_prob_fn, in_axes=(0, None))(params, x)
            return {"lid": lid.lidl(model.log_prob_fn, params, x, deltas=deltas), "log_probs": log_p}
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
        # exp(−τ): plateau's ties go to the smallest "time", here the largest τ.
        t_flat, v_flat = lid.plateau(jnp.exp(-taus_win), curve[mask], window=1, t0_max=float("inf"))
        out.update(curves=curve, lid_plateau=v_flat, tau_plateau=-jnp.log(t_flat))
        return out

    return one


def _describe(config, model, dim: int) -> str:
    if config.estimator == "lidl":
        d = model.deltas
        return (f"lid = LIDL: D = {dim} + slope of log p_delta(x) against log delta over {len(d)} flows, "
                f"delta in [{d.min():g}, {d.max():g}]")
    what = "#{singular values of J_g > e^tau}" if config.estimator == "flow-jacobian" else "Fast-Flow-LIDL"
    return (f"lid = {what} at tau = {config.tau:g}, flow trained at delta = "
            f"{float(model.deltas.min()):g}")


def run(config, model, out: str, *, progress: bool = True) -> dict[str, Any]:
    """``mmh-jax lid --checkpoint`` for a :class:`mmh_jax.trained.TrainedFlow` (called by model_lid.run).

    Raises:
      ValueError: an estimator that needs a diffusion model, or ``lidl`` on a single flow.
    """
    import jax

    from mmh_jax.experiments import model_lid
    from mmh_jax.experiments.lid_cmd import print_summary, summarize

    if config.estimator not in FLOW_ESTIMATORS:
        raise ValueError(
            f"--estimator {config.estimator} needs a diffusion model, but --checkpoint {config.checkpoint!r} holds "
            f"a normalizing flow ({model.config['model']}); use one of {', '.join(FLOW_ESTIMATORS)}."
        )
    if config.estimator == "lidl" and model.num_members < 2:
        raise ValueError(
            f"--estimator lidl needs flows trained at >= 2 noise scales, but --checkpoint {config.checkpoint!r} holds "
            f"one flow (delta {model.deltas.tolist()}); train one with `mmh-jax train --model lidl`, or use "
            "flow-jacobian or fast-flow-lidl here."
        )
    k_est, k_sample = jax.random.split(jax.random.key(config.seed))
    x, truth, comp, index, n_all, description = model_lid._points(config, model, k_sample)
    n, dim = x.shape[0], int(np.prod(x.shape[1:]))
    keys = jax.random.split(k_est, n)
    print(f"mmh-jax lid: {config.estimator} of the flow in {config.checkpoint} (step {model.step}) at {n} points "
          f"of shape {tuple(x.shape[1:])} ...", file=sys.stderr, flush=True)
    res, compile_s, run_s = model_lid.estimate(config, model, x, keys, progress=progress)
    extra: dict[str, np.ndarray] = {"deltas": np.asarray(model.deltas, np.float32)}
    if config.estimator == "lidl":
        extra["log_probs"] = res["log_probs"]
    else:
        extra.update(tau=np.float32(config.tau), taus=config.taus, curves=res["curves"],
                     lid_plateau=res["lid_plateau"], tau_plateau=res["tau_plateau"],
                     member=np.int32(np.argmin(model.deltas)))
        if "singular_values" in res:
            extra["singular_values"] = res["singular_values"]
    summary = model_lid.write_results(config, model, out, res["lid"], (x, truth, comp, index, n_all, description),
                                      extra, (compile_s, run_s), _describe(config, model, dim), what="flow")
    if config.estimator != "lidl":
        summary["plateau"] = summarize(res["lid_plateau"], truth, comp)
        print_summary(f"lid_plateau = the flattest stretch of the curve over tau in [log delta, log delta + log 10] "
                      f"(median tau {float(np.median(res['tau_plateau'])):.3g})", summary["plateau"])
    print(f"mmh-jax lid: wrote {summary['out']}", file=sys.stderr)
    return summary
