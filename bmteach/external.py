"""External validation (paper Fig. 5): predict a folder-per-class data set from elsewhere with a run's fold
models (probabilities averaged), map its classes onto ours, and report agreement, per-class recall and the share
predicted as artefact / not identifiable. Written into RUN/external/ (predictions.csv, report.json)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from bmteach.classes import ABBRS
from bmteach.errors import UserError
from bmteach.evaluate import pairs_of
from bmteach.metrics import (compute_metrics, label_indices, normalise_pairs, tolerance_matrix,
                             tolerant_indices)
from bmteach.runs import EXTERNAL
from bmteach.storage import atomic_write_json, atomic_write_text

NOT_A_CELL = ("ART", "NIF")  # the paper's Fig. 5 reports how much of an external set lands here


def external_report(true, pred, classes=ABBRS, pairs=None) -> dict:
    """Agreement of predictions with an external data set's mapped labels.

    agreement: accuracy strict and tolerant; per_class: n, strict and tolerant recall and the share predicted as
    ART/NIF for each true class; predicted_share: share of all images predicted as each class; art_nif_share:
    share of all images predicted as ART or NIF; metrics: the full compute_metrics dict.
    """
    classes = tuple(classes)
    pairs = normalise_pairs(pairs)
    true_idx = label_indices(true, classes, "true label")
    pred_idx = label_indices(pred, classes, "prediction")
    if len(true_idx) == 0:
        raise UserError("No external images were predicted.")
    tol_idx = tolerant_indices(true_idx, pred_idx, tolerance_matrix(classes, pairs))
    not_cell = np.isin(pred_idx, [classes.index(c) for c in NOT_A_CELL if c in classes])
    per_class = {}
    for i, abbr in enumerate(classes):
        rows = true_idx == i
        if rows.any():
            per_class[abbr] = {"n": int(rows.sum()),
                               "recall_strict": float((pred_idx[rows] == i).mean()),
                               "recall_tolerant": float((tol_idx[rows] == i).mean()),
                               "art_nif_share": float(not_cell[rows].mean())}
    shares = np.bincount(pred_idx, minlength=len(classes)) / len(pred_idx)
    return {
        "n": int(len(true_idx)),
        "agreement": {"strict": float((pred_idx == true_idx).mean()), "tolerant": float((tol_idx == true_idx).mean())},
        "per_class": per_class,
        "predicted_share": {c: float(s) for c, s in zip(classes, shares) if s > 0},
        "art_nif_share": float(not_cell.mean()),
        "metrics": compute_metrics(list(true), list(pred), classes=classes, pairs=pairs),
    }


def _predict_items(predictor, root: Path, items, batch_size: int, progress=None):
    """Probabilities for (relpath, abbr) items in batches; unreadable images are skipped with a reason."""
    from bmteach.images import load_image, safe_join

    kept, probs, skipped = [], [], []
    for start in range(0, len(items), batch_size):
        images, batch = [], []
        for rel, abbr in items[start:start + batch_size]:
            try:
                images.append(load_image(safe_join(root, rel)))
                batch.append((rel, abbr))
            except UserError as exc:  # BadImageError, or a path leading outside the data folder
                skipped.append((rel, str(exc)))
        if images:
            probs.append(np.asarray(predictor.predict_proba(images, fold=None), dtype=float))
            kept += batch
        if progress:
            progress(min(start + batch_size, len(items)), len(items))
    return kept, (np.concatenate(probs) if probs else np.zeros((0, len(predictor.classes)))), skipped


def predictions_csv(kept, probs: np.ndarray, classes) -> str:
    """path,true,pred,prob_<ABBR>... (the run's class order), probabilities with 6 decimals."""
    pred = [classes[i] for i in probs.argmax(axis=1)] if len(probs) else []
    df = pd.DataFrame({"path": [k[0] for k in kept], "true": [k[1] for k in kept], "pred": pred})
    for j, c in enumerate(classes):
        df[f"prob_{c}"] = probs[:, j].round(6) if len(probs) else []
    return df.to_csv(index=False)


def evaluate_external(run_dir, data_root, mapping=None, out_dir=None, tolerance=None, device="auto",
                      batch_size: int = 32, progress=None) -> dict:
    """Predict an external folder-per-class data set with a run; write predictions.csv and report.json.

    Writes into out_dir (default RUN/external/). Returns the report (see external_report) plus "skipped".
    """
    from bmteach.data import index

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"Run folder not found: {run_dir}")
    out_dir = Path(out_dir) if out_dir else run_dir / EXTERNAL
    found = index(data_root, mapping)
    if not found.items:
        raise UserError(f"No images of mapped classes found in {data_root}; check the mapping CSV.")
    from bmteach.infer import Predictor  # torch: imported only once the inputs are known to be sane

    predictor = Predictor.from_run(run_dir, device=device)
    classes = tuple(predictor.classes)
    kept, probs, unreadable = _predict_items(predictor, Path(found.root), list(found.items), batch_size, progress)
    if not kept:
        raise UserError(f"None of the {len(found.items)} images in {data_root} could be read.")
    pred = [classes[i] for i in probs.argmax(axis=1)]
    true = [abbr for _, abbr in kept]
    all_classes = classes + tuple(c for c in ABBRS if c in set(true) and c not in classes)
    report = external_report(true, pred, all_classes, pairs_of(tolerance))
    skipped = list(found.skipped) + unreadable
    report["skipped"] = [{"path": p, "reason": r} for p, r in skipped]
    report["skipped_notes"] = [f"{len(skipped)} file(s) skipped (see report.json)"] if skipped else []
    report.update(run=str(run_dir), data=str(data_root), mapping=None if mapping is None else str(mapping))
    atomic_write_text(out_dir / "predictions.csv", predictions_csv(kept, probs, classes))
    atomic_write_json(out_dir / "report.json", report)
    return report

