"""Synthetic data sets on disk: the real layout (<ABBR>/<range>/<ABBR>_<n>.jpg), masks/ beside it, synth.json
saying what drew it; the app's default set under BMTEACH_HOME. Worker processes (spawn) import `_write_one`
from here."""
from __future__ import annotations

import io
import json
import multiprocessing
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from bmteach.classes import ABBRS
from bmteach.errors import UserError
from bmteach.storage import atomic_write_json, default_data_dir
from bmteach.synth.looks import PX_PER_UM, SIZE, get_look
from bmteach.synth.paint import cell_rng, generate_cell

GENERATOR = "bmteach.synth"
GENERATOR_VERSION = 5
RANGE_BLOCK = 1000        # images per range folder ("0001-1000"), as distributed

# --------------------------------------------------------------------------------------------------------------
# Data sets on disk
# --------------------------------------------------------------------------------------------------------------


def range_folder(n: int, total: int) -> str:
    """The range folder of image n (1-based) among `total`, as distributed: 0001-1000, 1001-2000, ..."""
    lo = (n - 1) // RANGE_BLOCK * RANGE_BLOCK + 1
    hi = min(lo + RANGE_BLOCK - 1, total)
    return f"{lo:04d}-{hi:04d}"


def image_relpath(abbr: str, n: int, total: int) -> str:
    return f"{abbr}/{range_folder(n, total)}/{abbr}_{n:05d}.jpg"


def _encode(image: Image.Image, mask: np.ndarray, quality: int) -> tuple[bytes, bytes]:
    jpg, png = io.BytesIO(), io.BytesIO()
    image.save(jpg, "JPEG", quality=quality, subsampling="4:2:0")
    Image.fromarray(mask, "L").save(png, "PNG", compress_level=1)
    return jpg.getvalue(), png.getvalue()


def _write_one(job: tuple) -> str:
    """Generate, encode and write one image and its mask (runs in a worker process when pooled)."""
    out, abbr, n, total, seed, difficulty, shift = job
    image, mask = generate_cell(abbr, cell_rng(seed, abbr, n), difficulty, shift)
    jpg, png = _encode(image, mask, get_look(shift).jpeg_quality)
    rel = image_relpath(abbr, n, total)
    img_path, mask_file = Path(out) / rel, Path(out) / "masks" / Path(rel).with_suffix(".png")
    img_path.parent.mkdir(parents=True, exist_ok=True)
    mask_file.parent.mkdir(parents=True, exist_ok=True)
    img_path.write_bytes(jpg)
    mask_file.write_bytes(png)
    return rel


def _check_request(per_class: int, classes, shift: str, difficulty: float) -> list[str]:
    classes = list(classes) if classes else list(ABBRS)
    unknown = [c for c in classes if c not in ABBRS]
    if unknown:
        raise UserError(f"Unknown class {unknown[0]!r}: expected one of {', '.join(ABBRS)}.")
    if per_class < 1:
        raise UserError("--per-class must be at least 1.")
    if not 0.0 <= difficulty <= 1.0:
        raise UserError("--difficulty must be between 0 and 1.")
    get_look(shift)
    return list(dict.fromkeys(classes))


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} exists and is not a folder.")
    if out.is_dir() and any(out.iterdir()) and not is_synthetic(out):
        raise UserError(f"{out} is not empty and holds no synthetic data set; choose an empty or new folder.")


def _pool_size(n_jobs: int, workers: int | None) -> int:
    if workers is not None:
        return max(1, workers)
    return min(os.cpu_count() or 1, 4) if n_jobs >= 200 else 1


def generate_dataset(out, per_class: int = 100, seed: int = 0, classes=None, shift: str = "none",
                     difficulty: float = 0.5, progress=None, workers: int | None = None) -> Path:
    """Write per_class synthetic cells of each class in the real layout, masks/ beside them, then synth.json.

    progress(done, total) is called as images are written. The bytes depend only on (seed, class, index,
    shift, difficulty), not on the number of worker processes.
    """
    out = Path(out)
    classes = _check_request(per_class, classes, shift, difficulty)
    _check_out(out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(str(out), abbr, n, per_class, seed, difficulty, shift)
            for abbr in classes for n in range(1, per_class + 1)]
    n_workers = _pool_size(len(jobs), workers)
    done = 0
    if n_workers == 1:
        results = map(_write_one, jobs)
    else:
        # spawn, not fork: the app calls this from a threaded server process
        pool = ProcessPoolExecutor(n_workers, mp_context=multiprocessing.get_context("spawn"))
        results = pool.map(_write_one, jobs, chunksize=8)
    try:
        for _ in results:
            done += 1
            if progress:
                progress(done, len(jobs))
    finally:
        if n_workers > 1:
            pool.shutdown()
    atomic_write_json(out / "synth.json", _description(per_class, seed, classes, shift, difficulty))
    return out


def _description(per_class, seed, classes, shift, difficulty) -> dict:
    return {
        "generator": GENERATOR, "version": GENERATOR_VERSION, "synthetic": True,
        "note": "Synthetic cells drawn by bmteach's generator, not real patients' cells: for teaching only.",
        "seed": seed, "per_class": per_class, "classes": classes, "shift": shift, "difficulty": difficulty,
        "count": per_class * len(classes), "image_size": SIZE, "px_per_um": round(PX_PER_UM, 3),
        "masks": "masks/<same relative path>.png: 0 background, 1 labelled cell's cytoplasm, 2 its nucleus",
    }


def read_description(root) -> dict | None:
    """synth.json of a generated folder, or None when the folder is not a synthetic data set."""
    path = Path(root) / "synth.json"
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and info.get("generator") == GENERATOR else None


def is_synthetic(root) -> bool:
    return read_description(root) is not None


def mask_path(root, relpath) -> Path | None:
    """The mask PNG of an image of a synthetic data set, or None (not synthetic, missing, or outside root)."""
    root = Path(root)
    if not is_synthetic(root):
        return None
    masks = (root / "masks").resolve()
    path = (masks / Path(relpath)).with_suffix(".png").resolve()
    if masks not in path.parents or not path.is_file():
        return None
    return path


DEFAULT_PER_CLASS = 100
DEFAULT_SEED = 0


def default_dataset_is_current() -> bool:
    """The default set exists, complete, and was drawn by this generator version."""
    info = read_description(default_data_dir()) or {}
    return info.get("count") == DEFAULT_PER_CLASS * len(ABBRS) and info.get("version") == GENERATOR_VERSION


def ensure_default_dataset(progress=None) -> Path:
    """The app's default data set: generated once under BMTEACH_HOME (temp folder, then an atomic rename)."""
    target = default_data_dir()
    if default_dataset_is_current():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}-{time.time_ns()}"
    try:
        generate_dataset(tmp, per_class=DEFAULT_PER_CLASS, seed=DEFAULT_SEED, progress=progress)
        if target.exists():   # stale or older version: move it aside, then swap in the new one
            old = target.parent / f".{target.name}.old-{os.getpid()}-{time.time_ns()}"
            target.rename(old)
            shutil.rmtree(old, ignore_errors=True)
        tmp.rename(target)
    except OSError:
        if not is_synthetic(target):   # another process won the race only if it left a complete set
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
