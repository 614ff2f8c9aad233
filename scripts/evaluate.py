"""Evaluate: python scripts/evaluate.py --config config/eval_config.yaml [--datasets A B] [--max_samples N]."""

import sys
from pathlib import Path

# Replace this script's own folder on the path: its train/evaluate/inference modules would shadow libraries
# (the `evaluate` package among them).
sys.path[0] = str(Path(__file__).resolve().parents[1] / "src")

from qwentune.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]], prog="scripts/evaluate.py"))
