#!/usr/bin/env bash
# One short GPU check for a session that is lent a GPU (about 5 minutes on one H100):
#   1. training step speed of the paper-size CRAC network (configs/isbi_ws.yaml), fp32 vs bf16 autocast;
#   2. blockwise prediction throughput (benchmarks/predict.py --device cuda): whole-volume vs blockwise,
#      fp32 vs bf16, FLOP per output voxel, fraction of peak, Kasthuri15 projection.
# Usage: bash benchmarks/gpu_check.sh [OUT_DIR]   (results: OUT_DIR/*.json and *.log; default /tmp/affcons-gpu-check)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-/tmp/affcons-gpu-check}"
mkdir -p "$OUT"
PY="${PYTHON:-.venv/bin/python}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"

for amp in none bf16; do
    rm -rf "$OUT/train-$amp"
    # 40 iterations, no validation; S2 starts at 5000 so no confidence checkpoint is needed
    timeout 240 "$PY" -m affcons.cli train -c isbi_ws --run-dir "$OUT/train-$amp" --iterations 40 \
        --no-validation --device cuda --amp "$amp" --num-workers 4 > "$OUT/train-$amp.json" 2> "$OUT/train-$amp.log"
    echo "train amp=$amp exit $?: $(grep -o '"iterations_per_second": [0-9.]*' "$OUT/train-$amp.json")"
done

timeout 300 "$PY" benchmarks/predict.py --device cuda --keep "$OUT/predict" 2>&1 | tee "$OUT/predict.log"
echo "results in $OUT"
