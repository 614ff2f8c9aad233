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
    """`path` created if needed; a folder that cannot be made or written is a UsageError naming `key`.

    Called when a stage starts, so a bad output path stops it before any work, not at the first save.
    """
    folder = Path(path).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{key}: cannot create the folder {folder} ({exc.strerror or exc})") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"{key}: the folder {folder} is not writable")
    return folder
