"""Feature extraction speed: `bmteach.features` end to end (decode in DataLoader workers, transform, forward,
float16 store) against the model's bare forward pass on the same batches already in memory. The ratio says
whether decoding and transforms are the bottleneck (aim: extraction >= 80% of the bare forward).

    .venv/bin/python bench/bench_features.py                                  # the demo run, CPU
    .venv/bin/python bench/bench_features.py --workers 0 1 --limit 1050
    .venv/bin/python bench/bench_features.py --random-model resnext50 --device cuda --batch-size 512 --copies 20

--random-model builds a throw-away run of untrained fold models of that architecture over the demo run's
manifest (speed does not depend on the weights). --copies N repeats the manifest N times (each image listed N
times under its own path via symbolic links) to time a bigger set. Every extraction runs against an empty
temporary BMTEACH_HOME, so nothing is cached between rows.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import pandas as pd
import torch

from bmteach import features, runs
from bmteach.augment import eval_transform
from bmteach.images import load_image
from bmteach.infer import Predictor
from bmteach.models import ModelMeta, create_model, save_checkpoint
from bmteach.storage import DEMO_RUN


def make_bench_run(out: Path, source: Path, data: Path, limit: int | None, copies: int,
                   random_model: str | None, image_size: int | None) -> tuple[Path, Path]:
    """A run folder (and data root) for the bench: the source run's manifest (first `limit` rows, stratified by
    order), optionally each image repeated `copies` times under links, and either the source's fold models
    (linked) or untrained `random_model` ones."""
    manifest = runs.read_manifest(source)
    if limit:
        per_fold = -(-limit // manifest["fold"].nunique())
        manifest = manifest[manifest.groupby("fold").cumcount() < per_fold]
    root = data
    if copies > 1:
        root = out / "data"
        rows = []
        for c in range(copies):
            for r in manifest.itertuples():
                rel = f"copy{c}/{r.path}"
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                os.symlink(data / r.path, root / rel)
                rows.append({"path": rel, "label": r.label, "fold": r.fold})
        manifest = pd.DataFrame(rows)
    run = out / "run"
    run.mkdir(parents=True)
    manifest[["path", "label", "fold"]].to_csv(run / runs.MANIFEST, index=False)
    config = runs.read_config(source)
    config["data_root"] = str(root)
    (run / runs.CONFIG).write_text(json.dumps(config))
    for k, d in runs.fold_checkpoint_dirs(source):
        (run / d.name).mkdir()
        if random_model:
            size = image_size or ModelMeta.from_dict(json.loads((d / runs.META).read_text())).image_size
            meta = ModelMeta(model=random_model, image_size=size, fold=k, complete=True)
            save_checkpoint(create_model(random_model), meta, run / d.name / runs.MODEL)
        else:
            for name in (runs.MODEL, runs.META):
                os.symlink(d / name, run / d.name / name)
    return run, root


def bare_forward(run: Path, root: Path, device: str, batch_size: int, autocast: bool,
                 max_images: int = 4096, repeat: int = 1) -> tuple[int, float]:
    """Images/s of forward_features alone over the same kind of batches, decoded in memory beforehand: the first
    `max_images` images of each fold, in full batches where there are enough (memory: 4096 images at 250 px are
    3 GB)."""
    predictor = Predictor.from_run(run, device=device)
    rows = runs.read_manifest(run)
    transform = eval_transform(predictor.image_size, predictor.meta.mean, predictor.meta.std)
    dev = predictor.device
    batches = []
    per_fold = max(batch_size, max_images // max(1, rows["fold"].nunique()))
    for fold, part in rows.groupby("fold"):
        tensors = [transform(load_image(root / p)) for p in part["path"].head(per_fold)]
        for s in range(0, len(tensors), batch_size):
            batches.append((int(fold), torch.stack(tensors[s:s + batch_size])))
    models = {k: predictor.model(k) for k in predictor.folds}
    if dev.type == "cuda":
        models = {k: m.to(memory_format=torch.channels_last) for k, m in models.items()}
        batches = [(k, x.pin_memory()) for k, x in batches]
        features.forward_features(models[batches[0][0]], batches[0][1], dev, autocast)  # warm-up (cudnn)
        torch.cuda.synchronize()
    n = sum(len(x) for _, x in batches)
    best = float("inf")
    for _ in range(repeat):  # the best of `repeat`: the machines are shared, so noise only ever slows a run
        t0 = time.perf_counter()
        for k, x in batches:
            out = features.forward_features(models[k], x, dev, autocast).cpu()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    del out
    return n, best


def extraction(run: Path, root: Path, opts: features.ExtractOptions) -> tuple[int, float]:
    home = tempfile.mkdtemp(prefix="bench-features-home-")
    os.environ["BMTEACH_HOME"] = home
    try:
        t0 = time.perf_counter()
        table = features.run_features(run, root, options=opts)
        seconds = time.perf_counter() - t0
        return len(table), seconds
    finally:
        shutil.rmtree(home, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default=str(DEMO_RUN))
    p.add_argument("--data", default=None, help="data root (default: the run's, else the built-in set)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--workers", type=int, nargs="+", default=[1])
    p.add_argument("--limit", type=int, default=None, help="images of the manifest to use (default: all)")
    p.add_argument("--copies", type=int, default=1)
    p.add_argument("--random-model", choices=["sequential", "resnext50"], default=None)
    p.add_argument("--image-size", type=int, default=None, help="with --random-model (default: the run's)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--no-autocast", action="store_true")
    p.add_argument("--bare-images", type=int, default=4096, help="images decoded in memory for the bare forward")
    p.add_argument("--repeat", type=int, default=3, help="runs of each measurement; the best is reported")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    source = Path(args.run).resolve()
    data = features.resolve_data_root(source, args.data)
    work = Path(tempfile.mkdtemp(prefix="bench-features-"))
    try:
        run, root = make_bench_run(work, source, data, args.limit, args.copies, args.random_model, args.image_size)
        dev = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                           else "cpu")
        batch = args.batch_size or (features.CUDA_BATCH if dev.type == "cuda" else features.CPU_BATCH)
        meta = Predictor.from_run(run, device="cpu").meta
        print(f"{meta.model} {meta.image_size}px, device {dev}"
              f"{' ' + torch.cuda.get_device_name() if dev.type == 'cuda' else ''}, batch {batch}, "
              f"torch threads {torch.get_num_threads()}, cores {os.cpu_count()}, "
              f"autocast {'bf16' if dev.type == 'cuda' and not args.no_autocast else 'off'}")
        n, bare = bare_forward(run, root, str(dev), batch, not args.no_autocast, args.bare_images, args.repeat)
        print(f"bare forward (batches in memory), best of {args.repeat}: {n:,} images in {bare:.2f} s = "
              f"{n / bare:,.0f} images/s (load {os.getloadavg()[0]:.1f})")
        for w in args.workers:
            opts = features.ExtractOptions(device=str(dev), batch_size=batch, workers=w,
                                           autocast=not args.no_autocast)
            runs_ = [extraction(run, root, opts) for _ in range(args.repeat)]
            m, sec = runs_[0][0], min(r[1] for r in runs_)
            print(f"features end to end, {w} worker(s), best of {args.repeat}: {m:,} images in {sec:.2f} s = "
                  f"{m / sec:,.0f} images/s "
                  f"({(m / sec) / (n / bare):.0%} of the bare forward; includes model loading and the float16 write)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
