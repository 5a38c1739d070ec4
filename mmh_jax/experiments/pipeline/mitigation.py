"""Experiment ``mitigation``: steering sampling and conditioning towards higher LID_θ.

Ross et al. (arXiv 2411.00113, §5) argue that since memorized samples are those where the model's
LID_θ is small, pushing generation towards larger LID_θ should lower the memorized fraction at a
small cost in sample quality. Two interventions on the class-conditional digits U-Net shared with
``images`` and ``conditional`` (trained on digits with duplicates, so it copies some of them):

1. **LID-guided sampling** (unconditional, null class): deterministic DDIM with the guided
   ε̃ = −σ·s̃, s̃ = s + λ_raw·∇ₓFLIPD (:func:`mmh_jax.sample.lid_guided_eps_fn`; FLIPD at the
   current state, its time floored at ``t0``, Hutchinson with ``num_probes`` fixed probes per
   sample, gradient through the network). ``n_samples`` samples for every λ in ``lambdas``, from
   the same initial noises and probes, so only λ differs (λ = 0 is the plain sampler).
   **Units of λ:** ``lambdas`` are relative; λ_raw = λ·u with u = median over the states (x_t, t)
   of unguided trajectories of ‖s(x_t, t)‖ / ‖∇ₓFLIPD(x_t, t)‖. So λ = 1 adds a term whose typical
   norm equals the score's, and λ = 0.1 a tenth of it (u is measured on the model at hand and
   reported as ``lambda_unit``; raw values in ``lambda_raw``).
2. **Class-embedding optimisation** (conditional, classes balanced): classifier-free guidance
   ε_∅ + w(ε_c − ε_∅), w = ``cfg_guidance``; DDIM down to the grid time nearest ``late_t``; there
   the sample's class-embedding vector e (starting at its class's row of ``label_embed``) takes
   ``embedding_steps`` steps of normalised gradient ascent on FLIPD(x_late, t_late | e),
   e ← e + lr·‖e₀‖·∇_e F/‖∇_e F‖ (``embedding_lr`` = step length relative to the row's norm),
   and sampling finishes with e in place of that row (a per-sample copy of the table). The
   baseline runs the same code with e = e₀ (identical to plain CFG sampling).

For both, memorization is calibrated ℓ2 against the distinct training images
(:func:`~mmh_jax.experiments.pipeline.common.memorization_labels`), and sample quality is the
kNN precision/recall (:func:`mmh_jax.quality.knn_precision_recall`, ``quality_k``) of the samples
against the held-out digits. The LID-guided samples also get their FLIPD at ``t0`` (the F of the
last sampling state, Hutchinson with the guidance's probes) to check that guidance does raise LID_θ.

Expected (the paper's finding): the memorized fraction falls as λ grows, and optimising the
embedding lowers it too, while precision/recall fall only a little.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from mmh_jax.experiments.pipeline.common import Context, digits_setup, memorization_labels, with_null_class

__all__ = ["run"]


def _ddim_scan(step_eps, x, ts, sde):
    """Deterministic DDIM over the grid ``ts`` (the update of :func:`mmh_jax.sample.ddim`).

    ``step_eps(x, t) -> (ε, aux)``; returns the last state and the stacked ``aux``. A grid that
    ends at t = 0 (α = 1, σ = 0) makes the last step the Tweedie denoising x₀ = (x − σε)/α.
    """
    import jax

    def step(x, tt):
        t, s = tt
        a_t, sig_t = sde.marginal_coefs(t)
        a_s, sig_s = sde.marginal_coefs(s)
        eps, aux = step_eps(x, t)
        return a_s * (x - sig_t * eps) / a_t + sig_s * eps, aux

    return jax.lax.scan(step, x, (ts[:-1], ts[1:]))


def _with_denoise(ts):
    import jax.numpy as jnp

    return jnp.concatenate([ts, jnp.zeros(1, ts.dtype)])


def _embedding_row(params, label):
    """Row ``label`` of the class-embedding table (a one-hot product: no gather on the parameters)."""
    import jax

    table = params["params"]["label_embed"]["embedding"]
    return jax.nn.one_hot(label, table.shape[0], dtype=table.dtype) @ table


def _with_row(params, label, e):
    """``params`` with row ``label`` of the class-embedding table replaced by ``e``.

    Written with a one-hot mask rather than ``.at[label].set`` (no gather or scatter on the
    parameters: inside ``shard_map``, an indexed update of mesh-replicated parameters trips JAX's
    mesh-consistency check). Other rows are unchanged exactly, and so is the table when ``e`` is
    the row itself.
    """
    import jax

    p = dict(params["params"])
    table = p["label_embed"]["embedding"]
    onehot = jax.nn.one_hot(label, table.shape[0], dtype=table.dtype)
    table = table + onehot[:, None] * (e.astype(table.dtype) - onehot @ table)[None, :]
    p["label_embed"] = {**p["label_embed"], "embedding": table}
    return {**params, "params": p}


def _cfg_eps(model, params, label, w: float):
    """ε_∅ + w(ε_c − ε_∅) with both classes in one network call (a batch of two); w = 1: ε_c alone."""
    import jax.numpy as jnp

    if w == 1.0:  # the plain conditional model: half the network, and a much smaller program to compile
        return model.eps_fn_for(label, params=params)
    labels = with_null_class(label, model.num_classes)

    def eps(x, t):
        out = model.eps_apply(params, jnp.stack([x, x]), jnp.full((2,), t, jnp.float32), labels)
        return out[1] + w * (out[0] - out[1])

    return eps


def _mapped(fn, batch_size: int):
    """A jitted ``(params, *per_point_arrays) -> stacked fn(params, *row)`` (params stay traced).

    On one device, as :func:`~mmh_jax.experiments.pipeline.common.map_model` (several emulated CPU
    devices have hung XLA:CPU). Points are padded (with copies of the first) to a whole number of
    equal chunks of at most ``batch_size``: ``lax.map`` traces a remainder chunk as a second copy of
    ``fn``, which would double the (large) compile time of these programs.
    """
    import jax
    import jax.numpy as jnp

    from mmh_jax import parallel
    from mmh_jax._compile import compiler_options

    mesh = parallel.make_mesh(jax.devices()[:1])

    def run(params, *arrays, chunk):
        return parallel.map_points(lambda *row: fn(params, *row), *arrays, batch_size=chunk, mesh=mesh)

    jitted = jax.jit(run, static_argnames="chunk", compiler_options=compiler_options())

    def call(params, *arrays):
        n = int(arrays[0].shape[0])
        k = -(-n // batch_size)  # chunks
        chunk = -(-n // k)
        if k * chunk != n:
            arrays = tuple(jnp.concatenate([a, jnp.repeat(a[:1], k * chunk - n, axis=0)]) for a in arrays)
        out = jax.device_get(jitted(params, *arrays, chunk=chunk))
        return jax.tree_util.tree_map(lambda o: o[:n], out)

    return call


def _balanced_labels(n: int, num_classes: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, 4])
    return rng.permutation(np.arange(n) % num_classes).astype(np.int32)


def run(config, ctx: Context) -> dict[str, Any]:
    """Both interventions; writes ``mitigation_tradeoff.png`` and ``mitigation.npz``; returns metrics.

    Metrics: ``lambdas`` (relative), ``lambda_unit``, ``lambda_raw``, ``memorized_fraction``,
    ``quality`` (``{precision, recall}``) and ``mean_flipd`` per λ; ``embedding`` with
    ``memorized_fraction_before/after``, ``quality_before/after``, ``flipd_late_before/after``
    (mean FLIPD at the late step), ``late_t``, ``guidance``; ``n_samples``, ``config``,
    ``figures``, ``reading``.
    """
    import jax
    import jax.numpy as jnp

    from mmh_jax import quality
    from mmh_jax import sample as sampling

    cfg, icfg = config.mitigation, config.images
    setup = digits_setup(icfg, ctx)
    model = setup.model
    if not model.num_classes:
        raise ValueError("mitigation needs a class-conditional model; digits_setup returned an unconditional one.")
    sde, shape, n = model.sde, tuple(model.event_shape), int(cfg.n_samples)
    steps, t0, probes = int(cfg.sample_steps), float(cfg.t0), int(cfg.num_probes)
    batch = int(icfg.batch)
    ts = sampling.time_grid(sde, steps)
    k_base = jax.random.fold_in(jax.random.key(ctx.seed), 4)
    k_prior, k_probe, k_eprior, k_eprobe = jax.random.split(k_base, 4)
    prior_keys, probe_keys = jax.random.split(k_prior, n), jax.random.split(k_probe, n)

    # ---------------------------------------------------------------- 1. LID-guided sampling
    # One compiled program for every λ (traced): DDIM with ε̃ = ε − σ·λ·∇F, which is
    # sample.lid_guided_eps_fn written out so that the same pass also returns ‖s‖/‖∇F‖ at every
    # state (the unit of λ, from the λ = 0 run) and F itself (the samples' FLIPD readout).
    def guided_point(params, k_pr, k_pb, lam):
        eps_fn = model.eps_fn_for(None, params=params)
        score_fn = sampling.eps_to_score(eps_fn, sde=sde)
        value_and_term = jax.value_and_grad(sampling.state_flipd, argnums=1)

        def step_eps(x, t):
            e = eps_fn(x, t)
            f, g = value_and_term(score_fn, x, t, k_pb, sde=sde, t0_min=t0, num_probes=probes)
            sigma = sde.marginal_coefs(t)[1]
            ratio = jnp.linalg.norm(e) / sigma / jnp.maximum(jnp.linalg.norm(g), 1e-30)
            return jnp.where(lam == 0, e, e - sigma * lam * g), (ratio, f)

        x, (ratios, fs) = _ddim_scan(step_eps, sde.prior_sample(k_pr, shape), _with_denoise(ts), sde)
        # The last step is the Tweedie denoising at t_min < t0: its F is FLIPD(x/α(t_min), t0) of the
        # state just before it, the sample's LID_θ readout (one probe); its ratio is not a sampling state.
        return x, ratios[:-1], fs[-1]

    guided_fn = _mapped(guided_point, batch)
    lambdas = [float(v) for v in cfg.lambdas]

    def draw(lam_raw: float, tag: str):
        ctx.log(f"[mitigation] {tag}: {n} LID-guided samples ({steps} DDIM steps)")
        with ctx.timed("mitigation_guided"):
            x, r, f = guided_fn(model.params, prior_keys, probe_keys, np.full(n, lam_raw, np.float32))
        return np.asarray(x, np.float32), np.asarray(r, np.float32), np.asarray(f, np.float32)

    base = draw(0.0, "λ = 0 (also measures the unit of λ)")
    finite = base[1][np.isfinite(base[1])]
    unit = float(np.median(finite)) if finite.size else 1.0
    all_samples, all_calib, all_mem, all_near, all_flipd, qual = [], [], [], [], [], []
    for lam in lambdas:
        xs, _, fl = base if lam == 0 else draw(lam * unit, f"λ = {lam:g} (raw {lam * unit:.3g})")
        calib, mem, near = memorization_labels(xs, setup, icfg)
        all_samples.append(xs), all_calib.append(np.asarray(calib)), all_mem.append(np.asarray(mem, bool))
        all_near.append(np.asarray(near)), all_flipd.append(fl)
        qual.append(_quality(quality, setup.heldout_x, xs, cfg.quality_k))

    # ---------------------------------------------------------------- 2. class-embedding optimisation
    labels = _balanced_labels(n, model.num_classes, ctx.seed)
    guidance = float(cfg.cfg_guidance)
    j = int(np.argmin(np.abs(np.asarray(ts) - cfg.late_t)))
    j = min(max(j, 1), steps - 1)  # at least one step on either side of the optimisation
    t_late = float(ts[j])
    lr, n_opt = float(cfg.embedding_lr), int(cfg.embedding_steps)
    no_aux = lambda eps: (lambda x, t: (eps(x, t), None))  # noqa: E731

    def embedding_point(params, k_pr, k_pb, label):
        e0 = _embedding_row(params, label)
        eps_with = lambda e: _cfg_eps(model, _with_row(params, label, e), label, guidance)  # noqa: E731
        x_late, _ = _ddim_scan(no_aux(eps_with(e0)), sde.prior_sample(k_pr, shape), ts[: j + 1], sde)

        def objective(e):
            score = sampling.eps_to_score(eps_with(e), sde=sde)
            return sampling.state_flipd(score, x_late, ts[j], k_pb, sde=sde, t0_min=t0, num_probes=probes)

        scale = lr * jnp.linalg.norm(e0)

        def ascent(e, i):  # n_opt + 1 evaluations, the last without update: fs[-1] = F(e*)
            f, g = jax.value_and_grad(objective)(e)
            step = scale * g / jnp.maximum(jnp.linalg.norm(g), 1e-30)
            return jnp.where(i < n_opt, e + step, e), f

        e_star, fs = jax.lax.scan(ascent, e0, jnp.arange(n_opt + 1))
        finish = lambda e: _ddim_scan(no_aux(eps_with(e)), x_late, _with_denoise(ts[j:]), sde)[0]  # noqa: E731
        out = jax.vmap(finish)(jnp.stack([e0, e_star]))
        return out[0], out[1], fs[0], fs[-1]

    e_prior, e_probe = jax.random.split(k_eprior, n), jax.random.split(k_eprobe, n)
    ctx.log(f"[mitigation] class embedding: {n} CFG samples (w={guidance:g}), {n_opt} ascent steps at t={t_late:.3f}")
    with ctx.timed("mitigation_embedding"):
        before, after, f_before, f_after = _mapped(embedding_point, batch)(model.params, e_prior, e_probe, labels)
    before, after = np.asarray(before, np.float32), np.asarray(after, np.float32)
    calib_b, mem_b, _ = memorization_labels(before, setup, icfg)
    calib_a, mem_a, _ = memorization_labels(after, setup, icfg)
    mem_b, mem_a = np.asarray(mem_b, bool), np.asarray(mem_a, bool)

    metrics: dict[str, Any] = {
        "n_samples": n,
        "lambdas": lambdas,
        "lambda_unit": unit,
        "lambda_raw": [lam * unit for lam in lambdas],
        "memorized_fraction": [float(mm.mean()) for mm in all_mem],
        "quality": qual,
        "mean_flipd": [float(np.nanmean(f)) for f in all_flipd],
        "t0": t0,
        "embedding": {
            "memorized_fraction_before": float(mem_b.mean()),
            "memorized_fraction_after": float(mem_a.mean()),
            "quality_before": _quality(quality, setup.heldout_x, before, cfg.quality_k),
            "quality_after": _quality(quality, setup.heldout_x, after, cfg.quality_k),
            "flipd_late_before": float(np.nanmean(f_before)),
            "flipd_late_after": float(np.nanmean(f_after)),
            "late_t": t_late,
            "guidance": guidance,
        },
        "config": dataclasses.asdict(cfg),
    }
    np.savez(
        ctx.path("mitigation.npz"), lambdas=np.asarray(lambdas, np.float32), lambda_unit=np.float32(unit),
        unit_ratios=base[1], samples=np.stack(all_samples), calibrated_l2=np.stack(all_calib),
        memorized=np.stack(all_mem), nearest=np.stack(all_near), flipd=np.stack(all_flipd),
        prior_key_data=np.asarray(jax.random.key_data(prior_keys)),
        probe_key_data=np.asarray(jax.random.key_data(probe_keys)),
        embedding_labels=labels, embedding_samples_before=before, embedding_samples_after=after,
        embedding_calibrated_l2_before=np.asarray(calib_b), embedding_calibrated_l2_after=np.asarray(calib_a),
        embedding_memorized_before=mem_b, embedding_memorized_after=mem_a,
        embedding_flipd_late_before=np.asarray(f_before, np.float32),
        embedding_flipd_late_after=np.asarray(f_after, np.float32),
        embedding_prior_key_data=np.asarray(jax.random.key_data(e_prior)),
    )
    _figure(ctx.path("mitigation_tradeoff.png"), metrics)
    metrics["figures"] = ["mitigation_tradeoff.png"]
    metrics["reading"] = _reading(metrics)
    return metrics


def _quality(quality, real: np.ndarray, fake: np.ndarray, k: int) -> dict[str, float]:
    ok = np.all(np.isfinite(fake.reshape(fake.shape[0], -1)), axis=1)
    if ok.sum() <= k:
        return {"precision": float("nan"), "recall": float("nan")}
    pr = quality.knn_precision_recall(real, fake[ok], k=int(k))
    return {"precision": float(pr["precision"]), "recall": float(pr["recall"])}


def _fmt(v: float, pct: bool = False) -> str:
    if v != v:
        return "n/a"
    return f"{100 * v:.1f}%" if pct else f"{v:.2f}"


def _reading(m: dict[str, Any]) -> str:
    lams, mf, q, fl = m["lambdas"], m["memorized_fraction"], m["quality"], m["mean_flipd"]
    n = m["n_samples"]
    order = np.argsort(lams)
    lo, hi = order[0], order[-1]
    lines = [
        f"LID-guided sampling ({n} samples per λ; λ in units of {m['lambda_unit']:.3g}, the median ‖s‖/‖∇FLIPD‖): "
        + "; ".join(f"λ={lams[i]:g}: memorized {_fmt(mf[i], True)}, precision {_fmt(q[i]['precision'])}, "
                    f"recall {_fmt(q[i]['recall'])}, mean FLIPD {_fmt(fl[i])}" for i in order) + "."
    ]
    if len(lams) < 2:
        lines.append("Only one λ was run, so no trend can be read.")
    elif mf[lo] == 0:
        lines.append(f"No unguided (λ={lams[lo]:g}) sample is memorized, so there is nothing to mitigate in this "
                     "run and the finding cannot be tested; only the quality cost is measured.")
    else:
        seq = [mf[i] for i in order]
        monotone = all(b <= a for a, b in zip(seq, seq[1:]))
        falls = mf[hi] < mf[lo]
        if falls:
            lines.append(f"Finding holds: the memorized fraction falls from {_fmt(mf[lo], True)} at λ={lams[lo]:g} to "
                         f"{_fmt(mf[hi], True)} at λ={lams[hi]:g}"
                         + (" (monotonically)." if monotone else " (not monotonically in between)."))
        else:
            lines.append(f"Finding does NOT hold here: the memorized fraction does not fall with λ "
                         f"({_fmt(mf[lo], True)} at λ={lams[lo]:g}, {_fmt(mf[hi], True)} at λ={lams[hi]:g}).")
    if len(lams) >= 2:
        dp = q[hi]["precision"] - q[lo]["precision"]
        dr = q[hi]["recall"] - q[lo]["recall"]
        lines.append(f"Quality cost at λ={lams[hi]:g}: precision {dp:+.2f}, recall {dr:+.2f} against the held-out digits; "
                     f"mean FLIPD {'rises' if fl[hi] > fl[lo] else 'does not rise'} ({_fmt(fl[lo])} → {_fmt(fl[hi])}).")
    e = m["embedding"]
    fb, fa = e["memorized_fraction_before"], e["memorized_fraction_after"]
    if fb == 0:
        verdict = "no baseline sample is memorized, so this cannot be tested here"
    else:
        verdict = "it lowers the memorized fraction" if fa < fb else "it does NOT lower the memorized fraction"
    lines.append(
        f"Class-embedding optimisation (CFG w={e['guidance']:g}, at t={e['late_t']:.3f}): mean FLIPD at that step "
        f"{_fmt(e['flipd_late_before'])} → {_fmt(e['flipd_late_after'])}; memorized {_fmt(fb, True)} → {_fmt(fa, True)} "
        f"({verdict}); precision {_fmt(e['quality_before']['precision'])} → "
        f"{_fmt(e['quality_after']['precision'])}, recall {_fmt(e['quality_before']['recall'])} → "
        f"{_fmt(e['quality_after']['recall'])}."
    )
    return " ".join(lines)


def _figure(path, m: dict[str, Any]) -> None:
    from mmh_jax._plotting import pyplot

    plt = pyplot()

    lams = np.asarray(m["lambdas"])
    order = np.argsort(lams)
    lams = lams[order]
    mf = np.asarray(m["memorized_fraction"])[order]
    prec = np.asarray([q["precision"] for q in m["quality"]])[order]
    rec = np.asarray([q["recall"] for q in m["quality"]])[order]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10.0, 4.2), gridspec_kw={"width_ratios": [3, 2]})
    ax1.plot(lams, mf, "o-", color="tab:red", label="memorized fraction")
    ax1.plot(lams, prec, "s--", color="tab:blue", label="precision (held-out)")
    ax1.plot(lams, rec, "^--", color="tab:green", label="recall (held-out)")
    ax1.set_xlabel(f"λ (units of {m['lambda_unit']:.3g} = median ‖s‖/‖∇FLIPD‖)")
    ax1.set_ylabel("fraction")
    ax1.set_ylim(-0.03, 1.03)
    ax1b = ax1.twinx()
    ax1b.plot(lams, np.asarray(m["mean_flipd"])[order], ":", marker="d", color="0.4", label="mean FLIPD (right)")
    ax1b.set_ylabel(f"mean FLIPD of the samples (t0={m['t0']:g})")
    h1, l1 = ax1.get_legend_handles_labels()
    h2, l2 = ax1b.get_legend_handles_labels()
    ax1.legend(h1 + h2, l1 + l2, fontsize=8, loc="best")
    ax1.set_title("LID-guided sampling: memorization vs quality", fontsize=9)
    e = m["embedding"]
    names = ["memorized", "precision", "recall"]
    b = [e["memorized_fraction_before"], e["quality_before"]["precision"], e["quality_before"]["recall"]]
    a = [e["memorized_fraction_after"], e["quality_after"]["precision"], e["quality_after"]["recall"]]
    x = np.arange(3)
    ax2.bar(x - 0.18, b, 0.36, label="class embedding as trained", color="0.6")
    ax2.bar(x + 0.18, a, 0.36, label="optimised for FLIPD", color="tab:purple")
    ax2.set_xticks(x, names)
    ax2.set_ylim(0, 1.05)
    ax2.legend(fontsize=8, loc="upper left")
    ax2.set_title(f"Conditional (CFG w={e['guidance']:g}): embedding at t={e['late_t']:.2f}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
