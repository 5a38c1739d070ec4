"""The package's layers point one way (import-linter contracts in pyproject.toml), and no private
name crosses a module boundary."""

import ast
import pathlib
import subprocess
import sys
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mmh_jax"


def _lint(root: pathlib.Path) -> subprocess.CompletedProcess:
    # A child process, so grimp reads the tree at ``root`` (a planted copy, or this checkout).
    code = ("import sys; from importlinter.cli import lint_imports; "
            "sys.exit(lint_imports(config_filename='pyproject.toml', no_cache=True))")
    return subprocess.run([sys.executable, "-c", code], cwd=root, env={"PYTHONPATH": str(root), "PATH": ""},
                          capture_output=True, text=True, timeout=120)


def test_import_contracts_hold():
    r = _lint(ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 broken" in r.stdout


@pytest.mark.parametrize("importer, line, contract", [
    ("lid/__init__.py", "from mmh_jax import train", "Layers"),          # estimators reaching up
    ("sde.py", "import flax", "JAX only"),                               # a forbidden dependency
    ("memorization.py", "from mmh_jax.lid import _trace", "Private"),     # a private submodule
])
def test_a_planted_violation_breaks_a_contract(tmp_path, importer, line, contract):
    import shutil
    shutil.copytree(PACKAGE, tmp_path / "mmh_jax", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    target = tmp_path / "mmh_jax" / importer
    target.write_text(target.read_text() + f"\n{line}  # planted\n")
    r = _lint(tmp_path)
    assert r.returncode != 0
    assert contract in r.stdout.split("Broken contracts")[-1]


def private_name_uses(path: pathlib.Path, source: str) -> list[str]:
    """``from mmh_jax.m import _name`` and ``m._name`` on an imported mmh_jax module, in one file."""
    tree = ast.parse(source)
    modules: set[str] = set()  # local names bound to mmh_jax modules
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mmh_jax"):
            for a in node.names:
                full = f"{node.module}.{a.name}"
                is_module = (PACKAGE.parent / full.replace(".", "/")).with_suffix(".py").exists() or \
                    (PACKAGE.parent / full.replace(".", "/")).is_dir()
                if is_module:
                    modules.add(a.asname or a.name)
                elif a.name.startswith("_") and not a.name.startswith("__"):
                    found.append(f"{path}:{node.lineno}: from {node.module} import {a.name}")
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("mmh_jax") and a.asname:
                    modules.add(a.asname)
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules
                and node.attr.startswith("_") and not node.attr.startswith("__")):
            found.append(f"{path}:{node.lineno}: {node.value.id}.{node.attr}")
    return found


def test_no_private_name_crosses_a_module():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        found += private_name_uses(path.relative_to(ROOT), path.read_text())
    assert not found, "private names used across modules:\n" + "\n".join(found)


#: Private names a test may use, with why: ``_Conv`` is the U-Net's convolution written as a matmul
#: over patches (see its docstring); its test checks it equals ``nn.Conv``, parameter for parameter.
TESTS_MAY_USE = {("tests/models/test_unet.py", "from mmh_jax.models.unet import _Conv")}


def test_tests_use_the_public_api():
    found = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        rel = path.relative_to(ROOT)
        found += [f for f in private_name_uses(rel, path.read_text())
                  if (str(rel), f.split(": ", 1)[1]) not in TESTS_MAY_USE]
    assert not found, "tests using private names of mmh_jax:\n" + "\n".join(found)


def test_the_private_name_check_finds_planted_uses():
    planted = textwrap.dedent("""
        from mmh_jax import parallel
        from mmh_jax.memorization import _points
        from mmh_jax import _checks
        parallel._pad(1)
        _checks.float_array("x", 1.0)
    """)
    found = private_name_uses(pathlib.Path("planted.py"), planted)
    assert [f.split(": ", 1)[1] for f in found] == ["from mmh_jax.memorization import _points", "parallel._pad"]
