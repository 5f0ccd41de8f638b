"""Atlas: the lineage tree, a card per class, a gallery, the model next to the paper, two classes compared."""
import streamlit as st

from bmteach import atlas, ui
from bmteach.classes import BY_ABBR

active = ui.setup_page("Atlas", icon="📖")
st.title("Atlas of the 21 classes")
counts = ui.require_counts(active)
teaching = ui.teaching_text()


def _on_tree_click():
    clicked = atlas.selected_class(st.session_state.get("atlas_tree"))
    if clicked:
        st.session_state["atlas_class"] = clicked


st.caption("The lineages of the paper's Fig. 1A: click a cell to open its card (dashed: pathological forms).")
st.plotly_chart(atlas.lineage_figure(st.session_state.get("atlas_class", "BLA")), key="atlas_tree",
                on_select=_on_tree_click, selection_mode="points", config={"displayModeBar": False})
abbr = ui.class_picker("Class", key="atlas_class", default="BLA", counts=counts)
cell, text = BY_ABBR[abbr], teaching[abbr]

# --- the class card ---------------------------------------------------------------------------------------
st.header(f"{cell.name} ({abbr})")
left, right = st.columns([1, 2])
with left:
    examples = ui.paths_of_class(active, abbr)
    if examples:
        ui.show_data_cell(active, examples[0], label=f"{abbr} example")
    m1, m2 = st.columns(2)
    m1.metric("In the active data set", f"{counts.get(abbr, 0):,}")
    m2.metric("In the full data set", f"{cell.count:,}")
with right:
    st.markdown(f"**{text.summary}**  \nLineage: {cell.lineage} · size {text.size}")
    st.markdown("**What to look at**\n" + "\n".join(f"- {line}" for line in text.look_for))
    if text.tell_apart:
        st.markdown("**How to tell it from its neighbours**\n" + "\n".join(
            f"- *{BY_ABBR[other].name} ({other})*: {why}" for other, why in text.tell_apart.items()))

# --- the model next to the paper ----------------------------------------------------------------------------
st.subheader("How well is it recognised?")
metrics = ui.run_metrics(active) if active.has_run else None
table = atlas.model_vs_paper(metrics)
row = atlas.class_row(table, abbr)
st.dataframe(atlas.precision_recall_rows(row), hide_index=True, key="atlas_pr")
if metrics is None:
    st.info("The active model has no evaluation yet (run `python -m bmteach evaluate RUN`): only the paper's "
            "numbers are shown.")
st.caption("Paper: Matek et al. 2021, Table 1 (ResNeXt-50, 5-fold mean). Tolerant: a mix-up between "
           "neighbouring maturation stages counts as correct; the pair list is our reconstruction from Table 1.")
with st.expander("All classes"):
    st.dataframe(table, hide_index=True, key="atlas_pr_all")

# --- gallery ------------------------------------------------------------------------------------------------
st.subheader(f"Examples of {cell.name.lower()}s")
ui.gallery(active, abbr, key="atlas_gallery")

# --- compare two classes --------------------------------------------------------------------------------------
st.header("Compare two classes")
c1, c2 = st.columns(2)
for col, default, key in ((c1, "MYB", "compare_a"), (c2, "MMZ", "compare_b")):
    with col:
        other = ui.class_picker("Class", key=key, default=default, counts=counts)
        st.markdown(f"**{teaching[other].summary}**")
        st.markdown("\n".join(f"- {line}" for line in teaching[other].look_for))
        ui.gallery(active, other, key=f"{key}_gallery", per_page=6, columns=3)
a, b = st.session_state["compare_a"], st.session_state["compare_b"]
hint = teaching[a].tell_apart.get(b) or teaching[b].tell_apart.get(a)
if a != b and hint:
    st.info(f"{BY_ABBR[a].name} vs {BY_ABBR[b].name}: {hint}")
