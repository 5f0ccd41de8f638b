"""Out-of-distribution warning: is an image unlike the cells a run learnt from?

The score is a class-conditional Mahalanobis distance (Lee et al. 2018) in the penultimate feature space of one
fold model of the run, the reference fold (the first trained one: the model Explain maps an upload with):

- fit: features of that model's own TRAINING images (manifest images of the other folds, at most
  `max_fit_per_class` per class, seeded), class means and one shared within-class covariance, shrunk towards a
  multiple of the identity; the top `max_dims` principal directions are whitened, the rest counted through their
  mean variance (a residual term), so a 2048-wide ResNeXt feature stays a small file;
- calibrate: the reference fold's HELD-OUT images (bmteach.features: each image through the fold model that
  never trained on it): the threshold is the 95th percentile of their scores, so about 5% of in-distribution
  images are flagged; two seeded halves check that share (each half's threshold applied to the other half).

score = sqrt(min over classes of the squared distance / feature width), plus a guard on two image statistics
(log grey-level sd and log variance of the Laplacian: contrast and texture): how far an image lies beyond the
99th percentile of the training images' Mahalanobis distance in those two, so an image with no texture or
contrast like any training cell (a uniform patch, a blank scan) scores high even when its pooled features land
near a class (the artefact class is mostly background). Higher = more unusual. The threshold is set on the
combined score. It is stored beside the run (runs.OOD) as JSON and read back without torch.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bmteach import runs
from bmteach.errors import UserError
from bmteach.storage import atomic_write_json, read_json

FORMAT = 2
QUANTILE = 0.95
WARNING = ("This image is unlike the {what} this model learnt from; its answer is a guess.")


# --- the score ----------------------------------------------------------------------------------------------

@dataclass
class OodModel:
    """A fitted score: class means, principal directions and their spreads, the flag threshold."""
    fold: int
    means: np.ndarray        # (C, F) class means of the training features
    basis: np.ndarray        # (F, k) orthonormal principal directions of the within-class covariance
    spread: np.ndarray       # (k,) standard deviations along them (after shrinkage)
    rest_var: float          # mean variance of the directions left out (k < F)
    threshold: float
    info: dict
    stat_mean: np.ndarray | None = None   # (2,) training images' log contrast and log texture
    stat_prec: np.ndarray | None = None   # (2, 2) their inverse covariance
    stat_q: float = 0.0                   # 99th percentile of the training images' distance in those two

    def stat_excess(self, stats: np.ndarray) -> np.ndarray:
        """How far (in Mahalanobis units) each image's contrast/texture lies beyond the training images' 99th
        percentile; 0 for most in-distribution images."""
        if self.stat_mean is None or stats is None:
            return np.zeros(len(stats) if stats is not None else 0)
        return np.clip(self.stat_distance(stats) - self.stat_q, 0, None)

    def stat_distance(self, stats: np.ndarray) -> np.ndarray:
        """(n,) Mahalanobis distance of (n, 2) image statistics from the training images'."""
        d = np.asarray(stats, float) - self.stat_mean
        return np.sqrt(np.einsum("ni,ij,nj->n", d, self.stat_prec, d))

    def score(self, features: np.ndarray, stats: np.ndarray | None = None) -> np.ndarray:
        """(n,) scores of (n, F) features (and (n, 2) image statistics, see image_stats); higher = further from
        every class of the training set."""
        x = np.asarray(features, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.means.shape[1]:
            raise UserError(f"Features of width {x.shape[-1]} do not fit this score (width {self.means.shape[1]}).")
        out = np.empty(len(x), dtype=np.float64)
        for start in range(0, len(x), 256):   # (n, C, F) blocks stay small
            d = x[start:start + 256, None, :] - self.means[None]
            p = d @ self.basis
            inside = ((p / self.spread) ** 2).sum(-1)
            resid = np.clip((d ** 2).sum(-1) - (p ** 2).sum(-1), 0, None) / max(self.rest_var, 1e-12)
            total = inside + (resid if self.basis.shape[1] < self.basis.shape[0] else 0.0)
            out[start:start + 256] = np.sqrt(total.min(1) / self.means.shape[1])
        return out if stats is None else out + self.stat_excess(stats)

    def flag(self, scores: np.ndarray) -> np.ndarray:
        return np.asarray(scores) > self.threshold


def fit_score(features: np.ndarray, labels: np.ndarray, shrink: float = 0.1, max_dims: int = 128) -> OodModel:
    """Class means and a shrunk shared covariance of training features (threshold set later)."""
    x = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels)
    classes = sorted(set(labels.tolist()))
    if len(x) < 2 or len(classes) < 1:
        raise UserError("Too few training images to fit the out-of-distribution score.")
    means = np.stack([x[labels == c].mean(0) for c in classes])
    resid = x - means[np.searchsorted(classes, labels)]
    width = x.shape[1]
    cov = resid.T @ resid / max(len(x) - len(classes), 1)
    cov = (1 - shrink) * cov + shrink * np.trace(cov) / width * np.eye(width)
    evals, evecs = np.linalg.eigh(cov)
    order = np.argsort(-evals)
    k = min(max_dims, width)
    keep, rest = order[:k], order[k:]
    rest_var = float(evals[rest].mean()) if len(rest) else float(evals[keep].min())
    return OodModel(fold=-1, means=means.astype(np.float32), basis=evecs[:, keep].astype(np.float32),
                    spread=np.sqrt(np.clip(evals[keep], 1e-12, None)).astype(np.float32), rest_var=rest_var,
                    threshold=float("inf"), info={"classes": [str(c) for c in classes]})


def image_stats(images: list) -> np.ndarray:
    """(n, 2) log grey-level sd and log Laplacian variance of PIL images at 128 px (contrast and texture)."""
    from PIL import Image
    from scipy import ndimage
    out = []
    for im in images:
        grey = np.asarray(im.convert("L").resize((128, 128), Image.BILINEAR), dtype=np.float64)
        out.append((np.log1p(grey.std()), np.log1p(ndimage.laplace(grey).var())))
    return np.asarray(out, dtype=np.float64).reshape(-1, 2)


def fit_stats(model: OodModel, stats: np.ndarray) -> None:
    """The contrast/texture guard from the training images' statistics."""
    stats = np.asarray(stats, float)
    model.stat_mean = stats.mean(0)
    cov = np.cov(stats.T) + 1e-6 * np.eye(2)
    model.stat_prec = np.linalg.inv(cov)
    model.stat_q = float(np.quantile(model.stat_distance(stats), 0.99))


def calibrate(model: OodModel, scores: np.ndarray, quantile: float = QUANTILE) -> float:
    """The threshold above which `1 - quantile` of these (held-out, in-distribution) scores lie."""
    model.threshold = float(np.quantile(np.asarray(scores, float), quantile))
    return model.threshold


# --- stored beside the run ----------------------------------------------------------------------------------

def _round(a: np.ndarray) -> list:
    return np.asarray(a, dtype=np.float32).round(7).tolist()


def save(model: OodModel, run_dir: str | Path) -> Path:
    path = Path(run_dir) / runs.OOD
    atomic_write_json(path, {
        "format": FORMAT, "method": "class-conditional Mahalanobis distance in penultimate features",
        "fold": model.fold, "threshold": model.threshold, "rest_var": model.rest_var,
        "means": _round(model.means), "basis": _round(model.basis), "spread": _round(model.spread),
        "stat_mean": None if model.stat_mean is None else model.stat_mean.tolist(),
        "stat_prec": None if model.stat_prec is None else model.stat_prec.tolist(), "stat_q": model.stat_q,
        **model.info})
    return path


def load(run_dir: str | Path) -> OodModel | None:
    """The run's stored score, or None when it has none (or an unreadable/old one)."""
    path = Path(run_dir) / runs.OOD
    if not path.is_file():
        return None
    try:
        d = read_json(path)
        if d.get("format") != FORMAT:
            return None
        arrays = ("means", "basis", "spread", "threshold", "rest_var", "fold", "stat_mean", "stat_prec", "stat_q")
        info = {k: v for k, v in d.items() if k not in arrays}
        stat = d.get("stat_mean") is not None
        return OodModel(int(d["fold"]), np.asarray(d["means"], np.float32), np.asarray(d["basis"], np.float32),
                        np.asarray(d["spread"], np.float32), float(d["rest_var"]), float(d["threshold"]), info,
                        np.asarray(d["stat_mean"], float) if stat else None,
                        np.asarray(d["stat_prec"], float) if stat else None, float(d.get("stat_q") or 0.0))
    except (OSError, ValueError, KeyError, TypeError):
        return None


# --- fitting a run ------------------------------------------------------------------------------------------

def _load_images(root: Path, paths: list[str]):
    from bmteach.images import load_image
    images, kept = [], []
    for p in paths:
        try:
            images.append(load_image(root / p))
            kept.append(p)
        except (UserError, OSError, ValueError):
            continue
    return images, kept


def _features_of(predictor, images: list, fold: int, chunk: int = 64) -> np.ndarray:
    parts = [predictor.features(images[i:i + chunk], fold=fold) for i in range(0, len(images), chunk)]
    return np.concatenate(parts) if parts else np.zeros((0, predictor.model(fold).num_features), np.float32)


def fit_run(run_dir: str | Path, data: str | Path | None = None, max_fit_per_class: int = 200, seed: int = 0,
            device: str = "auto", progress=None) -> OodModel:
    """Fit, calibrate, check and store the run's score (runs.OOD); returns it. progress(stage) hears each step."""
    import pandas as pd

    from bmteach.features import resolve_data_root, run_features
    from bmteach.infer import Predictor

    started = time.perf_counter()
    run_dir = Path(run_dir)
    say = progress or (lambda stage: None)
    root = resolve_data_root(run_dir, data)
    predictor = Predictor.from_run(run_dir, device=device)
    fold = predictor.folds[0]
    manifest = runs.read_manifest(run_dir)
    rng = np.random.default_rng(seed)
    train = manifest[manifest["fold"].astype(int) != fold]
    picked = []
    for _, group in train.groupby("label", sort=True):
        order = rng.permutation(len(group))[:max_fit_per_class]
        picked.append(group.iloc[np.sort(order)])
    train = pd.concat(picked) if picked else train
    say(f"training features of the fold-{fold} model ({len(train)} images)")
    images, kept = _load_images(root, train["path"].tolist())
    if not images:
        raise UserError(f"None of the run's training images is in {root}; pass the data folder it was trained on.")
    labels = train.set_index("path").loc[kept, "label"].to_numpy()
    model = fit_score(_features_of(predictor, images, fold), labels)
    model.fold = fold
    fit_stats(model, image_stats(images))
    del images
    say("held-out features (bmteach.features, cached)")
    table = run_features(run_dir, root)
    held = np.flatnonzero(table.rows["fold"].to_numpy() == fold)
    if len(held) < 4:
        raise UserError(f"Fold {fold} holds out too few images ({len(held)}) to calibrate the score.")
    order = rng.permutation(len(held))            # positions among the held-out rows
    cal, check = np.sort(order[:len(order) // 2]), np.sort(order[len(order) // 2:])
    say(f"contrast and texture of the {len(held)} held-out images")
    scores = held_out_scores(model, table, root)
    check_share = _cross_checked_share(scores[cal], scores[check])
    threshold = calibrate(model, scores)          # the stored threshold uses every held-out image
    model.info.update({
        "quantile": QUANTILE, "fit_images": len(kept), "calibration_images": len(held),
        "check_images": len(held), "check_flagged_share": round(check_share, 4),
        "check_note": "each half's threshold applied to the other half of the same held-out fold, averaged",
        "trained_on": trained_on(run_dir).sentence, "seed": seed, "seconds": round(time.perf_counter() - started, 1),
        "threshold_note": f"{QUANTILE:.0%} of fold {fold}'s held-out images score at or "
                          f"below {threshold:.4g}"})
    save(model, run_dir)
    return model


def held_out_scores(model: OodModel, table, root: Path) -> np.ndarray:
    """Scores of the reference fold's held-out rows of a feature table (bmteach.features), in row order: their
    features through the fold model that never trained on them, and their contrast/texture read from `root` (an
    unreadable file counts as usual). What the threshold is set on."""
    held = np.flatnonzero(table.rows["fold"].to_numpy() == model.fold)
    paths = table.rows["path"].iloc[held].to_numpy()
    images, kept = _load_images(Path(root), paths.tolist())
    stats = np.tile(model.stat_mean, (len(held), 1))
    stats[np.isin(paths, kept)] = image_stats(images)
    return model.score(np.asarray(table.features[held], dtype=np.float32), stats)


def _cross_checked_share(a: np.ndarray, b: np.ndarray) -> float:
    """The share flagged on images that did not set the threshold: a's threshold on b and b's on a, averaged
    (two estimates instead of one, each from half the images; the 95th percentile of ~200 scores wobbles)."""
    over_b = float((b > np.quantile(a, QUANTILE)).mean())
    over_a = float((a > np.quantile(b, QUANTILE)).mean())
    return (over_a + over_b) / 2


def ensure(run_dir: str | Path, data: str | Path | None = None, **kwargs) -> OodModel:
    """The stored score, fitted now when the run has none."""
    return load(run_dir) or fit_run(run_dir, data, **kwargs)


def score_images(predictor, model: OodModel, images: list) -> tuple[np.ndarray, np.ndarray]:
    """(scores, flags) of PIL images, through the reference fold's model."""
    scores = model.score(_features_of(predictor, images, model.fold), image_stats(images))
    return scores, model.flag(scores)


# --- what a run learnt from ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class TrainedOn:
    synthetic: bool | None   # None: unknown (the run's data folder is not on this machine)
    count: int | None        # images in its manifest
    sentence: str            # "2,100 synthetic cells (the built-in set)"

    @property
    def what(self) -> str:
        return "synthetic cells" if self.synthetic else ("real cells" if self.synthetic is False else "cells")


def trained_on(run_dir: str | Path) -> TrainedOn:
    """What the run was trained on, from its config and manifest (no torch)."""
    from bmteach.atlas import is_builtin_synthetic
    from bmteach.synth import is_synthetic

    run_dir = Path(run_dir)
    try:
        config = runs.read_config(run_dir)
    except (UserError, OSError, ValueError):
        config = {}
    try:
        count = len(runs.read_manifest(run_dir))
    except (UserError, OSError, ValueError, KeyError):
        count = None
    root = config.get("data_root")
    root = root if isinstance(root, str) else None  # a hand-edited config may hold anything
    n = f"{count:,} " if count else ""
    if root and is_builtin_synthetic(root):
        return TrainedOn(True, count, f"{n}synthetic cells (the built-in set)")
    if root and Path(root).is_dir():
        synthetic = bool(is_synthetic(Path(root)))
        kind = "synthetic" if synthetic else "real"
        return TrainedOn(synthetic, count, f"{n}{kind} cells in {Path(root).name}")
    return TrainedOn(None, count, f"{n}cells" + (f" in {Path(root).name} (not on this machine)" if root else ""))


def warning(run_dir: str | Path) -> str:
    """The sentence shown for a flagged image."""
    return WARNING.format(what=trained_on(run_dir).what)
