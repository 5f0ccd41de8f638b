"""CPU training throughput of the sequential model and the demo run's projected and measured time.

    .venv/bin/python bench/bench_train.py                 # throughput figures and the projection
    .venv/bin/python bench/bench_train.py --run-demo OUT  # also time the documented demo command into OUT

Prints figures; nothing passes or fails. The machine may be shared: say so when quoting the numbers.
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bmteach.augment import train_transform  # noqa: E402
from bmteach.models import DATASET_MEAN, DATASET_STD, create_model  # noqa: E402

# The demo run (docs/demo-run.md): keep these in step with that page.
DEMO = {"epochs": 20, "per_class": 80, "folds": 5, "classes": 21, "image_size": 128, "batch": 64}
DEMO_COMMAND = ("python -m bmteach train --data default --model sequential --image-size {image_size} "
                "--epochs {epochs} --per-class {per_class} --out {out}")


def model_images_per_s(image_size: int, batch: int, steps: int) -> float:
    """Forward + backward + AdamW step on random tensors: the network alone."""
    torch.manual_seed(0)
    model = create_model("sequential", 21).train().to(memory_format=torch.channels_last)  # as train.py does
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(batch, 3, image_size, image_size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 21, (batch,))
    loss_fn = torch.nn.CrossEntropyLoss()
    for i in range(steps + 2):
        if i == 2:
            start = time.perf_counter()   # two warm-up steps
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    return steps * batch / (time.perf_counter() - start)


def augment_images_per_s(image_size: int, n: int) -> float:
    """Decode a 250 px JPEG and apply the training augmentation, one image at a time (one process)."""
    import io

    from bmteach.images import load_image

    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (250, 250, 3), dtype=np.uint8)).save(buf, format="JPEG", quality=90)
    data = buf.getvalue()
    t = train_transform(image_size, DATASET_MEAN, DATASET_STD)
    start = time.perf_counter()
    for _ in range(n):
        t(load_image(data))
    return n / (time.perf_counter() - start)


def projected_demo_seconds(train_rate: float, predict_rate: float) -> float:
    d = DEMO
    train_images = d["folds"] * d["epochs"] * d["per_class"] * d["classes"]
    predict_images = d["classes"] * 100          # the default data set: 100 per class, each predicted once
    return train_images / train_rate + predict_images / predict_rate


def run_demo(out: Path) -> float:
    cmd = DEMO_COMMAND.format(out=shlex.quote(str(out)), **DEMO)
    print(f"running: {cmd}", flush=True)
    start = time.perf_counter()
    subprocess.run([sys.executable, *shlex.split(cmd)[1:]], cwd=REPO, check=True)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-demo", metavar="OUT", help="also run and time the demo command into OUT")
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
    size, batch = DEMO["image_size"], DEMO["batch"]
    for other in (96, 64):  # smaller sizes, for reference
        rate = model_images_per_s(other, batch, args.steps)
        print(f"sequential model, {other} px, batch {batch}: {rate:.0f} training images/s (network only)")
    model_rate = model_images_per_s(size, batch, args.steps)
    print(f"sequential model, {size} px (the demo's size), batch {batch}: {model_rate:.0f} training images/s "
          "(network only)")
    aug_rate = augment_images_per_s(size, 200)
    print(f"JPEG decode + training augmentation at {size} px: {aug_rate:.0f} images/s (one process)")
    pipeline = 1.0 / (1.0 / model_rate + 1.0 / aug_rate)   # loading in the main process, as on CPU
    print(f"training pipeline (loading in the main process): about {pipeline:.0f} images/s")
    seconds = projected_demo_seconds(pipeline, predict_rate=4 * pipeline)
    d = DEMO
    print(f"demo run ({d['folds']} folds x {d['epochs']} epochs x {d['per_class']} per class x {d['classes']} "
          f"classes = {d['folds'] * d['epochs'] * d['per_class'] * d['classes']:,} training images): "
          f"projected {seconds / 60:.1f} min")
    if args.run_demo:
        took = run_demo(Path(args.run_demo))
        size_mb = sum(p.stat().st_size for p in Path(args.run_demo).rglob("*") if p.is_file()) / 1e6
        print(f"demo run measured: {took / 60:.1f} min, {size_mb:.1f} MB on disk")


if __name__ == "__main__":
    main()
