"""docs/own-model.md and examples/own_model/: each bring-your-own-model script runs and passes its
own checks (FLIPD values, jit against eager, finite nonzero gradients), and every code block on the
page is quoted exactly from the script its marker names, so the page cannot drift from code that runs.

A code block on the page is preceded by a marker line ``<!-- example: examples/own_model/NAME.py -->``
and must be a run of whole, consecutive lines of that file.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "own_model"
PAGE = ROOT / "docs" / "own-model.md"
SCRIPTS = ("equinox_model.py", "linen_model.py", "nnx_model.py", "plain_function.py")

MARKER = re.compile(r"^<!-- example: (\S+) -->$")
FENCE = re.compile(r"^```(\w*)\s*$")


def _blocks(text: str) -> list[tuple[str | None, str, list[str]]]:
    """Every fenced code block of ``text``: (the path its marker names or None, language, lines)."""
    lines = text.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        j = i + 1
        while j < len(lines) and lines[j].rstrip() != "```":
            j += 1
        assert j < len(lines), f"docs/own-model.md: code block opened at line {i + 1} is not closed"
        k = i - 1
        while k >= 0 and not lines[k].strip():
            k -= 1
        marker = MARKER.match(lines[k]) if k >= 0 else None
        blocks.append((marker.group(1) if marker else None, m.group(1), lines[i + 1:j]))
        i = j + 1
    return blocks


def _is_run_of_lines(block: list[str], source: list[str]) -> bool:
    n = len(block)
    return n > 0 and any(source[i:i + n] == block for i in range(len(source) - n + 1))


def test_example_scripts_are_the_known_ones():
    found = sorted(p.name for p in EXAMPLES.glob("*.py"))
    assert found == sorted(SCRIPTS), f"examples/own_model/ holds {found}; the test runs {sorted(SCRIPTS)}"


def test_page_quotes_the_examples_exactly():
    blocks = _blocks(PAGE.read_text())
    python = [b for b in blocks if b[1] == "python"]
    assert len(python) >= len(SCRIPTS), f"docs/own-model.md has only {len(python)} Python blocks"
    unmarked = [" / ".join(lines[:1]) for path, lang, lines in python if path is None]
    assert not unmarked, f"Python blocks without an '<!-- example: ... -->' marker: {unmarked}"
    quoted = set()
    for path, _, lines in blocks:
        if path is None:
            continue
        source = (ROOT / path).read_text().splitlines()
        assert _is_run_of_lines(lines, source), (
            f"a block on docs/own-model.md is not quoted exactly from {path}; it starts with {lines[:2]}")
        quoted.add(Path(path).name)
    assert quoted == set(SCRIPTS), f"scripts never shown on the page: {sorted(set(SCRIPTS) - quoted)}"


def test_block_check_catches_a_changed_line():
    """The check above can fail: one edited line of a quoted block no longer matches."""
    path, _, lines = next(b for b in _blocks(PAGE.read_text()) if b[0])
    source = (ROOT / path).read_text().splitlines()
    changed = list(lines)
    changed[-1] = changed[-1] + "  # edited"
    assert _is_run_of_lines(lines, source) and not _is_run_of_lines(changed, source)


@pytest.mark.e2e  # a child Python per script, compiling and (for nnx) training: 5-20 s each on two cores
@pytest.mark.parametrize("script", SCRIPTS)
def test_example_runs_and_passes_its_checks(script):
    # As a user runs it: a fresh Python from the repository root, JAX's default settings (the
    # suite's XLA_FLAGS are inherited: fast compiles, same results).
    proc = subprocess.run([sys.executable, str(EXAMPLES / script)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    assert proc.stdout.strip(), f"{script} printed nothing"
    warned = re.findall(r"\w+Warning: .*", proc.stderr)  # Python warnings, not JAX's log lines
    assert not warned, f"{script} warned: {warned[:5]}"
