"""Quick start: python quick_start.py --status | --full | --install --download --preprocess --train --evaluate."""

import sys
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parent / "src")

from qwentune.install import install_requirements, requirements_missing  # noqa: E402  (standard library only)

if __name__ == "__main__":
    if {"--install", "--full"} & set(sys.argv[1:]):
        install_requirements()
    elif requirements_missing():
        # Before qwentune's own handler can load: the same shape as its errors (exit 1: the run cannot start).
        print(f"error: missing packages: {', '.join(requirements_missing())}\n  run: python quick_start.py --install", file=sys.stderr)
        sys.exit(1)
    from qwentune.quickstart import main

    sys.exit(main())
