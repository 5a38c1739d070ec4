"""Shared by the scripts in ``bench/``: the timing and reporting helpers of `mmh_jax._timing`
(also behind ``mmh-jax bench``), plus where results go.

Scripts under ``bench/`` import this as ``bench._common``; run them from the repository root
(``python bench/bench_x.py``): `ensure_importable` puts the root on ``sys.path``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from mmh_jax._timing import (Prepared, block, env_info, finish, markdown_table, prepare, print_targets,  # noqa: F401
                               time_fn, time_many, write_results)

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "bench" / "results"


def ensure_importable() -> None:
    """Put the repository root on ``sys.path`` (for ``python bench/bench_x.py`` runs)."""
    root = str(REPO_ROOT)
    if root not in sys.path:
        sys.path.insert(0, root)
