"""Every public function and class has a docstring with a runnable example (the doctests run in
the default suite: ``--doctest-modules`` over ``mmh_jax``), and every public function says what it
returns. Public = listed in ``__all__`` of a public module."""

import importlib
import inspect
import re

import pytest

PUBLIC_MODULES = [
    "mmh_jax", "mmh_jax.sde", "mmh_jax.adapters", "mmh_jax.lid", "mmh_jax.parallel", "mmh_jax.sweep",
    "mmh_jax.memorization", "mmh_jax.quality", "mmh_jax.sample", "mmh_jax.train", "mmh_jax.models",
    "mmh_jax.data.synthetic", "mmh_jax.data.images", "mmh_jax.data.gaussian", "mmh_jax.data.files",
    "mmh_jax.checkpoint", "mmh_jax.trained", "mmh_jax.report", "mmh_jax.provenance",
]


def _public(module_name):
    module = importlib.import_module(module_name)
    for name in module.__all__:
        obj = getattr(module, name)
        if inspect.isfunction(obj) or inspect.isclass(obj):
            yield f"{module_name}.{name}", obj


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_public_names_have_an_example_and_returns(module_name):
    problems = []
    for qualname, obj in _public(module_name):
        doc = inspect.getdoc(obj) or ""
        if not doc.strip():
            problems.append(f"{qualname}: no docstring")
            continue
        # Only "Examples:" is a section to griffe: "Example:" renders its doctest as nested quotes.
        if not re.search(r"^Examples:$", doc, re.M) or ">>>" not in doc:
            problems.append(f"{qualname}: no 'Examples:' section with a doctest")
        if inspect.isfunction(obj):
            returns = inspect.signature(obj).return_annotation
            if returns not in (None, "None") and "Returns:" not in doc:
                problems.append(f"{qualname}: no 'Returns:' section")
    assert not problems, "\n".join(problems)
