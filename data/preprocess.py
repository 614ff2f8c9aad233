"""python data/preprocess.py --input_dir ./data/raw --output_dir ./data/processed [...]: see `--help`."""

import sys
from pathlib import Path

# Replace the script's own folder (data/) on the path: it would shadow libraries; use the repo's src/.
sys.path[0] = str(Path(__file__).resolve().parents[1] / "src")

from qwentune.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["preprocess", *sys.argv[1:]], prog="data/preprocess.py"))
