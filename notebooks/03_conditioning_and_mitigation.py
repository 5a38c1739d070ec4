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
# Two consequences of the manifold memorization hypothesis (Ross et al., arXiv 2411.00113, §3.3, §5):
#
# 1. **Conditioning never raises LID**: LID_θ(x | c) ≤ LID_θ(x). A condition that pins down one
#    training image (a prompt naming a picture) can collapse the model's manifold onto it. The
#    classifier-free-guidance norm of Wen et al. (2024), ‖ε̂(x_t, t, c) − ε̂(x_t, t, ∅)‖, is large
#    exactly when that happens, which is why it detects memorized prompts.
# 2. **Mitigation**: steer sampling towards higher LID_θ. Adding λ·∇ₓFLIPD to the score,
#
# $$\tilde s(x, t) = s(x, t) + \lambda\,\nabla_x F(x, t), \qquad F(x, t) = \mathrm{FLIPD}(x/\alpha(t), \max(t, t_0)),$$
#
#    pushes each sampling trajectory away from low-dimensional pieces of the model's manifold — at
#    some cost in fidelity when λ is large.
#
# We first see guidance at work with an exact score, then read the `conditional` and `mitigation`
# experiments of `mmh-jax run` on digits. Each states its claims as findings with a bootstrap 95 %
# interval, n and a verdict — *holds*, *does not hold* or *inconclusive* (fewer than 10 positives
# is always inconclusive; notebook 2 explains the rule). `MMH_NOTEBOOK_SMALL=1` runs the `quick`
# preset: a model trained for seconds that has usually memorized nothing yet, so its findings are
# inconclusive and its plots nearly empty of memorized samples — it checks that the notebook runs.

# %%
import os
import tempfile

SMALL = os.environ.get("MMH_NOTEBOOK_SMALL", "0") == "1"

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from mmh_jax import lid, sample
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
# ## Digits: can the CFG norm detect memorization?
#
# Ten digit classes cannot test Wen et al.'s claim: a digit label covers dozens of distinct
# training images and pins down none, so a memorized digit-guided sample is not *caused* by its
# label. The digits model of notebook 2 therefore also gives some training images a **label of
# their own** (labels ≥ 10): the duplicated images and a few planted unique ones that training
# oversamples — the analogue of a caption that names one picture. The `conditional` experiment
# samples with classifier-free guidance (deterministic DDIM, scale w) by both kinds of label and
# scores each sample three ways: its CFG norm (Wen et al.: the mean of ‖ε_c − ε_∅‖ over its own
# sampling trajectory), FLIPD(x | c) and FLIPD(x) (exact trace, at t₀). Memorized: calibrated ℓ2
# (α = ½) below the threshold set on held-out digits, as in notebook 2.
#
# - The **per-image labels** are the test: there copies and non-copies are both frequent.
# - The **digit classes** are a negative control: the CFG norm is expected near chance there, and
#   a verdict on them says nothing about Wen et al.
#
# Both experiments train (or reuse) the digits model of notebook 2: set `MMH_NOTEBOOK_OUT` to the
# same directory in both notebooks and this one skips training (models are cached in `OUT/models`).

# %%
from IPython.display import Markdown, display  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from mmh_jax import verdicts  # noqa: E402
from mmh_jax.experiments.pipeline import config as pipeline_config  # noqa: E402
from mmh_jax.experiments.pipeline import run as pipeline_run  # noqa: E402
from mmh_jax.report import markdown_table  # noqa: E402

config = pipeline_config.preset("quick" if SMALL else "default", experiments=("conditional", "mitigation"), seed=0)
out = os.environ.get("MMH_NOTEBOOK_OUT") or tempfile.mkdtemp(prefix="mmh_nb03_")
print("preset:", config.preset, "| output directory:", out)
metrics = pipeline_run.run(config, out, progress=False)


def show_findings(m):
    """The findings of one experiment as a table (claim, effect [95% CI], threshold, n, verdict, note)."""
    found = [verdicts.Finding.from_dict(d) for d in m["findings"]]
    rows = [{**f.row(), "note": f.note} for f in found]
    display(Markdown(markdown_table(rows, ["claim", "statistic", "effect [95% CI]", "needs", "n", "verdict", "note"])))


# %%
m = metrics["conditional"]
cond = np.load(os.path.join(out, "conditional.npz"))
mem, kind = cond["memorized"].astype(bool), cond["kind"]
fc, fu, cn = cond["flipd_conditional"], cond["flipd_unconditional"], cond["cfg_norm"]
print("label:", m["label_text"])
print(f"w = {m['guidance']:g}; memorized: {m['n_memorized']['own']} of {m['n']['own']} per-image-label samples, "
      f"{m['n_memorized']['digit']} of {m['n']['digit']} digit-guided")
fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
ok = np.isfinite(fc) & np.isfinite(fu)
for k, marker, name in ((0, "o", "digit class"), (1, "^", "per-image label")):
    for sel, color, tag in ((~mem, "tab:blue", "not memorized"), (mem, "tab:red", "memorized")):
        s = ok & (kind == k) & sel
        if s.any():
            axes[0].scatter(fu[s], fc[s], s=12, c=color, marker=marker, alpha=0.7, label=f"{name}, {tag} ({int(s.sum())})")
if ok.any():
    lo, hi = float(min(fu[ok].min(), fc[ok].min())), float(max(fu[ok].max(), fc[ok].max()))
    axes[0].plot([lo, hi], [lo, hi], "k:", lw=0.8)
axes[0].set_xlabel("FLIPD(x)  (unconditional)")
axes[0].set_ylabel("FLIPD(x | c)")
axes[0].set_title("below the diagonal: conditioning lowered LID_θ", fontsize=9)
axes[0].legend(fontsize=6)
rng = np.random.default_rng(0)
for k in (0, 1):
    for sel, color in ((~mem, "tab:blue"), (mem, "tab:red")):
        s = (kind == k) & sel & np.isfinite(cn)
        axes[1].scatter(k + rng.uniform(-0.25, 0.25, s.sum()), cn[s], s=9, c=color, alpha=0.6)
axes[1].set_xticks([0, 1], ["digit class (control)", "per-image label"])
axes[1].set_ylabel("CFG norm (mean over the DDIM trajectory)")
axes[1].set_title("CFG norm by kind of label (red: memorized)", fontsize=9)
own = kind == 1
for name, s in (("+CFG norm", cn), ("−FLIPD(x | c)", -fc), ("−FLIPD(x)", -fu)):
    s_ok = own & np.isfinite(s)
    y, v = mem[s_ok], s[s_ok]
    if 0 < y.sum() < y.size:
        fpr, tpr, _ = roc_curve(y, v)
        axes[2].plot(fpr, tpr, label=f"{name}: AUROC {verdicts.auroc(v[y], v[~y]):.2f}")
    else:
        print(f"ROC of {name} on per-image labels: {int(y.sum())} memorized of {y.size}; no curve")
axes[2].plot([0, 1], [0, 1], "k:", lw=0.8)
axes[2].set_xlabel("false positive rate")
axes[2].set_ylabel("true positive rate")
axes[2].set_title("detectors on per-image-label samples", fontsize=9)
if axes[2].get_legend_handles_labels()[0]:
    axes[2].legend(fontsize=7, loc="lower right")
plt.tight_layout()
plt.show()
show_findings(m)

# %% [markdown]
# What to look for, and what each row can say:
#
# - **Detection on per-image labels** (the test): memorized samples should have a large CFG norm
#   and a low FLIPD(x | c); the rows say whether each AUROC clears ½ by its interval. Whether the
#   CFG norm or FLIPD(x | c) ranks better is visible in the ROC, but the two intervals usually
#   overlap at this size: the notebook does not rank them.
# - **All guided samples** mixes the test with the control; **digit classes** is the control, where
#   memorized samples are rare (often inconclusive) and the CFG norm is not expected to detect them.
# - **Conditioning lowers LID_θ**: the share of points below the diagonal of the left panel. The
#   paper's inequality is about the model's exact LID; FLIPD at a finite t₀ estimates it, so this row
#   asks only whether it holds for most samples.
#
# The pipeline's reading, with the mean CFG norm per kind of label:

# %%
print(m["reading"])

# %% [markdown]
# ## The mitigation trade-off
#
# Mitigation can only be tested where memorization is frequent, so `mitigation` samples with the
# per-image labels of the **duplicated** images (where a trained model copies often at λ = 0). For
# each λ the same prior noises, labels and probes are used, so the samples
# are *paired* across λ and only the guidance differs. The pipeline's guidance reads the
# *conditional* model's FLIPD(x_t | c) at the current state (deterministic DDIM with
# ε̃ = ε_cfg − σ λ ∇ₓF). λ is relative: λ = 1 adds a term as large as the score on average
# (`lambda_unit` is the median ‖s‖ / ‖∇ₓF‖ along unguided trajectories).
#
# At each λ: the memorized fraction (Wilson 95 % interval), its paired difference from λ = 0
# (bootstrap 95 % interval over the pairs), and quality against held-out digits of the labels'
# classes — kNN precision (samples that look like real digits), recall (real digits covered) and the
# energy distance (lower is better). The claim **holds** at λ\* = the smallest λ where memorization
# falls by its interval (with at least 10 samples changing label) while each quality measure stays
# within the tolerance of λ = 0; it **does not hold** when quality leaves the band at every λ > 0.

# %%
mit = metrics["mitigation"]
mnpz = np.load(os.path.join(out, "mitigation.npz"))
lams = np.asarray(mit["lambdas"], float)
n_mit, tol = mit["n_samples"], mit["quality_tolerance"]
print("label:", mit["label_text"])
print(f"{n_mit} samples per λ ({mit['labels']} labels, w = {mit['guidance']:g}); λ unit {mit['lambda_unit']:.3g}; "
      f"quality against {mit['reference_n']} held-out digits; D = {mit['ambient_dim']}")
rows = []
for i, lam in enumerate(lams):
    lo, hi = mit["memorized_interval"][i]
    d = mit["memorized_difference"][i]
    q = mit["quality"][i]
    rows.append({"λ": f"{lam:g}", "memorized": f"{mit['memorized_count'][i]}/{n_mit} [{lo:.2f}, {hi:.2f}]",
                 "vs λ=0 (paired)": "" if i == 0 else f"{d[0]:+.2f} [{d[1]:+.2f}, {d[2]:+.2f}]",
                 "changed": mit["memorized_changed"][i], "precision": q["precision"], "recall": q["recall"],
                 "energy distance": q["distance"], "quality within": mit["quality_within"][i],
                 "FLIPD > D": mit["fraction_flipd_above_D"][i]})
display(Markdown(markdown_table(rows)))

fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
x = np.arange(lams.size)  # λ's are uneven (fine at the low end): equal spacing, labelled
mf = np.asarray(mit["memorized_fraction"])
ci = np.asarray(mit["memorized_interval"], float)
axes[0].errorbar(x, mf, yerr=np.abs(np.stack([mf - ci[:, 0], ci[:, 1] - mf])), fmt="o-", color="tab:red",
                 capsize=3, label="memorized (Wilson 95 %)")
diff = np.asarray(mit["memorized_difference"], float)
axes[0].errorbar(x[1:] + 0.08, diff[1:, 0], yerr=np.abs(np.stack([diff[1:, 0] - diff[1:, 1], diff[1:, 2] - diff[1:, 0]])),
                 fmt="s", color="k", ms=4, capsize=3, label="memorized(λ) − memorized(0), paired 95 %")
axes[0].axhline(0, color="0.5", lw=0.6)
axes[0].set_ylim(-1.05, 1.05)
axes[0].set_title("memorization", fontsize=9)
q = {k: np.asarray([v[k] for v in mit["quality"]], float) for k in ("precision", "recall", "distance")}
for k, c in (("precision", "tab:blue"), ("recall", "tab:green")):
    axes[1].plot(x, q[k], "o-", color=c, label=k)
    axes[1].axhline((1 - tol) * q[k][0], color=c, ls="--", lw=0.8)
axes[1].set_ylim(-0.03, 1.03)
axes[1].set_title(f"kNN precision / recall (dashed: {1 - tol:g} × λ=0)", fontsize=9)
axes[2].plot(x, q["distance"], "o-", color="tab:purple")
axes[2].axhline(q["distance"][0] + tol * abs(q["distance"][0]), color="tab:purple", ls="--", lw=0.8)
axes[2].set_title(f"energy distance to held-out digits (dashed: +{tol:.0%})", fontsize=9)
for ax in axes:
    ax.set_xticks(x, [f"{v:g}" for v in lams])
    ax.set_xlabel("relative λ")
    for xi, good in zip(x, mit["quality_within"]):
        if not good:
            ax.axvspan(xi - 0.3, xi + 0.3, color="0.9", zorder=0)
    if mit["lambda_star"] is not None:
        ax.axvline(x[list(lams).index(mit["lambda_star"])], color="k", ls=":", lw=1)
axes[0].legend(fontsize=7)
axes[1].legend(fontsize=7)
plt.suptitle("grey: quality outside the band; dotted line: λ* (when there is one)", fontsize=9)
plt.tight_layout()
plt.show()
show_findings(mit)

# %% [markdown]
# Read the left panel with the right two: a fall in memorization counts only where quality is not
# shaded grey. Two things the numbers cannot separate on their own: a sample that leaves the
# label's threshold may still be a near-copy of the named image (the reading below reports how often
# the nearest training image is still the named one), and FLIPD > D (last column of the table) means
# the sample lies where the model's smoothed density *falls* — off the data, what too strong a
# guidance does. The quick preset's two λ's only exercise the code.
#
# Each row below starts from the same prior noise, so differences between rows are the guidance
# alone (red title: memorized).

# %%
k = min(8, mnpz["samples"].shape[1])
fig, axes = plt.subplots(len(lams), k, figsize=(1.1 * k, 1.25 * len(lams)), squeeze=False)
for r, lam in enumerate(lams):
    for j in range(k):
        axes[r, j].imshow(mnpz["samples"][r, j, ..., 0], cmap="gray_r")
        axes[r, j].axis("off")
        if mnpz["memorized"][r, j]:
            axes[r, j].set_title("mem", fontsize=6, color="tab:red")
    axes[r, 0].text(-0.6, 0.5, f"λ={lam:g}", fontsize=7, ha="right", va="center", transform=axes[r, 0].transAxes)
plt.suptitle("the same prior noise sampled at each λ", fontsize=9)
plt.show()

# %% [markdown]
# ### The second intervention: optimising the label embedding
#
# Wen et al.'s prompt-embedding idea with FLIPD as the objective: sampling stops at a late step,
# the label's embedding vector takes a few steps of gradient ascent on FLIPD(x_late | e), and
# sampling finishes with the optimised vector. The baseline is the same code without the ascent.
# It is judged by the same rule (its row in the findings table above).

# %%
e = mit["embedding"]
rows = [{"embedding": name, "memorized": e[f"memorized_fraction_{w}"],
         "95% CI": "[{:.2f}, {:.2f}]".format(*e[f"memorized_interval_{w}"]),
         "precision": e[f"quality_{w}"]["precision"], "recall": e[f"quality_{w}"]["recall"],
         "energy distance": e[f"quality_{w}"]["distance"], f"FLIPD at t={e['late_t']:.2f}": e[f"flipd_late_{w}"]}
        for name, w in (("trained", "before"), ("optimised for FLIPD", "after"))]
display(Markdown(markdown_table(rows)))
print(mit["reading"])

# %% [markdown]
# What this experiment can and cannot show: it tests mitigation on labels that name a duplicated
# image, where the data themselves are a point (DD-Mem) — the hardest case for any mitigation, and
# the one where copies are frequent enough to measure a fall. A verdict here says nothing about
# samples that are rarely memorized (digit classes, unconditional sampling), where there is little
# to mitigate and the finding would be inconclusive.
#
# The library pieces used here — `sample.lid_guided_score_fn` / `lid_guided_eps_fn` for sampling,
# `lid.cfg_norm` and `lid.flipd` for scoring, `memorization.calibrated_l2` for labels,
# `mmh_jax.verdicts` for the findings — are all functions you can apply to your own model
# (`mmh_jax.load(run_dir).score_fn_for(c)`).
