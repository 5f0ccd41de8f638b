"""The class atlas without Streamlit: teaching text, the lineage tree of the paper's Fig. 1A, gallery paging,
class counts, and the active model's precision/recall next to the paper's Table 1."""
from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bmteach.classes import ABBRS, ASSETS, BY_ABBR

TEACHING_JSON = ASSETS / "teaching.json"
PAPER_TABLE_CSV = ASSETS / "paper_table1.csv"
ROOT = "HSC"  # the stem cell at the top of the tree: not a class of the data set


# --- teaching text --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Teaching:
    abbr: str
    summary: str
    size: str
    look_for: tuple[str, ...]
    tell_apart: dict[str, str]  # neighbour abbr -> how to tell this class from it


def load_teaching(path: str | Path = TEACHING_JSON) -> dict[str, Teaching]:
    """Our teaching text per class; every one of the 21 classes must have an entry."""
    raw = json.loads(Path(path).read_text(encoding="utf-8"))
    missing = [a for a in ABBRS if a not in raw]
    if missing:
        raise ValueError(f"{path} has no teaching text for {', '.join(missing)}.")
    return {
        abbr: Teaching(abbr, raw[abbr]["summary"], raw[abbr].get("size", ""),
                       tuple(raw[abbr].get("look_for", [])), dict(raw[abbr].get("tell_apart", {})))
        for abbr in ABBRS
    }


# --- lineage tree (paper Fig. 1A) -----------------------------------------------------------------------

# (x, y) of each node: columns by lineage, rows by maturity (0 = stem cell at the top).
TREE_POSITIONS: dict[str, tuple[float, float]] = {
    ROOT: (4.0, 0.0),
    "BLA": (1.5, 1.0), "PMO": (1.5, 2.0), "MYB": (1.5, 3.0), "MMZ": (1.5, 4.0), "NGB": (1.5, 5.0),
    "NGS": (1.5, 6.0), "FGC": (0.3, 2.5), "EOS": (2.7, 4.0), "ABE": (2.7, 5.0), "BAS": (3.7, 4.0),
    "MON": (4.7, 2.5),
    "PEB": (5.7, 1.5), "EBO": (5.7, 2.5),
    "LYI": (7.0, 1.5), "LYT": (7.0, 2.5), "PLM": (6.5, 3.5), "HAC": (7.5, 3.5),
    "KSC": (9.0, 1.0), "ART": (9.0, 2.0), "OTH": (9.0, 3.0), "NIF": (9.0, 4.0),
}
# Maturation edges (parent, child); pathological offshoots are drawn dashed.
TREE_EDGES: tuple[tuple[str, str], ...] = (
    (ROOT, "BLA"), ("BLA", "PMO"), ("PMO", "MYB"), ("MYB", "MMZ"), ("MMZ", "NGB"), ("NGB", "NGS"),
    ("MYB", "EOS"), ("MYB", "BAS"), ("BLA", "MON"),
    (ROOT, "PEB"), ("PEB", "EBO"),
    (ROOT, "LYI"), ("LYI", "LYT"), ("LYT", "PLM"),
)
PATHOLOGICAL_EDGES: tuple[tuple[str, str], ...] = (("PMO", "FGC"), ("EOS", "ABE"), ("LYT", "HAC"))
NODE_TRACE = "classes"  # name of the clickable trace
# One label per column of the tree: (x, a class whose lineage names the column).
TREE_COLUMN_LABELS = ((1.5, "PMO"), (4.7, "MON"), (5.8, "PEB"), (7.0, "LYT"), (9.0, "KSC"))


def tree_nodes() -> pd.DataFrame:
    """One row per class node: abbr, name, lineage, x, y, colour, count (full data set)."""
    rows = [
        {"abbr": a, "name": BY_ABBR[a].name, "lineage": BY_ABBR[a].lineage, "x": TREE_POSITIONS[a][0],
         "y": TREE_POSITIONS[a][1], "colour": BY_ABBR[a].colour, "count": BY_ABBR[a].count}
        for a in ABBRS
    ]
    return pd.DataFrame(rows)


def _edge_xy(edges: Iterable[tuple[str, str]]) -> tuple[list, list]:
    """Edges as one polyline with None gaps (plotly draws them as separate segments)."""
    xs, ys = [], []
    for a, b in edges:
        (x0, y0), (x1, y1) = TREE_POSITIONS[a], TREE_POSITIONS[b]
        xs += [x0, x1, None]
        ys += [y0, y1, None]
    return xs, ys


def lineage_figure(selected: str | None = None, height: int = 460):
    """The tree as a plotly figure: edge lines, a stem-cell marker, and one clickable marker per class.

    Every class marker carries its abbreviation in customdata, which `selected_class` reads back."""
    import plotly.graph_objects as go

    nodes = tree_nodes()
    fig = go.Figure()
    for edges, dash in ((TREE_EDGES, "solid"), (PATHOLOGICAL_EDGES, "dash")):
        xs, ys = _edge_xy(edges)
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line=dict(color="#999", width=1.5, dash=dash),
                                 hoverinfo="skip", showlegend=False))
    rx, ry = TREE_POSITIONS[ROOT]
    fig.add_trace(go.Scatter(x=[rx], y=[ry], mode="markers+text", text=["stem cell"], textposition="top center",
                             marker=dict(size=14, color="#ddd", line=dict(color="#888", width=1)),
                             hoverinfo="skip", showlegend=False))
    sizes = [22 if a == selected else 16 for a in nodes["abbr"]]
    fig.add_trace(go.Scatter(
        name=NODE_TRACE, x=nodes["x"], y=nodes["y"], mode="markers+text", text=nodes["abbr"],
        textposition="middle right", customdata=nodes["abbr"],
        hovertext=[f"{r.name} ({r.abbr}) · {r.lineage} · {r.count:,} images" for r in nodes.itertuples()],
        hoverinfo="text", showlegend=False,
        marker=dict(size=sizes, color=nodes["colour"], line=dict(color="#333", width=1)),
    ))
    # a click selects a point, and plotly fades every other one to 10% by default: keep them all opaque
    fig.update_traces(selector=dict(mode="markers+text"), selected=dict(marker=dict(opacity=1.0)),
                      unselected=dict(marker=dict(opacity=1.0)))
    for x, abbr in TREE_COLUMN_LABELS:  # the lineage words of classes.csv, so tree and card agree
        fig.add_annotation(x=x, y=-0.55, text=_two_lines(BY_ABBR[abbr].lineage), showarrow=False,
                           font=dict(size=11, color="#666"))
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=10, b=10), clickmode="event+select",
                      plot_bgcolor="rgba(0,0,0,0)")
    # fixed axes: a drag never zooms the tree away; a click on a marker selects its class
    fig.update_xaxes(visible=False, range=[-0.3, 10], fixedrange=True)
    fig.update_yaxes(visible=False, range=[6.6, -0.9], fixedrange=True)
    return fig


def _two_lines(lineage: str) -> str:
    """'erythropoiesis' -> 'erythro-<br>poiesis': the columns are too close for the whole words at 800 px."""
    stem, sep, _ = lineage.partition("poiesis")
    return f"{stem}-<br>poiesis" if sep and stem else lineage


def selected_class(event: Mapping | None) -> str | None:
    """The class a plotly selection event points at (the first class point), or None.

    Accepts what st.plotly_chart(on_select="rerun") returns: {"selection": {"points": [...]}}, each point with
    "customdata" (our abbreviation, as a string or a one-item list)."""
    if not event:
        return None
    selection = event.get("selection") or {}
    for point in selection.get("points") or []:
        data = point.get("customdata")
        if isinstance(data, (list, tuple)):
            data = data[0] if data else None
        if isinstance(data, str) and data in BY_ABBR:
            return data
    return None


# --- counts and gallery paging --------------------------------------------------------------------------

def class_counts(items: Iterable[tuple[str, str]]) -> dict[str, int]:
    """Images per class in canonical order (0 for classes absent), from (relpath, abbr) items."""
    counts = Counter(abbr for _, abbr in items)
    return {a: counts.get(a, 0) for a in ABBRS}


def counts_table(data_counts: Mapping[str, int], run_counts: Mapping[str, int] | None = None) -> pd.DataFrame:
    """Per class: name, images in the active data set, in the run's manifest (if any), in the full data set."""
    rows = []
    for a in ABBRS:
        row = {"class": a, "name": BY_ABBR[a].name, "active data set": int(data_counts.get(a, 0))}
        if run_counts is not None:
            row["run's manifest"] = int(run_counts.get(a, 0))
        row["full data set"] = BY_ABBR[a].count
        rows.append(row)
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class Page:
    items: list
    page: int      # 1-based, clamped into range
    n_pages: int
    start: int     # index of the first item on this page in the full list


def page_of(items: Sequence, page: int, per_page: int) -> Page:
    """One page of a list; a page number out of range is clamped, an empty list gives one empty page."""
    if per_page < 1:
        raise ValueError("per_page must be at least 1.")
    n_pages = max(1, math.ceil(len(items) / per_page))
    page = min(max(1, int(page)), n_pages)
    start = (page - 1) * per_page
    return Page(list(items[start:start + per_page]), page, n_pages, start)


# --- model vs paper -------------------------------------------------------------------------------------

def paper_table(path: str | Path = PAPER_TABLE_CSV) -> pd.DataFrame:
    """The paper's Table 1 (ResNeXt-50, 5-fold means), indexed by class."""
    return pd.read_csv(path).set_index("abbr")


def model_vs_paper(metrics: Mapping | None, paper: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per class, the run's strict/tolerant precision/recall (from metrics.json, with the sd over folds when
    it has one) beside the paper's. Classes the run has no numbers for get NaN (shown as blank)."""
    paper = paper if paper is not None else paper_table()
    per_class = (metrics or {}).get("classes", {})
    rows = []
    for a in ABBRS:
        mine = per_class.get(a, {})
        row = {"class": a, "name": BY_ABBR[a].name}
        for mode in ("strict", "tolerant"):
            for stat in ("precision", "recall"):
                row[f"model {mode} {stat}"] = _number(mine.get(mode, {}).get(stat))
                row[f"model {mode} {stat} sd"] = _number(mine.get(mode, {}).get(f"{stat}_sd"))
                row[f"paper {mode} {stat}"] = float(paper.loc[a, f"{mode}_{stat}"]) if a in paper.index else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def _number(value) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def class_row(table: pd.DataFrame, abbr: str) -> dict:
    """One class's row of model_vs_paper as a plain dict."""
    return table.set_index("class").loc[abbr].to_dict()


def precision_recall_rows(row: Mapping) -> pd.DataFrame:
    """One class's numbers as two rows (strict, tolerant) x model/paper precision/recall, for a small table."""
    return pd.DataFrame([
        {"evaluation": mode,
         "model precision": row[f"model {mode} precision"],
         "model precision sd": row[f"model {mode} precision sd"],
         "model recall": row[f"model {mode} recall"],
         "model recall sd": row[f"model {mode} recall sd"],
         "paper precision": row[f"paper {mode} precision"], "paper recall": row[f"paper {mode} recall"]}
        for mode in ("strict", "tolerant")
    ])


# --- what each column was measured on ---------------------------------------------------------------------

PAPER_MEASURED_ON = ("**Paper** columns: Matek et al. 2021, Table 1: a ResNeXt-50, 5-fold cross-validation on "
                     f"{sum(c.count for c in BY_ABBR.values()):,} real cells from 945 patients (mean of the folds).")


def is_builtin_synthetic(data_root) -> bool:
    """A run's data_root that names the built-in synthetic set: "default", or any path ending in data/synthetic
    (a run trained on another machine records that machine's absolute path)."""
    text = str(data_root or "").strip()
    if not text:
        return False
    return text == "default" or Path(text).parts[-2:] == ("data", "synthetic")


@dataclass(frozen=True)
class Evaluation:
    """What a run's scores were measured on."""
    data_root: str | None     # the run's config data_root (None: the run does not say)
    n_images: int | None      # images in its manifest
    synthetic: bool | None    # None: unknown (the folder is not on this machine)
    builtin: bool             # the built-in synthetic set
    num_folds: int | None
    same_as_active: bool | None  # None: unknown (the run does not say where its data came from)


def run_evaluation(config: Mapping | None, manifest_counts: Mapping[str, int] | None, active_dir,
                   active_is_default: bool) -> Evaluation:
    """Compare the run's data_root with the active data set: a run's scores belong to the data it was
    evaluated on. A data_root on this machine is checked for synth.json (synthetic or real)."""
    from bmteach.synth import is_synthetic

    config = config or {}
    root = config.get("data_root")
    n = sum(manifest_counts.values()) if manifest_counts else None
    folds = config.get("num_folds")
    if not root:
        return Evaluation(None, n, None, False, folds, None)
    builtin = is_builtin_synthetic(root)
    if builtin:
        same = bool(active_is_default or is_builtin_synthetic(active_dir))
        return Evaluation(str(root), n, True, True, folds, same)
    path = Path(root)
    synthetic = is_synthetic(path) if path.is_dir() else None
    try:
        same = path.resolve() == Path(active_dir).resolve()
    except OSError:
        same = False
    return Evaluation(str(root), n, synthetic, False, folds, same)


def model_measured_on(ev: Evaluation) -> str:
    """One sentence on what the model columns were measured on."""
    folds = f"{ev.num_folds}-fold cross-validation" if ev.num_folds else "cross-validation"
    count = f"{ev.n_images:,} " if ev.n_images else ""
    if ev.builtin:
        what = f"{count}synthetic cells of the built-in set, the same number per class"
    elif ev.synthetic:
        what = f"{count}synthetic cells in {ev.data_root}"
    elif ev.synthetic is False:
        what = f"{count}real cells in {ev.data_root}"
    else:
        what = f"{count}cells" + (f" in {ev.data_root}" if ev.data_root else "")
    sentence = f"**Model** columns: the active model, {folds} on its own data: {what}."
    if ev.synthetic:
        sentence += " Synthetic cells are easier than real ones: these numbers do not compare with the paper's."
    return sentence
