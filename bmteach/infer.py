"""Inference: a `Predictor` for a run folder (one model per fold) or one checkpoint (`predict` on the CLI uses it).

Honest by construction: an image of the data set is predicted by the fold model that never trained on it
(`fold_of(relpath)` reads run/manifest.csv, then `predict_proba(images, fold=k)`), or read back from the run's
out-of-fold predictions (`oof(relpath)`, run/oof.csv, no recomputation). An upload belongs to no fold: with
`fold=None` the fold models' probabilities are averaged.

Safe under many sessions of one server process: after construction a Predictor is read-only (models in eval
mode, used under torch.inference_mode, which never mutates them); the only lazily filled state, the oof table,
sits behind a lock.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
import torch
from PIL import Image

from bmteach import runs
from bmteach.augment import eval_transform
from bmteach.errors import CheckpointError
from bmteach.models import CellNet, ModelMeta, load_checkpoint, pick_device

BATCH_SIZE = 32


@dataclass(frozen=True)
class OofPrediction:
    """One row of run/oof.csv: the prediction made by the fold model that did not train on the image."""
    path: str
    true: str
    pred: str
    fold: int
    probs: dict[str, float]


@dataclass(frozen=True)
class FoldChoice:
    """The model that may answer for one image: `fold` for probabilities (None: the fold models' average),
    `map_fold` for saliency maps and features, `usable` False when no model may answer; `reason` says why."""
    fold: int | None
    map_fold: int | None
    usable: bool
    reason: str


def _normalise_relpath(relpath: str | Path) -> str:
    """Manifest paths are POSIX and relative to the data root; accept Windows separators and a leading ./"""
    return str(PurePosixPath(str(relpath).replace("\\", "/")))


def _check_same_preprocessing(metas: list[ModelMeta], run_dir: Path) -> None:
    """Averaging fold models only makes sense when they share classes and preprocessing."""
    first = metas[0]
    for meta in metas[1:]:
        if (meta.classes, meta.image_size, list(meta.mean), list(meta.std)) != (
                first.classes, first.image_size, list(first.mean), list(first.std)):
            raise CheckpointError(f"The fold models in {run_dir} disagree on classes or preprocessing "
                                  f"(fold {meta.fold} vs fold {first.fold}); retrain or remove the odd fold.")


class Predictor:
    """Fold models of a run (or one checkpoint) with their preprocessing. Build with from_run/from_checkpoint."""

    def __init__(self, models: dict[int, CellNet], meta: ModelMeta, device: torch.device,
                 fold_by_path: dict[str, int] | None = None, run_dir: Path | None = None):
        self._models = models                      # fold -> model (eval mode, read-only)
        self.meta = meta
        self.classes: list[str] = list(meta.classes)
        self.image_size: int = meta.image_size
        self.device = device
        self.run_dir = run_dir
        self._fold_by_path = fold_by_path or {}
        self._transform = eval_transform(meta.image_size, meta.mean, meta.std)
        self._oof_lock = threading.Lock()
        self._oof: tuple[tuple, dict[str, OofPrediction]] | None = None  # (files and mtimes, rows by path)

    # --- construction ------------------------------------------------------------------------------------

    @classmethod
    def from_run(cls, run_dir: str | Path, device: str = "auto") -> "Predictor":
        """Every fold<k>/model.pt of a run; run/manifest.csv tells which fold each data-set image belongs to."""
        run_dir = Path(run_dir)
        if not run_dir.is_dir():
            raise CheckpointError(f"Run folder not found: {run_dir}.")
        folds = runs.fold_checkpoint_dirs(run_dir)
        if not folds:
            raise CheckpointError(f"{run_dir} holds no trained fold (no fold<k>/{runs.MODEL}); train it first.")
        dev = pick_device(device)
        models, metas = {}, []
        for k, d in folds:
            models[k], meta = load_checkpoint(d / runs.MODEL, device=dev)
            metas.append(meta)
        _check_same_preprocessing(metas, run_dir)
        fold_by_path = {}
        if (run_dir / runs.MANIFEST).is_file():
            df = runs.read_run_manifest(run_dir)
            fold_by_path = {_normalise_relpath(p): int(f) for p, f in zip(df["path"], df["fold"])}
        return cls(models, metas[0], dev, fold_by_path, run_dir)

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "auto") -> "Predictor":
        """One model (model.pt with meta.json beside it); it belongs to no run, so fold_of is always None."""
        dev = pick_device(device)
        model, meta = load_checkpoint(path, device=dev)
        return cls({meta.fold if meta.fold is not None else 0: model}, meta, dev)

    # --- folds ---------------------------------------------------------------------------------------------

    @property
    def folds(self) -> list[int]:
        return sorted(self._models)

    @property
    def data_paths(self) -> list[str]:
        """The data-set images of the run's manifest (relative paths), in sorted order; empty without one."""
        return sorted(self._fold_by_path)

    def fold_of(self, relpath: str | Path) -> int | None:
        """The fold a data-set image (path relative to the data root) was held out in; None when unknown."""
        return self._fold_by_path.get(_normalise_relpath(relpath))

    def model(self, fold: int | None = None) -> CellNet:
        """The model of one fold. fold=None (an upload) gives the first fold's model: maps and features of
        different fold models live in different spaces, so they are never averaged."""
        if fold is None:
            return self._models[self.folds[0]]
        if fold not in self._models:
            raise CheckpointError(f"Fold {fold} of this run has no trained model yet "
                                  f"(trained folds: {', '.join(map(str, self.folds))}).")
        return self._models[fold]

    # --- inference -------------------------------------------------------------------------------------------

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        """PIL images -> (n, 3, S, S) normalised tensor on the predictor's device (the checkpoint's transform).
        Built outside inference mode, so the explain functions can take gradients with respect to it."""
        tensors = [self._transform(im if im.mode == "RGB" else im.convert("RGB")) for im in images]
        return torch.stack(tensors).to(self.device)

    def _batches(self, images: list[Image.Image], batch_size: int):
        for start in range(0, len(images), batch_size):
            yield self.preprocess(images[start:start + batch_size])

    def predict_proba(self, images: list[Image.Image], fold: int | None = None,
                      batch_size: int = BATCH_SIZE) -> np.ndarray:
        """(n, C) class probabilities in `classes` order: one fold's model, or with fold=None the mean of the
        fold models' probabilities (an upload, seen by no fold in training)."""
        models = list(self._models.values()) if fold is None else [self.model(fold)]
        if not images:
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        out = []
        with torch.inference_mode():
            for x in self._batches(images, batch_size):
                probs = torch.stack([torch.softmax(m(x).float(), dim=1) for m in models]).mean(0)
                out.append(probs.cpu().numpy())
        return np.concatenate(out)

    def choose_fold(self, relpath: str | Path | None = None) -> "FoldChoice":
        """Which model may honestly answer for an image, and the sentence that says why.

        A data-set image of the run goes to the fold model that held it out (an out-of-fold prediction); if
        that fold is not trained yet, every trained model learnt from the image and none may answer. An image
        outside the manifest, or an upload, belongs to no fold: the fold models' probabilities are averaged and
        the maps explain the first fold's model (maps of different models are never averaged)."""
        n = len(self.folds)
        fold = self.fold_of(relpath) if relpath is not None else None
        if fold is not None and fold not in self._models:
            return FoldChoice(None, None, False,
                              f"This image was held out in fold {fold}, whose model is not trained yet; every trained "
                              "fold model learnt from it, so none can predict it honestly. Pick another image, or "
                              "come back when the run is complete.")
        if fold is not None:
            return FoldChoice(fold, fold, True,
                              f"the fold-{fold} model, which did not train on this image: the run held it out in "
                              f"fold {fold} (an out-of-fold prediction)")
        why = (": this image is not in the run's manifest, so no fold model trained on it" if relpath is not None
               else " (an upload belongs to no fold)")
        return FoldChoice(None, self.folds[0], True, f"the average of the {n} fold models{why}")

    def features(self, images: list[Image.Image], fold: int | None = None,
                 batch_size: int = BATCH_SIZE) -> np.ndarray:
        """(n, F) penultimate features of one fold's model (fold=None: the first fold, see `model`)."""
        model = self.model(fold)
        if not images:
            return np.zeros((0, model.num_features), dtype=np.float32)
        with torch.inference_mode():
            out = [model.forward_features(x).float().cpu().numpy() for x in self._batches(images, batch_size)]
        return np.concatenate(out)

    # --- out-of-fold predictions already in the run ----------------------------------------------------------

    def oof(self, relpath: str | Path) -> OofPrediction | None:
        """The run's own out-of-fold prediction for a data-set image, read from its oof.csv files (no
        recomputation); None when the run has none for it."""
        if self.run_dir is None:
            return None
        return self._oof_rows().get(_normalise_relpath(relpath))

    def _oof_rows(self) -> dict[str, OofPrediction]:
        key = runs.run_stamp(self.run_dir)
        with self._oof_lock:  # re-read only when training or evaluate rewrote a file
            if self._oof is None or self._oof[0] != key:
                table = runs.read_oof(self.run_dir)
                self._oof = (key, {} if table is None else oof_rows(table))
            return self._oof[1]


def oof_rows(df: pd.DataFrame) -> dict[str, OofPrediction]:
    """An out-of-fold table (path,true,pred,fold,prob_<ABBR>...) -> {relpath: OofPrediction}."""
    prob_cols = [c for c in df.columns if c.startswith("prob_")]
    probs = df[prob_cols].to_numpy(dtype=float)
    names = [c[len("prob_"):] for c in prob_cols]
    rows = {}
    for i, (p, t, pr, f) in enumerate(zip(df["path"], df["true"], df["pred"], df["fold"])):
        rel = _normalise_relpath(p)
        rows[rel] = OofPrediction(rel, t, pr, int(f), dict(zip(names, probs[i].tolist())))
    return rows


