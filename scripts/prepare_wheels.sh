#!/usr/bin/env bash
# The wheel folder for benchmarks/gpu_check.sh on an offline GPU node (README, section "GPU"): the dependencies of
# setup.py, without torch, that the node's python3 lacks, as wheels for the node's Python version and platform
# (manylinux x86_64), downloaded here with pip.
#
#   on the node:   python3 -m pip list --format=freeze > node-packages.txt     (and note python3 --version)
#   here:          bash scripts/prepare_wheels.sh WHEEL_DIR PYTHON_VERSION [node-packages.txt]
#   e.g.:          bash scripts/prepare_wheels.sh wheels-cp312 3.12 node-packages.txt
#
# The node's packages are used as they are: they constrain the resolver (so the downloaded wheels fit them) and are
# not downloaded into WHEEL_DIR. Without the list every dependency is downloaded (about 200 MB: llvmlite, scipy and
# numpy are most of it). WHEEL_DIR must be new or empty (one version per package). Environment: PYTHON (default
# python3) runs pip here, its own version does not matter; GLIBC (default 2.28) is the node's glibc (`ldd --version`):
# wheels up to manylinux_2_<minor> are accepted.
set -euo pipefail
if [ $# -lt 2 ] || [ $# -gt 3 ]; then
    sed -n '2,14p' "$0" >&2
    exit 2
fi
wheels="$1"
python_version="$2"
node_packages="${3:-}"
PY="${PYTHON:-python3}"
glibc_minor="${GLIBC:-2.28}"
glibc_minor="${glibc_minor#2.}"
repo="$(cd "$(dirname "$0")/.." && pwd)"
if [[ ! "$python_version" =~ ^3\.[0-9]+$ ]]; then
    echo "prepare_wheels: PYTHON_VERSION must look like 3.12, got '$python_version'" >&2
    exit 2
fi
if [ -n "$node_packages" ] && [ ! -f "$node_packages" ]; then
    echo "prepare_wheels: $node_packages does not exist (python3 -m pip list --format=freeze on the node)" >&2
    exit 2
fi
if [ -d "$wheels" ] && [ -n "$(ls -A "$wheels")" ]; then
    echo "prepare_wheels: $wheels is not empty; give a new folder" >&2
    exit 2
fi
mkdir -p "$wheels"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# requirements: the pins of setup.py, bare names for what the node has (its version is a constraint)
"$PY" - "$repo/setup.py" "$node_packages" "$work" <<'EOF'
import ast
import re
import sys
from pathlib import Path

from pip._vendor.packaging.version import InvalidVersion, Version

setup, node_file, work = sys.argv[1], sys.argv[2], Path(sys.argv[3])
normal = lambda name: re.sub(r"[-_.]+", "-", name).lower()  # noqa: E731
tree = ast.parse(Path(setup).read_text())
pins = next(
    [element.value for element in node.value.elts]
    for node in ast.walk(tree)
    if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "INSTALL_REQUIRES"
)
node = {}
for line in Path(node_file).read_text().splitlines() if node_file else []:
    name, _, version = line.strip().partition("==")
    try:
        node[normal(name)] = Version(version).public  # a local label (+cu130) is not on the index
    except InvalidVersion:  # "pkg @ file://...", comments, editable installs: the node keeps them, unconstrained
        if name and not name.startswith("#"):
            node[normal(name.split(" @ ")[0])] = None
requirements = []
for pin in pins:
    name = pin.split("==")[0]
    if normal(name) != "torch":
        requirements.append(name if normal(name) in node else pin)
(work / "requirements.txt").write_text("\n".join(requirements) + "\n")
(work / "constraints.txt").write_text("".join(f"{n}=={v}\n" for n, v in node.items() if v and n != "torch"))
(work / "node-names.txt").write_text("".join(f"{n}\n" for n in node))
EOF

platforms=()
for minor in $(seq 5 "$glibc_minor"); do
    platforms+=(--platform "manylinux_2_${minor}_x86_64")
done
platforms+=(--platform manylinux1_x86_64 --platform manylinux2010_x86_64 --platform manylinux2014_x86_64)
"$PY" -m pip download --quiet --disable-pip-version-check --only-binary=:all: --implementation cp \
    --python-version "$python_version" "${platforms[@]}" \
    -r "$work/requirements.txt" -c "$work/constraints.txt" -d "$work/all"

total=0
for wheel in "$work"/all/*.whl; do
    file="$(basename "$wheel")"
    name="$(echo "${file%%-*}" | tr 'A-Z_.' 'a-z--')"
    if grep -qxF "$name" "$work/node-names.txt"; then
        continue  # the node has it
    fi
    mv "$wheel" "$wheels/"
    total=$((total + $(stat -c %s "$wheels/$file")))
done
ls -s --block-size=K -S "$wheels"
echo "$(ls "$wheels" | wc -l) wheels, $((total / 1000000)) MB in $wheels for CPython $python_version" \
    "(manylinux_2_$glibc_minor x86_64)"
if [ "$total" -gt 60000000 ]; then
    echo "prepare_wheels: more than 60 MB; the node lacks the largest packages above" >&2
fi
