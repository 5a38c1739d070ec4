"""Training normalizing flows with ``mmh-jax train --model flow|lidl``: the flow-specific pieces.

Both models are an ensemble of [`mmh_jax.models.Flow`][mmh_jax.models.Flow] trained as one (``vmap`` over
members, [`mmh_jax.train.make_ensemble_step`][mmh_jax.train.make_ensemble_step]): member m maximises the
likelihood of the data perturbed
by ``deltas[m]``·N(0, I) (fresh noise at every step), with the same batches as the other members and
the key ``fold_in(step key, m)``.

- ``lidl``: one flow per noise scale, ``deltas`` default geomspace(0.01, 0.1, 8);
  [`mmh_jax.lid.lidl`][mmh_jax.lid.lidl] reads LID from the slope of their log-densities.
- ``flow``: a single flow (an ensemble of one), trained at ``deltas`` default (0.01,): a little
  noise keeps the likelihood bounded on data with point masses and thin pieces, and sets the
  scale below which the Jacobian's singular values count as collapsed directions.

Noise scales are in the data's units. The flow standardises its input with the training data's
per-coordinate mean and standard deviation (``flow_stats`` in the run's config), so one architecture
serves data of any scale.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mmh_jax import lid, train
from mmh_jax.models import Flow, make_model, make_nll_loss

__all__ = ["DEFAULT_DELTAS", "FLOW_PRESETS", "config_entries", "init_params", "init_state", "make_flow",
           "resolve_deltas"]

#: Noise scales of each model when ``deltas`` is None.
DEFAULT_DELTAS: dict[str, tuple[float, ...]] = {
    "lidl": lid.LIDL_DELTAS,
    "flow": (0.01,),
}

#: ``mmh-jax train --model flow|lidl`` presets (instead of the diffusion presets).
FLOW_PRESETS: dict[str, dict[str, Any]] = {
    "quick": {"steps": 300, "n": 4000, "checkpoint_every": 100, "batch_size": 128,
              "model_kwargs": {"num_coupling": 4, "hidden": 32}},
    "full": {"steps": 4000, "batch_size": 256, "learning_rate": 2e-3, "warmup_steps": 100, "ema_decay": 0.99},
}


def resolve_deltas(model: str, deltas) -> tuple[float, ...]:
    """The noise scales of a run: ``deltas`` checked, or the model's default.

    Raises:
      ValueError: a negative or non-finite delta, an empty tuple, or fewer than 2 for ``lidl``.
    """
    if deltas is None:
        return DEFAULT_DELTAS[model]
    try:
        d = tuple(float(v) for v in np.atleast_1d(np.asarray(deltas, np.float64)))
    except (TypeError, ValueError):
        raise ValueError(f"deltas must be a sequence of noise scales >= 0, got {deltas!r}.") from None
    if not d or not all(np.isfinite(v) and v >= 0 for v in d):
        raise ValueError(f"deltas must be a non-empty sequence of finite noise scales >= 0, got {deltas!r}.")
    if model == "lidl" and (len(d) < 2 or min(d) <= 0):
        raise ValueError(f"--model lidl needs at least 2 positive deltas (LID is a slope in log delta), got {d}; "
                         "e.g. --deltas 0.01 0.02 0.05 0.1.")
    return d


def config_entries(model: str, deltas, x: np.ndarray) -> dict[str, Any]:
    """``deltas`` and ``flow_stats`` (the standardisation) to store in the run's config."""
    if x.ndim != 2:
        raise ValueError(f"model {model!r} needs vector data (N, D); got an array of shape {x.shape}.")
    scale = x.std(axis=0).astype(np.float64)
    if not np.all(scale > 0):
        raise ValueError(f"model {model!r}: coordinates {np.flatnonzero(scale <= 0).tolist()} of the data are "
                         "constant; a density over them is degenerate. Drop those coordinates.")
    return {"deltas": list(resolve_deltas(model, deltas)),
            "flow_stats": {"shift": x.mean(axis=0).astype(np.float64).tolist(), "scale": scale.tolist()}}


def make_flow(config: dict[str, Any]):
    """The [`Flow`][mmh_jax.models.Flow] of a run's config (dim, standardisation, ``model_kwargs``)."""
    stats = config["flow_stats"]
    return make_model(config["model"], dim=int(config["event_shape"][0]), shift=tuple(stats["shift"]),
                      scale=tuple(stats["scale"]), **dict(config.get("model_kwargs", {})))


def init_params(flow, key, num_members: int):
    """Parameters of ``num_members`` flows stacked on a leading axis (member m from ``split(key)[m]``)."""
    keys = jax.random.split(key, num_members)
    return jax.jit(jax.vmap(lambda k: flow.init(k, jnp.zeros(flow.dim), method=Flow.log_prob)))(keys)  # one compile


def init_state(config: dict[str, Any], optimizer, key, *, ema_decay: float, abstract: bool = False):
    """``(flow, state, ensemble_step)`` of a run: fresh stacked state and the vmapped train step.

    ``abstract=True`` gives the state's shapes only (``jax.eval_shape``: nothing is initialised or
    compiled), for a run about to be restored from its checkpoint.
    """
    flow = make_flow(config)
    deltas = jnp.asarray(config["deltas"], jnp.float32)

    def init(k):
        return train.init_ensemble_state(init_params(flow, k, deltas.shape[0]), optimizer)

    state = jax.eval_shape(init, key) if abstract else init(key)
    step = train.make_loss_train_step(make_nll_loss(flow), optimizer, ema_decay=ema_decay)
    return flow, state, train.make_ensemble_step(step, {"delta": deltas})
