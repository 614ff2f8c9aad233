"""Inference: python scripts/inference.py --model_path DIR (--interactive | --input TEXT | --input_file F --output_file F).

Also the guide's Python API, from the repo root:
    from scripts.inference import QwenInference
"""

import sys
from pathlib import Path

_SRC = str(Path(__file__).resolve().parents[1] / "src")
if __name__ == "__main__":
    # Replace this script's own folder on the path: its train/evaluate/inference modules would shadow libraries.
    sys.path[0] = _SRC
elif _SRC not in sys.path:
    sys.path.insert(0, _SRC)

def __getattr__(name: str):
    # Imported on first use: the engine pulls torch and transformers, which `--help` does not need.
    if name == "QwenInference":
        from qwentune.infer.engine import QwenInference

        return QwenInference
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":
    from qwentune.cli import main

    sys.exit(main(["infer", *sys.argv[1:]], prog="scripts/inference.py"))
