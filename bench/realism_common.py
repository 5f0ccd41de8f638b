"""Shared by the realism benches: the real sample's seeded half split and per-image realism statistics.

The real sample (../shared/realdata/BM_cytomorphology_sample, 7 classes x 60) is split by file name with a
fixed seed into a FIT half (the only images whose statistics may steer the generator) and a TEST half (the
only images any reported figure is measured on). Nothing here copies real pixels anywhere.
"""
from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
from scipy.spatial import ConvexHull

REAL = Path(__file__).resolve().parent.parent.parent / "shared" / "realdata" / "BM_cytomorphology_sample"
DEMO_RUN = Path(__file__).resolve().parent.parent / "models" / "demo"
SPLIT_SEED = 12


def real_files(root: Path) -> dict[str, list[Path]]:
    """Class -> sorted image files under root/<ABBR>/ (searched recursively)."""
    root = Path(root)
    return {d.name: sorted(d.rglob("*.jpg")) for d in sorted(root.iterdir()) if d.is_dir()}


def real_split(root: Path, seed: int = SPLIT_SEED) -> tuple[dict, dict]:
    """(fit, test): per class, a seeded permutation of the sorted file names cut in two halves."""
    fit, test = {}, {}
    for abbr, files in real_files(root).items():
        order = np.random.default_rng([seed, sum(map(ord, abbr))]).permutation(len(files))
        half = len(files) // 2
        fit[abbr] = [files[i] for i in sorted(order[:half])]
        test[abbr] = [files[i] for i in sorted(order[half:])]
    return fit, test


def run_on_real_parser(doc: str) -> argparse.ArgumentParser:
    """The command line of a bench that measures a run (--run, the shipped demo by default) on the real sample
    (--real); doc's first line is the description."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--run", default=str(DEMO_RUN))
    ap.add_argument("--real", type=Path, default=REAL)
    return ap


def real_test_images(root: Path) -> Iterator[tuple[str, list[Image.Image]]]:
    """(class, its TEST-half images as RGB PIL images), class by class in sorted order (one class in memory)."""
    _, test = real_split(root)
    for abbr, files in test.items():
        yield abbr, [Image.open(f).convert("RGB") for f in files]


# --------------------------------------------------------------------------------------------------------------
# Per-image statistics (a cytologist's view, measured crudely but identically on synthetic and real patches)
# --------------------------------------------------------------------------------------------------------------

STATS = ("diameter_px", "nc_ratio", "solidity", "roughness", "nuc_r", "nuc_g", "nuc_b", "cyto_r", "cyto_g",
         "cyto_b", "tex_fine", "tex_coarse", "bg_bright", "bg_rb", "crowding", "rbc_share", "rbc_r", "rbc_g",
         "rbc_b", "stained_share", "laplacian_var", "grey_sd")


def _largest_central(mask: np.ndarray) -> np.ndarray:
    """The connected component of mask nearest the patch centre (by its distance to the centre pixel)."""
    lab, n = ndimage.label(mask)
    if n == 0:
        return np.zeros_like(mask)
    h, w = mask.shape
    # the component covering the centre, else the one whose pixel is nearest to the centre
    c = lab[h // 2, w // 2]
    if c == 0:
        ys, xs = np.nonzero(lab)
        k = np.argmin((ys - h / 2) ** 2 + (xs - w / 2) ** 2)
        c = lab[ys[k], xs[k]]
    return lab == c


def _central_cell(stained: np.ndarray) -> np.ndarray:
    """The labelled cell: the stained blob at the centre, cut from touching neighbours at narrow necks (an
    opening by a disc of 0.6 x the central blob's inscribed radius, then grown back inside the stain)."""
    h, w = stained.shape
    dt = ndimage.distance_transform_edt(stained)
    near = dt[h // 2 - 40:h // 2 + 40, w // 2 - 40:w // 2 + 40]
    if near.max() < 3:
        return _largest_central(stained)
    r0 = 0.6 * float(near.max())
    core = _largest_central(dt > r0)
    grown = ndimage.distance_transform_edt(~core) <= r0 + 1
    return ndimage.binary_fill_holes(grown & stained)


def image_stats(rgb: np.ndarray) -> dict:
    """Realism statistics of one 250x250 RGB patch (uint8)."""
    a = rgb.astype(np.float32)
    grey = a.mean(2)
    r, g, b = a[..., 0], a[..., 1], a[..., 2]
    bright = grey >= np.percentile(grey, 85)
    bg = np.median(a[bright], axis=0)
    bg_grey = float(bg.mean())
    # stained white-cell material: bluer than red and darker than the background; nucleus: green strongly absorbed
    stained = ((b - r) > 22) & (grey < bg_grey - 25)
    stained = ndimage.binary_opening(stained, iterations=2)
    nuclear = stained & (g < 0.55 * bg[1])
    cell = _central_cell(ndimage.binary_fill_holes(stained))
    area = float(cell.sum())
    out = dict.fromkeys(STATS, np.nan)
    out["bg_bright"] = bg_grey
    out["bg_rb"] = float(bg[0] - bg[2])
    out["laplacian_var"] = float(ndimage.laplace(grey).var())
    out["grey_sd"] = float(grey.std())
    out["stained_share"] = float(cell.mean())
    out["crowding"] = float((stained & ~cell).mean())
    # red cells: neither background-bright nor blue-stained, redder than blue, clearly darker than background
    rbc = (~stained) & (grey < bg_grey - 12) & ((r - b) > -8)
    rbc = ndimage.binary_opening(rbc, iterations=2)
    out["rbc_share"] = float(rbc.mean())
    if rbc.sum() > 50:
        out["rbc_r"], out["rbc_g"], out["rbc_b"] = (float(v) for v in a[rbc].mean(0))
    if area < 80:
        return out
    out["diameter_px"] = float(2 * np.sqrt(area / np.pi))
    nuc = nuclear & cell
    out["nc_ratio"] = float(nuc.sum() / area)
    ys, xs = np.nonzero(cell)
    try:
        hull = ConvexHull(np.c_[ys, xs])
        out["solidity"] = float(area / max(hull.volume, 1.0))
    except Exception:       # degenerate (a line of pixels)
        pass
    edge = cell & ~ndimage.binary_erosion(cell)
    out["roughness"] = float(edge.sum() ** 2 / (4 * np.pi * area))
    cyto = cell & ~nuc
    if nuc.sum() > 20:
        out["nuc_r"], out["nuc_g"], out["nuc_b"] = (float(v) for v in a[nuc].mean(0))
        g1 = ndimage.gaussian_filter(grey, 1.0)
        g4 = ndimage.gaussian_filter(grey, 4.0)
        inner = ndimage.binary_erosion(nuc, iterations=3)
        if inner.sum() > 20:
            out["tex_fine"] = float((grey - g1)[inner].std())
            out["tex_coarse"] = float((g1 - g4)[inner].std())
    if cyto.sum() > 20:
        out["cyto_r"], out["cyto_g"], out["cyto_b"] = (float(v) for v in a[cyto].mean(0))
    return out


def load_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))
