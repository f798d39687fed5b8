"""The layering of the package, as import-linter checks it ([tool.importlinter] in pyproject.toml).

cli > controller > metrics > manifests > policy > api: a layer imports only the layers below it.
The strategy SDK (phasegate.sdk, what a strategy's own image imports) uses the API and nothing else.

`make lint` runs the same `lint-imports`; running it here too keeps the contracts in every pytest run.
A checker that cannot fail proves nothing, so a forbidden import is also added to a scratch copy of the
package, and that copy must break the contract, naming the import.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "operator" / "phasegate"


def _lint_imports_binary() -> str:
    beside = Path(sys.executable).with_name("lint-imports")
    found = str(beside) if beside.exists() else shutil.which("lint-imports")
    assert found, "lint-imports is missing: it comes with the test extra (pip install -e '.[test]')"
    return found


def lint_imports(*args: str, package_parent: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run lint-imports with the repository's contracts; `package_parent` puts another copy of phasegate first."""
    env = dict(os.environ)
    if package_parent is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(package_parent), env.get("PYTHONPATH")) if p)
    return subprocess.run(
        [_lint_imports_binary(), "--no-cache", *args],  # the contracts: pyproject.toml of cwd
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )


def test_the_layer_contracts_are_kept():
    out = lint_imports()
    assert out.returncode == 0, "import-linter contracts broken:\n" + out.stdout + out.stderr
    assert "0 broken" in out.stdout


def _scratch_copy(tmp_path: Path) -> Path:
    shutil.copytree(PACKAGE, tmp_path / "phasegate", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return tmp_path


def _append(module: Path, line: str) -> None:
    module.write_text(module.read_text() + f"\n{line}\n")


@pytest.mark.parametrize(
    "contract, module, forbidden",
    [
        ("sdk", "sdk/clock.py", "phasegate.controller"),
        ("sdk", "sdk/ledger.py", "phasegate.policy"),
        ("layers", "api/contract.py", "phasegate.policy"),
        ("layers", "manifests/__init__.py", "phasegate.metrics"),
        ("layers", "controller/__init__.py", "phasegate.cli"),
    ],
)
def test_a_forbidden_import_breaks_the_contract(tmp_path: Path, contract: str, module: str, forbidden: str):
    scratch = _scratch_copy(tmp_path)
    if contract == "sdk":
        # The unmodified copy keeps this contract, so the failure below is the added import's doing.
        # (The layers contract can be broken on its own while a move between layers is under way.)
        clean = lint_imports("--contract", contract, package_parent=scratch)
        assert clean.returncode == 0, clean.stdout + clean.stderr
    _append(scratch / "phasegate" / module, f"import {forbidden}  # the forbidden import of this test")
    out = lint_imports("--contract", contract, package_parent=scratch)
    importer = "phasegate." + module.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
    assert out.returncode != 0, out.stdout + out.stderr
    assert "BROKEN" in out.stdout
    # The import named is the one added to the scratch copy: that copy, not the working tree, was analysed.
    assert f"{importer} -> {forbidden}" in out.stdout, out.stdout
