#!/usr/bin/env bash
# One prepared GPU check (issue 21): the frame-primer step, the trainer's data wait, separation
# speed and `vrtrain eval` time, printed as one table (benchmarks/gpu_check.py says what each
# row measures). At most about 8 minutes on one GPU; `--dry` runs the same path on the CPU at
# tiny sizes (tests/test_gpu_check.py).
# Usage: bash benchmarks/gpu_check.sh [--dry] [--workdir DIR]
# Python: $PYTHON, else the project venv's (.venv/bin/python), else python3 on the PATH.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
PYTHON=${PYTHON:-}
if [ -z "$PYTHON" ]; then
  if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" "$HERE/gpu_check.py" "$@"
