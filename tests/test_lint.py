"""The code passes the project's lint rules (pyproject.toml [tool.ruff]): unused names, undefined
names, import order and the common bug patterns fail the suite, not a later review."""

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff is installed with the dev extras")
def test_ruff_check_passes():
    result = subprocess.run(["ruff", "check", "--no-cache", "."], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
