#!/usr/bin/env bash
# Retrain the shipped demo run (models/demo) on a CUDA machine and pack it, with its out-of-distribution score;
# also time penultimate-feature extraction of a ResNeXt-50 at the full data set's size (issue 10's GPU figure).
#
#   OUT=/tmp/out bash bench/gpu_demo_retrain.sh     # writes $OUT/demo.tar and prints figures
#
# The run is the documented demo command (docs/demo-run.md) with --device cuda: the same data, split, seeds
# and budget. Its held-out predictions are float32 without autocast or TF32, so a CPU recomputes them from
# the same weights. Unpack with `rm -rf models/demo && tar -C models -xf demo.tar` (then check `git status`).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export BMTEACH_HOME=${BMTEACH_HOME:-/tmp/bmteach-gpu-home} PYTHONUNBUFFERED=1
WORK=$(mktemp -d /tmp/bmteach-demo.XXXXXX)
SECONDS=0
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
"$PY" -c "from bmteach.launch import generate_in_child; generate_in_child()" | tail -n 1
echo "--- [${SECONDS}s] default synthetic set drawn"
"$PY" -m bmteach train --data default --model sequential --image-size 128 --epochs 20 --per-class 80 \
  --out "$WORK/demo" --device cuda 2>&1 | grep -vE '^\s*$' | tail -n 30
echo "--- [${SECONDS}s] demo run trained"
"$PY" -m bmteach ood "$WORK/demo" 2>&1 | tail -n 3
echo "--- [${SECONDS}s] out-of-distribution score fitted"
rm -f "$WORK/demo/.lock" "$WORK/demo/heartbeat.json" "$WORK/demo/train.log"
tar -C "$WORK" -cf "$OUT/demo.tar" demo
du -sh "$WORK/demo"
if [ "${FEATURES:-1}" != "0" ]; then
  timeout 240 "$PY" bench/bench_features.py --random-model resnext50 --image-size 250 --device cuda \
    --batch-size 512 --copies 82 --workers 15 2>&1 | grep -v Warning | tail -n 15 || echo "features bench: failed"
  echo "--- [${SECONDS}s] feature extraction timed"
fi
