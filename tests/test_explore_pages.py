"""AppTest of the Feature map and Errors pages on the shipped demo run and the built-in synthetic set.

The first test generates the default data set (~15 s) and computes the demo run's map on first use (features
~20 s, UMAP ~15 s with numba's first compile) inside this session's temporary BMTEACH_HOME; the others reuse it.
Chart clicks cannot be made headless: a selection is the plain dict st.plotly_chart would store under its key.
"""
from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from bmteach import explore, runs, settings
from bmteach.classes import class_name
from bmteach.embed import cached_run_embedding
from bmteach.storage import DEMO_RUN, REPO_ROOT, default_data_dir
from bmteach.synth import ensure_default_dataset

pytestmark = pytest.mark.slow
TIMEOUT = 500  # the first run computes the map; 2 shared cores can be very busy
FEATURE_MAP, ERRORS = (str(REPO_ROOT / "pages" / p) for p in ("4_Feature_map.py", "5_Errors.py"))


@pytest.fixture(autouse=True)
def demo_env(monkeypatch):
    for name in (settings.DATA_ENV, settings.RUN_ENV, settings.SECRET_ENV):
        monkeypatch.delenv(name, raising=False)


def run_page(path: str, state: dict | None = None, at: AppTest | None = None) -> AppTest:
    at = at or AppTest.from_file(path, default_timeout=TIMEOUT)
    for key, value in (state or {}).items():
        at.session_state[key] = value
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def image_captions(at: AppTest) -> list[str]:
    return [str(im.proto.imgs[0].caption) for im in at.get("image") if im.proto.imgs]


@pytest.fixture(scope="module")
def demo_map():
    """Open the page once (computes the map on first use), then read back what it drew from. The built-in data
    set is generated first: the pages generate it in a background thread and show its progress instead."""
    ensure_default_dataset()
    at = AppTest.from_file(FEATURE_MAP, default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    emb = cached_run_embedding(DEMO_RUN, default_data_dir())
    assert emb is not None and len(emb.rows) == 2100
    return at, explore.map_table(emb.rows, emb.coords, runs.read_oof(DEMO_RUN))


def test_feature_map_page_draws_the_whole_demo_run(demo_map):
    at, _table = demo_map
    assert at.selectbox(key="fm_colour").options == list(explore.COLOUR_BY)
    assert at.get("plotly_chart")
    assert any("Showing 2,100 of 2,100 images" in c.value for c in at.caption)
    assert any("Click a point" in i.value for i in at.info)
    for by in explore.COLOUR_BY:   # every colouring renders
        at.selectbox(key="fm_colour").set_value(by).run()
        assert not at.exception, (by, [e.value for e in at.exception])


def test_clicking_a_point_opens_its_card(demo_map):
    _, table = demo_map
    wrong = table[table["correct_strict"] == False].iloc[0]
    click = {"selection": {"points": [{"customdata": [int(wrong["row"])]}], "box": [], "lasso": []}}
    at = run_page(FEATURE_MAP, {"fm_chart": click})
    assert [h.value for h in at.header] == [f"{class_name(wrong['label'])} ({wrong['label']})"]
    captions = image_captions(at)
    assert captions[0].startswith(wrong["path"].rsplit("/", 1)[-1])
    assert any(c.startswith(f"Grad-CAM for the prediction {wrong['pred']}") for c in captions)
    assert len(captions) == 2 + 5 + 5                              # cell, Grad-CAM, two neighbour strips
    top3 = at.dataframe[0].value   # the only table of a card
    assert len(top3) == 3 and top3.iloc[0]["class"] == wrong["pred"]


def test_a_region_shows_its_gallery_and_confusion(demo_map):
    _, table = demo_map
    ids = table.sort_values("x")["row"].head(30).tolist()
    lasso = {"selection": {"points": [{"customdata": [i]} for i in ids], "box": [],
                           "lasso": [{"x": [0, 1, 1], "y": [0, 0, 1]}]}}
    at = run_page(FEATURE_MAP, {"fm_chart": lasso})
    assert [h.value for h in at.header] == ["30 cells selected"]
    expected = explore.region_rows(table, ids)
    shown = [c.split(" · ")[0] for c in image_captions(at)]
    want = [f"{r.label} → {r.pred}" for r in expected.head(24).itertuples()]
    assert shown == [want[i] for c in range(6) for i in range(c, len(want), 6)]  # 6 columns, read column-wise
    matrix = at.dataframe[0].value  # the only table of a region
    assert int(matrix.to_numpy().sum()) == 30


def test_errors_page_and_a_confusion_cell(demo_map):
    at = run_page(ERRORS)
    assert at.radio(key="err_mode").options == ["strict", "tolerant"]
    assert at.get("plotly_chart")
    labels = [m.label for m in at.metric]
    assert "Accuracy (strict)" in labels and "Images flagged" in labels
    table = at.dataframe[1].value   # after the most-confused pairs
    assert "paper strict recall" in table.columns and len(table) == 21

    oof = runs.read_oof(DEMO_RUN)
    pairs = explore.most_confused(explore.confusion(oof)[0], explore.oof_classes(oof), top=1)
    true, pred, n = pairs.iloc[0][["expert", "predicted", "images"]]
    at = run_page(ERRORS, {"err_matrix": {"selection": {"points": [{"customdata": [true, pred, int(n)]}]}}})
    assert f"Expert {true} → model {pred}: {n:,} image{'' if n == 1 else 's'}" in [h.value for h in at.header]
    rows = explore.cell_rows(oof, true, pred)
    captions = image_captions(at)
    first_cell = [c for c in captions if not c.startswith("Grad-CAM")][:6]
    assert [c.split(" · ")[0] for c in first_cell] == [p.rsplit("/", 1)[-1] for p in rows["path"].head(6)]
    assert f"Grad-CAM: predicted class {pred}" in captions and f"Grad-CAM: expert class {true}" in captions

    at.radio(key="err_mode").set_value("tolerant").run()
    assert not at.exception, [e.value for e in at.exception]
    assert "Accuracy (tolerant)" in [m.label for m in at.metric]
