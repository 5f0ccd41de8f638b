"""Synthetic generator benchmark: speed of a full data set and colour statistics against the real sample.

    .venv/bin/python bench/bench_synth.py [--per-class 100] [--workers N] [--colour-only]

Prints seconds for 21 classes x N images (JPEG + mask PNG written) and the per-channel mean/std (0-1 scale,
float64) of synthetic patches next to the real sample's (../shared/realdata), all classes and the 7 shared ones.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bmteach import synth  # noqa: E402
from bmteach.classes import ABBRS  # noqa: E402

REAL = Path(__file__).resolve().parent.parent.parent / "shared" / "realdata" / "BM_cytomorphology_sample"
REAL_MEAN, REAL_STD = (0.564, 0.492, 0.736), (0.248, 0.291, 0.177)


def channel_stats(files) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std over all pixels of the images (accumulated in float64)."""
    total, total_sq, n = np.zeros(3), np.zeros(3), 0
    for f in files:
        a = np.asarray(Image.open(f).convert("RGB"), dtype=np.float64) / 255.0
        total += a.sum((0, 1))
        total_sq += (a ** 2).sum((0, 1))
        n += a.shape[0] * a.shape[1]
    mean = total / n
    return mean, np.sqrt(total_sq / n - mean ** 2)


def fmt(v) -> str:
    return "(" + ", ".join(f"{x:.3f}" for x in v) + ")"


def report_colour(root: Path, classes) -> None:
    files = [f for c in classes for f in sorted((root / c).rglob("*.jpg"))]
    mean, std = channel_stats(files)
    dm, ds = np.abs(mean - REAL_MEAN).max(), np.abs(std - REAL_STD).max()
    print(f"  synthetic {len(classes):2d} classes ({len(files)} images): mean {fmt(mean)} std {fmt(std)}  "
          f"max |d mean| {dm:.3f} (target <= 0.03)  max |d std| {ds:.3f} (target <= 0.04)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-class", type=int, default=100)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--shift", default="none")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "synthetic"
        started = time.perf_counter()
        synth.generate_dataset(out, per_class=args.per_class, shift=args.shift, workers=args.workers)
        seconds = time.perf_counter() - started
        n = args.per_class * len(ABBRS)
        size_mb = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 1e6
        workers = synth.dataset._pool_size(n, args.workers)
        print(f"speed: {n} images (21 x {args.per_class}) + masks in {seconds:.1f} s = "
              f"{1000 * seconds / n:.1f} ms/image (workers={workers}); {size_mb:.0f} MB")
        print("colour (0-1 scale, float64):")
        if REAL.is_dir():
            real_classes = sorted(p.name for p in REAL.iterdir() if p.is_dir())
            mean, std = channel_stats(sorted(REAL.rglob("*.jpg")))
            print(f"  real      {len(real_classes)} classes (420 images): mean {fmt(mean)} std {fmt(std)}")
            report_colour(out, real_classes)
        report_colour(out, ABBRS)


if __name__ == "__main__":
    main()
