"""bmteach.data: the index on a tree with the real layout's quirks, safe paths, folds, manifests, the CLI."""
from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bmteach import data
from bmteach.__main__ import main
from bmteach.errors import UserError
from bmteach.images import load_image, safe_join

REPO = Path(__file__).resolve().parent.parent


def _jpeg(colour=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buf, "JPEG")
    return buf.getvalue()


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(buf, "PNG")
    return buf.getvalue()


def _tiff() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(buf, "TIFF")
    return buf.getvalue()


def _write(path: Path, content: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)


def make_quirky_tree(base: Path) -> Path:
    """A small copy of the real layout's quirks. Expected: 31 images (BLA 9, NGB 8, ABE 8, KSC 4, EOS 2),
    11 skipped entries; masks/ and synth.json are the generator's and not reported."""
    top = base / "BM_cytomorphology_data"
    jpg = _jpeg()
    for n in range(1, 7):
        _write(top / "BLA" / "0001-1000" / f"BLA_{n:05d}.jpg", jpg)
    for n in range(1001, 1004):  # truncated last range folder
        _write(top / "BLA" / "1001-1003" / f"BLA_{n:05d}.jpg", jpg)
    for n in range(1, 6):
        _write(top / "NGB" / "0001-1000" / f"NGB_{n:05d}.jpg", jpg)
    for n in range(1001, 1004):
        _write(top / "NGB" / "1001-1968" / f"NGB_{n:05d}.jpg", jpg)
    for n in range(1, 9):  # flat small classes
        _write(top / "ABE" / f"ABE_{n:05d}.jpg", jpg)
    for n in range(1, 5):
        _write(top / "KSC" / f"KSC_{n:05d}.jpg", jpg)
    _write(top / "EOS" / "0001-1000" / "EOS_00001.png", _png())
    _write(top / "EOS" / "0001-1000" / "EOS_00002.tif", _tiff())
    # junk, each skipped for one known reason
    _write(top / "BLA" / "0001-1000" / "notes.txt", b"counted by hand")                  # extension
    _write(top / "BLA" / "0001-1000" / ".DS_Store", b"\x00\x00\x00\x01Bud1")             # hidden
    _write(top / "BLA" / "0001-1000" / "BLA_00007.jpg", jpg[: len(jpg) // 2])           # truncated
    _write(top / "BLA" / "0001-1000" / "BLA_00008.jpg", b"")                            # empty
    _write(top / "BLA" / "0001-1000" / "BLA_00009.jpg", b"this is not a jpeg at all\n")  # content
    _write(top / "NGB" / "._NGB_00001.jpg", b"\x00\x05\x16\x07AppleDouble")             # hidden
    _write(top / "KSC" / "Thumbs.db", b"\xd0\xcf\x11\xe0")                               # hidden
    _write(top / ".cache" / "BLA_00001.jpg", jpg)                                        # hidden folder
    _write(top / "XYZ" / "XYZ_00001.jpg", jpg)                                           # unknown class
    _write(top / "XYZ" / "XYZ_00002.jpg", jpg)
    _write(top / "bla" / "bla_00001.jpg", jpg)                                           # unknown (case)
    _write(top / "abbreviations.csv", b"Abbreviation;Meaning\nBLA;Blast\n")               # loose file
    _write(top / "masks" / "BLA" / "0001-1000" / "BLA_00001.png", _png())               # generator's
    _write(top / "synth.json", b"{}")
    return top


EXPECTED_COUNTS = {"BLA": 9, "NGB": 8, "EOS": 2, "ABE": 8, "KSC": 4}  # canonical order: BLA NGB EOS ABE KSC
EXPECTED_SKIPS = {
    data.SKIP_EXTENSION: ["BLA/0001-1000/notes.txt"],
    data.SKIP_HIDDEN: [".cache/", "BLA/0001-1000/.DS_Store", "KSC/Thumbs.db", "NGB/._NGB_00001.jpg"],
    data.SKIP_TRUNCATED: ["BLA/0001-1000/BLA_00007.jpg"],
    data.SKIP_EMPTY: ["BLA/0001-1000/BLA_00008.jpg"],
    data.SKIP_CONTENT: ["BLA/0001-1000/BLA_00009.jpg"],
    data.SKIP_UNKNOWN_CLASS: ["XYZ/", "bla/"],
    data.SKIP_LOOSE: ["abbreviations.csv"],
}


@pytest.fixture
def tree(tmp_path) -> Path:
    return make_quirky_tree(tmp_path)


# --- index -------------------------------------------------------------------------------------------------

def test_index_finds_exactly_the_images_and_reports_each_skip(tree):
    result = data.index(tree)
    assert result.root == tree.resolve() and result.class_root == tree.resolve()
    assert result.counts() == EXPECTED_COUNTS
    assert list(result.counts()) == ["BLA", "NGB", "EOS", "ABE", "KSC"]
    assert len(result.items) == 31
    assert result.skipped_by_reason() == {k: sorted(v) for k, v in EXPECTED_SKIPS.items()}
    assert all(not p.startswith(("masks", "synth")) for p, _ in result.items + result.skipped)
    assert ("BLA/1001-1003/BLA_01003.jpg", "BLA") in result.items
    assert ("ABE/ABE_00008.jpg", "ABE") in result.items
    assert result.paths == sorted(result.paths)


def test_index_from_the_parent_folder_keeps_paths_relative_to_the_given_root(tree):
    parent = tree.parent
    (parent / "README.txt").write_text("beside the data folder: neither indexed nor reported")
    result = data.index(parent)
    assert result.root == parent.resolve() and result.class_root == tree.resolve()
    assert result.counts() == EXPECTED_COUNTS
    assert len(result.skipped) == 11
    assert result.items[0] == ("BM_cytomorphology_data/ABE/ABE_00001.jpg", "ABE")
    for rel, _ in result.items:
        assert safe_join(parent, rel).is_file()


def test_parent_with_two_data_sets_is_ambiguous(tmp_path):
    for name in ("copy_a", "copy_b"):
        _write(tmp_path / name / "BLA" / "BLA_00001.jpg", _jpeg())
    with pytest.raises(UserError, match="several data sets"):
        data.index(tmp_path)


def test_mapping_adds_other_spellings_and_excludes_folders(tree, tmp_path):
    result = data.index(tree, mapping={"bla": "BLA", "XYZ": ""})
    assert result.counts()["BLA"] == 10
    assert result.skipped_by_reason()[data.SKIP_EXCLUDED] == ["XYZ/"]
    assert data.SKIP_UNKNOWN_CLASS not in result.skipped_by_reason()


def test_folder_per_class_data_set_with_a_mapping_csv(tmp_path):
    root = tmp_path / "external"
    for folder, n in (("Myeloblast", 3), ("lymphocyte typical", 2), ("Neutrophil (segmented)", 4), ("Basket", 1)):
        for i in range(n):
            _write(root / folder / "sub" / f"img{i}.JPG", _jpeg())
    mapping = tmp_path / "map.csv"
    mapping.write_text("folder;abbr\nMyeloblast;BLA\nLymphocyte Typical;lyt\nNeutrophil (segmented);NGS\n"
                       "Basket;-\n", encoding="utf-8")
    result = data.index(root, mapping=mapping)
    assert result.counts() == {"NGS": 4, "BLA": 3, "LYT": 2}
    assert result.skipped == [("Basket/", data.SKIP_EXCLUDED)]
    with pytest.raises(UserError, match="unknown class folder"):
        data.index(root)  # without the mapping no folder is a class


def test_bad_mapping_files_are_clear_errors(tmp_path):
    bad_abbr = tmp_path / "a.csv"
    bad_abbr.write_text("folder,abbr\nMyeloblast,BLAST\n")
    with pytest.raises(UserError, match=r"a.csv:2: 'BLAST' is not one of the 21 classes"):
        data.read_mapping(bad_abbr)
    no_columns = tmp_path / "b.csv"
    no_columns.write_text("Abbreviation;Meaning\nBLA;Blast\n")
    with pytest.raises(UserError, match="needs the columns folder,abbr"):
        data.read_mapping(no_columns)
    with pytest.raises(UserError, match="Mapping file not found"):
        data.read_mapping(tmp_path / "missing.csv")


def test_verify_decodes_what_the_cheap_checks_let_through(tree):
    # Starts like a JPEG and ends with an end-of-image marker, but holds no picture.
    _write(tree / "BLA" / "0001-1000" / "BLA_00010.jpg", b"\xff\xd8\xff" + os.urandom(200) + b"\xff\xd9")
    assert data.index(tree).counts()["BLA"] == 10
    verified = data.index(tree, verify=True)
    assert verified.counts()["BLA"] == 9
    assert verified.skipped_by_reason()[data.SKIP_CORRUPT] == ["BLA/0001-1000/BLA_00010.jpg"]


def test_jpeg_with_trailing_padding_is_not_called_truncated(tree):
    _write(tree / "KSC" / "KSC_00005.jpg", _jpeg() + b"\x00\x00\r\n")
    assert data.index(tree).counts()["KSC"] == 5


def test_symbolic_links_leaving_the_root_are_skipped(tree, tmp_path):
    outside = tmp_path / "elsewhere.jpg"
    outside.write_bytes(_jpeg())
    os.symlink(outside, tree / "ABE" / "ABE_00009.jpg")
    os.symlink(tree / "BLA" / "0001-1000", tree / "ABE" / "loop")
    os.symlink(tree / "ABE" / "ABE_00001.jpg", tree / "ABE" / "ABE_00010.jpg")  # inside: fine
    result = data.index(tree)
    reasons = result.skipped_by_reason()
    assert reasons[data.SKIP_LINK_OUTSIDE] == ["ABE/ABE_00009.jpg"]
    assert reasons[data.SKIP_LINKED_FOLDER] == ["ABE/loop/"]
    assert result.counts()["ABE"] == 9


def _index_within(seconds: float, root: Path):
    """data.index(root) in a thread, so that a hang fails the test instead of stopping the suite."""
    out = {}
    worker = threading.Thread(target=lambda: out.update(result=data.index(root)), daemon=True)
    worker.start()
    worker.join(seconds)
    return worker, out


def test_a_fifo_named_like_an_image_is_skipped_never_opened(tree):
    fifo = tree / "BLA" / "0001-1000" / "BLA_00099.jpg"
    os.mkfifo(fifo)
    worker, out = _index_within(60, tree)
    if worker.is_alive():  # the old index blocked in open() for a writer: give it one, then fail
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("indexing blocked on a FIFO")
    assert out["result"].skipped_by_reason()[data.SKIP_NOT_REGULAR] == ["BLA/0001-1000/BLA_00099.jpg"]
    assert data.quick_check(fifo) == data.SKIP_NOT_REGULAR
    assert out["result"].counts() == EXPECTED_COUNTS


def test_odd_names_and_links_inside_the_data_set_are_named_in_a_skip_reason(tree, tmp_path):
    folder = os.fsencode(tree / "ABE")
    with open(os.path.join(folder, b"ABE_\xff\xfe.jpg"), "wb") as f:  # a Latin-1 name from an old archive
        f.write(_jpeg())
    os.mkdir(os.path.join(folder, b"r\xe9serve"))
    os.symlink("ABE_00011.jpg", tree / "ABE" / "ABE_00011.jpg")        # points at itself
    os.symlink("nowhere.jpg", tree / "ABE" / "ABE_00012.jpg")          # points at nothing
    os.symlink("BLA", tree / "NGS")                                    # the same cells under a second label
    result = data.index(tree)
    reasons = result.skipped_by_reason()
    assert reasons[data.SKIP_BAD_NAME] == ["ABE/ABE_\\xff\\xfe.jpg", "ABE/r\\xe9serve/"]
    assert reasons[data.SKIP_BROKEN_LINK] == ["ABE/ABE_00011.jpg", "ABE/ABE_00012.jpg"]
    assert reasons[data.SKIP_LINKED_CLASS] == ["NGS/"]
    assert result.counts() == EXPECTED_COUNTS
    out = tmp_path / "manifest.csv"
    data.write_manifest(data.build_manifest(result), out)  # every path a manifest can hold
    assert len(data.read_manifest(out)) == 31


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "nope", "Data folder not found"),
    (lambda p: (p / "empty").mkdir() or p / "empty", "is empty"),
    (lambda p: (p / "f.jpg").write_bytes(_jpeg()) and p / "f.jpg", "is a file, not a data folder"),
])
def test_missing_empty_or_file_root_is_one_clear_error(tmp_path, make, message):
    with pytest.raises(UserError, match=message):
        data.index(make(tmp_path))


def test_root_without_class_folders_says_what_was_expected(tmp_path):
    _write(tmp_path / "loose.jpg", _jpeg())
    _write(tmp_path / "cells" / "a.jpg", _jpeg())
    with pytest.raises(UserError, match=r"No usable images .*1 file outside the class folders"):
        data.index(tmp_path)

# --- one rule for what counts as a data root: the index, the app's settings and train agree ----------------

def _data_roots(base: Path) -> dict[str, tuple[Path, Path | None]]:
    """name -> (folder given, folder expected to hold the classes; None = refused)."""
    tcia = base / "download" / "BM_cytomorphology_data"
    _write(tcia / "BLA" / "0001-1000" / "BLA_00001.jpg", _jpeg())
    _write(tcia / "NGS" / "0001-1000" / "NGS_00001.jpg", _jpeg())
    per_class = base / "cells"
    for abbr in ("EOS", "LYT"):
        _write(per_class / abbr / f"{abbr}_1.png", _png())
    empty = base / "empty"
    empty.mkdir()
    no_classes = base / "no_classes"
    _write(no_classes / "bla" / "a.jpg", _jpeg())           # a class only through a mapping
    _write(no_classes / "photos" / "a.jpg", _jpeg())
    _write(no_classes / "masks" / "BLA" / "a.png", _png())  # the generator's masks are no class folder
    two = base / "two"
    for name in ("a", "b"):
        _write(two / name / "BLA" / "x.jpg", _jpeg())
    loop = base / "loop"
    os.symlink(loop, loop)
    return {"TCIA data folder": (tcia, tcia), "its parent": (tcia.parent, tcia),
            "folder per class": (per_class, per_class), "empty": (empty, None),
            "no class folders": (no_classes, None), "two data sets": (two, None),
            "symlink loop": (loop, None), "missing": (base / "nowhere", None)}


def test_settings_and_train_accept_and_refuse_the_same_data_folders(tmp_path, fresh_home):
    from bmteach import settings, train

    for name, (given, holds_classes) in _data_roots(tmp_path).items():
        if holds_classes is None:
            for check in (data.find_class_root, settings.validate_data_dir, train.resolve_data_root):
                with pytest.raises(UserError) as err:
                    check(str(given))
                assert "\n" not in str(err.value), name
        else:
            assert data.find_class_root(given) == holds_classes.resolve(), name
            assert settings.validate_data_dir(given) == holds_classes.resolve(), name
            assert train.resolve_data_root(str(given)) == given.resolve(), name  # manifests stay relative to it
            assert data.index(given).class_root == holds_classes.resolve(), name



def test_quick_check_reasons(tmp_path):
    cases = {"ok.jpg": _jpeg(), "ok.png": _png(), "cut.png": _png()[:-20], "empty.jpg": b"",
             "svg.png": b"<svg xmlns='http://www.w3.org/2000/svg'/>"}
    expected = {"ok.jpg": None, "ok.png": None, "cut.png": data.SKIP_TRUNCATED, "empty.jpg": data.SKIP_EMPTY,
                "svg.png": data.SKIP_CONTENT}
    for name, content in cases.items():
        _write(tmp_path / name, content)
        assert data.quick_check(tmp_path / name) == expected[name], name
    assert data.quick_check(tmp_path / "missing.jpg") == data.SKIP_UNREADABLE


# --- folds -------------------------------------------------------------------------------------------------

LABELS = ["BLA"] * 23 + ["EOS"] * 17 + ["ABE"] * 3 + ["KSC"] * 1 + ["LYT"] * 10


def _per_class_fold_counts(labels, folds, k):
    return {c: np.bincount(folds[np.array(labels) == c], minlength=k) for c in set(labels)}


def test_folds_are_stratified_balanced_and_cover_every_image():
    folds = data.assign_folds(LABELS, k=5, seed=0)
    assert folds.shape == (len(LABELS),) and set(folds) == {0, 1, 2, 3, 4}
    for c, counts in _per_class_fold_counts(LABELS, folds, 5).items():
        assert counts.max() - counts.min() <= 1, c
        assert counts.sum() == LABELS.count(c)
    assert np.bincount(folds, minlength=5).tolist() == [11, 11, 11, 11, 10]  # 54 images dealt in turn
    assert Counter(folds[np.array(LABELS) == "ABE"]).most_common(1)[0][1] == 1  # 3 images, 3 distinct folds


def test_folds_are_reproducible_and_change_with_the_seed():
    a, b = data.assign_folds(LABELS, 5, seed=7), data.assign_folds(LABELS, 5, seed=7)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, data.assign_folds(LABELS, 5, seed=8))


def test_ten_images_of_one_class_give_two_per_fold():
    assert np.bincount(data.assign_folds(["NGS"] * 10, k=5, seed=3)).tolist() == [2, 2, 2, 2, 2]


def test_fewer_folds_than_two_is_refused():
    with pytest.raises(UserError, match="at least 2 folds"):
        data.assign_folds(LABELS, k=1)


def test_groups_are_never_split_and_equal_groups_fill_folds_evenly():
    labels = ["LYT"] * 100
    groups = [f"patient{i // 5}" for i in range(100)]  # 20 patients of 5 images
    folds = data.assign_folds(labels, k=5, seed=0, groups=groups)
    per_group = pd.Series(folds).groupby(groups).nunique()
    assert (per_group == 1).all()
    assert np.bincount(folds).tolist() == [20, 20, 20, 20, 20]


def test_groups_with_mixed_classes_stay_whole_and_reproducible():
    rng = np.random.default_rng(1)
    labels = list(rng.choice(["BLA", "EOS", "LYT"], size=300))
    groups = list(rng.integers(0, 40, size=300))
    a = data.assign_folds(labels, k=5, seed=2, groups=groups)
    assert (pd.Series(a).groupby(groups).nunique() == 1).all()
    assert np.array_equal(a, data.assign_folds(labels, k=5, seed=2, groups=groups))
    assert set(a) == {0, 1, 2, 3, 4}
    with pytest.raises(ValueError, match="one group per image"):
        data.assign_folds(labels, k=5, groups=groups[:-1])


# --- manifest ----------------------------------------------------------------------------------------------

def test_manifest_round_trip(tree, tmp_path):
    df = data.build_manifest(data.index(tree), k=5, seed=0)
    assert list(df.columns) == ["path", "label", "fold"] and len(df) == 31
    out = tmp_path / "out" / "manifest.csv"
    data.write_manifest(df, out)
    assert [p.name for p in out.parent.iterdir()] == ["manifest.csv"]  # no temp file left behind
    back = data.read_manifest(out)
    pd.testing.assert_frame_equal(back, df)
    assert back["fold"].dtype == np.int64


def test_manifest_with_groups_keeps_group_column(tree):
    result = data.index(tree)
    groups = {p: "slide1" for p in result.paths if p.startswith("BLA/")}
    df = data.build_manifest(result, k=3, seed=0, groups=groups)
    assert df.loc[df["path"].str.startswith("BLA/"), "fold"].nunique() == 1
    assert (df.loc[~df["path"].str.startswith("BLA/"), "group"] == "").all()


@pytest.mark.parametrize("text, message", [
    ("path,label\na.jpg,BLA\n", "missing column"),
    ("path,label,fold\n", "no images"),
    ("path,label,fold\na.jpg,BLA,0\nb.jpg,BLAST,1\n", r"line 3: 'BLAST'"),
    ("path,label,fold\na.jpg,BLA,one\n", "not a whole number"),
    ("path,label,fold\na.jpg,BLA,-1\n", "not a whole number"),
    ("path,label,fold\n../a.jpg,BLA,0\n", "outside the data folder"),
    ("path,label,fold\n/abs/a.jpg,BLA,0\n", "absolute"),
    ("path,label,fold\na.jpg,BLA,0\na.jpg,BLA,1\n", "more than once"),
])
def test_read_manifest_refuses_bad_files_clearly(tmp_path, text, message):
    path = tmp_path / "m.csv"
    path.write_text(text)
    with pytest.raises(UserError, match=message):
        data.read_manifest(path)


def test_read_manifest_missing_file(tmp_path):
    with pytest.raises(UserError, match="Manifest not found"):
        data.read_manifest(tmp_path / "none.csv")


# --- command line ------------------------------------------------------------------------------------------

def test_cli_index_prints_summary_and_skips_and_writes_manifest(tree, tmp_path, capsys):
    out = tmp_path / "manifest.csv"
    assert main(["index", str(tree.parent), "--out", str(out), "--folds", "4", "--seed", "1"]) == 0
    text = capsys.readouterr().out
    assert "BLA   Blast                        9" in text
    assert "total                             31" in text
    assert "Skipped 11 file(s) or folder(s):" in text
    assert "4  hidden or system file: BM_cytomorphology_data/.cache/" in text
    assert "(class folders in BM_cytomorphology_data/)" in text
    df = data.read_manifest(out)
    assert len(df) == 31 and set(df["fold"]) == {0, 1, 2, 3}
    assert df["path"].iloc[0] == "BM_cytomorphology_data/ABE/ABE_00001.jpg"


def test_cli_index_with_groups(tree, tmp_path, capsys):
    groups = tmp_path / "groups.csv"
    groups.write_text("path,group\n" + "".join(f"ABE/ABE_{n:05d}.jpg,p1\n" for n in range(1, 9)))
    out = tmp_path / "m.csv"
    assert main(["index", str(tree), "--out", str(out), "--groups", str(groups)]) == 0
    assert "23 image(s) without a group" in capsys.readouterr().out
    df = data.read_manifest(out)
    assert df.loc[df["group"] == "p1", "fold"].nunique() == 1


def test_cli_index_errors_are_one_sentence(tmp_path, capsys):
    assert main(["index", str(tmp_path / "missing"), "--out", str(tmp_path / "m.csv")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Data folder not found") and err.count("\n") == 1
    assert not (tmp_path / "m.csv").exists()


def test_cli_index_as_a_subprocess(tree, tmp_path):
    out = tmp_path / "m.csv"
    proc = subprocess.run([sys.executable, "-m", "bmteach", "index", str(tree), "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Wrote" in proc.stdout and len(data.read_manifest(out)) == 31


# --- the real sample ---------------------------------------------------------------------------------------

def test_real_sample_index_and_load(real_sample):
    result = data.index(real_sample)
    assert len(result.items) == 420 and result.skipped == []
    assert result.counts() == {c: 60 for c in ("BLA", "PMO", "NGS", "EOS", "MON", "LYT", "NIF")}
    for rel, abbr in result.items:
        assert rel.startswith(f"{abbr}/0001-1000/{abbr}_")
        image = load_image(safe_join(result.root, rel))
        assert image.mode == "RGB" and image.size == (250, 250)
    folds = data.build_manifest(result)["fold"]
    assert np.bincount(folds).tolist() == [84] * 5
