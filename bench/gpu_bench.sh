#!/usr/bin/env bash
# GPU training figures for the paper's protocol, on synthetic tensors and synthetic cells (no data set needed).
#
#   bash bench/gpu_bench.sh                  # about 4-5 minutes on one H100; prints figures, writes nothing here
#   BENCH_COMPILE=1 bash bench/gpu_bench.sh  # also time torch.compile (adds a minute or two of compilation)
#
# 1. ResNeXt-50 at 250x250: training images/s (forward + backward + AdamW) with bf16 autocast + channels_last,
#    at several batch sizes, and fp32 for comparison.
# 2. The data pipeline on this machine's CPUs: JPEG decode + the paper's augmentation at 250 px through the
#    training DataLoader (the GPU can only go as fast as this feeds it).
# 3. The projection: 5 folds x 13 epochs x 21 classes x 25,000 images (the paper's balancing) at
#    min(GPU, loader) speed, against the paper's ~48 h of V100 time and the 8 GPU-hour target.
# 4. A smoke test of the real command on CUDA: `train --model resnext50` for one short epoch of one fold.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${PYTHON:-}" ]; then PY="$PYTHON"; elif [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
WORK=$(mktemp -d /tmp/bmteach-gpu-bench.XXXXXX)
export PYTHONUNBUFFERED=1 BMTEACH_HOME="$WORK/home" BENCH_WORK="$WORK"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, \
'cuda', torch.version.cuda, 'cpus', __import__('os').cpu_count())"

# The measurements live in bench/gpu_rates.py (a file: the DataLoader's and the generator's worker processes
# re-import the main module, which an inline stdin script cannot offer).
for args in "--batch 128 --fp32" "--batch 64" "--batch 128"; do
  # shellcheck disable=SC2086
  "$PY" bench/gpu_rates.py network $args
done
if [ -n "${BENCH_COMPILE:-}" ]; then "$PY" bench/gpu_rates.py network --batch 256 --compile; fi
GPU_RATE=$("$PY" bench/gpu_rates.py network --batch 256 | tee /dev/stderr | sed -E 's/.*: ([0-9,]+) images.*/\1/; s/,//g')

# --- the data pipeline: synthetic cells written as JPEGs, loaded and augmented by the training DataLoader ---
"$PY" -m bmteach synth --out "$WORK/cells" --per-class 16 --seed 0
LOAD_RATE=$("$PY" bench/gpu_rates.py loader --data "$WORK/cells" --batch 128 | tee /dev/stderr \
  | sed -E 's/.*: ([0-9,]+) images.*/\1/; s/,//g')

# --- the projection: the paper protocol at min(GPU, loader) ---
"$PY" bench/gpu_rates.py project --gpu "$GPU_RATE" --loader "$LOAD_RATE"

echo "--- smoke test: the train command on CUDA (ResNeXt-50, AMP, channels_last, workers) ---"
"$PY" -m bmteach train --data "$WORK/cells" --model resnext50 --num-folds 5 --folds 0 --epochs 1 --per-class 32 \
  --out "$WORK/run" --device cuda
tail -n 1 "$WORK/run/fold0/progress.jsonl"
"$PY" -c "import json,sys; m=json.load(open(sys.argv[1])); print('fold0 meta complete:', m['complete'], m['metrics'])" \
  "$WORK/run/fold0/meta.json"
rm -rf "$WORK"
