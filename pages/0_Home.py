"""Home: what bmteach is, which data set and model are active, where to go next, how to use the real data."""
import streamlit as st

from bmteach import settings as cfg
from bmteach import ui
from bmteach.atlas import counts_table
from bmteach.errors import UserError

active = ui.setup_page("Home")

st.title("bmteach: learn to recognise bone-marrow cells")
st.markdown(
    "Twenty-one kinds of cells, from blasts to segmented neutrophils, as classified by Matek et al. "
    "(Blood 2021) on 171,374 expert-labelled images. Study each class in the **Atlas**, look inside the "
    "network that tells them apart on **Explain**."
)

st.subheader("Where to go next")
ui.page_links()

st.header("What is active")
left, right = st.columns(2)
with left:
    st.subheader("Data set")
    if active.synthetic:
        st.badge("synthetic", color="orange")
        st.write("**Synthetic** cells drawn by bmteach's generator, not real patients' cells. They follow "
                 "each class's textbook features; real cells vary far more.")
    if not active.data.is_default:
        origin = "BMTEACH_DATA" if active.data.source == "env" else "the instructor setting"
        st.write(f"`{active.data_dir}` (from {origin})")
    if active.data_error:
        st.error(active.data_error)
with right:
    st.subheader("Model")
    st.write(f"Run `{active.run.path.name}` at `{active.run_dir}`")
    if active.run_error:
        st.warning(active.run_error)

run_counts = ui.run_manifest_counts(active) if active.has_run else None
if active.has_data:
    try:
        counts = ui.data_counts(active)
    except (UserError, OSError) as exc:
        st.error(ui.error_sentence(exc))
    else:
        st.metric("Images in the active data set", f"{sum(counts.values()):,}",
                  help="Images found by the index; unreadable and junk files are skipped.")
        table = counts_table(counts, run_counts)  # 21 rows, all in view
        st.dataframe(table, hide_index=True, key="class_counts", height=ui.table_height(len(table)))

st.header("Use the real data set")
st.markdown(
    "The images of Matek et al. are on The Cancer Imaging Archive (TCIA): collection "
    "**Bone-Marrow-Cytomorphology_MLL_Helmholtz_Fraunhofer**, "
    "[doi:10.7937/TCIA.AXH3-T579](https://doi.org/10.7937/TCIA.AXH3-T579), about 6.8 GB. "
    "Download it with the IBM Aspera Connect plug-in or the NBIA Data Retriever from the collection page; "
    "it unpacks to a folder `BM_cytomorphology_data` with one sub-folder per class.\n\n"
    "Point the app at that folder in one of two ways:\n"
    "- start it with environment variables: "
    "`BMTEACH_DATA=/path/to/BM_cytomorphology_data BMTEACH_RUN=/path/to/run streamlit run app.py`;\n"
    "- or, as the instructor, below (saved in the app's settings; environment variables win)."
)

with st.expander("Instructor settings", expanded=False):
    if ui.instructor_guard("home_instructor"):
        try:
            saved = cfg.load_settings()
        except UserError:
            saved = cfg.Settings()  # the warning above says the file is damaged; saving replaces it
        if active.data.source == "env" or active.run.source == "env":
            st.info("BMTEACH_DATA or BMTEACH_RUN is set for this server: it wins over the settings saved here.")
        data_in = st.text_input("Data folder (empty = built-in synthetic cells)", value=saved.data_dir or "",
                                key="setting_data")
        runs = cfg.known_runs()
        run_in = st.text_input("Run folder (empty = models/demo)", value=saved.run_dir or "", key="setting_run",
                               help="Trained runs found: " + (", ".join(str(r) for r in runs) or "none yet"))
        if st.button("Save settings", key="save_settings"):
            try:
                cfg.save_choices(data_in, run_in)
            except UserError as exc:
                st.error(str(exc))
            else:
                st.success("Saved: every page now uses these folders.")
                st.rerun()

st.header("Credits")
st.markdown(
    "Images and labels: Matek C, Krappe S, Münzenmayer C, Haferlach T, Marr C. *Highly accurate "
    "differentiation of bone marrow cell morphologies using deep neural networks on a large image data set.* "
    "Blood 2021;138(20):1917-1927. Data set: Matek et al., The Cancer Imaging Archive, "
    "doi:10.7937/TCIA.AXH3-T579, licensed CC BY 4.0. bmteach is not affiliated with the authors; "
    "its teaching text, synthetic cells and models are its own."
)
