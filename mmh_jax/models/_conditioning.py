"""Class conditioning shared by the ε-networks: a learned label embedding with a null class.

Classifier-free guidance (Ho & Salimans, arXiv 2207.12598): the table has ``num_classes + 1``
rows; labels ``0 … K−1`` are the classes and ``K`` (the *null label*) is the unconditional class ∅.
``label=None`` means ∅ for every example. The table is the parameter ``label_embed/embedding``
(the mitigation experiment optimises its rows).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ["label_embedding"]


def label_embedding(num_classes: int | None, features: int, label, batch: tuple[int, ...], *,
                    network: str) -> jax.Array | None:
    """The ``(*batch, features)`` embedding of ``label`` (call inside a ``nn.compact`` method).

    Args:
      num_classes: K, or ``None`` for an unconditional network (then ``label`` must be ``None``).
      features: width of the embedding.
      label: ``None`` (∅), or integer classes of shape ``()`` (shared) or ``batch``.
      batch: the batch shape of the network's input.
      network: the calling network's name, for error messages.

    Returns:
      The embedding, or ``None`` for an unconditional network.

    Raises:
      TypeError: a non-integer label.
      ValueError: a label of the wrong shape, or a label given to an unconditional network.
    """
    if num_classes is None:
        if label is not None:
            raise ValueError(f"label was given but the {network} is unconditional (num_classes=None); "
                             "set num_classes.")
        return None
    if label is None:
        label = jnp.full((), num_classes, jnp.int32)
    label = jnp.asarray(label)
    if not jnp.issubdtype(label.dtype, jnp.integer):
        raise TypeError(f"label must be integer class indices, got dtype {label.dtype}.")
    if label.shape not in ((), batch):
        raise ValueError(f"label must be None, a scalar or have the batch shape {batch} of x, "
                         f"got shape {label.shape}.")
    label = jnp.broadcast_to(label, batch)
    return nn.Embed(num_classes + 1, features, name="label_embed")(label)
