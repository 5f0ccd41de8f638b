"""Explain: the model's top classes for one image, Grad-CAM and SmoothGrad for any class, why A and not B,
and the checks that say how far to trust a saliency map."""
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from bmteach import ui
from bmteach.classes import class_name
from bmteach.errors import UserError
from bmteach.maps import mask_energy, overlay

active = ui.setup_page("Explain", icon="🔍")
st.title("What does the model look at?")
counts = ui.require_counts(active)
if not active.has_run:
    st.warning(active.run_error)
    st.stop()
try:
    model = ui.predictor(active)
except UserError as exc:
    st.error(str(exc))
    st.stop()
classes = model.classes

# --- pick an image ----------------------------------------------------------------------------------------
source = st.radio("Image", ["From the data set", "Upload your own"], horizontal=True, key="explain_source")
relpath, synthetic = None, False
if source == "From the data set":
    c1, c2 = st.columns([1, 2])
    with c1:
        present = [a for a, n in counts.items() if n > 0]  # only classes this data set has images of
        abbr = ui.class_picker("Class", key="explain_class", default="MYB", options=present, counts=counts)
    with c2:
        relpath = ui.image_picker(active, abbr, key="explain_pick")
    if relpath is None:
        st.stop()
    image_bytes, name, synthetic = ui.read_data_bytes(active.data_dir, relpath), Path(relpath).name, active.synthetic
else:
    upload = st.file_uploader("A cell image (JPEG, PNG, TIFF, BMP, ...)", type=None, key="explain_upload")
    if upload is None:
        st.info("Upload one image of a single cell, ideally cut out like the data set's 250x250 patches.")
        st.stop()
    image_bytes, name = upload.getvalue(), upload.name
try:
    image = ui.decode_image(image_bytes, name)
    explained = ui.explanation(active, image_bytes, relpath)
except UserError as exc:
    st.error(str(exc))
    st.stop()

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
    st.dataframe(pd.DataFrame([{"class": a, "name": class_name(a), "probability": round(p, 4)} for a, p in top]),
                 hide_index=True, key="explain_top")
    st.caption(f"Probabilities from {explained.reason}. Maps below explain the fold-{explained.map_fold} model.")

# --- Grad-CAM for any target class --------------------------------------------------------------------------
st.header("Grad-CAM")
c1, c2 = st.columns(2)
target = c1.selectbox("Explain the class", classes, format_func=ui.class_label, key="explain_target")
pinned = c1.checkbox("Keep this class for the next images", key="explain_pin")
if pinned:
    c1.caption(f"Pinned: every image is explained for {class_name(target)}, not for its own top class.")
alpha = c2.slider("Map opacity", 0.0, 1.0, 0.5, 0.05, key="explain_alpha")
t = classes.index(target)
cam = explained.gradcam(t)
pixels = np.asarray(image)
g1, g2 = st.columns(2)
g1.image(pixels, caption=ui.image_caption(name, synthetic), width="stretch")
g2.image(overlay(pixels, cam, alpha), caption=f"Grad-CAM for {class_name(target)}", width="stretch")
if synthetic and relpath is not None:
    mask = ui.cell_mask(active.data_dir, relpath)
    share = mask_energy(cam, mask) if mask is not None else float("nan")
    if not np.isnan(share):  # NaN: an all-zero map or an empty mask, where a share means nothing
        st.metric("Share of the Grad-CAM map inside the cell", f"{share:.0%}",
                  help="Synthetic cells come with a mask of the cell: a model that looks at the cell, not the "
                       "background, puts most of its map inside it.")

# --- SmoothGrad (slow: on a button) -------------------------------------------------------------------------
st.header("SmoothGrad")
s1, s2 = st.columns(2)
noise = s1.slider("Noise level (share of the input range)", 0.05, 0.5, 0.15, 0.05, key="explain_noise")
samples = s2.slider("Noisy samples", 5, 100, 25, 5, key="explain_samples")
sg_key = (explained.key, t, noise, samples)  # the run's stamp is in the key: a retrained run never shows a stale map
if st.button("Compute SmoothGrad", key="explain_smoothgrad"):
    bar = st.progress(0.0, text="SmoothGrad: averaging gradients over noisy copies...")
    st.session_state["explain_sg"] = (sg_key, explained.smoothgrad(
        t, noise, samples, progress=lambda d, n: bar.progress(d / n)))
    bar.empty()
saved = st.session_state.get("explain_sg")
if saved and saved[0] == sg_key:
    st.image(overlay(pixels, saved[1], alpha), caption=f"SmoothGrad for {class_name(target)} "
             f"({samples} samples, noise {noise:.2f})", width=320)
else:
    st.caption("SmoothGrad averages the input gradient over noisy copies of the image; it takes a few seconds.")

# --- why A and not B ----------------------------------------------------------------------------------------
st.header("Why A and not B?")
w1, w2 = st.columns(2)
a = w1.selectbox("A", classes, format_func=ui.class_label, key="explain_a")
b = w2.selectbox("B", classes, format_func=ui.class_label, key="explain_b")
ia, ib = classes.index(a), classes.index(b)
v1, v2, v3 = st.columns(3)
v1.image(overlay(pixels, explained.gradcam(ia), alpha), caption=f"Evidence for {a}", width="stretch")
v2.image(overlay(pixels, explained.gradcam(ib), alpha), caption=f"Evidence for {b}", width="stretch")
if ia != ib:
    v3.image(overlay(pixels, explained.gradcam(ia, versus=ib), alpha), caption=f"For {a} rather than {b}",
             width="stretch")

# --- can this map be trusted? -----------------------------------------------------------------------------
st.header("Can this map be trusted?")
if st.toggle("Sanity check: compare with a weight-randomised model", key="explain_sanity"):
    result = explained.sanity(t)
    k1, k2, k3 = st.columns(3)
    k1.image(overlay(pixels, result.trained, alpha), caption="Trained model", width="stretch")
    k2.image(overlay(pixels, result.randomized, alpha), caption="Random weights", width="stretch")
    k3.metric("Rank correlation", f"{result.correlation:.2f}",
              help="Below about 0.3 the map depends on what the model learnt; near 1 it mostly shows the image.")
if st.toggle("Faithfulness: deletion curve", key="explain_deletion"):
    curve = explained.deletion(t)
    st.metric("Area under the deletion curve", f"{curve.auc:.2f}",
              help="The target's probability as the most salient pixels are blurred away first: the lower the "
                   "area, the more the map points at what the model really uses.")
    st.line_chart(pd.DataFrame({"share of pixels removed": curve.fractions, f"P({target})": curve.scores})
                  .set_index("share of pixels removed"))
