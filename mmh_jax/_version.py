"""The package version, in one place (read by ``mmh_jax.__version__`` and the run provenance)."""

__version__ = "0.1.0"
