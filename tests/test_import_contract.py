"""The package's import contract (.importlinter): layers cli > experiments > engine > model, libraries that import
no layer above them, engine and viz kept apart, no cycles. Checked with import-linter's `lint-imports`."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONTRACT = REPO / ".importlinter"


def _lint_imports() -> str | None:
    """The lint-imports next to this interpreter (the .venv's), else one on PATH, else None."""
    here = Path(sys.executable).parent / "lint-imports"
    if here.is_file():
        return str(here)
    return shutil.which("lint-imports")


def test_import_contract_kept():
    assert CONTRACT.is_file(), f"{CONTRACT} is missing"
    exe = _lint_imports()
    if exe is None:
        pytest.skip("import-linter is not installed (pip install -r requirements-test.txt)")
    result = subprocess.run(
        [exe, "--no-cache", "--no-logo", str(CONTRACT)], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, (
        f"the import contract in {CONTRACT.name} is broken:\n{result.stdout}\n{result.stderr}"
    )
    assert "BROKEN" not in result.stdout
