"""Quick start: python quick_start.py --status | --full | --install --download --preprocess --train --evaluate."""

import sys
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parent / "src")

from qwentune.install import install_requirements, requirements_missing  # noqa: E402  (standard library only)

if __name__ == "__main__":
    if {"--install", "--full"} & set(sys.argv[1:]):
        install_requirements()
    elif requirements_missing():
        sys.exit(f"missing packages: {', '.join(requirements_missing())}. Run: python quick_start.py --install")
    from qwentune.quickstart import main

    sys.exit(main())
