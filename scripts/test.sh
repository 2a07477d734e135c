#!/usr/bin/env bash
# Install everything (with the test extras), check formatting and lint (ruff, configured in ruff.toml), then run the
# test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh test
.venv/bin/ruff format --check --quiet . || { echo "ruff format: files above need formatting (run .venv/bin/ruff format .)" >&2; exit 1; }
.venv/bin/ruff check --quiet .
exec .venv/bin/python -m pytest -q tests "$@"
