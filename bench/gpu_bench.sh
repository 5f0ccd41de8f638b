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

"$PY" - <<'PYEOF'
import os, sys, time
from pathlib import Path

import torch

sys.path.insert(0, os.getcwd())
from bmteach.models import create_model

assert torch.cuda.is_available(), "no CUDA device: this script measures a GPU"
dev = torch.device("cuda")
torch.backends.cudnn.benchmark = True
torch.backends.cuda.matmul.allow_tf32 = True
torch.backends.cudnn.allow_tf32 = True
SIZE, STEPS, WARMUP = 250, 30, 8
results = {}


def bench(batch, amp, compile_=False):
    torch.manual_seed(0)
    model = create_model("resnext50", 21).to(dev, memory_format=torch.channels_last).train()
    net = torch.compile(model) if compile_ else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(batch, 3, SIZE, SIZE, device=dev).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 21, (batch,), device=dev)
    loss_fn = torch.nn.CrossEntropyLoss()
    for i in range(WARMUP + STEPS):
        if i == WARMUP:
            torch.cuda.synchronize()
            start = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            loss = loss_fn(net(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    torch.cuda.synchronize()
    rate = STEPS * batch / (time.perf_counter() - start)
    mem = torch.cuda.max_memory_allocated() / 2**30
    torch.cuda.reset_peak_memory_stats()
    del model, net, opt, x, y
    torch.cuda.empty_cache()
    return rate, mem


configs = [(128, False, False), (64, True, False), (128, True, False), (256, True, False)]
if os.environ.get("BENCH_COMPILE"):
    configs.append((256, True, True))
for batch, amp, comp in configs:
    rate, mem = bench(batch, amp, comp)
    label = f"batch {batch}, {'bf16 autocast' if amp else 'fp32 (tf32)'}{', torch.compile' if comp else ''}"
    results[label] = rate
    print(f"ResNeXt-50 {SIZE}px train, channels_last, {label}: {rate:,.0f} images/s (peak {mem:.1f} GiB)")
gpu_rate = max(r for k, r in results.items() if "bf16" in k)

# --- the data pipeline: synthetic cells written as JPEGs, loaded and augmented by the training DataLoader ----
from bmteach.augment import BalancedSampler, train_transform
from bmteach.models import DATASET_MEAN, DATASET_STD
from bmteach.synth import generate_dataset
from bmteach.train import CellImages, SeededSampler, default_workers, make_loader

work = Path(os.environ["BENCH_WORK"])
t0 = time.perf_counter()
generate_dataset(work / "cells", per_class=16, seed=0)
print(f"generated {21 * 16} synthetic cells in {time.perf_counter() - t0:.0f} s")
paths = sorted(p.relative_to(work / "cells").as_posix() for p in (work / "cells").rglob("*.jpg")
               if not p.relative_to(work / "cells").as_posix().startswith("masks/"))
labels = [p.split("/")[0] for p in paths]
classes = sorted(set(labels))
ds = CellImages(work / "cells", paths, labels, train_transform(SIZE, DATASET_MEAN, DATASET_STD), classes)
workers = default_workers(dev)
sampler = SeededSampler(BalancedSampler(ds.targets, per_class=200, seed=0), seed=0, fold=0)
loader = make_loader(ds, sampler, 128, dev, workers)
n, start = 0, None
for i, (x, y) in enumerate(loader):
    x = x.to(dev, non_blocking=True)
    if i == 3:
        start, n = time.perf_counter(), 0   # after the workers' start-up
    n += len(y)
torch.cuda.synchronize()
load_rate = n / (time.perf_counter() - start)
print(f"DataLoader, {workers} workers: JPEG decode + paper augmentation at {SIZE}px: {load_rate:,.0f} images/s")

# --- the projection -------------------------------------------------------------------------------------------
folds, epochs, per_epoch = 5, 13, 21 * 25_000
train_images = folds * epochs * per_epoch
predict_images = 171_374                      # each image predicted once, by the fold that held it out
rate = min(gpu_rate, load_rate)
hours = (train_images / rate + predict_images / (3 * gpu_rate)) / 3600
print(f"paper protocol: {folds} folds x {epochs} epochs x {per_epoch:,} images = {train_images:,} training images")
print(f"projected on this machine: {hours:.1f} h at {rate:,.0f} images/s "
      f"({'data loading' if load_rate < gpu_rate else 'GPU'} bound; GPU alone {gpu_rate:,.0f}, loader {load_rate:,.0f})")
print(f"paper: ~48 h of V100 time -> {48 / hours:.1f}x faster; target under 8 h: {'met' if hours < 8 else 'NOT met'}")
PYEOF

echo "--- smoke test: the train command on CUDA (ResNeXt-50, AMP, channels_last, workers) ---"
"$PY" -m bmteach train --data "$WORK/cells" --model resnext50 --num-folds 5 --folds 0 --epochs 1 --per-class 32 \
  --out "$WORK/run" --device cuda
tail -n 1 "$WORK/run/fold0/progress.jsonl"
"$PY" -c "import json,sys; m=json.load(open(sys.argv[1])); print('fold0 meta complete:', m['complete'], m['metrics'])" \
  "$WORK/run/fold0/meta.json"
rm -rf "$WORK"
