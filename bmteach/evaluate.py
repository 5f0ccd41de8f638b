"""Score a run: its out-of-fold predictions -> metrics.json (the `metrics --json` format, mean ± sd over folds),
table.csv (the paper's Table 1 shape), confusion.csv (row-normalised; rows true, columns predicted),
confusion_counts.csv and confusion.png. Torch-free: it reads files the training wrote (external data sets are
bmteach.external's)."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd

from bmteach import runs
from bmteach.classes import tolerance_set
from bmteach.errors import UserError
from bmteach.metrics import (confusion_counts, label_indices, metrics_of_table, normalise_pairs, per_class_table,
                             read_predictions, row_normalise)
from bmteach.storage import atomic_write_bytes, atomic_write_json, atomic_write_text


def pairs_of(tolerance):
    """A tolerance CSV path -> its enabled pairs; None -> the default pairs; pairs pass through."""
    if tolerance is None or isinstance(tolerance, (str, Path)):
        return tolerance_set(tolerance) if tolerance else normalise_pairs(None)
    return normalise_pairs(tolerance)


# --- files written by evaluate ----------------------------------------------------------------------------------

def confusion_frames(true, pred, classes) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Counts and row-normalised confusion matrices as DataFrames (index: true class, columns: predicted)."""
    counts = confusion_counts(label_indices(true, classes, "true label"),
                              label_indices(pred, classes, "prediction"), len(classes))
    index = pd.Index(list(classes), name="true")
    return (pd.DataFrame(counts, index=index, columns=list(classes)),
            pd.DataFrame(row_normalise(counts), index=index, columns=list(classes)))


def confusion_png(norm: pd.DataFrame, title: str) -> bytes:
    """A row-normalised confusion matrix as PNG bytes, readable at 21x21 (Agg canvas, no global backend)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(norm)
    size = max(4.0, 0.45 * n + 2.0)
    fig = Figure(figsize=(size, size * 0.92))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(norm.to_numpy(), cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(n), labels=list(norm.columns), rotation=90, fontsize=8)
    ax.set_yticks(range(n), labels=list(norm.index), fontsize=8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title, fontsize=10)
    for (i, j), value in np.ndenumerate(norm.to_numpy()):
        if value >= 0.005:  # blank cells for (near) zero keep the matrix readable
            ax.text(j, i, f"{value:.2f}"[1:] if value < 1 else "1", ha="center", va="center", fontsize=6,
                    color="white" if value > 0.5 else "black")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=150)
    return buf.getvalue()


def write_evaluation(run_dir: Path, metrics: dict, oof: pd.DataFrame, classes) -> None:
    counts, norm = confusion_frames(oof["true"], oof["pred"], classes)
    atomic_write_json(run_dir / runs.METRICS, metrics)
    atomic_write_text(run_dir / runs.TABLE, per_class_table(metrics).to_csv(index=False))
    atomic_write_text(run_dir / runs.CONFUSION, norm.to_csv())
    atomic_write_text(run_dir / runs.CONFUSION_COUNTS, counts.to_csv())
    title = f"{run_dir.name}: row-normalised confusion matrix ({len(oof)} out-of-fold predictions)"
    atomic_write_bytes(run_dir / runs.CONFUSION_PNG, confusion_png(norm, title))


def coverage_of(oof: pd.DataFrame, joined: bool) -> dict:
    """The coverage record kept in metrics.json; a joined run (runs.join_oof) has each manifest image exactly
    once, or it would not have been scored."""
    n = int(oof["path"].nunique())
    record = {"images": n, "rows": int(len(oof)), "duplicated": int(len(oof) - n)}
    if joined:
        record.update(manifest_images=n, missing=0, not_in_manifest=0)
    return record


def evaluate_run(run_dir, tolerance=None) -> dict:
    """Score a run's out-of-fold predictions and write metrics.json, table.csv, confusion.csv/.png into it.

    The predictions are the folds' files joined by runs.write_oof (every manifest image exactly once, else a
    one-sentence error); a run shipped with RUN/oof.csv alone is scored from that file.
    tolerance: a tolerance CSV path (None: assets/tolerance.csv) or an iterable of class pairs.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"Run folder not found: {run_dir}")
    joined = bool(runs.fold_oof_files(run_dir))
    if joined:
        runs.write_oof(run_dir)
    elif not (run_dir / runs.OOF).is_file():
        raise UserError(f"{run_dir} has no out-of-fold predictions (no fold<k>/{runs.OOF}); train it first.")
    classes = tuple(runs.run_classes(run_dir))
    oof = read_predictions(run_dir / runs.OOF, classes=classes, keep=("path",))
    warnings = []
    if "fold" not in oof.columns:
        warnings.append(f"{run_dir / runs.OOF} has no fold column: metrics are pooled, without sd over folds.")
    metrics = metrics_of_table(oof, classes=classes, pairs=pairs_of(tolerance))
    metrics["warnings"] = warnings + metrics["warnings"]
    metrics["coverage"] = coverage_of(oof, joined)
    write_evaluation(run_dir, metrics, oof, classes)
    return metrics
