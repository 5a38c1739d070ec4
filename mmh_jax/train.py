"""Training with optax: diffusion models' denoising-score-matching step, any loss, ensembles.

- [`TrainState`][mmh_jax.train.TrainState] — step, params, EMA params, optimizer state (a pytree).
- [`make_optimizer`][mmh_jax.train.make_optimizer] — AdamW with linear warm-up, cosine decay and gradient
  clipping.
- [`make_train_step`][mmh_jax.train.make_train_step] — ``train_step(state, batch, key) -> (state, metrics)``;
  the loss is the batch mean of ‖ε̂(α x₀ + σ ε, t) − ε‖², t drawn by
  [`sample_times`][mmh_jax.train.sample_times] (``uniform``:
  t ~ U(t_min, T); ``log-sigma``: log σ(t) uniform, more steps at low noise); class labels are dropped to the
  null class with probability ``cond_drop_prob`` (classifier-free guidance). Optionally FLIPD of a
  fixed probe batch is computed inside the step every ``monitor_every`` steps (``lax.cond``: no
  recompilation, and the step's cost is unchanged on the other steps).
- [`make_loss_train_step`][mmh_jax.train.make_loss_train_step] — the same optimiser/EMA update around any loss
  ``loss_fn(params, batch, key)`` (e.g. a flow's negative log-likelihood).
- [`init_ensemble_state`][mmh_jax.train.init_ensemble_state],
  [`make_ensemble_step`][mmh_jax.train.make_ensemble_step] — M models trained as one: parameters and
  optimizer states stacked on a leading member axis, the step ``vmap``-ed over it (one compile,
  one loop; member m gets the key ``fold_in(key, m)`` and its own entries of ``member_batch``).
- [`make_train_loop`][mmh_jax.train.make_train_loop] — several steps per dispatch (``lax.scan``), batches
  drawn inside the jitted loop from a device-resident data set, keys derived from the step number so that a
  resumed run repeats an uninterrupted one exactly.

Checkpointing lives in [`mmh_jax.checkpoint`][mmh_jax.checkpoint].
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from mmh_jax import adapters, lid

__all__ = ["TIME_SAMPLINGS", "TrainState", "apply_gradients", "init_ensemble_state", "init_train_state",
           "make_ensemble_step", "make_loss_train_step", "make_optimizer", "make_train_loop", "make_train_step",
           "sample_times"]

Array = jax.Array

#: How `make_train_step` draws training times: ``uniform`` t ~ U(t_min, T) (the default),
#: ``log-sigma`` log σ(t) ~ U(log σ(t_min), log σ(T)).
TIME_SAMPLINGS = ("uniform", "log-sigma")


def sample_times(key, shape, sde, *, t_min: float = 1e-3, time_sampling: str = "uniform") -> Array:
    """Training times t ∈ [t_min, T] of the denoising loss.

    - ``uniform``: t ~ U(t_min, T) (DDPM / score-SDE practice). On the VP-SDE most of these times
      have σ(t) close to 1: with the default β schedule, σ(t) > 0.5 for 84 % of them.
    - ``log-sigma``: log σ(t) ~ U(log σ(t_min), log σ(T)), σ(t) the marginal standard deviation of
      the schedule (x_t = α x₀ + σ ε), mapped back to t by ``sde.t_from_log_sigma``. On the VP-SDE
      that is closed form: B(t) = −log(1 − σ²), then t = 2B / (β_min + √(β_min² + 2(β_max − β_min)B/T)),
      the positive root of ½(β_max − β_min)t²/T + β_min t = B. With the default schedule and
      t_min = 10⁻³, σ runs from 0.0105 to 1, and half of the training times have σ < 0.1
      (uniform: 3 %), so the network learns the score near the data, where memorization (a collapse
      onto training points) shows.

    Args:
      key: a JAX random key.
      shape: the shape of the times (e.g. ``(batch,)``).
      sde: a noise schedule of [`mmh_jax.sde`][mmh_jax.sde] (e.g. [`VPSDE`][mmh_jax.sde.VPSDE]).
      t_min: smallest time, in (0, T).
      time_sampling: one of [`TIME_SAMPLINGS`][mmh_jax.train.TIME_SAMPLINGS].

    Returns:
      float32 times of ``shape`` in [t_min, T].

    Raises:
      ValueError: unknown ``time_sampling``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from mmh_jax.sde import VPSDE
      >>> t = sample_times(jax.random.key(0), (20000,), VPSDE(), time_sampling="log-sigma")
      >>> log_sigma = jnp.log(VPSDE().marginal_coefs(t)[1])
      >>> bool(jnp.abs(jnp.median(log_sigma) - jnp.log(VPSDE().marginal_coefs(1e-3)[1]) / 2) < 0.05)
      True
    """
    if time_sampling == "uniform":
        return jax.random.uniform(key, shape, minval=t_min, maxval=sde.T)
    if time_sampling != "log-sigma":
        raise ValueError(f"time_sampling must be one of {TIME_SAMPLINGS}, got {time_sampling!r}.")
    lo = jnp.log(sde.marginal_coefs(t_min)[1])
    hi = jnp.log(sde.marginal_coefs(sde.T)[1])
    log_sigma = jax.random.uniform(key, shape, minval=lo, maxval=hi)
    return jnp.clip(sde.t_from_log_sigma(log_sigma), t_min, sde.T)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TrainState:
    """Everything a training run needs to continue: a pytree of arrays.

    Attributes:
      step: int32 scalar, optimisation steps taken.
      params: the network parameters (any pytree).
      ema_params: their exponential moving average (what sampling and LID estimation use).
      opt_state: the optax state.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> state = init_train_state({"w": jnp.zeros(2)}, make_optimizer(total_steps=10))
      >>> int(state.step), jax.tree_util.tree_structure(state).num_leaves > 2
      (0, True)
    """

    step: Array
    params: Any
    ema_params: Any
    opt_state: Any


def make_optimizer(
    *,
    learning_rate: float = 1e-3,
    total_steps: int,
    warmup_steps: int = 100,
    weight_decay: float = 1e-4,
    clip_norm: float = 1.0,
) -> optax.GradientTransformation:
    """AdamW with linear warm-up to ``learning_rate``, cosine decay to 1% of it, global-norm clipping.

    lr(s) = learning_rate·s/warmup_steps during the warm-up, then
    0.01·lr + 0.99·lr·½(1 + cos(π·(s − warmup)/(total_steps − warmup))).

    Args:
      learning_rate: peak learning rate.
      total_steps: length of the schedule (≥ 1).
      warmup_steps: linear warm-up steps (clipped to total_steps − 1).
      weight_decay: AdamW's decoupled weight decay.
      clip_norm: gradients are rescaled to at most this global norm.

    Returns:
      an ``optax.GradientTransformation``.

    Raises:
      ValueError: ``total_steps < 1``.

    Reference: Loshchilov and Hutter, "Decoupled Weight Decay Regularization", arXiv 1711.05101.

    Examples:
      >>> import jax.numpy as jnp
      >>> opt = make_optimizer(learning_rate=1e-2, total_steps=100)
      >>> updates, _ = opt.update({"w": jnp.ones(2)}, opt.init({"w": jnp.zeros(2)}), {"w": jnp.zeros(2)})
      >>> updates["w"].shape
      (2,)
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}.")
    warmup_steps = max(0, min(warmup_steps, total_steps - 1))
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0 if warmup_steps else learning_rate,
        peak_value=learning_rate,
        warmup_steps=warmup_steps,
        decay_steps=total_steps,
        end_value=learning_rate * 0.01,
    )
    return optax.chain(optax.clip_by_global_norm(clip_norm), optax.adamw(schedule, weight_decay=weight_decay))


def init_train_state(params, optimizer: optax.GradientTransformation) -> TrainState:
    """A fresh state at step 0; the EMA starts at the initial parameters.

    Args:
      params: the initial parameters (any pytree of arrays).
      optimizer: the optax transformation whose state is initialised.

    Returns:
      a [`TrainState`][mmh_jax.train.TrainState].

    Examples:
      >>> import jax.numpy as jnp
      >>> s = init_train_state({"w": jnp.ones(3)}, make_optimizer(total_steps=5))
      >>> int(s.step), s.ema_params["w"].tolist()
      (0, [1.0, 1.0, 1.0])
    """
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        ema_params=jax.tree_util.tree_map(jnp.copy, params),
        opt_state=optimizer.init(params),
    )


def init_ensemble_state(params, optimizer: optax.GradientTransformation) -> TrainState:
    """A fresh state of an ensemble: ``params`` stacked on a leading member axis, one scalar step.

    The optimizer state is initialised member by member (``vmap``), so every leaf of it — Adam's
    step count included — has the member axis that [`make_ensemble_step`][mmh_jax.train.make_ensemble_step]
    maps over.

    Args:
      params: parameters with a leading member axis of length M on every leaf.
      optimizer: the optax transformation.

    Returns:
      a [`TrainState`][mmh_jax.train.TrainState] whose ``params``, ``ema_params`` and ``opt_state`` have the
      member axis.

    Examples:
      >>> import jax.numpy as jnp
      >>> s = init_ensemble_state({"w": jnp.zeros((4, 3))}, make_optimizer(total_steps=5))
      >>> s.params["w"].shape, s.step.shape
      ((4, 3), ())
    """
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        ema_params=jax.tree_util.tree_map(jnp.copy, params),
        opt_state=jax.vmap(optimizer.init)(params),
    )


def apply_gradients(state: TrainState, grads, optimizer: optax.GradientTransformation, *,
                    ema_decay: float) -> TrainState:
    """One optimiser update and EMA step (decay min(ema_decay, (1 + s)/(10 + s)) at step s).

    θ ← θ + optax update(g); θ_EMA ← decay·θ_EMA + (1 − decay)·θ; step ← step + 1.

    Args:
      state: the current [`TrainState`][mmh_jax.train.TrainState].
      grads: gradients, a pytree like ``state.params``.
      optimizer: the optax transformation of ``state.opt_state``.
      ema_decay: the EMA's target decay.

    Returns:
      the next [`TrainState`][mmh_jax.train.TrainState].

    Examples:
      >>> import jax.numpy as jnp
      >>> opt = make_optimizer(learning_rate=0.1, total_steps=10, warmup_steps=0)
      >>> s = apply_gradients(init_train_state({"w": jnp.zeros(1)}, opt), {"w": jnp.ones(1)}, opt, ema_decay=0.9)
      >>> int(s.step), bool(s.params["w"][0] < 0)
      (1, True)
    """
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # EMA warm-up (decay (1+s)/(10+s) until it reaches ema_decay): short runs are not held at init.
    s = state.step.astype(jnp.float32)
    decay = jnp.minimum(ema_decay, (1.0 + s) / (10.0 + s))
    ema = optax.incremental_update(params, state.ema_params, 1.0 - decay)
    return TrainState(step=state.step + 1, params=params, ema_params=ema, opt_state=opt_state)


def make_loss_train_step(loss_fn: Callable, optimizer: optax.GradientTransformation, *,
                         ema_decay: float = 0.999) -> Callable:
    """``train_step(state, batch, key) -> (state, metrics)`` minimising ``loss_fn(params, batch, key)``.

    The update is that of [`make_train_step`][mmh_jax.train.make_train_step] (optimizer, then EMA with
    warm-up); metrics are ``loss``, ``grad_norm`` and ``step``.

    Args:
      loss_fn: ``loss_fn(params, batch, key) -> scalar``.
      optimizer: the optax transformation.
      ema_decay: the EMA's target decay.

    Returns:
      the pure ``train_step(state, batch, key) -> (state, metrics)`` (jit it, or loop it with
      [`make_train_loop`][mmh_jax.train.make_train_loop]).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> opt = make_optimizer(learning_rate=0.1, total_steps=50, warmup_steps=0)
      >>> step = jax.jit(make_loss_train_step(lambda p, b, k: jnp.sum((p["w"] - b["x"]) ** 2), opt))
      >>> s = init_train_state({"w": jnp.zeros(2)}, opt)
      >>> for _ in range(30):
      ...     s, m = step(s, {"x": jnp.ones(2)}, jax.random.key(0))
      >>> bool(m["loss"] < 0.5)
      True
    """

    def train_step(state: TrainState, batch, key):
        loss, grads = jax.value_and_grad(loss_fn)(state.params, batch, key)
        new_state = apply_gradients(state, grads, optimizer, ema_decay=ema_decay)
        return new_state, {"loss": loss, "grad_norm": optax.tree.norm(grads), "step": new_state.step}

    return train_step


def make_ensemble_step(train_step: Callable, member_batch: dict[str, Any]) -> Callable:
    """Train M models at once: ``ensemble_step(state, batch, key)`` vmaps ``train_step`` over members.

    Args:
      train_step: a single model's ``train_step(state, batch, key) -> (state, metrics)``.
      member_batch: arrays with a leading axis of length M merged into member m's batch as their
        m-th entries (e.g. ``{"delta": deltas}``: each member's noise scale).

    ``state`` comes from [`init_ensemble_state`][mmh_jax.train.init_ensemble_state]; every member sees the
    same ``batch`` and the key ``fold_in(key, m)``, so member m follows exactly the run of
    ``train_step(state_m, {**batch, k: v[m]}, fold_in(key, m))``. Metrics get a leading member axis.

    Returns:
      the pure ``ensemble_step(state, batch, key) -> (state, metrics)``.

    Raises:
      ValueError: ``member_batch`` entries with different leading lengths.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> opt = make_optimizer(learning_rate=0.1, total_steps=10, warmup_steps=0)
      >>> one = make_loss_train_step(lambda p, b, k: jnp.sum((p["w"] - b["target"]) ** 2), opt)
      >>> step = make_ensemble_step(one, {"target": jnp.array([1.0, -1.0])})
      >>> s, m = step(init_ensemble_state({"w": jnp.zeros(2)}, opt), {}, jax.random.key(0))
      >>> m["loss"].tolist(), [bool(v) for v in jnp.sign(s.params["w"]) == jnp.array([1.0, -1.0])]
      ([1.0, 1.0], [True, True])
    """
    m = {int(jnp.shape(v)[0]) for v in member_batch.values()}
    if len(m) != 1:
        raise ValueError(f"member_batch entries must share one leading (member) axis, got shapes "
                         f"{ {k: jnp.shape(v) for k, v in member_batch.items()} }.")
    num = m.pop()
    axes = TrainState(step=None, params=0, ema_params=0, opt_state=0)

    def member(state, batch, extra, index, key):
        return train_step(state, {**batch, **extra}, jax.random.fold_in(key, index))

    vstep = jax.vmap(member, in_axes=(axes, None, 0, 0, None), out_axes=(axes, 0))

    def ensemble_step(state: TrainState, batch, key):
        return vstep(state, batch, member_batch, jnp.arange(num), key)

    return ensemble_step


def make_train_step(
    batched_eps_apply: Callable,
    optimizer: optax.GradientTransformation,
    sde,
    *,
    ema_decay: float = 0.999,
    t_min: float = 1e-3,
    num_classes: int | None = None,
    cond_drop_prob: float = 0.1,
    monitor_every: int = 0,
    monitor_t0: float = 0.05,
    time_sampling: str = "uniform",
) -> Callable:
    """Build the pure training step ``train_step(state, batch, key) -> (state, metrics)``.

    Args:
      batched_eps_apply: the network on a batch, ``batched_eps_apply(params, x, t)`` (or
        ``(params, x, t, label)`` when ``num_classes`` is set): ``x`` (B, *E), ``t`` (B,).
      optimizer: an optax transformation (see [`make_optimizer`][mmh_jax.train.make_optimizer]).
      sde: the noise schedule of [`mmh_jax.sde`][mmh_jax.sde] (e.g. [`VPSDE`][mmh_jax.sde.VPSDE]).
      ema_decay: EMA rate of ``ema_params`` (reached after a warm-up: decay = min(ema_decay,
        (1 + step)/(10 + step))).
      t_min: smallest training time.
      num_classes: class-conditional training when set; the null label is ``num_classes``.
      cond_drop_prob: probability of replacing a label by the null label (CFG training).
      monitor_every: when > 0, FLIPD (Hutchinson, 1 probe, EMA params, t0 = ``monitor_t0``) of
        ``batch["probe"]`` is computed on steps divisible by it and reported as
        ``metrics["flipd"]`` (NaN on other steps).
      time_sampling: how training times are drawn ([`sample_times`][mmh_jax.train.sample_times]): ``uniform``
        (t ~ U(t_min,
        T)) or ``log-sigma`` (log σ(t) uniform). The loss stays the unweighted ε-MSE either way, so
        ``log-sigma`` puts more of the training's weight on low noise levels.

    ``batch`` is a dict with ``x`` (B, *E), ``label`` (B,) int when conditional, and ``probe``
    (P, *E) when monitoring. Metrics: ``loss``, ``grad_norm``, ``step`` (and ``flipd``).

    The loss is denoising score matching in ε-form: the batch mean of
    ‖ε̂(α(t)x₀ + σ(t)ε, t) − ε‖², ε ~ N(0, I), t ~ [`sample_times`][mmh_jax.train.sample_times] (default
    U(t_min, T)).

    Returns:
      the pure ``train_step(state, batch, key) -> (state, metrics)``.

    Reference: Ho et al., "Denoising Diffusion Probabilistic Models", arXiv 2006.11239; Song et al.,
    arXiv 2011.13456 (the VP-SDE); Ho and Salimans, arXiv 2207.12598 (label dropout for CFG).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from mmh_jax.sde import VPSDE
      >>> batched_eps_apply = lambda p, x, t: x * p["a"]     # a one-parameter "network"
      >>> opt = make_optimizer(learning_rate=0.05, total_steps=200, warmup_steps=0)
      >>> step = jax.jit(make_train_step(batched_eps_apply, opt, VPSDE()))
      >>> s, m = step(init_train_state({"a": jnp.zeros(())}, opt), {"x": jnp.ones((8, 2))}, jax.random.key(0))
      >>> int(m["step"]), m["loss"].shape
      (1, ())
    """
    if time_sampling not in TIME_SAMPLINGS:
        raise ValueError(f"time_sampling must be one of {TIME_SAMPLINGS}, got {time_sampling!r}.")

    def loss_fn(params, x, label, key):
        k_t, k_eps, k_drop = jax.random.split(key, 3)
        b = x.shape[0]
        t = sample_times(k_t, (b,), sde, t_min=t_min, time_sampling=time_sampling)
        alpha, sigma = sde.marginal_coefs(t)
        eps = jax.random.normal(k_eps, x.shape, x.dtype)
        bshape = (b,) + (1,) * (x.ndim - 1)
        xt = alpha.reshape(bshape) * x + sigma.reshape(bshape) * eps
        if num_classes is None:
            pred = batched_eps_apply(params, xt, t)
        else:
            drop = jax.random.bernoulli(k_drop, cond_drop_prob, (b,))
            pred = batched_eps_apply(params, xt, t, jnp.where(drop, num_classes, label))
        return jnp.mean(jnp.sum((pred - eps).reshape(b, -1) ** 2, axis=1))

    def flipd_probe(params, probe, key):
        def eps_fn(y, t):
            if num_classes is None:
                return batched_eps_apply(params, y[None], t[None])[0]
            return batched_eps_apply(params, y[None], t[None], jnp.full((1,), num_classes))[0]

        score_fn = adapters.score_from_eps(eps_fn, sde)

        keys = jax.random.split(key, probe.shape[0])
        return jnp.mean(jax.vmap(lambda y, k: lid.flipd(score_fn, y, k, t0=monitor_t0, sde=sde,
                                                        trace="hutchinson"))(probe, keys))

    def train_step(state: TrainState, batch, key):
        k_loss, k_mon = jax.random.split(key)
        loss, grads = jax.value_and_grad(loss_fn)(state.params, batch["x"], batch.get("label"), k_loss)
        new_state = apply_gradients(state, grads, optimizer, ema_decay=ema_decay)
        ema = new_state.ema_params
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "step": new_state.step}
        if monitor_every > 0:
            metrics["flipd"] = jax.lax.cond(
                new_state.step % monitor_every == 0,
                lambda: flipd_probe(ema, batch["probe"], k_mon).astype(jnp.float32),
                lambda: jnp.float32(jnp.nan),
            )
        return new_state, metrics

    return train_step


def make_train_loop(
    train_step: Callable,
    *,
    batch_size: int,
    steps_per_call: int,
    unroll: bool = False,
    compiler_options: dict[str, Any] | None = None,
) -> Callable:
    """``loop(state, data, labels, probe, base_key) -> (state, metrics)``: ``steps_per_call`` steps.

    Batches are drawn uniformly with replacement inside the jitted loop from ``data`` (N, *E) (and
    ``labels`` (N,) or None); the key of step s is ``fold_in(base_key, s)``, so the run depends only
    on the seed and the step, not on how steps are grouped into calls (exact resume). Metrics are
    stacked over the steps of the call.

    Args:
      train_step: ``train_step(state, batch, key) -> (state, metrics)``.
      batch_size: examples per step (static).
      steps_per_call: steps per jitted call (static; ``lax.scan`` length).
      unroll: unroll the scan (faster on some backends, longer compile).
      compiler_options: XLA options of the loop's compile (``jax.jit``'s ``compiler_options``; None:
        XLA's defaults). ``mmh-jax train`` passes LLVM level 1 on CPU (see ``mmh_jax._compile``).

    Returns:
      the jitted ``loop(state, data, labels, probe, base_key) -> (state, metrics)``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> opt = make_optimizer(learning_rate=0.1, total_steps=20, warmup_steps=0)
      >>> step = make_loss_train_step(lambda p, b, k: jnp.mean((p["w"][None] - b["x"]) ** 2), opt)
      >>> loop = make_train_loop(step, batch_size=4, steps_per_call=5)
      >>> s, m = loop(init_train_state({"w": jnp.zeros(2)}, opt), jnp.ones((10, 2)), None, None, jax.random.key(0))
      >>> int(s.step), m["loss"].shape
      (5, (5,))
    """

    def one(state, data, labels, probe, base_key):
        key = jax.random.fold_in(base_key, state.step)
        k_idx, k_step = jax.random.split(key)
        idx = jax.random.randint(k_idx, (batch_size,), 0, data.shape[0])
        batch = {"x": data[idx]}
        if labels is not None:
            batch["label"] = labels[idx]
        if probe is not None:
            batch["probe"] = probe
        return train_step(state, batch, k_step)

    def loop(state, data, labels, probe, base_key):
        return jax.lax.scan(lambda s, _: one(s, data, labels, probe, base_key), state, None,
                            length=steps_per_call, unroll=unroll)

    return jax.jit(loop, compiler_options=compiler_options)
