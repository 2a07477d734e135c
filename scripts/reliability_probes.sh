#!/usr/bin/env bash
# The operator's probes of issue 13 (bad inputs and planted passwords), on the demo run's affinities: for each, the
# exit code, the number of tracebacks printed, the last line, and where a password could leak how often it did.
#
#   bash scripts/reliability_probes.sh [AFFS (default runs/demo/out.zarr/affs)] [SCRATCH (default: a new temp dir)]
#
# Needs `affcons run -c demo` first. Expected: no traceback anywhere, exit 2 for every refused input, 0 passwords.
set -u
repo="$(cd "$(dirname "$0")/.." && pwd)"
A="${1:-$repo/runs/demo/out.zarr/affs}"
T="${2:-$(mktemp -d)}"
AC="$repo/.venv/bin/affcons"
PY="$repo/.venv/bin/python"
echo "affinities $A, scratch $T"
SEG() { "$AC" segment --affs "$1" --out "$T/$2.zarr" --run-dir "$T/$2.run" --thresholds 0.4 0.6 --block-size 10 128 128 --context 2 32 32 --workers 2 --quiet "${@:3}"; }
report() { rc=$1; name=$2; log=$3; tb=$(grep -c Traceback "$log"); echo "$name: exit $rc, tracebacks $tb, last: $(grep -v '^\s*$' "$log" | tail -1 | cut -c1-200)"; }
SEG $A roi_offset_only --roi-offset 1000 0 0 > $T/p3.log 2>&1; report $? "3 roi-offset without shape" $T/p3.log
TH=$("$PY" -c "print(' '.join(f'{i/100:.2f}' for i in range(20, 80)))")
"$AC" segment --affs $A --out $T/many.zarr --run-dir $T/many.run --thresholds $TH --block-size 10 128 128 --context 2 32 32 --workers 2 --quiet --roi-offset 1000 0 0 --roi-shape 500 1024 1024 > $T/p4.log 2>&1; report $? "4 sixty thresholds" $T/p4.log; echo "   segmentations: $(ls -d $T/many.zarr/segmentation_* | wc -l)"
"$PY" - "$A" "$T" <<'PY'
import sys

import numpy as np
from funlib.geometry import Roi
from affcons.io import create_volume, open_volume
affs_path, scratch = sys.argv[1:]
a = open_volume(affs_path)
roi = Roi((1000, 0, 0), (500, 1024, 1024))
data = a[roi][:3].astype(np.float32)
for name, values in {"f255": data, "neg": -data / 255, "nan": np.full_like(data, np.nan)}.items():
    create_volume(f"{scratch}/bad.zarr/{name}", roi, a.voxel_size, np.float32, num_channels=3)[roi] = values
part = data / 255
part[:, 3, 40, 40] = np.nan
create_volume(f"{scratch}/bad.zarr/partnan", roi, a.voxel_size, np.float32, num_channels=3)[roi] = part
PY
for v in f255 neg nan partnan; do SEG $T/bad.zarr/$v bad_$v > $T/p5_$v.log 2>&1; report $? "5 float affinities $v" $T/p5_$v.log; done
SEG $A huge --block-size 1000 100000 100000 --roi-offset 1000 0 0 --roi-shape 500 1024 1024 > $T/p5h.log 2>&1; report $? "5 block far larger than the volume" $T/p5h.log
"$AC" segment --affs $A --out $T/pw.zarr --thresholds 2 --graph mongodb://user:s3cretPW@127.0.0.1:1/db > $T/p7a.log 2>&1; report $? "7 config error with a password URL" $T/p7a.log; echo "   password printed: $(grep -c s3cretPW $T/p7a.log)"
"$AC" segment --affs $A --out $T/pw2.zarr --run-dir $T/pw2.run --thresholds 0.5 --graph mongodb://:s3cretPW@127.0.0.1:1/db --roi-offset 1000 0 0 --roi-shape 500 1024 1024 --quiet > $T/p7b.log 2>&1; report $? "7 unreachable store, empty user" $T/p7b.log; echo "   password printed: $(grep -c s3cretPW $T/p7b.log), on disk: $(grep -rl s3cretPW $T/pw2.* 2>/dev/null | wc -l)"
