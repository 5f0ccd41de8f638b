"""The feature map: a run's penultimate features -> PCA (50 dimensions) -> UMAP (2 dimensions), cached on disk.

PCA first makes UMAP's neighbour search several times faster (10,000 x 2048: 38-54 s raw, 10-15 s after PCA on
these machines) and removes noise dimensions; UMAP is seeded (random_state), so the same features and
parameters give the same map. The 2-d coordinates are stored beside the features they come from
(BMTEACH_HOME/cache/features/<key>/embedding-<params>.npy) with the parameters and timings in a json file, so a
changed run or data set (a new feature key) never shows an old map. umap-learn and scikit-learn are imported
only when a map is computed.
"""
from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bmteach.errors import UserError
from bmteach.storage import atomic_write_bytes, atomic_write_json, read_json

MIN_POINTS = 5
_LOCK = threading.Lock()  # one UMAP at a time per process: it is memory- and CPU-hungry


@dataclass(frozen=True)
class EmbedParams:
    """Everything that shapes the map (recorded beside it)."""
    pca_dims: int = 50
    n_neighbors: int = 15
    min_dist: float = 0.1
    metric: str = "euclidean"
    seed: int = 0

    def key(self) -> str:
        return hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:10]


@dataclass
class Embedding:
    """2-d map coordinates: coords[i] belongs to rows.iloc[i] (the feature table's row i)."""
    coords: np.ndarray       # (n, 2) float32
    rows: pd.DataFrame       # row, path, label, fold
    info: dict               # parameters, sizes, timings
    path: Path


def reduce_pca(features: np.ndarray, dims: int, seed: int = 0) -> np.ndarray:
    """(n, F) -> (n, min(dims, F, n)) float32 by PCA; features already that narrow are only cast."""
    x = np.asarray(features, dtype=np.float32)
    keep = min(dims, x.shape[1], x.shape[0])
    if keep >= x.shape[1]:
        return x
    from sklearn.decomposition import PCA
    return PCA(n_components=keep, random_state=seed).fit_transform(x).astype(np.float32)


def embed_features(features: np.ndarray, params: EmbedParams = EmbedParams(), progress=None) -> np.ndarray:
    """(n, F) features -> (n, 2) float32 UMAP coordinates, deterministic for a given seed.
    progress(done, total, stage) is called before each of the two stages and at the end."""
    n = len(features)
    if n < MIN_POINTS:
        raise UserError(f"A feature map needs at least {MIN_POINTS} images; this run has {n}.")
    report = progress or (lambda *_: None)
    report(0, 2, "PCA")
    reduced = reduce_pca(features, params.pca_dims, params.seed)
    report(1, 2, "UMAP")
    import umap  # heavy (numba): only when a map is really computed
    reducer = umap.UMAP(n_components=2, n_neighbors=min(params.n_neighbors, n - 1), min_dist=params.min_dist,
                        metric=params.metric, random_state=params.seed, n_jobs=1)
    coords = reducer.fit_transform(reduced).astype(np.float32)
    report(2, 2, "done")
    return coords


def _files(folder: Path, params: EmbedParams) -> tuple[Path, Path]:
    stem = f"embedding-{params.key()}"
    return folder / f"{stem}.npy", folder / f"{stem}.json"


def load_embedding(table, params: EmbedParams = EmbedParams()) -> Embedding | None:
    """The cached map of a FeatureTable (bmteach.features), or None when it is not computed yet."""
    coords_path, info_path = _files(table.folder, params)
    if not (coords_path.is_file() and info_path.is_file()):
        return None
    coords = np.load(coords_path)
    if len(coords) != len(table.rows):
        return None
    return Embedding(coords, table.rows, read_json(info_path), coords_path)


def embed_table(table, params: EmbedParams = EmbedParams(), progress=None) -> Embedding:
    """The map of a FeatureTable: from its cache folder, or computed now and stored there."""
    with _LOCK:
        cached = load_embedding(table, params)
        if cached is not None:
            return cached
        started = time.perf_counter()
        coords = embed_features(table.features, params, progress)
        coords_path, info_path = _files(table.folder, params)
        buffer = _npy_bytes(coords)
        atomic_write_bytes(coords_path, buffer)
        info = {"params": asdict(params), "count": len(coords), "feature_width": int(table.features.shape[1]),
                "pca_dims_used": int(min(params.pca_dims, *table.features.shape)),
                "seconds": round(time.perf_counter() - started, 2), "features": str(table.folder)}
        atomic_write_json(info_path, info)
        return Embedding(coords, table.rows, info, coords_path)


def _npy_bytes(array: np.ndarray) -> bytes:
    import io
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def embed_run(run_dir: str | Path, data: str | Path | None = None, params: EmbedParams = EmbedParams(),
              progress=None, options=None) -> Embedding:
    """Features (cached or extracted) then the map (cached or computed). progress(done, total, stage) reports
    the extraction as 0-90% and the map as the rest."""
    from bmteach.features import run_features

    def feature_progress(done: int, total: int) -> None:
        if progress is not None:
            progress(0.9 * done / max(total, 1), 1.0, "features")

    def map_progress(done: int, total: int, stage: str) -> None:
        if progress is not None:
            progress(0.9 + 0.1 * done / max(total, 1), 1.0, stage)

    table = run_features(run_dir, data, progress=feature_progress, options=options)
    return embed_table(table, params, progress=map_progress)


def cached_run_embedding(run_dir: str | Path, data: str | Path | None = None,
                         params: EmbedParams = EmbedParams()) -> Embedding | None:
    """The map when both features and map are cached, else None (never computes)."""
    from bmteach.features import load_features, resolve_data_root

    table = load_features(run_dir, resolve_data_root(run_dir, data))
    return None if table is None else load_embedding(table, params)


def map_is_cached(run_dir: str | Path, data: str | Path | None = None, params: EmbedParams = EmbedParams()) -> bool:
    """True when features and map of this run and data are on disk (file checks only: cheap on every rerun)."""
    from bmteach.features import META, cache_folder, resolve_data_root

    folder = cache_folder(run_dir, resolve_data_root(run_dir, data))
    coords_path, info_path = _files(folder, params)
    return (folder / META).is_file() and coords_path.is_file() and info_path.is_file()
