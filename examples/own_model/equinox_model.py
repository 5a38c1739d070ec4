"""Bring your own model, Equinox: FLIPD of an eqx.Module ε-network, and its gradient.

An Equinox module is a pytree, and this one is written for ONE example, ``model(x[D], t) -> [D]``,
which is what the estimators call: ``score_from_eps(model, sde)`` is the score, no wrapper needed.

Use ``eqx.filter_jit`` / ``eqx.filter_grad``, not ``jax.jit`` / ``jax.grad``, on functions that take
the model: besides its arrays it holds leaves that are not arrays (here the MLP's activation
function, ``jax.nn.silu``), and ``jax.jit(f)(model, ...)`` fails on them: "TypeError: Error
interpreting argument to <function f> as an abstract array. The problematic value is of type
<class 'jaxlib._jax.PjitFunction'> and was passed to the function at path model.mlp.activation".
The filtered transforms trace the array leaves and treat the rest as static. Or split the model
yourself with ``eqx.partition`` and put it back with ``eqx.combine`` inside plain ``jax.jit`` (shown
last).

Run: ``python examples/own_model/equinox_model.py`` (a few seconds on a CPU).
"""

import equinox as eqx
import jax
import jax.numpy as jnp

from mmh_jax import lid
from mmh_jax.adapters import score_from_eps
from mmh_jax.sde import VPSDE


class EpsMLP(eqx.Module):
    """ε̂(x, t) for one example: x (D,), t a scalar -> (D,)."""

    mlp: eqx.nn.MLP

    def __init__(self, dim: int, width: int, *, key):
        self.mlp = eqx.nn.MLP(dim + 1, dim, width, depth=2, activation=jax.nn.silu, key=key)

    def __call__(self, x, t):
        return self.mlp(jnp.concatenate([x, jnp.reshape(t, (1,))]))


vp = VPSDE()
model = EpsMLP(dim=2, width=64, key=jax.random.key(0))
angles = jnp.linspace(0.0, 2.0 * jnp.pi, 8, endpoint=False)
xs = jnp.stack([jnp.cos(angles), jnp.sin(angles)], axis=1)  # 8 points on the unit circle


def mean_flipd(model, xs, t0=0.05):
    score_fn = score_from_eps(model, vp)  # single example already: s(x, t) = -ε̂(x, t)/σ(t)
    return jnp.mean(jax.vmap(lambda x: lid.flipd(score_fn, x, t0=t0, sde=vp))(xs))


value = eqx.filter_jit(mean_flipd)(model, xs)
grads = eqx.filter_jit(eqx.filter_grad(mean_flipd))(model, xs)  # a model-shaped pytree of gradients

# The same with plain jax.jit: pass the arrays, keep the rest (the activation) out of the trace.
params, static = eqx.partition(model, eqx.is_array)
value_split = jax.jit(lambda params, xs: mean_flipd(eqx.combine(params, static), xs))(params, xs)

leaves = jax.tree.leaves(eqx.filter(grads, eqx.is_array))
norm = jnp.sqrt(sum(jnp.sum(g**2) for g in leaves))
print(f"mean FLIPD at t0=0.05: {float(value):.3f} (eqx.filter_jit), {float(value_split):.3f} "
      f"(partition + jax.jit); gradient norm {float(norm):.3f} over {len(leaves)} arrays")

assert jnp.isfinite(value) and jnp.allclose(value, value_split, atol=1e-5), (value, value_split)
assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves) and float(norm) > 0, norm
