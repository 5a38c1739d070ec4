"""Flax (Linen) networks; parameters are explicit pytrees passed to ``apply``.

[`ScoreMLP`][mmh_jax.models.ScoreMLP] is an ε-prediction MLP for flat data, ``UNet`` (``mmh_jax.models.unet``)
a small U-Net for images with optional class conditioning, [`Flow`][mmh_jax.models.Flow]
(``mmh_jax.models.flows``) a
rational-quadratic spline normalizing flow for vector data (``"flow"``; ``"lidl"`` is an ensemble
of them, one per noise scale); [`as_score_fn`][mmh_jax.models.as_score_fn] /
[`as_eps_fn`][mmh_jax.models.as_eps_fn] bind a single-example
``apply`` to its parameters, giving the functions that [`mmh_jax.lid`][mmh_jax.lid] estimators take.
"""

from mmh_jax.models.adapters import as_eps_fn, as_score_fn
from mmh_jax.models.flows import Flow, make_nll_loss
from mmh_jax.models.score_mlp import TIME_CONDITIONINGS, ScoreMLP, sinusoidal_embedding
from mmh_jax.models.unet import UNet

__all__ = ["FLOW_MODELS", "KINDS", "MODELS", "TIME_CONDITIONINGS", "Flow", "ScoreMLP", "as_eps_fn", "as_score_fn", "kind_of", "make_model",
           "make_nll_loss", "sinusoidal_embedding"]

#: Model names accepted by ``make_model`` and ``mmh-jax train --model``.
MODELS = ("mlp", "unet", "flow", "lidl")

#: The density models among them (a flow; LIDL's ensemble of flows, one per noise scale).
FLOW_MODELS = ("flow", "lidl")

#: The kinds of trained run, saved as ``config["kind"]``: an ε-network of a diffusion, or normalizing flow(s).
KINDS = ("diffusion", "flow")


def kind_of(name: str) -> str:
    """The kind of run (one of ``KINDS``) that trains model ``name``: ``"flow"`` for ``FLOW_MODELS``.

    Args:
      name: a name of ``MODELS``.

    Returns:
      ``"flow"`` or ``"diffusion"``.

    Examples:
      >>> kind_of("unet"), kind_of("lidl")
      ('diffusion', 'flow')
    """
    return "flow" if name in FLOW_MODELS else "diffusion"


def _hashable(value):
    """Lists (as a JSON config holds them) as tuples, so that a module built from them is hashable."""
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    return value


def make_model(name: str, *, num_classes: int | None = None, **kwargs):
    """Build a network by name: ``"mlp"`` (vectors, or small images with ``event_ndim=3``), ``"unet"`` (images), or
    ``"flow"``/``"lidl"`` (a [`Flow`][mmh_jax.models.Flow]; pass ``dim``).

    Args:
      name: one of ``MODELS``: ``"mlp"`` ([`ScoreMLP`][mmh_jax.models.ScoreMLP]), ``"unet"``
        (`mmh_jax.models.unet.UNet`), ``"flow"`` or ``"lidl"`` ([`Flow`][mmh_jax.models.Flow]; LIDL trains
        one per noise scale).
      num_classes: K for a class-conditional ε-network (``"mlp"``, ``"unet"``); None (or 0 for
        ``"mlp"``): unconditional.
      **kwargs: attributes of the network, e.g. ``hidden=256`` (``ScoreMLP``), ``channels=64``
        (``UNet``), ``dim=2`` (``Flow``, required). Lists become tuples (a hashable module).

    Returns:
      an unbound Flax module; nothing is initialised (parameters come from its ``init``).

    Raises:
      ValueError: an unknown ``name``, or ``num_classes`` for a flow.
      TypeError: a keyword the network does not have (raised by the module's constructor).

    Examples:
      >>> make_model("mlp", hidden=32).hidden
      32
      >>> make_model("mlp", num_classes=0).num_classes is None  # 0 classes: unconditional
      True
      >>> flow = make_model("lidl", dim=3, num_coupling=2)
      >>> type(flow).__name__, flow.dim, flow.num_coupling
      ('Flow', 3, 2)
      >>> make_model("gan")
      Traceback (most recent call last):
      ...
      ValueError: model must be one of ('mlp', 'unet', 'flow', 'lidl'), got 'gan'.
    """
    kwargs = {k: _hashable(v) for k, v in kwargs.items()}
    if name == "mlp":
        return ScoreMLP(num_classes=num_classes or None, **kwargs)
    if name == "unet":
        return UNet(num_classes=num_classes, **kwargs)
    if name in FLOW_MODELS:
        if num_classes:
            raise ValueError(f"model {name!r} is unconditional; class-conditional training needs model 'unet' or 'mlp'.")
        return Flow(**kwargs)
    raise ValueError(f"model must be one of {MODELS}, got {name!r}.")
