"""mkdocs hook: the command-line page shows the live ``--help`` of every ``mmh-jax`` subcommand.

``docs/cli.md`` holds the marker ``<!-- cli-help -->``; it is replaced at build time by the help
text that ``mmh_jax.cli.build_parser()`` prints, so the page cannot drift from the code.
"""

from __future__ import annotations

import io
import os
import sys
from contextlib import redirect_stdout

MARKER = "<!-- cli-help -->"


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
