"""Fetch raw datasets into data/raw/: --datasets alpaca_gpt4_data oasst1 ... | --all | --list"""

import sys
from pathlib import Path

# Replace the script's own folder (data/) on the path: it would shadow libraries.
sys.path[0] = str(Path(__file__).resolve().parents[1] / "src")
from qwentune.cli import main  # noqa: E402

sys.exit(main(["download", *sys.argv[1:]], prog="data/download_data.py"))
