# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 2. The geometry of memorization
#
# The manifold memorization hypothesis (Ross et al., ICLR 2025, arXiv 2411.00113): a generated
# sample x is memorized when the model's manifold has a small local intrinsic dimension there,
# LID_θ(x). Two kinds:
#
# - **OD-Mem** (overfitting-driven): LID_θ(x) < LID\*(x). The data manifold has more degrees of
#   freedom at x than the model kept; the model collapsed onto training points.
# - **DD-Mem** (data-driven): LID_θ(x) ≈ LID\*(x), both small. The data itself has few degrees of
#   freedom at x — a duplicated training image is a point (LID\* = 0).
#
# We run the first two experiments of `mmh-jax run` (`mmh_jax.experiments.pipeline`): a 2-D toy
# and 8×8 digits with duplicated and planted images, then read their outputs (`metrics.json`,
# `*.npz`) and plot them. `MMH_NOTEBOOK_SMALL=1` uses the `quick` preset: seconds of training, a
# model that has usually memorized nothing yet, and findings that are all or nearly all
# *inconclusive* — it checks that the notebook runs, not the hypothesis. Otherwise the `default` preset (several
# minutes on a CPU). Outputs go to `MMH_NOTEBOOK_OUT` (default: a new temporary directory).
#
# **How the experiments answer.** Each experiment states its claims as *findings*
# (`mmh_jax.verdicts.Finding`): a claim, the statistic that measures it (an AUROC, a fraction, a
# mean), the effect with a bootstrap 95 % interval, the threshold the claim must clear, the sizes of
# the groups, and one of three verdicts — **holds** (the whole interval clears the threshold),
# **does not hold** (the whole interval is on the other side) or **inconclusive** (the interval
# straddles it, or there are fewer than 10 positives: a verdict on three memorized samples would be
# an anecdote). The tables below print them as the run wrote them.

# %%
import json
import os
import tempfile

SMALL = os.environ.get("MMH_NOTEBOOK_SMALL", "0") == "1"

import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Markdown, display
from sklearn.metrics import roc_curve

from mmh_jax import memorization, verdicts
from mmh_jax.experiments.pipeline import config as pipeline_config
from mmh_jax.experiments.pipeline import images as images_exp
from mmh_jax.experiments.pipeline import run as pipeline_run
from mmh_jax.experiments.pipeline.common import Context, digits_setup
from mmh_jax.report import markdown_table

config = pipeline_config.preset("quick" if SMALL else "default", experiments=("toy", "images"), seed=0)
out = os.environ.get("MMH_NOTEBOOK_OUT") or tempfile.mkdtemp(prefix="mmh_nb02_")
print("preset:", config.preset, "| output directory:", out)


def show_findings(m):
    """The findings of one experiment as a table (claim, effect [95% CI], threshold, n, verdict, note)."""
    found = [verdicts.Finding.from_dict(d) for d in m["findings"]]
    rows = [{**f.row(), "note": f.note} for f in found]
    display(Markdown(markdown_table(rows, ["claim", "statistic", "effect [95% CI]", "needs", "n", "verdict", "note"])))


# %% [markdown]
# One call runs both experiments (the same as `mmh-jax run toy images --out OUT`): it trains the
# models (cached in `OUT/models`, so rerunning this cell does not train again), samples them,
# estimates LID_θ at every sample, states the findings and writes the report.

# %%
metrics = pipeline_run.run(config, out, progress=False)

# %% [markdown]
# ## The 2-D toy: OD-Mem vs DD-Mem
#
# Training data (`mmh_jax.data.synthetic.von_mises_point_mass`): a few points on a unit circle,
# denser on one side (von Mises angles, LID\* = 1), plus a point mass (LID\* = 0) repeated many
# times. A diffusion MLP trained on them generates samples; FLIPD at each sample gives LID_θ, and
# the ground truth of the nearest piece gives LID\*. `memorization.classify` labels each sample
#
# - *DD-Mem* where LID\* is small (the atom) and so is LID_θ,
# - *OD-Mem* where LID_θ < LID\* − gap (a piece of the circle collapsed onto a training point),
# - *generalized* otherwise.
#
# OD-Mem is *defined* by LID_θ, so "OD-Mem samples have low LID_θ" is true by construction and
# tests nothing. The toy's findings are therefore about groups defined *without* LID_θ, from the
# training set's geometry alone: *near-copies* (a sample much closer to a training point than
# training points are to each other) and *isolated* circle training points (red crosses: farther
# from their neighbours than the noise scale FLIPD reads at, so a model that overfits them is
# OD-Mem there).

# %%
toy = np.load(os.path.join(out, "toy.npz"))
names = memorization.CLASSES
fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
ax = axes[0]
sc = ax.scatter(toy["samples"][:, 0], toy["samples"][:, 1], c=np.clip(toy["lid_theta"], -0.25, 1.75), s=9,
                cmap="viridis", vmin=-0.25, vmax=1.75)
ax.scatter(toy["train"][:, 0], toy["train"][:, 1], marker="x", c="k", s=22, lw=0.8, label="training points")
if "isolated_train" in toy.files and len(toy["isolated_train"]):
    iso = toy["isolated_train"]
    ax.scatter(iso[:, 0], iso[:, 1], marker="x", c="tab:red", s=45, lw=1.4, label=f"isolated ({len(iso)})")
for code, color in ((1, "tab:red"), (2, "tab:orange")):
    sel = toy["mmh_class"] == code
    ax.scatter(toy["samples"][sel, 0], toy["samples"][sel, 1], facecolors="none", edgecolors=color, s=60,
               label=f"{names[code]} ({int(sel.sum())})")
fig.colorbar(sc, ax=ax, label="LID_θ (FLIPD)")
ax.set(xlim=(-1.6, 1.6), ylim=(-1.6, 1.6), aspect="equal")  # the data: unit circle and a point inside
outside = int(np.sum(np.abs(toy["samples"]).max(axis=1) > 1.6))
ax.legend(fontsize=7)
ax.set_title("samples coloured by LID_θ" + (f" ({outside} outside the view)" if outside else ""), fontsize=10)
ax = axes[1]
for code, name in enumerate(names):
    sel = toy["mmh_class"] == code
    if sel.any():
        ax.hist(np.clip(toy["lid_theta"][sel], -0.5, 2.5), bins=np.linspace(-0.5, 2.5, 31), alpha=0.6,
                label=f"{name} ({int(sel.sum())})")
ax.set_xlabel("LID_θ (FLIPD; clipped to [−0.5, 2.5])")
ax.legend()
ax.set_title("LID_θ per MMH class", fontsize=10)
plt.tight_layout()
plt.show()
show_findings(metrics["toy"])

# %% [markdown]
# What to look for: samples at the atom have LID_θ ≈ 0 (DD-Mem: the data demand it, no better
# model would avoid it); samples along the dense side of the circle have LID_θ ≈ 1. If the model
# overfit, near-copies of the isolated training points have LID_θ well below 1 (OD-Mem), and the
# AUROC finding says whether that separates them from circle samples that copy nothing. An
# *inconclusive* OD-Mem row usually means too few near-copies of isolated points were drawn, not
# that the hypothesis failed. The pipeline's reading, written from the numbers, adds LID_θ at each
# isolated training point beside the value of the perfect memorizer (CFDM) there:

# %%
print(metrics["toy"]["reading"])

# %% [markdown]
# ## Digits: duplicated images, planted images, per-image labels
#
# 8×8 scikit-learn digits train a class-conditional network with classifier-free guidance. The
# training set (`digits_setup`) is built so that both kinds of memorization have known cases:
#
# - a few images are **duplicated** many times (the data hold them as a point mass: LID\* = 0,
#   DD-Mem);
# - a few **unique** images are stored once but drawn as often as a duplicated one in training (the
#   npz's `repeats`): the model is made to overfit images that the data hold once (OD-Mem);
# - both carry a **label of their own** (labels ≥ 10, the analogue of a caption that names one
#   picture); every other image carries its digit class;
# - the digits never trained on are **held out**.
#
# The model is sampled three ways: unconditionally (null class), guided by a digit class, and
# guided by a per-image label (`guided.py`). A sample is *memorized* when its calibrated ℓ2
# distance (Carlini et al. 2023: α = ½, and n = 50 neighbours in the `default` preset) is small:
#
# $$\ell_2^{\mathrm{cal}}(x) = \frac{\|x - x_{(1)}\|}{\alpha\,\tfrac1n \sum_{i\le n} \|x - x_{(i)}\|} < \tau,$$
#
# with x₍ᵢ₎ its i-th nearest *distinct* training image. τ is not a fixed constant: it is set on the
# held-out digits so that almost none of them (real digits the model never saw) would be called
# memorized; the label line below states τ and the false-positive rate it gives, measured on
# held-out digits by cross-fitting.

# %%
img = np.load(os.path.join(out, "images.npz"))
m = metrics["images"]
print("label:", m["label_text"])
print(f"memorized: {m['n_memorized_unconditional']} of {m['n_unconditional']} unconditional samples, "
      f"{m['n_memorized_guided_digit']} of {m['n_guided_digit']} digit-guided, "
      f"{m['n_memorized_guided_own']} of {m['n_guided_own']} guided by a per-image label "
      f"(CFG scale w = {m['guidance']:g}; D = {m['dimension']})")

# %% [markdown]
# Unconditional and digit-guided samples of a model that generalizes are rarely copies, so the
# detection findings on them rest on a handful of positives and are usually *inconclusive*: with
# this design that is the expected answer, not a failure. The per-image labels are where copies and
# non-copies are both frequent, so that is where the detection claim gets tested.
#
# ## Detection: does low LID_θ flag the memorized samples?

# %%
show_findings(m)

# %% [markdown]
# Each row is one claim. The first rows score the per-image-label samples by −FLIPD(x | c) (the LID
# of the conditional model that drew them) and −FLIPD(x) (the unconditional model at the same
# points); "TPR at 1 % FPR" asks for a detector usable in practice, not just a ranking. The knee of
# the FLIPD curve and the normal bundle are read on a subset of those samples, half memorized. The
# duplicated-vs-unique row scores the *training images* themselves: DD-Mem predicts lower LID_θ at
# the duplicated ones. The last two rows are the planted cases (below).
#
# The ROC curves of the same scores (only where both classes are present):

# %%
mem_g, kind = img["guided_memorized"].astype(bool), img["guided_kind"]
own = kind == 1
curve_mem = mem_g[img["curve_index"]]
scores = {"−FLIPD(x | c), per-image labels": (-img["guided_flipd_conditional"][own], mem_g[own]),
          "−FLIPD(x), per-image labels": (-img["guided_flipd_unconditional"][own], mem_g[own]),
          "−FLIPD(knee), curve subset": (-img["knee_value"], curve_mem),
          "−normal bundle, curve subset": (-img["normal_bundle"], curve_mem),
          "−FLIPD(x), duplicated vs unique training images": (-img["flipd_train"], img["duplicated"].astype(bool))}
fig, ax = plt.subplots(figsize=(5.5, 4.5))
for name, (s, y) in scores.items():
    ok = np.isfinite(s)
    s, y = s[ok], y[ok]
    if 0 < y.sum() < y.size:
        fpr, tpr, _ = roc_curve(y, s)
        ax.plot(fpr, tpr, label=f"{name}: AUROC {verdicts.auroc(s[y], s[~y]):.2f} ({int(y.sum())} vs {int((~y).sum())})")
    else:
        print(f"{name}: {int(y.sum())} positives of {y.size}; no ROC")
ax.plot([0, 1], [0, 1], "k:", lw=0.8)
ax.set_xlabel("false positive rate")
ax.set_ylabel("true positive rate")
if ax.get_legend_handles_labels()[0]:
    ax.legend(fontsize=6, loc="lower right")
plt.show()

# %% [markdown]
# An AUROC is a point estimate: read it with the interval and n of its row in the table above.
#
# ### FLIPD curves of memorized and other samples
#
# FLIPD(x | c) over t₀ (exact trace) at the curve subset. The knee is where a curve flattens; a
# memorized sample's curve should sit lower at small t₀.

# %%
fig, ax = plt.subplots(figsize=(6, 3.5))
for curve, is_mem in zip(img["curves"], curve_mem):
    ax.semilogx(img["t0s"], curve, color="tab:red" if is_mem else "tab:blue", alpha=0.5, lw=0.8)
if len(curve_mem):
    ax.scatter(img["knee_t"], img["knee_value"], c=np.where(curve_mem, "tab:red", "tab:blue"), s=10, zorder=3)
ax.set_xlabel("t₀")
ax.set_ylabel("FLIPD(x | c)")
ax.set_title(f"red: memorized ({int(curve_mem.sum())}), blue: not ({int((~curve_mem).sum())}); dots: knees",
             fontsize=9)
plt.show()

# %% [markdown]
# ## OD-Mem vs DD-Mem
#
# Telling the two kinds apart needs LID\* on the same scale as LID_θ, which a model-free
# estimator does not give by itself:
#
# - LID\* of a sample is lPCA among the *distinct* training images (copies of one image cannot
#   fill a neighbourhood), and 0 at a copy of a duplicated image (a point mass, which lPCA on
#   distinct images cannot see);
# - lPCA counts eigenvalues while FLIPD reads a noised trace, so lPCA is mapped onto FLIPD's scale
#   by matching quantiles on half of the held-out real digits, where the model generalizes and
#   LID_θ should track LID\*; the same half sets the tolerances `gap` and `small`;
# - the other half of the held-out digits measures how often a real digit would be called OD (the
#   false OD rate printed below).
#
# A memorized sample is OD-Mem when LID_θ < LID\* − gap, DD-Mem when LID\* ≤ small and
# LID_θ ≤ small + gap, else *neither*. Whether this rule works is decided on the **planted cases**:
# memorized samples guided by the label of a planted *unique* image should come out OD-Mem, those
# of a *duplicated* image DD-Mem.

# %%
od = m["od_dd"]
if od is None:
    print("OD/DD not measured (no held-out images)")
else:
    rate = od["heldout_od_rate"]
    print(f"gap {od['gap']:.2f}, small {od['small']:.2f}; held-out real digits called OD: {rate['count']} of "
          f"{rate['of']} (Wilson 95 % [{rate['low']:.2f}, {rate['high']:.2f}])")
    rows = [{"planted as": {"od_mem": "unique image (expect OD-Mem)", "dd_mem": "duplicated image (expect DD-Mem)"}[t],
             **m["planted"][t]} for t in ("od_mem", "dd_mem")]
    display(Markdown(markdown_table(rows, ["planted as", *images_exp.PLANTED])))

# %% [markdown]
# Read the table by rows: a good rule puts the memorized samples of each row in its expected
# column. The `not_memorized` column counts samples of planted labels that are not copies: they
# are no memorization case and do not count for or against the rule (a small model, or the quick
# preset, may leave every planted sample there — then the planted findings are inconclusive).
#
# The scatter shows every sample at (LID\*, LID_θ): memorized ones in colour by their class,
# planted labels outlined, and the held-out real digits, which should lie near the diagonal.

# %%
mem_all = np.concatenate([img["memorized"], mem_g]).astype(bool)
planted = np.concatenate([np.full(len(img["memorized"]), ""), img["planted"]])
lid_t, lid_s, codes = img["lid_theta"], img["lid_star"], img["mmh_class"]
fig, ax = plt.subplots(figsize=(6, 5))
ax.scatter(lid_s[~mem_all], lid_t[~mem_all], s=8, c="0.75", label=f"not memorized ({int((~mem_all).sum())})")
if od is not None:  # held-out digits on the same scale (the quantile map of od_dd, at the run's seed)
    ho = images_exp.od_dd(img["flipd_heldout"], img["lpca_heldout"], np.zeros(len(img["lpca_heldout"]), bool),
                          np.zeros(len(img["lpca_heldout"]), bool), img["flipd_heldout"], img["lpca_heldout"],
                          seed=config.seed)["lid_star"]
    ax.scatter(ho, img["flipd_heldout"], s=10, marker="+", c="tab:green", label=f"held-out real digits ({len(ho)})")
for code, color, name in ((1, "tab:red", "OD-Mem"), (2, "tab:orange", "DD-Mem"), (0, "k", "neither")):
    sel = mem_all & (codes == code)
    if sel.any():
        ax.scatter(lid_s[sel], lid_t[sel], s=16, c=color, label=f"memorized, {name} ({int(sel.sum())})")
for truth, marker, color in (("od_mem", "^", "tab:red"), ("dd_mem", "s", "tab:orange")):
    sel = planted == truth
    if sel.any():
        ax.scatter(lid_s[sel], lid_t[sel], s=40, marker=marker, facecolors="none", edgecolors=color,
                   label=f"planted {'unique' if truth == 'od_mem' else 'duplicated'} ({int(sel.sum())})")
finite = np.isfinite(lid_s) & np.isfinite(lid_t)
if od is not None and finite.any():
    xs = np.linspace(0, float(np.max(lid_s[finite])), 50)
    ax.plot(xs, xs, "k:", lw=0.8, label="LID_θ = LID*")
    ax.plot(xs, xs - od["gap"], "k--", lw=0.8, label="LID_θ = LID* − gap (below: OD)")
top = 1.5 * float(np.max(np.abs(np.concatenate([lid_s[finite], img["flipd_heldout"], [1.0]]))))
above = int(np.sum(lid_t > top))  # far off the data (FLIPD > D): outside the view, counted in the title
vals = np.concatenate([lid_t[finite], img["flipd_heldout"], [0.0]])
lo, hi = min(0.0, float(vals.min())), min(top, float(vals.max()))
ax.set_ylim(lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo))
ax.set_xlabel("LID* (lPCA on FLIPD's scale; 0 at copies of duplicated images)")
ax.set_ylabel("LID_θ (FLIPD of the sampling model)")
ax.set_title("OD-Mem vs DD-Mem" + (f" ({above} samples above the view)" if above else ""), fontsize=9)
ax.legend(fontsize=6)
plt.show()

# %% [markdown]
# What the experiment can show: whether the rule recovers planted cases whose kind is known by
# construction, and how often it would misfire on real digits. What it cannot: LID\* of a digit is
# an estimate (lPCA on a few hundred images, then a quantile map), so "neither" and borderline
# cases are expected, and the split of the *unplanted* memorized samples (in the reading below) is
# only as good as the planted rows say.
#
# ### Nearest-neighbour grid
#
# The samples closest to a training image (smallest calibrated ℓ2, any kind of sample; "mem" when
# below τ) beside that image, with LID_θ above. `digits_setup` rebuilds the same training set and
# reloads the cached model (no training).

# %%
setup = digits_setup(config.images, Context(out=out, progress=False, seed=config.seed))
xs = np.concatenate([img["samples"], img["guided_samples"]])
calib = np.concatenate([img["calibrated_l2"], img["guided_calibrated_l2"]])
nearest = np.concatenate([img["nearest"], img["guided_nearest"]])
order = np.argsort(calib)[:8]
fig, axes = plt.subplots(2, len(order), figsize=(1.3 * len(order), 3), squeeze=False)
for j, i in enumerate(order):
    axes[0, j].imshow(xs[i, ..., 0], cmap="gray_r")
    axes[0, j].set_title(f"{lid_t[i]:.0f}" + (" mem" if mem_all[i] else ""), fontsize=8)
    axes[1, j].imshow(setup.unique_x[nearest[i], ..., 0], cmap="gray_r")
    tag = "dup" if setup.duplicated[nearest[i]] else "planted" if setup.own_label[nearest[i]] else ""
    axes[1, j].set_title(tag, fontsize=8)
for a in axes.ravel():
    a.axis("off")
fig.suptitle("samples nearest a training image (top, LID_θ) and that image (bottom)", fontsize=9)
plt.show()

# %% [markdown]
# Memorized samples should be copies of the duplicated ("dup") or planted images, not of ordinary
# ones. The pipeline's reading of the whole experiment, with every number from this run:

# %%
print(m["reading"])

# %% [markdown]
# Everything shown is in `OUT/metrics.json` (with the seed, configuration and package versions) and
# `OUT/report.html`. The same run from a shell: `mmh-jax run toy images --out OUT`.

# %%
with open(os.path.join(out, "metrics.json")) as fh:
    saved = json.load(fh)
print(sorted(saved), "| seed", saved["seed"], "| smoke run:", saved.get("smoke_run", False))
