"""Selection handlers of the Feature map and Errors pages with known ids, the display sample, the confusion
matrix as clickable squares, nearest neighbours, and cleanlab's flag on a planted mislabel."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bmteach import explore
from bmteach.classes import BY_ABBR
from bmteach.errors import UserError

CLASSES = ["MYB", "MMZ", "LYT"]   # MYB/MMZ is a tolerated pair in assets/tolerance.csv


def oof_table(rows: list[tuple[str, str, str, int, list[float]]]) -> pd.DataFrame:
    """(path, true, pred, fold, probs in CLASSES order) -> an oof table like runs.read_oof returns."""
    frame = pd.DataFrame([{"path": p, "true": t, "pred": pr, "fold": f,
                           **{f"prob_{c}": v for c, v in zip(CLASSES, probs)}} for p, t, pr, f, probs in rows])
    return frame


@pytest.fixture
def small():
    """Five images: two right, one MYB called MMZ (tolerated), one LYT called MYB (wrong), one with no oof row."""
    oof = oof_table([
        ("a.jpg", "MYB", "MYB", 0, [0.9, 0.05, 0.05]),
        ("b.jpg", "MMZ", "MMZ", 1, [0.2, 0.7, 0.1]),
        ("c.jpg", "MYB", "MMZ", 0, [0.3, 0.6, 0.1]),
        ("d.jpg", "LYT", "MYB", 1, [0.8, 0.1, 0.1]),
    ])
    rows = pd.DataFrame({"row": range(5), "path": ["a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg"],
                         "label": ["MYB", "MMZ", "MYB", "LYT", "LYT"], "fold": [0, 1, 0, 1, 0]})
    coords = np.arange(10, dtype=np.float32).reshape(5, 2)
    return explore.map_table(rows, coords, oof), oof


def test_map_table_joins_predictions_and_scores(small):
    table, _ = small
    assert table["row"].tolist() == [0, 1, 2, 3, 4]
    assert table["pred"].tolist() == ["MYB", "MMZ", "MMZ", "MYB", ""]
    assert table["correct_strict"].tolist()[:4] == [True, True, False, False]
    assert table["correct_tolerant"].tolist()[:4] == [True, True, True, False]   # MYB->MMZ tolerated
    assert table.loc[2, "confidence"] == pytest.approx(0.6) and table.loc[2, "p_label"] == pytest.approx(0.3)
    assert pd.isna(table.loc[4, "confidence"])
    assert (table["x"].to_numpy() == [0, 2, 4, 6, 8]).all()


def test_point_click_gives_the_row_of_its_customdata(small):
    table, _ = small
    event = {"selection": {"points": [{"curve_number": 0, "point_index": 0, "customdata": [3]}],
                           "box": [], "lasso": []}}
    ids = explore.selected_ids(event)
    assert ids == [3] and not explore.is_region(event)
    assert explore.point_row(table, ids[0])["path"] == "d.jpg"
    with pytest.raises(UserError):
        explore.point_row(table, 99)
    assert explore.selected_ids(None) == [] and explore.selected_ids({"selection": {"points": []}}) == []
    assert explore.selected_ids({"selection": {"points": [{"customdata": 2}, {"customdata": [2]}]}}) == [2]


def test_region_gives_rows_wrong_first_and_its_confusion(small):
    table, _ = small
    event = {"selection": {"points": [{"customdata": [i]} for i in (0, 2, 3)], "box": [{"x": [0, 1]}],
                           "lasso": []}}
    ids = explore.selected_ids(event)
    assert explore.is_region(event)
    region = explore.region_rows(table, ids)
    assert region["path"].tolist() == ["d.jpg", "c.jpg", "a.jpg"]   # wrong (most confident first), then right
    matrix = explore.region_confusion(table, ids)
    assert matrix.loc["MYB", "MYB"] == 1 and matrix.loc["MYB", "MMZ"] == 1 and matrix.loc["LYT", "MYB"] == 1
    assert explore.exam_items(table, ids).to_dict("list") == {"path": ["a.jpg", "c.jpg", "d.jpg"],
                                                             "label": ["MYB", "MYB", "LYT"]}


def test_confusion_cell_click_gives_its_images(small):
    _, oof = small
    counts, shares, classes = explore.confusion(oof, "strict", classes=CLASSES)
    assert counts.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 0]]
    np.testing.assert_allclose(shares[0], [0.5, 0.5, 0])
    fig = explore.confusion_figure(counts, shares, classes)
    trace = fig.data[0]
    assert len(trace.x) == int((counts > 0).sum())        # one square per non-empty cell
    square = {"selection": {"points": [{"customdata": list(trace.customdata[1])}]}}
    cell = explore.selected_cell(square)
    assert cell == (trace.customdata[1][0], trace.customdata[1][1])
    rows = explore.cell_rows(oof, "MYB", "MMZ", "strict")
    assert rows["path"].tolist() == ["c.jpg"]
    # tolerant: the tolerated MYB->MMZ moves onto the diagonal, sorted by confidence
    assert explore.cell_rows(oof, "MYB", "MMZ", "tolerant").empty
    assert explore.cell_rows(oof, "MYB", "MYB", "tolerant")["path"].tolist() == ["a.jpg", "c.jpg"]
    t_counts, _, _ = explore.confusion(oof, "tolerant", classes=CLASSES)
    assert t_counts[0].tolist() == [2, 0, 0]
    assert explore.selected_cell({"selection": {"points": []}}) is None


def test_most_confused_pairs(small):
    _, oof = small
    counts, _, classes = explore.confusion(oof, "strict", classes=CLASSES)
    pairs = explore.most_confused(counts, classes)
    assert set(map(tuple, pairs[["expert", "predicted"]].values)) == {("MYB", "MMZ"), ("LYT", "MYB")}
    assert pairs.loc[pairs["expert"] == "LYT", "share of expert class"].item() == 1.0


def test_map_figure_is_one_trace_with_row_ids(small):
    table, _ = small
    for by in explore.COLOUR_BY:
        fig = explore.map_figure(table, by)
        data = [t for t in fig.data if t.x is not None and len(t.x) and t.x[0] is not None]
        assert len(data) == 1 and data[0].type == "scattergl"
        assert list(data[0].customdata) == [0, 1, 2, 3, 4]
    fig = explore.map_figure(table, "expert class", selected=[1])
    marker = fig.data[0].marker
    colours = [marker.colorscale[2 * int(c)][1] for c in marker.color]  # the stepped scale: 2 stops per code
    assert colours[1] == BY_ABBR["MMZ"].colour and colours.count(explore.GREY) == 4


def test_category_codes_map_each_value_to_its_colour():
    values = pd.Series(["right", "wrong", "right", "no prediction"])
    palette = {"right": explore.RIGHT, "wrong": explore.WRONG, "no prediction": explore.GREY}
    codes, scale, cmin, cmax = explore.category_codes(values, palette)
    colour = [scale[2 * c][1] for c in codes]
    assert colour == [explore.RIGHT, explore.WRONG, explore.RIGHT, explore.GREY]
    assert (cmin, cmax) == (-0.5, len(palette) + 0.5)
    codes, scale, _, _ = explore.category_codes(values, palette, np.array([True, False, False, True]))
    assert [scale[2 * c][1] for c in codes] == [explore.RIGHT, explore.GREY, explore.GREY, explore.GREY]


def test_display_sample_is_stratified_and_keeps_errors_and_selection():
    rng = np.random.default_rng(0)
    n = 3000
    labels = np.where(np.arange(n) < 2700, "NGS", "BAS")    # a big and a small class
    table = pd.DataFrame({"row": np.arange(n), "label": labels,
                          "correct_strict": rng.random(n) > 0.02})
    keep = [5, 6, 7]
    idx = explore.display_sample(table, max_points=500, keep=keep)
    shown = table.iloc[idx]
    assert len(shown) < 1000
    assert set(keep) <= set(shown["row"])
    assert (~table["correct_strict"]).sum() == (~shown["correct_strict"]).sum()   # every error drawn
    assert (shown["label"] == "BAS").sum() >= 50                                  # the small class stays visible
    assert len(explore.display_sample(table, max_points=5000)) == n


def test_nearest_neighbours_in_feature_space():
    features = np.array([[0, 0], [1, 0], [5, 0], [0.5, 0], [10, 0]], dtype=np.float16)
    labels = ["A", "A", "B", "B", "A"]
    assert [i for i, _ in explore.nearest_neighbours(features, labels, 0, k=2)] == [3, 1]
    assert [i for i, _ in explore.nearest_neighbours(features, labels, 0, k=2, same_class=True)] == [1, 4]
    assert [i for i, _ in explore.nearest_neighbours(features, labels, 0, k=2, same_class=False)] == [3, 2]
    d = explore.feature_distances(features, 0, chunk=2)
    np.testing.assert_allclose(d, [0, 1, 5, 0.5, 10], atol=1e-3)
    np.testing.assert_allclose(explore.squared_norms(features, chunk=3), [0, 1, 25, 0.25, 100])
    assert explore.nearest_neighbours(features, labels, 0, k=9, distances=d)[0] == (3, 0.5)


def test_cleanlab_flags_a_planted_mislabel():
    rng = np.random.default_rng(0)
    rows = []
    for c, abbr in enumerate(CLASSES):
        for i in range(60):
            p = rng.dirichlet(np.ones(3)) * 0.2
            p[c] += 0.8
            rows.append((f"{abbr}_{i}.jpg", abbr, CLASSES[int(np.argmax(p))], i % 5, list(p)))
    planted = ("planted.jpg", "LYT", "MYB", 0, [0.95, 0.03, 0.02])   # labelled LYT, looks like a myelocyte
    oof = oof_table(rows + [planted])
    issues = explore.label_issues(oof)
    assert issues.iloc[0]["path"] == "planted.jpg"
    assert issues.iloc[0]["model prefers"] == "MYB" and issues.iloc[0]["p_expert"] == pytest.approx(0.02)
    assert len(issues) <= 5
    sentence = explore.evidence_sentence(issues.iloc[0])
    assert "LYT" in sentence and "MYB" in sentence and "2%" in sentence


def test_cleanlab_ignores_classes_without_images():
    oof = oof_table([(f"{i}.jpg", "MYB" if i % 2 else "MMZ", "MYB", 0, [0.6, 0.3, 0.1]) for i in range(20)])
    issues = explore.label_issues(oof)     # LYT has no image: left out of the probability matrix
    assert set(issues["expert"]) <= {"MYB", "MMZ"}
