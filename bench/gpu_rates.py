"""Training rates in images/s, one measurement per call (bench/gpu_bench.sh and bench/gpu_check.sh run these).

    python bench/gpu_rates.py network [--batch 256] [--size 250] [--fp32] [--compile] [--device cuda]
        ResNeXt-50 forward + backward + AdamW on random tensors already on the device (the network alone)
    python bench/gpu_rates.py loader --data DIR [--batch 256] [--size 250] [--workers N] [--device cuda]
                                     [--augment-on auto|workers|device] [--reference]
        the training DataLoader alone: JPEG decode + the paper's augmentation + the host-to-device copy, with
        the augmentation where `train` runs it (auto: on the device on CUDA, after the copy; on CPU the batches
        are consumed only). --reference: torchvision's transforms one by one in the workers (before PaperAugment)
    python bench/gpu_rates.py feature-loader --data DIR [--batch 512] [--size 250] [--workers N] [--device cuda]
                                             [--reference]
        the feature extraction's DataLoader alone: decode + resize to uint8 in the workers, then on CUDA the copy
        and the conversion to normalised float there (on CPU: consumed only). --reference: the float32 path
        before (eval_transform in the workers, 4x the bytes)
    python bench/gpu_rates.py profile --data DIR [--batch 256] [--workers N] [--steps 60] [--augment-on ...]
        the real training loop (train_one_epoch) under torch.profiler: GPU busy share, top host and GPU ops
    python bench/gpu_rates.py train-rate RUN
        the rate a finished `python -m bmteach train` reached, from its fold's progress records (startup,
        checkpoints and prediction left out; the whole fold's rate beside it)
    python bench/gpu_rates.py project --gpu RATE --loader RATE
        the paper protocol's duration at min(GPU, loader)

A file, not an inline script: the DataLoader's worker processes (and the synthetic generator's pool) re-import
the main module, which an inline `python - <<EOF` script cannot offer. Prints figures; writes nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def network(batch: int, size: int, amp: bool, compile_: bool, device: str, steps: int = 30, warmup: int = 8) -> None:
    import torch

    from bmteach.models import create_model

    dev = torch.device(device)
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(0)
    model = create_model("resnext50", 21).to(dev, memory_format=torch.channels_last).train()
    net = torch.compile(model) if compile_ else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True if dev.type == "cuda" else None)  # as train.py
    x = torch.randn(batch, 3, size, size, device=dev).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 21, (batch,), device=dev)
    loss_fn = torch.nn.CrossEntropyLoss()
    started = time.perf_counter()
    for i in range(warmup + steps):
        if i == warmup:
            _sync(dev)
            compiled_in, start = time.perf_counter() - started, time.perf_counter()
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            loss = loss_fn(net(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    _sync(dev)
    rate = steps * batch / (time.perf_counter() - start)
    mem = torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else 0.0
    label = f"batch {batch}, {'bf16 autocast' if amp else 'fp32 (tf32)'}, channels_last, fused AdamW" + \
            (f", torch.compile (warm-up incl. compilation {compiled_in:.0f} s)" if compile_ else "")
    print(f"network only: ResNeXt-50 {size}px train step, {label}: {rate:,.0f} images/s (peak {mem:.1f} GiB)")


def _sync(dev) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize()


def loader(data: Path, batch: int, size: int, workers: int | None, device: str, batches: int = 60,
           reference: bool = False, augment_on: str = "auto") -> None:
    import torch

    from bmteach.augment import BalancedSampler, train_transform
    from bmteach.data import index
    from bmteach.models import DATASET_MEAN, DATASET_STD
    from bmteach.train import (
        CellImages,
        SeededSampler,
        augment_on_device,
        default_workers,
        make_loader,
        model_batch,
    )

    dev = torch.device(device)
    found = index(data)
    data = found.class_root or data
    paths = [path for path, _ in found.items]
    labels = [label for _, label in found.items]
    classes = sorted(set(labels))
    on_device = augment_on_device(dev, augment_on) and not reference
    transform = train_transform(size, DATASET_MEAN, DATASET_STD, reference=reference, on_device=on_device)
    ds = CellImages(data, paths, labels, transform, classes)
    workers = default_workers(dev) if workers is None else workers
    per_class = -(-batch * batches // len(classes))
    sampler = SeededSampler(BalancedSampler(ds.targets, per_class=per_class, seed=0), seed=0, fold=0)
    data_loader = make_loader(ds, sampler, batch, dev, workers)
    n, start = 0, None
    for i, (x, y) in enumerate(data_loader):
        if dev.type == "cuda":  # on CPU consumed only: the rate of the workers themselves
            x = model_batch(x, dev)
        if i == 3:
            _sync(dev)
            start, n = time.perf_counter(), 0   # after the workers' start-up
        n += len(y)
    _sync(dev)
    rate = n / (time.perf_counter() - start)
    what = ("reference (step-by-step) augmentation in the workers" if reference else
            "paper augmentation on the device (uint8 + plans from the workers)" if on_device else
            "paper augmentation in the workers")
    print(f"DataLoader only, {workers} workers, batch {batch}: JPEG decode + {what} at {size}px + "
          f"{'copy to cuda' if dev.type == 'cuda' else 'consumed only'}: {rate:,.0f} images/s "
          f"({rate / max(workers, 1):,.0f} per worker; "
          f"load {os.getloadavg()[0]:.1f})")


class _FloatImages:
    """The feature extraction's dataset before uint8 shipping: eval_transform in the worker, float32 out."""

    def __init__(self, root: Path, paths: list[str], size: int):
        from bmteach.augment import eval_transform
        from bmteach.models import DATASET_MEAN, DATASET_STD
        self.root, self.paths, self.transform = root, paths, eval_transform(size, DATASET_MEAN, DATASET_STD)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        from bmteach.images import load_image
        return self.transform(load_image(self.root / self.paths[i])), True


def feature_loader(data: Path, batch: int, size: int, workers: int | None, device: str, batches: int = 30,
                   reference: bool = False) -> None:
    import torch

    from bmteach import features
    from bmteach.data import index
    from bmteach.models import DATASET_MEAN, DATASET_STD

    dev = torch.device(device)
    found = index(data)
    root = found.class_root or data
    paths = [path for path, _ in found.items]
    paths = (paths * -(-batch * batches // len(paths)))[:batch * batches]
    workers = features._default_workers(dev.type) if workers is None else workers
    dataset = _FloatImages(root, paths, size) if reference else features._ImageDataset(root, paths, size)
    mean, std = (torch.tensor(v, dtype=torch.float32, device=dev) for v in (DATASET_MEAN, DATASET_STD))
    n, start = 0, None
    batches = [list(range(s, min(s + batch, len(paths)))) for s in range(0, len(paths), batch)]
    for i, (x, _ok) in enumerate(features._loader(dataset, batches, workers, dev.type == "cuda")):
        if dev.type == "cuda":
            x = x.to(dev, non_blocking=True) if reference else features.model_input(x, dev, mean, std)
        if i == 2:
            _sync(dev)
            start, n = time.perf_counter(), 0   # after the workers' start-up
        n += len(x)
    _sync(dev)
    rate = n / (time.perf_counter() - start)
    what = "float32 (eval_transform in the workers)" if reference else "uint8 (normalised on the device)"
    print(f"feature DataLoader only, {workers} workers, batch {batch}: decode + resize to {size}px, {what}"
          f"{', copy to cuda' if dev.type == 'cuda' else ', consumed only'}: {rate:,.0f} images/s "
          f"({rate / max(workers, 1):,.0f} per worker; load {os.getloadavg()[0]:.1f})")


def profile(data: Path, batch: int, size: int, workers: int | None, device: str, steps: int = 60,
            augment_on: str = "auto") -> None:
    """The real training loop (train.train_one_epoch on the real loader) for two short epochs, the second under
    torch.profiler: its rate, how busy the GPU was, and where the host's and the GPU's time went."""
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from bmteach.augment import BalancedSampler, train_transform
    from bmteach.data import index
    from bmteach.train import (
        CellImages,
        Dist,
        ProgressLog,
        SeededSampler,
        TrainConfig,
        augment_on_device,
        build_fold_state,
        default_workers,
        make_loader,
        train_one_epoch,
    )

    dev = torch.device(device)
    found = index(data)
    paths, labels = [p for p, _ in found.items], [a for _, a in found.items]
    cfg = TrainConfig(model="resnext50", image_size=size, batch_size=batch, lr=1e-3, epochs=2)
    transform = train_transform(size, cfg.mean, cfg.std, on_device=augment_on_device(dev, augment_on))
    ds = CellImages(found.class_root or data, paths, labels, transform, cfg.classes)
    workers = default_workers(dev) if workers is None else workers
    per_class = -(-batch * steps // len(cfg.classes))
    sampler = SeededSampler(BalancedSampler(ds.targets, per_class=per_class, seed=0), seed=0, fold=0)
    loader = make_loader(ds, sampler, batch, dev, workers)
    state = build_fold_state(cfg, 0, len(loader), dev, Dist())
    log = ProgressLog(None, 0, cfg.epochs, len(loader), batch)
    sampler.set_epoch(0)
    train_one_epoch(state, loader, dev, log, 0, "all", None)          # warm-up: workers, cuDNN's kernel choice
    state.step, state.sums = 0, [0.0, 0.0, 0]
    sampler.set_epoch(1)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    _sync(dev)
    start = time.perf_counter()
    with torch_profile(activities=activities) as prof:
        train_one_epoch(state, loader, dev, log, 1, "all", None)
        _sync(dev)
    wall = time.perf_counter() - start
    images = state.sums[2]
    events = prof.key_averages()

    def device_time(e) -> float:
        return getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0) or 0

    busy = sum(device_time(e) for e in events) / 1e6
    print(f"profiled train loop ({workers} workers, batch {batch}): {images / wall:,.0f} images/s under the profiler; "
          f"GPU kernels busy {busy:.2f} s of {wall:.2f} s wall ({100 * busy / wall:.0f}%)")
    for key in ("self_cpu_time_total", "self_device_time_total" if dev.type == "cuda" else None):
        if key:
            try:
                print(events.table(sort_by=key, row_limit=10, max_name_column_width=60))
            except (KeyError, AttributeError, ValueError):
                print(events.table(sort_by="self_cuda_time_total", row_limit=10, max_name_column_width=60))


def train_rate(run: Path) -> None:
    config = json.loads((run / "config.json").read_text())
    batch = int(config["batch_size"])
    for fold_dir in sorted(run.glob("fold*")):
        records = [json.loads(line) for line in (fold_dir / "progress.jsonl").read_text().splitlines() if line]
        records = [r for r in records if not r.get("phase")]  # training steps only (not epoch checks, not done)
        if len(records) < 2:
            print(f"{run.name}/{fold_dir.name}: too few progress records for a rate")
            continue

        def images(r):
            return ((r["epoch"] - 1) * r["steps_per_epoch"] + r["step"]) * batch

        last_epoch = [r for r in records if r["epoch"] == records[-1]["epoch"]]
        within = last_epoch if len(last_epoch) >= 2 else records
        rate = (images(within[-1]) - images(within[0])) / (within[-1]["time"] - within[0]["time"])
        whole = (images(records[-1]) - images(records[0])) / (records[-1]["time"] - records[0]["time"])
        print(f"train command ({run.name}, {fold_dir.name}, batch {batch}): {rate:,.0f} images/s within its last "
              f"epoch; {whole:,.0f} images/s from the first to the last progress record (epoch checkpoints included)")


def project(gpu: float, load: float) -> None:
    folds, epochs, per_epoch = 5, 13, 21 * 25_000
    train_images = folds * epochs * per_epoch
    predict_images = 171_374                      # each image predicted once, by the fold that held it out
    rate = min(gpu, load)
    hours = (train_images / rate + predict_images / (3 * gpu)) / 3600
    print(f"paper protocol: {folds} folds x {epochs} epochs x {per_epoch:,} images = {train_images:,} training images")
    print(f"projected: {hours:.1f} h at {rate:,.0f} images/s ({'data loading' if load < gpu else 'GPU'} bound)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("network")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--size", type=int, default=250)
    p.add_argument("--fp32", action="store_true")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--device", default="cuda")
    p = sub.add_parser("loader")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--size", type=int, default=250)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--device", default="cuda")
    p.add_argument("--batches", type=int, default=60)
    p.add_argument("--reference", action="store_true")
    p.add_argument("--augment-on", default="auto", choices=["auto", "workers", "device"])
    p = sub.add_parser("feature-loader")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--size", type=int, default=250)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--device", default="cuda")
    p.add_argument("--batches", type=int, default=30)
    p.add_argument("--reference", action="store_true")
    p = sub.add_parser("profile")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--size", type=int, default=250)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--device", default="cuda")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--augment-on", default="auto", choices=["auto", "workers", "device"])
    p = sub.add_parser("train-rate")
    p.add_argument("run", type=Path)
    p = sub.add_parser("project")
    p.add_argument("--gpu", type=float, required=True)
    p.add_argument("--loader", type=float, required=True)
    args = parser.parse_args()
    if args.what == "network":
        network(args.batch, args.size, not args.fp32, args.compile, args.device)
    elif args.what == "loader":
        loader(args.data, args.batch, args.size, args.workers, args.device, args.batches, args.reference,
               args.augment_on)
    elif args.what == "feature-loader":
        feature_loader(args.data, args.batch, args.size, args.workers, args.device, args.batches, args.reference)
    elif args.what == "profile":
        profile(args.data, args.batch, args.size, args.workers, args.device, args.steps, args.augment_on)
    elif args.what == "train-rate":
        train_rate(args.run)
    else:
        project(args.gpu, args.loader)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
