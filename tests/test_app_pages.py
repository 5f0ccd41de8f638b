"""AppTest of the home, atlas and explain pages on a tiny synthetic data set and a tiny two-fold run.

The data set (2 synthetic cells per class) and the run (an untrained sequential CNN at 32 px, saved with
save_checkpoint) are built once per module; BMTEACH_DATA / BMTEACH_RUN point the pages at them.
"""
from __future__ import annotations

import io
from pathlib import Path
import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from helpers import make_untrained_run, run_page
from streamlit.testing.v1 import AppTest

from bmteach import settings
from bmteach.classes import ABBRS, BY_ABBR
from bmteach.data import index
from bmteach.images import load_image
from bmteach.storage import DEMO_RUN, REPO_ROOT
from bmteach.synth import generate_dataset

TIMEOUT = 60
HOME, ATLAS, EXPLAIN = (str(REPO_ROOT / p) for p in ("app.py", "pages/1_Atlas.py", "pages/3_Explain.py"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A synthetic data set of 42 images and a two-fold run trained on none of them (random weights)."""
    root = tmp_path_factory.mktemp("app")
    data = generate_dataset(root / "data", per_class=2, seed=0, workers=1)
    run = root / "run"
    manifest = make_untrained_run(data, run)
    metrics = {"classes": {"MMZ": {"strict": {"precision": 0.25, "recall": 0.5},
                                   "tolerant": {"precision": 0.75, "recall": 1.0}}}}
    (run / "metrics.json").write_text(json.dumps(metrics))
    return data, run, manifest


def frame(at: AppTest, column: str) -> pd.DataFrame:
    """The first dataframe on the page with this column (dataframes carry no key in AppTest)."""
    for df in at.dataframe:
        if column in df.value.columns:
            return df.value
    raise AssertionError(f"no dataframe with a {column!r} column")


def captions_of(at: AppTest) -> list[str]:
    return [c for img in at.image for c in img.captions]


def texts(at: AppTest) -> str:
    parts = [e.value for kind in ("markdown", "caption", "info", "error", "warning", "success", "header",
                                  "subheader", "title") for e in getattr(at, kind)]
    return "\n".join(str(p) for p in parts)


# --- home ---------------------------------------------------------------------------------------------------

def test_home_shows_the_index_counts_of_the_active_data_set(env):
    data, run, manifest = env
    at = run_page(HOME)
    table = frame(at, "active data set").set_index("class")
    expected = index(data).counts()
    assert table["active data set"].to_dict() == {a: expected.get(a, 0) for a in ABBRS}
    assert table["run's manifest"].to_dict() == manifest["label"].value_counts().reindex(list(ABBRS)).to_dict()
    assert table.loc["NGS", "full data set"] == BY_ABBR["NGS"].count == 29424
    assert at.metric[0].value == "42"
    assert any("badge[" in m.value and "synthetic" in m.value for m in at.sidebar.markdown)  # st.badge
    assert "10.7937/TCIA.AXH3-T579" in texts(at) and "CC BY 4.0" in texts(at)


def test_home_instructor_area_says_how_to_set_a_secret(env):
    at = run_page(HOME)
    assert settings.SECRET_ENV in texts(at)
    assert not [t for t in at.text_input if t.key == "setting_data"]


def test_instructor_guard_refuses_a_wrong_secret_and_accepts_the_right_one(env, monkeypatch, tmp_path):
    monkeypatch.setenv(settings.SECRET_ENV, "correct horse")
    at = run_page(HOME)
    at.text_input(key="home_instructor_secret").input("wrong").run()
    assert "not the instructor secret" in texts(at)
    assert not [t for t in at.text_input if t.key == "setting_data"]

    at.text_input(key="home_instructor_secret").input("correct horse").run()
    assert not at.exception
    # a bad folder is refused with one sentence and nothing is saved
    at.text_input(key="setting_data").input(str(tmp_path / "missing")).run()
    at.button(key="save_settings").click().run()
    assert "Data folder not found" in texts(at) and not settings.settings_path().exists()
    # a good one is saved (BMTEACH_DATA still wins, as the page says)
    data, run, _ = env
    at.text_input(key="setting_data").input(str(data)).run()
    at.button(key="save_settings").click().run()
    assert not at.exception
    assert json.loads(settings.settings_path().read_text())["data_dir"] == str(data.resolve())


# --- atlas --------------------------------------------------------------------------------------------------

def test_atlas_card_counts_and_model_vs_paper(env):
    data, _, _ = env
    at = run_page(ATLAS)
    assert at.get("plotly_chart"), "the lineage tree is drawn"
    at.selectbox(key="atlas_class").select("MMZ").run()
    assert not at.exception
    assert any("Metamyelocyte (MMZ)" in h.value for h in at.header)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["In the active data set"] == str(index(data).counts()["MMZ"])
    assert metrics["In the full data set"] == "3,055"
    pr = frame(at, "evaluation").set_index("evaluation")
    assert pr.loc["strict", "model precision"] == 0.25 and pr.loc["tolerant", "model recall"] == 1.0
    assert pr.loc["strict", "paper precision"] == 0.30 and pr.loc["tolerant", "paper precision"] == 0.68
    # the compare section defaults to myelocyte vs metamyelocyte and says how to tell them apart
    assert at.selectbox(key="compare_a").value == "MYB" and at.selectbox(key="compare_b").value == "MMZ"
    assert "indented" in texts(at)
    # gallery captions say the images are synthetic
    captions = captions_of(at)
    assert len(captions) == 1 + 2 + 2 + 2  # card example, MMZ gallery, MYB and MMZ compare galleries
    assert all("synthetic" in c for c in captions)


# --- explain ------------------------------------------------------------------------------------------------

def test_atlas_class_set_by_a_tree_click_opens_its_card_without_warnings(env):
    # a click on the tree runs the page's callback, which writes the class into session state before the
    # class picker is drawn; AppTest cannot click a chart, so set the state the callback would set
    at = AppTest.from_file(ATLAS, default_timeout=TIMEOUT)
    at.session_state["atlas_class"] = "EOS"
    at.run()
    assert not at.exception and not at.warning
    assert at.selectbox(key="atlas_class").value == "EOS"
    assert any("Eosinophil (EOS)" in h.value for h in at.header)


def _top_table(at: AppTest) -> pd.DataFrame:
    return frame(at, "probability")


def test_explain_data_set_image_uses_its_out_of_fold_model(env):
    data, run, manifest = env
    from bmteach.infer import Predictor

    at = run_page(EXPLAIN)
    abbr = at.selectbox(key="explain_class").value
    relpath = sorted(manifest[manifest["label"] == abbr]["path"])[0]
    assert at.session_state[f"explain_pick_{abbr}"] == relpath  # the first thumbnail is selected
    assert at.button(key=f"explain_thumb_{relpath}").label == "Shown"
    fold = int(manifest.set_index("path").loc[relpath, "fold"])

    predictor = Predictor.from_run(run, device="cpu")
    expected = predictor.predict_proba([load_image(data / relpath)], fold=fold)[0]
    top = _top_table(at)
    assert len(top) == 5 and top["probability"].sum() <= 1.0 + 1e-6
    for row in top.itertuples():
        assert row.probability == pytest.approx(expected[predictor.classes.index(row._1)], abs=1e-4)
    assert top["class"].iloc[0] == predictor.classes[int(np.argmax(expected))]
    assert f"fold-{fold} model, which did not train on this image" in texts(at)
    # Grad-CAM overlay, mask energy (synthetic), both shown without any button
    from bmteach import explain
    from bmteach.maps import mask_energy
    from bmteach.synth import mask_path

    cam = explain.gradcam(predictor.model(fold), predictor.preprocess([load_image(data / relpath)]),
                          int(np.argmax(expected)))
    mask = np.asarray(Image.open(mask_path(data, relpath)))
    share = next(m for m in at.metric if m.label.startswith("Share of the Grad-CAM")).value
    assert share == f"{mask_energy(cam, mask):.0%}"


def test_explain_smoothgrad_and_checks_on_request(env):
    at = run_page(EXPLAIN)
    at.slider(key="explain_samples").set_value(5).run()
    n_images = len(captions_of(at))
    at.button(key="explain_smoothgrad").click().run()
    assert not at.exception
    assert len(captions_of(at)) == n_images + 1
    at.toggle(key="explain_sanity").set_value(True).run()
    at.toggle(key="explain_deletion").set_value(True).run()
    assert not at.exception
    labels = {m.label: m.value for m in at.metric}
    from bmteach import explain
    from bmteach.infer import Predictor

    data, run, manifest = env
    predictor = Predictor.from_run(run, device="cpu")
    abbr = at.selectbox(key="explain_class").value
    relpath = at.session_state[f"explain_pick_{abbr}"]
    fold = int(manifest.set_index("path").loc[relpath, "fold"])
    x = predictor.preprocess([load_image(data / relpath)])
    target = predictor.classes.index(at.selectbox(key="explain_target").value)
    expected = explain.sanity_check(predictor.model(fold), x, target, method="gradcam").correlation
    assert labels["Rank correlation"] == f"{expected:.2f}"
    assert explain.sanity_verdict(expected) in texts(at)  # the verdict in words, not only a tooltip
    assert float(labels["Deletion area: map ÷ random order"]) >= 0.0


def test_moving_the_opacity_slider_does_no_torch_work(env, monkeypatch):
    from bmteach import explain
    from bmteach.infer import Predictor

    calls = {"predict": 0, "gradcam": 0}
    real_predict, real_gradcam = Predictor.predict_proba, explain.gradcam

    def counted_predict(self, *a, **k):
        calls["predict"] += 1
        return real_predict(self, *a, **k)

    def counted_gradcam(*a, **k):
        calls["gradcam"] += 1
        return real_gradcam(*a, **k)

    monkeypatch.setattr(Predictor, "predict_proba", counted_predict)
    monkeypatch.setattr(explain, "gradcam", counted_gradcam)
    at = run_page(EXPLAIN)
    at.selectbox(key="explain_class").select("PLM").run()  # an image no earlier test has explained
    assert calls["predict"] >= 1 and calls["gradcam"] >= 1
    before = dict(calls)
    at.slider(key="explain_alpha").set_value(0.8).run()
    assert not at.exception
    assert calls == before


def test_home_on_the_real_sample_is_not_called_synthetic(real_sample, env, monkeypatch):
    monkeypatch.setenv(settings.DATA_ENV, str(real_sample))
    at = run_page(HOME)
    table = frame(at, "active data set").set_index("class")
    assert table["active data set"].sum() == 420 and (table["active data set"] > 0).sum() == 7
    assert not any("badge[" in m.value for m in at.sidebar.markdown)
    at = run_page(ATLAS)
    assert at.image and not any("synthetic" in c for c in captions_of(at))
    # the sample has no myelocytes: Explain offers only the 7 classes present and opens on one of them
    at = run_page(EXPLAIN)
    assert at.selectbox(key="explain_class").options == [
        f"{a} · {BY_ABBR[a].name} ({n})" for a, n in table["active data set"].items() if n > 0]
    assert len(frame(at, "probability")) == 5 and not at.error


def test_an_image_whose_fold_model_is_not_trained_yet_gets_no_prediction(env, tmp_path, monkeypatch):
    import shutil

    data, run, manifest = env
    partial = tmp_path / "partial"
    shutil.copytree(run, partial)
    shutil.rmtree(partial / "fold1")  # fold 1 still training: fold 0's model learnt from fold 1's images
    monkeypatch.setenv(settings.RUN_ENV, str(partial))
    at = run_page(EXPLAIN)
    by_fold = manifest.set_index("path")["fold"]
    abbr = "MYB"
    at.selectbox(key="explain_class").select(abbr).run()
    seen = set()
    for relpath in sorted(manifest[manifest["label"] == abbr]["path"]):  # one image in each fold
        at.button(key=f"explain_thumb_{relpath}").click().run()
        assert not at.exception
        if by_fold[relpath] == 1:
            assert "whose model is not trained yet" in texts(at) and not at.dataframe
        else:
            assert "fold-0 model, which did not train on this image" in texts(at)
        seen.add(int(by_fold[relpath]))
    assert seen == {0, 1}


def _png(mode: str, size=(40, 40)) -> bytes:
    buf = io.BytesIO()
    if mode == "I;16":
        Image.fromarray((np.arange(size[0] * size[1]).reshape(size) * 37 % 65535).astype(np.uint16)).save(buf, "PNG")
    else:
        Image.new(mode, size, (200, 80, 160, 128) if mode == "RGBA" else 120).save(buf, "PNG")
    return buf.getvalue()


def _truncated_jpeg() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()[: len(buf.getvalue()) // 2]


def _upload(at: AppTest, name: str, content: bytes, mime: str) -> AppTest:
    at.radio(key="explain_source").set_value("Upload your own").run()
    at.file_uploader(key="explain_upload").set_value((name, content, mime)).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


@pytest.mark.parametrize("name, content, mime", [
    ("empty.jpg", b"", "image/jpeg"),
    ("notes.png", b"this is not an image, just text\n", "text/plain"),
    ("cut.jpg", _truncated_jpeg(), "image/jpeg"),
    ("page.jpg", b"<html><body>hello</body></html>", "text/html"),
])
def test_broken_uploads_give_one_sentence_and_no_exception(env, name, content, mime):
    at = _upload(run_page(EXPLAIN), name, content, mime)
    assert len(at.error) == 1
    message = at.error[0].value
    assert name in message and "\n" not in message and "Traceback" not in message
    assert not at.image


@pytest.mark.parametrize("mode", ["RGBA", "I;16", "L"])
def test_odd_but_valid_uploads_are_explained_with_the_fold_average(env, mode):
    _, run, _ = env
    from bmteach.infer import Predictor

    content = _png(mode)
    at = _upload(run_page(EXPLAIN), f"cell_{mode}.png", content, "image/png")
    assert not at.error
    predictor = Predictor.from_run(run, device="cpu")
    expected = predictor.predict_proba([load_image(io.BytesIO(content))], fold=None)[0]
    top = _top_table(at)
    assert top["probability"].sum() <= 1.0 + 1e-6
    assert top["probability"].iloc[0] == pytest.approx(expected.max(), abs=1e-4)
    assert "average of the 2 fold models (an upload belongs to no fold)" in texts(at)


def test_first_start_generates_the_built_in_synthetic_data_set(fresh_home, monkeypatch):
    """No BMTEACH_DATA and no setting: the home page draws the default data set (here 1 cell per class,
    in the child process the app starts for it)."""
    from bmteach import launch, synth

    for name in (settings.DATA_ENV, settings.RUN_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(launch, "GENERATE_DEFAULT", "import bmteach.synth.dataset as s\ns.DEFAULT_PER_CLASS = 1\n"
                        + launch.GENERATE_DEFAULT)
    at = run_page(HOME)
    assert synth.is_synthetic(fresh_home / "data" / "synthetic")
    assert frame(at, "active data set")["active data set"].tolist() == [1] * len(ABBRS)
    assert any("badge[" in m.value and "synthetic" in m.value for m in at.sidebar.markdown)
    if not settings.trained_folds(DEMO_RUN):
        assert "No demo model is installed yet" in texts(at) + "".join(w.value for w in at.sidebar.warning)


def test_a_failing_generation_is_one_sentence(fresh_home, monkeypatch):
    from bmteach import launch

    for name in (settings.DATA_ENV, settings.RUN_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(launch, "GENERATE_DEFAULT", "print(3, 10, flush=True)\nraise SystemExit('disk full')\n")
    at = run_page(HOME)
    assert [e.value for e in at.error][:1] == [
        "The built-in synthetic data set could not be generated (disk full)."]


def test_a_large_photo_upload_is_shrunk_once_and_explained(env):
    buf = io.BytesIO()
    Image.new("RGB", (3000, 2000), (180, 120, 200)).save(buf, "JPEG")
    at = _upload(run_page(EXPLAIN), "photo.jpg", buf.getvalue(), "image/jpeg")
    assert not at.error
    from bmteach.infer import Predictor

    _, run, _ = env
    shrunk = Image.open(buf).convert("RGB")
    shrunk.thumbnail((1024, 1024), Image.Resampling.LANCZOS)   # ui.MAX_SIDE: shrunk once, as the page does
    expected = Predictor.from_run(run, device="cpu").predict_proba([shrunk], fold=None)[0]
    top = _top_table(at)
    assert len(top) == 5
    np.testing.assert_allclose(top["probability"].to_numpy(), np.round(np.sort(expected)[::-1][:5], 4), atol=1e-4)


@pytest.mark.parametrize("page", [HOME, ATLAS, EXPLAIN])
def test_a_data_folder_without_images_is_one_sentence_on_every_page(env, page, tmp_path, monkeypatch):
    (tmp_path / "empty" / "NGS").mkdir(parents=True)
    (tmp_path / "empty" / "NGS" / "notes.txt").write_text("no images here")
    monkeypatch.setenv(settings.DATA_ENV, str(tmp_path / "empty"))
    at = run_page(page)
    assert len(at.error) == 1 and "No usable images" in at.error[0].value


# --- the shipped defaults -----------------------------------------------------------------------------------

@pytest.mark.slow
def test_pages_on_the_real_defaults(default_data, monkeypatch):
    """Built-in synthetic data (generated on first use into the session's BMTEACH_HOME, never the checkout's
    own .bmteach/) and the shipped models/demo."""
    assert settings.trained_folds(DEMO_RUN) == [0, 1, 2, 3, 4]
    for name in (settings.DATA_ENV, settings.RUN_ENV):
        monkeypatch.delenv(name, raising=False)
    for page in (HOME, ATLAS, EXPLAIN):
        at = run_page(page)
        assert not at.error, [e.value for e in at.error]


def _gradcam_caption(at: AppTest) -> str:
    return next(c for c in captions_of(at) if c.startswith("Grad-CAM for "))


def test_a_new_image_starts_on_its_own_top_class_and_the_map_matches_the_dropdown(env):
    """Issue 13.1: the map under 'Explain the class' is always for the class the dropdown shows, at once."""
    at = run_page(EXPLAIN)
    classes = list(ABBRS)
    top = _top_table(at)["class"].iloc[0]
    assert at.selectbox(key="explain_target").value == top
    assert _gradcam_caption(at) == f"Grad-CAM for {BY_ABBR[top].name}"
    other = next(c for c in classes if c != top)
    at.selectbox(key="explain_target").select(other).run()
    assert _gradcam_caption(at) == f"Grad-CAM for {BY_ABBR[other].name}"
    at.selectbox(key="explain_class").select("PLM").run()           # another image
    new_top = _top_table(at)["class"].iloc[0]
    assert at.selectbox(key="explain_target").value == new_top        # not the class carried over
    assert _gradcam_caption(at) == f"Grad-CAM for {BY_ABBR[new_top].name}"
    table = _top_table(at)["class"].tolist()
    assert (at.selectbox(key="explain_a").value, at.selectbox(key="explain_b").value) == (table[0], table[1])
    assert [c for c in captions_of(at) if c.startswith("Evidence for ")] == [
        f"Evidence for {table[0]}", f"Evidence for {table[1]}"]


def test_a_pinned_class_carries_over_and_the_page_says_so(env):
    at = run_page(EXPLAIN)
    at.selectbox(key="explain_target").select("EOS").run()
    at.checkbox(key="explain_pin").check().run()
    at.selectbox(key="explain_class").select("PLM").run()
    assert at.selectbox(key="explain_target").value == "EOS"
    assert _gradcam_caption(at) == "Grad-CAM for Eosinophil"
    assert "Pinned: every image is explained for Eosinophil" in texts(at)


def test_folder_stamp_changes_when_an_image_is_added_to_a_class_range_folder(tmp_path):
    from bmteach import ui

    folder = tmp_path / "data" / "BLA" / "0001-1000"
    folder.mkdir(parents=True)
    (folder / "BLA_00001.jpg").write_bytes(b"x")
    before = ui.folder_stamp(tmp_path / "data")
    import os
    import time
    later = time.time() + 5
    (folder / "BLA_00002.jpg").write_bytes(b"x")
    os.utime(folder, (later, later))  # file systems with coarse mtimes: make the change visible
    assert ui.folder_stamp(tmp_path / "data") != before
    assert ui.folder_stamp(tmp_path / "missing") == ()


# --- issue 13: nothing misleads, choosing images, polish ---------------------------------------------------

def _run_with_config(run, tmp_path, data_root) -> "Path":
    """A copy of the tiny run whose config.json records `data_root` (the tiny run has no config)."""
    import shutil

    from bmteach import runs

    copy = tmp_path / "run_with_config"
    shutil.copytree(run, copy)
    (copy / runs.CONFIG).write_text(json.dumps({"data_root": str(data_root), "num_folds": 2}))
    return copy


def test_atlas_says_what_each_column_was_measured_on(env, tmp_path, monkeypatch):
    """Issue 13.2a: the paper's columns are real cells, the model's its own (here 42 synthetic) cells."""
    data, run, _ = env
    monkeypatch.setenv(settings.RUN_ENV, str(_run_with_config(run, tmp_path, data)))
    at = run_page(ATLAS)
    at.selectbox(key="atlas_class").select("MMZ").run()
    pr = frame(at, "evaluation").set_index("evaluation")
    assert pr.loc["strict", "model precision"] == 0.25
    words = texts(at)
    assert "171,374 real cells" in words and "2-fold cross-validation on its own data: 42 synthetic cells" in words
    assert "do not compare with the paper" in words


def test_atlas_hides_a_runs_scores_on_data_it_was_not_evaluated_on(env, tmp_path, monkeypatch):
    """The demo run records another machine's built-in synthetic folder; a real (or any other) active data set
    must not show its scores beside the paper's."""
    data, run, _ = env
    monkeypatch.setenv(settings.RUN_ENV, str(_run_with_config(run, tmp_path, "/another/machine/.bmteach/data/"
                                                                               "synthetic")))
    at = run_page(ATLAS)
    at.selectbox(key="atlas_class").select("MMZ").run()
    pr = frame(at, "evaluation").set_index("evaluation")
    assert pr["model precision"].isna().all() and pr.loc["strict", "paper precision"] == 0.30
    assert "evaluated on other data" in texts(at)


def test_atlas_compare_offers_only_classes_of_the_active_data_set(env, tmp_path, monkeypatch):
    few = generate_dataset(tmp_path / "few", per_class=1, seed=0, classes=["BLA", "MMZ", "NGS"], workers=1)
    monkeypatch.setenv(settings.DATA_ENV, str(few))
    at = run_page(ATLAS)
    assert at.selectbox(key="compare_a").options == [f"{a} · {BY_ABBR[a].name} (1)" for a in ("BLA", "MMZ", "NGS")]
    assert (at.selectbox(key="compare_a").value, at.selectbox(key="compare_b").value) == ("MMZ", "BLA")
    at.selectbox(key="atlas_class").select("EOS").run()  # the card of a class this data set lacks says so
    assert not at.exception and "has no eosinophil images" in texts(at)
    assert "EOS · Eosinophil (none in this data set)" in at.selectbox(key="atlas_class").options


def dataframe_heights(monkeypatch) -> dict:
    """AppTest keeps no height: record what a page asks st.dataframe for, by key: (rows, height)."""
    import streamlit

    heights = {}
    real = streamlit.dataframe

    def recording(data=None, *args, **kwargs):
        heights[kwargs.get("key")] = (len(data), kwargs.get("height"))
        return real(data, *args, **kwargs)

    monkeypatch.setattr(streamlit, "dataframe", recording)
    return heights


def test_atlas_all_classes_table_shows_all_21_rows(env, monkeypatch):
    """35 px a row plus the header: every row shows without scrolling."""
    heights = dataframe_heights(monkeypatch)
    run_page(ATLAS)
    rows, height = heights["atlas_pr_all"]
    assert rows == len(ABBRS) and height >= 35 * (rows + 1)


def test_atlas_self_study_hides_the_label_until_revealed(env):
    at = run_page(ATLAS)
    at.toggle(key="atlas_hide_label").set_value(True).run()
    assert not at.exception
    assert captions_of(at)[0].startswith("Which class is this?")
    assert "synthetic" in captions_of(at)[0]  # still never passes for a real cell
    answer = at.session_state["atlas_study"][1]
    assert "Show the label" in [e.label for e in at.expander]
    assert BY_ABBR[answer].name in next(e for e in at.expander if e.label == "Show the label").markdown[0].value
    at.button(key="atlas_study_next").click().run()
    assert not at.exception



def test_explain_deletion_is_against_a_random_order_with_labelled_axes_and_maps_have_a_colour_bar(env):
    """Issue 13.2b: no raw area that reads 0.00 = 'most faithful'; the chart's axes say what they show."""
    at = run_page(EXPLAIN)
    assert any("low → high evidence" in c for c in captions_of(at))
    at.toggle(key="explain_deletion").set_value(True).run()
    assert not at.exception
    words = texts(at)
    assert "random order" in words and ("the map points" in words or "says little about the map" in words)
    assert "Area under the deletion curve" not in {m.label for m in at.metric}
    spec = json.loads(at.get("plotly_chart")[-1].proto.spec)
    assert spec["layout"]["xaxis"]["title"]["text"] == "share of pixels removed"
    assert spec["layout"]["yaxis"]["title"]["text"].startswith("probability of ")
    assert {d["name"] for d in spec["data"]} == {"the map's order (most salient first)", "a random order"}


def test_a_tiny_upload_is_explained_with_a_warning(env):
    """Issue 13.2c: a 10x10 image gets an answer, and a sentence that it is too small to judge."""
    at = _upload(run_page(EXPLAIN), "tiny.png", _png("RGB", (10, 10)), "image/png")
    assert len(at.warning) == 1 and "too small to judge" in at.warning[0].value and "10x10" in at.warning[0].value
    at = _upload(run_page(EXPLAIN), "fine.png", _png("RGB", (128, 128)), "image/png")
    assert not at.warning


def test_explain_picks_images_from_thumbnails_and_at_random(env):
    """Issue 13.6: a grid of thumbnails with a select button each (not a file-name dropdown), and a random pick."""
    data, _, manifest = env
    at = run_page(EXPLAIN)
    at.selectbox(key="explain_class").select("EOS").run()
    paths = sorted(manifest[manifest["label"] == "EOS"]["path"])
    assert not [s for s in at.selectbox if s.key and s.key.startswith("explain_pick_")]
    assert [b.key for b in at.button if b.key.startswith("explain_thumb_")] == [f"explain_thumb_{p}" for p in paths]
    at.button(key=f"explain_thumb_{paths[1]}").click().run()
    assert at.session_state["explain_pick_EOS"] == paths[1]
    assert at.button(key=f"explain_thumb_{paths[1]}").label == "Shown"
    assert any(c.startswith(paths[1].rsplit("/", 1)[-1]) for c in captions_of(at))
    for _ in range(3):
        at.button(key="explain_random").click().run()
        assert not at.exception and at.session_state["explain_pick_EOS"] in paths


def test_explain_filter_shows_only_images_the_model_gets_wrong(env, tmp_path, monkeypatch):
    import shutil

    from bmteach import runs

    data, run, manifest = env
    copy = tmp_path / "run_with_oof"
    shutil.copytree(run, copy)
    oof = manifest[["path", "label", "fold"]].rename(columns={"label": "true"})
    oof["pred"] = oof["true"]
    eos = sorted(oof.loc[oof["true"] == "EOS", "path"])
    oof.loc[oof["path"] == eos[1], "pred"] = "BAS"  # the model gets one eosinophil wrong
    oof.to_csv(copy / runs.OOF, index=False)
    monkeypatch.setenv(settings.RUN_ENV, str(copy))
    at = run_page(EXPLAIN)
    at.selectbox(key="explain_class").select("EOS").run()
    at.checkbox(key="explain_wrong").check().run()
    assert not at.exception
    assert [b.key for b in at.button if b.key.startswith("explain_thumb_")] == [f"explain_thumb_{eos[1]}"]
    assert at.session_state["explain_pick_EOS"] == eos[1]
    assert "gets 1 of the 2 eosinophil images wrong" in texts(at)
    at.selectbox(key="explain_class").select("BLA").run()  # a class it gets all right
    assert "No Blast images to show that the model gets wrong." in texts(at)
    # the same predictions made on another data set (same file names, other cells) are not offered
    (copy / runs.CONFIG).write_text(json.dumps({"data_root": "/elsewhere/data/synthetic", "num_folds": 2}))
    at = run_page(EXPLAIN)
    assert at.checkbox(key="explain_wrong").disabled



def test_home_class_table_shows_all_21_rows(env, monkeypatch):
    heights = dataframe_heights(monkeypatch)
    run_page(HOME)
    rows, height = heights["class_counts"]
    assert rows == len(ABBRS) and height >= 35 * (rows + 1)



def test_a_small_model_answers_on_one_cpu_thread(monkeypatch):
    """Targets of issue 13: on a shared 2-core CPU a second intra-op thread made a new image 2-4x slower."""
    from types import SimpleNamespace

    from bmteach import ui

    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    ui.fit_threads(SimpleNamespace(device="cpu", image_size=128))
    ui.fit_threads(SimpleNamespace(device="cpu", image_size=250))      # ResNeXt-50 keeps every thread
    ui.fit_threads(SimpleNamespace(device="cuda:0", image_size=128))   # a GPU does the work
    assert calls == [1]



def test_atlas_scores_have_one_number_format_per_column(env, monkeypatch):
    """Issue 13.5: 0.64 beside 0.9714 in one column read as different precisions; every score column: %.2f."""
    import streamlit

    configs = {}
    real = streamlit.dataframe

    def recording(data=None, *args, **kwargs):
        configs[kwargs.get("key")] = (list(data.columns), kwargs.get("column_config") or {})
        return real(data, *args, **kwargs)

    monkeypatch.setattr(streamlit, "dataframe", recording)
    run_page(ATLAS)
    for key in ("atlas_pr", "atlas_pr_all"):
        columns, config = configs[key]
        scores = [c for c in columns if c.startswith(("model", "paper"))]
        assert scores and all(config[c]["type_config"]["format"] == "%.2f" for c in scores), key
