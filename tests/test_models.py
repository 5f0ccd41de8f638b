"""Models share one interface; checkpoints load with weights_only=True and fail with one clear sentence."""
import json

import pytest
import torch

from bmteach.errors import CheckpointError
from bmteach.models import (ModelMeta, count_parameters, create_model, load_checkpoint, save_checkpoint)


def test_sequential_model_is_about_a_third_of_a_million_parameters():
    model = create_model("sequential")
    # 5 conv blocks (32, 64, 96, 128, 128 filters, 3x3, no bias) + batch norms + a 128 -> 21 head
    assert count_parameters(model) == 336_245
    x = torch.randn(2, 3, 64, 64)
    assert model(x).shape == (2, 21)
    assert model.forward_features(x).shape == (2, 128)


def test_resnext50_has_cardinality_32_and_2048_features():
    model = create_model("resnext50").eval()
    assert model.body.layer1[0].conv2.groups == 32
    assert model.cam_layer is model.body.layer4
    with torch.no_grad():
        assert model.forward_features(torch.randn(1, 3, 64, 64)).shape == (1, 2048)


def test_unknown_model_name_is_a_clear_error():
    with pytest.raises(CheckpointError, match="Unknown model"):
        create_model("vgg")


def test_checkpoint_round_trip_gives_identical_outputs(tmp_path):
    torch.manual_seed(0)
    model = create_model("sequential").eval()
    meta = ModelMeta(model="sequential", image_size=64, fold=2, seed=7, epoch=3)
    save_checkpoint(model, meta, tmp_path / "model.pt")
    loaded, loaded_meta = load_checkpoint(tmp_path / "model.pt")
    assert loaded_meta == meta
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    # weights_only=True works on the file itself
    assert isinstance(torch.load(tmp_path / "model.pt", weights_only=True), dict)


def test_corrupt_checkpoint_is_one_clear_error(tmp_path):
    save_checkpoint(create_model("sequential"), ModelMeta(model="sequential"), tmp_path / "model.pt")
    (tmp_path / "model.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path)


def test_checkpoint_that_does_not_match_its_meta(tmp_path):
    save_checkpoint(create_model("sequential", num_classes=21), ModelMeta(model="sequential"), tmp_path / "model.pt")
    meta = json.loads((tmp_path / "meta.json").read_text())
    meta["classes"] = meta["classes"][:7]
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="does not match"):
        load_checkpoint(tmp_path / "model.pt")


def test_missing_meta_and_missing_weights(tmp_path):
    with pytest.raises(CheckpointError, match="No meta.json"):
        load_checkpoint(tmp_path / "model.pt")
    (tmp_path / "meta.json").write_text(json.dumps({"model": "sequential"}))
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "model.pt")


def test_pickled_object_checkpoint_is_refused(tmp_path):
    """A checkpoint carrying arbitrary Python objects must not be unpickled (weights_only=True)."""
    save_checkpoint(create_model("sequential"), ModelMeta(model="sequential"), tmp_path / "model.pt")

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Evil()}, tmp_path / "model.pt")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path)
