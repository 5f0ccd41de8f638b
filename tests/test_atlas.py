"""Atlas helpers: teaching text, lineage tree, selection handling, paging, counts, model vs paper."""
from __future__ import annotations

import math

import pytest

from bmteach import atlas
from bmteach.classes import ABBRS, BY_ABBR


def test_teaching_text_covers_every_class_and_names_real_neighbours():
    teaching = atlas.load_teaching()
    assert list(teaching) == list(ABBRS)
    for abbr, t in teaching.items():
        assert t.summary and t.look_for, abbr
        assert set(t.tell_apart) <= set(ABBRS) - {abbr}, abbr
    # the pairs students confuse most are explained in both directions
    assert "MMZ" in teaching["MYB"].tell_apart and "MYB" in teaching["MMZ"].tell_apart
    assert "NGS" in teaching["NGB"].tell_apart and "NGB" in teaching["NGS"].tell_apart


def test_teaching_text_missing_class_is_a_clear_error(tmp_path):
    path = tmp_path / "t.json"
    path.write_text('{"BLA": {"summary": "x"}}')
    with pytest.raises(ValueError, match="PMO"):
        atlas.load_teaching(path)


def test_tree_places_every_class_and_edges_follow_the_granulocytic_chain():
    nodes = atlas.tree_nodes()
    assert list(nodes["abbr"]) == list(ABBRS)
    assert len({(x, y) for x, y in atlas.TREE_POSITIONS.values()}) == len(atlas.TREE_POSITIONS)  # no overlap
    edges = set(atlas.TREE_EDGES)
    chain = ["BLA", "PMO", "MYB", "MMZ", "NGB", "NGS"]
    assert all((a, b) in edges for a, b in zip(chain, chain[1:]))
    # maturity goes down the tree along every edge
    for a, b in atlas.TREE_EDGES + atlas.PATHOLOGICAL_EDGES:
        assert atlas.TREE_POSITIONS[a][1] < atlas.TREE_POSITIONS[b][1], (a, b)


def test_figure_class_trace_carries_abbreviations_for_selection():
    fig = atlas.lineage_figure(selected="MYB")
    trace = next(t for t in fig.data if t.name == atlas.NODE_TRACE)
    assert list(trace.customdata) == list(ABBRS)
    sizes = list(trace.marker.size)
    assert sizes[ABBRS.index("MYB")] > sizes[ABBRS.index("BLA")]


@pytest.mark.parametrize("event, expected", [
    (None, None),
    ({}, None),
    ({"selection": {"points": []}}, None),
    ({"selection": {"points": [{"customdata": "MYB", "point_index": 2}]}}, "MYB"),
    ({"selection": {"points": [{"customdata": ["MMZ"]}]}}, "MMZ"),
    # a click on an edge or the stem cell has no class: skip it, take the next class point
    ({"selection": {"points": [{"curve_number": 0, "x": 1}, {"customdata": ["EBO"]}]}}, "EBO"),
    ({"selection": {"points": [{"customdata": ["XYZ"]}]}}, None),
])
def test_selected_class_from_plotly_event(event, expected):
    assert atlas.selected_class(event) == expected


def test_class_counts_in_canonical_order_with_zeros():
    counts = atlas.class_counts([("a.jpg", "NGS"), ("b.jpg", "NGS"), ("c.jpg", "BLA")])
    assert list(counts) == list(ABBRS)
    assert counts["NGS"] == 2 and counts["BLA"] == 1 and counts["EOS"] == 0
    table = atlas.counts_table(counts, {"NGS": 1})
    row = table.set_index("class").loc["NGS"]
    assert (row["active data set"], row["run's manifest"], row["full data set"]) == (2, 1, 29424)


@pytest.mark.parametrize("page, expected_items, expected_page", [
    (1, [0, 1, 2, 3], 1), (3, [8, 9], 3), (99, [8, 9], 3), (0, [0, 1, 2, 3], 1),
])
def test_page_of_clamps_and_slices(page, expected_items, expected_page):
    p = atlas.page_of(list(range(10)), page, per_page=4)
    assert p.items == expected_items and p.page == expected_page and p.n_pages == 3
    assert p.start == (expected_page - 1) * 4


def test_page_of_empty_list_is_one_empty_page():
    p = atlas.page_of([], 5, per_page=4)
    assert (p.items, p.page, p.n_pages) == ([], 1, 1)


def test_paper_table_has_table1_numbers():
    paper = atlas.paper_table()
    assert sorted(paper.index) == sorted(ABBRS)
    assert paper.loc["MMZ", "tolerant_precision"] == 0.68 and paper.loc["MMZ", "strict_recall"] == 0.64
    assert paper.loc["MON", "strict_precision"] == paper.loc["MON", "tolerant_precision"] == 0.57
    # tolerance never lowers a number in Table 1
    assert (paper["tolerant_recall"] >= paper["strict_recall"]).all()


def test_model_vs_paper_puts_run_numbers_beside_the_paper():
    metrics = {"classes": {"MYB": {"strict": {"precision": 0.5, "recall": 0.25},
                                   "tolerant": {"precision": 0.75, "recall": 1.0}}}}
    row = atlas.class_row(atlas.model_vs_paper(metrics), "MYB")
    assert row["model strict precision"] == 0.5 and row["model tolerant recall"] == 1.0
    assert row["paper strict precision"] == 0.52 and row["paper tolerant recall"] == 0.91
    other = atlas.class_row(atlas.model_vs_paper(metrics), "EOS")
    assert math.isnan(other["model strict precision"]) and other["paper strict recall"] == 0.91
    assert math.isnan(atlas.class_row(atlas.model_vs_paper(None), "BLA")["model tolerant precision"])


def test_precision_recall_rows_for_one_class():
    metrics = {"classes": {"NGB": {"strict": {"precision": 0.4, "recall": 0.6, "precision_sd": 0.1},
                                   "tolerant": {"precision": 0.9, "recall": 0.8}}}}
    rows = atlas.precision_recall_rows(atlas.class_row(atlas.model_vs_paper(metrics), "NGB")).set_index("evaluation")
    assert rows.loc["strict", "model precision"] == 0.4 and rows.loc["tolerant", "model recall"] == 0.8
    assert rows.loc["strict", "paper precision"] == 0.54 and rows.loc["tolerant", "paper recall"] == 0.91
    assert rows.loc["strict", "model precision sd"] == 0.1 and math.isnan(rows.loc["tolerant", "model recall sd"])


def test_a_click_on_the_tree_fades_no_marker():
    """Issue 13.5: plotly's default selection style fades unselected points to 10%."""
    fig = atlas.lineage_figure("MON")
    marked = [t for t in fig.data if "markers" in (t.mode or "")]
    assert len(marked) == 2  # the stem cell and the classes
    for trace in marked:
        assert trace.selected.marker.opacity == 1.0 and trace.unselected.marker.opacity == 1.0


def test_tree_and_cards_use_one_lineage_wording():
    """The tree's column labels are the lineage words of the classes in that column (no 'myelopoiesis' on a
    card under a 'granulopoiesis' column)."""
    fig = atlas.lineage_figure()
    labels = {a.text.replace("-<br>", "") for a in fig.layout.annotations}
    assert labels == {c.lineage for c in BY_ABBR.values()}
    for x, abbr in atlas.TREE_COLUMN_LABELS:
        column = [a for a, (ax, _) in atlas.TREE_POSITIONS.items() if a in BY_ABBR and abs(ax - x) <= 0.6]
        assert {BY_ABBR[a].lineage for a in column} == {BY_ABBR[abbr].lineage}, (x, column)


@pytest.mark.parametrize("root, builtin", [
    ("/elsewhere/main/.bmteach/data/synthetic", True), ("default", True), ("data/synthetic", True),
    ("/data/BM_cytomorphology_data", False), ("", False), (None, False),
])
def test_builtin_synthetic_data_root(root, builtin):
    assert atlas.is_builtin_synthetic(root) is builtin


def test_run_evaluation_says_what_and_whether_it_is_the_active_data(tmp_path):
    counts = {a: 100 for a in ABBRS}
    demo = {"data_root": "/other/machine/.bmteach/data/synthetic", "num_folds": 5}
    ev = atlas.run_evaluation(demo, counts, tmp_path / "home" / "data" / "synthetic", active_is_default=True)
    assert ev.builtin and ev.synthetic and ev.same_as_active and ev.n_images == 2100
    text = atlas.model_measured_on(ev)
    assert "5-fold cross-validation" in text and "2,100 synthetic cells of the built-in set" in text
    assert "do not compare with the paper" in text
    # the same run while a real data set is active: not its data
    real = tmp_path / "real"
    real.mkdir()
    assert atlas.run_evaluation(demo, counts, real, active_is_default=False).same_as_active is False
    # a run trained on that real folder: same data, real cells, no synthetic caveat
    ev = atlas.run_evaluation({"data_root": str(real), "num_folds": 5}, counts, real, active_is_default=False)
    assert ev.same_as_active and ev.synthetic is False and not ev.builtin
    assert f"2,100 real cells in {real}" in atlas.model_measured_on(ev)
    # a run that does not say: unknown
    assert atlas.run_evaluation(None, counts, real, False).same_as_active is None
    assert "171,374 real cells" in atlas.PAPER_MEASURED_ON and "5-fold" in atlas.PAPER_MEASURED_ON
