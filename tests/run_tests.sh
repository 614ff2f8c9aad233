#!/usr/bin/env bash
# The test command: installs what the suite needs on a fresh machine, then runs it.
#   bash tests/run_tests.sh            # whole suite
#   bash tests/run_tests.sh -k config  # any pytest arguments
#   bash tests/run_tests.sh --min-deps [pytest arguments]
#       the same, on the oldest supported releases (tests/constraints-min.txt, the floors in
#       pyproject.toml) in their own virtualenv, $QWENTUNE_CACHE/venv-min-deps, created once and reused.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
CONSTRAINTS=()

if [ "${1:-}" = "--min-deps" ]; then
  shift
  VENV=${QWENTUNE_MIN_DEPS_VENV:-${QWENTUNE_CACHE:-$HOME/.cache/qwentune}/venv-min-deps}
  if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
  fi
  PYTHON="$VENV/bin/python"
  # pip moves any package whose installed release differs from its pin (floors raised or lowered).
  CONSTRAINTS=(-c tests/constraints-min.txt)
fi

# torch first, and only the tested CPU-capable release: an open requirement would pull a multi-GB CUDA build.
if ! "$PYTHON" -c "import torch" 2>/dev/null; then
  "$PYTHON" -m pip install --quiet "torch==2.13.0"
fi
# Keep the installed torch: deepspeed and bitsandbytes accept any, and an upgrade would be a CUDA build.
TORCH_VERSION=$("$PYTHON" -c "import torch; print(torch.__version__.split('+')[0])")
"$PYTHON" -m pip install --quiet -c <(echo "torch==$TORCH_VERSION") ${CONSTRAINTS[@]+"${CONSTRAINTS[@]}"} -e ".[dev,quant,deepspeed]"
if [ ${#CONSTRAINTS[@]} -gt 0 ]; then
  "$PYTHON" -m pip list --format=freeze 2>/dev/null | grep -iE "^(transformers|peft|accelerate|datasets|huggingface.hub|deepspeed|bitsandbytes|fastapi|pydantic)==" | tr '\n' ' '
  echo "(min-deps venv: $VENV)"
fi

# Debian's Chromium for the report's browser test (no downloaded browser); skipped where apt is unavailable.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "warning: could not install chromium; the browser test will be skipped"
fi

exec "$PYTHON" -m pytest -q "$@"
