#!/usr/bin/env bash
# Create .venv in the repository and install affcons with pinned dependencies.
# torch goes first and alone: `pip install torch==2.13.0` takes the CPU wheel here; on a GPU machine install the
# matching CUDA build of torch 2.13.0 before running this script (pip then keeps it).
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet torch==2.13.0
.venv/bin/python -m pip install --quiet -e ".${extras:+[$extras]}"
