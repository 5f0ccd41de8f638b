"""The synthetic cell generator: determinism, layout, masks that match the pixels, every class, the CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from bmteach import data, synth
from bmteach.__main__ import main
from bmteach.classes import ABBRS
from bmteach.errors import UserError

CELL_CLASSES = [c for c in ABBRS if c != "ART"]   # ART has no labelled cell


def files_of(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def brightness(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float64).mean(axis=2)


# --- layout and determinism ---------------------------------------------------------------------------------

def test_range_folders_follow_the_distributed_naming():
    assert synth.range_folder(1, 100) == "0001-0100"
    assert synth.range_folder(1000, 2500) == "0001-1000"
    assert synth.range_folder(1001, 2500) == "1001-2000"
    assert synth.range_folder(2500, 2500) == "2001-2500"
    assert synth.range_folder(9968, 9968) == "9001-9968"
    assert synth.image_relpath("NGS", 7, 100) == "NGS/0001-0100/NGS_00007.jpg"


def test_dataset_layout_masks_and_description(tmp_path):
    out = synth.generate_dataset(tmp_path / "syn", per_class=3, seed=1, classes=["NGS", "ART"], workers=1)
    images = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.jpg"))
    assert images == [f"{c}/0001-0003/{c}_0000{n}.jpg" for c in ("ART", "NGS") for n in (1, 2, 3)]
    for rel in images:
        with Image.open(out / rel) as im:
            assert (im.format, im.mode, im.size) == ("JPEG", "RGB", (250, 250))
        mask = synth.mask_path(out, rel)
        assert mask == (out / "masks" / rel).with_suffix(".png").resolve()
        with Image.open(mask) as m:
            assert (m.format, m.mode, m.size) == ("PNG", "L", (250, 250))
            assert set(np.unique(np.asarray(m))) <= {0, 1, 2}
    info = json.loads((out / "synth.json").read_text())
    assert info["synthetic"] is True and info["count"] == 6 and info["classes"] == ["NGS", "ART"]
    assert synth.is_synthetic(out)


def test_same_seed_same_bytes_serial_or_pooled(tmp_path):
    kw = dict(per_class=2, seed=5, classes=["BLA", "KSC", "ART", "NIF"])
    a = files_of(synth.generate_dataset(tmp_path / "a", workers=1, **kw))
    b = files_of(synth.generate_dataset(tmp_path / "b", workers=2, **kw))
    assert a == b and len(a) == 2 * 8 + 1
    c = files_of(synth.generate_dataset(tmp_path / "c", workers=1, **{**kw, "seed": 6}))
    assert c["BLA/0001-0002/BLA_00001.jpg"] != a["BLA/0001-0002/BLA_00001.jpg"]


def test_image_n_does_not_depend_on_how_many_are_drawn():
    one = synth.generate_cell("MON", synth.cell_rng(0, "MON", 3))[0]
    again = synth.generate_cell("MON", synth.cell_rng(0, "MON", 3))[0]
    other = synth.generate_cell("MON", synth.cell_rng(0, "MON", 4))[0]
    assert np.array_equal(np.asarray(one), np.asarray(again))
    assert not np.array_equal(np.asarray(one), np.asarray(other))


# --- every class, masks consistent with pixels ---------------------------------------------------------------

@pytest.mark.parametrize("abbr", ABBRS)
def test_every_class_renders_with_a_consistent_mask(abbr):
    for n in (1, 2, 3):
        image, mask = synth.generate_cell(abbr, synth.cell_rng(0, abbr, n))
        assert image.size == (250, 250) and image.mode == "RGB" and mask.shape == (250, 250)
        assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1, 2}
        if abbr == "ART":
            assert not mask.any()
            continue
        nucleus, cyto = mask == 2, mask == 1
        assert nucleus.sum() > 300, "every cell has a visible nucleus (or smudged nuclear material)"
        ys, xs = np.nonzero(mask)
        assert abs(ys.mean() - 125) < 25 and abs(xs.mean() - 125) < 25, "the labelled cell is centred"
        assert mask[125, 125] > 0
        if cyto.sum() > 300 and abbr != "NIF":
            light = brightness(image)
            assert light[nucleus].mean() < light[cyto].mean() - 0.02 * 255, "nucleus darker than cytoplasm"


def test_nucleus_is_darker_than_cytoplasm_even_in_the_shifted_look():
    image, mask = synth.generate_cell("PLM", synth.cell_rng(0, "PLM", 1), shift="scanner-b")
    light = brightness(image)
    assert light[mask == 2].mean() < light[mask == 1].mean()


def test_shift_changes_the_look_not_the_cell():
    plain, mask = synth.generate_cell("EOS", synth.cell_rng(2, "EOS", 1))
    shifted, mask_b = synth.generate_cell("EOS", synth.cell_rng(2, "EOS", 1), shift="scanner-b")
    assert np.array_equal(mask, mask_b)
    diff = np.abs(np.asarray(plain, float) - np.asarray(shifted, float)).mean()
    assert diff > 5


def test_background_is_light_and_cells_are_stained():
    image, mask = synth.generate_cell("LYT", synth.cell_rng(0, "LYT", 1))
    rgb = np.asarray(image, dtype=np.float64) / 255
    nucleus = rgb[mask == 2].mean(axis=0)
    assert nucleus[2] > nucleus[1] and nucleus[2] > nucleus[0], "nuclei are purple-blue"
    # since generator 3: backgrounds as dim as real ones (generator 5: brightness 0.56-1.0, a quarter of patches in
    # its dim bottom quarter), so "pale" means above 0.6, not 0.8
    assert rgb.reshape(-1, 3).max(axis=0).min() > 0.6, "somewhere the background shows"


# --- maturation chains and difficulty ------------------------------------------------------------------------

def test_difficulty_zero_separates_chain_neighbours_and_one_overlaps_them():
    rng = np.random.default_rng(0)
    bla0 = [synth.maturation("BLA", rng, 0.0) for _ in range(300)]
    pmo0 = [synth.maturation("PMO", rng, 0.0) for _ in range(300)]
    # BLA owns [0, 0.14]; at difficulty 0 it shrinks by 0.14 * 0.16 on each side (hand-computed)
    assert 0.0224 - 1e-9 <= min(bla0) and max(bla0) <= 0.1176 + 1e-9
    assert max(bla0) < min(pmo0)
    bla1 = [synth.maturation("BLA", rng, 1.0) for _ in range(300)]
    pmo1 = [synth.maturation("PMO", rng, 1.0) for _ in range(300)]
    assert max(bla1) > min(pmo1), "at difficulty 1 blasts and promyelocytes overlap"
    ngs1 = [synth.maturation("NGS", rng, 1.0) for _ in range(300)]
    assert max(pmo1) < min(ngs1), "unrelated stages never meet"


def test_maturation_drives_the_granulocytic_chain():
    rng = np.random.default_rng(1)
    young = synth.granulocytic_spec("BLA", 0.0, rng)
    old = synth.granulocytic_spec("NGS", 1.0, rng)
    # since generator 3: segmented neutrophils carry more nuclear area (real sample), so 1.5x rather than 2x
    assert young.nucleus_fraction > 1.5 * old.nucleus_fraction
    assert young.cyto_blue > 0.9 and old.cyto_blue == 0.0 and old.cyto_pink > 0.5
    assert young.nuc_lobes == 1 and old.nuc_lobes >= 2 and old.nuc_pinch > 0.8


# --- errors, helpers, CLI, default data set -----------------------------------------------------------------

def test_user_errors_are_one_sentence(tmp_path):
    with pytest.raises(UserError, match="Unknown class 'XYZ'"):
        synth.generate_dataset(tmp_path / "x", per_class=1, classes=["XYZ"])
    with pytest.raises(UserError, match="Unknown shift"):
        synth.generate_cell("BLA", synth.cell_rng(0, "BLA", 1), shift="nope")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "mine.txt").write_text("keep me")
    with pytest.raises(UserError, match="not empty"):
        synth.generate_dataset(tmp_path / "busy", per_class=1, classes=["BLA"])


def test_mask_path_refuses_non_synthetic_and_escaping_paths(tmp_path):
    out = synth.generate_dataset(tmp_path / "syn", per_class=1, classes=["LYT"], workers=1)
    assert synth.mask_path(out, "LYT/0001-0001/LYT_00001.jpg") is not None
    assert synth.mask_path(out, "LYT/0001-0001/LYT_00002.jpg") is None
    assert synth.mask_path(out, "../../etc/passwd") is None
    (tmp_path / "plain").mkdir()
    assert not synth.is_synthetic(tmp_path / "plain")
    assert synth.mask_path(tmp_path / "plain", "LYT/0001-0001/LYT_00001.jpg") is None


def test_cli_writes_a_dataset_and_reports_bad_input(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path / "cli"), "--per-class", "1", "--classes", "EBO", "PEB",
                 "--shift", "scanner-b", "--seed", "3"]) == 0
    assert (tmp_path / "cli" / "EBO" / "0001-0001" / "EBO_00001.jpg").is_file()
    assert json.loads((tmp_path / "cli" / "synth.json").read_text())["shift"] == "scanner-b"
    assert main(["synth", "--out", str(tmp_path / "bad"), "--classes", "XYZ"]) == 2
    err = capsys.readouterr().err
    assert "Unknown class 'XYZ'" in err and "Traceback" not in err


def test_ensure_default_dataset_generates_once_atomically(fresh_home, monkeypatch):
    monkeypatch.setattr(synth.dataset, "DEFAULT_PER_CLASS", 1)   # the app uses 100; one per class: a fast test
    seen = []
    root = synth.ensure_default_dataset(progress=lambda done, total: seen.append((done, total)))
    assert root == fresh_home / "data" / "synthetic" and synth.is_synthetic(root)
    assert len(list(root.rglob("*.jpg"))) == len(ABBRS) and seen[-1] == (len(ABBRS), len(ABBRS))
    assert [p.name for p in root.parent.iterdir()] == ["synthetic"], "no temporary folder left behind"

    def must_not_run(*a, **k):
        raise AssertionError("generated twice")

    monkeypatch.setattr(synth.dataset, "generate_dataset", must_not_run)
    assert synth.ensure_default_dataset() == root


def test_index_reads_the_generated_layout(tmp_path):
    out = synth.generate_dataset(tmp_path / "syn", per_class=2, classes=["NGB", "HAC"], workers=1)
    result = data.index(out)
    assert sorted(result.items) == sorted(
        (f"{c}/0001-0002/{c}_0000{n}.jpg", c) for c in ("NGB", "HAC") for n in (1, 2))
    assert result.skipped == [], "masks/ and synth.json belong to the generator and are not reported"


def test_colour_statistics_near_the_real_sample(real_sample):
    pixels = [np.asarray(synth.generate_cell(c, synth.cell_rng(0, c, n))[0], dtype=np.float64) / 255
              for c in ABBRS for n in range(1, 5)]
    stack = np.stack(pixels).reshape(-1, 3)
    mean, std = stack.mean(axis=0, dtype=np.float64), stack.std(axis=0, dtype=np.float64)
    assert np.abs(mean - (0.564, 0.492, 0.736)).max() < 0.05
    assert np.abs(std - (0.248, 0.291, 0.177)).max() < 0.05
