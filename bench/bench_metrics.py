"""How long scoring the full data set's out-of-fold predictions takes (171,374 images, 21 classes, 5 folds).

Prints figures; not a pass/fail test. Run: .venv/bin/python -m bench.bench_metrics [--n 171374]
The predictions are random (70% right, class frequencies of the real data set); only the timing matters.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from bmteach.classes import ABBRS, CLASSES
from bmteach.evaluate import evaluate_run
from bmteach.metrics import compute_metrics, read_predictions


def fake_run(folder: Path, n: int, seed: int = 0) -> tuple[list, list, list]:
    """A run folder with fold<k>/oof.csv for n images drawn with the real class frequencies."""
    rng = np.random.default_rng(seed)
    freq = np.array([c.count for c in CLASSES], dtype=float)
    true = rng.choice(len(ABBRS), n, p=freq / freq.sum())
    pred = np.where(rng.random(n) < 0.7, true, rng.integers(0, len(ABBRS), n))
    folds = rng.integers(0, 5, n)
    probs = rng.dirichlet(np.ones(len(ABBRS)), n).round(6)
    header = "path,true,pred,fold," + ",".join(f"prob_{c}" for c in ABBRS)
    for k in range(5):
        rows = np.flatnonzero(folds == k)
        lines = [header] + [f"{ABBRS[true[i]]}/{ABBRS[true[i]]}_{i:06d}.jpg,{ABBRS[true[i]]},{ABBRS[pred[i]]},{k},"
                            + ",".join(map(str, probs[i])) for i in rows]
        (folder / f"fold{k}").mkdir(parents=True)
        (folder / f"fold{k}" / "oof.csv").write_text("\n".join(lines) + "\n")
    return [ABBRS[i] for i in true], [ABBRS[i] for i in pred], folds.tolist()


def timed(label: str, fn, repeat: int = 3):
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    print(f"{label:<58} {best:7.2f} s (best of {repeat})")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=171_374)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        true, pred, folds = fake_run(run, args.n)
        print(f"{args.n} predictions, 21 classes, 5 folds")
        timed("compute_metrics pooled", lambda: compute_metrics(true, pred))
        timed("compute_metrics with folds (mean ± sd)", lambda: compute_metrics(true, pred, folds=folds))
        timed("read_predictions (fold0/oof.csv)", lambda: read_predictions(run / "fold0" / "oof.csv", keep=("path",)))
        timed("evaluate_run (join folds, check, metrics, csv, png)", lambda: evaluate_run(run), repeat=2)
        size = (run / "oof.csv").stat().st_size / 2**20
        print(f"run/oof.csv: {size:.1f} MiB")


if __name__ == "__main__":
    main()
