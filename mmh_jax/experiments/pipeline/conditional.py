"""Experiment ``conditional``: conditioning lowers LID_θ, and three memorization detectors compared.

Ross et al. (arXiv 2411.00113, §3.3 and §5) argue that conditioning never raises the model's LID,
LID_θ(x | c) ≤ LID_θ(x), and that the classifier-free-guidance norm of Wen et al. (ICLR 2024),
‖ε̂(x_t, t, c) − ε̂(x_t, t, ∅)‖, is large exactly when conditioning collapses LID_θ — so it detects
memorization. This experiment checks both on the class-conditional digits U-Net shared with
``images`` (trained with 10% label dropout, so the null class gives the unconditional ε̂):

1. ``n_samples`` conditional samples, classes balanced over the ten digits (each class
   ⌊n/10⌋ or ⌈n/10⌉ times, shuffled with ``seed``), drawn by deterministic DDIM
   (``sample_steps``) with classifier-free guidance ε̃ = ε_∅ + w(ε_c − ε_∅), w = ``guidance_scale``
   when positive, else ``cfg_guidance``. Each is labelled memorized by calibrated ℓ2
   (:func:`~mmh_jax.experiments.pipeline.common.memorization_labels`).
2. Scores of each sample x with class c:
   - ``cfg_norm``: :func:`mmh_jax.lid.cfg_norm` averaged over the states (x_t, t) of the sample's
     *own* sampling trajectory — the DDIM states before each of its ``sample_steps`` steps, read
     from the very ε evaluations that drove the sampler (not a re-noising of x);
   - ``flipd_conditional``: :func:`mmh_jax.lid.flipd` with the score s(·, t | c), exact trace, at
     ``t0``;
   - ``flipd_unconditional``: the same with the null class, s(·, t | ∅).
3. Detection (AUROC, TPR at 1% FPR; :func:`mmh_jax.memorization.detection_metrics`) of
   +cfg_norm, −flipd_conditional and −flipd_unconditional against the memorized labels, and the
   fraction of samples with FLIPD(x | c) ≤ FLIPD(x).

Expected (the paper's finding): FLIPD(x | c) ≤ FLIPD(x) for most samples; memorized samples have a
larger CFG norm and lower LID_θ, so all three detectors have AUROC above 1/2.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import numpy as np

from mmh_jax.experiments.pipeline.common import (Context, digits_setup, map_model, memorization_labels,
                                                  with_null_class)

__all__ = ["SCORES", "run"]

#: The scores compared, each with the sign that makes "higher = more likely memorized".
SCORES = {"cfg_norm": 1.0, "flipd_conditional": -1.0, "flipd_unconditional": -1.0}


@functools.lru_cache(maxsize=None)
def _point_fns(beta_min: float, beta_max: float, T: float, shape: tuple[int, ...], num_steps: int,
               null_class: int):
    """The single-example functions of this experiment for one SDE, event shape, step count and null class.

    Cached so that :func:`~mmh_jax.experiments.pipeline.common.map_model` (which caches its jit
    per point function) compiles each once; ``label``, ``guidance`` and ``t0`` are traced rows.
    """
    import jax
    import jax.numpy as jnp

    from mmh_jax import lid, sample
    from mmh_jax.sde import VPSDE

    sde = VPSDE(beta_min=beta_min, beta_max=beta_max, T=T)

    def eps_of(score_fn):
        return lambda x, t: -sde.marginal_coefs(t)[1] * score_fn(x, t)

    def sample_point(score_for, key, label, guidance):
        """(sample, CFG norm along its own DDIM trajectory) for one key and class.

        The norm ‖ε_c − ε_∅‖ = σ‖s_c − s_∅‖ of each step comes from the two evaluations that drive
        that step (``ddim(has_aux=True)``): the same value as :func:`mmh_jax.lid.cfg_norm` on the
        trajectory's states (tested), at half the network evaluations.
        """
        classes = with_null_class(label, null_class)

        def eps(x, t):  # both classes in one (vmapped) network call: one copy of the network to compile
            c, u = jax.vmap(lambda k: eps_of(score_for(k))(x, t))(classes)
            return u + guidance * (c - u), jnp.sqrt(jnp.sum((c - u).astype(jnp.float32) ** 2))

        x, norms = sample.ddim(eps, key, shape, sde=sde, num_steps=num_steps, has_aux=True)
        return x, jnp.mean(norms)

    def flipd_point(score_for, x, label, t0):
        """(FLIPD with class ``label``, FLIPD unconditional) at x, exact trace.

        One FLIPD mapped over the two classes (the null class is the unconditional model): the same
        values as two calls, with one copy of the traced network to compile instead of two.
        """
        classes = with_null_class(label, null_class)
        f = jax.vmap(lambda c: lid.flipd(score_for(c), x, t0=t0, sde=sde, trace="exact"))(classes)
        return f[0], f[1]

    return sample_point, flipd_point


def _guidance(cfg) -> float:
    return float(cfg.guidance_scale) if cfg.guidance_scale > 0 else float(cfg.cfg_guidance)


def _balanced_labels(n: int, num_classes: int, seed: int) -> np.ndarray:
    """``n`` class labels, each class ⌊n/C⌋ or ⌈n/C⌉ times, in a seeded random order."""
    rng = np.random.default_rng([seed, 3])
    return rng.permutation(np.arange(n) % num_classes).astype(np.int32)


def run(config, ctx: Context) -> dict[str, Any]:
    """Sample with CFG, score (CFG norm, FLIPD with and without the class), compare as detectors.

    Writes ``conditional_scores.png`` and ``conditional.npz`` (samples, labels, per-sample keys as
    ``key_data``, the three scores, calibrated ℓ2, memorized, nearest training index) and returns
    the metrics (see the module docstring; AUROC/TPR are NaN when no sample, or every sample, is
    memorized).
    """
    import jax

    cfg = config.images
    setup = digits_setup(cfg, ctx)
    model = setup.model
    if not model.num_classes:
        raise ValueError("conditional needs a class-conditional model; digits_setup returned an unconditional one.")
    n, guidance = int(cfg.n_samples), _guidance(cfg)
    sde = model.sde
    sample_point, flipd_point = _point_fns(float(sde.beta_min), float(sde.beta_max), float(sde.T),
                                           tuple(model.event_shape), int(cfg.sample_steps), int(model.num_classes))

    labels = _balanced_labels(n, model.num_classes, ctx.seed)
    keys = jax.random.split(jax.random.key(ctx.seed + 3), n)
    ctx.log(f"[conditional] {n} CFG samples (w={guidance:g}, {cfg.sample_steps} DDIM steps) with their CFG norms")
    with ctx.timed("conditional_sample"):
        samples, cfg_norm = map_model(model, sample_point, keys, labels, np.full(n, guidance, np.float32),
                                      batch_size=cfg.batch)
    samples, cfg_norm = np.asarray(samples, np.float32), np.asarray(cfg_norm, np.float32)
    ctx.log(f"[conditional] FLIPD(x | c) and FLIPD(x) at t0={cfg.t0:g}, exact trace")
    with ctx.timed("conditional_lid"):
        flipd_c, flipd_u = map_model(model, flipd_point, samples, labels, np.full(n, cfg.t0, np.float32),
                                     batch_size=cfg.batch)
    scores = {"cfg_norm": cfg_norm, "flipd_conditional": np.asarray(flipd_c, np.float32),
              "flipd_unconditional": np.asarray(flipd_u, np.float32)}
    calib, mem, nearest = memorization_labels(samples, setup, cfg)
    mem = np.asarray(mem, bool)

    metrics: dict[str, Any] = {"n_samples": n, "guidance": guidance, "t0": float(cfg.t0),
                               **_score_metrics(scores, mem), "config": dataclasses.asdict(cfg)}

    np.savez(ctx.path("conditional.npz"), samples=samples, labels=labels,
             key_data=np.asarray(jax.random.key_data(keys)), memorized=mem, calibrated_l2=np.asarray(calib),
             nearest=np.asarray(nearest), **scores)
    _figure(ctx.path("conditional_scores.png"), scores, mem, metrics)
    metrics["figures"] = ["conditional_scores.png"]
    metrics["reading"] = _reading(metrics)
    return metrics


def _score_metrics(scores: dict[str, np.ndarray], mem: np.ndarray) -> dict[str, Any]:
    """Detection metrics of each score, its means over memorized / not, and FLIPD(x | c) ≤ FLIPD(x).

    Non-finite scores are left out of that score's statistics (and of the comparison); their count
    is ``n_nonfinite_<score>``.
    """
    from mmh_jax import memorization

    mem = np.asarray(mem, bool)
    out: dict[str, Any] = {"n_memorized": int(mem.sum()), "memorized_fraction": float(mem.mean())}
    for name, sign in SCORES.items():
        s = np.asarray(scores[name])
        ok = np.isfinite(s)
        out[f"n_nonfinite_{name}"] = int((~ok).sum())
        det = memorization.detection_metrics(sign * s[ok], mem[ok])
        out[f"auroc_{name}"] = float(det["auroc"])
        out[f"tpr_at_1fpr_{name}"] = float(det["tpr_at_1fpr"])
        for tag, sel in (("memorized", mem), ("not_memorized", ~mem)):
            sel = sel & ok
            out[f"mean_{name}_{tag}"] = float(np.mean(s[sel])) if sel.any() else float("nan")
    fc, fu = np.asarray(scores["flipd_conditional"]), np.asarray(scores["flipd_unconditional"])
    both = np.isfinite(fc) & np.isfinite(fu)
    out["fraction_cond_le_uncond"] = float(np.mean(fc[both] <= fu[both])) if both.any() else float("nan")
    out["mean_flipd_gap"] = float(np.mean(fu[both] - fc[both])) if both.any() else float("nan")
    return out


def _fmt(v: float) -> str:
    return "n/a" if v != v else f"{v:.2f}"


def _pct(v: float) -> str:
    return "n/a" if v != v else f"{100 * v:.0f}%"


def _reading(m: dict[str, Any]) -> str:
    n, k = m["n_samples"], m["n_memorized"]
    frac = m["fraction_cond_le_uncond"]
    lines = [
        f"FLIPD(x | c) ≤ FLIPD(x) (t0={m['t0']:g}) at {_pct(frac)} of {n} CFG samples (w={m['guidance']:g}); "
        f"mean FLIPD(x) − FLIPD(x | c) = {_fmt(m['mean_flipd_gap'])}.",
        ("Conditioning lowers LID_θ for most points, as the MMH predicts" if frac > 0.5 else
         "Conditioning does NOT lower LID_θ for most points here, against the MMH's prediction")
        + (" (though by less than 0.1 dimension on average)." if abs(m["mean_flipd_gap"]) < 0.1 else "."),
    ]
    if k == 0 or k == n:
        lines.append(f"{'No' if k == 0 else 'Every'} sample is memorized (calibrated ℓ2 < threshold), so AUROC and "
                     "TPR@1%FPR are undefined (NaN) and the detectors cannot be compared in this run.")
        return " ".join(lines)
    aurocs = {name: m[f"auroc_{name}"] for name in SCORES}
    best = max(aurocs, key=lambda a: -np.inf if aurocs[a] != aurocs[a] else aurocs[a])
    pretty = {"cfg_norm": "CFG norm", "flipd_conditional": "−FLIPD(x | c)", "flipd_unconditional": "−FLIPD(x)"}
    lines.append(
        f"{k} of {n} samples ({_pct(m['memorized_fraction'])}) are memorized. AUROC: "
        + ", ".join(f"{pretty[a]} {_fmt(v)}" for a, v in aurocs.items())
        + "; TPR@1%FPR: " + ", ".join(f"{pretty[a]} {_fmt(m[f'tpr_at_1fpr_{a}'])}" for a in SCORES)
        + f". Best detector: {pretty[best]}"
        + (" (within 0.01 AUROC of another)." if sum(abs(v - aurocs[best]) <= 0.01 for v in aurocs.values()) > 1
           else ".")
    )
    lines.append(
        f"Mean CFG norm memorized {_fmt(m['mean_cfg_norm_memorized'])} vs not "
        f"{_fmt(m['mean_cfg_norm_not_memorized'])}; "
        f"mean FLIPD(x | c) {_fmt(m['mean_flipd_conditional_memorized'])} vs "
        f"{_fmt(m['mean_flipd_conditional_not_memorized'])}."
    )
    if min(aurocs.values()) <= 0.5:
        weak = [pretty[a] for a, v in aurocs.items() if v <= 0.5]
        lines.append(f"Not every detector beats chance ({', '.join(weak)} at or below AUROC 0.5)"
                     + (f"; with only {k} memorized samples the AUROCs are noisy." if k < 10 else "."))
    return " ".join(lines)


def _figure(path, scores, mem, m) -> None:
    from mmh_jax._plotting import pyplot

    plt = pyplot()
    from sklearn.metrics import roc_curve

    fc, fu = scores["flipd_conditional"], scores["flipd_unconditional"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10.0, 4.4))
    ok = np.isfinite(fc) & np.isfinite(fu)
    for sel, color, name in ((~mem & ok, "tab:blue", "not memorized"), (mem & ok, "tab:red", "memorized")):
        if sel.any():
            ax1.scatter(fu[sel], fc[sel], s=10, c=color, alpha=0.7, label=f"{name} ({int(sel.sum())})")
    if ok.any():
        lo, hi = float(min(fc[ok].min(), fu[ok].min())), float(max(fc[ok].max(), fu[ok].max()))
        ax1.plot([lo, hi], [lo, hi], "k--", lw=0.8, label="y = x")
    ax1.set_xlabel("FLIPD(x)  (unconditional)")
    ax1.set_ylabel("FLIPD(x | c)  (conditional)")
    ax1.set_title(f"LID_θ(x|c) ≤ LID_θ(x) at {_pct(m['fraction_cond_le_uncond'])} of samples", fontsize=9)
    ax1.legend(fontsize=7)

    if 0 < m["n_memorized"] < m["n_samples"]:
        for name, sign in SCORES.items():
            s = scores[name]
            keep = np.isfinite(s)
            if mem[keep].any() and (~mem[keep]).any():
                fpr, tpr, _ = roc_curve(mem[keep], sign * s[keep], drop_intermediate=False)
                label = f"{'−' if sign < 0 else '+'}{name} (AUROC {_fmt(m[f'auroc_{name}'])})"
                ax2.plot(fpr, tpr, lw=1.2, label=label)
        ax2.legend(fontsize=7, loc="lower right")
    else:
        ax2.text(0.5, 0.5, "no memorized samples:\nROC undefined" if m["n_memorized"] == 0 else
                 "every sample memorized:\nROC undefined", ha="center", va="center", fontsize=9)
    ax2.plot([0, 1], [0, 1], ":", c="grey", lw=0.8)
    ax2.set_xlabel("false positive rate")
    ax2.set_ylabel("true positive rate")
    ax2.set_title(f"Memorization detectors ({m['n_memorized']}/{m['n_samples']} memorized)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
