"""Quick start: python quick_start.py --status | --full | --install --download --preprocess --train --evaluate."""

import sys
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parent / "src")

from qwentune.quickstart import build_parser, run  # noqa: E402

if __name__ == "__main__":
    sys.exit(run(build_parser().parse_args()))
