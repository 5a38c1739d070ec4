"""mmh_jax: memorization in generative models through geometry.

Implements the manifold memorization hypothesis (Ross et al., ICLR 2025, arXiv 2411.00113):
pure-functional JAX local-intrinsic-dimension (LID) estimators, models, and the paper's validation.

Subpackages are imported lazily so that ``import mmh_jax.lid`` never pulls in flax or optax.
"""

import importlib

from mmh_jax._version import __version__

#: Submodules loaded on first use (PEP 562): ``import mmh_jax`` costs no JAX import, so the CLI can
#: install its signal handling before the heavy imports start (see ``mmh_jax/_interrupt.py``).
_LAZY = ("lid", "memorization", "parallel", "quality", "sde", "verdicts")

__all__ = ["lid", "load", "memorization", "parallel", "quality", "sde", "verdicts", "__version__"]


def load(checkpoint_dir: str, *, step: int | None = None):
    """Load a model trained by ``mmh-jax train``: ``.score_fn``, ``.eps_fn``, ``.sde``, ``.config``, ``.sample``.

    Flows (``--model flow|lidl``) load as [`mmh_jax.trained.TrainedFlow`][mmh_jax.trained.TrainedFlow]:
    ``.log_prob``, ``.decoder``, ``.encoder``, ``.lidl``, ``.sample``.

    Imported lazily so that ``import mmh_jax.lid`` stays free of flax/optax/orbax. See
    [`mmh_jax.trained.load`][mmh_jax.trained.load].

    Args:
      checkpoint_dir: the ``--out`` of ``mmh-jax train`` (or its ``checkpoints/`` folder).
      step: the checkpoint step to load (default: the newest).

    Returns:
      a [`mmh_jax.trained.TrainedModel`][mmh_jax.trained.TrainedModel] (EMA parameters, its SDE and saved
      config).

    Raises:
      FileNotFoundError: no such directory.
      mmh_jax.checkpoint.CheckpointError: no checkpoint there, or one that cannot be restored
        (truncated, or of another model).

    Examples:
      >>> load("no/such/run")
      Traceback (most recent call last):
      ...
      FileNotFoundError: checkpoint_dir: no such directory 'no/such/run'.
    """
    from mmh_jax.trained import load as _load

    return _load(checkpoint_dir, step=step)


def __getattr__(name: str):
    if name in _LAZY:
        return importlib.import_module(f"mmh_jax.{name}")
    raise AttributeError(f"module 'mmh_jax' has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), *_LAZY})
