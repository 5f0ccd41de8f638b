"""The class table and tolerance pairs match the paper's taxonomy."""
import pytest

from bmteach import classes


def test_twenty_one_classes_with_the_papers_counts():
    assert len(classes.ABBRS) == 21
    assert len(set(classes.ABBRS)) == 21
    assert sum(c.count for c in classes.CLASSES) == 171_374
    assert classes.BY_ABBR["NGS"].count == 29_424
    assert classes.BY_ABBR["ABE"].count == 8


def test_maturation_chains_in_order():
    assert classes.CHAINS["granulocytic"] == ("BLA", "PMO", "MYB", "MMZ", "NGB", "NGS")
    assert classes.CHAINS["erythroid"] == ("PEB", "EBO")
    assert classes.CHAINS["lymphoid"] == ("LYI", "LYT")


def test_every_class_has_a_distinct_colour():
    colours = [c.colour for c in classes.CLASSES]
    assert len(set(colours)) == 21
    assert all(c.startswith("#") and len(c) == 7 for c in colours)


def test_default_tolerance_is_the_high_confidence_pairs_in_both_directions():
    pairs = classes.tolerance_set()
    assert len(pairs) == 8
    assert classes.is_tolerated("NGS", "NGB", pairs) and classes.is_tolerated("NGB", "NGS", pairs)
    assert classes.is_tolerated("LYT", "LYI", pairs)
    assert not classes.is_tolerated("BLA", "LYI", pairs)   # "possible" pair: off by default
    assert not classes.is_tolerated("MON", "LYT", pairs)
    assert classes.is_tolerated("MON", "MON", pairs)


def test_possible_pairs_can_be_switched_on():
    pairs = classes.tolerance_set(include_possible=True)
    assert len(pairs) == 11
    assert classes.is_tolerated("LYI", "BLA", pairs)


def test_tolerance_file_with_an_unknown_class_is_a_clear_error(tmp_path):
    bad = tmp_path / "tol.csv"
    bad.write_text("a,b,enabled\nNGS,XYZ,1\n")
    with pytest.raises(ValueError, match="unknown class 'XYZ'"):
        classes.tolerance_set(bad)


def test_index_of_unknown_class():
    assert classes.index_of("BLA") == 0
    with pytest.raises(ValueError, match="Unknown class"):
        classes.index_of("bla")
