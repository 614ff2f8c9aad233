"""Default folders of a qwentune project, relative to the working directory (the repo root)."""

from __future__ import annotations

from pathlib import Path

RAW_DATA_DIR = Path("data/raw")
PROCESSED_DATA_DIR = Path("data/processed")
RESULTS_DIR = Path("results")
CHECKPOINTS_DIR = RESULTS_DIR / "checkpoints"
LOGS_DIR = RESULTS_DIR / "logs"
EVALUATION_DIR = RESULTS_DIR / "evaluation"
TRAINING_LOG = LOGS_DIR / "training.log"

# The package's own shipped demo data (written by us; see data/demo/README.md).
DEMO_DATA_DIR = Path(__file__).parent / "data" / "demo"
