"""Strict and tolerant precision/recall (Matek et al. 2021, Table 1), confusion matrices, fold mean ± sd.

Definitions (documented here because every number in the app and in metrics.json comes from them):
- strict: the prediction must equal the true class.
- tolerant: a prediction whose (true, pred) pair is a tolerated pair (assets/tolerance.csv, both directions)
  is replaced by the true class, then ordinary precision/recall are computed.
- precision = TP / predictions of the class; a class with true images but no predictions has precision 0 and
  is listed under "no_predictions" and in "warnings". recall = TP / true images; a class that is predicted but
  has no true images has recall null (undefined) and F1 0. A class with neither true images nor predictions is
  left out of the per-class results and of every average (listed under "absent_classes").
- balanced accuracy = mean recall over classes with true images; macro-F1 = mean F1 over classes with true
  images or predictions (scikit-learn's conventions).
- with folds: every number is the mean over the folds where it is defined, and `<name>_sd` is the sample
  standard deviation (ddof=1) over those folds (null with fewer than two). `support` is always the total number
  of true images over all folds, not a mean.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bmteach.classes import ABBRS, class_name, tolerance_set
from bmteach.errors import UserError

MODES = ("strict", "tolerant")
CLASS_METRICS = ("precision", "recall", "f1")
OVERALL_METRICS = ("accuracy", "balanced_accuracy", "macro_f1")
SD_NOTE = "sample standard deviation over folds (ddof=1)"


# --- label handling ----------------------------------------------------------------------------------------

def normalise_pairs(pairs) -> frozenset[frozenset[str]]:
    """None -> the default tolerance pairs; any iterable of 2-tuples/sets -> a set of unordered pairs."""
    if pairs is None:
        return tolerance_set()
    return frozenset(frozenset(p) for p in pairs)


def label_indices(labels, classes, what: str = "label") -> np.ndarray:
    """Class abbreviations -> integer positions in `classes`; unknown ones are one clear error."""
    lookup = {c: i for i, c in enumerate(classes)}
    values = [str(v) for v in labels]
    unknown = sorted({v for v in values if v not in lookup})
    if unknown:
        shown = ", ".join(repr(u) for u in unknown[:10]) + (" ..." if len(unknown) > 10 else "")
        raise UserError(f"Unknown class {what}(s) {shown}: expected one of {', '.join(classes)}.")
    return np.fromiter((lookup[v] for v in values), dtype=np.int64, count=len(values))


def tolerance_matrix(classes, pairs) -> np.ndarray:
    """Boolean (C, C): entry [t, p] is True when predicting classes[p] for classes[t] counts as tolerant-correct."""
    tol = np.eye(len(classes), dtype=bool)
    for i, a in enumerate(classes):
        for j, b in enumerate(classes):
            tol[i, j] |= frozenset((a, b)) in pairs
    return tol


def tolerant_indices(true_idx: np.ndarray, pred_idx: np.ndarray, tol: np.ndarray) -> np.ndarray:
    """Predictions with a tolerated (true, pred) pair are mapped to the true class."""
    return np.where(tol[true_idx, pred_idx], true_idx, pred_idx)


# --- confusion matrix --------------------------------------------------------------------------------------

def confusion_counts(true_idx: np.ndarray, pred_idx: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C) int64 counts; rows are true classes, columns predicted classes."""
    flat = np.bincount(true_idx * num_classes + pred_idx, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes).astype(np.int64)


def row_normalise(counts: np.ndarray) -> np.ndarray:
    """Each row divided by its sum (share of a true class predicted as each class); empty rows stay 0."""
    counts = np.asarray(counts, dtype=float)
    totals = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)


def confusion_matrix(true, pred, classes=ABBRS, normalize: bool = False) -> np.ndarray:
    """Confusion matrix over `classes` (rows true, columns predicted): counts, or row-normalised shares."""
    classes = tuple(classes)
    counts = confusion_counts(label_indices(true, classes, "true label"),
                              label_indices(pred, classes, "prediction"), len(classes))
    return row_normalise(counts) if normalize else counts


# --- scores of one confusion matrix ------------------------------------------------------------------------

@dataclass
class ClassScores:
    """Per-class arrays of one confusion matrix; NaN where a number is undefined (see module docstring)."""
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    support: np.ndarray      # true images per class
    predicted: np.ndarray    # predictions per class
    accuracy: float
    balanced_accuracy: float
    macro_f1: float


def _mean_defined(values: np.ndarray) -> float:
    defined = values[~np.isnan(values)]
    return float(defined.mean()) if defined.size else float("nan")


def scores_from_counts(counts: np.ndarray) -> ClassScores:
    counts = np.asarray(counts)
    tp = np.diag(counts).astype(float)
    support, predicted = counts.sum(axis=1), counts.sum(axis=0)
    has_true, has_pred = support > 0, predicted > 0
    nan = np.full(len(tp), np.nan)
    precision = np.divide(tp, predicted, out=nan.copy(), where=has_pred)
    precision[has_true & ~has_pred] = 0.0                     # never predicted: precision 0, said in warnings
    recall = np.divide(tp, support, out=nan.copy(), where=has_true)
    both = precision + recall                                 # NaN where recall is undefined
    f1 = np.divide(2 * precision * recall, both, out=np.zeros_like(tp), where=has_true & (both > 0))
    f1[~has_true & ~has_pred] = np.nan                        # absent class: no F1 at all
    total = counts.sum()
    return ClassScores(
        precision=precision, recall=recall, f1=f1, support=support, predicted=predicted,
        accuracy=float(tp.sum() / total) if total else float("nan"),
        balanced_accuracy=_mean_defined(recall), macro_f1=_mean_defined(f1),
    )


# --- mean ± sd over folds ----------------------------------------------------------------------------------

def mean_sd(values) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sample sd (ddof=1) along axis 0, ignoring NaN; NaN where fewer than 1 (mean) or 2 (sd) values."""
    values = np.asarray(values, dtype=float)
    defined = ~np.isnan(values)
    n = defined.sum(axis=0)
    filled = np.where(defined, values, 0.0)
    mean = np.divide(filled.sum(axis=0), n, out=np.full(n.shape, np.nan), where=n > 0)
    squares = np.where(defined, (values - mean) ** 2, 0.0)
    sd = np.sqrt(np.divide(squares.sum(axis=0), n - 1, out=np.full(n.shape, np.nan), where=n > 1))
    return mean, sd


# --- the metrics dict ----------------------------------------------------------------------------------------

def _num(x) -> float | None:
    """JSON-safe number: NaN becomes null."""
    x = float(x)
    return None if np.isnan(x) else x


def _folds_of(folds, n: int) -> np.ndarray | None:
    if folds is None:
        return None
    try:
        folds = np.asarray([int(f) for f in folds], dtype=np.int64)
    except (TypeError, ValueError):
        raise UserError("Fold numbers must be whole numbers.") from None
    if len(folds) != n:
        raise UserError(f"Got {len(folds)} fold numbers for {n} predictions.")
    return folds


def _mode_scores(true_idx, pred_idx, tol, num_classes) -> dict[str, ClassScores]:
    return {
        "strict": scores_from_counts(confusion_counts(true_idx, pred_idx, num_classes)),
        "tolerant": scores_from_counts(confusion_counts(true_idx, tolerant_indices(true_idx, pred_idx, tol),
                                                        num_classes)),
    }


def _class_entry(scores: ClassScores, i: int, sd: dict | None) -> dict:
    entry = {}
    for name in CLASS_METRICS:
        entry[name] = _num(getattr(scores, name)[i])
        if sd is not None:
            entry[f"{name}_sd"] = _num(sd[name][i])
    entry["support"] = int(scores.support[i])
    return entry


def _overall_entry(scores: ClassScores, sd: dict | None) -> dict:
    entry = {}
    for name in OVERALL_METRICS:
        entry[name] = _num(getattr(scores, name))
        if sd is not None:
            entry[f"{name}_sd"] = _num(sd[name])
    return entry


def _fold_summary(fold_scores: list[ClassScores], pooled: ClassScores) -> tuple[ClassScores, dict]:
    """Mean over folds in a ClassScores (support/predicted stay pooled totals) and the sd of every number."""
    mean, sd = {}, {}
    for name in CLASS_METRICS + OVERALL_METRICS:
        mean[name], sd[name] = mean_sd([getattr(s, name) for s in fold_scores])
    summary = ClassScores(**{k: mean[k] for k in CLASS_METRICS}, support=pooled.support,
                          predicted=pooled.predicted, **{k: float(mean[k]) for k in OVERALL_METRICS})
    return summary, sd


def _no_prediction_folds(per_fold: dict, classes, mode: str) -> dict[str, list]:
    """Class -> folds (or [None] when pooled) where it had true images but no predictions in `mode`."""
    out: dict[str, list] = {}
    for fold, scores in per_fold.items():
        s = scores[mode]
        for i in np.flatnonzero((s.support > 0) & (s.predicted == 0)):
            out.setdefault(classes[i], []).append(fold)
    return out


def _no_prediction_warnings(no_pred: dict[str, dict[str, list]], classes) -> list[str]:
    """One sentence per class (and per mode when strict and tolerant differ) that was never predicted."""
    warnings = []
    for abbr in classes:
        strict, tolerant = no_pred["strict"].get(abbr), no_pred["tolerant"].get(abbr)
        groups = [("strict or tolerant", strict)] if strict == tolerant else [("strict", strict),
                                                                               ("tolerant", tolerant)]
        for modes, folds in groups:
            if not folds:
                continue
            where = "" if folds == [None] else \
                f" in fold{'s' if len(folds) > 1 else ''} {', '.join(str(f) for f in folds)}"
            warnings.append(f"{abbr}: no {modes} predictions{where}; its precision counts as 0.")
    return warnings


def _support_warnings(per_fold, pooled: ClassScores, classes, present, multi_fold: bool) -> list[str]:
    """Classes predicted without true images (recall undefined), and folds lacking a class's true images."""
    warnings = [f"{classes[i]}: predicted {int(pooled.predicted[i])} time(s) but has no true images; "
                "its recall is undefined (null)." for i in np.flatnonzero(present & (pooled.support == 0))]
    if multi_fold:
        for fold, scores in per_fold.items():
            missing = [classes[i] for i in np.flatnonzero((scores["strict"].support == 0) & (pooled.support > 0))]
            if missing:
                warnings.append(f"Fold {fold} has no true images of {', '.join(missing)}; "
                                "that fold is left out of their recall mean.")
    return warnings


def compute_metrics(true, pred, classes=ABBRS, pairs=None, folds=None) -> dict:
    """Strict and tolerant per-class and overall metrics in the `metrics --json` format (see module docstring).

    true, pred: class abbreviations; classes: the class order; pairs: tolerated pairs (None: the default file);
    folds: one fold number per prediction for mean ± sd over folds.
    """
    classes = tuple(classes)
    true_idx = label_indices(true, classes, "true label")
    pred_idx = label_indices(pred, classes, "prediction")
    if len(true_idx) != len(pred_idx):
        raise UserError(f"Got {len(true_idx)} true labels but {len(pred_idx)} predictions.")
    if len(true_idx) == 0:
        raise UserError("There are no predictions to score.")
    pairs = normalise_pairs(pairs)
    tol = tolerance_matrix(classes, pairs)
    fold_arr = _folds_of(folds, len(true_idx))

    pooled = _mode_scores(true_idx, pred_idx, tol, len(classes))
    present = (pooled["strict"].support > 0) | (pooled["strict"].predicted > 0)
    if fold_arr is None:
        per_fold, reported, sds = {None: pooled}, pooled, {m: None for m in MODES}
    else:
        fold_ids = sorted(set(fold_arr.tolist()))
        per_fold = {f: _mode_scores(true_idx[fold_arr == f], pred_idx[fold_arr == f], tol, len(classes))
                    for f in fold_ids}
        reported, sds = {}, {}
        for mode in MODES:
            reported[mode], sds[mode] = _fold_summary([per_fold[f][mode] for f in fold_ids], pooled[mode])

    no_pred = {mode: _no_prediction_folds(per_fold, classes, mode) for mode in MODES}
    warnings = _no_prediction_warnings(no_pred, classes) + _support_warnings(
        per_fold, pooled["strict"], classes, present, fold_arr is not None)
    no_predictions = {mode: [c for c in classes if c in no_pred[mode]] for mode in MODES}
    result = {
        "classes": {
            c: {mode: _class_entry(reported[mode], i, sds[mode]) for mode in MODES}
            for i, c in enumerate(classes) if present[i]
        },
        "overall": {mode: _overall_entry(reported[mode], sds[mode]) for mode in MODES},
        "n": int(len(true_idx)),
        "folds": None if fold_arr is None else sorted(per_fold),
        "sd": None if fold_arr is None else SD_NOTE,
        "tolerance_pairs": sorted(sorted(p) for p in pairs if len(p) == 2),
        "absent_classes": [c for i, c in enumerate(classes) if not present[i]],
        "no_predictions": no_predictions,
        "warnings": warnings,
    }
    if fold_arr is not None and len(per_fold) < 2:
        result["warnings"].append("Only one fold: no standard deviation over folds (the _sd values are null).")
    return result


# --- the table (paper's Table 1 shape) -------------------------------------------------------------------------

def per_class_table(metrics: dict) -> pd.DataFrame:
    """One row per reported class: n, strict and tolerant precision/recall/F1 (with _sd columns when folds)."""
    with_sd = metrics.get("folds") is not None
    rows = []
    for abbr, entry in metrics["classes"].items():
        row = {"class": abbr, "name": class_name(abbr), "n": entry["strict"]["support"]}
        for mode in MODES:
            for name in CLASS_METRICS:
                row[f"{mode}_{name}"] = entry[mode][name]
                if with_sd:
                    row[f"{mode}_{name}_sd"] = entry[mode].get(f"{name}_sd")
        row["note"] = _table_note(metrics, abbr)
        rows.append(row)
    return pd.DataFrame(rows)


def _table_note(metrics: dict, abbr: str) -> str:
    notes = []
    no_pred = metrics.get("no_predictions", {})
    modes = [m for m in MODES if abbr in no_pred.get(m, [])]
    if modes:
        where = " in some folds" if metrics.get("folds") is not None else ""
        notes.append(f"no {'/'.join(modes)} predictions{where} (precision 0 there)")
    if metrics["classes"][abbr]["strict"]["support"] == 0:
        notes.append("no true images (recall undefined)")
    return "; ".join(notes)


def _cell(value, sd=None, with_sd=False) -> str:
    text = "-" if value is None else f"{value:.2f}"
    if with_sd:
        text += "      " if sd is None else f" ± {sd:.2f}"
    return text


def format_table(metrics: dict) -> str:
    """A readable text table: class, n, strict P/R, tolerant P/R (± sd with folds), overall lines, warnings."""
    with_sd = metrics.get("folds") is not None
    width = 13 if with_sd else 6
    head = f"{'class':<6}{'n':>8}  " + "  ".join(
        f"{label:>{width}}" for label in ("strict P", "strict R", "toler. P", "toler. R"))
    lines = [head, "-" * len(head)]
    for abbr, entry in metrics["classes"].items():
        cells = [_cell(entry[m][k], entry[m].get(f"{k}_sd"), with_sd)
                 for m in MODES for k in ("precision", "recall")]
        mark = " *" if _table_note(metrics, abbr) else ""
        lines.append(f"{abbr:<6}{entry['strict']['support']:>8}  "
                     + "  ".join(f"{c:>{width}}" for c in cells) + mark)
    lines.append("")
    for mode in MODES:
        o = metrics["overall"][mode]
        lines.append(f"{mode:<9} accuracy {_cell(o['accuracy'], o.get('accuracy_sd'), with_sd)}   "
                     f"balanced accuracy {_cell(o['balanced_accuracy'], o.get('balanced_accuracy_sd'), with_sd)}"
                     f"   macro-F1 {_cell(o['macro_f1'], o.get('macro_f1_sd'), with_sd)}")
    lines.append(f"{metrics['n']} predictions" + (f", mean ± sd over {len(metrics['folds'])} folds ({SD_NOTE})"
                                                  if with_sd else ""))
    if metrics.get("absent_classes"):
        lines.append(f"Not in the data and never predicted (left out): {', '.join(metrics['absent_classes'])}")
    lines += [f"* {w}" for w in metrics.get("warnings", [])]
    return "\n".join(lines)


# --- reading a predictions CSV -------------------------------------------------------------------------------

def _header_positions(header: list[str], path: Path, keep) -> dict[str, int]:
    names = [h.strip().lstrip("\ufeff").lower() for h in header]
    missing = [c for c in ("true", "pred") if c not in names]
    if missing:
        raise UserError(f"{path} lacks the column(s) {', '.join(missing)}: expected a header true,pred[,fold] "
                        f"(found: {', '.join(h.strip() for h in header) or 'nothing'}).")
    return {c: names.index(c) for c in ("true", "pred", "fold", *keep) if c in names}


def _unknown_labels_error(path: Path, unknown: dict[str, list[int]], classes) -> UserError:
    parts = []
    for label, lines in list(unknown.items())[:10]:
        shown = ", ".join(str(n) for n in lines[:5]) + (" ..." if len(lines) > 5 else "")
        parts.append(f"{label!r} (line{'s' if len(lines) > 1 else ''} {shown})")
    more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
    return UserError(f"{path}: unknown class abbreviation(s) {'; '.join(parts)}{more}; "
                     f"expected one of {', '.join(classes)}.")


def read_predictions(path, classes=ABBRS, keep=()) -> pd.DataFrame:
    """A predictions CSV (columns true,pred[,fold] plus any others) -> DataFrame of true, pred[, fold][, keep].

    Abbreviations are matched case-insensitively; unknown ones, missing columns, bad fold numbers and an empty
    file are one clear error naming the line numbers.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"Predictions file not found: {path}")
    canon = {c.upper(): c for c in classes}
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header or not any(h.strip() for h in header):
            raise UserError(f"{path} is empty: expected a header line true,pred[,fold] and one row per image.")
        pos = _header_positions(header, path, keep)
        cols: dict[str, list] = {c: [] for c in pos}
        unknown: dict[str, list[int]] = {}
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            line = reader.line_num
            if len(row) < len(header):
                raise UserError(f"{path} line {line}: expected {len(header)} columns, found {len(row)}.")
            for c, i in pos.items():
                value = row[i].strip()
                if c in ("true", "pred"):
                    label = canon.get(value.upper())
                    if label is None:
                        unknown.setdefault(value, []).append(line)
                    value = label
                elif c == "fold":
                    try:
                        value = int(value)
                    except ValueError:
                        raise UserError(f"{path} line {line}: fold {value!r} is not a whole number.") from None
                cols[c].append(value)
    if unknown:
        raise _unknown_labels_error(path, unknown, classes)
    if not cols["true"]:
        raise UserError(f"{path} has a header but no predictions.")
    return pd.DataFrame(cols)


def metrics_of_table(df: pd.DataFrame, classes=ABBRS, pairs=None) -> dict:
    """compute_metrics on a DataFrame from read_predictions (its fold column, when present, gives mean ± sd)."""
    folds = df["fold"].tolist() if "fold" in df.columns else None
    return compute_metrics(df["true"].tolist(), df["pred"].tolist(), classes=classes, pairs=pairs, folds=folds)
