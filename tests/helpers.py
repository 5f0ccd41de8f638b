"""Helpers shared by test files (import them from here, never from another test file)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from bmteach.train import TrainConfig, build_or_read_manifest

COLOURS = {"BLA": (200, 40, 40), "LYT": (40, 200, 40), "EBO": (40, 40, 200), "NGS": (210, 210, 40)}
# Tiny and fast: 32 px, 4 colour-coded classes, batch 8, one CPU thread.
TINY = ["--model", "sequential", "--image-size", "32", "--batch-size", "8", "--lr", "0.003"]


def one_sentence(text: str) -> None:
    """What a person is told about bad input: one sentence, no traceback."""
    assert "Traceback" not in text and "\n" not in text.strip() and text.strip().endswith("."), text


def make_tiny_dataset(root: Path, per_class: int = 10, size: int = 32, seed: int = 0) -> Path:
    """Cells in the real layout (<ABBR>/<ABBR>_00001.jpg): one flat colour per class plus noise."""
    rng = np.random.default_rng(seed)
    for abbr, colour in COLOURS.items():
        folder = root / abbr
        folder.mkdir(parents=True)
        for i in range(per_class):
            pixels = np.clip(np.array(colour) + rng.normal(0, 20, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{abbr}_{i + 1:05d}.jpg", quality=95)
    return root


def state_dicts_equal(a: Path, b: Path) -> bool:
    sa = torch.load(a, map_location="cpu", weights_only=True)
    sb = torch.load(b, map_location="cpu", weights_only=True)
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def tiny_config(data: Path, **changes) -> TrainConfig:
    cfg = TrainConfig(model="sequential", data_root=str(data), image_size=32, num_folds=2, folds=[0, 1], epochs=3,
                      per_class=6, batch_size=8, lr=3e-3)
    for k, v in changes.items():
        setattr(cfg, k, v)
    return cfg


def prepared_run(data: Path, out: Path, cfg: TrainConfig) -> pd.DataFrame:
    from bmteach.train import prepare_run

    manifest = build_or_read_manifest(data, None, cfg.num_folds, cfg.seed)
    prepare_run(cfg, out, manifest, resume=False)
    return manifest


def train_in_child(data: Path, out: Path, *extra: str) -> int:
    """`python -m bmteach train` in a fresh process with one CPU thread, as the app launches it. Runs compared
    bit for bit with a launched (killed, stopped) run are made this way too, so no state of the test process
    (thread pools, libraries loaded by earlier tests) can tell them apart."""
    import os
    import subprocess
    import sys

    from bmteach.storage import REPO_ROOT

    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "bmteach", "train", "--data", str(data), "--out", str(out), *TINY, *extra]
    return subprocess.run(cmd, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                          timeout=600).returncode


def make_untrained_run(data: Path, run: Path, k: int = 2):
    """A k-fold run folder over an indexed data folder: manifest.csv (seed 0) and every fold's checkpoint with
    random weights (seed 0), 32 px: enough for pages and predictors, nothing learnt. Returns the manifest."""
    from bmteach.classes import ABBRS
    from bmteach.data import build_manifest, index, write_manifest
    from bmteach.models import ModelMeta, create_model, save_checkpoint

    manifest = build_manifest(index(data), k=k, seed=0)
    run.mkdir(parents=True, exist_ok=True)
    write_manifest(manifest, run / "manifest.csv")
    torch.manual_seed(0)
    for fold in range(k):
        meta = ModelMeta(model="sequential", image_size=32, fold=fold, epochs=1, epoch=1, complete=True)
        save_checkpoint(create_model("sequential", len(ABBRS)), meta, run / f"fold{fold}" / "model.pt")
    return manifest


def run_page(path: str, **params):
    """Run one page under Streamlit's AppTest (query parameters from params, 60 s per run) and fail the test on
    any exception the page raised. Returns the AppTest for further runs and inspection."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(path, default_timeout=60)
    at.query_params.update(params)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at
