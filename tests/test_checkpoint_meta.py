"""Issue 14, item 4: checkpoints are validated, not trusted. Every field of meta.json is checked (type, range,
length, unique known classes) and a bad one is one sentence, on the command line (`predict`) and on Explain."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from helpers import one_sentence
from streamlit.testing.v1 import AppTest

from bmteach import cli, settings
from bmteach.classes import ABBRS
from bmteach.errors import CheckpointError
from bmteach.models import MAX_IMAGE_SIZE, ModelMeta, create_model, load_checkpoint, read_meta, save_checkpoint
from bmteach.storage import REPO_ROOT
from bmteach.synth import generate_dataset

EXPLAIN = str(REPO_ROOT / "pages" / "3_Explain.py")
GOOD = {"model": "sequential", "image_size": 32, "fold": 0, "complete": True}

BAD = {
    "null": None,
    "a list": [1, 2, 3],
    "a string": "sequential",
    "no model": {"image_size": 32},
    "unknown model": {**GOOD, "model": "os.system"},
    "model not a string": {**GOOD, "model": ["sequential"]},
    "image_size 0": {**GOOD, "image_size": 0},
    "image_size -5": {**GOOD, "image_size": -5},
    "image_size 'big'": {**GOOD, "image_size": "big"},
    "image_size 60000": {**GOOD, "image_size": 60000},
    "image_size 32.5": {**GOOD, "image_size": 32.5},
    "image_size true": {**GOOD, "image_size": True},
    "one-element mean": {**GOOD, "mean": [0.5]},
    "mean not a list": {**GOOD, "mean": 0.5},
    "mean with text": {**GOOD, "mean": [0.5, "x", 0.5]},
    "mean out of range": {**GOOD, "mean": [0.5, 128, 0.5]},
    "std of zero": {**GOOD, "std": [0.2, 0.0, 0.2]},
    "negative std": {**GOOD, "std": [0.2, -0.1, 0.2]},
    "21 duplicate classes": {**GOOD, "classes": ["BLA"] * 21},
    "one duplicate class": {**GOOD, "classes": list(ABBRS[:20]) + ["BLA"]},
    "unknown class": {**GOOD, "classes": list(ABBRS[:20]) + ["XYZ"]},
    "one class": {**GOOD, "classes": ["BLA"]},
    "classes not text": {**GOOD, "classes": [1, 2, 3]},
    "classes a string": {**GOOD, "classes": "BLA,NGS"},
    "fold -1": {**GOOD, "fold": -1},
    "fold 'one'": {**GOOD, "fold": "one"},
    "epoch -3": {**GOOD, "epoch": -3},
    "seed 1.5": {**GOOD, "seed": 1.5},
    "complete 'yes'": {**GOOD, "complete": "yes"},
    "metrics a list": {**GOOD, "metrics": [0.5]},
}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A one-fold run (random weights, 32 px) and a data set of one synthetic cell per class."""
    root = tmp_path_factory.mktemp("meta")
    data = generate_dataset(root / "data", per_class=1, seed=0, workers=1)
    torch.manual_seed(0)
    meta = ModelMeta(model="sequential", image_size=32, fold=0, epochs=1, epoch=1, complete=True)
    save_checkpoint(create_model("sequential", len(ABBRS)), meta, root / "run" / "fold0" / "model.pt")
    return root / "run", data


def with_meta(run, tmp_path, content) -> tuple:
    """A copy of the run whose fold0/meta.json holds `content` (JSON, or raw text when a str starting with '!')."""
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    meta = copy / "fold0" / "meta.json"
    meta.write_text(content[1:] if isinstance(content, str) and content.startswith("!") else json.dumps(content))
    return copy, meta


@pytest.mark.parametrize("content", list(BAD.values()), ids=list(BAD))
def test_bad_metadata_is_one_sentence_naming_the_file(run, tmp_path, content):
    copy, meta = with_meta(run[0], tmp_path, content)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(copy / "fold0" / "model.pt")
    one_sentence(str(err.value))
    assert str(meta) in str(err.value)


@pytest.mark.parametrize("raw", ["!{not json", "!", "!\x00\x01", '!{"model": "sequential", "image_size": NaN}'])
def test_metadata_that_is_not_json_is_one_sentence(run, tmp_path, raw):
    copy, meta = with_meta(run[0], tmp_path, raw)
    with pytest.raises(CheckpointError) as err:
        read_meta(copy / "fold0")
    one_sentence(str(err.value))


def test_a_huge_image_size_is_refused_before_any_model_is_built(run, tmp_path, monkeypatch):
    import bmteach.models as models

    copy, _ = with_meta(run[0], tmp_path, {**GOOD, "image_size": 60000})
    monkeypatch.setattr(models, "create_model", lambda *a, **k: pytest.fail("built a model for 60000 px"))
    with pytest.raises(CheckpointError, match=f"from 16 to {MAX_IMAGE_SIZE}"):
        load_checkpoint(copy / "fold0")


def test_good_metadata_still_loads_and_keeps_its_values(run, tmp_path):
    copy, _ = with_meta(run[0], tmp_path, {**GOOD, "mean": [0.5, 0.5, 0.5], "seed": 3, "extra": "ignored"})
    model, meta = load_checkpoint(copy / "fold0")
    assert (meta.image_size, meta.mean, meta.seed, meta.classes) == (32, [0.5, 0.5, 0.5], 3, list(ABBRS))


@pytest.mark.parametrize("name", ["null", "image_size 60000", "21 duplicate classes", "one-element mean"])
@pytest.mark.parametrize("source", ["--run", "--checkpoint"])
def test_predict_on_the_command_line_says_one_sentence(run, tmp_path, capsys, name, source):
    copy, meta = with_meta(run[0], tmp_path, BAD[name])
    image = next(p for p in run[1].rglob("*.jpg") if "masks" not in p.parts)
    target = str(copy) if source == "--run" else str(copy / "fold0" / "model.pt")
    status = cli.main(["predict", source, target, "--device", "cpu", str(image)])
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("error: ") and str(meta) in err
    one_sentence(err[len("error: "):])


@pytest.mark.parametrize("name", ["null", "a list", "image_size 'big'", "image_size 60000", "one-element mean",
                                  "21 duplicate classes"])
def test_explain_shows_the_sentence(run, tmp_path, monkeypatch, fresh_home, name):
    copy, meta = with_meta(run[0], tmp_path, BAD[name])
    monkeypatch.setenv(settings.DATA_ENV, str(run[1]))
    monkeypatch.setenv(settings.RUN_ENV, str(copy))
    at = AppTest.from_file(EXPLAIN, default_timeout=60)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and str(meta) in errors[0], errors
    one_sentence(errors[0])
