"""Predictor on a tiny two-fold run built here with save_checkpoint."""
from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from bmteach.classes import ABBRS
from bmteach.errors import CheckpointError
from bmteach.infer import Predictor
from bmteach.models import DATASET_MEAN, ModelMeta, create_model, load_checkpoint, save_checkpoint

SIZE = 32
PATHS = ["BLA/0001-1000/BLA_00001.jpg", "BLA/0001-1000/BLA_00002.jpg", "LYT/LYT_00001.jpg", "LYT/LYT_00002.jpg"]


def make_run(run: Path, folds=(0, 1), image_size: int = SIZE) -> Path:
    """fold<k>/model.pt + meta.json for each fold (different seeds), and a manifest.csv."""
    for k in folds:
        torch.manual_seed(100 + k)
        model = create_model("sequential", len(ABBRS))
        save_checkpoint(model, ModelMeta("sequential", image_size=image_size, fold=k, complete=True),
                        run / f"fold{k}" / "model.pt")
    pd.DataFrame({"path": PATHS, "label": ["BLA", "BLA", "LYT", "LYT"], "fold": [0, 1, 0, 1]}).to_csv(
        run / "manifest.csv", index=False)
    return run


def images(n: int = 5) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (40 + i, 50, 3), dtype=np.uint8)) for i in range(n)]


def by_hand(path: Path, ims: list[Image.Image]) -> np.ndarray:
    """Softmax of one checkpoint, preprocessing written out: resize, scale to 0-1, normalise."""
    model, meta = load_checkpoint(path)
    mean = torch.tensor(meta.mean).view(3, 1, 1)
    std = torch.tensor(meta.std).view(3, 1, 1)
    x = torch.stack([
        (torch.from_numpy(np.array(im.resize((SIZE, SIZE), Image.BILINEAR))).permute(2, 0, 1) / 255.0 - mean)
        / std for im in ims])
    with torch.no_grad():
        return torch.softmax(model(x), 1).numpy()


@pytest.fixture
def run(tmp_path) -> Path:
    return make_run(tmp_path / "run")


def test_from_run_loads_every_fold_with_its_preprocessing(run):
    p = Predictor.from_run(run, device="cpu")
    assert p.folds == [0, 1]
    assert p.classes == list(ABBRS) and p.image_size == SIZE
    x = p.preprocess(images(3))
    assert x.shape == (3, 3, SIZE, SIZE) and x.dtype == torch.float32


def test_preprocess_normalises_the_data_set_mean_colour_to_zero(run):
    p = Predictor.from_run(run, device="cpu")
    colour = tuple(round(c * 255) for c in DATASET_MEAN)
    x = p.preprocess([Image.new("RGB", (250, 250), colour), Image.new("L", (10, 10), 0)])
    assert x[0].abs().max() < 0.01                      # (0.5 / 255) / 0.177 at worst
    expected_black = -torch.tensor(DATASET_MEAN) / torch.tensor([0.242, 0.283, 0.177])
    assert torch.allclose(x[1, :, 0, 0], expected_black, atol=1e-4)   # grey input converted to RGB


def test_fold_of_reads_the_manifest(run):
    p = Predictor.from_run(run, device="cpu")
    assert p.fold_of("BLA/0001-1000/BLA_00001.jpg") == 0
    assert p.fold_of("LYT/LYT_00002.jpg") == 1
    assert p.fold_of(Path("LYT") / "LYT_00001.jpg") == 0
    assert p.fold_of("BLA\\0001-1000\\BLA_00002.jpg") == 1   # Windows separators
    assert p.fold_of("NGS/NGS_00001.jpg") is None


def test_predict_proba_per_fold_is_that_fold_model(run):
    p = Predictor.from_run(run, device="cpu")
    ims = images(5)
    for k in (0, 1):
        probs = p.predict_proba(ims, fold=k)
        assert probs.shape == (5, len(ABBRS))
        np.testing.assert_allclose(probs, by_hand(run / f"fold{k}" / "model.pt", ims), atol=2e-3)


def test_fold_none_averages_the_fold_models(run):
    p = Predictor.from_run(run, device="cpu")
    ims = images(5)
    mean = (p.predict_proba(ims, fold=0) + p.predict_proba(ims, fold=1)) / 2
    averaged = p.predict_proba(ims)
    np.testing.assert_allclose(averaged, mean, atol=1e-6)
    np.testing.assert_allclose(averaged.sum(1), 1.0, atol=1e-5)
    assert not np.allclose(p.predict_proba(ims, fold=0), p.predict_proba(ims, fold=1))
    np.testing.assert_allclose(p.predict_proba(ims, batch_size=2), averaged, atol=1e-6)  # batching changes nothing
    assert p.predict_proba([]).shape == (0, len(ABBRS))


def test_features_are_the_penultimate_layer(run):
    p = Predictor.from_run(run, device="cpu")
    ims = images(3)
    f = p.features(ims, fold=1)
    assert f.shape == (3, 128)
    with torch.no_grad():
        expected = p.model(1).forward_features(p.preprocess(ims)).numpy()
    np.testing.assert_allclose(f, expected, atol=1e-6)
    np.testing.assert_allclose(p.features(ims), p.features(ims, fold=0))  # None: the first fold, never a mix


def test_models_are_read_only_eval_models(run):
    p = Predictor.from_run(run, device="cpu")
    assert not p.model(0).training and not p.model(1).training
    with pytest.raises(CheckpointError, match="Fold 7"):
        p.predict_proba(images(1), fold=7)


def test_from_checkpoint_is_one_model_with_no_folds_of_data(run):
    p = Predictor.from_checkpoint(run / "fold1" / "model.pt", device="cpu")
    assert p.folds == [1]
    assert p.fold_of(PATHS[0]) is None
    ims = images(2)
    np.testing.assert_allclose(p.predict_proba(ims), by_hand(run / "fold1" / "model.pt", ims), atol=2e-3)


def test_missing_or_empty_runs_are_one_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        Predictor.from_run(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no trained fold"):
        Predictor.from_run(tmp_path / "empty")


def test_folds_that_disagree_on_preprocessing_are_refused(tmp_path):
    run = make_run(tmp_path / "run")
    make_run(tmp_path / "other", folds=(1,), image_size=48)
    for name in ("model.pt", "meta.json"):
        os.replace(tmp_path / "other" / "fold1" / name, run / "fold1" / name)
    with pytest.raises(CheckpointError, match="disagree"):
        Predictor.from_run(run)


def oof_frame(rows: list[tuple[str, str, str, int]], p_first: float) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=["path", "true", "pred", "fold"])
    for i, a in enumerate(ABBRS):
        df[f"prob_{a}"] = p_first if i == 0 else (1 - p_first) / (len(ABBRS) - 1)
    return df


def test_oof_reads_the_runs_own_predictions(run):
    p = Predictor.from_run(run, device="cpu")
    assert p.oof(PATHS[0]) is None                       # nothing predicted yet
    oof_frame([(PATHS[0], "BLA", "BLA", 0), (PATHS[2], "LYT", "BLA", 0)], 0.8).to_csv(
        run / "fold0" / "oof.csv", index=False)          # fold 0 finished: its own file
    row = p.oof(PATHS[0])
    assert (row.true, row.pred, row.fold) == ("BLA", "BLA", 0)
    assert row.probs["BLA"] == pytest.approx(0.8) and len(row.probs) == len(ABBRS)
    assert p.oof(PATHS[1]) is None                       # fold 1 has not finished
    assert p.oof("BLA/BLA_99999.jpg") is None


def test_oof_of_a_run_shipped_with_only_its_joined_file(tmp_path):
    run = make_run(tmp_path / "shipped")
    oof_frame([(PATHS[0], "BLA", "LYT", 0), (PATHS[1], "BLA", "BLA", 1)], 0.3).to_csv(run / "oof.csv", index=False)
    p = Predictor.from_run(run, device="cpu")
    assert p.oof(PATHS[0]).pred == "LYT" and p.oof(PATHS[1]).fold == 1


def test_concurrent_predictions_equal_serial_ones(run):
    p = Predictor.from_run(run, device="cpu")
    ims = images(4)
    expected = p.predict_proba(ims)
    results, errors = [], []

    def work():
        try:
            for _ in range(5):
                results.append(p.predict_proba(ims))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 20
    for r in results:
        np.testing.assert_allclose(r, expected, atol=1e-6)


def test_choose_fold_picks_the_held_out_fold_or_averages(run):
    p = Predictor.from_run(run, device="cpu")
    held_out = p.choose_fold("LYT/LYT_00002.jpg")                  # held out in fold 1
    assert (held_out.fold, held_out.map_fold, held_out.usable) == (1, 1, True)
    assert "fold-1 model, which did not train on this image" in held_out.reason
    upload = p.choose_fold(None)
    assert (upload.fold, upload.map_fold, upload.usable) == (None, 0, True)
    assert upload.reason == "the average of the 2 fold models (an upload belongs to no fold)"
    outside = p.choose_fold("BLA/elsewhere.jpg")
    assert outside.fold is None and "not in the run's manifest" in outside.reason
    assert p.data_paths == sorted(PATHS)


def test_choose_fold_refuses_an_image_whose_fold_is_not_trained(tmp_path):
    p = Predictor.from_run(make_run(tmp_path / "half", folds=(0,)), device="cpu")
    choice = p.choose_fold("LYT/LYT_00002.jpg")                    # fold 1 has no model
    assert not choice.usable and choice.fold is None
    assert "held out in fold 1, whose model is not trained yet" in choice.reason
