"""The Feature map and Errors pages' logic as plain functions (numpy/pandas/plotly; no Streamlit, no torch).

Selections arrive as the dict st.plotly_chart(on_select="rerun") returns: {"selection": {"points": [...],
"box": [...], "lasso": [...]}}. Every point of the map carries its global row id (the feature table's row) in
customdata, so a selection names images no matter which sample of points the page drew; every square of the
confusion matrix carries its (true, predicted) classes. Handlers turn those into table rows and are unit-tested
without a browser.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from bmteach.classes import BY_ABBR, LINEAGES, class_name
from bmteach.errors import UserError
from bmteach.metrics import (
    confusion_counts,
    label_indices,
    normalise_pairs,
    row_normalise,
    tolerance_matrix,
    tolerant_indices,
)

MODES = ("strict", "tolerant")
COLOUR_BY = ("expert class", "prediction", "correct (strict)", "correct (tolerant)", "confidence", "lineage",
             "fold")
GREY = "#d0d0d0"
RIGHT, WRONG = "#2ca02c", "#d62728"
MAX_POINTS = 50_000
FOLD_COLOURS = ("#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666")
LINEAGE_COLOURS = dict(zip(LINEAGES, ("#1f77b4", "#ff7f0e", "#9467bd", "#d62728", "#2ca02c", "#7f7f7f")))


# --- the table behind the map: one row per image ------------------------------------------------------------

def prob_columns(oof: pd.DataFrame) -> list[str]:
    return [c for c in oof.columns if c.startswith("prob_")]


def oof_classes(oof: pd.DataFrame) -> list[str]:
    return [c[len("prob_"):] for c in prob_columns(oof)]


def effective_pred(true: Sequence[str], pred: Sequence[str], classes: Sequence[str], mode: str,
                   pairs=None) -> np.ndarray:
    """Predictions as the metric counts them: in tolerant mode a tolerated (true, pred) pair becomes the truth."""
    pred = np.asarray(pred, dtype=object)
    if mode == "strict":
        return pred
    classes = list(classes)
    tol = tolerance_matrix(classes, normalise_pairs(pairs))
    t, p = label_indices(true, classes, "true label"), label_indices(pred, classes, "prediction")
    return np.asarray(classes, dtype=object)[tolerant_indices(t, p, tol)]


def map_table(rows: pd.DataFrame, coords: np.ndarray | None, oof: pd.DataFrame | None, pairs=None) -> pd.DataFrame:
    """rows (row, path, label, fold) + map coordinates + the run's out-of-fold predictions, joined by path:
    row, path, label, fold, x, y, pred, confidence, p_label, correct_strict, correct_tolerant, lineage.
    Images without an out-of-fold prediction get pred "" and NaN scores."""
    table = rows[["row", "path", "label", "fold"]].copy()
    table["x"], table["y"] = (coords[:, 0], coords[:, 1]) if coords is not None else (np.nan, np.nan)
    table["lineage"] = [BY_ABBR[a].lineage if a in BY_ABBR else "others" for a in table["label"]]
    if oof is None or oof.empty:
        table["pred"], table["confidence"], table["p_label"] = "", np.nan, np.nan
        table["correct_strict"] = table["correct_tolerant"] = np.nan
        return table
    classes = oof_classes(oof)
    probs = oof[prob_columns(oof)].to_numpy(dtype=float)
    col = {c: i for i, c in enumerate(classes)}
    scores = pd.DataFrame({
        "path": oof["path"].astype(str), "pred": oof["pred"].astype(str), "confidence": probs.max(axis=1),
        "p_label": [probs[i, col[t]] if t in col else np.nan for i, t in enumerate(oof["true"])],
        "correct_strict": (oof["pred"] == oof["true"]).to_numpy(),
        "correct_tolerant": effective_pred(oof["true"], oof["pred"], classes, "tolerant", pairs) == oof["true"].to_numpy(),
    })
    table = table.merge(scores, on="path", how="left")
    table["pred"] = table["pred"].fillna("")
    return table


# --- what the page draws -------------------------------------------------------------------------------------

def display_sample(table: pd.DataFrame, max_points: int = MAX_POINTS, seed: int = 0,
                   keep: Sequence[int] = ()) -> np.ndarray:
    """Positions (into table) to draw: every point when there are at most max_points; else a class-stratified
    sample (each class in proportion to its size, at least min(its size, 50)) plus every misclassified point and
    every point in `keep` (row ids, e.g. the current selection). Sorted, so draw order is stable."""
    n = len(table)
    if n <= max_points:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    chosen = []
    labels = table["label"].to_numpy()
    for abbr in pd.unique(labels):
        members = np.flatnonzero(labels == abbr)
        quota = min(len(members), max(50, round(max_points * len(members) / n)))
        chosen.append(rng.choice(members, size=quota, replace=False))
    wrong = np.flatnonzero(table["correct_strict"].to_numpy() == False)
    kept = np.flatnonzero(table["row"].isin(list(keep)).to_numpy()) if len(keep) else np.array([], dtype=int)
    return np.unique(np.concatenate(chosen + [wrong, kept]).astype(int))


def _category_colours(by: str, values: pd.Series) -> dict[str, str]:
    if by in ("expert class", "prediction"):
        return {a: BY_ABBR[a].colour if a in BY_ABBR else GREY for a in pd.unique(values)}
    if by == "lineage":
        return {v: LINEAGE_COLOURS.get(v, GREY) for v in pd.unique(values)}
    if by == "fold":
        return {v: FOLD_COLOURS[int(v) % len(FOLD_COLOURS)] for v in pd.unique(values)}
    return {"right": RIGHT, "wrong": WRONG, "no prediction": GREY}


def colour_values(table: pd.DataFrame, by: str) -> tuple[pd.Series, dict[str, str] | None]:
    """(per-point value, category -> colour) for a categorical choice; (confidence, None) for confidence."""
    if by not in COLOUR_BY:
        raise ValueError(f"Unknown colouring {by!r}: choose one of {', '.join(COLOUR_BY)}.")
    if by == "confidence":
        return table["confidence"], None
    column = {"expert class": "label", "prediction": "pred", "lineage": "lineage", "fold": "fold"}.get(by)
    if column:
        values = table[column].astype(str)
    else:
        ok = table["correct_strict" if "strict" in by else "correct_tolerant"]
        values = pd.Series(np.where(ok.isna(), "no prediction", np.where(ok == True, "right", "wrong")),
                           index=table.index)
    return values, _category_colours(by, values)


def category_codes(values: pd.Series, palette: dict[str, str], selected_mask: np.ndarray | None = None):
    """Categorical colours as numbers for plotly: (codes, stepped colorscale, cmin, cmax). A colour string per
    point costs plotly ~1 s of validation at 60,000 points; integer codes cost nothing. With a selection mask,
    the points outside it get one extra code, drawn GREY."""
    names = list(palette)
    colours = [palette[n] for n in names]
    codes = values.map({n: i for i, n in enumerate(names)}).fillna(len(names)).to_numpy(dtype=np.int16)
    if selected_mask is not None:
        codes = np.where(selected_mask, codes, len(names)).astype(np.int16)
    colours.append(GREY)              # the code len(names): unselected (or an unknown category)
    k = len(colours)
    scale = []
    for i, colour in enumerate(colours):  # a stepped scale: code i spans [i/k, (i+1)/k]
        scale += [[i / k, colour], [(i + 1) / k, colour]]
    return codes, scale, -0.5, k - 0.5


def map_figure(table: pd.DataFrame, by: str = "expert class", selected: Sequence[int] = (), height: int = 620,
               marker_size: float = 5.0):
    """One Scattergl trace of `table` (already sampled) with a colour array and the row id in customdata; legend
    entries are separate empty traces, so point indices of the one data trace are never split. With a
    selection, the other points turn grey (still drawn, still selectable); without one, plotly greys what the
    user leaves out of a box or lasso in the browser."""
    import plotly.graph_objects as go

    values, palette = colour_values(table, by)
    selected_mask = table["row"].isin(list(selected)).to_numpy() if len(selected) else None
    marker = {"size": marker_size, "line": {"width": 0}}
    if palette is None:
        marker.update(color=values.fillna(0).to_numpy(), colorscale="Viridis", cmin=0, cmax=1,
                      colorbar={"title": "confidence", "thickness": 12})
    else:
        codes, scale, cmin, cmax = category_codes(values, palette, selected_mask)
        marker.update(color=codes, colorscale=scale, cmin=cmin, cmax=cmax, showscale=False)
    hover = [f"{lab} → {pr or '?'} · {_file_name(p)}" for lab, pr, p in zip(table["label"], table["pred"], table["path"])]
    fig = go.Figure(go.Scattergl(x=table["x"], y=table["y"], mode="markers", marker=marker, name="cells",
                                 customdata=table["row"].to_numpy(), hovertext=hover, hoverinfo="text",
                                 showlegend=False,
                                 selectedpoints=None if selected_mask is None else np.flatnonzero(selected_mask),
                                 unselected={"marker": {"color": GREY, "opacity": 0.5}}))
    for name, colour in (palette or {}).items():
        fig.add_trace(go.Scattergl(x=[None], y=[None], mode="markers", marker={"size": 9, "color": colour},
                                   name=str(name), hoverinfo="skip"))
    # pan, not lasso: in a box/lasso drag mode Streamlit's chart turns click-to-select off (clickmode "event"),
    # so a click on a point would open no card; box and lasso stay one modebar click away
    fig.update_layout(height=height, margin={"l": 10, "r": 10, "t": 10, "b": 10}, clickmode="event+select",
                      dragmode="pan", legend={"itemsizing": "constant"}, plot_bgcolor="white")
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False, scaleanchor="x")
    return fig


def _file_name(path: str) -> str:
    return str(path).rsplit("/", 1)[-1]


# --- selections on the map ------------------------------------------------------------------------------------

def _point_id(point: Mapping) -> int | None:
    data = point.get("customdata")
    if isinstance(data, (list, tuple)):
        data = data[0] if data else None
    try:
        return int(data)
    except (TypeError, ValueError):
        return None


def selected_ids(event: Mapping | None) -> list[int]:
    """Row ids of the selected points of the map (customdata), in selection order, without duplicates."""
    if not event:
        return []
    points = (event.get("selection") or {}).get("points") or []
    ids = [_point_id(p) for p in points]
    return list(dict.fromkeys(i for i in ids if i is not None))


def is_region(event: Mapping | None) -> bool:
    """A box or lasso selection (a region), rather than a click on one point."""
    selection = (event or {}).get("selection") or {}
    return bool(selection.get("box") or selection.get("lasso"))


def point_row(table: pd.DataFrame, row_id: int) -> pd.Series:
    """The table row of one point id; a clear error for an id the table does not hold."""
    hit = table[table["row"] == int(row_id)]
    if hit.empty:
        raise UserError(f"Point {row_id} is not in this map (the run or data set changed); click another point.")
    return hit.iloc[0]


def region_rows(table: pd.DataFrame, ids: Sequence[int]) -> pd.DataFrame:
    """The rows of a selection, wrong predictions first, then by confidence (highest first)."""
    region = table[table["row"].isin(list(ids))].copy()
    region["_ok"] = region["correct_strict"].fillna(True).astype(bool)
    return region.sort_values(["_ok", "confidence", "row"], ascending=[True, False, True],
                              kind="stable").drop(columns="_ok")


def region_confusion(table: pd.DataFrame, ids: Sequence[int]) -> pd.DataFrame:
    """Counts of expert class (rows) x prediction (columns) inside a selection, only the classes present."""
    region = table[table["row"].isin(list(ids)) & (table["pred"] != "")]
    if region.empty:
        return pd.DataFrame()
    return pd.crosstab(region["label"].rename("expert"), region["pred"].rename("predicted"))


def top_probs(oof_row: Mapping, k: int = 3) -> list[tuple[str, float]]:
    """The k most probable classes of one oof row (a dict or Series with prob_<ABBR> entries)."""
    probs = [(key[len("prob_"):], float(v)) for key, v in dict(oof_row).items() if str(key).startswith("prob_")]
    return sorted(probs, key=lambda kv: -kv[1])[:k]


def _as_float32_blocks(features: np.ndarray, chunk: int):
    """Chunks of the float16 table as float32: torch's conversion when torch is loaded (vectorised, ~2x faster
    than numpy's), else numpy's. Yields (start, block)."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is in requirements.txt
        torch = None
    for start in range(0, len(features), chunk):
        part = np.array(features[start:start + chunk])  # one read of the memory-mapped rows
        yield start, (torch.from_numpy(part).float().numpy() if torch is not None else part.astype(np.float32))


def squared_norms(features: np.ndarray, chunk: int = 16384) -> np.ndarray:
    """(n,) float32 squared lengths of the feature rows (stored with the features: a click then needs one
    matrix-vector product per chunk instead of a subtraction over the whole table)."""
    out = np.empty(len(features), dtype=np.float32)
    for start, block in _as_float32_blocks(features, chunk):
        out[start:start + len(block)] = np.einsum("ij,ij->i", block, block)
    return out


def feature_distances(features: np.ndarray, row_id: int, norms: np.ndarray | None = None,
                      chunk: int = 16384) -> np.ndarray:
    """(n,) Euclidean distances from row `row_id` to every row of the (memory-mapped float16) table, in chunks:
    |x - q|^2 = |x|^2 - 2 x.q + |q|^2 with the rows' squared norms (computed here when not given)."""
    norms = squared_norms(features, chunk) if norms is None else norms
    query = np.asarray(features[row_id], dtype=np.float32)
    dots = np.empty(len(features), dtype=np.float32)
    for start, block in _as_float32_blocks(features, chunk):
        dots[start:start + len(block)] = block @ query
    return np.sqrt(np.maximum(norms - 2 * dots + float(query @ query), 0.0))


def nearest_neighbours(features: np.ndarray, labels: Sequence[str], row_id: int, k: int = 6,
                       same_class: bool | None = None, distances: np.ndarray | None = None) -> list[tuple[int, float]]:
    """The k rows nearest to `row_id` in the original feature space (Euclidean; the image itself excluded).
    same_class True/False keeps only images with the same/another expert label; None keeps all. Pass
    `distances` (feature_distances) to answer several questions about one point with one pass over the table."""
    labels = np.asarray(labels)
    d = feature_distances(features, row_id) if distances is None else distances
    keep = np.ones(len(d), dtype=bool)
    keep[row_id] = False
    if same_class is not None:
        keep &= (labels == labels[row_id]) == same_class
    candidates = np.flatnonzero(keep)
    if len(candidates) > k:
        candidates = candidates[np.argpartition(d[candidates], k)[:k]]
    order = candidates[np.argsort(d[candidates], kind="stable")]
    return [(int(i), float(d[i])) for i in order[:k]]


def exam_items(table: pd.DataFrame, ids: Sequence[int]) -> pd.DataFrame:
    """A selection as quiz items: path and expert label (the answer), in table order."""
    return table[table["row"].isin(list(ids))][["path", "label"]].reset_index(drop=True)


# --- the confusion matrix (paper Fig. 2) ----------------------------------------------------------------------

def confusion(oof: pd.DataFrame, mode: str = "strict", pairs=None,
              classes: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(counts, row-normalised shares, classes) of the out-of-fold predictions; rows true, columns predicted."""
    if mode not in MODES:
        raise ValueError(f"mode must be strict or tolerant, not {mode!r}")
    classes = list(classes or oof_classes(oof))
    pred = effective_pred(oof["true"], oof["pred"], classes, mode, pairs)
    counts = confusion_counts(label_indices(oof["true"], classes, "true label"),
                              label_indices(pred, classes, "prediction"), len(classes))
    return counts, row_normalise(counts), classes


def confusion_figure(counts: np.ndarray, shares: np.ndarray, classes: Sequence[str], height: int = 640):
    """The row-normalised matrix as square markers (a heatmap returns no selection in Streamlit): one clickable
    square per non-empty cell, coloured and labelled by its share, customdata = [true, predicted, count]."""
    import plotly.graph_objects as go

    t, p = np.nonzero(counts)
    classes = list(classes)
    share = shares[t, p]
    fig = go.Figure(go.Scatter(
        x=[classes[j] for j in p], y=[classes[i] for i in t], mode="markers+text",
        text=[f"{s:.2f}".lstrip("0") if s < 1 else "1" for s in share], textfont={"size": 8},
        customdata=np.stack([[classes[i] for i in t], [classes[j] for j in p], counts[t, p]], axis=1),
        hovertemplate="expert %{customdata[0]} → predicted %{customdata[1]}<br>%{customdata[2]} images"
                      " (share of the row %{marker.color:.2f})<extra></extra>",
        marker={"symbol": "square", "size": 24, "color": share, "colorscale": "Blues", "cmin": 0, "cmax": 1,
                    "line": {"width": 0.5, "color": "#999"}, "colorbar": {"title": "share", "thickness": 12}},
        showlegend=False, name="cells"))
    axis = {"categoryorder": "array", "categoryarray": classes, "tickfont": {"size": 10}, "showgrid": False}
    fig.update_layout(height=height, margin={"l": 10, "r": 10, "t": 30, "b": 10}, clickmode="event+select",
                      plot_bgcolor="white", xaxis=dict(title="predicted", side="top", **axis),
                      yaxis=dict(title="expert (true)", autorange="reversed", **axis))
    return fig


def selected_cell(event: Mapping | None) -> tuple[str, str] | None:
    """(true, predicted) of the first clicked square of the confusion matrix, or None."""
    for point in ((event or {}).get("selection") or {}).get("points") or []:
        data = point.get("customdata")
        if isinstance(data, (list, tuple)) and len(data) >= 2:
            return str(data[0]), str(data[1])
    return None


def cell_rows(oof: pd.DataFrame, true: str, pred: str, mode: str = "strict", pairs=None) -> pd.DataFrame:
    """The images behind one confusion cell, most confident first (confidence = probability of the class the
    model chose). In tolerant mode a tolerated prediction sits on the diagonal, as the metric counts it."""
    classes = oof_classes(oof)
    effective = effective_pred(oof["true"], oof["pred"], classes, mode, pairs)
    rows = oof[(oof["true"].to_numpy() == true) & (effective == pred)].copy()
    probs = rows[prob_columns(oof)].to_numpy(dtype=float)
    rows["confidence"] = probs.max(axis=1) if len(rows) else []
    return rows.sort_values("confidence", ascending=False, kind="stable")


def most_confused(counts: np.ndarray, classes: Sequence[str], top: int = 10) -> pd.DataFrame:
    """Off-diagonal cells by count: expert, predicted, images, share of the expert class."""
    totals = counts.sum(axis=1)
    rows = [{"expert": classes[i], "predicted": classes[j], "images": int(counts[i, j]),
             "share of expert class": counts[i, j] / totals[i]}
            for i in range(len(classes)) for j in range(len(classes)) if i != j and counts[i, j] > 0]
    frame = pd.DataFrame(rows, columns=["expert", "predicted", "images", "share of expert class"])
    return frame.sort_values(["images", "share of expert class"], ascending=False).head(top).reset_index(drop=True)


def class_table(oof: pd.DataFrame, pairs=None) -> pd.DataFrame:
    """Per class: this run's strict/tolerant precision and recall (5-fold means where folds are known) beside
    the paper's Table 1 (bmteach.atlas.model_vs_paper)."""
    from bmteach.atlas import model_vs_paper
    from bmteach.metrics import compute_metrics

    metrics = compute_metrics(oof["true"], oof["pred"], classes=oof_classes(oof), pairs=pairs, folds=oof["fold"])
    table = model_vs_paper(metrics)
    counts = oof["true"].value_counts()
    table.insert(2, "images", [int(counts.get(a, 0)) for a in table["class"]])
    return table


# --- possible label errors (confident learning, via cleanlab) -------------------------------------------------

def label_issues(oof: pd.DataFrame, max_items: int | None = None) -> pd.DataFrame:
    """Images whose expert label the out-of-fold probabilities doubt, found by cleanlab's confident learning
    (cleanlab.filter.find_label_issues), most doubtful first, with their evidence: the probability of the expert
    label, the class the model prefers and its probability. Classes without images are left out of the
    probability matrix (cleanlab needs every class it scores to occur)."""
    from cleanlab.filter import find_label_issues

    classes = oof_classes(oof)
    present = [c for c in classes if (oof["true"] == c).any()]
    if len(present) < 2:
        return pd.DataFrame(columns=["path", "expert", "p_expert", "model prefers", "p_preferred", "fold"])
    probs = oof[[f"prob_{c}" for c in present]].to_numpy(dtype=float)
    probs = probs / np.clip(probs.sum(axis=1, keepdims=True), 1e-12, None)
    labels = label_indices(oof["true"], present, "true label")
    # n_jobs=1: cleanlab's default forks a process pool, and a fork from the Streamlit server's script thread
    # can deadlock on a lock another thread held (the Errors page then hung for good); one process is fast here
    ranked = find_label_issues(labels=labels, pred_probs=probs, return_indices_ranked_by="self_confidence",
                               n_jobs=1)
    if max_items is not None:
        ranked = ranked[:max_items]
    preferred = probs[ranked].argmax(axis=1)
    return pd.DataFrame({
        "path": oof["path"].to_numpy()[ranked], "expert": oof["true"].to_numpy()[ranked],
        "p_expert": probs[ranked, labels[ranked]],
        "model prefers": np.asarray(present)[preferred], "p_preferred": probs[ranked, preferred],
        "fold": oof["fold"].to_numpy()[ranked],
    })


def evidence_sentence(issue: Mapping) -> str:
    """Why an image is flagged, in one sentence."""
    return (f"Labelled {class_name(issue['expert'])} ({issue['expert']}), but the fold model that never saw it "
            f"gives that label {percent(issue['p_expert'])} and {class_name(issue['model prefers'])} "
            f"({issue['model prefers']}) {percent(issue['p_preferred'])}.")


def percent(p: float) -> str:
    """A probability as a whole percentage; tiny ones as '<1%' rather than a misleading 0%."""
    return "<1%" if 0 < p < 0.005 else f"{p:.0%}"


def share_text(n: int, total: int) -> str:
    return f"{n:,} of {total:,}" + ("" if total == 0 else f" ({n / total:.0%})")


def is_nan(value) -> bool:
    return isinstance(value, float) and math.isnan(value)
