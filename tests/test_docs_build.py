"""The documentation builds (``mkdocs build --strict``: any warning, broken link or unparsable
docstring fails) and its API reference documents every public name of every public module."""

import importlib
import inspect
import os
import subprocess
import sys

import mkdocs  # noqa: F401  (the docs tools are in the test extra: this test never skips)
import mkdocstrings  # noqa: F401

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: API page (docs/api/<page>.md) -> the modules it documents.
API_PAGES = {
    "mmh_jax": ["mmh_jax"],
    "sde": ["mmh_jax.sde"],
    "lid": ["mmh_jax.lid"],
    "parallel": ["mmh_jax.parallel"],
    "sweep": ["mmh_jax.sweep"],
    "memorization": ["mmh_jax.memorization"],
    "quality": ["mmh_jax.quality"],
    "sample": ["mmh_jax.sample"],
    "train": ["mmh_jax.train"],
    "models": ["mmh_jax.models"],
    "data-synthetic": ["mmh_jax.data.synthetic"],
    "data-images": ["mmh_jax.data.images"],
    "data-gaussian": ["mmh_jax.data.gaussian"],
    "checkpoint": ["mmh_jax.checkpoint", "mmh_jax.trained"],
    "provenance": ["mmh_jax.provenance"],
}


def test_docs_build_strict_and_cover_the_public_api(tmp_path):
    site = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    for page in ("index.html", "getting-started/index.html", "cli/index.html"):
        assert (site / page).stat().st_size > 0
    notebooks = sorted(name[:-3] for name in os.listdir(os.path.join(ROOT, "notebooks"))
                       if name[:2].isdigit() and name.endswith(".py"))
    assert len(notebooks) == 4
    for name in notebooks:  # every tutorial is a page, its code cells rendered as Python
        html = (site / "tutorials" / name / "index.html").read_text()
        assert "language-python" in html or "highlight" in html, name
    cli_page = (site / "cli" / "index.html").read_text()
    from mmh_jax import cli

    for command in cli.SUBCOMMANDS:  # the live --help of every subcommand is on the page
        assert f"usage: mmh-jax {command}" in cli_page, command
    missing = []
    for page, modules in API_PAGES.items():
        html = (site / "api" / page / "index.html").read_text()
        for name in modules:
            module = importlib.import_module(name)
            for attr in module.__all__:
                obj = getattr(module, attr)
                if (inspect.isfunction(obj) or inspect.isclass(obj)) and f'id="{name}.{attr}"' not in html:
                    missing.append(f"{name}.{attr}")
    assert not missing, f"public names without an entry in the API reference: {missing}"
