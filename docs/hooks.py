"""mkdocs hooks: the command-line page shows the live ``--help`` of every ``mmh-jax`` subcommand,
and the tutorials (``notebooks/*.py``, jupytext percent format) become pages.

``docs/cli.md`` holds the marker ``<!-- cli-help -->``; it is replaced at build time by the help
text that ``mmh_jax.cli.build_parser()`` prints, so the page cannot drift from the code. Each
notebook source becomes ``tutorials/<name>.md``: markdown cells as prose, code cells as Python
blocks (outputs are not versioned; run the notebook to see them).
"""

from __future__ import annotations

import os
import sys

MARKER = "<!-- cli-help -->"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = os.path.join(ROOT, "notebooks")


def _help_text() -> str:
    os.environ.setdefault("COLUMNS", "100")  # argparse wraps help to the terminal width
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if root not in sys.path:
        sys.path.insert(0, root)
    from mmh_jax import cli

    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")  # the subparsers action
    parts = ["## mmh-jax --help", "", "```text", parser.format_help().rstrip(), "```", ""]
    for name, p in sub.choices.items():
        parts += [f"## mmh-jax {name}", "", "```text", p.format_help().rstrip(), "```", ""]
    return "\n".join(parts)


def on_page_markdown(markdown: str, page, config, files) -> str:
    if MARKER in markdown:
        return markdown.replace(MARKER, _help_text())
    return markdown


def notebook_markdown(source: str) -> str:
    """A jupytext percent-format source as markdown (header dropped, cells in order)."""
    cells, kind, lines = [], None, []
    for line in source.splitlines():
        if line.startswith("# %%"):
            if kind is not None:
                cells.append((kind, lines))
            kind, lines = ("markdown" if "[markdown]" in line else "code"), []
        elif kind is not None:
            lines.append(line)
    if kind is not None:
        cells.append((kind, lines))
    parts = []
    for kind, lines in cells:
        text = "\n".join(lines).strip("\n")
        if not text:
            continue
        if kind == "markdown":
            parts.append("\n".join(ln[2:] if ln.startswith("# ") else ln.lstrip("#") for ln in text.splitlines()))
        else:
            parts.append("```python\n" + text + "\n```")
    return "\n\n".join(parts) + "\n"


def on_files(files, config):
    from mkdocs.structure.files import File

    for name in sorted(os.listdir(NOTEBOOKS)):
        if name.endswith(".py") and name[:2].isdigit():
            with open(os.path.join(NOTEBOOKS, name)) as fh:
                content = notebook_markdown(fh.read())
            files.append(File.generated(config, f"tutorials/{name[:-3]}.md", content=content))
    return files
