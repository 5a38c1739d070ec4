"""``mmh-jax run``: the paper's validation of the manifold memorization hypothesis, end to end.

Experiments (each a module with ``run(config, ctx) -> metrics``): ``toy`` (OD-/DD-Mem on a von Mises
circle plus a point mass), ``images`` (memorized digit samples and duplicated training images have
low LID_θ), ``conditional`` (CFG norm vs conditional/unconditional FLIPD as detectors) and
``mitigation`` (sampling steered towards higher LID_θ). `run` runs a selection and writes the
report (``metrics.json``, ``report.html``, PNGs).
"""
