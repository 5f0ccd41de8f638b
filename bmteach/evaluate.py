"""Evaluate a run (its out-of-fold predictions) and predict an external data set (paper Fig. 5).

`evaluate_run(run)` joins fold<k>/oof.csv into run/oof.csv, checks that every image is predicted exactly once,
and writes run/metrics.json (the `metrics --json` format, mean ± sd over folds), run/table.csv (the paper's
Table 1 shape), run/confusion.csv (row-normalised; rows true, columns predicted), run/confusion_counts.csv and
run/confusion.png. `evaluate_external(run, data, mapping)` predicts a folder-per-class data set from elsewhere
with the run's fold models (probabilities averaged), maps its classes onto ours and reports agreement, per-class
recall and the share predicted as artefact / not identifiable.
"""
from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from bmteach.classes import ABBRS, tolerance_set
from bmteach.errors import UserError
from bmteach.metrics import (compute_metrics, confusion_counts, format_table, label_indices,
                             metrics_of_table, normalise_pairs, per_class_table, read_predictions, row_normalise,
                             tolerance_matrix, tolerant_indices)
from bmteach.storage import atomic_write_bytes, atomic_write_json, atomic_write_text, read_json

NOT_A_CELL = ("ART", "NIF")  # the paper's Fig. 5 reports how much of an external set lands here


def _pairs(tolerance):
    """A tolerance CSV path -> its enabled pairs; None -> the default pairs; pairs pass through."""
    if tolerance is None or isinstance(tolerance, (str, Path)):
        return tolerance_set(tolerance) if tolerance else normalise_pairs(None)
    return normalise_pairs(tolerance)


# --- out-of-fold predictions of a run ---------------------------------------------------------------------------

def fold_oof_files(run_dir: Path) -> list[tuple[int, Path]]:
    """(k, fold<k>/oof.csv) for every fold folder that has one, sorted by k."""
    found = []
    for d in run_dir.glob("fold*"):
        suffix = d.name[len("fold"):]
        if d.is_dir() and suffix.isdigit() and (d / "oof.csv").is_file():
            found.append((int(suffix), d / "oof.csv"))
    return sorted(found)


def _read_csv_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = [r for r in csv.reader(f) if any(cell.strip() for cell in r)]
    if not rows:
        raise UserError(f"{path} is empty: expected out-of-fold predictions (path,true,pred,fold,prob_...).")
    return rows[0], rows[1:]


def join_fold_oof(run_dir: Path) -> tuple[list[str], list[list[str]], list[str]]:
    """The fold files' header and rows joined (cells kept verbatim), and warnings about mislabelled folds."""
    header, out_rows, warnings = None, [], []
    for k, path in fold_oof_files(run_dir):
        head, rows = _read_csv_rows(path)
        if header is None:
            header = head
        elif head != header:
            raise UserError(f"{path} has other columns than the first fold's oof.csv; the folds of one run must "
                            "share their classes (retrain or remove the odd fold).")
        if "fold" in header:
            i = header.index("fold")
            wrong = sum(1 for r in rows if r[i].strip() != str(k))
            if wrong:
                warnings.append(f"{wrong} row(s) of fold{k}/oof.csv name another fold in their fold column.")
        out_rows += rows
    return header, out_rows, warnings


def _prediction_keys(header: list[str], rows: list[list[str]]) -> list[tuple]:
    """The (path, true, pred, fold) of every row, sorted: what must agree between run/oof.csv and the folds."""
    cols = [header.index(c) for c in ("path", "true", "pred", "fold") if c in header]
    return sorted(tuple(r[i].strip() if i < len(r) else "" for i in cols) for r in rows)


def _same_predictions(path: Path, header: list[str], rows: list[list[str]]) -> bool:
    try:
        old_header, old_rows = _read_csv_rows(path)
    except UserError:                          # an empty or broken run/oof.csv is simply rebuilt
        return False
    return old_header == header and _prediction_keys(old_header, old_rows) == _prediction_keys(header, rows)


def ensure_run_oof(run_dir: Path) -> tuple[Path, list[str]]:
    """run/oof.csv, (re)built from the fold files when it is missing or holds other predictions than they do.

    An up-to-date run/oof.csv is kept as it is (training writes it in manifest order)."""
    path = run_dir / "oof.csv"
    if not fold_oof_files(run_dir):
        if path.is_file():
            return path, []
        raise UserError(f"{run_dir} has no out-of-fold predictions (no fold<k>/oof.csv); train it first.")
    header, rows, warnings = join_fold_oof(run_dir)
    if not path.is_file() or not _same_predictions(path, header, rows):
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
        atomic_write_text(path, buf.getvalue())
    return path, warnings


def run_classes(run_dir: Path) -> tuple[str, ...]:
    """The run's class order: config.json, else the first fold's meta.json, else the 21 classes."""
    candidates = [run_dir / "config.json"] + sorted(run_dir.glob("fold*/meta.json"))
    for path in candidates:
        if path.is_file():
            try:
                classes = read_json(path).get("classes")
            except (json.JSONDecodeError, OSError, AttributeError):
                continue
            if classes:
                return tuple(classes)
    return ABBRS


def coverage_check(oof: pd.DataFrame, run_dir: Path) -> tuple[dict, list[str]]:
    """Every image predicted exactly once, and (with run/manifest.csv) every manifest image predicted."""
    counts = oof["path"].value_counts()
    dupes = counts[counts > 1]
    check = {"images": int(oof["path"].nunique()), "rows": int(len(oof)), "duplicated": int(len(dupes))}
    warnings = []
    if len(dupes):
        warnings.append(f"{len(dupes)} image(s) are predicted more than once across the folds "
                        f"(e.g. {', '.join(dupes.index[:3])}); every image should appear in exactly one fold.")
    manifest = run_dir / "manifest.csv"
    if manifest.is_file():
        listed = set(pd.read_csv(manifest, dtype=str, keep_default_na=False)["path"])
        predicted = set(oof["path"])
        missing, extra = sorted(listed - predicted), sorted(predicted - listed)
        check.update(manifest_images=len(listed), missing=len(missing), not_in_manifest=len(extra))
        if missing:
            warnings.append(f"{len(missing)} of {len(listed)} manifest image(s) have no out-of-fold prediction "
                            f"(e.g. {', '.join(missing[:3])}); are all folds trained?")
        if extra:
            warnings.append(f"{len(extra)} predicted image(s) are not in run/manifest.csv "
                            f"(e.g. {', '.join(extra[:3])}).")
    return check, warnings


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
    atomic_write_json(run_dir / "metrics.json", metrics)
    atomic_write_text(run_dir / "table.csv", per_class_table(metrics).to_csv(index=False))
    atomic_write_text(run_dir / "confusion.csv", norm.to_csv())
    atomic_write_text(run_dir / "confusion_counts.csv", counts.to_csv())
    title = f"{run_dir.name}: row-normalised confusion matrix ({len(oof)} out-of-fold predictions)"
    atomic_write_bytes(run_dir / "confusion.png", confusion_png(norm, title))


def evaluate_run(run_dir, tolerance=None) -> dict:
    """Score a run's out-of-fold predictions and write metrics.json, table.csv, confusion.csv/.png into it.

    tolerance: a tolerance CSV path (None: assets/tolerance.csv) or an iterable of class pairs.
    Returns the metrics dict; its "warnings" include coverage problems (an image in no fold or in two).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"Run folder not found: {run_dir}")
    oof_path, warnings = ensure_run_oof(run_dir)
    classes = run_classes(run_dir)
    oof = read_predictions(oof_path, classes=classes, keep=("path",))
    if "path" not in oof.columns:
        raise UserError(f"{oof_path} lacks the path column: expected path,true,pred,fold,prob_<class>...")
    if "fold" not in oof.columns:
        warnings.append(f"{oof_path} has no fold column: metrics are pooled, without sd over folds.")
    check, coverage_warnings = coverage_check(oof, run_dir)
    metrics = metrics_of_table(oof, classes=classes, pairs=_pairs(tolerance))
    metrics["warnings"] = coverage_warnings + warnings + metrics["warnings"]
    metrics["coverage"] = check
    write_evaluation(run_dir, metrics, oof, classes)
    return metrics


def cli_evaluate(args) -> int:
    """python -m bmteach evaluate RUN [--tolerance CSV]"""
    run_dir = Path(args.run)
    metrics = evaluate_run(run_dir, tolerance=args.tolerance)
    print(format_table(metrics))
    written = ("metrics.json", "table.csv", "confusion.csv", "confusion.png")
    print(f"\nWrote {', '.join(str(run_dir / name) for name in written)}")
    return 0


# --- external validation (paper Fig. 5) -------------------------------------------------------------------------

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


def format_external_report(report: dict) -> str:
    lines = [f"{report['n']} external images; agreement strict {report['agreement']['strict']:.2f}, "
             f"tolerant {report['agreement']['tolerant']:.2f}; predicted as ART/NIF: {report['art_nif_share']:.2f}",
             "", f"{'class':<6}{'n':>7}{'recall':>9}{'toler.':>9}{'ART/NIF':>9}"]
    for abbr, r in report["per_class"].items():
        lines.append(f"{abbr:<6}{r['n']:>7}{r['recall_strict']:>9.2f}{r['recall_tolerant']:>9.2f}"
                     f"{r['art_nif_share']:>9.2f}")
    shares = sorted(report["predicted_share"].items(), key=lambda kv: -kv[1])
    lines += ["", "predicted as: " + ", ".join(f"{c} {s:.2f}" for c, s in shares)]
    lines += [f"* {w}" for w in report.get("skipped_notes", [])]
    return "\n".join(lines)


def _predict_items(predictor, root: Path, items, batch_size: int, progress=None):
    """Probabilities for (relpath, abbr) items in batches; unreadable images are skipped with a reason."""
    from bmteach.data import load_image, safe_join

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
    out_dir = Path(out_dir) if out_dir else run_dir / "external"
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
    report = external_report(true, pred, all_classes, _pairs(tolerance))
    skipped = list(found.skipped) + unreadable
    report["skipped"] = [{"path": p, "reason": r} for p, r in skipped]
    report["skipped_notes"] = [f"{len(skipped)} file(s) skipped (see report.json)"] if skipped else []
    report.update(run=str(run_dir), data=str(data_root), mapping=None if mapping is None else str(mapping))
    atomic_write_text(out_dir / "predictions.csv", predictions_csv(kept, probs, classes))
    atomic_write_json(out_dir / "report.json", report)
    return report


def cli_evaluate_external(args) -> int:
    """python -m bmteach evaluate-external --run RUN --data DIR --mapping CSV [--out DIR]"""
    from tqdm import tqdm

    out_dir = Path(args.out) if args.out else Path(args.run) / "external"
    bars = []  # the bar appears with the first batch, so input errors print one clean line

    def progress(done: int, total: int) -> None:
        if not bars:
            bars.append(tqdm(total=total, unit="img", file=sys.stderr, desc="predicting"))
        bars[0].update(done - bars[0].n)

    try:
        report = evaluate_external(args.run, args.data, args.mapping, out_dir, progress=progress)
    finally:
        for bar in bars:
            bar.close()
    print(format_external_report(report))
    print(f"\nWrote {out_dir / 'predictions.csv'} and {out_dir / 'report.json'}")
    return 0
