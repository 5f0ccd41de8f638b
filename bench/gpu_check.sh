#!/usr/bin/env bash
# One short GPU check (about 5-7 minutes on one H100/H200 with GPU_CHECK_COMPILE=0, under 8): where the real
# `train` command stands against the network's and the data pipeline's own rates, and feature extraction against
# the bare forward pass, all in images/s (ResNeXt-50, 250 px, bf16 autocast, channels_last).
#
#   bash bench/gpu_check.sh                    # prints figures; writes only under a temporary folder
#   GPU_CHECK_COMPILE=0 bash bench/gpu_check.sh  # skip torch.compile (saves 1-3 minutes)
#
# 1. network only, batch 256 (random tensors on the GPU), and the same under torch.compile
# 2. DataLoader only: JPEG decode + the paper's augmentation + the copy to the GPU, batch 256, with the
#    augmentation on the GPU (the default on CUDA: workers ship uint8 images and their drawn parameters) and in
#    the workers (--augment-on workers); one worker each way and with torchvision's step-by-step transforms (the
#    per-worker cost before and after); then the real training loop for 40 steps under torch.profiler (GPU busy
#    share, top host and GPU operations)
# 3. the real command, `python -m bmteach train --device cuda` on generated synthetic cells (one fold, two
#    epochs of 21 x 1,000 images): at --batch-size 256 with all workers, the same with --augment-on workers, and
#    at the default batch (64)
# 4. feature extraction (issue 10): the feature DataLoader alone (uint8 from the workers, normalised on the GPU),
#    then `bench_features.py`: untrained ResNeXt-50 fold models over the built-in set listed 20 times (42,000
#    images), end to end against the bare forward on batches already in memory (aim >= 80%)
# 5. the paper protocol projected from the rates
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -n "${PYTHON:-}" ]; then PY="$PYTHON"; elif [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
WORK=$(mktemp -d /tmp/bmteach-gpu-check.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
export PYTHONUNBUFFERED=1 BMTEACH_HOME="$WORK/home"
CPUS=$(nproc)
WORKERS=$(( CPUS > 2 ? CPUS - 1 : 1 ))
SECONDS=0
stamp() { echo "--- [${SECONDS}s] $*"; }
rate_of() { sed -nE 's/.*: ([0-9,]+) images\/s.*/\1/p' | head -n 1 | tr -d ,; }

stamp "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, \
'cuda', torch.version.cuda, 'cuda available', torch.cuda.is_available(), 'cpus', __import__('os').cpu_count())"

stamp "1. network only"
NET=$(timeout 180 "$PY" bench/gpu_rates.py network --batch 256 | tee /dev/stderr | rate_of)
if [ "${GPU_CHECK_COMPILE:-1}" != "0" ]; then
  timeout 240 "$PY" bench/gpu_rates.py network --batch 256 --compile || echo "torch.compile: failed or over 240 s"
fi

stamp "synthetic cells: 21 x 60 images"
timeout 180 "$PY" -m bmteach synth --out "$WORK/cells" --per-class 60 --seed 0 | tail -n 1

stamp "2. DataLoader only ($WORKERS workers)"
LOAD=$(timeout 180 "$PY" bench/gpu_rates.py loader --data "$WORK/cells" --batch 256 --workers "$WORKERS" \
  | tee /dev/stderr | rate_of)

timeout 120 "$PY" bench/gpu_rates.py loader --data "$WORK/cells" --batch 256 --batches 30 --workers "$WORKERS" \
  --augment-on workers || echo "loader, augmentation in the workers: failed or over 120 s"

stamp "2a. one worker: augmentation on the GPU, in the worker, torchvision's step by step in the worker (before)"
for how in "--augment-on device" "--augment-on workers" "--reference"; do
  timeout 90 "$PY" bench/gpu_rates.py loader --data "$WORK/cells" --batch 64 --batches 16 --workers 1 $how \
    || echo "one-worker loader $how: failed or over 90 s"
done

stamp "2b. the real training loop under torch.profiler (where the time goes)"
timeout 180 "$PY" bench/gpu_rates.py profile --data "$WORK/cells" --batch 256 --workers "$WORKERS" --steps 40 \
  || echo "profile: failed or over 180 s"

train() {  # name, then extra train arguments
  local name=$1; shift
  timeout 240 "$PY" -m bmteach train --data "$WORK/cells" --model resnext50 --num-folds 5 --folds 0 --epochs 2 \
    --per-class 1000 --device cuda --out "$WORK/$name" "$@" 2>&1 | grep -vE '^\s*$' | tail -n 3
  "$PY" bench/gpu_rates.py train-rate "$WORK/$name"
}
stamp "3a. train command, --batch-size 256 --workers $WORKERS"
TRAIN=$(train run256 --batch-size 256 --workers "$WORKERS" | tee /dev/stderr | rate_of)
stamp "3b. train command, --batch-size 256 --workers $WORKERS --augment-on workers (augmentation in the workers)"
train run256w --batch-size 256 --workers "$WORKERS" --augment-on workers
stamp "3c. train command, default batch (64) and workers"
train run64

stamp "4. feature extraction: the DataLoader alone ($WORKERS workers, then 1), then end to end vs the bare forward"
timeout 120 "$PY" bench/gpu_rates.py feature-loader --data "$WORK/cells" --batch 512 --workers "$WORKERS" \
  || echo "feature loader: failed or over 120 s"
timeout 60 "$PY" bench/gpu_rates.py feature-loader --data "$WORK/cells" --batch 128 --batches 12 --workers 1 \
  || echo "one-worker feature loader: failed or over 60 s"
FEAT=$(timeout 300 "$PY" bench/bench_features.py --random-model resnext50 --image-size 250 --device cuda \
  --batch-size 512 --copies 20 --workers "$WORKERS" --repeat 1 2>&1 | grep -v Warning | tee /dev/stderr \
  | sed -nE 's/.*images in .* = ([0-9,]+) images\/s \(([0-9]+%) of the bare.*/\1 images\/s (\2 of the bare forward)/p')

stamp "5. summary"
echo "network only ${NET:-?} images/s; DataLoader only ${LOAD:-?} images/s; train command (batch 256) ${TRAIN:-?} images/s"
echo "feature extraction (ResNeXt-50, bf16, batch 512, $WORKERS workers): ${FEAT:-?}"
if [ -n "${NET:-}" ] && [ -n "${TRAIN:-}" ]; then
  "$PY" -c "import sys; n, t = map(float, sys.argv[1:]); print(f'train command at {100 * t / n:.0f}% of the network-only rate')" "$NET" "$TRAIN"
fi
if [ -n "${NET:-}" ] && [ -n "${LOAD:-}" ]; then "$PY" bench/gpu_rates.py project --gpu "$NET" --loader "$LOAD"; fi
stamp "done"
