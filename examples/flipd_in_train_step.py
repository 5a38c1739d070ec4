"""FLIPD of a batch inside a jitted training step: a monitored metric and a differentiable regulariser.

The pattern, for any JAX training loop:

1. Write the score as a function of the parameters being trained,
   ``score_fn = lambda y, t: -eps_apply(params, y, t) / sigma(t)`` (single example, docs/design.md#api-contract).
2. Inside the loss, ``jax.vmap`` [`mmh_jax.lid.flipd`][mmh_jax.lid.flipd] over a batch, with one key per
   example split from the step's key (Hutchinson trace: cost ≈ 2 network passes per probe).
3. ``loss = dsm + lam * mean(FLIPD)``: the gradient flows through the trace (forward-over-reverse
   JVPs), so ``lam > 0`` pushes the model's LID at those points down and ``lam < 0`` pushes it up
   (e.g. away from memorization). ``lam = 0`` keeps FLIPD as a pure monitor at the cost of one
   extra forward/trace pass; wrap it in ``jax.lax.cond`` to pay it only every k steps
   (as [`mmh_jax.train.make_train_step`][mmh_jax.train.make_train_step] does with ``monitor_every``).
4. Report ``jax.lax.stop_gradient(mean FLIPD)`` as a metric.
5. ``jax.jit`` the step once, with ``lam`` and ``t0`` as ordinary (traced) arguments: changing them,
   or feeding new batches, never recompiles.

Run ``python examples/flipd_in_train_step.py`` to train a small MLP on a noisy circle with and
without the regulariser and print both FLIPD curves of training; ``tests/test_in_loop.py`` checks
that the step compiles once and that its gradient is exactly ``∇dsm + lam·∇mean FLIPD``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from mmh_jax import lid
from mmh_jax.sde import VPSDE


@functools.partial(jax.jit, static_argnames=("dim", "width", "depth"))
def init_mlp(key, dim: int = 2, width: int = 64, depth: int = 3) -> list:
    """Parameters of an ε-network MLP: ``[(W, b), ...]`` from ``dim + 1`` inputs (x, t) to ``dim``."""
    sizes = [dim + 1] + [width] * (depth - 1) + [dim]
    keys = jax.random.split(key, len(sizes) - 1)
    return [
        (jax.random.normal(k, (m, n)) / jnp.sqrt(m), jnp.zeros(n))
        for k, m, n in zip(keys, sizes[:-1], sizes[1:])
    ]


def eps_apply(params, x, t):
    """ε̂(x, t) for one example ``x`` of shape ``(D,)`` and a scalar time ``t``."""
    h = jnp.concatenate([x, jnp.reshape(t, (1,))])
    for w, b in params[:-1]:
        h = jax.nn.silu(h @ w + b)
    w, b = params[-1]
    return h @ w + b


def dsm_loss(params, x0, key, sde):
    """Denoising score matching (ε-form) over a batch ``x0`` of shape ``(B, D)``."""
    k_t, k_eps = jax.random.split(key)
    t = jax.random.uniform(k_t, (x0.shape[0],), minval=1e-3, maxval=sde.T)
    alpha, sigma = sde.marginal_coefs(t)
    eps = jax.random.normal(k_eps, x0.shape)
    xt = alpha[:, None] * x0 + sigma[:, None] * eps
    pred = jax.vmap(lambda x, s: eps_apply(params, x, s))(xt, t)
    return jnp.mean(jnp.sum((pred - eps) ** 2, axis=1))


def flipd_mean(params, xs, key, t0, sde, *, num_probes: int = 1):
    """Mean FLIPD of the model at the points ``xs`` ``(B, D)``; differentiable in ``params`` and ``t0``."""

    def score_fn(y, t):
        return -eps_apply(params, y, t) / sde.marginal_coefs(t)[1]

    keys = jax.random.split(key, xs.shape[0])
    one = lambda x, k: lid.flipd(score_fn, x, k, t0=t0, sde=sde, trace="hutchinson", num_probes=num_probes)  # noqa: E731
    return jnp.mean(jax.vmap(one)(xs, keys))


def make_train_step(optimizer: optax.GradientTransformation, sde: VPSDE, *, num_probes: int = 1):
    """``step(params, opt_state, batch, lid_batch, key, lam, t0) -> (params, opt_state, metrics)``.

    ``batch`` ``(B, D)`` trains the denoiser; FLIPD is taken at ``lid_batch`` ``(P, D)`` (the same
    batch, a fixed probe set, or generated samples). ``lam`` and ``t0`` are traced scalars.
    Metrics: ``loss`` (total), ``dsm``, ``flipd`` (mean FLIPD before the update, no gradient).
    Not jitted here: the caller jits it once (``jax.jit(make_train_step(...))``).
    """

    def loss_fn(params, batch, lid_batch, key, lam, t0):
        k_dsm, k_lid = jax.random.split(key)
        dsm = dsm_loss(params, batch, k_dsm, sde)
        flipd = flipd_mean(params, lid_batch, k_lid, t0, sde, num_probes=num_probes)
        return dsm + lam * flipd, (dsm, flipd)

    def step(params, opt_state, batch, lid_batch, key, lam, t0):
        (loss, (dsm, flipd)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, batch, lid_batch, key, lam, t0
        )
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        metrics = {"loss": loss, "dsm": dsm, "flipd": jax.lax.stop_gradient(flipd)}
        return params, opt_state, metrics

    step.loss_fn = loss_fn
    return step


@functools.partial(jax.jit, static_argnames="n")
def circle(key, n: int):
    """Points on the unit circle in R² (LID 1) with a little noise."""
    k1, k2 = jax.random.split(key)
    a = jax.random.uniform(k1, (n,), maxval=2 * jnp.pi)
    return jnp.stack([jnp.cos(a), jnp.sin(a)], axis=1) + 0.01 * jax.random.normal(k2, (n, 2))


def main(steps: int = 1500, lam: float = 0.05) -> None:
    sde = VPSDE()
    optimizer = optax.adam(2e-3)
    step = jax.jit(make_train_step(optimizer, sde, num_probes=2))
    probe = circle(jax.random.key(99), 64)
    for weight in (0.0, lam):
        params = init_mlp(jax.random.key(0))
        opt_state = optimizer.init(params)
        for s in range(steps):
            key = jax.random.fold_in(jax.random.key(1), s)
            batch = circle(jax.random.fold_in(key, 1), 256)
            params, opt_state, m = step(params, opt_state, batch, probe, key, weight, 0.05)
            if s % (steps // 5) == 0 or s == steps - 1:
                print(f"lam={weight:<5} step {s:5d}  dsm {float(m['dsm']):.3f}  FLIPD(probe) {float(m['flipd']):.2f}")
    print("compiled", step._cache_size(), "time(s) for both runs")


if __name__ == "__main__":
    main()
