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
# and 8×8 digits with duplicated images, then read their outputs (`metrics.json`, `*.npz`) and
# plot them. `MMH_NOTEBOOK_SMALL=1` uses the `quick` preset (seconds of training, numbers are
# noisy, and a run may have no memorized sample at all); otherwise the `default` preset (several
# minutes on a CPU; the paper's findings). Outputs go to `MMH_NOTEBOOK_OUT` (default: a new
# temporary directory).

# %%
import json
import os
import tempfile

SMALL = os.environ.get("MMH_NOTEBOOK_SMALL", "0") == "1"

import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import roc_curve

from mmh_jax import memorization
from mmh_jax.experiments.pipeline import config as pipeline_config
from mmh_jax.experiments.pipeline import run as pipeline_run
from mmh_jax.experiments.pipeline.common import Context, digits_setup

config = pipeline_config.preset("quick" if SMALL else "default", experiments=("toy", "images"), seed=0)
out = os.environ.get("MMH_NOTEBOOK_OUT") or tempfile.mkdtemp(prefix="mmh_nb02_")
print("preset:", "quick" if SMALL else "default", "| output directory:", out)

# %% [markdown]
# One call runs both experiments (the same as `mmh-jax run toy images --out OUT`): it trains the
# models (cached in `OUT/models`, so rerunning this cell does not train again), samples them,
# estimates LID_θ at every sample and writes the report.

# %%
metrics = pipeline_run.run(config, out, progress=False)

# %% [markdown]
# ## The 2-D toy: OD-Mem vs DD-Mem
#
# Training data (`mmh_jax.data.synthetic.von_mises_point_mass`): a few points on a unit circle,
# denser on one side (von Mises angles, LID\* = 1), plus a point mass (LID\* = 0) repeated many
# times. A diffusion MLP trained on them generates samples; FLIPD at each sample gives LID_θ, and
# the ground truth of the nearest piece gives LID\*. `memorization.classify` then labels each sample
#
# - *DD-Mem* where LID\* ≤ 0.5 (the atom),
# - *OD-Mem* where LID_θ < LID\* − 0.5 (a piece of the circle collapsed onto a training point),
# - *generalized* otherwise.

# %%
toy = np.load(os.path.join(out, "toy.npz"))
names = memorization.CLASSES
fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
ax = axes[0]
sc = ax.scatter(toy["samples"][:, 0], toy["samples"][:, 1], c=np.clip(toy["lid_theta"], -0.25, 1.75), s=9,
                cmap="viridis", vmin=-0.25, vmax=1.75)
ax.scatter(toy["train"][:, 0], toy["train"][:, 1], marker="x", c="k", s=22, lw=0.8, label="training points")
for code, color in ((1, "tab:red"), (2, "tab:orange")):
    sel = toy["mmh_class"] == code
    ax.scatter(toy["samples"][sel, 0], toy["samples"][sel, 1], facecolors="none", edgecolors=color, s=60,
               label=f"{names[code]} ({int(sel.sum())})")
fig.colorbar(sc, ax=ax, label="LID_θ (FLIPD)")
ax.set_aspect("equal")
ax.legend(fontsize=7)
ax.set_title("samples coloured by LID_θ")
ax = axes[1]
for code, name in enumerate(names):
    sel = toy["mmh_class"] == code
    if sel.any():
        ax.hist(toy["lid_theta"][sel], bins=30, alpha=0.6, label=f"{name} ({int(sel.sum())})")
ax.set_xlabel("LID_θ (FLIPD)")
ax.legend()
ax.set_title("LID_θ per MMH class")
plt.tight_layout()
plt.show()
print(metrics["toy"]["reading"])

# %% [markdown]
# What to look for: samples at the atom have LID_θ ≈ 0 and LID\* = 0 (DD-Mem: the data demands
# it, no better model would avoid it). Samples along the dense side of the circle have LID_θ ≈ 1.
# OD-Mem samples, if the model overfit, sit on isolated training points of the sparse side with
# LID_θ well below 1. The reading above, written by the pipeline from the numbers, says which of
# these held in this run.
#
# ## Digits with duplicated training images
#
# 8×8 scikit-learn digits; a few training images are repeated many times (duplication makes
# LID\* = 0 at them). A class-conditional network is trained on the set and sampled without a
# class. A sample is *memorized* when its calibrated ℓ2 distance (Carlini et al. 2023) is small:
#
# $$\ell_2^{\mathrm{cal}}(x) = \frac{\|x - x_{(1)}\|}{\tfrac1n \sum_{i\le n} \|x - x_{(i)}\|} < \tfrac13,$$
#
# with x₍ᵢ₎ its i-th nearest distinct training image. The hypothesis predicts low LID_θ there.

# %%
img = np.load(os.path.join(out, "images.npz"))
m = metrics["images"]
print(f"{m['n_samples']} samples, {m['memorized_fraction']:.1%} memorized; "
      f"mean FLIPD memorized {m['mean_flipd']['memorized']:.1f} vs not {m['mean_flipd']['not_memorized']:.1f} "
      f"(D = {int(np.prod(img['samples'].shape[1:]))})")

# %% [markdown]
# ### Detection: ROC curves
#
# Score each sample by −LID_θ (FLIPD at a fixed t₀, at the knee of its curve, or the normal
# bundle) and ask how well it ranks memorized above non-memorized samples. The knee is computed on
# a subset (memorized samples first), so its curve uses that subset's labels. The AUROC of
# −FLIPD on *training* images, duplicated vs unique, tests DD-Mem directly.

# %%
mem = img["memorized"].astype(bool)
scores = {"−FLIPD (t₀ fixed)": (-img["flipd"], mem),
          "−FLIPD (knee)": (-img["knee_value"], mem[img["curve_index"]]),
          "−normal bundle": (-img["normal_bundle"], mem),
          "−FLIPD, duplicated vs unique training images": (-img["flipd_train"], img["duplicated"].astype(bool))}
fig, ax = plt.subplots(figsize=(5, 4.5))
for name, (s, y) in scores.items():
    if 0 < y.sum() < y.size:
        fpr, tpr, _ = roc_curve(y, s)
        auc = memorization.detection_metrics(s, y)["auroc"]
        ax.plot(fpr, tpr, label=f"{name}: AUROC {auc:.2f}")
    else:
        print(f"{name}: only one class present in this run ({int(y.sum())} positives of {y.size}); no ROC")
ax.plot([0, 1], [0, 1], "k:", lw=0.8)
ax.set_xlabel("false positive rate")
ax.set_ylabel("true positive rate")
ax.legend(fontsize=7, loc="lower right")
plt.show()

# %% [markdown]
# ### FLIPD curves of memorized and other samples

# %%
fig, ax = plt.subplots(figsize=(6, 3.5))
cm = mem[img["curve_index"]]
for curve, is_mem in zip(img["curves"], cm):
    ax.semilogx(img["t0s"], curve, color="tab:red" if is_mem else "tab:blue", alpha=0.4, lw=0.8)
ax.scatter(img["knee_t"], img["knee_value"], c=np.where(cm, "tab:red", "tab:blue"), s=10, zorder=3)
ax.set_xlabel("t₀")
ax.set_ylabel("FLIPD")
ax.set_title("red: memorized samples, blue: not; dots: knees")
plt.show()

# %% [markdown]
# ### Nearest-neighbour grid
#
# Each memorized sample (top) beside its nearest distinct training image (bottom), with FLIPD above.
# `digits_setup` rebuilds the same training set and reloads the cached model (no training).

# %%
setup = digits_setup(config.images, Context(out=out, progress=False, seed=config.seed))
order = np.argsort(img["calibrated_l2"])[:8]  # the 8 closest to a training image, memorized or not
fig, axes = plt.subplots(2, len(order), figsize=(1.3 * len(order), 3))
for j, i in enumerate(order):
    axes[0, j].imshow(img["samples"][i, ..., 0], cmap="gray_r")
    axes[0, j].set_title(f"{img['flipd'][i]:.0f}" + (" (mem)" if mem[i] else ""), fontsize=8)
    axes[1, j].imshow(setup.unique_x[img["nearest"][i], ..., 0], cmap="gray_r")
    axes[1, j].set_title("dup" if setup.duplicated[img["nearest"][i]] else "", fontsize=8)
for a in axes.ravel():
    a.axis("off")
fig.suptitle("samples nearest to a training image (top, FLIPD) and that image (bottom)", fontsize=9)
plt.show()

# %% [markdown]
# Memorized samples are copies of training images, mostly of the duplicated ones ("dup"): the
# DD-Mem case. The model-free LID\* (lPCA on the training set) at each sample separates the two
# kinds: a memorized sample with small LID\* is DD-Mem, one with LID\* well above its LID_θ is OD-Mem.

# %%
print("memorized samples classified:", m["counts"])
print("mean lPCA LID* at memorized / other samples:", {k: round(v, 2) for k, v in m["mean_lid_star"].items()})
print(m["reading"])

# %% [markdown]
# Everything shown is in `OUT/metrics.json` (with the seed, configuration and package versions) and
# `OUT/report.html`. The same run from a shell: `mmh-jax run toy images --out OUT`.

# %%
with open(os.path.join(out, "metrics.json")) as fh:
    saved = json.load(fh)
print(sorted(saved), "| seed", saved["seed"])
