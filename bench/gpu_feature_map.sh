#!/usr/bin/env bash
# Issue 10's figures on a GPU machine, in one call (device time is scarce):
#  1. feature extraction vs bare forward: untrained ResNeXt-50 at 250 px, bf16, batch 512, over 172,200 images
#     (the built-in set's 2,100 cells listed 82 times: the full data set's size), 8 and 14 decoding workers;
#  2. the same for the demo run's sequential CNN (42,000 images);
#  3. the CPU path pinned to 2 cores (this project's CI/dev machines have 2), demo run, 1,050 images;
#  4. UMAP (PCA to 50 first) on 5,000 / 20,000 / 171,374 generated 2048-d vectors on the machine's CPU.
# Needs umap-learn and pynndescent wheels in .whl/ (pure Python; numba and scikit-learn are on the machine).
# Usage there: bash bench/gpu_feature_map.sh   (writes logs to $OUT, default /tmp/out)
set -u
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export BMTEACH_HOME=/tmp/bmhome PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
fi
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/machine.log"
python3 -c "import os, torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cpus', os.cpu_count())" | tee -a "$OUT/machine.log"
python3 -c "from bmteach.synth import ensure_default_dataset; print('data', ensure_default_dataset())"
python3 bench/bench_features.py --random-model resnext50 --image-size 250 --device cuda --batch-size 512 \
  --copies 82 --workers 8 14 2>&1 | grep -v Warning | tee "$OUT/features_resnext50.log"
python3 bench/bench_features.py --device cuda --batch-size 1024 --copies 20 --workers 8 2>&1 | grep -v Warning \
  | tee "$OUT/features_demo_gpu.log"
taskset -c 0,1 python3 bench/bench_features.py --device cpu --threads 2 --limit 1050 --workers 0 1 2>&1 \
  | grep -v Warning | tee "$OUT/features_demo_cpu2.log"
timeout "${UMAP_LIMIT_S:-330}" python3 bench/bench_umap.py --sizes 5000 20000 171374 2>&1 | grep -v Warning \
  | tee "$OUT/umap.log"
echo done
