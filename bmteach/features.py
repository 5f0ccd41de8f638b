"""Penultimate features of every image of a run's manifest, each from the fold model that held the image out.

The map of the feature space should show what a model learnt, not what it memorised: an image of fold k is
therefore passed through the fold-k model only (the one that never trained on it), like its out-of-fold
prediction. The features are stored once per (model stamp: checkpoints + manifest, data stamp) under
BMTEACH_HOME/cache/features/<key>/:

    features.npy   (n, F) float16, read back memory-mapped (171,374 x 2048 is 0.7 GB)
    norms.npy      (n,) float32 squared norms of the rows (a click's nearest neighbours in one pass)
    rows.csv       row,path,label,fold: row i of features.npy (row ids are the map's point ids)
    meta.json      run, data root, stamps, model, feature width, skipped images (count and examples per reason),
                   timings

Decoding and resizing run in DataLoader workers, which ship uint8 images (a quarter of float32's bytes through
shared and pinned memory); the float conversion and normalisation run on the device, the same arithmetic as
augment.eval_transform. On CUDA the forward pass uses large batches and bf16 autocast, and the features of one batch
are copied back while the next one runs. torch is imported inside the functions that compute, so reading a cached
table stays light.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from bmteach import runs
from bmteach.errors import UserError
from bmteach.explore import squared_norms
from bmteach.storage import atomic_write_json, cache_dir, read_json

FEATURES = "features.npy"
NORMS = "norms.npy"      # squared length of each feature row (float32): nearest neighbours in one pass
ROWS = "rows.csv"
META = "features.json"   # the cache entry's description (not a run-folder file: see runs.py)
FORMAT_VERSION = 3  # 2: skipped images as count + examples; 3: norms.npy
CPU_BATCH, CUDA_BATCH = 64, 512
SKIPPED_EXAMPLES = 10  # features.json names this many skipped images per reason (and counts them all)

_LOCKS: dict[str, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


@dataclass
class FeatureTable:
    """Features of a run's manifest images: features[i] belongs to rows.iloc[i] (row id i)."""
    features: np.ndarray          # (n, F) float16, memory-mapped
    rows: pd.DataFrame            # row, path, label, fold
    meta: dict
    folder: Path
    norms: np.ndarray | None = None   # (n,) float32 squared norms (explore.feature_distances)

    def __len__(self) -> int:
        return len(self.rows)


@dataclass
class ExtractOptions:
    """How to run the extraction (none of it changes the result beyond bf16 rounding on CUDA)."""
    device: str = "auto"
    batch_size: int | None = None      # default: CPU_BATCH, or CUDA_BATCH on a GPU
    workers: int | None = None         # default: _default_workers (0 off the main thread)
    autocast: bool = True              # bf16 on CUDA only
    extra: dict = field(default_factory=dict)


# --- where and under which key ----------------------------------------------------------------------------------

def data_stamp(data_root: str | Path) -> tuple:
    """Changes when the data folder is replaced or its class folders change (cheap: no scan of every file).
    A regenerated synthetic set carries a new synth.json, which is part of the stamp."""
    root = Path(data_root).resolve()
    parts: list = [str(root)]
    for p in [root, *sorted(d for d in root.iterdir() if d.is_dir())] if root.is_dir() else []:
        parts.append((p.name, p.stat().st_mtime_ns))
    description = root / "synth.json"
    if description.is_file():
        parts.append(hashlib.sha1(description.read_bytes()).hexdigest())
    return tuple(parts)


def model_stamp(run_dir: str | Path) -> tuple:
    """The part of runs.run_stamp that features depend on: the fold checkpoints and the manifest (re-evaluating
    a run rewrites its oof.csv and metrics.json, which must not throw the features away)."""
    stamp = runs.run_stamp(Path(run_dir).resolve())  # resolved: "models/demo" and its absolute path share a key
    return tuple(s for s in stamp if Path(s[0]).name in (runs.MODEL, runs.MANIFEST))


def cache_key(run_dir: str | Path, data_root: str | Path) -> str:
    stamp = json.dumps([FORMAT_VERSION, str(Path(run_dir).resolve()), model_stamp(run_dir), data_stamp(data_root)],
                       default=str)
    return hashlib.sha1(stamp.encode()).hexdigest()[:16]


def features_root() -> Path:
    path = cache_dir() / "features"
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_folder(run_dir: str | Path, data_root: str | Path) -> Path:
    return features_root() / cache_key(run_dir, data_root)


def resolve_data_root(run_dir: str | Path, data: str | Path | None = None) -> Path:
    """The folder the manifest's paths are relative to: `data` when given, else the run's config data_root when
    it exists, else the built-in synthetic set (the demo run was trained on it; generated on first use)."""
    if data is not None and str(data) != "default":
        root = Path(data).expanduser()
        if not root.is_dir():
            raise UserError(f"Data folder not found: {root}.")
        return root.resolve()
    configured = runs.read_config(run_dir).get("data_root")
    if configured and str(configured) != "default" and Path(configured).is_dir():
        return Path(configured).resolve()
    from bmteach.synth import ensure_default_dataset
    return ensure_default_dataset()


# --- reading the cache ------------------------------------------------------------------------------------------

def _read_folder(folder: Path) -> FeatureTable:
    rows = pd.read_csv(folder / ROWS, dtype={"path": str, "label": str}, keep_default_na=False)
    return FeatureTable(np.load(folder / FEATURES, mmap_mode="r"), rows, read_json(folder / META), folder,
                        np.load(folder / NORMS))


def load_features(run_dir: str | Path, data_root: str | Path) -> FeatureTable | None:
    """The cached features of this run on this data, or None when they are not computed yet (no torch)."""
    folder = cache_folder(run_dir, data_root)
    if not (folder / META).is_file():
        return None
    return _read_folder(folder)


def _lock_for(key: str) -> threading.Lock:
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(key, threading.Lock())


def run_features(run_dir: str | Path, data: str | Path | None = None, progress=None,
                 options: ExtractOptions | None = None) -> FeatureTable:
    """The run's feature table: from the cache, or computed now (progress(done, total) while it runs).
    Sessions of one process asking at once compute it once; another process computing the same key at the same
    time only costs duplicate work (the folder is swapped in atomically)."""
    root = resolve_data_root(run_dir, data)
    key = cache_key(run_dir, root)
    with _lock_for(key):
        cached = load_features(run_dir, root)
        if cached is not None:
            return cached
        return _compute_and_store(Path(run_dir), root, features_root() / key, progress, options or ExtractOptions())


# --- computing ------------------------------------------------------------------------------------------------

def _manifest_rows(run_dir: Path, root: Path, trained: list[int]) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    """The manifest rows that can be featurised, and the skipped ones by reason."""
    manifest = runs.read_manifest(run_dir)
    skipped: dict[str, list[str]] = {}
    untrained = ~manifest["fold"].astype(int).isin(trained)
    if untrained.any():
        skipped["fold model not trained yet"] = manifest.loc[untrained, "path"].tolist()
    manifest = manifest[~untrained]
    exists = np.array([(root / p).is_file() for p in manifest["path"]], dtype=bool)
    if not exists.any():
        raise UserError(f"None of the run's {len(manifest)} manifest images is in {root}; pass the data folder the "
                        "run was trained on (--data).")
    if not exists.all():
        skipped["file not found"] = manifest.loc[~exists, "path"].tolist()
    rows = manifest[exists][["path", "label", "fold"]].reset_index(drop=True)
    rows["fold"] = rows["fold"].astype(int)
    return rows, skipped


class _ImageDataset:
    """Decode + resize one manifest image to uint8 (3, S, S) (runs in DataLoader workers; `augment.normalize_batch`
    finishes eval_transform on the device); a broken file gives ok=False."""

    def __init__(self, root: Path, paths: list[str], size: int):
        from bmteach.augment import resize_transform
        self.root, self.paths, self.size, self.transform = root, paths, size, resize_transform(size)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        import torch

        from bmteach.images import load_image
        try:
            return self.transform(load_image(self.root / self.paths[i])), True
        except (UserError, OSError, ValueError):
            return torch.zeros(3, self.size, self.size, dtype=torch.uint8), False


MAX_GPU_WORKERS = 32


def _default_workers(device_type: str) -> int:
    """Decoding workers: none off the main thread (a web server's script thread: forking a multithreaded process
    can deadlock), else all cores but one on a GPU (a ResNeXt-50 forward in bf16 outruns a dozen decoders; the
    main process only feeds the GPU) and 1 on CPU (the forward pass needs the other cores). At most
    MAX_GPU_WORKERS: each worker holds two batches in shared memory (~190 MB at 512 x 250 px), so a 128-core host
    must not start 127 of them."""
    if threading.current_thread() is not threading.main_thread():
        return 0
    cores = os.cpu_count() or 1
    return min(MAX_GPU_WORKERS, max(1, cores - 1)) if device_type == "cuda" else (1 if cores > 1 else 0)


def fold_batches(folds: np.ndarray, batch_size: int) -> list[list[int]]:
    """Row indices in batches that never mix folds (each batch goes through one fold model), fold by fold, in
    row order within a fold. One loader over these serves every fold: its workers start once, not once a fold."""
    batches = []
    for fold in sorted(set(folds.tolist())):
        positions = np.flatnonzero(folds == fold)
        batches += [positions[s:s + batch_size].tolist() for s in range(0, len(positions), batch_size)]
    return batches


def _loader(dataset, batches: list[list[int]], workers: int, pin: bool):
    from torch.utils.data import DataLoader
    return DataLoader(dataset, batch_sampler=batches, num_workers=workers, pin_memory=pin,
                      persistent_workers=False, prefetch_factor=2 if workers else None)


def model_input(x, device, mean, std):
    """A batch of uint8 images from the workers -> normalised float32 on the device (channels_last on CUDA):
    copied as uint8, converted there. `mean`/`std`: float32 tensors on the device (see augment.normalize_batch)."""
    import torch

    from bmteach.augment import normalize_batch
    x = x.to(device, non_blocking=True)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)  # the float ops below keep the layout
    return normalize_batch(x, mean, std)


def forward_features(model, x, device, autocast: bool = True):
    """(n, F) float32 features of a batch; bf16 autocast on CUDA."""
    import torch
    x = x.to(device, non_blocking=True)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast and device.type == "cuda"):
        return model.forward_features(x).float()


def _extract(predictor, dataset, folds: np.ndarray, opts: ExtractOptions, out: np.ndarray, ok: np.ndarray,
             tick) -> None:
    """Fill out[i] with row i's features from the model of its fold (folds[i]), for every row of `dataset`."""
    import torch

    device = predictor.device
    models: dict = {}

    def model_of(fold: int):
        if fold not in models:
            models[fold] = predictor.model(fold)
            if device.type == "cuda":  # this Predictor is our own (not the app's shared one): converting is safe
                models[fold] = models[fold].to(memory_format=torch.channels_last)
        return models[fold]

    batches = fold_batches(folds, opts.batch_size or (CUDA_BATCH if device.type == "cuda" else CPU_BATCH))
    workers = _default_workers(device.type) if opts.workers is None else opts.workers
    mean, std = (torch.tensor(v, dtype=torch.float32, device=device) for v in (predictor.meta.mean, predictor.meta.std))
    pending = None

    def store(feats, idx: list[int], good) -> None:  # .cpu() waits for this batch only: the next one is queued
        out[idx] = feats.cpu().numpy().astype(np.float16)
        ok[idx] = good.numpy()
        tick(len(idx))

    for idx, (x, good) in zip(batches, _loader(dataset, batches, workers, device.type == "cuda")):
        feats = forward_features(model_of(int(folds[idx[0]])), model_input(x, device, mean, std), device,
                                 opts.autocast)
        if pending is not None:
            store(*pending)
        pending = feats, idx, good
    if pending is not None:
        store(*pending)


def _compute_and_store(run_dir: Path, root: Path, folder: Path, progress, opts: ExtractOptions) -> FeatureTable:
    from bmteach.infer import Predictor

    started = time.perf_counter()
    predictor = Predictor.from_run(run_dir, device=opts.device)
    rows, skipped = _manifest_rows(run_dir, root, predictor.folds)
    width = predictor.model(predictor.folds[0]).num_features
    tmp = folder.parent / f".{folder.name}.tmp-{os.getpid()}-{time.time_ns()}"
    tmp.mkdir(parents=True)
    try:
        out = np.lib.format.open_memmap(tmp / FEATURES, mode="w+", dtype=np.float16, shape=(len(rows), width))
        ok = np.zeros(len(rows), dtype=bool)
        done = [0]

        def tick(n: int) -> None:
            done[0] += n
            if progress is not None:
                progress(done[0], len(rows))

        dataset = _ImageDataset(root, rows["path"].tolist(), predictor.image_size)
        _extract(predictor, dataset, rows["fold"].to_numpy(), opts, out, ok, tick)
        out.flush()
        _finish(tmp, out, rows, ok, skipped, run_dir, root, predictor, width, time.perf_counter() - started)
        del out
        _swap_in(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return _read_folder(folder)


def _finish(tmp: Path, out: np.ndarray, rows: pd.DataFrame, ok: np.ndarray, skipped: dict, run_dir: Path,
            root: Path, predictor, width: int, seconds: float) -> None:
    """Drop undecodable images (rewriting the array only then), write rows.csv and meta.json."""
    if not ok.all():
        skipped["cannot be decoded"] = rows.loc[~ok, "path"].tolist()
        rows = rows[ok].reset_index(drop=True)
        np.save(tmp / "kept.npy", np.asarray(out[ok]))  # a new file: `out` still maps the old one
        os.replace(tmp / "kept.npy", tmp / FEATURES)
    rows.insert(0, "row", np.arange(len(rows)))
    rows.to_csv(tmp / ROWS, index=False)
    np.save(tmp / NORMS, squared_norms(np.load(tmp / FEATURES, mmap_mode="r")))
    atomic_write_json(tmp / META, {
        "format": FORMAT_VERSION, "run": str(run_dir.resolve()), "data_root": str(root),
        "model_stamp": [list(s) for s in model_stamp(run_dir)], "data_stamp": list(map(str, data_stamp(root))),
        "model": predictor.meta.model, "image_size": predictor.image_size, "width": width, "count": len(rows),
        "dtype": "float16", "device": str(predictor.device), "folds": predictor.folds,
        "skipped": {reason: {"count": len(paths), "examples": paths[:SKIPPED_EXAMPLES]}
                    for reason, paths in skipped.items()},
        "seconds": round(seconds, 2), "images_per_s": round(len(rows) / max(seconds, 1e-9), 1),
    })


def _swap_in(tmp: Path, folder: Path) -> None:
    """Rename the finished tmp folder into place. A complete folder already there means another process won the
    race (keep it); an incomplete one (a crash, an older layout) is moved aside and replaced."""
    try:
        tmp.rename(folder)
        return
    except OSError:
        if (folder / META).is_file():
            return
    stale = folder.parent / f".{folder.name}.stale-{os.getpid()}-{time.time_ns()}"
    folder.rename(stale)
    shutil.rmtree(stale, ignore_errors=True)
    tmp.rename(folder)


def skipped_summary(table: FeatureTable) -> str | None:
    """One sentence on the manifest images left out of the table, or None when none were."""
    skipped = table.meta.get("skipped") or {}
    if not skipped:
        return None
    parts = [f"{entry['count']:,} ({reason}, e.g. {entry['examples'][0]})" for reason, entry in skipped.items()]
    return "Images left out: " + ", ".join(parts) + "."
