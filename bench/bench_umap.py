"""UMAP (after PCA to 50 dimensions, as bmteach.embed does) on generated 2048-d feature vectors: time and peak
memory per size. Each size runs in a fresh child process, so its peak RSS is its own; numba's JIT compile is
paid by a 1,000-point warm-up first and reported separately.

    .venv/bin/python bench/bench_umap.py                      # 5,000 and 20,000
    .venv/bin/python bench/bench_umap.py --sizes 5000 20000 171374

The vectors: 21 Gaussian clusters (one per class, sizes in the real data set's proportions) in 2048-d, stored as
float16 like the feature cache. Prints one line per size.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def generated_features(n: int, dim: int = 2048, seed: int = 0):
    import numpy as np

    from bmteach.classes import CLASSES
    rng = np.random.default_rng(seed)
    shares = np.array([c.count for c in CLASSES], dtype=float)
    labels = rng.choice(len(shares), size=n, p=shares / shares.sum())
    centres = rng.normal(0, 1.0, size=(len(shares), dim)).astype(np.float32)
    x = np.empty((n, dim), dtype=np.float16)
    for start in range(0, n, 8192):   # in chunks: generating must not dominate the peak memory measured
        part = centres[labels[start:start + 8192]]
        part += rng.normal(0, 0.8, size=part.shape).astype(np.float32)
        x[start:start + 8192] = np.maximum(part, 0)   # post-ReLU average pooling: non-negative, like real features
    return x


def child(n: int, seed: int) -> dict:
    """Runs inside the child: warm-up, then PCA + UMAP on n points; returns the figures."""
    from bmteach.embed import EmbedParams, embed_features, reduce_pca
    x = generated_features(n, seed=seed)
    t0 = time.perf_counter()
    embed_features(generated_features(1000, seed=seed + 1), EmbedParams(seed=seed))
    warmup = time.perf_counter() - t0
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    reduce_pca(x, 50, seed)
    pca = time.perf_counter() - t0
    t0, c0 = time.perf_counter(), time.process_time()
    coords = embed_features(x, EmbedParams(seed=seed))
    total, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"n": n, "warmup_s": round(warmup, 1), "pca_s": round(pca, 1), "pca_umap_s": round(total, 1),
            "pca_umap_cpu_s": round(cpu, 1), "load": round(os.getloadavg()[0], 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "rss_after_warmup_mb": round(rss_before), "features_mb": round(x.nbytes / 2**20),
            "finite": bool(abs(coords).max() < 1e6)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000, 20000])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.seed)), flush=True)
        return
    print(f"cpu cores {os.cpu_count()}; PCA to 50 then UMAP (n_neighbors 15, min_dist 0.1, seeded: one thread)")
    for n in args.sizes:
        done = subprocess.run([sys.executable, __file__, "--child", str(n), "--seed", str(args.seed)],
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            print(f"n={n:,}: failed: {done.stderr.strip().splitlines()[-1:]}")
            continue
        r = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"n={r['n']:>7,}  PCA {r['pca_s']:6.1f} s  PCA+UMAP {r['pca_umap_s']:7.1f} s wall, "
              f"{r['pca_umap_cpu_s']:7.1f} s CPU (load {r['load']})  peak RSS "
              f"{r['peak_rss_mb']:6,} MB (features {r['features_mb']:,} MB float16; JIT warm-up {r['warmup_s']} s)",
              flush=True)


if __name__ == "__main__":
    main()
