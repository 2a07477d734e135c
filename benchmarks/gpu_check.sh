#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py) on a GPU node that may be offline: the node's own python3 and CUDA PyTorch
# (>= 2.4), the other dependencies from a wheel folder made beforehand by scripts/prepare_wheels.sh (README, section
# "GPU"), this source tree on PYTHONPATH (affcons is not installed). Under 8 minutes; writes only
# OUT_DIR/gpu-check.json and OUT_DIR/gpu-check.log. The wheels go into a fresh temporary folder, removed at the end,
# so the check is safe to run twice.
#
#   bash benchmarks/gpu_check.sh WHEEL_DIR OUT_DIR [gpu_check.py options, e.g. --loader-workers 8]
#
# Exit status: 0 every phase passed; 1 a phase failed; 2 the node cannot run the check or the wheels do not install;
# 124 the time limit (AFFCONS_GPU_CHECK_TIMEOUT, default 420 s) ended it (the summary holds the phases done so far).
# PYTHON (default python3) is the node's interpreter.
set -uo pipefail
if [ $# -lt 2 ]; then
    sed -n '2,12p' "$0" >&2
    exit 2
fi
wheels="$1"
out="$2"
shift 2
repo="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-python3}"
if [ ! -d "$wheels" ]; then
    echo "gpu_check: wheel folder $wheels does not exist (scripts/prepare_wheels.sh makes it)" >&2
    exit 2
fi
mkdir -p "$out"
work="$(mktemp -d "${TMPDIR:-/tmp}/affcons-gpu-check.XXXXXX")"
trap 'rm -rf "$work"' EXIT

shopt -s nullglob
found=("$wheels"/*.whl)
if [ ${#found[@]} -gt 0 ]; then
    echo "installing ${#found[@]} wheels from $wheels into $work/site"
    if ! "$PY" -m pip install --quiet --disable-pip-version-check --no-index --no-deps --no-compile \
        --target "$work/site" "${found[@]}"; then
        echo "gpu_check: the wheels of $wheels do not install with $PY; prepare them for its Python version" >&2
        exit 2
    fi
fi
PYTHONPATH="$work/site:$repo${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 \
    timeout --kill-after=20 "${AFFCONS_GPU_CHECK_TIMEOUT:-420}" \
    "$PY" "$repo/benchmarks/gpu_check.py" --out "$out" --work-dir "$work" "$@"
status=$?
if [ "$status" -eq 124 ]; then
    echo "gpu_check: stopped at the time limit (${AFFCONS_GPU_CHECK_TIMEOUT:-420} s)" >&2
fi
exit "$status"
