"""Atlas: the lineage tree, a card per class, a gallery, the model next to the paper, two classes compared,
and a self-study mode that hides the label."""
import random

import streamlit as st

from bmteach import atlas, ui
from bmteach.classes import BY_ABBR

active = ui.setup_page("Atlas", icon="📖")
st.title("Atlas of the 21 classes")
counts = ui.require_counts(active)
teaching = ui.teaching_text()
present = [a for a, n in counts.items() if n > 0]  # classes the active data set has images of


def _on_tree_click():
    clicked = atlas.selected_class(st.session_state.get("atlas_tree"))
    if clicked:
        st.session_state["atlas_class"] = clicked


def _count_label(abbr: str) -> str:
    n = counts.get(abbr, 0)
    return f"{ui.class_label(abbr)} ({n:,})" if n else f"{ui.class_label(abbr)} (none in this data set)"


# --- self-study: a cell without its label -----------------------------------------------------------------
hide = st.toggle("Hide the label (self-study)", key="atlas_hide_label",
                 help="Shows a random cell of the active data set without its class: name it, then reveal.")
if hide:
    pool = [(p, a) for a in present for p in ui.paths_of_class(active, a)]
    if st.button("Another cell", key="atlas_study_next") or st.session_state.get("atlas_study") not in pool:
        st.session_state["atlas_study"] = random.choice(pool) if pool else None
    study = st.session_state.get("atlas_study")
    if study:
        relpath, answer = study
        left, right = st.columns([1, 2])
        with left:
            ui.show_data_cell(active, relpath, label="Which class is this?", width=250)
        with right:
            st.markdown("Look at size, nucleus and cytoplasm, name the class, then reveal it.")
            with st.expander("Show the label"):
                st.markdown(f"**{BY_ABBR[answer].name} ({answer})**: {teaching[answer].summary}")
    st.divider()

# --- the tree and the class card --------------------------------------------------------------------------
st.caption("The lineages of the paper's Fig. 1A: click a cell to open its card (dashed: pathological forms).")
st.plotly_chart(atlas.lineage_figure(st.session_state.get("atlas_class", "BLA")), key="atlas_tree",
                on_select=_on_tree_click, selection_mode="points", config={"displayModeBar": False})
if "atlas_class" in st.session_state:  # set by a click on the tree: a default as well would be a conflict
    abbr = st.selectbox("Class", list(BY_ABBR), format_func=_count_label, key="atlas_class")
else:
    abbr = st.selectbox("Class", list(BY_ABBR), index=list(BY_ABBR).index("BLA"), format_func=_count_label,
                        key="atlas_class")
cell, text = BY_ABBR[abbr], teaching[abbr]

st.header(f"{cell.name} ({abbr})")
left, right = st.columns([1, 2])
with left:
    examples = ui.paths_of_class(active, abbr)
    if examples:
        ui.show_data_cell(active, examples[0], label=f"{abbr} example")
    else:
        st.info(f"The active data set has no {cell.name.lower()} images.")
    # stacked, not side by side: two metrics in a third of an 800 px window cut their labels off
    st.metric("In the active data set", f"{counts.get(abbr, 0):,}")
    st.metric("In the full data set", f"{cell.count:,}")
with right:
    st.markdown(f"**{text.summary}**  \nLineage: {cell.lineage} · size {text.size}")
    st.markdown("**What to look at**\n" + "\n".join(f"- {line}" for line in text.look_for))
    if text.tell_apart:
        st.markdown("**How to tell it from its neighbours**\n" + "\n".join(
            f"- *{BY_ABBR[other].name} ({other})*: {why}" for other, why in text.tell_apart.items()))

# --- the model next to the paper ----------------------------------------------------------------------------
st.subheader("How well is it recognised?")
metrics = ui.run_metrics(active) if active.has_run else None
evaluation = (atlas.run_evaluation(ui.run_config(active), ui.run_manifest_counts(active), active.data_dir,
                                   active.data.is_default) if active.has_run else None)
if metrics is not None and evaluation is not None and evaluation.same_as_active is False:
    st.info(f"The active model was evaluated on other data ({evaluation.data_root}), not on the active data set: "
            "its scores describe those cells, so only the paper's numbers are shown here.")
    metrics = None
elif metrics is None:
    st.info("The active model has no evaluation yet (run `python -m bmteach evaluate RUN`): only the paper's "
            "numbers are shown.")
table = atlas.model_vs_paper(metrics)
row = atlas.class_row(table, abbr)
small = atlas.precision_recall_rows(row)
# one format per column: two decimals for every score and sd, in both tables
numbers = {c: st.column_config.NumberColumn(c, format="%.2f")
           for c in [*table.columns, *small.columns] if c not in ("class", "name", "evaluation")}
st.dataframe(small, hide_index=True, key="atlas_pr", column_config=numbers)
lines = [atlas.PAPER_MEASURED_ON]
if metrics is not None and evaluation is not None:
    lines.append(atlas.model_measured_on(evaluation))
    if evaluation.same_as_active is None:
        lines.append("The run does not record which data folder it was trained on.")
lines.append("*sd*: standard deviation over the folds. Tolerant: a mix-up between neighbouring maturation stages "
             "counts as correct; the pair list is our reconstruction from Table 1.")
st.caption("  \n".join(lines))
with st.expander("All classes"):
    st.dataframe(table, hide_index=True, key="atlas_pr_all", column_config=numbers,
                 height=ui.table_height(len(table)))

# --- gallery ------------------------------------------------------------------------------------------------
st.subheader(f"Examples of {cell.name.lower()}s")
ui.gallery(active, abbr, key="atlas_gallery", columns=4)  # captions stay legible at 800 px

# --- compare two classes --------------------------------------------------------------------------------------
st.header("Compare two classes")
if len(present) < 2:
    st.info("The active data set has images of fewer than two classes: there is nothing to compare.")
    st.stop()
defaults = [a for a in ("MYB", "MMZ") if a in present] + [a for a in present if a not in ("MYB", "MMZ")]
c1, c2 = st.columns(2)
for col, default, key in ((c1, defaults[0], "compare_a"), (c2, defaults[1], "compare_b")):
    with col:
        other = ui.class_picker("Class", key=key, default=default, options=present, counts=counts)
        st.markdown(f"**{teaching[other].summary}**")
        st.markdown("\n".join(f"- {line}" for line in teaching[other].look_for))
        ui.gallery(active, other, key=f"{key}_gallery", per_page=6, columns=3)
a, b = st.session_state["compare_a"], st.session_state["compare_b"]
hint = teaching[a].tell_apart.get(b) or teaching[b].tell_apart.get(a)
if a != b and hint:
    st.info(f"{BY_ABBR[a].name} vs {BY_ABBR[b].name}: {hint}")
