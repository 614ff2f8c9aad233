"""Default folders of a qwentune project, relative to the working directory (the repo root)."""

from __future__ import annotations

import os
from pathlib import Path

from qwentune.errors import UsageError

RAW_DATA_DIR = Path("data/raw")
PROCESSED_DATA_DIR = Path("data/processed")
RESULTS_DIR = Path("results")
CHECKPOINTS_DIR = RESULTS_DIR / "checkpoints"
LOGS_DIR = RESULTS_DIR / "logs"
EVALUATION_DIR = RESULTS_DIR / "evaluation"
TRAINING_LOG = LOGS_DIR / "training.log"

# The package's own shipped demo data (written by us; see data/demo/README.md).
DEMO_DATA_DIR = Path(__file__).parent / "data" / "demo"


def cache_dir() -> Path:
    """qwentune's cache (embedded assets, downloaded URLs): `$QWENTUNE_CACHE`, else `~/.cache/qwentune`.

    Read on every call, so a value set later in the process is honoured.
    """
    configured = os.environ.get("QWENTUNE_CACHE")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "qwentune"


def writable_folder(path: str | Path, key: str) -> Path:
    """`path`, checked that it is (or can be created as) a writable folder; else a UsageError naming `key`.

    Called when a stage starts, so a bad output path stops it before any work, not at the first save.
    Nothing is created here: a run that stops later leaves no empty folder behind.
    """
    folder = Path(path).expanduser()
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"{key}: cannot create the folder {folder} ({existing} is a file)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{key}: cannot create or write the folder {folder} ({existing} is not writable)")
    return folder
