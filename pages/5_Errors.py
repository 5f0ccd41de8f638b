"""Errors: where the model goes wrong. The row-normalised confusion matrix of its out-of-fold predictions (the
paper's Fig. 2), strict or tolerant; click a square for the cells behind it with Grad-CAM for the predicted and
the expert class; the most confused pairs; per-class scores beside the paper's Table 1; and possible label
errors found by confident learning (cleanlab), each with its evidence."""
from pathlib import Path

import numpy as np
import streamlit as st

from bmteach import explore, ui
from bmteach.classes import class_name
from bmteach.errors import UserError
from bmteach.maps import overlay

active = ui.setup_page("Errors", icon="⚠️")
st.title("Where the model goes wrong")
ui.require_data(active)
if not active.has_run:
    st.warning(active.run_error)
    st.stop()
oof = ui.or_stop(ui.run_oof, active)
if oof is None or oof.empty:
    st.info("This run has no out-of-fold predictions yet: come back when a fold has finished training.")
    st.stop()

st.markdown(
    f"Every number here comes from **out-of-fold** predictions: each of the {len(oof):,} images was predicted by "
    "the fold model that never trained on it. Rows are the expert's class, columns the model's; each row sums "
    "to 1 (the paper's Fig. 2)."
)
mode = st.radio("Evaluation", explore.MODES, horizontal=True, key="err_mode",
                help="tolerant counts the confusions the paper accepts (neighbouring maturation stages and a few "
                     "look-alike pairs) as right")
counts, shares, classes = explore.confusion(oof, mode)
right = np.trace(counts) / max(counts.sum(), 1)
st.metric(f"Accuracy ({mode})", f"{right:.1%}")
event = st.plotly_chart(explore.confusion_figure(counts, shares, classes), key="err_matrix", on_select="rerun",
                        selection_mode="points")
cell = explore.selected_cell(event)
if cell:
    st.session_state["err_cell"] = cell


def class_index(abbr: str) -> int:
    return ui.predictor(active).classes.index(abbr)


def cell_with_maps(relpath: str, expert: str, pred: str, caption: str) -> None:
    """The image, Grad-CAM for the predicted class and (when different) for the expert's class."""
    try:
        image_bytes = ui.read_data_bytes(active.data_dir, relpath)
        image = np.asarray(ui.decode_image(image_bytes, Path(relpath).name))
        exp = ui.explanation(active, image_bytes, relpath)
    except (UserError, OSError) as exc:
        st.caption(f"{Path(relpath).name}: {exc}")
        return
    targets = [pred] if pred == expert else [pred, expert]
    cols = st.columns(1 + len(targets))
    cols[0].image(image, caption=ui.image_caption(caption, active.synthetic), width="stretch")
    for col, target in zip(cols[1:], targets):
        who = "predicted" if target == pred else "expert"
        col.image(overlay(image, exp.gradcam(class_index(target)), 0.5),
                  caption=f"Grad-CAM: {who} class {target}", width="stretch")


# --- one square: the images behind it -----------------------------------------------------------------------
chosen = st.session_state.get("err_cell")
if chosen:
    true, pred = chosen
    rows = explore.cell_rows(oof, true, pred, mode)
    st.header(f"Expert {true} → model {pred}: {len(rows):,} image{'' if len(rows) == 1 else 's'}")
    st.caption(f"{class_name(true)} predicted as {class_name(pred)}, most confident first. Grad-CAM shows where "
               "the model found evidence for each class.")
    per_page = 6
    pages = max(1, -(-len(rows) // per_page))
    page = st.number_input(f"Page (of {pages})", 1, pages, 1, key="err_cell_page")
    for _, r in rows.iloc[(page - 1) * per_page: page * per_page].iterrows():
        cell_with_maps(r["path"], r["true"], r["pred"], f"{Path(r['path']).name} · p({r['pred']}) "
                       f"{r['confidence']:.2f}")
else:
    st.info("Click a square of the matrix to see the images behind it.")

# --- most confused pairs, per-class table --------------------------------------------------------------------
st.header("Most confused pairs")
st.dataframe(explore.most_confused(counts, classes, top=10), hide_index=True, key="err_pairs",
             column_config={"share of expert class": st.column_config.NumberColumn(format="%.2f")})

st.header("Per class, beside the paper's Table 1")
table = ui.or_stop(ui.class_table, active)
cols = ["class", "name", "images", f"model {mode} precision", f"paper {mode} precision",
        f"model {mode} recall", f"paper {mode} recall"]
st.dataframe(table[cols], hide_index=True, key="err_class_table",
             column_config={c: st.column_config.NumberColumn(format="%.2f") for c in cols[3:]})
st.caption("Model: this run's out-of-fold mean over folds. Paper: Matek et al. 2021, Table 1 (ResNeXt-50 on "
           "171,374 real images). A synthetic-data run is not comparable number for number.")

# --- possible label errors ------------------------------------------------------------------------------------
st.header("Possible label errors")
st.markdown("Confident learning (cleanlab) flags images whose expert label the held-out models doubt more than "
            "that class's typical image: candidates to re-examine, not proven mistakes.")
issues = ui.or_stop(ui.label_issues, active)
st.metric("Images flagged", explore.share_text(len(issues), len(oof)))
if len(issues):
    per_page = 5
    pages = max(1, -(-len(issues) // per_page))
    page = st.number_input(f"Flagged page (of {pages})", 1, pages, 1, key="err_issue_page")
    for _, issue in issues.iloc[(page - 1) * per_page: page * per_page].iterrows():
        st.markdown(explore.evidence_sentence(issue))
        cell_with_maps(issue["path"], issue["expert"], issue["model prefers"], Path(issue["path"]).name)
