"""Saliency-map display maths, numpy only (pages may import it; no torch): resizing a map, blending it over
the image, and the share of a map that falls inside a cell mask."""
from __future__ import annotations

import numpy as np


def _axis_weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights of bilinear resampling along one axis, with half-pixel centres (the same
    rule as torch's interpolate(mode="bilinear", align_corners=False))."""
    src = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    src = np.clip(src, 0.0, None)
    lo = np.minimum(np.floor(src).astype(int), n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    return lo, hi, (src - lo).astype(np.float32)


def resize_map(saliency_map: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a (h, w) map to size=(H, W), clipped to the original range."""
    m = np.asarray(saliency_map, dtype=np.float32)
    if m.shape == tuple(size):
        return m
    (r0, r1, wr), (c0, c1, wc) = _axis_weights(m.shape[0], size[0]), _axis_weights(m.shape[1], size[1])
    rows = m[r0] * (1 - wr)[:, None] + m[r1] * wr[:, None]
    out = rows[:, c0] * (1 - wc)[None, :] + rows[:, c1] * wc[None, :]
    return np.clip(out, m.min(), m.max()).astype(np.float32)


def mask_energy(saliency_map: np.ndarray, mask: np.ndarray) -> float:
    """Share of the map's total value inside the cell (mask > 0: cytoplasm or nucleus), as in Score-CAM's
    energy-based pointing game. The map is resized to the mask. NaN when undefined: an all-zero map, or an
    empty mask (an artefact patch has no labelled cell)."""
    mask = np.asarray(mask) > 0
    m = resize_map(saliency_map, mask.shape).astype(np.float64)
    total = m.sum()
    if total <= 0 or not mask.any():
        return float("nan")
    return float(m[mask].sum() / total)


def overlay(image_rgb_uint8, saliency_map: np.ndarray, alpha: float = 0.5, cmap: str = "jet") -> np.ndarray:
    """The map in a colour map blended over the image (resized to the image): uint8 (H, W, 3) for display."""
    import matplotlib

    image = np.asarray(image_rgb_uint8)
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    image = image[..., :3].astype(np.float32) / 255.0
    m = np.clip(resize_map(saliency_map, image.shape[:2]), 0.0, 1.0)
    colours = matplotlib.colormaps[cmap](m)[..., :3]
    alpha = float(np.clip(alpha, 0.0, 1.0))
    blended = (1.0 - alpha) * image + alpha * colours
    return np.clip(np.round(blended * 255.0), 0, 255).astype(np.uint8)


def colour_bar(width: int = 240, height: int = 14, cmap: str = "jet") -> np.ndarray:
    """The colour map of `overlay` as a horizontal strip, low values on the left: uint8 (height, width, 3)."""
    import matplotlib

    ramp = np.tile(np.linspace(0.0, 1.0, width), (height, 1))
    return np.round(matplotlib.colormaps[cmap](ramp)[..., :3] * 255.0).astype(np.uint8)
