"""Experiment ``toy``: the MMH toy of Ross et al. (arXiv 2411.00113, Fig. 2) on ``von_mises_point_mass``.

Training data: a von Mises circle (LID* = 1) plus a point mass at its centre (LID* = 0), with few
points, so the sparse side of the circle holds isolated training points. An MLP diffusion model is
trained on them (``time_sampling`` ``log-sigma`` by default: half the steps at low noise, see
``docs/experiments.md`` for what makes OD-Mem appear), sampled, and LID_θ (FLIPD at a fixed t0, its
knee, and the normal bundle) is read at every sample. LID* of a sample is the ground truth of the
nearest piece of the data manifold (0 nearer the atom, 1 nearer the circle). Each sample is
classified by [`mmh_jax.memorization.classify`][mmh_jax.memorization.classify]: ``od_mem`` when LID_θ < LID* −
gap, ``dd_mem`` when LID* ≤ small and LID_θ ≤ small + gap (the atom), else ``generalized``.

OD-Mem is *defined* by LID_θ, so "OD-Mem samples have LID_θ < 1" is true by construction and is not
a finding. The claims are about groups defined without LID_θ, from the geometry of the training
set alone:

- a *near-copy* of a training point lies closer to it than 1/3 of that point's distance to its
  nearest other distinct training point (`copy_ratio`);
- a circle training point is *isolated* when its nearest other training point lies farther than
  ``isolation`` · σ(t0)/α(t0), the noise scale FLIPD reads at (0.15 at t0 = 0.02): there the
  closed-form model of the training set (the perfect memorizer, [`mmh_jax.lid.cfdm`][mmh_jax.lid.cfdm]) reads
  LID ≈ 0, so a model that overfits the point is OD-Mem there.

The findings (`findings`), each with n, a bootstrap 95 % interval and a verdict
([`mmh_jax.verdicts`][mmh_jax.verdicts]; fewer than 10 positives: inconclusive):

1. OD-Mem occurs: the fraction of OD-Mem samples is above 0 (the count, with its interval).
2. DD-Mem occurs: the fraction of DD-Mem samples is above 0.
3. The LID rule finds copies: OD-Mem samples are near-copies more often than generalized samples
   on the circle (difference of the fractions of near-copies > 0; distance is model-free).
4. OD-Mem at isolated points: near-copies of isolated training points have lower LID_θ than circle
   samples that copy no training point (AUROC of −LID_θ > 0.5).
5. DD-Mem at the atom: samples nearer the atom than the circle have LID_θ ≈ 0 (mean |LID_θ| < small).
6. Generalization: circle samples that copy no training point have LID_θ ≈ 1 (mean |LID_θ − 1| < gap).

Besides, LID_θ (FLIPD at t0) at each isolated training point is reported beside CFDM's value there
(0 where the perfect memorizer is OD-Mem): how much of the possible overfitting the model did.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mmh_jax import lid, memorization
from mmh_jax import verdicts as V
from mmh_jax.data.synthetic import von_mises_point_mass
from mmh_jax.experiments import training
from mmh_jax.experiments.pipeline.common import Context, lid_theta, train_model
from mmh_jax.sde import VPSDE

__all__ = ["copy_ratio", "findings", "groups", "isolated_points", "run"]

#: A sample is a near-copy of a training point closer than this fraction of the point's spacing.
COPY_RATIO = 1.0 / 3.0


def _lid_star(x: np.ndarray, point: np.ndarray) -> np.ndarray:
    """Ground-truth LID* of the nearest piece of the data manifold: 0 (atom) or 1 (unit circle)."""
    d_circle = np.abs(np.linalg.norm(x, axis=1) - 1.0)
    d_point = np.linalg.norm(x - point[None], axis=1)
    return np.where(d_point < d_circle, 0.0, 1.0).astype(np.float32)


def _spacing(uniq: np.ndarray) -> np.ndarray:
    """Distance of each distinct training point to its nearest other one."""
    spacing, _ = memorization.nearest_training(uniq, uniq, k=2)  # column 0 is the point itself
    return np.maximum(np.asarray(spacing)[:, 1], 1e-12)


def copy_ratio(samples: np.ndarray, train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distance of each sample to its nearest distinct training point, over that point's own distance
    to the nearest other distinct training point, and the index of that point in
    ``np.unique(train, axis=0)``. Below 1/3: the sample is a near-copy (it sits much closer to a
    training point than training points sit to each other). Calibrated ℓ2 (mean of the 50 nearest)
    suits high-dimensional images; on a curve in R² it calls almost everything a copy."""
    uniq = np.unique(train, axis=0)
    d, idx = memorization.nearest_training(samples, uniq, k=1)
    idx = np.asarray(idx)[:, 0]
    return np.asarray(d)[:, 0] / _spacing(uniq)[idx], idx


def isolated_points(train: np.ndarray, point: np.ndarray, *, t0: float, isolation: float) -> np.ndarray:
    """Which rows of ``np.unique(train, axis=0)`` are isolated circle training points: off the atom
    ``point``, with their nearest other distinct training point farther than ``isolation`` ·
    σ(t0)/α(t0) (the noise scale of FLIPD at t0 seen from clean data).

    Examples:
      >>> ang = np.array([0.0, 0.01, 0.02, 3.0])
      >>> train = np.stack([np.cos(ang), np.sin(ang)], 1)
      >>> iso = isolated_points(train, np.zeros(2), t0=0.02, isolation=2.0)
      >>> np.unique(train, axis=0)[iso].round(2).tolist()   # the point at angle 3, alone
      [[-0.99, 0.14]]
    """
    uniq = np.unique(train, axis=0)
    scale = float(np.exp(VPSDE().delta(t0)))
    off_atom = np.linalg.norm(uniq - np.asarray(point)[None], axis=1) > 1e-6
    return off_atom & (_spacing(uniq) > isolation * scale)


def groups(lid_theta, lid_star, copy_ratio, isolated_nearest, *, gap: float, small: float) -> dict[str, np.ndarray]:
    """The sample groups of the findings (boolean masks) and the MMH codes, from per-sample arrays.

    Args:
      lid_theta: (N,) LID_θ (FLIPD at t0) of each sample.
      lid_star: (N,) 0 (nearer the atom) or 1 (nearer the circle).
      copy_ratio: (N,) distance to the nearest distinct training point over that point's spacing.
      isolated_nearest: (N,) bool, whether that nearest training point is isolated.
      gap, small: the tolerances of [`mmh_jax.memorization.classify`][mmh_jax.memorization.classify].

    Returns:
      ``codes`` (int, into ``CLASSES``) and masks ``od``, ``dd``, ``atom``, ``circle``, ``copy``,
      ``isolated_copy`` (near-copies of isolated circle training points), ``novel`` (circle samples
      that copy no training point), ``generalized_circle``.
    """
    lid_t = np.asarray(lid_theta, np.float32)
    star = np.asarray(lid_star, np.float32)
    codes = np.asarray(memorization.classify(lid_t, star, gap=gap, small=small))
    circle, copy = star > 0.5, np.asarray(copy_ratio) < COPY_RATIO
    return {"codes": codes, "od": codes == 1, "dd": codes == 2, "atom": ~circle, "circle": circle, "copy": copy,
            "isolated_copy": circle & copy & np.asarray(isolated_nearest, bool), "novel": circle & ~copy,
            "generalized_circle": circle & (codes == 0)}


def findings(lid_theta, lid_star, copy_ratio, isolated_nearest, *, gap: float, small: float,
             seed: int = 0) -> list:
    """The toy's findings ([`mmh_jax.verdicts.Finding`][mmh_jax.verdicts.Finding], see the module docstring)
    from per-sample arrays (as `groups`); pure, for tests."""
    lid_t = np.asarray(lid_theta, np.float64)
    g = groups(lid_t, lid_star, copy_ratio, isolated_nearest, gap=gap, small=small)
    n = lid_t.size
    n_od, n_dd = int(g["od"].sum()), int(g["dd"].sum())

    def diff(a, b):
        return float(np.mean(a) - np.mean(b))

    def mean_abs(a):
        return float(np.mean(np.abs(a)))

    return [
        V.finding("OD-Mem occurs (LID_θ < LID* − gap)", "fraction of samples", np.mean, g["od"].astype(np.float64),
                  threshold=0.0, n_positive=n_od, n_negative=n - n_od, seed=seed),
        V.finding("DD-Mem occurs (at the atom, LID_θ ≤ small + gap)", "fraction of samples", np.mean,
                  g["dd"].astype(np.float64), threshold=0.0, n_positive=n_dd, n_negative=n - n_dd, seed=seed),
        V.finding("OD-Mem samples are near-copies of training points more often than generalized circle samples",
                  "fraction of near-copies, OD-Mem − generalized", diff, g["copy"][g["od"]].astype(np.float64),
                  g["copy"][g["generalized_circle"]].astype(np.float64), threshold=0.0, seed=seed),
        V.finding("near-copies of isolated training points have lower LID_θ than circle samples that copy none",
                  "AUROC of −LID_θ", V.auroc, -lid_t[g["isolated_copy"]], -lid_t[g["novel"]], threshold=0.5,
                  seed=seed),
        V.finding("samples at the atom have LID_θ ≈ 0", "mean |LID_θ|", mean_abs, lid_t[g["atom"]],
                  threshold=small, direction="below", seed=seed),
        V.finding("circle samples that copy no training point have LID_θ ≈ 1", "mean |LID_θ − 1|", mean_abs,
                  lid_t[g["novel"]] - 1.0, threshold=gap, direction="below", seed=seed),
    ]


def run(config, ctx: Context) -> dict[str, Any]:
    """Train, sample, estimate, classify; write ``toy_scatter.png`` and ``toy.npz``; return metrics.

    ``config`` is the `RunConfig`; its ``toy`` section is used.
    """
    cfg = config.toy
    train_cfg = training.TrainConfig(
        data="von_mises_point_mass", n=cfg.n_train, model="mlp",
        model_kwargs={"hidden": cfg.hidden, "num_layers": cfg.num_layers}, steps=cfg.steps,
        batch_size=cfg.batch_size, learning_rate=cfg.learning_rate, checkpoint_every=cfg.steps, seed=ctx.seed,
        time_sampling=cfg.time_sampling,
    )
    model = train_model(ctx, "toy", train_cfg)
    data = von_mises_point_mass(cfg.n_train, seed=ctx.seed)  # exactly the training set (same n, seed)
    point = data.x[data.component == 1][0] if np.any(data.component == 1) else np.zeros(2, np.float32)

    key = jax.random.key(ctx.seed + 1)
    k_sample, k_flipd, k_nb = jax.random.split(key, 3)
    with ctx.timed("toy_sample"):
        samples = model.sample(k_sample, cfg.n_samples, method="ddim", num_steps=cfg.sample_steps)
    samples = np.asarray(samples)
    uniq = np.unique(data.x, axis=0)
    iso = isolated_points(data.x, point, t0=cfg.t0, isolation=cfg.isolation)
    iso_idx = np.flatnonzero(iso)
    iso_idx = iso_idx[np.argsort(np.arctan2(uniq[iso_idx, 1], uniq[iso_idx, 0]))]  # by angle on the circle
    iso_x = uniq[iso_idx]
    n = samples.shape[0]
    with ctx.timed("toy_lid"):
        # FLIPD at the samples and at the isolated training points in one pass (one compile; exact trace).
        both = lid_theta(model, np.concatenate([samples, iso_x]), k_flipd, estimator="flipd",
                         t0=cfg.t0, t0_grid=cfg.t0_grid, trace="exact", batch_size=256)
        flipd = {k: v[:n] for k, v in both.items() if k != "t0s"}
        at_iso = np.asarray(both["lid"][n:], np.float64)
        nb = lid_theta(model, samples, k_nb, estimator="normal-bundle", t=cfg.normal_bundle_t, batch_size=256)
        # The perfect memorizer (closed-form model of the training set) at the same points and t0.
        cfdm_iso = np.asarray(jax.vmap(lambda x: lid.cfdm(x, jnp.asarray(data.x), t=cfg.t0, sde=model.sde))(
            jnp.asarray(iso_x)), np.float64) if iso_x.size else np.zeros(0)
    lid_star = _lid_star(samples, point)
    lid_t = np.asarray(flipd["lid"])
    ratio, nearest = copy_ratio(samples, data.x)
    g = groups(lid_t, lid_star, ratio, iso[nearest], gap=cfg.gap, small=cfg.small)
    codes = g["codes"]
    found = findings(lid_t, lid_star, ratio, iso[nearest], gap=cfg.gap, small=cfg.small, seed=ctx.seed)

    counts = memorization.class_counts(codes)
    spacing = _spacing(uniq)
    isolated = [{"x": [round(float(v), 4) for v in uniq[i]],
                 "angle_deg": round(float(np.degrees(np.arctan2(uniq[i, 1], uniq[i, 0]))), 1),
                 "spacing": round(float(spacing[i]), 4), "lid_theta": float(at_iso[j]),
                 "cfdm": float(cfdm_iso[j]), "near_copies": int(np.sum(g["copy"] & (nearest == i)))}
                for j, i in enumerate(iso_idx)]
    metrics: dict[str, Any] = {
        "counts": counts,
        "counts_interval": {name: list(V.wilson_interval(int(c), n)) for name, c in counts.items()},
        "mean_lid_theta": {}, "mean_lid_theta_knee": {}, "mean_normal_bundle": {}, "fraction_copies": {},
        "config": dataclasses.asdict(cfg),
        "n_train": int(cfg.n_train), "n_train_point_mass": int(np.sum(data.component == 1)),
        "isolated_train": isolated,
        "mean_lid_theta_isolated_train": float(np.mean(at_iso)) if at_iso.size else float("nan"),
        "mean_cfdm_isolated_train": float(np.mean(cfdm_iso)) if cfdm_iso.size else float("nan"),
        "n_isolated_copies": int(g["isolated_copy"].sum()),
        "mean_lid_theta_isolated_copies": _mean(lid_t, g["isolated_copy"]),
        "mean_lid_theta_novel_circle": _mean(lid_t, g["novel"]),
        "findings": [f.asdict() for f in found],
    }
    for i, name in enumerate(memorization.CLASSES):
        sel = codes == i
        for key_, arr in (("mean_lid_theta", lid_t), ("mean_lid_theta_knee", flipd["lid_knee"]),
                          ("mean_normal_bundle", nb["lid"]), ("fraction_copies", g["copy"])):
            metrics[key_][name] = _mean(np.asarray(arr, np.float64), sel)
    np.savez(ctx.path("toy.npz"), samples=samples, lid_theta=lid_t, lid_theta_knee=flipd["lid_knee"],
             normal_bundle=nb["lid"], lid_star=lid_star, mmh_class=codes, copy_ratio=ratio, train=data.x,
             isolated_train=iso_x, lid_theta_isolated_train=at_iso, cfdm_isolated_train=cfdm_iso,
             isolated_copy=g["isolated_copy"])
    _scatter(ctx.path("toy_scatter.png"), data.x, samples, lid_t, codes, cfg.t0, iso_x)
    metrics["figures"] = ["toy_scatter.png"]
    metrics["reading"] = _reading(metrics, found)
    return metrics


def _mean(a: np.ndarray, sel: np.ndarray) -> float:
    return float(np.mean(a[sel])) if np.any(sel) else float("nan")


def _reading(m: dict[str, Any], found: list) -> str:
    c, ci, mean = m["counts"], m["counts_interval"], m["mean_lid_theta"]
    n = sum(c.values())

    def f(v):
        return "n/a" if v != v else f"{v:.2f}"

    def count(name, label):
        lo, hi = ci[name]
        return f"{c[name]} {label} ({100 * c[name] / max(n, 1):.1f} %, 95 % CI {100 * lo:.1f}–{100 * hi:.1f} %)"

    lines = [
        f"{n} samples: {count('generalized', 'generalized')}, {count('od_mem', 'OD-Mem')}, "
        f"{count('dd_mem', 'DD-Mem')}.",
        f"Mean LID_θ (FLIPD): generalized {f(mean['generalized'])}, OD-Mem {f(mean['od_mem'])}, "
        f"DD-Mem {f(mean['dd_mem'])} (truth: circle 1, atom 0).",
    ]
    lines += [fd.text() for fd in found]
    iso = m["isolated_train"]
    if iso:
        pts = ", ".join(f"{p['angle_deg']:.0f}°: {f(p['lid_theta'])} / {f(p['cfdm'])}" for p in iso)
        memorized = sum(p["lid_theta"] < 0.5 for p in iso)
        lines.append(
            f"LID_θ / CFDM (the perfect memorizer) at the {len(iso)} isolated training points (angle on the circle): "
            f"{pts}; the model is OD-Mem (LID_θ < 0.5) at {memorized} of them, "
            f"{m['n_isolated_copies']} samples are near-copies of them (mean LID_θ "
            f"{f(m['mean_lid_theta_isolated_copies'])}, vs {f(m['mean_lid_theta_novel_circle'])} for circle samples "
            "that copy no training point).")
    else:
        lines.append("No training point on the circle is isolated at the scale of t0: nothing to overfit there.")
    return " ".join(lines)


def _scatter(path, train, samples, lid_t, codes, t0, isolated=None) -> None:
    from mmh_jax._plotting import pyplot

    plt = pyplot()

    fig, ax = plt.subplots(figsize=(5.6, 4.8))
    sc = ax.scatter(samples[:, 0], samples[:, 1], c=np.clip(lid_t, -0.25, 1.75), cmap="viridis", s=9,
                    vmin=-0.25, vmax=1.75, label="samples")
    ax.scatter(train[:, 0], train[:, 1], marker="x", c="k", s=22, lw=0.8, label="training points")
    if isolated is not None and len(isolated):
        ax.scatter(isolated[:, 0], isolated[:, 1], marker="x", c="tab:red", s=40, lw=1.4,
                   label=f"isolated training points ({len(isolated)})")
    for code, marker, color, name in ((1, "o", "tab:red", "OD-Mem"), (2, "s", "tab:orange", "DD-Mem")):
        sel = codes == code
        if sel.any():
            ax.scatter(samples[sel, 0], samples[sel, 1], facecolors="none", edgecolors=color, marker=marker,
                       s=60, lw=1.0, label=f"{name} ({int(sel.sum())})")
    fig.colorbar(sc, ax=ax, label=f"LID_θ (FLIPD, t0={t0:g})")
    ax.set_aspect("equal")
    ax.legend(fontsize=7, loc="upper right")
    ax.set_title("MMH toy: von Mises circle (LID 1) + point mass (LID 0)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
