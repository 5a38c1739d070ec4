"""Bring your own model, flax.linen: FLIPD of a Linen ε-network, and its gradient in the params.

A Linen module holds no parameters: ``model.apply(params, xs, ts)`` runs it. Close over ``params``
to get the estimators' ``score_fn(x, t)``; ``single_example`` adapts a network written for
batches, ``score_from_eps`` turns ε̂ into the score. Since ``params`` is an ordinary pytree,
``jax.jit`` and ``jax.grad`` take it directly.

Run: ``python examples/own_model/linen_model.py`` (a few seconds on a CPU).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmh_jax import lid
from mmh_jax.adapters import score_from_eps, single_example
from mmh_jax.sde import VPSDE


class EpsMLP(nn.Module):
    """ε̂(xs, ts) for a batch: xs (B, D), ts (B,) -> (B, D)."""

    width: int = 64

    @nn.compact
    def __call__(self, xs, ts):
        h = jnp.concatenate([xs, ts[:, None]], axis=-1)
        h = nn.silu(nn.Dense(self.width)(h))
        h = nn.silu(nn.Dense(self.width)(h))
        return nn.Dense(xs.shape[-1])(h)


vp = VPSDE()
model = EpsMLP()
params = model.init(jax.random.key(0), jnp.zeros((1, 2)), jnp.zeros((1,)))
angles = jnp.linspace(0.0, 2.0 * jnp.pi, 8, endpoint=False)
xs = jnp.stack([jnp.cos(angles), jnp.sin(angles)], axis=1)  # 8 points on the unit circle


def flipd_batch(params, xs, t0=0.05):
    eps_fn = single_example(lambda xs, ts: model.apply(params, xs, ts))
    score_fn = score_from_eps(eps_fn, vp)
    return jax.vmap(lambda x: lid.flipd(score_fn, x, t0=t0, sde=vp))(xs)


lids = jax.jit(flipd_batch)(params, xs)
eager = flipd_batch(params, xs)  # the same without jit
grads = jax.jit(jax.grad(lambda p: jnp.mean(flipd_batch(p, xs))))(params)  # shaped like params

leaves = jax.tree.leaves(grads)
norm = jnp.sqrt(sum(jnp.sum(g**2) for g in leaves))
print(f"mean FLIPD at t0=0.05: {float(lids.mean()):.3f}; gradient norm {float(norm):.3f} "
      f"over {len(leaves)} arrays")

assert jnp.all(jnp.isfinite(lids)) and jnp.allclose(lids, eager, atol=1e-5), (lids, eager)
assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves) and float(norm) > 0, norm
