"""Feature map: every cell of the run placed by what the network sees in it (UMAP of its penultimate features,
each from the fold model that never trained on it). Click a point for its card; box or lasso a region for a
gallery and that region's confusion matrix; the instructor can send a region to the quiz as an exam."""
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from bmteach import explore, ui
from bmteach.classes import class_name
from bmteach.errors import UserError
from bmteach.maps import overlay

active = ui.setup_page("Feature map", icon="🗺️")
st.title("The map of what the model learnt")
st.markdown(
    "Each point is one cell image. Cells the network finds alike sit close together: the map is a UMAP of the "
    "network's last hidden layer (the features its classifier reads), each image seen by the fold model that "
    "did **not** train on it, like the paper's Fig. 4. Click a point to see its cell; use the box or lasso tool "
    "(top right of the chart) to select a region."
)
ui.require_data(active)
if not active.has_run:
    st.warning(active.run_error)
    st.stop()

# --- the map: from disk, on first use for a small run, by command for a large one ------------------------
n_images = sum((ui.run_manifest_counts(active) or {}).values())
emb = ui.or_stop(ui.feature_map, active)
if emb is None and n_images <= ui.MAP_AUTO_LIMIT:
    emb = ui.or_stop(ui.feature_map, active, compute=True)
if emb is None:
    st.info(f"This run has {n_images:,} images; its map is computed once, on a GPU machine or overnight, with "
            f"`python -m bmteach embed {active.run_dir} --data {active.data_dir}`; the page then loads it.")
    with st.expander("Compute it on this server now (instructor; can take long)"):
        if ui.instructor_guard("fm_compute") and st.button("Compute the map", key="fm_compute_now"):
            emb = ui.or_stop(ui.feature_map, active, compute=True)
    if emb is None:
        st.stop()

table = ui.or_stop(ui.map_table, active)  # a damaged oof.csv or cache: one sentence
has_pred = bool((table["pred"] != "").any())
if not has_pred:
    st.info("This run has no out-of-fold predictions yet: the map shows expert classes only.")

c1, c2 = st.columns([2, 3])
by = c1.selectbox("Colour by", explore.COLOUR_BY if has_pred else ("expert class", "lineage", "fold"),
                  key="fm_colour",
                  help="correct (tolerant) also accepts the confusions the paper tolerates (e.g. a myelocyte "
                       "called a metamyelocyte).")
# the chart keeps its own selection: clearing it means a fresh chart (a new key), not only forgetting ours
generation = st.session_state.get("fm_chart_generation", 0)
if c2.button("Clear selection", key="fm_clear"):
    st.session_state.pop("fm_ids", None)
    generation = st.session_state["fm_chart_generation"] = generation + 1
chart_key = "fm_chart" if generation == 0 else f"fm_chart_{generation}"

# --- draw a sample, keep the selection ---------------------------------------------------------------------
kept = st.session_state.get("fm_ids") or []
shown = table.iloc[explore.display_sample(table, keep=kept)]
note = "" if len(shown) == len(table) else (
    ": a class-stratified sample plus every misclassified and selected image (neighbours, counts and "
    "matrices always use every image)")
st.caption(f"Showing {len(shown):,} of {len(table):,} images{note}. Map: UMAP (seed "
           f"{emb.info['params']['seed']}, {emb.info['params']['n_neighbors']} neighbours) after PCA to "
           f"{emb.info['pca_dims_used']} dimensions of {emb.info['feature_width']}-d features.")
event = st.plotly_chart(explore.map_figure(shown, by), key=chart_key, on_select="rerun",
                        selection_mode=("points", "box", "lasso"))
ids = explore.selected_ids(event)
if ids:  # a new selection replaces the kept one; an empty event (a redraw) keeps it
    st.session_state["fm_ids"] = ids
    st.session_state["fm_region"] = explore.is_region(event) and len(ids) > 1
ids = st.session_state.get("fm_ids") or []
if not ids:
    st.info("Click a point to open its card, or select a region with the box or lasso tool.")
    st.stop()

oof = ui.or_stop(ui.run_oof, active)
oof_by_path = oof.set_index("path") if oof is not None else None


def show_image(relpath: str, caption: str, width="stretch") -> None:
    try:
        image = ui.decode_image(ui.read_data_bytes(active.data_dir, relpath), Path(relpath).name)
    except (UserError, OSError):
        st.caption(f"{Path(relpath).name} cannot be read.")
        return
    st.image(image, caption=ui.image_caption(caption, active.synthetic), width=width)


def neighbour_strip(title: str, found: list[tuple[int, float]]) -> None:
    st.markdown(f"**{title}**")
    cols = st.columns(max(len(found), 1))
    for col, (rid, dist) in zip(cols, found):
        r = table.iloc[rid]
        with col:
            show_image(r["path"], f"{r['label']} → {r['pred'] or '?'} · d {dist:.1f}")


# --- one point: its card -------------------------------------------------------------------------------------
if not st.session_state.get("fm_region"):
    try:
        row = explore.point_row(table, ids[0])
    except UserError as exc:
        st.warning(str(exc))
        st.stop()
    st.header(f"{class_name(row['label'])} ({row['label']})")
    left, mid, right = st.columns([1, 1, 2])
    with left:
        show_image(row["path"], Path(row["path"]).name)
    if has_pred and oof_by_path is not None and row["path"] in oof_by_path.index:
        top = explore.top_probs(oof_by_path.loc[row["path"]], k=3)
        with mid:
            try:
                image_bytes = ui.read_data_bytes(active.data_dir, row["path"])
                exp = ui.explanation(active, image_bytes, row["path"])
                classes = ui.predictor(active).classes
                cam = exp.gradcam(classes.index(row["pred"]))
                st.image(overlay(np.asarray(ui.decode_image(image_bytes)), cam, 0.5),
                         caption=f"Grad-CAM for the prediction {row['pred']}", width="stretch")
            except (UserError, OSError, ValueError) as exc:
                st.caption(f"No Grad-CAM: {exc}")
        with right:
            verdict = "right" if row["correct_strict"] else (
                "wrong, but tolerated" if row["correct_tolerant"] else "wrong")
            st.markdown(f"**Expert:** {row['label']} · {class_name(row['label'])}  \n"
                        f"**Model (fold {int(row['fold'])}, which never trained on it):** {row['pred']} · "
                        f"{class_name(row['pred'])} ({verdict})")
            st.dataframe(pd.DataFrame([{"class": a, "name": class_name(a), "probability": round(p, 3)}
                                       for a, p in top]), hide_index=True, key="fm_top3")
    else:
        right.caption("No out-of-fold prediction for this image yet.")
    ft = ui.or_stop(ui.feature_table, active)
    labels = ft.rows["label"].to_numpy()
    distances = explore.feature_distances(ft.features, int(row["row"]), ft.norms)  # one pass, both strips
    neighbour_strip("Nearest cells of the same class (in the network's feature space)",
                    explore.nearest_neighbours(ft.features, labels, int(row["row"]), 5, True, distances))
    neighbour_strip("Nearest cells of other classes: what the network finds it most alike",
                    explore.nearest_neighbours(ft.features, labels, int(row["row"]), 5, False, distances))
    st.stop()

# --- a region: gallery, its confusion matrix, send to the quiz ---------------------------------------------
region = explore.region_rows(table, ids)
wrong = int((region["correct_strict"] == False).sum())
st.header(f"{len(region):,} cells selected")
st.caption(f"{explore.share_text(wrong, len(region))} misclassified (strict); shown wrong first, then by "
           "confidence.")
matrix = explore.region_confusion(table, ids)
if not matrix.empty:
    st.markdown("**Expert (rows) vs model (columns) inside the region**")
    st.dataframe(matrix, key="fm_region_matrix")
per_page = 24
pages = max(1, -(-len(region) // per_page))
page = st.number_input(f"Gallery page (of {pages})", 1, pages, 1, key="fm_region_page")
cols = st.columns(6)
for i, (_, r) in enumerate(region.iloc[(page - 1) * per_page: page * per_page].iterrows()):
    with cols[i % 6]:
        show_image(r["path"], f"{r['label']} → {r['pred'] or '?'}")

with st.expander("Send this selection to the quiz as an exam (instructor)"):
    items = explore.exam_items(table, ids)
    st.download_button("Download as CSV (path,label)", items.to_csv(index=False), "selection.csv",
                       key="fm_exam_csv")
    if ui.instructor_guard("fm_exam"):
        store = ui.or_stop(ui.quiz_store)  # a read-only home: one sentence
        classes_df = store.list_classes()
        if classes_df.empty:
            st.info("No quiz class exists yet: create one on the Teacher page first.")
        else:
            code = st.selectbox("Class", classes_df["code"].tolist(), key="fm_exam_class")
            title = st.text_input("Exam title", value=f"Feature-map region ({len(items)} cells)",
                                  key="fm_exam_title")
            if st.button("Create the exam", key="fm_exam_create"):
                try:
                    exam = store.create_exam(code, items["path"].tolist(), title=title)
                except UserError as exc:
                    st.error(str(exc))
                else:
                    st.success(f"Exam {exam} created for class {code} with {len(items)} cells.")
