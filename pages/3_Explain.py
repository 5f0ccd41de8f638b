"""Explain: the model's top classes for one image, Grad-CAM and SmoothGrad for any class, why A and not B,
and the checks that say how far to trust a saliency map."""
import random
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from bmteach import ui
from bmteach.atlas import page_of, run_evaluation
from bmteach.classes import class_name
from bmteach.errors import UserError
from bmteach.explain import deletion_verdict, sanity_verdict
from bmteach.maps import colour_bar, mask_energy, overlay

MIN_SIDE = 64          # below this an image is too small to judge: the models see 128-250 px patches
THUMBS_PER_PAGE = 12   # two rows of six small images
THUMBS_PER_ROW = 6

active = ui.setup_page("Explain", icon="🔍")
st.title("What does the model look at?")
counts = ui.require_counts(active)
if not active.has_run:
    st.warning(active.run_error)
    st.stop()
model = ui.or_stop(ui.predictor, active)
classes = model.classes


# --- pick an image ----------------------------------------------------------------------------------------

def _choose(state_key: str, relpath: str, paths: list[str], page_key: str) -> None:
    """A thumbnail's or the random button's callback: remember the image and open the grid page that holds it."""
    st.session_state[state_key] = relpath
    st.session_state[page_key] = paths.index(relpath) // THUMBS_PER_PAGE + 1


def wrong_paths() -> set[str] | None:
    """Images whose held-out fold model predicts another class than the label (None: no predictions yet)."""
    try:
        oof = ui.run_oof(active)
    except (UserError, OSError):  # a damaged oof.csv: no filter (the Errors page says what is wrong with it)
        return None
    if oof is None or evaluated_elsewhere():
        return None
    return set(oof.loc[oof["true"] != oof["pred"], "path"])


def evaluated_elsewhere() -> bool:
    """True when the run's predictions are of another data set (same file names would not be the same cells)."""
    return run_evaluation(ui.run_config(active), None, active.data_dir, active.data.is_default).same_as_active is False


def pick_image(abbr: str) -> str | None:
    """A paged grid of thumbnails with a select button each, a random pick and a 'gets wrong' filter."""
    paths = ui.paths_of_class(active, abbr)
    wrong = wrong_paths()
    f1, f2 = st.columns([3, 2], vertical_alignment="bottom")  # the button label whole at 800 px
    only_wrong = f1.checkbox("Only images the model gets wrong", key="explain_wrong", disabled=wrong is None,
                             help="From the run's out-of-fold predictions: each image judged by the fold model "
                                  "that did not train on it." if wrong is not None else
                             "The active run has no out-of-fold predictions for this data set.")
    if only_wrong and wrong is not None:
        n_all = len(paths)
        paths = [p for p in paths if p in wrong]
        f1.caption(f"The model gets {len(paths):,} of the {n_all:,} {class_name(abbr).lower()} images wrong.")
    if not paths:
        st.info(f"No {class_name(abbr)} images to show" + (" that the model gets wrong." if only_wrong else "."))
        return None
    state_key, page_key = f"explain_pick_{abbr}", f"explain_pick_{abbr}_page"
    if st.session_state.get(state_key) not in paths:
        st.session_state[state_key] = paths[0]
    chosen = st.session_state[state_key]
    f2.button("Random image", key="explain_random", icon=":material/casino:", width="stretch",
              on_click=lambda: _choose(state_key, random.choice(paths), paths, page_key))
    n_pages = max(1, -(-len(paths) // THUMBS_PER_PAGE))
    if st.session_state.get(page_key, 1) > n_pages:  # a filter made the list shorter
        st.session_state[page_key] = 1
    page = st.number_input(f"Page of images (of {n_pages}; {len(paths):,} in this class)", 1, n_pages,
                           key=page_key)
    cols = st.columns(THUMBS_PER_ROW)
    for i, relpath in enumerate(page_of(paths, page, THUMBS_PER_PAGE).items):
        with cols[i % THUMBS_PER_ROW]:
            thumb = ui.thumbnail(active.data_dir, relpath)
            if thumb is not None:
                st.image(thumb, width="stretch")
            selected = relpath == chosen
            st.button("Shown" if selected else "Select", key=f"explain_thumb_{relpath}", width="stretch",
                      type="primary" if selected else "secondary", help=Path(relpath).name,
                      on_click=_choose, args=(state_key, relpath, paths, page_key))
    return chosen


source = st.radio("Image", ["From the data set", "Upload your own"], horizontal=True, key="explain_source")
relpath, synthetic, abbr = None, False, None
if source == "From the data set":
    present = [a for a, n in counts.items() if n > 0]  # only classes this data set has images of
    abbr = ui.class_picker("Class", key="explain_class", default="MYB", options=present, counts=counts)
    relpath = pick_image(abbr)
    if relpath is None:
        st.stop()
    # or_stop: an image deleted or moved since the index was read is one sentence, not a traceback
    image_bytes = ui.or_stop(ui.read_data_bytes, active.data_dir, relpath)
    name, synthetic = Path(relpath).name, active.synthetic
else:
    upload = st.file_uploader("A cell image (JPEG, PNG, TIFF, BMP, ...)", type=None, key="explain_upload")
    if upload is None:
        st.info("Upload one image of a single cell, ideally cut out like the data set's 250x250 patches.")
        st.stop()
    image_bytes, name = upload.getvalue(), upload.name
try:
    image = ui.decode_image(image_bytes, name)
    explained = ui.explanation(active, image_bytes, relpath)
except (UserError, OSError) as exc:
    st.error(ui.error_sentence(exc))
    st.stop()
if min(image.size) < MIN_SIDE:
    st.warning(f"This image is only {image.size[0]}x{image.size[1]} px: too small to judge. The model sees "
               "128-250 px patches of one cell, so its answer below is a guess on a blown-up blur.")
# An upload, or an image outside the run's own data set: say when it is unlike what the model learnt from.
learnt = ui.trained_on(active)
if relpath is None or explained.fold is None or (learnt.synthetic and not active.synthetic):
    checked = ui.ood_check(active, image_bytes)
    if checked is not None and checked[1]:
        st.warning(f"{checked[2]} (unusualness score {checked[0]:.2f}: higher than 95% of the held-out cells of "
                   "the model's own data set)")
    if learnt.synthetic and (relpath is None or not active.synthetic):
        st.info(ui.SYNTHETIC_ON_REAL)

# --- what the model says ----------------------------------------------------------------------------------
probs = explained.probs()
top = ui.top_classes(probs, classes, k=5)
# A new image starts on its own top class (and A/B on its top two) unless the student pinned a class: the
# widgets' state is set here, before they are drawn, so a selectbox and the map under it never disagree.
if st.session_state.get("explain_image") != explained.key:
    st.session_state["explain_image"] = explained.key
    second = top[1][0] if len(top) > 1 else top[0][0]
    if not st.session_state.get("explain_pin"):
        st.session_state["explain_target"] = top[0][0]
    st.session_state["explain_a"], st.session_state["explain_b"] = top[0][0], second

left, right = st.columns([1, 2])
with left:
    extra = "" if relpath is None else f"labelled {class_name(abbr)}"
    ui.show_cell(image, name, synthetic, extra=extra)
with right:
    st.subheader("The model's top classes")
    st.dataframe(pd.DataFrame([{"class": a, "name": class_name(a), "probability": p} for a, p in top]),
                 hide_index=True, key="explain_top",
                 column_config={"probability": st.column_config.NumberColumn("probability", format="%.3f")})
    st.caption(f"Probabilities from {explained.reason}. Maps below explain the fold-{explained.map_fold} model.")

pixels = np.asarray(image)
LEGEND = colour_bar(240, 12)
# Maps go to the browser as JPEG: a 250 px overlay is ~15 kB instead of ~150 kB of PNG, which is quicker to
# encode, send and decode when a whole class loads seven maps per click.


def legend() -> None:
    st.image(LEGEND, caption="Map colours: low → high evidence (blue → red)", width=240)


@st.fragment
def maps_section() -> None:
    """Everything below the image: its widgets rerun only this part of the page (the picker and the table of
    top classes above are not rebuilt or re-sent when the opacity or the target class moves)."""
    # --- Grad-CAM for any target class ----------------------------------------------------------------------
    st.header("Grad-CAM")
    c1, c2 = st.columns(2)
    target = c1.selectbox("Explain the class", classes, format_func=ui.class_label, key="explain_target")
    pinned = c1.checkbox("Keep this class for the next images", key="explain_pin")
    if pinned:
        c1.caption(f"Pinned: every image is explained for {class_name(target)}, not for its own top class.")
    alpha = c2.slider("Map opacity", 0.0, 1.0, 0.5, 0.05, key="explain_alpha")
    t = classes.index(target)
    cam = explained.gradcam(t)
    g1, g2 = st.columns(2)
    g1.image(pixels, caption=ui.image_caption(name, synthetic), width="stretch", output_format="JPEG")
    g2.image(overlay(pixels, cam, alpha), caption=f"Grad-CAM for {class_name(target)}", width="stretch",
             output_format="JPEG")
    legend()
    if synthetic and relpath is not None:
        mask = ui.cell_mask(active.data_dir, relpath)
        share = mask_energy(cam, mask) if mask is not None else float("nan")
        if not np.isnan(share):  # NaN: an all-zero map or an empty mask, where a share means nothing
            st.metric("Share of the Grad-CAM map inside the cell", f"{share:.0%}",
                      help="Synthetic cells come with a mask of the cell: a model that looks at the cell, not the "
                           "background, puts most of its map inside it.")

    # --- SmoothGrad (slow: on a button) ---------------------------------------------------------------------
    st.header("SmoothGrad")
    s1, s2 = st.columns(2)
    noise = s1.slider("Noise level (share of the input range)", 0.05, 0.5, 0.15, 0.05, key="explain_noise")
    samples = s2.slider("Noisy samples", 5, 100, 25, 5, key="explain_samples")
    sg_key = (explained.key, t, noise, samples)  # the run's stamp is in the key: never a stale map
    if st.button("Compute SmoothGrad", key="explain_smoothgrad"):
        bar = st.progress(0.0, text="SmoothGrad: averaging gradients over noisy copies...")
        st.session_state["explain_sg"] = (sg_key, explained.smoothgrad(
            t, noise, samples, progress=lambda d, n: bar.progress(d / n)))
        bar.empty()
    saved = st.session_state.get("explain_sg")
    if saved and saved[0] == sg_key:
        st.image(overlay(pixels, saved[1], alpha), caption=f"SmoothGrad for {class_name(target)} "
                 f"({samples} samples, noise {noise:.2f})", width=320, output_format="JPEG")
    else:
        st.caption("SmoothGrad averages the input gradient over noisy copies of the image; it takes a few "
                   "seconds.")

    # --- why A and not B ------------------------------------------------------------------------------------
    st.header("Why A and not B?")
    w1, w2 = st.columns(2)
    a = w1.selectbox("A", classes, format_func=ui.class_label, key="explain_a")
    b = w2.selectbox("B", classes, format_func=ui.class_label, key="explain_b")
    ia, ib = classes.index(a), classes.index(b)
    v1, v2, v3 = st.columns(3)
    v1.image(overlay(pixels, explained.gradcam(ia), alpha), caption=f"Evidence for {a}", width="stretch",
             output_format="JPEG")
    v2.image(overlay(pixels, explained.gradcam(ib), alpha), caption=f"Evidence for {b}", width="stretch",
             output_format="JPEG")
    if ia != ib:
        v3.image(overlay(pixels, explained.gradcam(ia, versus=ib), alpha), caption=f"For {a} rather than {b}",
                 width="stretch", output_format="JPEG")

    # --- can this map be trusted? ---------------------------------------------------------------------------
    st.header("Can this map be trusted?")
    if st.toggle("Sanity check: compare with a weight-randomised model", key="explain_sanity"):
        result = explained.sanity(t)
        k1, k2, k3 = st.columns(3)
        k1.image(overlay(pixels, result.trained, alpha), caption="Trained model", width="stretch", output_format="JPEG")
        k2.image(overlay(pixels, result.randomized, alpha), caption="Random weights", width="stretch",
                 output_format="JPEG")
        k3.metric("Rank correlation", f"{result.correlation:.2f}",
                  help="Below about 0.3 the map depends on what the model learnt; near 1 it mostly shows the "
                       "image.")
        verdict = sanity_verdict(result.correlation)
        (st.success if result.correlation < 0.3 else st.warning)(verdict)
    if st.toggle("Faithfulness: deletion curve", key="explain_deletion"):
        deletion = explained.deletion(t)
        st.metric("Deletion area: map ÷ random order", f"{deletion.ratio:.2f}",
                  help="The area under the map's deletion curve divided by the area for removing pixels in a "
                       "random order: 0 = the map finds what the model uses at once, 1 = no better than chance.")
        st.markdown(deletion_verdict(deletion, class_name(target)))
        st.plotly_chart(deletion_figure(deletion, target), key="explain_deletion_chart",
                        config={"displayModeBar": False})


def deletion_figure(deletion, target: str):
    """The map's and the random order's deletion curves with labelled axes."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for curve, label, dash in ((deletion.curve, "the map's order (most salient first)", "solid"),
                               (deletion.random, "a random order", "dot")):
        fig.add_trace(go.Scatter(x=curve.fractions, y=curve.scores, mode="lines", name=label,
                                 line=dict(dash=dash)))
    fig.update_layout(height=320, margin=dict(l=10, r=10, t=10, b=10), legend=dict(orientation="h", y=1.12),
                      xaxis_title="share of pixels removed", yaxis_title=f"probability of {target}")
    fig.update_xaxes(range=[0, 1], tickformat=".0%")
    fig.update_yaxes(range=[0, 1])
    return fig


maps_section()
