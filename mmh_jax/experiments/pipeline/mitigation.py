"""Experiment ``mitigation``: steering sampling and conditioning towards higher LID_θ, judged with quality.

Ross et al. (arXiv 2411.00113, §5) argue that since memorized samples are those where the model's
LID_θ is small, pushing generation towards larger LID_θ should lower the memorized fraction at a
small cost in sample quality. That claim has two halves, and both are measured here: memorization
must fall *by its interval*, and at a λ where quality has not (yet) fallen.

**Which samples.** Mitigation can only be tested where memorization is frequent. Unconditional
and digit-class CFG samples of the digits model are rarely memorized: too few positives for any
verdict. Samples guided (CFG scale ``cfg_guidance``) by the *per-image labels of the duplicated
training images* (``labels="duplicated"``; labels ≥ 10 of `common.digits_setup`, each naming one
image repeated ``copies`` times) are the analogue of the memorized prompts on which Wen et al. and
Ross et al. test mitigation: they are memorized often enough at λ = 0 for a verdict.
``labels="own"`` adds the per-image labels of the unique images (rarely copied), ``"digit"`` takes
the digit classes, ``"null"`` unconditional samples. The ``n_samples`` samples cycle through those
labels, so every label gets the same number.

Two interventions on the class-conditional digits U-Net shared with ``images`` and ``conditional``:

1. **LID-guided sampling**: deterministic DDIM with ε̃ = ε_cfg − σ·λ_raw·∇ₓF, ε_cfg = ε_∅ +
   w(ε_c − ε_∅) and F = FLIPD(x_t | c) of the *conditional* model at the current state
   ([`mmh_jax.sample.state_flipd`][mmh_jax.sample.state_flipd]: its time floored at ``t0``, Hutchinson with
   ``num_probes``
   fixed probes per sample, gradient through the network): the conditional LID that the paper ties
   to conditional memorization, at one network pass per gradient rather than CFG's two.
   ``n_samples`` samples for every λ in ``lambdas``, from the same initial noises, labels and
   probes, so only λ differs (λ = 0 is plain CFG sampling) and the λ's can be compared *paired*.
   **Units of λ:** ``lambdas`` are relative; λ_raw = λ·u with u = median over the states (x_t, t)
   of the λ = 0 trajectories of ‖s_cfg(x_t, t)‖ / ‖∇ₓF(x_t, t)‖ (``lambda_unit``). λ = 1 adds a
   term whose typical norm equals the score's. The grid is fine at the low end (0.005 … 0.05, then
   0.1) because memorization and quality both move between λ = 0.01 and 0.05; by λ = 0.1 nearly
   every sample has FLIPD > D and precision is gone (λ = 0.2 adds nothing but cost).
2. **Class-embedding optimisation** (Wen et al.'s prompt-embedding idea with FLIPD as the
   objective), on ``embedding_samples`` samples with the same labels: CFG DDIM down to the grid
   time nearest ``late_t``; there the sample's label-embedding vector e (starting at its label's
   row of ``label_embed``) takes ``embedding_steps`` steps of normalised gradient ascent on
   FLIPD(x_late, t_late | e), e ← e + lr·‖e₀‖·∇_e F/‖∇_e F‖ (``embedding_lr`` = step length
   relative to the row's norm), and sampling finishes with e in place of that row (a per-sample
   copy of the table). The baseline runs the same code with e = e₀ (identical to plain CFG).

**Measurements.** Memorized: calibrated ℓ2 against the distinct training images below the
threshold set on held-out digits (`common.label_calibration`, whose held-out false-positive
rate is stated with every use). For per-image labels also the fraction of samples whose nearest
training image is the one the label names, and their median distance to it (a sample can leave the
label's threshold while still being a near-copy; the reading says so). Quality against held-out
digits (never trained on) of the digit classes the labels ask for, in the same proportions
(`reference_set`): kNN precision and recall
([`mmh_jax.quality.knn_precision_recall`][mmh_jax.quality.knn_precision_recall],
``quality_k``) and the energy distance ([`mmh_jax.quality.energy_distance`][mmh_jax.quality.energy_distance],
unbiased, no bandwidth to choose). Each sample's FLIPD(x | c) at ``t0`` (Hutchinson, ``readout_probes``
probes: with 8 they differed from the exact trace by 0.6 rms on the default preset, and the fraction
above D was identical), and the fraction above the ambient dimension D = 64: FLIPD > D means the smoothed model
density *falls* around the sample, i.e. the sample lies off the data the model learned — what too
strong a guidance does.

**Verdict** (`judge`, pure): quality at λ is *within* ``quality_tolerance`` (10 %) of λ = 0
when, on point estimates, precision ≥ 0.9·precision(0), recall ≥ 0.9·recall(0) and energy distance
≤ distance(0) + 0.1·|distance(0)| (point estimates: with ~80 samples an interval on each would
make the band unreachable; the paired design keeps their noise down). The effect is memorized(λ) −
memorized(0) with a paired bootstrap 95 % interval (resampling sample indices, which share noise,
label and probes across λ); n = memorized vs not memorized samples at λ = 0. Memorization *falls*
at λ when that interval lies below 0 and at least 10 samples change label (the percentile bootstrap
of a paired difference resting on 4 discordant pairs excludes 0 where an exact sign test gives
p = 0.125). The finding *holds* at λ* = the smallest λ > 0 where memorization falls and quality is
within the band (the reading names λ*). With no λ whose quality is within the band it *does not
hold* (on this grid memorization can only be bought with quality); otherwise the
quality-preserving λ with the lowest upper bound is reported with
[`mmh_jax.verdicts.decide`][mmh_jax.verdicts.decide]'s verdict on its interval (never *holds* without the 10
changed samples). Fewer than 10 memorized samples at λ = 0: inconclusive. The embedding optimisation is
judged by the same rule (before → after).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mmh_jax import lid, parallel, quality, verdicts
from mmh_jax import sample as sampling
from mmh_jax._compile import compiler_options
from mmh_jax.experiments.pipeline.common import Context, digits_setup, label_calibration, memorization_labels
from mmh_jax.experiments.pipeline.common import with_null_class

__all__ = ["LABELS", "judge", "quality_within", "reference_set", "run", "sample_labels"]

#: The label sets of the guided samples (see the module docstring).
LABELS = ("duplicated", "own", "digit", "null")


def _embedding_row(params, label):
    """Row ``label`` of the class-embedding table (a one-hot product: no gather on the parameters)."""
    table = params["params"]["label_embed"]["embedding"]
    return jax.nn.one_hot(label, table.shape[0], dtype=table.dtype) @ table


def _with_row(params, label, e):
    """``params`` with row ``label`` of the class-embedding table replaced by ``e``.

    Written with a one-hot mask rather than ``.at[label].set`` (no gather or scatter on the
    parameters: inside ``shard_map``, an indexed update of mesh-replicated parameters trips JAX's
    mesh-consistency check). Other rows are unchanged exactly, and so is the table when ``e`` is
    the row itself.
    """
    p = dict(params["params"])
    table = p["label_embed"]["embedding"]
    onehot = jax.nn.one_hot(label, table.shape[0], dtype=table.dtype)
    table = table + onehot[:, None] * (e.astype(table.dtype) - onehot @ table)[None, :]
    p["label_embed"] = {**p["label_embed"], "embedding": table}
    return {**params, "params": p}


def _cfg_eps(model, params, label, w: float):
    """ε_∅ + w(ε_c − ε_∅) with both classes in one network call (a batch of two); w = 1: ε_c alone."""
    if w == 1.0:  # the plain conditional model: half the network, and a much smaller program to compile
        return model.eps_fn_for(label, params=params)
    labels = with_null_class(label, model.num_classes)

    def eps(x, t):
        out = model.batched_eps_apply(params, jnp.stack([x, x]), jnp.full((2,), t, jnp.float32), labels)
        return out[1] + w * (out[0] - out[1])

    return eps


def _mapped(fn, batch_size: int):
    """A jitted ``(params, *per_point_arrays) -> stacked fn(params, *row)`` (params stay traced).

    On one device, as `map_model` (several emulated CPU
    devices have hung XLA:CPU). Points are padded (with copies of the first) to a whole number of
    equal chunks of at most ``batch_size``: ``lax.map`` traces a remainder chunk as a second copy of
    ``fn``, which would double the (large) compile time of these programs.
    """
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


def sample_labels(setup, kind: str, n: int, seed: int) -> np.ndarray:
    """The ``n`` labels of the guided samples of ``kind`` (`LABELS`), each label equally often.

    ``duplicated``/``own``: the per-image labels (of the duplicated images / of all images with
    one), sorted and cycled; ``digit``: the digit classes cycled and shuffled with ``seed``;
    ``null``: the null class (unconditional samples).
    """
    model = setup.model
    if kind in ("duplicated", "own"):
        pick = setup.own_label & setup.duplicated if kind == "duplicated" else setup.own_label
        base = np.sort(setup.unique_labels[pick]).astype(np.int32)
        if base.size == 0:
            raise ValueError(f"labels={kind!r} needs per-image labels, but this setup has none.")
        return np.resize(base, n).astype(np.int32)
    if kind == "digit":
        rng = np.random.default_rng([seed, 4])
        return rng.permutation(np.arange(n) % setup.digit_classes).astype(np.int32)
    if kind == "null":
        return np.full(n, model.num_classes, np.int32)
    raise ValueError(f"labels must be one of {LABELS}, got {kind!r}.")


def reference_set(setup, labels: np.ndarray, seed: int) -> np.ndarray:
    """The held-out digits that quality is measured against: those of the digit classes that
    ``labels`` ask for, in the same proportions (as many as the scarcest class allows).

    A sample guided by a per-image label should look like a digit of that image's class, so its
    quality is read against held-out digits of the class; the null class (unconditional samples)
    asks for all held-out digits. The subsample is drawn with ``seed``.
    """
    ho, hl = setup.heldout_x, setup.heldout_labels
    labels = np.asarray(labels)
    null = labels >= setup.model.num_classes
    if null.all() or ho.shape[0] == 0:
        return ho
    digit_of = {int(lab): int(dig) for lab, dig in zip(setup.unique_labels, setup.unique_digits)}
    digit_of.update({d: d for d in range(setup.digit_classes)})
    digits = np.asarray([digit_of[int(lab)] for lab in labels[~null]])
    classes, counts = np.unique(digits, return_counts=True)
    avail = np.asarray([np.sum(hl == c) for c in classes])
    ratio = float(np.min(avail / counts))
    rng = np.random.default_rng([seed, 5])
    take = [rng.choice(np.flatnonzero(hl == c), int(np.floor(k * ratio + 1e-9)), replace=False)
            for c, k in zip(classes, counts)]
    return ho[np.sort(np.concatenate(take))]


def quality_within(q: dict[str, float], q0: dict[str, float], tolerance: float = 0.1) -> tuple[bool, str]:
    """Whether quality ``q`` stays within ``tolerance`` of the reference ``q0`` (point estimates).

    Within: precision ≥ (1 − tol)·precision₀, recall ≥ (1 − tol)·recall₀ and distance ≤ distance₀ +
    tol·|distance₀| (higher precision/recall and lower distance are better, so improvements always
    pass). NaN anywhere fails. Returns ``(within, reason)``, the reason naming each failed measure.

    Examples:
      >>> q0 = {"precision": 0.8, "recall": 0.5, "distance": 2.0}
      >>> quality_within({"precision": 0.75, "recall": 0.6, "distance": 2.1}, q0)
      (True, '')
      >>> quality_within({"precision": 0.6, "recall": 0.5, "distance": 3.0}, q0)
      (False, 'precision 0.60 < 0.9×0.80; distance 3.00 > 2.00 + 10%')
    """
    fails = []
    for name in ("precision", "recall"):
        v, v0 = float(q[name]), float(q0[name])
        if not v >= (1 - tolerance) * v0:  # NaN fails
            fails.append(f"{name} {v:.2f} < {1 - tolerance:g}×{v0:.2f}")
    d, d0 = float(q["distance"]), float(q0["distance"])
    if not d <= d0 + tolerance * abs(d0):
        fails.append(f"distance {d:.2f} > {d0:.2f} + {tolerance:.0%}")
    return not fails, "; ".join(fails)


def _difference(pairs: np.ndarray) -> float:
    """Memorized fraction of column 1 minus that of column 0 (rows: paired samples)."""
    return float(np.mean(pairs[:, 1]) - np.mean(pairs[:, 0]))


def judge(levels: Sequence[str], memorized, quality: Sequence[dict[str, float]], *, claim: str,
          tolerance: float = 0.1, seed: int = 0, n_boot: int = 1000) -> dict[str, Any]:
    """The verdict on "memorization falls at a level where quality holds"; pure (NumPy), for tests.

    Args:
      levels: names of the settings, the reference (e.g. λ = 0) first, then by increasing strength.
      memorized: (L, n) bool, whether sample j at setting i is memorized; the n samples are paired
        across settings (same noise and label).
      quality: per setting ``{"precision", "recall", "distance"}`` against held-out data.
      claim: the finding's claim in words.
      tolerance: quality band, relative to the reference (`quality_within`).
      seed, n_boot: of the paired bootstrap
        ([`mmh_jax.verdicts.bootstrap_interval`][mmh_jax.verdicts.bootstrap_interval], one group
        of (n, 2) rows, so resampling keeps the pairs).

    Returns:
      ``fraction``, ``fraction_interval`` (Wilson 95 %) and ``count`` per setting; ``difference``
      per setting ``[effect, low, high]`` against the reference (``[0, 0, 0]`` for itself);
      ``changed`` (samples memorized at exactly one of the reference and the setting),
      ``quality_within`` and ``quality_reason`` per setting; ``star`` (index of λ*, the first
      setting after the reference whose interval lies below 0, with at least
      [`MIN_POSITIVES`][mmh_jax.verdicts.MIN_POSITIVES] changed samples, and quality within the band; None if
      none); ``best`` (among settings with quality within the band, the one with the lowest
      memorized fraction; None if none); ``reported`` (the index the finding is about) and ``finding``
      ([`mmh_jax.verdicts.Finding`][mmh_jax.verdicts.Finding]).

    Examples:
      >>> mem = np.array([[True] * 20 + [False] * 20, [True] * 5 + [False] * 35])  # 15 stop being memorized
      >>> q = [{"precision": 0.8, "recall": 0.4, "distance": 1.0}] * 2
      >>> j = judge(["λ=0", "λ=0.1"], mem, q, claim="guidance lowers memorization")
      >>> j["star"], j["finding"].verdict, j["finding"].n_positive, j["finding"].n_negative
      (1, 'holds', 20, 20)
    """
    mem = np.asarray(memorized, bool)
    if mem.ndim != 2 or mem.shape[0] != len(levels) or len(quality) != len(levels) or len(levels) < 2:
        raise ValueError(f"need (L, n) memorized with L = len(levels) = len(quality) ≥ 2, got {mem.shape}, "
                         f"{len(levels)} levels and {len(quality)} quality entries.")
    n = mem.shape[1]
    counts = mem.sum(axis=1)
    out: dict[str, Any] = {
        "levels": list(levels), "n": int(n), "count": [int(c) for c in counts],
        "fraction": [float(c / n) for c in counts],
        "fraction_interval": [list(verdicts.wilson_interval(int(c), n)) for c in counts],
        "difference": [[0.0, 0.0, 0.0]], "quality_within": [True], "quality_reason": [""],
    }
    for i in range(1, len(levels)):
        pairs = np.stack([mem[0], mem[i]], axis=1)
        lo, hi = verdicts.bootstrap_interval(_difference, pairs, n_boot=n_boot, seed=seed)
        out["difference"].append([_difference(pairs), lo, hi])
        ok, why = quality_within(quality[i], quality[0], tolerance)
        out["quality_within"].append(ok), out["quality_reason"].append(why)
    later = range(1, len(levels))
    # a fall counts when its interval lies below 0 and rests on enough samples whose label changed
    # (a percentile bootstrap of a paired difference with 4 discordant pairs excludes 0 although
    # an exact sign test gives p = 0.125)
    out["changed"] = [0] + [int(np.sum(mem[0] != mem[i])) for i in later]
    falls = [i for i in later if out["difference"][i][2] < 0 and out["changed"][i] >= verdicts.MIN_POSITIVES]
    good = [i for i in later if out["quality_within"][i]]
    star = next((i for i in falls if i in good), None)
    n_pos, n_neg = int(counts[0]), int(n - counts[0])
    band = f"{tolerance:.0%}"
    if star is not None:
        i = star
        note = f"quality within {band} of {levels[0]} at {levels[i]}: {_qual_change(quality[0], quality[i])}"
    elif good:
        i = min(good, key=lambda k: out["difference"][k][2])
        note = (f"quality within {band} of {levels[0]} up to {levels[max(good)]}, but memorization does not fall "
                f"by its interval, with at least {verdicts.MIN_POSITIVES} samples changing label, at any such setting")
        bad_falls = [k for k in falls if k not in good]
        if bad_falls:
            k = bad_falls[0]
            note += f"; it falls from {levels[k]} on, where quality is off ({out['quality_reason'][k]})"
    else:
        i = 1
        if len(levels) == 2:
            note = f"quality leaves the {band} band at {levels[1]} ({out['quality_reason'][1]})"
            if falls:
                note += ", although memorization falls by its interval"
        else:
            note = (f"quality leaves the {band} band at every setting after {levels[0]}, from {levels[1]} on "
                    f"({out['quality_reason'][1]})")
            if falls:
                note += f"; memorization falls (by its interval) from {levels[falls[0]]} on"
    pairs = np.stack([mem[0], mem[i]], axis=1)
    f = verdicts.finding(claim, f"memorized fraction at {levels[i]} − at {levels[0]} (paired)", _difference, pairs,
                         threshold=0.0, direction="below", n_positive=n_pos, n_negative=n_neg, seed=seed,
                         n_boot=n_boot)
    if n_pos < verdicts.MIN_POSITIVES:
        note = f"only {n_pos} memorized samples at {levels[0]} (fewer than {verdicts.MIN_POSITIVES}); " + note
    elif star is None and not good:
        f = dataclasses.replace(f, verdict="does not hold")
    elif star is None and f.verdict == "holds":  # below 0, but on fewer than MIN_POSITIVES changed samples
        f = dataclasses.replace(f, verdict="inconclusive")
        note = f"the fall rests on {out['changed'][i]} samples whose label changed; " + note
    best = min(good, key=lambda k: (out["fraction"][k], k)) if good else None
    out.update(star=star, best=best, reported=i, finding=dataclasses.replace(f, note=note))
    return out


def _qual_change(q0: dict[str, float], q: dict[str, float]) -> str:
    return ", ".join(f"{k} {_fmt(q0[k])} → {_fmt(q[k])}" for k in ("precision", "recall", "distance"))


def run(config, ctx: Context) -> dict[str, Any]:
    """Both interventions; writes ``mitigation_tradeoff.png`` and ``mitigation.npz``; returns metrics.

    Metrics: ``lambdas`` (relative), ``lambda_unit``, ``lambda_raw``, ``labels`` (the kind) and
    ``n_samples``; per λ ``memorized_fraction``, ``memorized_interval`` (Wilson 95 %),
    ``memorized_difference`` (``[effect, low, high]`` against λ = 0, paired bootstrap),
    ``quality`` (``{precision, recall, distance}``), ``quality_within``, ``mean_flipd`` and
    ``fraction_flipd_above_D``; ``lambda_star`` (None: none); ``embedding`` (the same per setting
    ``before``/``after``, plus ``flipd_late_before/after``, ``late_t``, ``guidance``); ``label``
    (`common.LabelCalibration`) and ``label_text``; ``findings``; ``config``; ``figures``;
    ``reading``.
    """
    cfg, icfg = config.mitigation, config.images
    setup = digits_setup(icfg, ctx)
    model = setup.model
    if not model.num_classes:
        raise ValueError("mitigation needs a class-conditional model; digits_setup returned an unconditional one.")
    cal = label_calibration(setup, icfg, ctx)
    sde, shape, n = model.sde, tuple(model.event_shape), int(cfg.n_samples)
    dim = int(np.prod(shape))
    steps, t0, probes = int(cfg.sample_steps), float(cfg.t0), int(cfg.num_probes)
    batch, tol = int(icfg.batch), float(cfg.quality_tolerance)
    guidance = float(cfg.cfg_guidance) if cfg.labels != "null" else 1.0
    ts = sampling.time_grid(sde, steps)
    k_base = jax.random.fold_in(jax.random.key(ctx.seed), 4)
    k_prior, k_probe, k_eprior, k_eprobe, k_read = jax.random.split(k_base, 5)
    prior_keys, probe_keys = jax.random.split(k_prior, n), jax.random.split(k_probe, n)
    read_keys = jax.random.split(k_read, n)
    labels = sample_labels(setup, cfg.labels, n, ctx.seed)
    read_probes = int(cfg.readout_probes)
    reference = reference_set(setup, labels, ctx.seed)

    def memorized(xs):
        calib, mem, near = memorization_labels(xs, setup, icfg, cal.threshold)
        return np.asarray(calib), np.asarray(mem, bool), np.asarray(near)

    def named_stats(xs, near, labs):
        """(fraction whose nearest distinct training image is the named one, median distance to it)."""
        idx = _named_index(setup, labs)
        if idx is None:
            return float("nan"), float("nan")
        d = np.linalg.norm((xs - setup.unique_x[idx]).reshape(xs.shape[0], -1), axis=1)
        return float(np.mean(near == idx)), float(np.median(d))

    # ---------------------------------------------------------------- 1. LID-guided sampling
    # One compiled program for every λ (traced): DDIM with ε̃ = ε_cfg − σ·λ·∇F, as
    # sample.lid_guided_eps_fn but with F of the conditional model, written out so that the same
    # pass returns ‖s_cfg‖/‖∇F‖ at every state (the unit of λ, from the λ = 0 run), and ending with
    # the samples' FLIPD(x | c) readout at t0.
    def guided_point(params, k_pr, k_pb, k_rd, label, lam):
        eps_fn = _cfg_eps(model, params, label, guidance)
        cond_score = model.score_fn_for(label, params=params)
        term = jax.grad(sampling.state_flipd, argnums=1)

        def step_eps(x, t):
            e = eps_fn(x, t)
            g = term(cond_score, x, t, k_pb, sde=sde, t0_min=t0, num_probes=probes)
            sigma = sde.marginal_coefs(t)[1]
            ratio = jnp.linalg.norm(e) / sigma / jnp.maximum(jnp.linalg.norm(g), 1e-30)
            return jnp.where(lam == 0, e, e - sigma * lam * g), ratio

        x, ratios = sampling.ddim(step_eps, k_pr, shape, sde=sde, ts=ts, has_aux=True)
        f = lid.flipd(cond_score, x, k_rd, t0=t0, sde=sde, trace="hutchinson", num_probes=read_probes)
        return x, ratios, f

    guided_fn = _mapped(guided_point, batch)
    lambdas = [float(v) for v in cfg.lambdas]
    if not lambdas or lambdas[0] != 0.0 or any(b <= a for a, b in zip(lambdas, lambdas[1:])):
        raise ValueError(f"lambdas must start at 0 and increase, got {tuple(cfg.lambdas)}.")

    def draw(lam_raw: float, tag: str):
        ctx.log(f"[mitigation] {tag}: {n} LID-guided CFG samples ({cfg.labels} labels, w={guidance:g}, "
                f"{steps} DDIM steps)")
        with ctx.timed("mitigation_guided"):
            x, r, f = guided_fn(model.params, prior_keys, probe_keys, read_keys, labels,
                                np.full(n, lam_raw, np.float32))
        return np.asarray(x, np.float32), np.asarray(r, np.float32), np.asarray(f, np.float32)

    base = draw(0.0, "λ = 0 (also measures the unit of λ)")
    finite = base[1][np.isfinite(base[1])]
    unit = float(np.median(finite)) if finite.size else 1.0
    samples, calibs, mems, nears, flipds, qual = [], [], [], [], [], []
    for lam in lambdas:
        xs, _, fl = base if lam == 0 else draw(lam * unit, f"λ = {lam:g} (raw {lam * unit:.3g})")
        calib, mem, near = memorized(xs)
        samples.append(xs), calibs.append(calib), mems.append(mem), nears.append(near), flipds.append(fl)
        with ctx.timed("mitigation_quality"):
            qual.append(_quality(reference, xs, cfg.quality_k))
    named = [named_stats(x, nr, labels) for x, nr in zip(samples, nears)]
    names = [f"λ={lam:g}" for lam in lambdas]
    claim = (f"LID guidance lowers the memorized fraction at a λ where quality stays within {tol:.0%} of λ=0 "
             f"({cfg.labels} labels)")
    guided = judge(names, np.stack(mems), qual, claim=claim, tolerance=tol, seed=ctx.seed)

    # ---------------------------------------------------------------- 2. class-embedding optimisation
    ne = int(cfg.embedding_samples)
    e_labels = sample_labels(setup, cfg.labels, ne, ctx.seed)
    j = int(np.argmin(np.abs(np.asarray(ts) - cfg.late_t)))
    j = min(max(j, 1), steps - 1)  # at least one step on either side of the optimisation
    t_late = float(ts[j])
    lr, n_opt = float(cfg.embedding_lr), int(cfg.embedding_steps)

    def embedding_point(params, k_pr, k_pb, label):
        e0 = _embedding_row(params, label)
        eps_with = lambda e: _cfg_eps(model, _with_row(params, label, e), label, guidance)  # noqa: E731
        x_late = sampling.ddim(eps_with(e0), k_pr, shape, sde=sde, ts=ts[: j + 1], denoise=False)

        def objective(e):
            score = model.score_fn_for(label, params=_with_row(params, label, e))  # FLIPD(x | e)
            return sampling.state_flipd(score, x_late, ts[j], k_pb, sde=sde, t0_min=t0, num_probes=probes)

        scale = lr * jnp.linalg.norm(e0)

        def ascent(e, i):  # n_opt + 1 evaluations, the last without update: fs[-1] = F(e*)
            f, g = jax.value_and_grad(objective)(e)
            step = scale * g / jnp.maximum(jnp.linalg.norm(g), 1e-30)
            return jnp.where(i < n_opt, e + step, e), f

        e_star, fs = jax.lax.scan(ascent, e0, jnp.arange(n_opt + 1))
        finish = lambda e: sampling.ddim(eps_with(e), None, shape, sde=sde, ts=ts[j:], x_init=x_late)  # noqa: E731
        out = jax.vmap(finish)(jnp.stack([e0, e_star]))
        return out[0], out[1], fs[0], fs[-1]

    e_prior, e_probe = jax.random.split(k_eprior, ne), jax.random.split(k_eprobe, ne)
    ctx.log(f"[mitigation] class embedding: {ne} CFG samples ({cfg.labels} labels, w={guidance:g}), {n_opt} ascent "
            f"steps at t={t_late:.3f}")
    with ctx.timed("mitigation_embedding"):
        before, after, f_before, f_after = _mapped(embedding_point, batch)(model.params, e_prior, e_probe, e_labels)
    before, after = np.asarray(before, np.float32), np.asarray(after, np.float32)
    calib_b, mem_b, near_b = memorized(before)
    calib_a, mem_a, near_a = memorized(after)
    named_b, named_a = named_stats(before, near_b, e_labels), named_stats(after, near_a, e_labels)
    e_reference = reference_set(setup, e_labels, ctx.seed)
    with ctx.timed("mitigation_quality"):
        q_b, q_a = _quality(e_reference, before, cfg.quality_k), _quality(e_reference, after, cfg.quality_k)
    emb = judge(["the trained embedding", "the FLIPD-optimised embedding"], np.stack([mem_b, mem_a]), [q_b, q_a],
                claim=f"optimising the label embedding for FLIPD lowers the memorized fraction with quality within "
                      f"{tol:.0%} ({cfg.labels} labels)", tolerance=tol, seed=ctx.seed)

    findings = [guided["finding"], emb["finding"]]
    star = guided["star"]
    metrics: dict[str, Any] = {
        "n_samples": n,
        "labels": cfg.labels,
        "guidance": guidance,
        "lambdas": lambdas,
        "lambda_unit": unit,
        "lambda_raw": [lam * unit for lam in lambdas],
        "memorized_fraction": guided["fraction"],
        "memorized_count": guided["count"],
        "memorized_interval": guided["fraction_interval"],
        "memorized_difference": guided["difference"],
        "quality": qual,
        "quality_within": guided["quality_within"],
        "quality_reason": guided["quality_reason"],
        "lambda_star": None if star is None else lambdas[star],
        "lambda_reported": lambdas[guided["reported"]],
        "lambda_best": None if guided["best"] is None else lambdas[guided["best"]],
        "memorized_changed": guided["changed"],
        "reference_n": int(reference.shape[0]),
        "named_nearest_fraction": [v[0] for v in named],
        "named_median_distance": [v[1] for v in named],
        "training_nn_distance": _training_nn_distance(setup.unique_x),
        "mean_flipd": [float(np.nanmean(f)) for f in flipds],
        "fraction_flipd_above_D": [float(np.mean(f > dim)) for f in flipds],
        "ambient_dim": dim,
        "t0": t0,
        "quality_tolerance": tol,
        "embedding": {
            "n_samples": ne,
            "memorized_fraction_before": emb["fraction"][0],
            "memorized_fraction_after": emb["fraction"][1],
            "memorized_interval_before": emb["fraction_interval"][0],
            "memorized_interval_after": emb["fraction_interval"][1],
            "memorized_difference": emb["difference"][1],
            "memorized_changed": emb["changed"][1],
            "reference_n": int(e_reference.shape[0]),
            "quality_before": q_b,
            "quality_after": q_a,
            "quality_within": emb["quality_within"][1],
            "named_nearest_fraction_before": named_b[0], "named_nearest_fraction_after": named_a[0],
            "named_median_distance_before": named_b[1], "named_median_distance_after": named_a[1],
            "flipd_late_before": float(np.nanmean(f_before)),
            "flipd_late_after": float(np.nanmean(f_after)),
            "late_t": t_late,
            "guidance": guidance,
        },
        "label": dataclasses.asdict(cal),
        "label_text": cal.text(),
        "findings": [f.asdict() for f in findings],
        "config": dataclasses.asdict(cfg),
    }
    np.savez(
        ctx.path("mitigation.npz"), lambdas=np.asarray(lambdas, np.float32), lambda_unit=np.float32(unit),
        unit_ratios=base[1], labels=labels, samples=np.stack(samples), calibrated_l2=np.stack(calibs),
        memorized=np.stack(mems), nearest=np.stack(nears), flipd=np.stack(flipds),
        prior_key_data=np.asarray(jax.random.key_data(prior_keys)),
        probe_key_data=np.asarray(jax.random.key_data(probe_keys)),
        readout_key_data=np.asarray(jax.random.key_data(read_keys)),
        threshold=np.float32(cal.threshold),
        embedding_labels=e_labels, embedding_samples_before=before, embedding_samples_after=after,
        embedding_calibrated_l2_before=calib_b, embedding_calibrated_l2_after=calib_a,
        embedding_memorized_before=mem_b, embedding_memorized_after=mem_a,
        embedding_flipd_late_before=np.asarray(f_before, np.float32),
        embedding_flipd_late_after=np.asarray(f_after, np.float32),
        embedding_prior_key_data=np.asarray(jax.random.key_data(e_prior)),
    )
    _figure(ctx.path("mitigation_tradeoff.png"), metrics)
    metrics["figures"] = ["mitigation_tradeoff.png"]
    metrics["reading"] = _reading(metrics, findings)
    return metrics


def _named_index(setup, labels: np.ndarray) -> np.ndarray | None:
    """Index into the distinct training images of the image each per-image label names (None when
    some label is not a per-image label)."""
    where = {int(lab): i for i, lab in enumerate(setup.unique_labels) if lab >= setup.digit_classes}
    if not all(int(lab) in where for lab in labels):
        return None
    return np.asarray([where[int(lab)] for lab in labels])


def _training_nn_distance(x: np.ndarray) -> float:
    """Median distance from a distinct training image to its nearest other one (the scale of "a copy")."""
    if x.shape[0] < 2:
        return float("nan")
    d, _ = lid.knn(np.asarray(x, np.float32).reshape(x.shape[0], -1), k=1)
    return float(np.median(np.asarray(d)[:, 0]))


def _quality(real: np.ndarray, fake: np.ndarray, k: int) -> dict[str, float]:
    """Precision, recall (kNN, ``k``) and energy distance of the finite samples against ``real``."""
    ok = np.all(np.isfinite(fake.reshape(fake.shape[0], -1)), axis=1)
    if ok.sum() <= k:
        return {"precision": float("nan"), "recall": float("nan"), "distance": float("nan")}
    pr = quality.knn_precision_recall(real, fake[ok], k=int(k))
    return {"precision": float(pr["precision"]), "recall": float(pr["recall"]),
            "distance": float(quality.energy_distance(real, fake[ok]))}


def _fmt(v: float, pct: bool = False) -> str:
    if v != v:
        return "n/a"
    return f"{100 * v:.1f}%" if pct else f"{v:.2f}"


def _reading(m: dict[str, Any], findings) -> str:
    lams, n, dim = m["lambdas"], m["n_samples"], m["ambient_dim"]
    g, e = findings
    per = "; ".join(
        f"λ={lam:g}: memorized {m['memorized_count'][i]}/{n} [{_fmt(m['memorized_interval'][i][0], True)}, "
        f"{_fmt(m['memorized_interval'][i][1], True)}], precision {_fmt(m['quality'][i]['precision'])}, recall "
        f"{_fmt(m['quality'][i]['recall'])}, energy distance {_fmt(m['quality'][i]['distance'])}, FLIPD > D in "
        f"{_fmt(m['fraction_flipd_above_D'][i], True)}" for i, lam in enumerate(lams))
    star, best = m["lambda_star"], m["lambda_best"]
    lines = [
        f"Memorization label: {m['label_text']}.",
        f"LID-guided sampling, {n} CFG samples (w={m['guidance']:g}) per λ with the {m['labels']} labels, the same noises "
        f"at every λ; λ in units of {m['lambda_unit']:.3g} (the median ‖s‖/‖∇FLIPD(x|c)‖ along unguided "
        f"trajectories); quality against {m['reference_n']} held-out digits of the labels' classes; D = {dim}: {per}.",
        g.text(),
        (f"λ* = {star:g}: the smallest λ at which memorization falls by its interval while quality stays within "
         f"{m['quality_tolerance']:.0%} of λ=0." if star is not None else
         f"No λ of the grid lowers memorization by its interval with quality within {m['quality_tolerance']:.0%} "
         f"of λ=0 (reported: λ={m['lambda_reported']:g})."),
    ]
    if best is not None and best > 0:
        i = lams.index(best)
        d = m["memorized_difference"][i]
        lines.append(f"Of the λ with quality within the band, λ={best:g} has the lowest memorized fraction, "
                     f"{d[0]:+.2f} [{d[1]:+.2f}, {d[2]:+.2f}] against λ=0 ({m['memorized_changed'][i]} samples change "
                     "label).")
    if m["named_nearest_fraction"][0] == m["named_nearest_fraction"][0]:  # per-image labels
        lines.append(
            "Nearest distinct training image = the named one: "
            + ", ".join(f"λ={lam:g}: {_fmt(m['named_nearest_fraction'][i], True)} at median distance "
                        f"{_fmt(m['named_median_distance'][i])}" for i, lam in enumerate(lams))
            + f" (distinct training images lie {_fmt(m['training_nn_distance'])} from their nearest other, median): "
            "samples the label no longer calls memorized can still be near-copies of the named image.")
    emb = m["embedding"]
    ne = emb["n_samples"]
    lines.append(
        f"Class-embedding optimisation ({ne} CFG samples, w={emb['guidance']:g}, at t={emb['late_t']:.3f}; "
        f"memorization label as above): mean FLIPD at that step {_fmt(emb['flipd_late_before'])} → "
        f"{_fmt(emb['flipd_late_after'])}; memorized {_fmt(emb['memorized_fraction_before'], True)} → "
        f"{_fmt(emb['memorized_fraction_after'], True)}; {_qual_change(emb['quality_before'], emb['quality_after'])}"
        + (f"; nearest training image = the named one {_fmt(emb['named_nearest_fraction_before'], True)} → "
           f"{_fmt(emb['named_nearest_fraction_after'], True)}, median distance to it "
           f"{_fmt(emb['named_median_distance_before'])} → {_fmt(emb['named_median_distance_after'])}"
           if emb["named_nearest_fraction_before"] == emb["named_nearest_fraction_before"] else "") + ". "
        + e.text())
    return " ".join(lines)


def _figure(path, m: dict[str, Any]) -> None:
    from mmh_jax._plotting import pyplot

    plt = pyplot()
    lams = np.asarray(m["lambdas"], float)
    pos = lams[lams > 0]
    lin = float(pos.min()) if pos.size else 1.0
    mf = np.asarray(m["memorized_fraction"])
    ci = np.asarray(m["memorized_interval"], float)
    q = {k: np.asarray([v[k] for v in m["quality"]], float) for k in ("precision", "recall", "distance")}
    ok = np.asarray(m["quality_within"], bool)
    tol = m["quality_tolerance"]
    fig = plt.figure(figsize=(12.0, 6.4))
    gs = fig.add_gridspec(2, 3, width_ratios=[1, 1, 0.8])
    axes = [fig.add_subplot(gs[0, 0])]
    axes += [fig.add_subplot(gs[0, 1], sharex=axes[0]), fig.add_subplot(gs[1, 0], sharex=axes[0]),
             fig.add_subplot(gs[1, 1], sharex=axes[0])]
    ax_m, ax_q, ax_d, ax_f = axes
    for ax in axes:
        ax.set_xscale("symlog", linthresh=lin, linscale=0.5)
        ax.set_xticks(lams, [f"{v:g}" for v in lams])
        ax.minorticks_off()
        ax.set_xlabel(f"λ (units of {m['lambda_unit']:.3g}; symlog)", fontsize=8)
        ax.tick_params(labelsize=6)
        for lam, good in zip(lams, ok):
            if not good:  # λ = 0 is the reference, always within
                ax.axvspan(lam * 0.93, lam * 1.07, color="0.88", zorder=0)
    ax_m.errorbar(lams, mf, yerr=np.abs(np.stack([mf - ci[:, 0], ci[:, 1] - mf])), fmt="o-", color="tab:red",
                  capsize=3, label="memorized (Wilson 95%)")
    if m["lambda_star"] is not None:
        ax_m.axvline(m["lambda_star"], color="k", ls=":", label=f"λ* = {m['lambda_star']:g}")
    ax_m.set_ylim(-0.03, 1.03)
    ax_m.set_ylabel("fraction memorized", fontsize=8)
    ax_m.legend(fontsize=7)
    ax_m.set_title(f"memorization ({m['labels']} labels, n={m['n_samples']} per λ)", fontsize=9)
    for k, c in (("precision", "tab:blue"), ("recall", "tab:green")):
        ax_q.plot(lams, q[k], "o-", color=c, label=k)
        ax_q.axhline((1 - tol) * q[k][0], color=c, ls="--", lw=0.8)
    ax_q.set_ylim(-0.03, 1.03)
    ax_q.legend(fontsize=7)
    ax_q.set_title(f"kNN precision/recall vs held-out (dashed: {1 - tol:g}× λ=0)", fontsize=9)
    ax_d.plot(lams, q["distance"], "o-", color="tab:purple")
    ax_d.axhline(q["distance"][0] + tol * abs(q["distance"][0]), color="tab:purple", ls="--", lw=0.8)
    ax_d.set_title(f"energy distance to held-out digits (dashed: +{tol:.0%})", fontsize=9)
    ax_f.plot(lams, m["fraction_flipd_above_D"], "o-", color="0.3", label=f"fraction FLIPD > D = {m['ambient_dim']}")
    ax_f.set_ylim(-0.03, 1.03)
    ax_f2 = ax_f.twinx()
    ax_f2.plot(lams, m["mean_flipd"], "d:", color="tab:orange", label="mean FLIPD (right)")
    ax_f2.axhline(m["ambient_dim"], color="tab:orange", lw=0.6)
    ax_f2.tick_params(labelsize=7)
    h1, l1 = ax_f.get_legend_handles_labels()
    h2, l2 = ax_f2.get_legend_handles_labels()
    ax_f.legend(h1 + h2, l1 + l2, fontsize=7, loc="center left")
    ax_f.set_title(f"FLIPD(x|c) of the samples at t0={m['t0']:g} (grey: quality off)", fontsize=9)
    ax_e = fig.add_subplot(gs[:, 2])
    e = m["embedding"]
    names = ["memorized", "precision", "recall"]
    b = [e["memorized_fraction_before"], e["quality_before"]["precision"], e["quality_before"]["recall"]]
    a = [e["memorized_fraction_after"], e["quality_after"]["precision"], e["quality_after"]["recall"]]
    x = np.arange(3)
    err = lambda v, iv: np.abs(np.array([[v - iv[0]], [iv[1] - v]]))  # noqa: E731
    ax_e.bar(x - 0.18, b, 0.36, label="trained embedding", color="0.6")
    ax_e.bar(x + 0.18, a, 0.36, label="optimised for FLIPD", color="tab:purple")
    ax_e.errorbar([-0.18], [b[0]], yerr=err(b[0], e["memorized_interval_before"]), fmt="none", color="k", capsize=3)
    ax_e.errorbar([0.18], [a[0]], yerr=err(a[0], e["memorized_interval_after"]), fmt="none", color="k", capsize=3)
    ax_e.set_xticks(x, names)
    ax_e.set_ylim(0, 1.05)
    ax_e.legend(fontsize=7, loc="upper right")
    ax_e.set_title(f"label embedding optimised at t={e['late_t']:.2f}\nenergy distance "
                   f"{_fmt(e['quality_before']['distance'])} → {_fmt(e['quality_after']['distance'])}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
