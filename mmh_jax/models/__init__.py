"""Flax (Linen) networks; parameters are explicit pytrees passed to ``apply``.

:class:`ScoreMLP` is an ε-prediction MLP for flat data, ``UNet`` (``mmh_jax.models.unet``) a small
U-Net for images with optional class conditioning; :func:`as_score_fn` / :func:`as_eps_fn` turn an
``apply`` into the single-example functions that :mod:`mmh_jax.lid` estimators take.
"""

from mmh_jax.models.adapters import as_eps_fn, as_score_fn
from mmh_jax.models.score_mlp import ScoreMLP, sinusoidal_embedding

__all__ = ["MODELS", "ScoreMLP", "as_eps_fn", "as_score_fn", "make_model", "sinusoidal_embedding"]

#: Model names accepted by ``make_model`` and ``mmh-jax train --model``.
MODELS = ("mlp", "unet")


def make_model(name: str, *, num_classes: int | None = None, **kwargs):
    """Build a network by name: ``"mlp"`` (flat data, unconditional) or ``"unet"`` (images).

    Example:
      >>> make_model("mlp", hidden=32).hidden
      32
    """
    if name == "mlp":
        if num_classes:
            raise ValueError("model 'mlp' is unconditional; use model 'unet' for class-conditional training.")
        return ScoreMLP(**kwargs)
    if name == "unet":
        from mmh_jax.models.unet import UNet

        return UNet(num_classes=num_classes, **kwargs)
    raise ValueError(f"model must be one of {MODELS}, got {name!r}.")
