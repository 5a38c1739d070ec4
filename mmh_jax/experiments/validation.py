"""Estimator validation on closed-form ground truth: the first half of ``mmh-jax run``.

Every score-based estimator runs on Gaussians (and mixtures of Gaussians) on affine subspaces,
whose VP-SDE score is exact ([`mmh_jax.data.gaussian`][mmh_jax.data.gaussian]), so any error is the
estimator's own.
Decoder estimators run on linear decoders with known singular values; model-free estimators on
samples of the same distributions. Writes to the output directory:

- ``metrics.json``: per case and estimator, the true and estimated LID (mean, MAE, max error,
  fraction exactly right after rounding) and the seconds it took (compile included); the seed,
  the configuration and [`mmh_jax.provenance.provenance`][mmh_jax.provenance.provenance] (package versions,
  backend);
- ``table.md``: the same as a markdown table;
- ``flipd_curves.png``: FLIPD curves of a few points per case with their kneedle knees;
- ``report.html``: the table and the figure in one self-contained page.

A directory holding an ``mmh-jax run`` experiments report or an ``mmh-jax run benchmark`` report is
refused before any work unless ``overwrite=True``, which removes that run's results (and the models
and data it trained there) first.

Examples:
  >>> cfg = preset("quick")
  >>> [c.name for c in cfg.cases]
  ['mixture D=10 d=(2, 4, 8)']
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from mmh_jax import lid, parallel, report
from mmh_jax.experiments._presets import from_preset
from mmh_jax.experiments.pipeline import run as pipeline_run
from mmh_jax.provenance import provenance
from mmh_jax.data.gaussian import GaussianMixture, random_gaussian_mixture
from mmh_jax.sde import VPSDE

__all__ = ["Case", "ValidationConfig", "PRESETS", "preset", "run"]


@dataclasses.dataclass(frozen=True)
class Case:
    """A mixture of Gaussians on random affine subspaces of R^ambient_dim, one per entry of dims."""

    ambient_dim: int
    dims: tuple[int, ...]

    @property
    def name(self) -> str:
        if len(self.dims) == 1:
            return f"gauss D={self.ambient_dim} d={self.dims[0]}"
        return f"mixture D={self.ambient_dim} d={self.dims}"


@dataclasses.dataclass(frozen=True)
class DecoderCase:
    """A linear decoder R^latent_dim → R^ambient_dim with singular values ``singular_values``."""

    ambient_dim: int
    latent_dim: int
    singular_values: tuple[float, ...]

    @property
    def name(self) -> str:
        return f"linear decoder D={self.ambient_dim} k={self.latent_dim} rank={self.rank}"

    @property
    def rank(self) -> int:
        return sum(1 for s in self.singular_values if s > np.exp(-3.0))


@dataclasses.dataclass(frozen=True)
class ValidationConfig:
    """What the validation runs. All sizes are Python ints (static)."""

    seed: int = 0
    cases: tuple[Case, ...] = (Case(10, (2, 4, 8)),)
    decoders: tuple[DecoderCase, ...] = (DecoderCase(10, 10, (3.0, 2.0, 1.0, 0.5, 1e-4, 0.0)),)
    num_points: int = 32
    t0: float = 0.05
    t0_grid: tuple[float, float, int] = (1e-4, 1.0, 16)
    num_probes: int = 1
    normal_bundle_t: float = 0.01
    cfdm_train: int = 1000
    model_free_points: int = 1000
    model_free_k: int = 50
    curves_per_case: int = 4
    batch_size: int = 64


PRESETS: dict[str, dict[str, Any]] = {
    "quick": {},
    "full": {
        "cases": (
            Case(10, (0,)), Case(10, (3,)), Case(10, (10,)), Case(64, (16,)),
            Case(10, (2, 4, 8)), Case(32, (1, 8, 24)),
        ),
        "decoders": (
            DecoderCase(10, 10, (3.0, 2.0, 1.0, 0.5, 1e-4, 0.0)),
            DecoderCase(64, 8, (4.0, 3.0, 2.0, 1.0, 1.0, 0.5, 0.2, 0.1)),
        ),
        "num_points": 256,
        "t0_grid": (1e-4, 1.0, 32),
        "cfdm_train": 5000,
        "model_free_points": 4000,
        "model_free_k": 100,
    },
}


def preset(name: str, **overrides: Any) -> ValidationConfig:
    """The named preset (``quick`` or ``full``) with field overrides."""
    return from_preset(ValidationConfig, PRESETS, name, overrides)


def _summary(case: str, estimator: str, est, truth, seconds: float) -> dict[str, Any]:
    est, truth = np.asarray(est, np.float64), np.asarray(truth, np.float64)
    err = np.abs(est - truth)
    return {
        "case": case,
        "estimator": estimator,
        "points": int(est.size),
        "true_lid": float(np.mean(truth)),
        "mean_estimate": float(np.nanmean(est)),
        "mae": float(np.nanmean(err)),
        "max_abs_error": float(np.nanmax(err)),
        "frac_exact": float(np.mean(np.round(est) == truth)),
        "seconds": seconds,
    }


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t = time.perf_counter()
    out = jax.block_until_ready(fn())
    return out, time.perf_counter() - t


def _score_estimators(cfg: ValidationConfig, vp: VPSDE, t0s) -> dict[str, Callable]:
    """name -> jitted (mixture, xs, keys) -> per-point estimate. Mixture is an argument: no re-jit per case."""

    def batched(single):
        @jax.jit
        def f(gm: GaussianMixture, xs, keys):
            return parallel.map_points(lambda x, k: single(gm.score_fn(vp), x, k), xs, keys,
                                       batch_size=cfg.batch_size)
        return f

    return {
        "flipd_exact": batched(lambda s, x, k: lid.flipd(s, x, k, t0=cfg.t0, sde=vp, trace="exact")),
        "flipd_hutchinson": batched(
            lambda s, x, k: lid.flipd(s, x, k, t0=cfg.t0, sde=vp, trace="hutchinson", num_probes=cfg.num_probes)
        ),
        "flipd_knee": batched(lambda s, x, k: lid.knee(t0s, lid.flipd_curve(s, x, k, t0s=t0s, sde=vp))[1]),
        "fp_regress": batched(lambda s, x, k: lid.fp_regress(s, x, k, sde=vp)),
        "normal_bundle": batched(lambda s, x, k: lid.normal_bundle(s, x, k, t=cfg.normal_bundle_t, sde=vp)),
    }


@jax.jit
def _curves_and_knees(gm: GaussianMixture, xs, t0s, vp: VPSDE):
    curves = jax.vmap(lambda x: lid.flipd_curve(gm.score_fn(vp), x, t0s=t0s, sde=vp))(xs)
    return curves, jax.vmap(lid.knee, in_axes=(None, 0))(t0s, curves)


@jax.jit
def _decoder_lids(a, zs):
    """Jacobian-threshold (τ = −3) and Fast-Flow-LIDL (δ = −3) LIDs of the linear decoder z ↦ a z.

    The matrix is an argument, not a closure, so decoders of one shape share a compile.
    """
    g = lambda w: a @ w  # noqa: E731
    threshold = jax.vmap(lambda z: lid.lid_from_spectrum(lid.jacobian_spectrum(g, z), tau=-3.0))(zs)
    return threshold, jax.vmap(lambda z: lid.fast_flow_lidl(g, z, delta=-3.0))(zs)


def run(config: ValidationConfig, workdir: str, *, progress: bool = True, overwrite: bool = False) -> dict[str, Any]:
    """Run the validation and write the report into ``workdir``; returns the metrics dict.

    Raises:
      ValueError: (`OtherRunError`) ``workdir`` holds an ``mmh-jax run`` experiments report or an
        ``mmh-jax run benchmark`` report and ``overwrite`` is False (checked before any work; with
        ``overwrite`` that report's files, models and data are removed first).
    """
    _check_out(workdir, overwrite)
    os.makedirs(workdir, exist_ok=True)
    vp = VPSDE()
    t0s = jnp.geomspace(config.t0_grid[0], config.t0_grid[1], config.t0_grid[2])
    score_estimators = _score_estimators(config, vp, t0s)
    model_free = {"lpca": lid.lpca, "mle": lid.mle}
    steps = len(config.cases) * (len(score_estimators) + 2 + len(model_free)) + len(config.decoders)
    bar = tqdm(total=steps, desc="validation", disable=not progress, unit="step")
    rows, panels = [], []
    key = jax.random.key(config.seed)

    for ci, case in enumerate(config.cases):
        gm = random_gaussian_mixture(config.seed * 1000 + ci, case.dims, case.ambient_dim)
        key, k_pts, k_est, k_train, k_mf = jax.random.split(key, 5)
        xs, comp = gm.sample(k_pts, config.num_points)
        truth = np.asarray(gm.dims)[np.asarray(comp)]
        keys = jax.random.split(k_est, config.num_points)
        for name, fn in score_estimators.items():
            bar.set_postfix_str(f"{case.name}: {name}")
            est, secs = _timed(lambda: fn(gm, xs, keys))
            rows.append(_summary(case.name, name, est, truth, secs))
            bar.update()

        # FLIPD curves of a few points, with their knees, for the figure.
        m = min(config.curves_per_case, config.num_points)
        curves, (kt, kv) = _curves_and_knees(gm, xs[:m], t0s, vp)
        panels.append({"title": case.name, "t0s": t0s, "curves": curves, "knees_t": kt, "knees_value": kv,
                       "truth": truth[:m]})
        bar.update()

        # CFDM, the perfectly memorizing model, at its own training points: LID 0 at small t.
        train, _ = gm.sample(k_train, config.cfdm_train)
        d2 = jax.vmap(lambda x: jnp.sort(jnp.sum((train - x[None]) ** 2, axis=1))[1])(train[:256])
        t_small = float(vp.t_from_delta(np.log(0.1 * float(jnp.sqrt(jnp.min(d2))) + 1e-12)))
        t_small = min(max(t_small, 1e-7), 1.0)
        cfdm_fn = jax.jit(lambda x, data: jax.vmap(lambda q: lid.cfdm(q, data, t=t_small, sde=vp))(x))
        est, secs = _timed(lambda: cfdm_fn(train[: config.num_points], train))
        rows.append(_summary(case.name, f"cfdm@train (t={t_small:.1e})", est, np.zeros(est.shape), secs))
        bar.update()

        # Model-free LID* on a sample of the data distribution.
        data, comp_mf = gm.sample(k_mf, config.model_free_points)
        truth_mf = np.asarray(gm.dims)[np.asarray(comp_mf)]
        k = min(config.model_free_k, config.model_free_points - 1)
        for name, fn in model_free.items():
            bar.set_postfix_str(f"{case.name}: {name}")
            est, secs = _timed(lambda: fn(data, k=k))
            rows.append(_summary(case.name, f"{name} (k={k})", est, truth_mf, secs))
            bar.update()

    for di, dec in enumerate(config.decoders):
        rng = np.random.default_rng(config.seed * 7919 + di)
        u, _ = np.linalg.qr(rng.standard_normal((dec.ambient_dim, dec.ambient_dim)))
        v, _ = np.linalg.qr(rng.standard_normal((dec.latent_dim, dec.latent_dim)))
        s = np.zeros((dec.ambient_dim, dec.latent_dim))
        n_sv = min(len(dec.singular_values), dec.ambient_dim, dec.latent_dim)
        s[np.arange(n_sv), np.arange(n_sv)] = dec.singular_values[:n_sv]
        a = jnp.asarray(u @ s @ v.T, jnp.float32)
        zs = jax.random.normal(jax.random.fold_in(key, di), (config.num_points, dec.latent_dim))
        truth = np.full(config.num_points, dec.rank)

        (thr, ffl), secs = _timed(lambda: _decoder_lids(a, zs))  # one Jacobian pass; seconds cover both rows
        rows.append(_summary(dec.name, "jacobian_threshold (tau=-3)", thr, truth, secs))
        rows.append(_summary(dec.name, "fast_flow_lidl (delta=-3)", ffl, truth, secs))
        bar.update()
    bar.close()

    columns = ["case", "estimator", "points", "true_lid", "mean_estimate", "mae", "max_abs_error", "frac_exact",
               "seconds"]
    table = report.markdown_table(rows, columns)
    metrics = {
        "seed": config.seed,
        "config": dataclasses.asdict(config),
        "provenance": provenance(),
        "sde": {"beta_min": float(vp.beta_min), "beta_max": float(vp.beta_max), "T": float(vp.T)},
        "backend": jax.default_backend(),
        "devices": jax.device_count(),
        "results": rows,
    }
    report.write_json(os.path.join(workdir, "metrics.json"), metrics)
    header = (
        "# LID estimator validation on closed-form ground truth\n\n"
        f"FLIPD at t0 = {config.t0}; knee over {config.t0_grid[2]} log-spaced t0 in "
        f"[{config.t0_grid[0]}, {config.t0_grid[1]}]; normal bundle at t = {config.normal_bundle_t}; "
        "seconds include compilation.\n\n"
    )
    report.write_text(os.path.join(workdir, "table.md"), header + table + "\n")
    report.plot_flipd_curves(os.path.join(workdir, "flipd_curves.png"), panels)
    _write_html(config, metrics, workdir)
    if progress:
        print(table)
        print(f"\nreport: {os.path.abspath(os.path.join(workdir, 'report.html'))} (with metrics.json, table.md, "
              "flipd_curves.png)")
    return metrics


def _write_html(config: ValidationConfig, metrics: dict[str, Any], workdir: str) -> None:
    """``workdir/report.html``: the results table and the FLIPD curves, self-contained."""
    reading = (
        "Every estimator on distributions whose LID is known in closed form (Gaussians and mixtures of Gaussians "
        "on affine subspaces, whose VP-SDE score is exact; linear decoders with known singular values), so any "
        f"error is the estimator's own. FLIPD at t0 = {config.t0}; knee over {config.t0_grid[2]} log-spaced t0 in "
        f"[{config.t0_grid[0]}, {config.t0_grid[1]}]; normal bundle at t = {config.normal_bundle_t}; seconds "
        "include compilation. frac_exact: the fraction of points whose rounded estimate is the true LID."
    )
    sections = [{"title": "LID estimators on closed-form ground truth", "reading": reading,
                 "rows": metrics["results"], "figures": ["flipd_curves.png"]}]
    footer = (f"mmh-jax run validation, seed {config.seed}, backend {metrics['backend']} × {metrics['devices']}. "
              "Full configuration and every number in metrics.json (table.md: the same table in markdown).")
    report.write_text(os.path.join(workdir, "report.html"),
                      report.html_report("LID estimator validation: mmh-jax run validation", sections,
                                         base_dir=workdir, footer=footer))


def _check_out(workdir: str, overwrite: bool) -> None:
    """Refuse (or with ``overwrite`` remove) another command's report in ``workdir``; an earlier
    validation there is replaced as a whole (every file is rewritten)."""
    if not os.path.exists(os.path.join(workdir, "metrics.json")):
        return
    previous = pipeline_run.previous_metrics(workdir)
    kind = pipeline_run.run_kind(previous)
    if kind in ("validation", "other"):  # an earlier validation, or an unreadable metrics.json: replaced
        return
    pipeline_run.refuse_or_remove(workdir, previous, kind, what=pipeline_run.describe_report(previous, kind),
                                  this="`mmh-jax run validation`", overwrite=overwrite)
