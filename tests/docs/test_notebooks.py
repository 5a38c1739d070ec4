"""The tutorials in notebooks/: paired with their jupytext sources, committed without outputs, and
executable top to bottom at small size (``MMH_NOTEBOOK_SMALL=1``).

The ``.py`` files (jupytext percent format) are the source of truth; the ``.ipynb`` files are what
users open. Regenerate a notebook after editing its source with
``jupytext --to ipynb notebooks/NAME.py`` (outputs stay stripped).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import jupytext  # the notebook tools are in the test extra: these tests never skip
import nbformat
import pytest

NOTEBOOKS_DIR = Path(__file__).resolve().parents[2] / "notebooks"
NAMES = ("01_lid_estimators", "02_memorization_geometry", "03_conditioning_and_mitigation", "04_scale")
# 02 and 03 train the pipeline's quick models (toy MLP, digits network) inside the notebook: about a
# minute each on two idle cores, more than the default suite's share, so they run with the slow tests;
# 04 (a sharded sweep, a jitted train loop with FLIPD) takes ~55 s on two busy cores and joins them.
SLOW = {"02_memorization_geometry", "03_conditioning_and_mitigation", "04_scale"}


def _cells(nb) -> list[tuple[str, str]]:
    return [(c.cell_type, c.source.strip()) for c in nb.cells]


def test_every_notebook_has_a_source():
    found = sorted(p.stem for p in NOTEBOOKS_DIR.glob("*.ipynb"))
    assert found == sorted(NAMES), f"notebooks/ holds {found}, the tests know {sorted(NAMES)}"
    for name in NAMES:
        assert (NOTEBOOKS_DIR / f"{name}.py").is_file(), f"notebooks/{name}.py (jupytext source) is missing"


@pytest.mark.parametrize("name", NAMES)
def test_notebook_in_sync_and_stripped(name):
    ipynb = nbformat.read(NOTEBOOKS_DIR / f"{name}.ipynb", as_version=4)
    source = jupytext.read(NOTEBOOKS_DIR / f"{name}.py")
    assert _cells(ipynb) == _cells(source), (
        f"notebooks/{name}.ipynb differs from notebooks/{name}.py; run: jupytext --to ipynb notebooks/{name}.py")
    for i, cell in enumerate(ipynb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{name}.ipynb cell {i} has outputs; strip them before committing"
            assert cell.execution_count is None, f"{name}.ipynb cell {i} has an execution count"


def _execute(name: str, tmp_path: Path) -> float:
    import ipykernel  # noqa: F401  (the kernel nbclient starts)
    import nbclient
    nb = nbformat.read(NOTEBOOKS_DIR / f"{name}.ipynb", as_version=4)
    # Small runs are compile-bound: the kernel compiles with XLA's optimisations mostly off, as
    # `mmh-jax run --preset quick` does (JAX's own switch; results differ in the last bits only).
    env = {"MMH_NOTEBOOK_SMALL": "1", "MMH_NOTEBOOK_OUT": str(tmp_path / "out"),
           "JUPYTER_PLATFORM_DIRS": "1", "MPLBACKEND": "module://matplotlib_inline.backend_inline",
           "JAX_DISABLE_MOST_OPTIMIZATIONS": "1"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits this process's environment
    tic = time.perf_counter()
    try:
        client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                         resources={"metadata": {"path": str(NOTEBOOKS_DIR)}})
        client.execute()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    seconds = time.perf_counter() - tic
    if os.environ.get("MMH_NOTEBOOK_SAVE_DIR"):  # keep the executed notebook for a look at its figures
        nbformat.write(nb, Path(os.environ["MMH_NOTEBOOK_SAVE_DIR"]) / f"{name}.ipynb")
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors, f"{name}: {errors[0]['ename']}: {errors[0]['evalue']}"
    for i, cell in enumerate(nb.cells):  # every figure shown is inline (a library switching to Agg would hide it)
        if cell.cell_type == "code" and "plt.show()" in cell.source:
            assert any("image/png" in o.get("data", {}) for o in cell.outputs), \
                f"{name}: cell {i} calls plt.show() but no inline figure came out"
    return seconds


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in NAMES])
def test_notebook_executes_small(name, tmp_path):
    seconds = _execute(name, tmp_path)
    print(f"{name}: executed in {seconds:.0f} s")
