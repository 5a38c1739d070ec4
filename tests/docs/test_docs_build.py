"""The documentation builds (``mkdocs build --strict``: any warning, broken link, unresolved
cross-reference or unparsable docstring fails), its API reference documents every public name of
every public module, and the rendered pages hold no raw reST role and no mangled example."""

import importlib
import inspect
import os
import re
import subprocess
import sys

import mkdocs  # noqa: F401  (the docs tools are in the test extra: this test never skips)
import mkdocstrings  # noqa: F401

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

#: API page (docs/api/<page>.md) -> the modules it documents.
API_PAGES = {
    "mmh_jax": ["mmh_jax"],
    "sde": ["mmh_jax.sde"],
    "adapters": ["mmh_jax.adapters"],
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
    "data-files": ["mmh_jax.data.files"],
    "checkpoint": ["mmh_jax.checkpoint", "mmh_jax.trained"],
    "provenance": ["mmh_jax.provenance"],
    "report": ["mmh_jax.report"],
}

#: A reST role left in a docstring renders as text (":func:<code>x</code>"); cross-references are
#: written the mkdocstrings way, [`x`][mmh_jax.lid.x].
RAW_ROLE = re.compile(r":(?:py:)?(?:func|class|mod|data|attr|meth|exc|obj|const|ref|doc):(?:<code>|`)")


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

    raw, mangled, no_code = [], [], []
    for path in sorted(site.rglob("*.html")):
        html = path.read_text()
        page = str(path.relative_to(site))
        raw += [f"{page}: {m.group(0)}" for m in RAW_ROLE.finditer(html)]
        # A doctest outside an "Examples:" section renders as nested quotes (">>>" is markdown's).
        prompts = html.count("&gt;&gt;&gt;")
        highlighted = html.count('<span class="gp">&gt;&gt;&gt; </span>')
        if prompts != highlighted or "<blockquote>" in html:
            mangled.append(page)
        for m in re.finditer(r'doc-section-title">Examples:</span>', html):
            section = html[m.end():].split('class="doc doc-object', 1)[0]
            if 'class="highlight"' not in section:
                no_code.append(page)
    assert not raw, f"raw reST roles on the built site ({len(raw)}): {raw[:20]}"
    assert not mangled, f"examples outside an 'Examples:' section render as quotes on: {mangled}"
    assert not no_code, f"'Examples:' sections without a code block on: {no_code}"
