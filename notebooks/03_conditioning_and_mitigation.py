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
# # 3. Conditioning and mitigation
#
# Two consequences of the manifold memorization hypothesis (Ross et al., arXiv 2411.00113, §3.3, §6):
#
# 1. **Conditioning never raises LID**: LID_θ(x | c) ≤ LID_θ(x). A specific condition (a prompt,
#    a class) can collapse the model's manifold onto a training point. The classifier-free-guidance
#    norm of Wen et al. (2024), ‖ε̂(x_t, t, c) − ε̂(x_t, t, ∅)‖, is large exactly when that happens,
#    which is why it detects memorization.
# 2. **Mitigation**: steer sampling towards higher LID_θ. Adding λ·∇ₓFLIPD to the score,
#
# $$\tilde s(x, t) = s(x, t) + \lambda\,\nabla_x F(x, t), \qquad F(x, t) = \mathrm{FLIPD}(x/\alpha(t), \max(t, t_0)),$$
#
#    pushes each sampling trajectory away from low-dimensional pieces of the model's manifold — at
#    some cost in fidelity when λ is large.
#
# We first see guidance at work with an exact score, then read the `conditional` and `mitigation`
# experiments of `mmh-jax run` on digits. `MMH_NOTEBOOK_SMALL=1` runs at smoke-test size.

# %%
import os
import tempfile

SMALL = os.environ.get("MMH_NOTEBOOK_SMALL", "0") == "1"

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from mmh_jax import lid, memorization, sample
from mmh_jax.data import gaussian
from mmh_jax.sde import VPSDE

vp = VPSDE()

# %% [markdown]
# ## LID guidance with an exact score
#
# A mixture in R³ (`mmh_jax.data.gaussian`, exact score) of a point mass (LID 0), a line (LID 1) and
# a plane (LID 2); plots show the first two coordinates. `sample.lid_guided_score_fn` wraps the score; `sample.euler_maruyama`
# draws one sample from it, so `jax.vmap` draws a batch and λ stays a traced argument: one compile
# serves the whole sweep.

# %%
gm = gaussian.random_gaussian_mixture(0, [0, 1, 2], 3, separation=4.0)
score_fn = gm.score_fn(vp)
n = 128 if SMALL else 1000
lambdas = [0.0, 0.1, 0.2, 0.3]


@jax.jit
def guided_samples(keys, lam):
    def one(k):
        k_probe, k_sample = jax.random.split(k)
        s = sample.lid_guided_score_fn(score_fn, k_probe, sde=vp, lam=lam, trace="exact")
        return sample.euler_maruyama(s, k_sample, (3,), sde=vp, num_steps=50 if SMALL else 200)

    return jax.vmap(one)(keys)


def off_support(x):
    """Distance of x to the nearest component's affine subspace (0 = on the data)."""
    r = x[None, :] - gm.means  # (J, D)
    proj = jnp.einsum("jdk,jd->jk", gm.bases, r)
    return jnp.min(jnp.linalg.norm(r - jnp.einsum("jdk,jk->jd", gm.bases, proj), axis=1))


keys = jax.random.split(jax.random.key(0), n)
results = {}
for lam in lambdas:
    xs = guided_samples(keys, lam)  # the same noise for every λ: only the guidance differs
    flipd = jax.vmap(lambda x: lid.flipd(score_fn, x, None, t0=0.05, sde=vp))(xs)
    results[lam] = (xs, flipd, jax.vmap(off_support)(xs))

fig, axes = plt.subplots(1, len(lambdas), figsize=(3.2 * len(lambdas), 3.2), sharex=True, sharey=True)
for ax, lam in zip(axes, lambdas):
    xs, flipd, _ = results[lam]
    ax.scatter(xs[:, 0], xs[:, 1], c=np.clip(flipd, 0, 3), cmap="viridis", s=5, vmin=0, vmax=3)
    ax.scatter(gm.means[0, 0], gm.means[0, 1], marker="x", c="r", s=40)
    ax.set_title(f"λ = {lam}")
    plt.suptitle("samples coloured by FLIPD (red x: the point mass)", fontsize=9)
plt.show()
print(f"{'λ':>5s} {'at the point mass':>18s} {'mean FLIPD':>11s} {'off the data (> 0.05)':>22s} {'mean distance':>14s}")
for lam, (xs, flipd, off) in results.items():
    atom = float(jnp.mean(jnp.linalg.norm(xs - gm.means[0], axis=1) < 0.05))
    print(f"{lam:5.2f} {atom:18.1%} {float(jnp.nanmean(flipd)):11.2f} {float(jnp.mean(off > 0.05)):22.1%} "
          f"{float(jnp.mean(off)):14.3f}")

# %% [markdown]
# Read the table from top to bottom. Guidance should lower the share of samples that land on the
# zero-dimensional point mass and raise their mean FLIPD (first two columns). The last two columns
# check what it costs in fidelity: whether guided samples end off the data. With an exact score the
# end of the reverse process pulls samples back onto the data, so that cost can stay small here; a
# trained model is less forgiving, and a λ well beyond this range can make trajectories diverge.
# λ has units (a score per dimension), so its useful range depends on the model; the pipeline below
# measures it relative to the score norm.
#
# ## Digits: CFG norm vs conditional LID
#
# The `conditional` experiment samples the class-conditional digits model with classifier-free
# guidance and scores each sample three ways: its CFG norm (averaged over its own sampling
# trajectory), FLIPD(x | c) and FLIPD(x). Labels come from calibrated ℓ2 (notebook 2).
# `mitigation` then samples with LID guidance at several relative λ, and also optimises the class
# embedding at a late sampling step to raise FLIPD (the second intervention of the paper).
#
# Both train (or reuse) the digits model of notebook 2: set `MMH_NOTEBOOK_OUT` to the same
# directory in both notebooks and this one skips training (models are cached in `OUT/models`).

# %%
from mmh_jax.experiments.pipeline import config as pipeline_config  # noqa: E402
from mmh_jax.experiments.pipeline import run as pipeline_run  # noqa: E402

config = pipeline_config.preset("quick" if SMALL else "default", experiments=("conditional", "mitigation"), seed=0)
out = os.environ.get("MMH_NOTEBOOK_OUT") or tempfile.mkdtemp(prefix="mmh_nb03_")
metrics = pipeline_run.run(config, out, progress=False)

# %%
cond = np.load(os.path.join(out, "conditional.npz"))
mem = cond["memorized"].astype(bool)
fc, fu, cn = cond["flipd_conditional"], cond["flipd_unconditional"], cond["cfg_norm"]
fig, axes = plt.subplots(1, 2, figsize=(10, 4))
ok = np.isfinite(fc) & np.isfinite(fu)
c = np.where(mem, "tab:red", "tab:blue")
axes[0].scatter(fu[ok], fc[ok], c=c[ok], s=10)
lo, hi = np.nanmin([fu[ok].min(), fc[ok].min()]), np.nanmax([fu[ok].max(), fc[ok].max()])
axes[0].plot([lo, hi], [lo, hi], "k:", lw=0.8)
axes[0].set_xlabel("FLIPD(x)  (unconditional)")
axes[0].set_ylabel("FLIPD(x | c)")
axes[0].set_title("below the diagonal: conditioning lowered LID_θ", fontsize=9)
axes[1].scatter(cn[ok], fc[ok], c=c[ok], s=10)
axes[1].set_xlabel("CFG norm ‖ε(x,c) − ε(x,∅)‖ (trajectory mean)")
axes[1].set_ylabel("FLIPD(x | c)")
axes[1].set_title("red: memorized samples", fontsize=9)
plt.tight_layout()
plt.show()
m = metrics["conditional"]
print(f"FLIPD(x|c) <= FLIPD(x) for {m['fraction_cond_le_uncond']:.0%} of samples; "
      f"{m['n_memorized']} of {m['n_samples']} memorized")
for s in ("cfg_norm", "flipd_conditional", "flipd_unconditional"):
    print(f"  AUROC of {'+' if s == 'cfg_norm' else '−'}{s}: {m[f'auroc_{s}']:.2f}")

# %% [markdown]
# The paper's claims here: most points lie below the diagonal, and memorized samples have a large
# CFG norm and a low FLIPD(x | c), so all three scores detect memorization (AUROC > ½; NaN when a
# run has no memorized sample, as small runs may). The pipeline's own reading:

# %%
print(m["reading"])

# %% [markdown]
# ## The mitigation trade-off
#
# For each relative λ (λ = 1: a guidance term as large as the score on average), the fraction of
# memorized samples and kNN precision/recall against held-out digits (precision: samples that look
# like real digits; recall: real digits covered by samples).

# %%
mit = metrics["mitigation"]
mnpz = np.load(os.path.join(out, "mitigation.npz"))
lams = mit["lambdas"]
fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
axes[0].plot(lams, mit["memorized_fraction"], "o-", label="memorized fraction")
axes[0].plot(lams, [q["precision"] for q in mit["quality"]], "s--", label="precision")
axes[0].plot(lams, [q["recall"] for q in mit["quality"]], "^--", label="recall")
axes[0].set_xlabel("relative λ")
axes[0].legend(fontsize=8)
axes[1].plot(lams, mit["mean_flipd"], "o-")
axes[1].set_xlabel("relative λ")
axes[1].set_ylabel("mean FLIPD of the samples")
plt.tight_layout()
plt.show()

k = min(8, mnpz["samples"].shape[1])
fig, axes = plt.subplots(len(lams), k, figsize=(1.1 * k, 1.2 * len(lams)))
axes = np.atleast_2d(axes)
for r, lam in enumerate(lams):
    for j in range(k):
        axes[r, j].imshow(mnpz["samples"][r, j, ..., 0], cmap="gray_r")
        axes[r, j].axis("off")
    axes[r, 0].set_title(f"λ={lam:g}", fontsize=7, loc="left")
plt.suptitle("the same prior noise sampled at each λ", fontsize=9)
plt.show()
e = mit["embedding"]
print(f"class-embedding optimisation: memorized {e['memorized_fraction_before']:.1%} -> "
      f"{e['memorized_fraction_after']:.1%}, FLIPD at t={e['late_t']:.2f}: "
      f"{e['flipd_late_before']:.1f} -> {e['flipd_late_after']:.1f}")
print(mit["reading"])

# %% [markdown]
# Each row starts from the same prior noise, so differences between rows are the guidance alone.
# The library pieces used here — `sample.lid_guided_score_fn` / `lid_guided_eps_fn` for sampling,
# `lid.cfg_norm` and `lid.flipd` for scoring, `memorization.calibrated_l2` for labels — are all
# single-example functions you can apply to your own model (`mmh_jax.load(run_dir).score_fn_for(c)`).
