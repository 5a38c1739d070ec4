"""Experiment ``conditional``: can the CFG norm of Wen et al. detect memorization, and does conditioning lower LID_θ?

Wen et al. (ICLR 2024) detect memorized *prompts* by the classifier-free-guidance norm
‖ε̂(x_t, t, c) − ε̂(x_t, t, ∅)‖: a prompt that pins down one training image pulls the conditional
prediction far from the unconditional one. Ross et al. (arXiv 2411.00113, §3.3) explain it through
LID: conditioning never raises the model's LID, LID_θ(x | c) ≤ LID_θ(x), and such a prompt
collapses it. Ten digit classes cannot test that claim: a digit label covers ~30 distinct training
images, none of which it pins down, so a memorized sample there is not caused by its label. The
digits model of `common.digits_setup` therefore also gives some images a *label of their
own* (the analogue of a caption naming one picture). On the guided samples of `guided`
(digit classes and per-image labels, CFG scale w):

1. detectors of the memorized samples (calibrated ℓ2 with the held-out-calibrated threshold,
   `common.label_calibration`) among all guided samples: +CFG norm (Wen et al.: mean over the
   sample's own DDIM trajectory), −FLIPD(x | c) and −FLIPD(x) (exact trace, ``t0``);
2. the same with the per-image labels alone, and with the digit classes alone — the negative
   control, which is expected to be near chance for the CFG norm for the reason above;
3. the fraction of samples with FLIPD(x | c) ≤ FLIPD(x).

Each is a finding with n, a bootstrap 95 % interval and a verdict ([`mmh_jax.verdicts`][mmh_jax.verdicts]).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from mmh_jax import verdicts as V
from mmh_jax.experiments.pipeline.common import Context, digits_setup, label_calibration, memorization_labels
from mmh_jax.experiments.pipeline.guided import KINDS, guided_samples

__all__ = ["SCORES", "findings", "plot_scores", "run"]

#: The scores compared, each with the sign that makes "higher = more likely memorized".
SCORES = {"cfg_norm": 1.0, "flipd_conditional": -1.0, "flipd_unconditional": -1.0}
_PRETTY = {"cfg_norm": "+CFG norm", "flipd_conditional": "−FLIPD(x | c)", "flipd_unconditional": "−FLIPD(x)"}
_SETS = {"all": "all guided samples", "own": "per-image labels", "digit": "digit classes (control)"}


def findings(scores: dict[str, np.ndarray], mem: np.ndarray, kind: np.ndarray, seed: int = 0) -> list:
    """The findings ([`mmh_jax.verdicts.Finding`][mmh_jax.verdicts.Finding]) from per-sample scores, labels
    and kinds (index into `KINDS`); pure, for tests."""
    mem, kind = np.asarray(mem, bool), np.asarray(kind)
    out = []
    for subset, sel in (("all", np.ones(mem.size, bool)), ("own", kind == 1), ("digit", kind == 0)):
        names = SCORES if subset == "all" else ("cfg_norm",)
        for name in names:
            s = SCORES[name] * np.asarray(scores[name], np.float64)
            ok = sel & np.isfinite(s)
            note = ("a digit label covers ~30 training images and pins down none: this set cannot test Wen et "
                    "al.'s claim" if subset == "digit" else "")
            out.append(V.finding(f"{_PRETTY[name]} flags memorized samples ({_SETS[subset]})", f"AUROC of {_PRETTY[name]}",
                                 V.auroc, s[ok & mem], s[ok & ~mem], threshold=0.5, seed=seed, note=note))
    fc, fu = np.asarray(scores["flipd_conditional"]), np.asarray(scores["flipd_unconditional"])
    ok = np.isfinite(fc) & np.isfinite(fu)
    le = (fc[ok] <= fu[ok]).astype(np.float64)
    out.append(V.finding("conditioning lowers LID_θ: FLIPD(x | c) ≤ FLIPD(x)", "fraction of samples", np.mean, le,
                         threshold=0.5, seed=seed))
    return out


def run(config, ctx: Context) -> dict[str, Any]:
    """Score the guided samples, compare detectors; write ``conditional_scores.png`` and ``conditional.npz``."""
    cfg = config.images
    setup = digits_setup(cfg, ctx)
    cal = label_calibration(setup, cfg, ctx)
    g = guided_samples(setup, cfg, ctx)
    calib, mem, nearest = memorization_labels(g["samples"], setup, cfg, cal.threshold)
    mem = np.asarray(mem, bool)
    scores = {name: np.asarray(g[name], np.float32) for name in SCORES}
    found = findings(scores, mem, g["kind"], ctx.seed)
    kind = g["kind"]
    metrics: dict[str, Any] = {
        "label": dataclasses.asdict(cal), "label_text": cal.text(), "guidance": float(g["guidance"]),
        "t0": float(cfg.t0), "n_samples": int(mem.size),
        "n": {k: int((kind == i).sum()) for i, k in enumerate(KINDS)},
        "n_memorized": {k: int((mem & (kind == i)).sum()) for i, k in enumerate(KINDS)},
        "mean": {name: {k: {"memorized": _mean(scores[name], mem & (kind == i)),
                            "not_memorized": _mean(scores[name], ~mem & (kind == i))}
                        for i, k in enumerate(KINDS)} for name in SCORES},
        "findings": [f.asdict() for f in found],
        "config": dataclasses.asdict(cfg),
    }
    np.savez(ctx.path("conditional.npz"), samples=g["samples"], labels=g["labels"], kind=kind,
             key_data=g["key_data"], memorized=mem, calibrated_l2=np.asarray(calib), nearest=np.asarray(nearest),
             **scores)
    plot_scores(ctx.path("conditional_scores.png"), scores, mem, kind)
    metrics["figures"] = ["conditional_scores.png"]
    metrics["reading"] = _reading(metrics, found)
    return metrics


def _mean(a: np.ndarray, sel: np.ndarray) -> float:
    sel = sel & np.isfinite(a)
    return float(np.mean(a[sel])) if sel.any() else float("nan")


def _reading(m: dict[str, Any], found: list) -> str:
    n, k = m["n"], m["n_memorized"]
    lines = [f"Label: {m['label_text']}.",
             f"Guided samples (w = {m['guidance']:g}): {k['own']} of {n['own']} guided by a per-image label and "
             f"{k['digit']} of {n['digit']} guided by a digit class are memorized."]
    lines += [f.text() for f in found]
    mc = m["mean"]["cfg_norm"]
    lines.append(f"Mean CFG norm, per-image labels: memorized {_fmt(mc['own']['memorized'])} vs not "
                 f"{_fmt(mc['own']['not_memorized'])}; digit classes: memorized {_fmt(mc['digit']['memorized'])} vs "
                 f"not {_fmt(mc['digit']['not_memorized'])}.")
    return " ".join(lines)


def _fmt(v: float) -> str:
    return "n/a" if v != v else f"{v:.2f}"


def plot_scores(path, scores, mem, kind) -> None:
    """Write the figure at ``path``: conditional vs unconditional FLIPD, and the CFG norm, of the
    ``scores`` (arrays by `SCORES` name) by the sample's ``kind`` (index into `KINDS`), memorized
    samples (``mem``) in red."""
    from mmh_jax._plotting import pyplot

    plt = pyplot()
    fc, fu, cn = scores["flipd_conditional"], scores["flipd_unconditional"], scores["cfg_norm"]
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
    ax1.set_title("Conditioning and LID_θ at guided samples", fontsize=9)
    ax1.legend(fontsize=7)
    for i, name in enumerate(KINDS):
        for sel, color, tag in ((~mem, "tab:blue", "not memorized"), (mem, "tab:red", "memorized")):
            s = (kind == i) & sel & np.isfinite(cn)
            if s.any():
                ax2.scatter(np.full(s.sum(), i) + np.random.default_rng(i).uniform(-0.25, 0.25, s.sum()), cn[s], s=8,
                            c=color, alpha=0.6, label=tag if i == 0 else None)
    ax2.set_xticks(range(len(KINDS)), ["digit class (control)", "per-image label"])
    ax2.set_ylabel("CFG norm (mean over the DDIM trajectory)")
    ax2.set_title("Wen et al.'s CFG norm by kind of label", fontsize=9)
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
