"""Realism of the synthetic cells: train the small sequential CNN on synthetic cells only, classify real ones.

    .venv/bin/python bench/synth_realism.py [--per-class 160] [--epochs 8] [--threads 2]

Trains bmteach's "sequential" model at 128 px on synthetic cells (random flips, 90-degree rotations, colour
jitter), never on real cells. Prints:
  - learnability: strict and tolerant accuracy on held-out synthetic cells (another seed);
  - realism: balanced accuracy on the 420 real cells of ../shared/realdata (7 classes, chance 14%), with
    21-way argmax and with argmax restricted to the 7 classes present, and the 7x7 confusion matrix.
"""
from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torchvision.transforms import v2

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bmteach import synth  # noqa: E402
from bmteach.augment import eval_transform  # noqa: E402
from bmteach.classes import ABBRS, tolerance_set  # noqa: E402
from bmteach.models import DATASET_MEAN, DATASET_STD, create_model  # noqa: E402

REAL = Path(__file__).resolve().parent.parent.parent / "shared" / "realdata" / "BM_cytomorphology_sample"
IMAGE_SIZE = 128


def _synthetic_batch(job) -> np.ndarray:
    """Images (uint8, N x 3 x S x S) of one class: generated, JPEG-encoded like the data set, resized."""
    import io
    from PIL import Image

    abbr, seed, first, count, shift, difficulty = job
    resize = v2.Compose([v2.PILToTensor(), v2.Resize((IMAGE_SIZE, IMAGE_SIZE), antialias=True)])
    out = []
    for n in range(first, first + count):
        image, _ = synth.generate_cell(abbr, synth.cell_rng(seed, abbr, n), difficulty, shift)
        buf = io.BytesIO()
        image.save(buf, "JPEG", quality=synth.JPEG_QUALITY)
        out.append(resize(Image.open(buf).convert("RGB")).numpy())
    return np.stack(out)


def synthetic_set(per_class: int, seed: int, workers: int, shift="none", difficulty=0.5):
    jobs = [(abbr, seed, first, min(20, per_class - first + 1), shift, difficulty)
            for abbr in ABBRS for first in range(1, per_class + 1, 20)]
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        parts = list(pool.map(_synthetic_batch, jobs))
    labels = np.concatenate([np.full(len(p), ABBRS.index(j[0])) for p, j in zip(parts, jobs)])
    return torch.from_numpy(np.concatenate(parts)), torch.from_numpy(labels)


def normalise(x_uint8: torch.Tensor) -> torch.Tensor:
    x = x_uint8.float() / 255
    mean = torch.tensor(DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(DATASET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Flips, 90-degree rotations, scale, focus blur and colour jitter (per-channel gain, brightness, contrast,
    saturation) on a uint8 batch: enough variety that the model must learn shapes, not one rendering style."""
    x = x.float() / 255
    if torch.rand(1, generator=gen) < 0.5:
        x = x.flip(3)
    x = torch.rot90(x, int(torch.randint(4, (1,), generator=gen)), (2, 3))
    scale = float(0.85 + 0.3 * torch.rand(1, generator=gen))
    if abs(scale - 1) > 0.03:
        size = int(round(IMAGE_SIZE * scale))
        x = nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        x = v2.functional.center_crop(x, [IMAGE_SIZE, IMAGE_SIZE]) if size > IMAGE_SIZE else \
            nn.functional.pad(x, [(IMAGE_SIZE - size) // 2, IMAGE_SIZE - size - (IMAGE_SIZE - size) // 2] * 2,
                              mode="replicate")
    sigma = float(torch.rand(1, generator=gen)) * 1.2
    if sigma > 0.3:
        x = v2.functional.gaussian_blur(x, [5, 5], [sigma, sigma])
    n = x.shape[0]
    gain = 1 + 0.1 * torch.randn(n, 3, 1, 1, generator=gen)
    bright = 0.06 * torch.randn(n, 1, 1, 1, generator=gen)
    contrast = 1 + 0.15 * torch.randn(n, 1, 1, 1, generator=gen)
    saturation = 1 + 0.2 * torch.randn(n, 1, 1, 1, generator=gen)
    grey = x.mean(1, keepdim=True)
    x = grey + (x - grey) * saturation
    mean = x.mean((1, 2, 3), keepdim=True)
    x = ((x - mean) * contrast + mean) * gain + bright
    x = x + 0.01 * torch.randn(x.shape, generator=gen)
    return normalise((x.clamp(0, 1) * 255).round().to(torch.uint8)).contiguous(memory_format=torch.channels_last)


def train(x, y, epochs: int, seed: int, batch: int = 64, lr: float = 3e-3):
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = create_model("sequential", len(ABBRS)).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * ((len(x) + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
    started = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x), generator=gen)
        total, correct = 0.0, 0
        for i in range(0, len(x), batch):
            idx = order[i:i + batch]
            logits = model(augment(x[idx], gen))
            loss = loss_fn(logits, y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
            correct += int((logits.argmax(1) == y[idx]).sum())
        print(f"  epoch {epoch + 1}/{epochs}: loss {total / len(x):.3f} train acc {correct / len(x):.3f} "
              f"({time.perf_counter() - started:.0f} s)", flush=True)
    return model.eval()


@torch.no_grad()
def logits_of(model, x: torch.Tensor, batch: int = 128) -> torch.Tensor:
    return torch.cat([model(x[i:i + batch]) for i in range(0, len(x), batch)])


def real_set():
    from PIL import Image

    transform = eval_transform(IMAGE_SIZE, DATASET_MEAN, DATASET_STD)
    xs, ys = [], []
    for folder in sorted(p for p in REAL.iterdir() if p.is_dir()):
        for f in sorted(folder.rglob("*.jpg")):
            with Image.open(f) as im:
                xs.append(transform(im.convert("RGB")))
            ys.append(ABBRS.index(folder.name))
    return torch.stack(xs), torch.tensor(ys)


def balanced_accuracy(true: np.ndarray, pred: np.ndarray, classes) -> float:
    return float(np.mean([(pred[true == c] == c).mean() for c in classes if (true == c).any()]))


def print_confusion(true, pred, classes) -> None:
    names = [ABBRS[c] for c in classes]
    print("  true \\ pred " + " ".join(f"{n:>4}" for n in names) + " other  recall")
    for c, n in zip(classes, names):
        row = pred[true == c]
        counts = [int((row == k).sum()) for k in classes]
        other = len(row) - sum(counts)
        print(f"  {n:>11} " + " ".join(f"{v:4d}" for v in counts) + f" {other:5d}  {counts[classes.index(c)] / len(row):.2f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-class", type=int, default=160)
    ap.add_argument("--test-per-class", type=int, default=30)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--difficulty", type=float, default=0.5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    x, y = synthetic_set(args.per_class, 100 + args.seed, args.threads, difficulty=args.difficulty)
    xt, yt = synthetic_set(args.test_per_class, 200 + args.seed, args.threads, difficulty=args.difficulty)
    print(f"generated {len(x)} training + {len(xt)} test synthetic cells in {time.perf_counter() - started:.0f} s")
    model = train(x, y, args.epochs, args.seed)

    pred = logits_of(model, normalise(xt)).argmax(1).numpy()
    true = yt.numpy()
    pairs = tolerance_set()
    tolerant = np.mean([t == p or frozenset((ABBRS[t], ABBRS[p])) in pairs for t, p in zip(true, pred)])
    print(f"learnability (held-out synthetic, {len(true)} cells): strict accuracy {np.mean(true == pred):.3f}, "
          f"tolerant accuracy {tolerant:.3f}")
    wrong = true != pred
    on_pairs = np.mean([frozenset((ABBRS[t], ABBRS[p])) in pairs for t, p in zip(true[wrong], pred[wrong])])
    print(f"  errors on tolerated pairs: {on_pairs:.2f} of {int(wrong.sum())}")

    if not REAL.is_dir():
        print("real sample not found: skipped realism")
        return
    xr, yr = real_set()
    logits = logits_of(model, xr)
    classes = sorted(set(yr.tolist()))
    true = yr.numpy()
    pred21 = logits.argmax(1).numpy()
    restricted = torch.full_like(logits, float("-inf"))
    restricted[:, classes] = logits[:, classes]
    pred7 = restricted.argmax(1).numpy()
    print(f"realism (420 real cells, 7 classes, chance 0.14): balanced accuracy 21-way {balanced_accuracy(true, pred21, classes):.3f}, "
          f"restricted to the 7 classes {balanced_accuracy(true, pred7, classes):.3f}")
    print("confusion, 21-way argmax ('other' = one of the 14 absent classes):")
    print_confusion(true, pred21, classes)
    print("confusion, argmax over the 7 present classes:")
    print_confusion(true, pred7, classes)
    counts = np.bincount(pred21, minlength=len(ABBRS))
    print("21-way predictions by class: " + ", ".join(f"{ABBRS[i]} {c}" for i, c in enumerate(counts) if c))
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
