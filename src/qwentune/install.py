"""`quick_start.py --install`: the requirements, using only the standard library.

It runs before the requirements exist, so nothing here may import a third-party package.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

# The torch release the project is tested with; installed only when no torch is present,
# so a CUDA, ROCm or Ascend build the user installed first is kept.
TESTED_TORCH = "torch==2.13.0"
REQUIREMENTS = Path(__file__).resolve().parents[2] / "requirements.txt"


def pip(*args: str) -> None:
    command = [sys.executable, "-m", "pip", "install", *args]
    print("+", " ".join(command), flush=True)
    # requirements.txt ends with "-e .", which pip resolves against the working directory.
    subprocess.run(command, check=True, cwd=REQUIREMENTS.parent)


def install_requirements(extras: tuple[str, ...] = ()) -> None:
    if importlib.util.find_spec("torch") is None:
        pip(TESTED_TORCH)
    pip("-r", str(REQUIREMENTS))
    if extras:
        pip("-e", f"{REQUIREMENTS.parent}[{','.join(extras)}]")


def requirements_missing() -> list[str]:
    """Top-level imports the package needs that are not installed."""
    needed = ("torch", "transformers", "peft", "rich", "pydantic", "yaml", "sacrebleu", "rouge_score", "bert_score")
    return [name for name in needed if importlib.util.find_spec(name) is None]
