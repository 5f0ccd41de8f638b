"""Saliency maps and the checks that say how far to trust them. Tensors in, numpy arrays out; no Streamlit.

Every method in METHODS is `fn(model, x, target, **kw) -> (H, W) float32 array in [0, 1]` for one
preprocessed image x of shape (1, 3, H, W) (e.g. `Predictor.preprocess([image])`) and a model in eval mode
with the CellNet parts (body / pool / dropout / head, `cam_layer` = last convolutional stage). Maps are
scaled by their maximum, so 0 keeps meaning "no evidence" and an all-zero map stays all zero.

Checks:
  sanity_check   Adebayo et al. 2018: the map of the trained model vs the map of a weight-randomised copy;
                 a high rank correlation means the map shows the image, not what the model learnt.
  deletion_curve Petsiuk et al. 2018 (RISE): confidence as the most salient pixels are replaced by a
                 baseline; a faithful map makes it fall fast (low area under the curve).
Display maths (resize, overlay, the share of a map inside a cell mask) is numpy-only, in bmteach.maps.

Thread safety (one server, many sessions sharing one model): nothing here mutates the caller's model. Captum's
Grad-CAM hooks a private identity module placed on the output of the last stage, not the shared `cam_layer`
(a hook there would also catch other sessions' forward passes). Seeded noise uses torch's global generator, so
drawing it holds a lock for one batch of samples at a time.
"""
from __future__ import annotations

import copy
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from captum.attr import LayerAttribution, LayerGradCam, NoiseTunnel, Saliency
from torch import nn

from bmteach.maps import resize_map

_RNG_LOCK = threading.Lock()

# --- helpers -----------------------------------------------------------------------------------------------


def _as_input(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A private (1, 3, H, W) copy on the model's device (a clone also turns an inference tensor into one
    that gradients can flow through)."""
    if model.training:
        raise ValueError("Saliency maps need the model in eval mode (call model.eval() once when loading it).")
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4 or x.shape[0] != 1:
        raise ValueError(f"Explain one image at a time: expected a (1, 3, H, W) tensor, got {tuple(x.shape)}.")
    device = next(model.parameters()).device
    return x.detach().clone().to(device)


def _normalised(t: torch.Tensor) -> np.ndarray:
    """Non-negative map -> float32 numpy in [0, 1], scaled by its maximum."""
    a = t.detach().float().cpu().numpy()
    top = float(a.max()) if a.size else 0.0
    if not np.isfinite(top) or top <= 0:
        return np.zeros(a.shape, dtype=np.float32)
    return np.clip(a / top, 0.0, 1.0).astype(np.float32)


@contextmanager
def _seeded(seed: int, device: torch.device):
    """Run a block with torch's global generator seeded, then restore it. Captum draws its noise from that
    global generator, so the lock keeps two sessions from reseeding it under each other."""
    devices = [device] if device.type == "cuda" else []
    with _RNG_LOCK, torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _scores(forward: Callable, versus: int | None) -> Callable:
    """The model's logits, or with `versus` the logits minus logit[versus]: column `target` then holds
    logit[target] - logit[versus], the evidence for target *rather than* versus."""
    if versus is None:
        return forward

    def contrast(x: torch.Tensor) -> torch.Tensor:
        out = forward(x)
        return out - out[:, versus:versus + 1]

    return contrast


class _TappedNet(nn.Module):
    """The caller's model (shared, not copied) run through its own forward pass with a private identity `tap`
    on the output of its last convolutional stage (CellNet.forward's `tap` argument). Captum hooks the tap, so
    concurrent forward passes of the shared model in other threads never run this call's hook, and the map
    always explains the network that predicts."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.net = model
        self.tap = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x, tap=self.tap)


# --- methods ---------------------------------------------------------------------------------------------------


def gradcam(model: nn.Module, x: torch.Tensor, target: int, versus: int | None = None) -> np.ndarray:
    """Grad-CAM (Selvaraju et al. 2017) with Captum's LayerGradCam on the last convolutional stage: channel
    weights = spatially averaged gradients of the target logit, ReLU of the weighted sum, bilinear upsampling
    to the input size, scaled to [0, 1]."""
    x = _as_input(model, x)
    tapped = _TappedNet(model)
    with torch.enable_grad():
        cam = LayerGradCam(_scores(tapped, versus), tapped.tap).attribute(
            x, target=int(target), relu_attributions=True)
    cam = LayerAttribution.interpolate(cam, tuple(x.shape[-2:]), interpolate_mode="bilinear")
    return _normalised(cam[0, 0].clamp_min(0))


def smoothgrad(model: nn.Module, x: torch.Tensor, target: int, noise: float = 0.15, samples: int = 25,
               batch_size: int = 5, seed: int = 0, versus: int | None = None,
               progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """SmoothGrad (Smilkov et al. 2017): Captum NoiseTunnel over Saliency. The input gradient is averaged over
    `samples` noisy copies (Gaussian, sd = `noise` x the input's value range), then |.|, max over colour
    channels (Simonyan et al.), scaled to [0, 1].

    NoiseTunnel has no progress hook, so it is called once per batch of `batch_size` samples and the batch
    means are averaged (weighted by batch size: the same mean as one call). That also bounds memory (one
    batch of activations at a time) and lets `progress(done, total)` drive a progress bar. Batch i's noise is
    seeded from (seed, i): the same seed gives the same map."""
    if samples < 1 or batch_size < 1:
        raise ValueError("SmoothGrad needs at least one sample and a batch size of at least one.")
    x = _as_input(model, x)
    stdev = float(noise * (x.max() - x.min()))
    tunnel = NoiseTunnel(Saliency(_scores(model, versus)))
    total = torch.zeros_like(x)
    done = 0
    for batch in range(0, (samples + batch_size - 1) // batch_size):
        n = min(batch_size, samples - done)
        batch_seed = int(np.random.SeedSequence([seed, batch]).generate_state(1)[0])
        with _seeded(batch_seed, x.device), torch.enable_grad():
            grads = tunnel.attribute(x, nt_type="smoothgrad", nt_samples=n, nt_samples_batch_size=n,
                                     stdevs=stdev, target=int(target), abs=False)
        total += grads.detach() * n
        done += n
        if progress is not None:
            progress(done, samples)
    mean_grad = total / samples
    return _normalised(mean_grad.abs().amax(dim=1)[0])


METHODS: dict[str, Callable[..., np.ndarray]] = {"gradcam": gradcam, "smoothgrad": smoothgrad}


# --- sanity check (Adebayo et al. 2018) -------------------------------------------------------------------------


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two maps (ties get average ranks); 0.0 when either map is constant,
    where a rank correlation is undefined."""
    from scipy.stats import rankdata

    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    if a.shape != b.shape:
        raise ValueError(f"Maps differ in size: {a.size} vs {b.size} pixels.")
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    return float(np.corrcoef(rankdata(a), rankdata(b))[0, 1])


def randomized_copy(model: nn.Module, seed: int = 0) -> nn.Module:
    """A deep copy with every layer re-initialised (each module's own reset_parameters, seeded); the
    caller's model is untouched. BatchNorm layers get their initial state too (identity)."""
    clone = copy.deepcopy(model)
    device = next(clone.parameters()).device
    with _seeded(seed, device):
        for module in clone.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()
    return clone.eval()


@dataclass
class SanityResult:
    correlation: float       # Spearman rank correlation trained vs randomised; low (< 0.3) passes
    trained: np.ndarray      # the map of the trained model
    randomized: np.ndarray   # the map of the weight-randomised copy


def sanity_check(model: nn.Module, x: torch.Tensor, target: int, method: str = "gradcam",
                 random_seed: int = 2018, **kw) -> SanityResult:
    """Adebayo et al.'s model-randomisation test: if the map barely changes when the learnt weights are
    replaced by random ones, it shows the image (edges, colour), not what the model uses."""
    fn = METHODS[method]
    trained = fn(model, x, target, **kw)
    randomized = fn(randomized_copy(model, random_seed), x, target, **kw)
    return SanityResult(rank_correlation(trained, randomized), trained, randomized)


# --- faithfulness: deletion curve (Petsiuk et al. 2018) ------------------------------------------------------------


@dataclass
class DeletionCurve:
    fractions: np.ndarray    # share of pixels replaced, 0 .. 1
    scores: np.ndarray       # softmax probability of the target at each step
    auc: float               # area under scores over fractions, in [0, 1]; lower = more faithful map


def deletion_baseline(x: torch.Tensor, kind: str = "blur") -> torch.Tensor:
    """What a removed pixel becomes: 'blur' (a heavy blur of the image: no fine detail, same colours),
    'mean' (the image's mean colour) or 'zero' (0 in normalised space: the data set's mean colour)."""
    if kind == "blur":  # area-downsample 16x and back: as smooth as a wide Gaussian at a fraction of its cost
        h, w = x.shape[-2:]
        small = F.interpolate(x, size=(max(1, h // 16), max(1, w // 16)), mode="area")
        return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)
    if kind == "mean":
        return x.mean(dim=(-2, -1), keepdim=True).expand_as(x)
    if kind == "zero":
        return torch.zeros_like(x)
    raise ValueError(f"Unknown deletion baseline {kind!r}: choose blur, mean or zero.")


def _removal_ranks(saliency_map: np.ndarray, seed: int) -> np.ndarray:
    """rank[i] = position of pixel i in the removal order (most salient first); ties are broken by a seeded
    random permutation, so flat regions are removed in no privileged (e.g. raster) order."""
    flat = np.ravel(saliency_map)
    tiebreak = np.random.default_rng(seed).permutation(flat.size)
    order = np.lexsort((tiebreak, -flat))
    ranks = np.empty(flat.size, dtype=np.int64)
    ranks[order] = np.arange(flat.size)
    return ranks.reshape(np.shape(saliency_map))


def deletion_curve(model: nn.Module, x: torch.Tensor, target: int, saliency_map: np.ndarray, steps: int = 20,
                   baseline: str = "blur", seed: int = 0, batch_size: int = 16) -> DeletionCurve:
    """Replace the most salient pixels first, in `steps` equal shares, and record the target's probability."""
    x = _as_input(model, x)
    h, w = x.shape[-2:]
    ranks = torch.from_numpy(_removal_ranks(resize_map(saliency_map, (h, w)), seed)).to(x.device)
    base = deletion_baseline(x, baseline)
    fractions = np.linspace(0.0, 1.0, steps + 1)
    counts = torch.from_numpy(np.round(fractions * h * w).astype(np.int64)).to(x.device)
    scores = []
    with torch.inference_mode():
        for chunk in counts.split(batch_size):
            removed = (ranks[None] < chunk[:, None, None])[:, None]          # (n, 1, H, W)
            images = torch.where(removed, base, x)
            scores.append(torch.softmax(model(images).float(), dim=1)[:, int(target)].cpu().numpy())
    scores = np.concatenate(scores).astype(np.float64)
    return DeletionCurve(fractions, scores, float(np.trapezoid(scores, fractions)))


@dataclass
class DeletionComparison:
    """The map's deletion curve beside a seeded random-order deletion of the same image: the raw area depends
    on how probable the class was to begin with, the ratio to a random order does not."""
    curve: DeletionCurve     # pixels removed in the map's order, most salient first
    random: DeletionCurve    # pixels removed in a random order (seeded)

    @property
    def start(self) -> float:
        """The target's probability before anything is removed."""
        return float(self.curve.scores[0])

    @property
    def ratio(self) -> float:
        """Area of the map's curve / area of the random curve: 0 = the map finds everything the model uses at
        once, about 1 = no better than chance, above 1 = worse. NaN when the random curve has no area."""
        return self.curve.auc / self.random.auc if self.random.auc > 0 else float("nan")


LOW_START = 0.2  # below this starting probability there is too little to delete for the curve to mean much


def deletion_vs_random(model: nn.Module, x: torch.Tensor, target: int, saliency_map: np.ndarray, steps: int = 20,
                       baseline: str = "blur", seed: int = 0) -> DeletionComparison:
    """deletion_curve of the map and of a per-pixel random order (seeded), same image, steps and baseline."""
    random_map = np.random.default_rng(seed).random(tuple(x.shape[-2:]))
    return DeletionComparison(
        deletion_curve(model, x, target, saliency_map, steps=steps, baseline=baseline, seed=seed),
        deletion_curve(model, x, target, random_map, steps=steps, baseline=baseline, seed=seed))


def deletion_verdict(result: DeletionComparison, name: str) -> str:
    """What the comparison means, in one or two sentences for a student."""
    areas = f"(area {result.curve.auc:.2f} against {result.random.auc:.2f} for a random order)"
    if result.start < LOW_START or np.isnan(result.ratio):
        return (f"The model gives {name} only {result.start:.0%} to begin with: there is little probability to "
                f"take away, so this check says little about the map {areas}.")
    if result.ratio < 0.8:
        return (f"Removing the pixels this map ranks highest lowers P({name}) faster than removing pixels in a "
                f"random order {areas}: the map points at pixels the model uses.")
    if result.ratio <= 1.2:
        return (f"Removing the pixels this map ranks highest lowers P({name}) no faster than a random order "
                f"{areas}: the map does not single out what the model uses.")
    return (f"Removing the pixels this map ranks highest lowers P({name}) more slowly than a random order "
            f"{areas}: the map points away from what the model uses.")


SANITY_PASS, SANITY_FAIL = 0.3, 0.7  # rank correlation thresholds of the sanity check's verdict


def sanity_verdict(correlation: float) -> str:
    """The sanity check's result in words (Adebayo et al. 2018: a map that survives weight randomisation shows
    the image, not the model)."""
    if correlation < SANITY_PASS:
        return (f"The map depends on what the model learnt: a model with random weights draws a different one "
                f"(rank correlation {correlation:.2f}).")
    if correlation < SANITY_FAIL:
        return (f"The map depends only in part on what the model learnt: a model with random weights draws a "
                f"somewhat similar one (rank correlation {correlation:.2f}).")
    return (f"The map mostly shows the image itself: a model with random weights draws nearly the same one "
            f"(rank correlation {correlation:.2f}), so do not read it as the model's reasoning.")
