"""The feature map: PCA then UMAP, deterministic for a seed, cached beside the features with its parameters.
Small generated features (a few hundred points) keep UMAP fast; its first call in a process JIT-compiles (~15 s)."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from bmteach import embed
from bmteach.errors import UserError
from bmteach.features import FeatureTable


def blobs(n_per: int = 80, classes: int = 3, dim: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Well separated Gaussian clusters: a map should keep them apart."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 6, size=(classes, dim))
    x = np.concatenate([c + rng.normal(0, 1, size=(n_per, dim)) for c in centres]).astype(np.float16)
    return x, np.repeat(np.arange(classes), n_per)


def table_of(x: np.ndarray, folder) -> FeatureTable:
    folder.mkdir(parents=True, exist_ok=True)
    rows = pd.DataFrame({"row": np.arange(len(x)), "path": [f"p{i}.jpg" for i in range(len(x))],
                         "label": "BLA", "fold": 0})
    return FeatureTable(x, rows, {}, folder)


def test_pca_reduces_to_at_most_50_dims():
    x, _ = blobs(dim=80)
    assert embed.reduce_pca(x, 50).shape == (len(x), 50)
    assert embed.reduce_pca(x[:, :20], 50).shape == (len(x), 20)   # already narrow: only cast
    assert embed.reduce_pca(x, 50).dtype == np.float32


def test_same_seed_same_map_and_clusters_stay_apart():
    x, y = blobs()
    params = embed.EmbedParams(seed=3, n_neighbors=10)
    a = embed.embed_features(x, params)
    b = embed.embed_features(x, params)
    assert a.shape == (len(x), 2) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    centres = np.stack([a[y == k].mean(0) for k in range(3)])
    spread = max(np.linalg.norm(a[y == k] - centres[k], axis=1).mean() for k in range(3))
    gaps = [np.linalg.norm(centres[i] - centres[j]) for i in range(3) for j in range(i + 1, 3)]
    assert min(gaps) > 2 * spread


def test_embed_table_caches_coordinates_and_parameters(tmp_path, monkeypatch):
    x, _ = blobs(n_per=40)
    table = table_of(x, tmp_path / "feat")
    params = embed.EmbedParams(seed=1, n_neighbors=8)
    stages = []
    first = embed.embed_table(table, params, progress=lambda d, n, s: stages.append(s))
    assert stages[-1] == "done" and "UMAP" in stages
    info = json.loads(first.path.with_suffix(".json").read_text())
    assert info["params"] == {"pca_dims": 50, "n_neighbors": 8, "min_dist": 0.1, "metric": "euclidean", "seed": 1}
    assert info["count"] == len(x) and info["feature_width"] == 64

    monkeypatch.setattr(embed, "embed_features", lambda *a, **k: pytest.fail("recomputed a cached map"))
    again = embed.embed_table(table, params)
    np.testing.assert_array_equal(again.coords, first.coords)
    assert embed.load_embedding(table, embed.EmbedParams(seed=2)) is None  # other parameters: another file


def test_too_few_points_is_one_sentence():
    with pytest.raises(UserError, match="at least"):
        embed.embed_features(np.zeros((3, 8), dtype=np.float16))
