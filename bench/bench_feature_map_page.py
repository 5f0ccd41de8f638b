"""The Feature map page's own work at the demo's size and at the full data set's (171,374 generated points):
the display sample, building the one-trace figure and its JSON (the bytes Streamlit sends to the browser), and
a click's card work without images: the point's row, and its nearest neighbours (same class and others) in the
memory-mapped float16 2048-d feature table. No browser, no torch. Times are this process's CPU time (the
machines are shared; single-threaded work takes about that long on an idle one); the wall total is printed too.

    .venv/bin/python bench/bench_feature_map_page.py                     # 2,100 and 171,374 points
    .venv/bin/python bench/bench_feature_map_page.py --sizes 2100 --width 128
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.io as pio

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bmteach import explore
from bmteach.classes import ABBRS, CLASSES


def generated_table(n: int, seed: int = 0) -> pd.DataFrame:
    """A map table like explore.map_table's: classes in the real proportions, ~10% wrong, 2-d coordinates."""
    rng = np.random.default_rng(seed)
    shares = np.array([c.count for c in CLASSES], dtype=float)
    labels = np.asarray(ABBRS)[rng.choice(len(ABBRS), size=n, p=shares / shares.sum())]
    wrong = rng.random(n) < 0.1
    preds = np.where(wrong, np.asarray(ABBRS)[rng.integers(0, len(ABBRS), n)], labels)
    centre = {a: rng.normal(0, 10, 2) for a in ABBRS}
    xy = np.stack([centre[a] for a in labels]) + rng.normal(0, 1.5, (n, 2))
    return pd.DataFrame({
        "row": np.arange(n), "path": [f"{a}/0001-1000/{a}_{i:05d}.jpg" for i, a in enumerate(labels)],
        "label": labels, "fold": rng.integers(0, 5, n), "x": xy[:, 0], "y": xy[:, 1],
        "lineage": "granulopoiesis", "pred": preds, "confidence": rng.uniform(0.3, 1, n),
        "p_label": rng.uniform(0, 1, n), "correct_strict": preds == labels, "correct_tolerant": preds == labels,
    })


def feature_file(n: int, width: int, folder: Path, seed: int = 0) -> np.ndarray:
    """(n, width) float16 written to disk in chunks and opened memory-mapped, as bmteach.features stores them."""
    rng = np.random.default_rng(seed)
    out = np.lib.format.open_memmap(folder / "features.npy", mode="w+", dtype=np.float16, shape=(n, width))
    for s in range(0, n, 8192):
        out[s:s + 8192] = np.maximum(rng.normal(0, 1, (min(8192, n - s), width)), 0)
    out.flush()
    del out
    return np.load(folder / "features.npy", mmap_mode="r")


def timed(fn, *args, **kwargs):
    """(result, CPU seconds of this process): on a shared, overloaded machine wall-clock time measures the other
    processes; single-threaded work takes about its CPU time on an idle machine (wall times are printed too)."""
    w0, t0 = time.perf_counter(), time.process_time()
    result = fn(*args, **kwargs)
    WALL.append(time.perf_counter() - w0)
    return result, time.process_time() - t0


WALL: list[float] = []


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[2100, 171374])
    p.add_argument("--width", type=int, default=2048)
    args = p.parse_args()
    for n in args.sizes:
        table = generated_table(n)
        idx, t_sample = timed(explore.display_sample, table)
        shown = table.iloc[idx]
        fig, t_fig = timed(explore.map_figure, shown, "expert class")
        spec, t_json = timed(pio.to_json, fig, validate=False)
        with tempfile.TemporaryDirectory() as tmp:
            feats = feature_file(n, args.width, Path(tmp))
            row = int(table.loc[table["correct_strict"] == False, "row"].iloc[0])
            labels = table["label"].to_numpy()
            _, t_row = timed(explore.point_row, table, row)
            norms, t_norms = timed(explore.squared_norms, feats)   # once, at extraction (norms.npy)
            d, t_dist = timed(explore.feature_distances, feats, row, norms)
            _, t_same = timed(explore.nearest_neighbours, feats, labels, row, 5, True, d)
            _, t_other = timed(explore.nearest_neighbours, feats, labels, row, 5, False, d)
            t_pick = t_same + t_other
            del feats
        region_ids = table.sort_values("x")["row"].head(2000).tolist()
        _, t_region = timed(explore.region_confusion, table, region_ids)
        print(f"n={n:>7,}: drawn {len(shown):,} points; sample {t_sample * 1e3:.0f} ms, figure {t_fig * 1e3:.0f} ms, "
              f"JSON {t_json * 1e3:.0f} ms = {len(spec) / 2**20:.2f} MiB to the browser; click: row "
              f"{t_row * 1e3:.1f} ms, distances to all {t_dist * 1e3:.0f} ms + both neighbour strips "
              f"{t_pick * 1e3:.0f} ms ({args.width}-d float16, memory-mapped; norms once at extraction "
              f"{t_norms * 1e3:.0f} ms); region of 2,000 -> confusion "
              f"{t_region * 1e3:.0f} ms (CPU times; wall {sum(WALL):.1f} s for all of them)", flush=True)
        WALL.clear()


if __name__ == "__main__":
    main()
