"""Penultimate features: shapes, the held-out-fold rule, the cache (a second call does no torch work), skips,
and the command line. A tiny synthetic set (2 cells per class) and a two-fold run of untrained 32 px models."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from bmteach import features
from bmteach.classes import ABBRS
from bmteach.cli import main
from bmteach.data import build_manifest, index, write_manifest
from bmteach.images import load_image
from bmteach.infer import Predictor
from bmteach.models import ModelMeta, create_model, save_checkpoint
from bmteach.synth import generate_dataset


def make_run(root, data, folds=(0, 1), image_size=32):
    """A run folder over `data`: manifest with len(folds) folds, one untrained model per fold (distinct seeds)."""
    run = root / "run"
    run.mkdir()
    write_manifest(build_manifest(index(data), k=len(folds), seed=0), run / "manifest.csv")
    (run / "config.json").write_text(json.dumps({"model": "sequential", "data_root": str(data),
                                                 "classes": list(ABBRS), "num_folds": len(folds)}))
    for fold in folds:
        torch.manual_seed(100 + fold)  # different weights per fold: features tell the models apart
        meta = ModelMeta(model="sequential", image_size=image_size, fold=fold, epochs=1, epoch=1, complete=True)
        save_checkpoint(create_model("sequential", len(ABBRS)), meta, run / f"fold{fold}" / "model.pt")
    return run


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("feat")
    data = generate_dataset(root / "data", per_class=2, seed=0, workers=1)
    return data, make_run(root, data)


def opts():
    return features.ExtractOptions(device="cpu", workers=0, batch_size=16)


def test_shapes_rows_and_float16(tiny, fresh_home):
    data, run = tiny
    table = features.run_features(run, data, options=opts())
    manifest = pd.read_csv(run / "manifest.csv")
    assert table.features.shape == (len(manifest), 128)  # the sequential CNN's own width
    assert table.features.dtype == np.float16 and isinstance(table.features, np.memmap)
    assert list(table.rows.columns) == ["row", "path", "label", "fold"]
    assert table.rows["row"].tolist() == list(range(len(manifest)))
    assert sorted(table.rows["path"]) == sorted(manifest["path"])
    assert table.folder.parent == fresh_home.resolve() / "cache" / "features"
    assert table.meta["width"] == 128 and table.meta["skipped"] == {}
    expected = (np.asarray(table.features, dtype=np.float32) ** 2).sum(1)
    np.testing.assert_allclose(table.norms, expected, rtol=1e-5)


def test_each_image_gets_the_features_of_the_fold_model_that_held_it_out(tiny, fresh_home):
    data, run = tiny
    table = features.run_features(run, data, options=opts())
    predictor = Predictor.from_run(run, device="cpu")
    sample = table.rows.groupby("fold").head(4)
    images = [load_image(data / p) for p in sample["path"]]
    for (_, row), image in zip(sample.iterrows(), images):
        assert predictor.fold_of(row["path"]) == row["fold"]
        own = predictor.features([image], fold=int(row["fold"]))[0]
        other = predictor.features([image], fold=1 - int(row["fold"]))[0]
        stored = table.features[row["row"]].astype(np.float32)
        np.testing.assert_allclose(stored, own, rtol=2e-3, atol=2e-3)   # float16 storage
        assert np.abs(stored - other).max() > 1e-2                     # not the model that trained on it


def test_second_call_is_a_cache_hit_without_torch_work(tiny, fresh_home, monkeypatch):
    data, run = tiny
    first = features.run_features(run, data, options=opts())

    def refuse(*_a, **_k):
        raise AssertionError("torch work on a cache hit")

    monkeypatch.setattr(Predictor, "from_run", refuse)
    monkeypatch.setattr(Predictor, "features", refuse)
    second = features.run_features(run, data, options=opts())
    assert second.folder == first.folder
    np.testing.assert_array_equal(np.asarray(second.features), np.asarray(first.features))
    assert features.load_features(run, data) is not None


def test_new_checkpoint_changes_the_key(tiny, fresh_home):
    data, run = tiny
    before = features.cache_key(run, data)
    model = run / "fold0" / "model.pt"
    stat = model.stat()
    import os
    os.utime(model, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert features.cache_key(run, data) != before


def test_missing_images_and_untrained_folds_are_skipped_and_named(tmp_path, fresh_home):
    data = generate_dataset(tmp_path / "data", per_class=1, seed=1, classes=["BLA", "LYT", "EOS", "MON"], workers=1)
    run = make_run(tmp_path, data, folds=(0, 1))
    manifest = pd.read_csv(run / "manifest.csv")
    gone = manifest["path"].iloc[0]
    (data / gone).unlink()
    (run / "fold1" / "model.pt").unlink()   # fold 1 not trained yet
    table = features.run_features(run, data, options=opts())
    skipped = table.meta["skipped"]
    assert set(table.rows["fold"]) == {0}
    untrained = set(manifest.loc[manifest["fold"] == 1, "path"])
    assert skipped["fold model not trained yet"]["count"] == len(untrained)
    assert set(skipped["fold model not trained yet"]["examples"]) <= untrained
    if gone not in untrained:
        assert skipped["file not found"] == {"count": 1, "examples": [gone]}
    assert "Images left out" in features.skipped_summary(table)


def test_cli_features_writes_the_cache(tiny, fresh_home, capsys):
    data, run = tiny
    assert main(["features", str(run), "--data", str(data), "--device", "cpu", "--workers", "0"]) == 0
    out = capsys.readouterr().out
    assert "x 128 features" in out
    assert features.load_features(run, data) is not None
    assert main(["features", str(run / "nope")]) == 2


def test_relative_and_absolute_run_paths_share_a_key(tiny, monkeypatch):
    data, run = tiny
    monkeypatch.chdir(run.parent)
    assert features.cache_key("run", data) == features.cache_key(run.resolve(), data)


def test_an_incomplete_cache_folder_is_replaced(tiny, fresh_home):
    data, run = tiny
    stale = features.cache_folder(run, data)
    stale.mkdir(parents=True)
    (stale / "features.npy").write_bytes(b"half a file")   # a crash or an older layout: no description file
    table = features.run_features(run, data, options=opts())
    assert table.folder == stale and (stale / features.META).is_file()
    assert table.features.shape[1] == 128


def test_uint8_workers_give_the_features_of_the_float_pipeline(tiny, fresh_home):
    """Workers ship uint8 and the normalisation runs after the copy: on CPU the features are exactly those of
    eval_transform in the worker (the old pipeline), batch for batch."""
    from bmteach.augment import eval_transform

    data, run = tiny
    table = features.run_features(run, data, options=features.ExtractOptions(device="cpu", workers=1, batch_size=16))
    predictor = Predictor.from_run(run, device="cpu")
    transform = eval_transform(predictor.image_size, predictor.meta.mean, predictor.meta.std)
    for fold, part in table.rows.groupby("fold"):
        model = predictor.model(int(fold))
        for s in range(0, len(part), 16):   # the extraction's own batches: manifest order within a fold
            chunk = part.iloc[s:s + 16]
            x = torch.stack([transform(load_image(data / p)) for p in chunk["path"]])
            with torch.inference_mode():
                expected = model.forward_features(x).float().numpy().astype(np.float16)
            np.testing.assert_array_equal(np.asarray(table.features[chunk["row"].to_numpy()]), expected)


def test_an_undecodable_image_is_left_out_and_named(tmp_path, fresh_home):
    data = generate_dataset(tmp_path / "data", per_class=1, seed=2, classes=["BLA", "LYT", "EOS", "MON"], workers=1)
    run = make_run(tmp_path, data, folds=(0, 1))
    broken = pd.read_csv(run / "manifest.csv")["path"].iloc[1]
    (data / broken).write_bytes(b"\xff\xd8\xff not a JPEG after all")
    table = features.run_features(run, data, options=opts())
    assert broken not in set(table.rows["path"]) and len(table) == 3
    assert table.meta["skipped"]["cannot be decoded"] == {"count": 1, "examples": [broken]}
    assert table.rows["row"].tolist() == [0, 1, 2] and np.isfinite(np.asarray(table.features)).all()


def test_decoding_workers(monkeypatch):
    monkeypatch.setattr(features.os, "cpu_count", lambda: 16)
    assert features._default_workers("cuda") == 15      # all cores but one feed a GPU (no cap at 8)
    assert features._default_workers("cpu") == 1       # the forward pass needs the other cores
    monkeypatch.setattr(features.os, "cpu_count", lambda: 128)
    assert features._default_workers("cuda") == features.MAX_GPU_WORKERS == 32   # shared memory stays bounded
    monkeypatch.setattr(features.os, "cpu_count", lambda: 1)
    assert features._default_workers("cuda") == 1 and features._default_workers("cpu") == 0
    import threading
    result = []
    thread = threading.Thread(target=lambda: result.append(features._default_workers("cuda")))
    thread.start()
    thread.join()
    assert result == [0]                                 # a web server's script thread never forks


def test_fold_batches_never_mix_folds_and_cover_every_row_once():
    folds = np.array([1, 0, 1, 1, 0, 2, 1, 0, 1])
    batches = features.fold_batches(folds, batch_size=2)
    assert batches == [[1, 4], [7], [0, 2], [3, 6], [8], [5]]   # fold by fold, row order within a fold
    assert all(len(set(folds[b])) == 1 for b in batches)
    assert sorted(i for b in batches for i in b) == list(range(len(folds)))
