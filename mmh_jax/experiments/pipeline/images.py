"""Experiment ``images``: memorized digit samples, and duplicated training digits, have low LID_θ.

A class-conditional U-Net (its null class gives the unconditional model) is trained on a small
digits set in which a few images are repeated many times (:func:`.common.digits_setup`). Then:

1. unconditional samples are labelled memorized by calibrated ℓ2 against the distinct training
   images (Carlini et al. 2023; DESIGN §3);
2. LID_θ at every sample: FLIPD at a fixed t0 (exact trace), FLIPD at the knee of its curve (for a
   subset of ``curve_points`` samples) and the normal bundle; AUROC and TPR at 1% FPR of −LID_θ as
   detectors of the memorized samples;
3. LID_θ at the training images: duplicated vs unique (AUROC of −FLIPD);
4. LID* at every sample by lPCA on the training set (duplicates included: a duplicated image is a
   point mass of the data, LID* ≈ 0 there), and each memorized sample classified OD-Mem
   (LID_θ < LID* − gap) or DD-Mem (:func:`mmh_jax.memorization.classify` with labels).

FLIPD (a trace, ≈ LID_θ) and lPCA (an eigenvalue count of the data's neighbourhood) live on the same
scale of dimensions, which is what the OD/DD comparison needs; the gap is 0.5·median(LID*) here
(images have no absolute "small").
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import numpy as np

from mmh_jax.experiments.pipeline.common import Context, digits_setup, map_model, memorization_labels, user_setup

__all__ = ["run"]


def _flipd(score_for, x, key, t0):
    from mmh_jax import lid
    from mmh_jax.sde import VPSDE

    return lid.flipd(score_for(None), x, key, t0=t0, sde=VPSDE(), trace="exact")


def _curve(score_for, x, key, t0s):
    from mmh_jax import lid
    from mmh_jax.sde import VPSDE

    return lid.flipd_curve(score_for(None), x, key, t0s=t0s, sde=VPSDE(), trace="hutchinson", num_probes=4)


def _normal_bundle(score_for, x, key, t, *, num_samples):
    from mmh_jax import lid
    from mmh_jax.sde import VPSDE

    return lid.normal_bundle(score_for(None), x, key, t=t, sde=VPSDE(), num_samples=num_samples)


@functools.lru_cache(maxsize=None)
def _normal_bundle_fn(num_samples: int):
    """The point function with a static K, one object per K (``map_model`` caches its jit per object)."""
    return functools.partial(_normal_bundle, num_samples=num_samples)


def run(config, ctx: Context) -> dict[str, Any]:
    """Sample, label, estimate LID_θ and LID*, score detectors; write figures and ``images.npz``."""
    import jax
    import jax.numpy as jnp

    from mmh_jax import lid, memorization

    cfg = config.images
    setup = user_setup(config.checkpoint, config.data, ctx, step=config.step) if config.checkpoint else digits_setup(cfg, ctx)
    model = setup.model
    _check_default_sde(model)
    key = jax.random.key(ctx.seed + 2)
    k_sample, k_f, k_c, k_nb, k_tr = jax.random.split(key, 5)
    with ctx.timed("images_sample"):
        samples = model.sample(k_sample, cfg.n_samples, method="ddim", num_steps=cfg.sample_steps)
    calib, mem, nearest = memorization_labels(samples, setup, cfg)
    n = samples.shape[0]
    t0 = jnp.float32(cfg.t0)
    t0s = jnp.asarray(np.geomspace(*cfg.t0_grid[:2], int(cfg.t0_grid[2])), jnp.float32)
    # LID_θ at the training images: every duplicated one, and unique ones up to 2·n_samples in all.
    rng = np.random.default_rng(ctx.seed)
    uniq_idx = np.flatnonzero(~setup.duplicated)
    keep = max(2 * n - int(setup.duplicated.sum()), 1)
    if uniq_idx.size > keep:
        uniq_idx = np.sort(rng.choice(uniq_idx, keep, replace=False))
    train_idx = np.sort(np.concatenate([np.flatnonzero(setup.duplicated), uniq_idx]))
    u = train_idx.size
    dup_train = setup.duplicated[train_idx]
    with ctx.timed("images_lid"):
        # FLIPD at the samples and at those training images in one pass (one compile).
        both = np.concatenate([samples, setup.unique_x[train_idx].astype(samples.dtype)])
        keys = jnp.concatenate([jax.random.split(k_f, n), jax.random.split(k_tr, u)])
        flipd_all = map_model(model, _flipd, both, keys, jnp.broadcast_to(t0, (n + u,)), batch_size=cfg.batch)
        flipd, flipd_train = flipd_all[:n], flipd_all[n:]
        # Curves for a subset: memorized samples first (they are few), then the others.
        order = np.argsort(~mem, kind="stable")[: min(cfg.curve_points, n)]
        m = order.shape[0]
        curves = map_model(model, _curve, samples[order], jax.random.split(k_c, m),
                           jnp.broadcast_to(t0s, (m, t0s.shape[0])), batch_size=cfg.batch)
        knee_t, knee_v = jax.device_get(jax.vmap(lid.knee, in_axes=(None, 0))(t0s, jnp.asarray(curves)))
        nb = map_model(model, _normal_bundle_fn(int(cfg.normal_bundle_samples)), samples, jax.random.split(k_nb, n),
                       jnp.full((n,), cfg.normal_bundle_t, jnp.float32), batch_size=cfg.batch)
    with ctx.timed("images_lid_star"):
        flat_train = setup.train_x.reshape(setup.train_x.shape[0], -1)
        k = min(cfg.model_free_k, flat_train.shape[0] - 1)
        lid_star = np.asarray(lid.lpca(flat_train, k=k, queries=samples.reshape(n, -1)))

    det = memorization.detection_metrics(-flipd, mem)
    det_nb = memorization.detection_metrics(-nb, mem)
    det_knee = memorization.detection_metrics(-knee_v, mem[order])
    det_dup = memorization.detection_metrics(-flipd_train, dup_train)  # NaN when nothing is duplicated
    gap = 0.5 * float(np.median(lid_star))
    codes = np.asarray(memorization.classify(flipd, lid_star, gap=gap, memorized=mem))
    counts = memorization.class_counts(codes)

    def mean(a, sel):
        return float(np.mean(a[sel])) if np.any(sel) else float("nan")

    metrics: dict[str, Any] = {
        "memorized_fraction": float(np.mean(mem)),
        "n_samples": int(n),
        "auroc_flipd": det["auroc"], "tpr_at_1fpr_flipd": det["tpr_at_1fpr"],
        "auroc_flipd_knee": det_knee["auroc"], "tpr_at_1fpr_flipd_knee": det_knee["tpr_at_1fpr"],
        "auroc_normal_bundle": det_nb["auroc"], "tpr_at_1fpr_normal_bundle": det_nb["tpr_at_1fpr"],
        "auroc_duplicated_vs_unique": det_dup["auroc"],
        "mean_flipd": {"memorized": mean(flipd, mem), "not_memorized": mean(flipd, ~mem)},
        "mean_normal_bundle": {"memorized": mean(nb, mem), "not_memorized": mean(nb, ~mem)},
        "range_normal_bundle": [float(np.min(nb)), float(np.max(nb))],
        "dimension": int(np.prod(samples.shape[1:])),
        "mean_flipd_train": {"duplicated": mean(flipd_train, dup_train), "unique": mean(flipd_train, ~dup_train)},
        "mean_lid_star": {"memorized": mean(lid_star, mem), "not_memorized": mean(lid_star, ~mem)},
        "counts": {"od_mem": counts["od_mem"], "dd_mem": counts["dd_mem"], "generalized": counts["generalized"]},
        "od_dd_gap": gap,
        "memorized_of_duplicated": float(np.mean(setup.duplicated[nearest[mem]])) if mem.any() else float("nan"),
        "config": dataclasses.asdict(cfg),
    }
    np.savez(ctx.path("images.npz"), samples=samples, calibrated_l2=calib, memorized=mem, nearest=nearest,
             flipd=flipd, normal_bundle=nb, curve_index=order, curves=curves, t0s=np.asarray(t0s),
             knee_t=knee_t, knee_value=knee_v, flipd_train=flipd_train, train_index=train_idx, duplicated=dup_train,
             lid_star=lid_star, mmh_class=codes)
    _hist(ctx.path("images_lid_hist.png"), flipd, nb, mem, flipd_train, dup_train, cfg.t0)
    _curves(ctx.path("images_flipd_curves.png"), np.asarray(t0s), curves, knee_t, knee_v, mem[order])
    metrics["figures"] = ["images_lid_hist.png", "images_flipd_curves.png"]
    if samples.ndim == 4:  # images: memorized samples beside their nearest training images
        _grid(ctx.path("images_memorized.png"), samples, mem, nearest, setup.unique_x, flipd)
        metrics["figures"].insert(1, "images_memorized.png")
    metrics["reading"] = _reading(metrics)
    return metrics


def _check_default_sde(model) -> None:
    """The point functions use ``VPSDE()``; a model trained with another schedule is refused."""
    from mmh_jax.sde import VPSDE

    vp = VPSDE()
    want = {"beta_min": float(vp.beta_min), "beta_max": float(vp.beta_max), "T": float(vp.T)}
    if {k: float(v) for k, v in model.config["sde"].items()} != want:
        raise ValueError(f"the digits model was trained with sde={model.config['sde']}; this experiment "
                         f"assumes the default VPSDE {want}.")


def _reading(m: dict[str, Any]) -> str:
    def f(v):
        return "n/a" if v != v else f"{v:.2f}"

    lines = [f"{m['memorized_fraction']:.1%} of {m['n_samples']} samples are memorized (calibrated ℓ2 < 1/3); "
             f"{f(m['memorized_of_duplicated'])} of those copy a duplicated training image."]
    if m["auroc_flipd"] != m["auroc_flipd"]:
        lines.append("With no memorized (or no non-memorized) sample, detection AUROC is undefined.")
    else:
        ok = m["auroc_flipd"] >= 0.8
        lines.append(
            f"Memorized samples have {'lower' if m['mean_flipd']['memorized'] < m['mean_flipd']['not_memorized'] else 'HIGHER'} "
            f"FLIPD ({f(m['mean_flipd']['memorized'])} vs {f(m['mean_flipd']['not_memorized'])}): AUROC of −FLIPD "
            f"{f(m['auroc_flipd'])} (TPR {f(m['tpr_at_1fpr_flipd'])} at 1% FPR), knee {f(m['auroc_flipd_knee'])}, "
            f"normal bundle {f(m['auroc_normal_bundle'])}. Finding {'holds' if ok else 'does NOT hold'} (AUROC ≥ 0.8).")
        lo, hi = m["range_normal_bundle"]
        if lo == hi:
            lines.append(
                f"The normal bundle gave {lo:g} at every sample (D = {m['dimension']}): the singular values of the "
                "scores around a sample decay without a gap, so its largest-gap rule always finds a one-dimensional "
                "normal space and it cannot tell samples apart on this model.")
    dup = m["auroc_duplicated_vs_unique"]
    lines.append(
        f"Duplicated training images have {'lower' if m['mean_flipd_train']['duplicated'] < m['mean_flipd_train']['unique'] else 'HIGHER'} "
        f"FLIPD than unique ones ({f(m['mean_flipd_train']['duplicated'])} vs {f(m['mean_flipd_train']['unique'])}; "
        f"AUROC {f(dup)}).")
    lines.append(f"Memorized samples split into {m['counts']['od_mem']} OD-Mem and {m['counts']['dd_mem']} DD-Mem "
                 f"(LID* by lPCA: {f(m['mean_lid_star']['memorized'])} at memorized samples vs "
                 f"{f(m['mean_lid_star']['not_memorized'])} elsewhere).")
    return " ".join(lines)


def _plt():
    from mmh_jax._plotting import pyplot

    plt = pyplot()

    return plt


def _hist(path, flipd, nb, mem, flipd_train, dup, t0) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.3))
    for ax, vals, sel, names, title in (
        (axes[0], flipd, mem, ("memorized", "not memorized"), f"FLIPD (t0={t0:g}) at samples"),
        (axes[1], nb, mem, ("memorized", "not memorized"), "normal bundle at samples"),
        (axes[2], flipd_train, dup, ("duplicated", "unique"), f"FLIPD (t0={t0:g}) at training images"),
    ):
        bins = np.linspace(float(np.min(vals)), float(np.max(vals)) + 1e-6, 30)
        ax.hist(vals[~sel], bins=bins, alpha=0.6, density=True, label=f"{names[1]} ({int((~sel).sum())})")
        if sel.any():
            ax.hist(vals[sel], bins=bins, alpha=0.6, density=True, label=f"{names[0]} ({int(sel.sum())})")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("LID_θ")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _grid(path, samples, mem, nearest, train, flipd, max_pairs: int = 16) -> None:
    """Memorized samples (lowest FLIPD first) beside their nearest training images."""
    plt = _plt()
    idx = np.flatnonzero(mem)
    idx = idx[np.argsort(flipd[idx])][:max_pairs]
    if idx.size == 0:  # nothing memorized: show the closest samples instead, and say so
        idx = np.argsort(flipd)[:max_pairs]
    cols = 8
    rows = 2 * int(np.ceil(idx.size / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.9, rows * 1.0), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for j, i in enumerate(idx):
        r, c = 2 * (j // cols), j % cols
        axes[r, c].imshow(samples[i, ..., 0], cmap="gray", vmin=-1, vmax=1)
        axes[r, c].set_title(f"{flipd[i]:.1f}", fontsize=6)
        axes[r + 1, c].imshow(train[nearest[i], ..., 0], cmap="gray", vmin=-1, vmax=1)
    title = "memorized samples (top, FLIPD above) and nearest training images (below)" if mem.any() else \
        "no memorized sample: lowest-FLIPD samples (top) and nearest training images"
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _curves(path, t0s, curves, knee_t, knee_v, mem) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for sel, color, name in ((~mem, "tab:blue", "not memorized"), (mem, "tab:red", "memorized")):
        for j, i in enumerate(np.flatnonzero(sel)[:12]):
            ax.plot(t0s, curves[i], color=color, lw=0.8, alpha=0.7, label=name if j == 0 else None)
            ax.plot([knee_t[i]], [knee_v[i]], "o", color=color, ms=3)
    ax.set_xscale("log")
    ax.set_xlabel("t₀")
    ax.set_ylabel("FLIPD")
    ax.set_title("FLIPD curves at samples (dots: knees)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
