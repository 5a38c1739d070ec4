"""Experiment ``images``: memorized digit samples have low LID_θ, and OD-Mem vs DD-Mem on planted cases.

The class-conditional digits model (`common.digits_setup`: a few images duplicated, a few
with labels of their own) is sampled three ways: unconditionally (null class), guided by the digit
classes, and guided by the per-image labels (`guided`). Samples are labelled memorized by
calibrated ℓ2 against the distinct training images (Carlini et al. 2023, α = 0.5, n = 50) below a
threshold set on held-out digits (`common.label_calibration`; its held-out false-positive
rate is reported beside every use). Then, each with n, a bootstrap 95 % interval and a verdict
([`mmh_jax.verdicts`][mmh_jax.verdicts]):

1. **Detection** — AUROC and TPR at 1 % FPR of −LID_θ (FLIPD at ``t0``, exact trace) as a detector of
   the memorized samples among those guided by per-image labels (where both copies and non-copies
   are frequent; conditional FLIPD(x | c) and unconditional FLIPD(x)); the same among the
   digit-guided and the unconditional samples (few are memorized there: usually inconclusive);
   −FLIPD at the knee of its curve (exact trace) and the normal bundle on ``curve_points``
   per-image-label samples, half of them memorized; duplicated vs unique training images.
2. **OD-Mem vs DD-Mem.** LID* must be comparable with LID_θ:

   - LID* of a sample is lPCA (``model_free_k`` neighbours, more than ``copies``) among the
     *distinct* training images, so copies of one image cannot fill a neighbourhood;
   - a duplicated image is a point mass of the data: LID* = 0 at a copy of it (the atom that lPCA on
     distinct images cannot see);
   - lPCA counts eigenvalues and FLIPD reads a noised trace: they are not on one scale. lPCA is mapped
     onto FLIPD's scale by matching quantiles on held-out real digits (half A), where the model
     generalizes and LID_θ should track LID*;
   - ``gap`` is the 95th percentile of LID*_cal − FLIPD over half A and ``small`` the 5th percentile
     of FLIPD there; half B measures how often a real held-out digit would be called OD.

   A memorized sample is OD-Mem when LID_θ < LID*_cal − gap (the model is lower-dimensional than
   the data there), DD-Mem when LID*_cal ≤ small and LID_θ ≤ small (the data are low-dimensional
   there and the model's LID is lower than at 95 % of real digits), else neither. LID_θ is the LID of the model that
   drew the sample: FLIPD(x | c) for guided samples, FLIPD(x) for unconditional ones.
   **Planted cases** decide whether this works: samples guided by the label of a *unique* image
   (the model provably overfits an image the data hold once) must come out OD-Mem; those guided by
   the label of a *duplicated* image, DD-Mem. The confusion table is in the metrics and the report.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mmh_jax import lid, memorization, verdicts
from mmh_jax import verdicts as V
from mmh_jax.experiments.pipeline import guided as guided_mod
from mmh_jax.experiments.pipeline.common import (Context, digits_setup, label_calibration, map_model,
                                                  memorization_labels, user_setup)
from mmh_jax.sde import VPSDE

__all__ = ["PLANTED", "balanced_subset", "findings", "od_dd", "planted_table", "run"]

#: Columns of the planted-case confusion table.
PLANTED = ("od_mem", "dd_mem", "neither", "not_memorized")


def _flipd(score_for, x, key, t0):
    return lid.flipd(score_for(None), x, key, t0=t0, sde=VPSDE(), trace="exact")


def _curve_and_bundle(score_for, x, label, key, t0s, *, t, num_samples):
    """FLIPD curve (exact trace) with class ``label``, and the normal bundle LID, at one sample."""
    score = score_for(label)
    curve = lid.flipd_curve(score, x, t0s=t0s, sde=VPSDE(), trace="exact")
    nb = lid.normal_bundle(score, x, key, t=t, sde=VPSDE(), num_samples=num_samples)
    return curve, jax.numpy.asarray(nb, curve.dtype)


@functools.lru_cache(maxsize=None)
def _curve_fn(t: float, num_samples: int):
    """One point function per (t, K): ``map_model`` caches its jit per point-function object."""
    return functools.partial(_curve_and_bundle, t=t, num_samples=num_samples)


def od_dd(lid_theta, lpca_star, atom, memorized, heldout_flipd, heldout_lpca, *, seed: int = 0) -> dict[str, Any]:
    """OD-Mem / DD-Mem codes of samples, with LID* put on FLIPD's scale by held-out real images.

    Args:
      lid_theta: (M,) LID_θ of the samples (FLIPD of the model that drew each).
      lpca_star: (M,) lPCA LID* of the samples among the distinct training images.
      atom: (M,) bool, the sample copies a duplicated training image (LID* = 0 there).
      memorized: (M,) bool labels.
      heldout_flipd, heldout_lpca: (H,) FLIPD and lPCA at held-out real images (H ≥ 4).
      seed: seed of the split of the held-out images into halves A (scale, ``gap``, ``small``)
        and B (the false OD rate).

    Returns:
      dict: ``codes`` (M,) into ``mmh_jax.memorization.CLASSES`` (``generalized`` for unlabelled
      samples and for memorized ones that are neither), ``neither`` (M,) bool, ``lid_star`` (M,) on
      FLIPD's scale, ``gap``, ``small``, ``heldout_od_rate`` (fraction of half B that would be OD)
      and ``n_heldout_b``.
    """
    lid_theta, lpca_star = np.asarray(lid_theta, np.float64), np.asarray(lpca_star, np.float64)
    atom, memorized = np.asarray(atom, bool), np.asarray(memorized, bool)
    hf, hl = np.asarray(heldout_flipd, np.float64), np.asarray(heldout_lpca, np.float64)
    if hf.size < 4 or hf.shape != hl.shape:
        raise ValueError(f"od_dd needs at least 4 held-out images with both FLIPD and lPCA, got shapes {hf.shape} "
                         f"and {hl.shape}.")
    perm = np.random.default_rng([seed, 29]).permutation(hf.size)
    a, b = perm[: hf.size // 2], perm[hf.size // 2:]
    ref_l, ref_f = np.sort(hl[a]), np.sort(hf[a])

    def to_flipd_scale(v):  # mid-rank quantile of v among half A's lPCA, read off half A's FLIPD
        v = np.asarray(v, np.float64)
        q = (np.searchsorted(ref_l, v, "left") + np.searchsorted(ref_l, v, "right")) / (2.0 * ref_l.size)
        return np.quantile(ref_f, np.clip(q, 0.0, 1.0))

    star_a = to_flipd_scale(hl[a])
    gap = float(max(np.quantile(star_a - hf[a], 0.95), 0.0))
    small = float(np.quantile(hf[a], 0.05))
    star_b = to_flipd_scale(hl[b])
    od_b = hf[b] < star_b - gap
    lid_star = np.where(atom, 0.0, to_flipd_scale(lpca_star))
    # classify's DD rule is LID* ≤ s and LID_θ ≤ s + gap: s = small − gap makes the LID_θ bound ``small``
    codes = np.asarray(memorization.classify(lid_theta.astype(np.float32), lid_star.astype(np.float32), gap=gap,
                                             small=small - gap))
    codes = np.where(memorized, codes, 0).astype(np.int32)
    return {"codes": codes, "neither": memorized & (codes == 0), "lid_star": lid_star.astype(np.float32),
            "gap": gap, "small": small, "heldout_od_rate": float(np.mean(od_b)), "n_heldout_b": int(b.size),
            "n_heldout_od_b": int(od_b.sum())}


def planted_table(codes, neither, memorized, truth) -> dict[str, dict[str, int]]:
    """Confusion of planted cases: for ``truth`` "od_mem" / "dd_mem", the count in each `PLANTED`
    column. ``truth`` (M,) holds the planted class of each sample ("" for samples not planted)."""
    codes, neither, memorized, truth = (np.asarray(codes), np.asarray(neither, bool), np.asarray(memorized, bool),
                                        np.asarray(truth))
    table = {}
    for t in ("od_mem", "dd_mem"):
        sel = truth == t
        table[t] = {"od_mem": int(np.sum(sel & memorized & (codes == 1))),
                    "dd_mem": int(np.sum(sel & memorized & (codes == 2))),
                    "neither": int(np.sum(sel & neither)), "not_memorized": int(np.sum(sel & ~memorized))}
    return table


def balanced_subset(idx: np.ndarray, mem: np.ndarray, m: int) -> np.ndarray:
    """Up to ``m`` of ``idx``: memorized ones first up to half (or more when too few are not), then not memorized."""
    pos, neg = idx[mem[idx]], idx[~mem[idx]]
    k_pos = min(pos.size, max(m // 2, m - neg.size))
    return np.concatenate([pos[:k_pos], neg[: m - k_pos]])


def _per_label_fraction(hit: np.ndarray, labels: np.ndarray):
    """(fractions of ``hit`` per label, the labels): the planted findings resample labels, not samples
    (samples of one label are not independent)."""
    groups = np.unique(labels)
    return np.asarray([np.mean(hit[labels == g]) for g in groups]), groups


def findings(d: dict[str, Any], planted, codes_g, labels_g, mem_g, seed: int = 0) -> list:
    """The experiment's findings ([`mmh_jax.verdicts.Finding`][mmh_jax.verdicts.Finding]) from its arrays;
    pure, for tests.

    ``d`` holds the detection arrays (keys as built in `run`: ``own_flipd_c``, ``own_flipd_u``
    and ``own_mem`` of the samples guided by per-image labels, ``digit_flipd_c``/``digit_mem`` of the
    digit-guided ones, ``uncond_flipd``/``uncond_mem``, ``knee_value``/``normal_bundle``/``curve_mem``,
    ``train_flipd``/``train_duplicated``); ``planted``,
    ``codes_g``, ``labels_g`` and ``mem_g`` are per guided sample (planted class or "", MMH code,
    label, memorized).
    """
    out = []

    def detect(claim, stat, score, labels, note=""):
        score, labels = np.asarray(score, np.float64), np.asarray(labels, bool)
        ok = np.isfinite(score)
        pos, neg = score[ok & labels], score[ok & ~labels]
        out.append(V.finding(claim, f"AUROC of {stat}", V.auroc, pos, neg, threshold=0.5, seed=seed, note=note))
        return pos, neg

    pos, neg = detect("memorized samples of per-image labels have lower LID_θ(x | c)", "−FLIPD(x | c)",
                      -d["own_flipd_c"], d["own_mem"])
    out.append(V.finding("−FLIPD(x | c) flags memorized per-image-label samples at 1 % false positives",
                         "TPR at 1 % FPR", V.tpr_at_fpr, pos, neg, threshold=0.01, seed=seed))
    detect("memorized samples of per-image labels have lower unconditional LID_θ(x)", "−FLIPD(x)",
           -d["own_flipd_u"], d["own_mem"])
    detect("memorized digit-guided samples have lower LID_θ(x | c)", "−FLIPD(x | c)", -d["digit_flipd_c"],
           d["digit_mem"])
    detect("memorized unconditional samples have lower LID_θ(x)", "−FLIPD(x)", -d["uncond_flipd"], d["uncond_mem"])
    detect("memorized samples have lower LID_θ at the knee of the FLIPD curve", "−FLIPD(knee)",
           -d["knee_value"], d["curve_mem"])
    detect("memorized samples have lower normal-bundle LID_θ", "−normal bundle", -d["normal_bundle"], d["curve_mem"])
    detect("duplicated training images have lower LID_θ than unique ones", "−FLIPD(x)", -d["train_flipd"],
           d["train_duplicated"])
    planted, codes_g, labels_g, mem_g = np.asarray(planted), np.asarray(codes_g), np.asarray(labels_g), np.asarray(
        mem_g, bool)
    for truth, name in (("od_mem", "OD-Mem"), ("dd_mem", "DD-Mem")):
        # Only copies are memorization cases: the fraction of a label's memorized samples classified
        # as planted, averaged over the labels with at least one (n = those labels).
        sel = (planted == truth) & mem_g
        code = 1 if truth == "od_mem" else 2
        fr, groups = _per_label_fraction(codes_g[sel] == code, labels_g[sel])
        out.append(V.finding(f"memorized samples of a planted {'unique' if code == 1 else 'duplicated'} image are "
                             f"{name}", f"fraction classified {name} (mean over labels)", np.mean, fr, threshold=0.5,
                             n_positive=groups.size, seed=seed))
    return out


def run(config, ctx: Context) -> dict[str, Any]:
    """Sample, label, estimate LID_θ and LID*, score detectors, classify; figures and ``images.npz``."""
    cfg = config.images
    setup = user_setup(config.checkpoint, config.data, ctx, step=config.step) if config.checkpoint else digits_setup(cfg, ctx)
    model = setup.model
    _check_default_sde(model)
    cal = label_calibration(setup, cfg, ctx)
    key = jax.random.key(ctx.seed + 2)
    k_sample, k_f, k_nb = jax.random.split(key, 3)

    # 1. Unconditional samples; FLIPD(x) at them, at the distinct training images, at held-out digits.
    with ctx.timed("images_sample"):
        uncond = np.asarray(model.sample(k_sample, cfg.n_unconditional, method="ddim", num_steps=cfg.sample_steps),
                            np.float32)
    calib_u, mem_u, near_u = memorization_labels(uncond, setup, cfg, cal.threshold)
    n_u, n_t = uncond.shape[0], setup.unique_x.shape[0]
    rng = np.random.default_rng([ctx.seed, 31])
    ho_idx = np.sort(rng.choice(setup.heldout_x.shape[0], min(cfg.heldout_lid, setup.heldout_x.shape[0]),
                                replace=False)) if setup.heldout_x.shape[0] else np.zeros(0, np.int64)
    heldout = setup.heldout_x[ho_idx].astype(np.float32)
    with ctx.timed("images_lid"):
        pts = np.concatenate([uncond, setup.unique_x.astype(np.float32), heldout])
        f_all = map_model(model, _flipd, pts, jax.random.split(k_f, pts.shape[0]),
                          np.full(pts.shape[0], cfg.t0, np.float32), batch_size=cfg.batch)
    f_all = np.asarray(f_all, np.float32)
    flipd_u, flipd_train, flipd_ho = f_all[:n_u], f_all[n_u:n_u + n_t], f_all[n_u + n_t:]

    # 2. Guided samples (digit classes and per-image labels), with FLIPD(x | c) and FLIPD(x).
    if model.num_classes:
        g = guided_mod.guided_samples(setup, cfg, ctx)
    else:
        shape = (0, *model.event_shape)
        empty = np.zeros(0, np.float32)
        g = {"samples": np.zeros(shape, np.float32), "labels": np.zeros(0, np.int32), "kind": np.zeros(0, np.int32),
             "cfg_norm": empty, "flipd_conditional": empty, "flipd_unconditional": empty, "guidance": 0.0}
    calib_g, mem_g, near_g = memorization_labels(g["samples"], setup, cfg, cal.threshold) if g["labels"].size else \
        (np.zeros(0, np.float32), np.zeros(0, bool), np.zeros(0, np.int64))
    digit = g["kind"] == 0

    # 3. Curves (exact trace) and the normal bundle at per-image-label samples: half memorized, half not.
    own = g["kind"] == 1
    order = balanced_subset(np.flatnonzero(own), mem_g, cfg.curve_points)
    t0s = jnp.asarray(np.geomspace(*cfg.t0_grid[:2], int(cfg.t0_grid[2])), jnp.float32)
    m = order.size
    if m:
        with ctx.timed("images_curves"):
            curves, nb = map_model(model, _curve_fn(float(cfg.normal_bundle_t), int(cfg.normal_bundle_samples)),
                                   g["samples"][order], g["labels"][order], jax.random.split(k_nb, m),
                                   jnp.broadcast_to(t0s, (m, t0s.shape[0])), batch_size=cfg.batch)
        knee_t, knee_v = jax.device_get(jax.vmap(lid.knee, in_axes=(None, 0))(t0s, jnp.asarray(curves)))
    else:
        curves, nb = np.zeros((0, t0s.shape[0]), np.float32), np.zeros(0, np.float32)
        knee_t = knee_v = np.zeros(0, np.float32)

    # 4. LID*: lPCA among the distinct training images, atoms at copies of duplicated images.
    with ctx.timed("images_lid_star"):
        flat_u = setup.unique_x.reshape(n_t, -1)
        k = min(cfg.model_free_k, n_t - 1)
        queries = np.concatenate([uncond, g["samples"], heldout]).reshape(-1, flat_u.shape[1])
        lp = np.asarray(lid.lpca(flat_u, k=k, queries=queries), np.float32)
    lp_u, lp_g, lp_ho = lp[:n_u], lp[n_u:n_u + g["labels"].size], lp[n_u + g["labels"].size:]
    lid_theta = np.concatenate([flipd_u, g["flipd_conditional"]])
    mem_all = np.concatenate([mem_u, mem_g])
    atom = mem_all & setup.duplicated[np.concatenate([near_u, near_g]).astype(np.int64)]
    planted = np.full(g["labels"].size, "", object)
    if own.any():
        dup_label = set(setup.unique_labels[setup.duplicated & setup.own_label].tolist())
        planted[own] = np.where(np.isin(g["labels"][own], list(dup_label)), "dd_mem", "od_mem")
    if heldout.shape[0] >= 4:
        cls = od_dd(lid_theta, np.concatenate([lp_u, lp_g]), atom, mem_all, flipd_ho, lp_ho, seed=ctx.seed)
    else:  # a user's model: no held-out images to put LID* on FLIPD's scale
        cls = None
    codes = cls["codes"] if cls else np.zeros(mem_all.size, np.int32)
    neither = cls["neither"] if cls else np.zeros(mem_all.size, bool)
    codes_g = codes[n_u:]

    arrays = {"own_flipd_c": g["flipd_conditional"][own], "own_flipd_u": g["flipd_unconditional"][own],
              "own_mem": mem_g[own], "digit_flipd_c": g["flipd_conditional"][digit], "digit_mem": mem_g[digit],
              "uncond_flipd": flipd_u, "uncond_mem": mem_u,
              "knee_value": np.asarray(knee_v), "normal_bundle": np.asarray(nb), "curve_mem": mem_g[order],
              "train_flipd": flipd_train, "train_duplicated": setup.duplicated}
    found = findings(arrays, planted, codes_g, g["labels"], mem_g, ctx.seed)
    table = planted_table(codes_g, neither[n_u:], mem_g, planted)
    other = np.concatenate([np.ones(n_u, bool), digit])  # memorized samples that were not planted
    counts = memorization.class_counts(np.where(other, codes, 0))
    n_other_mem = int((mem_all & other).sum())

    def frac(k_, n_):
        lo, hi = verdicts.wilson_interval(k_, n_)
        return {"count": int(k_), "of": int(n_), "low": lo, "high": hi}

    def mean(a, sel):
        return float(np.mean(a[sel])) if np.any(sel) else float("nan")

    metrics: dict[str, Any] = {
        "label": dataclasses.asdict(cal), "label_text": cal.text(),
        "n_unconditional": int(n_u), "n_memorized_unconditional": int(mem_u.sum()),
        "n_guided_digit": int(digit.sum()), "n_memorized_guided_digit": int(mem_g[digit].sum()),
        "n_guided_own": int(own.sum()), "n_memorized_guided_own": int(mem_g[own].sum()),
        "guidance": float(g["guidance"]), "dimension": int(np.prod(uncond.shape[1:])),
        "mean_flipd_own": {"memorized": mean(g["flipd_conditional"], own & mem_g),
                           "not_memorized": mean(g["flipd_conditional"], own & ~mem_g)},
        "mean_flipd_train": {"duplicated": mean(flipd_train, setup.duplicated),
                             "unique": mean(flipd_train, ~setup.duplicated)},
        "range_normal_bundle": [float(np.min(nb)), float(np.max(nb))] if m else [float("nan")] * 2,
        "od_dd": None if cls is None else {
            "gap": cls["gap"], "small": cls["small"], "heldout_od_rate": frac(cls["n_heldout_od_b"], cls["n_heldout_b"]),
            "od_mem": frac(counts["od_mem"], n_other_mem), "dd_mem": frac(counts["dd_mem"], n_other_mem),
            "neither": frac(int((neither & other).sum()), n_other_mem),
            "mean_lid_star_memorized": mean(cls["lid_star"], mem_all & other)},
        "planted": table,
        "findings": [f.asdict() for f in found],
        "config": dataclasses.asdict(cfg),
    }
    np.savez(ctx.path("images.npz"), samples=uncond, calibrated_l2=calib_u, memorized=mem_u, nearest=near_u,
             flipd=flipd_u, flipd_train=flipd_train, duplicated=setup.duplicated, heldout_index=ho_idx,
             flipd_heldout=flipd_ho, lpca_heldout=lp_ho, guided_samples=g["samples"], guided_labels=g["labels"],
             guided_kind=g["kind"], guided_calibrated_l2=calib_g, guided_memorized=mem_g, guided_nearest=near_g,
             guided_flipd_conditional=g["flipd_conditional"], guided_flipd_unconditional=g["flipd_unconditional"],
             guided_cfg_norm=g["cfg_norm"], curve_index=order, curves=np.asarray(curves), t0s=np.asarray(t0s),
             knee_t=np.asarray(knee_t), knee_value=np.asarray(knee_v), normal_bundle=np.asarray(nb),
             lid_theta=lid_theta, lpca=np.concatenate([lp_u, lp_g]), mmh_class=codes, neither=neither,
             planted=planted.astype(str), lid_star=cls["lid_star"] if cls else np.full(codes.size, np.nan, np.float32))
    _hist(ctx.path("images_lid_hist.png"), g["flipd_conditional"][own], mem_g[own], flipd_u, mem_u, flipd_train,
          setup.duplicated, cfg.t0)
    _curves(ctx.path("images_flipd_curves.png"), np.asarray(t0s), np.asarray(curves), np.asarray(knee_t),
            np.asarray(knee_v), mem_g[order])
    metrics["figures"] = ["images_lid_hist.png", "images_flipd_curves.png"]
    if uncond.ndim == 4:  # images: memorized samples beside their nearest training images
        xs = np.concatenate([uncond, g["samples"]])
        _grid(ctx.path("images_memorized.png"), xs, mem_all, np.concatenate([near_u, near_g]).astype(np.int64),
              setup.unique_x, lid_theta)
        metrics["figures"].insert(1, "images_memorized.png")
    if cls is not None:
        _od_dd_plot(ctx.path("images_od_dd.png"), lid_theta, cls["lid_star"], mem_all, codes,
                    np.concatenate([np.full(n_u, "", object), planted]), cls["gap"], flipd_ho, lp_ho)
        metrics["figures"].append("images_od_dd.png")
    metrics["reading"] = _reading(metrics, found)
    return metrics


def _check_default_sde(model) -> None:
    """The point functions use ``VPSDE()``; a model trained with another schedule is refused."""
    vp = VPSDE()
    want = {"beta_min": float(vp.beta_min), "beta_max": float(vp.beta_max), "T": float(vp.T)}
    if {k: float(v) for k, v in model.config["sde"].items()} != want:
        raise ValueError(f"the digits model was trained with sde={model.config['sde']}; this experiment "
                         f"assumes the default VPSDE {want}.")


def _reading(m: dict[str, Any], found: list) -> str:
    def f(v):
        return "n/a" if v != v else f"{v:.2f}"

    def pct(c):
        return f"{c['count']}/{c['of']} ({f(c['low'] * 100)}–{f(c['high'] * 100)} %)"

    lines = [
        f"Label: {m['label_text']}.",
        f"Memorized: {m['n_memorized_unconditional']} of {m['n_unconditional']} unconditional samples, "
        f"{m['n_memorized_guided_digit']} of {m['n_guided_digit']} samples guided by a digit class "
        f"(w = {m['guidance']:g}), {m['n_memorized_guided_own']} of {m['n_guided_own']} guided by a per-image label.",
    ]
    lines += [x.text() for x in found if not x.claim.startswith("memorized samples of a planted")]
    lo, hi = m["range_normal_bundle"]
    if lo == lo and lo == hi:
        lines.append(f"The normal bundle gave {lo:g} at every sample (D = {m['dimension']}): its largest-gap rule "
                     "finds no gap in the singular values of the scores here, so it cannot tell samples apart.")
    od = m["od_dd"]
    if od is None:
        lines.append("OD-Mem vs DD-Mem is not measured: without held-out real images LID* cannot be put on "
                     "LID_θ's scale.")
    else:
        lines.append(
            f"OD vs DD: LID* (lPCA among distinct training images, on FLIPD's scale via held-out digits; 0 at copies "
            f"of duplicated images) against LID_θ with gap {f(od['gap'])} (OD: LID_θ < LID* − gap) and small "
            f"{f(od['small'])} (DD: LID_θ below that, and LID* 0 or below small − gap); a held-out real "
            f"digit would be called OD {pct(od['heldout_od_rate'])}. Of the memorized samples that were not planted: "
            f"OD-Mem {pct(od['od_mem'])}, DD-Mem {pct(od['dd_mem'])}, neither {pct(od['neither'])}.")
        t = m["planted"]
        lines.append(
            f"Planted cases (per-image labels): unique images → OD-Mem {t['od_mem']['od_mem']}, DD-Mem "
            f"{t['od_mem']['dd_mem']}, neither {t['od_mem']['neither']}, not memorized {t['od_mem']['not_memorized']}; "
            f"duplicated images → OD-Mem {t['dd_mem']['od_mem']}, DD-Mem {t['dd_mem']['dd_mem']}, neither "
            f"{t['dd_mem']['neither']}, not memorized {t['dd_mem']['not_memorized']}.")
        lines += [x.text() for x in found if x.claim.startswith("memorized samples of a planted")]
    return " ".join(lines)


def _plt():
    from mmh_jax._plotting import pyplot

    return pyplot()


def _hist(path, flipd_g, mem_g, flipd_u, mem_u, flipd_train, dup, t0) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.3))
    for ax, vals, sel, names, title in (
        (axes[0], flipd_g, mem_g, ("memorized", "not memorized"), f"FLIPD(x | c) (t0={t0:g}), per-image labels"),
        (axes[1], flipd_u, mem_u, ("memorized", "not memorized"), f"FLIPD(x) (t0={t0:g}) at unconditional samples"),
        (axes[2], flipd_train, dup, ("duplicated", "unique"), f"FLIPD(x) (t0={t0:g}) at training images"),
    ):
        if vals.size == 0:
            ax.axis("off")
            continue
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


def _grid(path, samples, mem, nearest, train, lid_theta, max_pairs: int = 16) -> None:
    """Memorized samples (lowest LID_θ first) beside their nearest training images."""
    plt = _plt()
    idx = np.flatnonzero(mem)
    idx = idx[np.argsort(lid_theta[idx])][:max_pairs]
    if idx.size == 0:  # nothing memorized: show the closest samples instead, and say so
        idx = np.argsort(lid_theta)[:max_pairs]
    cols = 8
    rows = 2 * max(int(np.ceil(idx.size / cols)), 1)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.9, rows * 1.0), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for j, i in enumerate(idx):
        r, c = 2 * (j // cols), j % cols
        axes[r, c].imshow(samples[i, ..., 0], cmap="gray", vmin=-1, vmax=1)
        axes[r, c].set_title(f"{lid_theta[i]:.1f}", fontsize=6)
        axes[r + 1, c].imshow(train[nearest[i], ..., 0], cmap="gray", vmin=-1, vmax=1)
    title = "memorized samples (top, LID_θ above) and nearest training images (below)" if mem.any() else \
        "no memorized sample: lowest-LID_θ samples (top) and nearest training images"
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
    ax.set_ylabel("FLIPD(x | c), exact trace")
    ax.set_title("FLIPD curves at per-image-label samples (dots: knees)", fontsize=9)
    if len(curves):
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _od_dd_plot(path, lid_theta, lid_star, mem, codes, planted, gap, flipd_ho, lpca_ho) -> None:
    """LID_θ against LID* (FLIPD's scale) at memorized samples, planted cases marked; the OD line."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.4, 4.4))
    styles = {"od_mem": ("tab:red", "OD-Mem"), "dd_mem": ("tab:orange", "DD-Mem")}
    for code, (color, name) in ((1, styles["od_mem"]), (2, styles["dd_mem"]), (0, ("0.5", "neither"))):
        sel = mem & (codes == code) & (planted == "")
        if sel.any():
            ax.scatter(lid_star[sel], lid_theta[sel], s=12, c=color, alpha=0.7, label=f"{name} ({int(sel.sum())})")
    for truth, marker in (("od_mem", "^"), ("dd_mem", "s")):
        sel = (planted == truth) & mem
        if sel.any():
            ax.scatter(lid_star[sel], lid_theta[sel], s=30, marker=marker, facecolors="none",
                       edgecolors=styles[truth][0], lw=1.0,
                       label=f"planted {styles[truth][1]}, memorized ({int(sel.sum())})")
    hi = float(np.nanmax(np.concatenate([lid_star[mem], lid_theta[mem], [1.0]])))
    xs = np.linspace(0, hi, 50)
    ax.plot(xs, xs - gap, "k--", lw=0.8, label="LID_θ = LID* − gap (below: OD)")
    ax.set_xlabel("LID* (lPCA on FLIPD's scale; 0 at atoms)")
    ax.set_ylabel("LID_θ (FLIPD of the sampling model)")
    ax.set_title("OD-Mem vs DD-Mem at memorized samples (filled: classified as; open: planted as)", fontsize=8)
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
