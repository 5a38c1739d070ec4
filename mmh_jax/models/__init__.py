"""Flax (Linen) networks; parameters are explicit pytrees passed to ``apply``.

:class:`ScoreMLP` is an ε-prediction MLP for flat data; :func:`as_score_fn` / :func:`as_eps_fn`
turn its ``apply`` into the single-example functions that :mod:`mmh_jax.lid` estimators take.
"""

from mmh_jax.models.adapters import as_eps_fn, as_score_fn
from mmh_jax.models.score_mlp import ScoreMLP, sinusoidal_embedding

__all__ = ["ScoreMLP", "as_eps_fn", "as_score_fn", "sinusoidal_embedding"]
