"""Train: python scripts/train.py --config config/training_config.yaml [--resume_from_checkpoint DIR] [--debug]."""

import sys
from pathlib import Path

# Replace this script's own folder on the path: its train/evaluate/inference modules would shadow libraries.
sys.path[0] = str(Path(__file__).resolve().parents[1] / "src")

from qwentune.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]], prog="scripts/train.py"))
