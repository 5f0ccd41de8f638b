"""Synthetic bone-marrow cells: the embedded default data set, drawn procedurally with cell/nucleus masks.

Every patch is 250x250 px at the real data set's scale (a patch is about 21 um, so ~12 px per um). A cell is
painted in optical density (Beer-Lambert): each stain adds absorbance, and the image is the illumination
times exp(-density). That keeps colours where real May-Grunwald-Giemsa smears are (purple nuclei, blue to pink
cytoplasm, grey-pink red cells) and makes overlapping objects darker, as in a real smear.

Morphology follows ../shared/design/taxonomy.md. The maturation chains (BLA-PMO-MYB-MMZ-NGB-NGS, PEB-EBO,
LYI-LYT) come from one continuous maturation parameter per chain; each class owns an interval of it and
`difficulty` widens the intervals into their neighbours, so tolerated pairs are genuinely confusable.

These images are synthetic: they teach shapes and colours, not diagnosis. `synth.json` in a generated folder
says so, and every place that shows one must say so too.
"""
from __future__ import annotations

import functools
import io
import json
import multiprocessing
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from bmteach.classes import ABBRS, CHAINS
from bmteach.errors import UserError
from bmteach.storage import atomic_write_json, default_data_dir

GENERATOR = "bmteach.synth"
GENERATOR_VERSION = 2
SIZE = 250                # patch size in px, as the real data set
PX_PER_UM = SIZE / 21.0   # a real patch spans about 21 um
JPEG_QUALITY = 95         # the real files are quality-100 4:2:0 JPEGs; 95 keeps the data set half the size
RANGE_BLOCK = 1000        # images per range folder ("0001-1000"), as distributed
MASK_BACKGROUND, MASK_CYTOPLASM, MASK_NUCLEUS = 0, 1, 2

# --------------------------------------------------------------------------------------------------------------
# Stains and acquisition looks
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Look:
    """Stain colours (optical density per unit concentration, RGB) and acquisition properties of one scanner."""
    name: str
    haem: tuple = (1.25, 1.85, 0.55)        # nuclear stain: purple
    baso: tuple = (0.85, 1.30, 0.12)        # basophilic (RNA-rich) cytoplasm: blue
    eosin: tuple = (0.30, 0.54, 0.10)       # acidophilic cytoplasm: pink-lilac
    grey: tuple = (0.60, 0.60, 0.25)        # ground-glass grey (monocytes, hairy cells)
    rbc: tuple = (0.55, 0.50, 0.38)         # red cells: grey-pink
    eos_granule: tuple = (0.35, 0.85, 0.55)  # eosinophilic granules: orange-red
    azur: tuple = (0.70, 1.60, 0.50)        # azurophilic granules: purple-red
    dark_granule: tuple = (1.60, 2.20, 0.90)  # basophilic / mast-cell granules: purple-black
    auer: tuple = (0.80, 1.70, 0.60)        # Auer rods: red-purple
    background: tuple = ((0.92, 0.92, 0.86), (0.91, 0.89, 0.96))  # yellow-green ... lilac
    stain_gain: float = 1.2                 # all densities times this
    channel_gain: tuple = (1.1, 1.16, 0.95)  # the scanner's colour response: RGB densities times this
    blur: tuple = (1.3, 2.3)                # focus: Gaussian sigma range in px (real patches are soft)
    vignette: float = 0.10                  # illumination fall-off towards the corners
    noise: float = 0.008                    # sensor noise (0-1 scale)
    jpeg_quality: int = JPEG_QUALITY


SHIFTS: dict[str, Look] = {
    "none": Look("none"),
    # Another lab and scanner: redder eosin, bluer haematoxylin, warm background, softer focus, harder JPEG.
    "scanner-b": Look(
        "scanner-b", haem=(1.95, 2.25, 0.45), baso=(1.05, 0.70, 0.05), eosin=(0.15, 0.95, 0.45),
        rbc=(0.35, 0.80, 0.55), eos_granule=(0.10, 1.30, 1.20),
        background=((0.97, 0.93, 0.80), (0.96, 0.90, 0.86)), stain_gain=0.85, blur=(1.2, 2.2),
        vignette=0.22, noise=0.015, jpeg_quality=75),
    # A faded, under-stained slide on a bright scanner.
    "faded": Look("faded", background=((0.97, 0.97, 0.95), (0.96, 0.95, 0.98)), stain_gain=0.6,
                  blur=(0.6, 1.4), vignette=0.05),
}


def get_look(shift: str) -> Look:
    if shift not in SHIFTS:
        raise UserError(f"Unknown shift {shift!r}: choose one of {', '.join(SHIFTS)}.")
    return SHIFTS[shift]


# --------------------------------------------------------------------------------------------------------------
# What a cell looks like: one dataclass per drawn cell, sampled per class
# --------------------------------------------------------------------------------------------------------------


@dataclass
class CellSpec:
    """Everything needed to paint one cell; sizes in um, densities in stain units (1 = dense)."""
    abbr: str
    diameter: float                 # cell diameter, um
    aspect: float = 1.1             # long/short axis of the cell outline
    wobble: float = 0.05            # irregularity of the outline
    hairs: float = 0.0              # hair-like projections: length as a fraction of the radius (HAC)
    blebs: float = 0.0              # cytoplasmic blebs (PEB)
    nucleus_fraction: float = 0.5   # nucleus area / cell area
    nuc_length: float = 0.3         # length of the nucleus tube / its half-width (0 = round)
    nuc_bend: float = 0.2           # bend of the tube in radians (kidney ~2, horseshoe ~3)
    nuc_lobes: int = 1              # lobes along the tube, joined by thin threads when pinched
    nuc_pinch: float = 0.0          # 0 = no constriction, ~0.85 = lobes joined by threads
    nuc_offset: float = 0.1         # eccentricity of the nucleus, 0 central .. 1 touching the membrane
    nuc_wobble: float = 0.09
    nuc_density: float = 0.8
    chromatin_coarse: float = 0.3   # 0 fine/open .. 1 coarse/clumped
    chromatin_contrast: float = 0.3
    clockface: bool = False         # plasma-cell cartwheel chromatin
    pyknotic: float = 0.0           # 0 .. 1 dense homogeneous nucleus (late erythroblast)
    nucleoli: int = 0
    cyto_density: float = 0.45
    cyto_blue: float = 0.5          # weights of the cytoplasm colours
    cyto_pink: float = 0.0
    cyto_grey: float = 0.0
    hof: float = 0.0                # pale Golgi zone beside the nucleus, 0..1
    vacuoles: int = 0
    granules: dict = field(default_factory=dict)  # kind -> amount (0..1)
    auer_rods: int = 0
    smudge: bool = False            # ruptured cell: smeared nuclear material, no membrane (KSC)


# Granule kinds: colour, radius (Gaussian sigma, px), peak density, granules per px of area at amount 1,
# and whether they also lie over the nucleus.
@dataclass(frozen=True)
class GranuleKind:
    colour: str
    sigma: float
    peak: float
    per_px: float
    over_nucleus: bool


GRANULES = {
    "azurophilic": GranuleKind("azur", 1.6, 0.45, 0.03, True),
    "specific": GranuleKind("azur", 0.9, 0.18, 0.060, False),
    "dust": GranuleKind("azur", 0.6, 0.18, 0.030, False),
    "eosinophilic": GranuleKind("eos_granule", 1.7, 0.45, 0.070, False),
    "basophilic": GranuleKind("dark_granule", 2.0, 0.80, 0.014, True),
    "abnormal": GranuleKind("dark_granule", 2.2, 0.65, 0.012, True),
    "mast": GranuleKind("dark_granule", 1.4, 0.75, 0.045, True),
}

# Maturation chains: each class owns an interval of the chain's parameter t in [0, 1].
CHAIN_INTERVALS = {
    "granulocytic": {"BLA": (0.0, 0.14), "PMO": (0.14, 0.34), "MYB": (0.34, 0.52), "MMZ": (0.52, 0.68),
                     "NGB": (0.68, 0.84), "NGS": (0.84, 1.0)},
    "erythroid": {"PEB": (0.0, 0.3), "EBO": (0.3, 1.0)},
    "lymphoid": {"LYI": (0.0, 0.35), "LYT": (0.35, 1.0)},
}
CHAIN_OF = {abbr: chain for chain, classes in CHAIN_INTERVALS.items() for abbr in classes}


def maturation(abbr: str, rng: np.random.Generator, difficulty: float) -> float:
    """A maturation value for a cell of this class: its interval, widened by `difficulty` into neighbours.

    difficulty 0 shrinks each interval (gaps between classes), 0.5 lets it reach a quarter of its width into
    each neighbour, 1 about two thirds.
    """
    lo, hi = CHAIN_INTERVALS[CHAIN_OF[abbr]][abbr]
    margin = (hi - lo) * (difficulty - 0.2) * 0.8
    lo_w, hi_w = (lo - margin, hi + margin) if lo - margin < hi + margin else ((lo + hi) / 2,) * 2
    return float(np.clip(rng.uniform(lo_w, hi_w), 0.0, 1.0))


def _along(t: float, knots: tuple, values: tuple) -> float:
    return float(np.interp(t, knots, values))


GRAN_T = (0.07, 0.24, 0.43, 0.60, 0.76, 0.92)   # class centres along the granulocytic chain


def granulocytic_spec(abbr: str, t: float, rng: np.random.Generator) -> CellSpec:
    """Blast -> promyelocyte -> myelocyte -> metamyelocyte -> band -> segmented, from one parameter t."""
    k = GRAN_T
    lobes = int(rng.choice([2, 3, 3, 4, 4, 5])) if t > 0.8 else 1
    return CellSpec(
        abbr=abbr,
        diameter=_along(t, k, (13.5, 17.5, 15.0, 13.0, 12.0, 12.0)) * rng.uniform(0.9, 1.1),
        aspect=rng.uniform(1.0, 1.15),
        nucleus_fraction=_along(t, k, (0.72, 0.42, 0.36, 0.30, 0.26, 0.25)) * rng.uniform(0.9, 1.1),
        nuc_length=_along(t, k, (0.25, 0.45, 0.6, 1.6, 4.0, 5.5)) * rng.uniform(0.8, 1.2),
        nuc_bend=_along(t, k, (0.2, 0.3, 0.9, 2.3, 3.2, 3.6)) * rng.uniform(0.8, 1.2),
        nuc_lobes=lobes,
        nuc_pinch=_along(t, (0.8, 0.95), (0.0, 0.85)),
        nuc_offset=_along(t, k, (0.1, 0.55, 0.5, 0.35, 0.15, 0.1)) * rng.uniform(0.5, 1.2),
        nuc_density=_along(t, k, (0.65, 0.68, 0.78, 0.85, 0.95, 1.0)) * rng.uniform(0.9, 1.1),
        chromatin_coarse=_along(t, k, (0.05, 0.15, 0.45, 0.65, 0.8, 0.9)),
        chromatin_contrast=_along(t, k, (0.12, 0.18, 0.35, 0.45, 0.5, 0.55)),
        nucleoli=int(rng.integers(1, 5)) if rng.random() < _along(t, k, (1.0, 0.55, 0.05, 0, 0, 0)) else 0,
        cyto_density=_along(t, k, (0.48, 0.48, 0.46, 0.45, 0.45, 0.45)),
        cyto_blue=_along(t, k, (1.0, 0.75, 0.3, 0.12, 0.04, 0.0)),
        cyto_pink=_along(t, k, (0.0, 0.2, 0.55, 0.7, 0.75, 0.75)),
        cyto_grey=_along(t, k, (0.0, 0.0, 0.1, 0.25, 0.35, 0.4)),
        hof=_along(t, k, (0.0, 0.6, 0.5, 0.1, 0, 0)) * rng.uniform(0.3, 1.0),
        granules={
            "azurophilic": _along(t, k, (0.0, 1.0, 0.35, 0.05, 0.0, 0.0)) * rng.uniform(0.6, 1.2),
            "specific": _along(t, k, (0.0, 0.15, 0.7, 0.85, 0.85, 0.85)) * rng.uniform(0.7, 1.2),
        },
    )


def erythroid_spec(abbr: str, t: float, rng: np.random.Generator) -> CellSpec:
    """Proerythroblast -> erythroblast (basophilic -> polychromatic -> orthochromatic), from one parameter t."""
    k = (0.0, 0.15, 0.45, 0.75, 1.0)
    return CellSpec(
        abbr=abbr,
        diameter=_along(t, k, (18.0, 16.0, 12.0, 10.0, 8.5)) * rng.uniform(0.9, 1.1),
        aspect=rng.uniform(1.0, 1.08),
        wobble=0.035,
        blebs=_along(t, k, (0.6, 0.5, 0.1, 0, 0)) * rng.random(),
        nucleus_fraction=_along(t, k, (0.65, 0.62, 0.5, 0.35, 0.22)) * rng.uniform(0.9, 1.1),
        nuc_length=rng.uniform(0.0, 0.25),
        nuc_offset=rng.uniform(0.0, 0.3),
        nuc_wobble=0.06,
        nuc_density=_along(t, k, (0.68, 0.7, 0.95, 1.1, 1.25)),
        chromatin_coarse=_along(t, k, (0.1, 0.15, 0.6, 0.8, 0.9)),
        chromatin_contrast=_along(t, k, (0.2, 0.25, 0.45, 0.35, 0.15)),
        pyknotic=_along(t, k, (0, 0, 0.2, 0.6, 1.0)),
        nucleoli=int(rng.integers(1, 4)) if rng.random() < _along(t, k, (0.9, 0.7, 0.0, 0, 0)) else 0,
        cyto_density=_along(t, k, (0.62, 0.62, 0.55, 0.5, 0.5)),
        cyto_blue=_along(t, k, (1.1, 1.05, 0.6, 0.25, 0.0)),
        cyto_pink=_along(t, k, (0.0, 0.0, 0.3, 0.6, 0.8)),
        cyto_grey=_along(t, k, (0.0, 0.0, 0.4, 0.5, 0.5)),
    )


def lymphoid_spec(abbr: str, t: float, rng: np.random.Generator) -> CellSpec:
    """Immature lymphocyte -> lymphocyte, from one parameter t."""
    k = (0.0, 0.17, 0.5, 0.8, 1.0)
    return CellSpec(
        abbr=abbr,
        diameter=_along(t, k, (13.5, 12.5, 10.0, 8.8, 8.0)) * rng.uniform(0.92, 1.08),
        aspect=rng.uniform(1.0, 1.1),
        wobble=0.04,
        nucleus_fraction=_along(t, k, (0.75, 0.74, 0.72, 0.72, 0.74)) * rng.uniform(0.93, 1.05),
        nuc_length=rng.uniform(0.0, 0.35),
        nuc_bend=rng.uniform(0.0, 1.2) * (rng.random() < 0.3),
        nuc_offset=rng.uniform(0.1, 0.45),
        nuc_density=_along(t, k, (0.68, 0.7, 0.9, 1.0, 1.05)),
        chromatin_coarse=_along(t, k, (0.05, 0.1, 0.6, 0.8, 0.85)),
        chromatin_contrast=_along(t, k, (0.2, 0.22, 0.45, 0.5, 0.5)),
        nucleoli=int(rng.integers(1, 3)) if rng.random() < _along(t, k, (0.8, 0.6, 0.05, 0, 0)) else 0,
        cyto_density=_along(t, k, (0.55, 0.55, 0.45, 0.4, 0.38)),
        cyto_blue=_along(t, k, (1.0, 1.0, 0.8, 0.7, 0.7)),
    )


def _eosinophil(abbr: str, rng: np.random.Generator) -> CellSpec:
    return CellSpec(
        abbr=abbr, diameter=rng.uniform(12.5, 16.5), aspect=rng.uniform(1.0, 1.15),
        nucleus_fraction=rng.uniform(0.25, 0.33), nuc_length=rng.uniform(2.5, 4.0), nuc_bend=rng.uniform(1.5, 3.0),
        nuc_lobes=int(rng.choice([1, 2, 2])), nuc_pinch=rng.uniform(0.3, 0.85), nuc_offset=rng.uniform(0.1, 0.4),
        nuc_density=0.85,
        chromatin_coarse=0.7, chromatin_contrast=0.4, cyto_density=0.25, cyto_blue=0.1, cyto_pink=0.8,
        granules={"eosinophilic": rng.uniform(0.8, 1.1)},
    )


def _abnormal_eosinophil(abbr: str, rng: np.random.Generator) -> CellSpec:
    # inv(16)-like: eosinophilic granules mixed with large purple ones; a less mature, unlobed nucleus
    return CellSpec(
        abbr=abbr, diameter=rng.uniform(13.0, 17.0), aspect=rng.uniform(1.0, 1.15),
        nucleus_fraction=rng.uniform(0.3, 0.42), nuc_length=rng.uniform(0.3, 1.6), nuc_bend=rng.uniform(0.3, 2.0),
        nuc_offset=rng.uniform(0.3, 0.6), nuc_density=0.75, chromatin_coarse=0.45, chromatin_contrast=0.35,
        cyto_density=0.35, cyto_blue=0.5, cyto_pink=0.5,
        granules={"eosinophilic": rng.uniform(0.45, 0.75), "abnormal": rng.uniform(0.6, 1.0)},
    )


def _basophil(abbr: str, rng: np.random.Generator) -> CellSpec:
    return CellSpec(
        abbr=abbr, diameter=rng.uniform(10.5, 13.5), aspect=rng.uniform(1.0, 1.15),
        nucleus_fraction=rng.uniform(0.3, 0.4), nuc_length=rng.uniform(1.0, 3.0), nuc_bend=rng.uniform(1.0, 2.8),
        nuc_lobes=int(rng.integers(1, 3)), nuc_pinch=0.5, nuc_density=0.55, chromatin_coarse=0.5,
        chromatin_contrast=0.3, cyto_density=0.3, cyto_blue=0.3, cyto_pink=0.6,
        granules={"basophilic": rng.uniform(0.8, 1.2)},
    )


def _faggot_cell(abbr: str, rng: np.random.Generator) -> CellSpec:
    base = granulocytic_spec(abbr, rng.uniform(0.05, 0.3), rng)   # a blast/promyelocyte carrying Auer rods
    return replace(base, auer_rods=int(rng.integers(6, 16)), nucleoli=max(base.nucleoli, 1),
                   granules={"azurophilic": rng.uniform(0.4, 1.0)})


def _monocyte(abbr: str, rng: np.random.Generator) -> CellSpec:
    return CellSpec(
        abbr=abbr, diameter=rng.uniform(15.0, 19.5), aspect=rng.uniform(1.0, 1.25), wobble=0.06,
        nucleus_fraction=rng.uniform(0.4, 0.52), nuc_length=rng.uniform(0.8, 2.2), nuc_bend=rng.uniform(1.8, 3.4),
        nuc_lobes=int(rng.choice([1, 1, 2])), nuc_pinch=rng.uniform(0.0, 0.35), nuc_offset=rng.uniform(0.1, 0.45),
        nuc_wobble=0.12, nuc_density=0.62, chromatin_coarse=0.3, chromatin_contrast=0.35,
        cyto_density=0.42, cyto_blue=0.45, cyto_grey=0.6, cyto_pink=0.1,
        vacuoles=int(rng.choice([0, 0, 2, 4, 7])), granules={"dust": rng.uniform(0.5, 1.0)},
    )


def _plasma_cell(abbr: str, rng: np.random.Generator) -> CellSpec:
    return CellSpec(
        abbr=abbr, diameter=rng.uniform(11.0, 15.0), aspect=rng.uniform(1.25, 1.55),
        nucleus_fraction=rng.uniform(0.25, 0.35), nuc_length=rng.uniform(0.0, 0.4), nuc_offset=rng.uniform(0.7, 0.95),
        nuc_density=0.95, chromatin_coarse=0.8, chromatin_contrast=0.3, clockface=True,
        cyto_density=0.65, cyto_blue=1.15, hof=rng.uniform(0.6, 1.0), vacuoles=int(rng.choice([0, 0, 0, 2])),
    )


def _hairy_cell(abbr: str, rng: np.random.Generator) -> CellSpec:
    return CellSpec(
        abbr=abbr, diameter=rng.uniform(11.0, 14.5), aspect=rng.uniform(1.0, 1.2), wobble=0.05,
        hairs=rng.uniform(0.12, 0.25),
        nucleus_fraction=rng.uniform(0.35, 0.45), nuc_length=rng.uniform(0.4, 1.5), nuc_bend=rng.uniform(0.5, 2.2),
        nuc_offset=rng.uniform(0.05, 0.35), nuc_density=0.65, chromatin_coarse=0.35, chromatin_contrast=0.25,
        cyto_density=0.32, cyto_blue=0.55, cyto_grey=0.6,
    )


def _smudge_cell(abbr: str, rng: np.random.Generator) -> CellSpec:
    return CellSpec(abbr=abbr, diameter=rng.uniform(12.0, 19.0), aspect=rng.uniform(1.1, 1.6), smudge=True,
                    nuc_density=rng.uniform(0.35, 0.55), wobble=0.2)


def _mast_cell(abbr: str, rng: np.random.Generator) -> CellSpec:
    return CellSpec(
        abbr=abbr, diameter=rng.uniform(15.0, 20.0), aspect=rng.uniform(1.0, 1.3), wobble=0.06,
        nucleus_fraction=0.2, nuc_length=0.4, nuc_density=0.7, cyto_density=0.35, cyto_blue=0.4, cyto_pink=0.3,
        granules={"mast": rng.uniform(0.9, 1.2)},
    )


def _macrophage(abbr: str, rng: np.random.Generator) -> CellSpec:
    return CellSpec(
        abbr=abbr, diameter=rng.uniform(24.0, 32.0), aspect=rng.uniform(1.1, 1.4), wobble=0.1,
        nucleus_fraction=rng.uniform(0.08, 0.12), nuc_length=rng.uniform(0.5, 1.5), nuc_bend=rng.uniform(0.0, 1.5),
        nuc_offset=rng.uniform(0.3, 0.6), nuc_density=0.75, chromatin_coarse=0.5, chromatin_contrast=0.35,
        cyto_density=0.3, cyto_blue=0.3, cyto_grey=0.6, cyto_pink=0.3, vacuoles=int(rng.integers(6, 16)),
        granules={"basophilic": 0.35, "eosinophilic": 0.2},
    )


def _megakaryocyte(abbr: str, rng: np.random.Generator) -> CellSpec:
    return CellSpec(
        abbr=abbr, diameter=rng.uniform(30.0, 40.0), aspect=rng.uniform(1.0, 1.3), wobble=0.08,
        nucleus_fraction=rng.uniform(0.3, 0.4), nuc_length=rng.uniform(3.0, 5.0), nuc_bend=rng.uniform(2.5, 4.5),
        nuc_lobes=int(rng.integers(3, 6)), nuc_pinch=rng.uniform(0.3, 0.6), nuc_offset=rng.uniform(0.0, 0.3),
        nuc_wobble=0.15, nuc_density=0.95, chromatin_coarse=0.7, chromatin_contrast=0.4,
        cyto_density=0.35, cyto_blue=0.2, cyto_pink=0.8, granules={"specific": 1.0, "azurophilic": 0.3},
    )


def _other_cell(abbr: str, rng: np.random.Generator) -> CellSpec:
    kind = rng.choice(3, p=[0.4, 0.35, 0.25])
    return (_mast_cell, _macrophage, _megakaryocyte)[kind](abbr, rng)


SPECIAL_SPECS = {
    "EOS": _eosinophil, "ABE": _abnormal_eosinophil, "BAS": _basophil, "FGC": _faggot_cell, "MON": _monocyte,
    "PLM": _plasma_cell, "HAC": _hairy_cell, "KSC": _smudge_cell, "OTH": _other_cell,
}
CHAIN_SPECS = {"granulocytic": granulocytic_spec, "erythroid": erythroid_spec, "lymphoid": lymphoid_spec}
# Classes whose look is a whole patch rather than one cell (handled in render_patch)
PATCH_CLASSES = ("ART", "NIF")
# Cells a neighbour (cut by the patch edge) or a not-identifiable cell is drawn from, with frequencies
COMMON_CELLS = ("NGS", "NGB", "LYT", "EBO", "MYB", "PMO", "BLA", "MMZ", "MON", "EOS", "PLM")
COMMON_WEIGHTS = np.array([5, 3, 5, 6, 2, 2, 2, 1, 1, 1, 1], dtype=float) / 29.0


def sample_spec(abbr: str, rng: np.random.Generator, difficulty: float = 0.5) -> CellSpec:
    """The morphology of one cell of class `abbr` (not for ART/NIF, which are whole-patch looks)."""
    if abbr in CHAIN_OF:
        return CHAIN_SPECS[CHAIN_OF[abbr]](abbr, maturation(abbr, rng, difficulty), rng)
    return SPECIAL_SPECS[abbr](abbr, rng)


# --------------------------------------------------------------------------------------------------------------
# Painting helpers: local windows, shapes, textures
# --------------------------------------------------------------------------------------------------------------

_BANK = 384               # side of each precomputed noise texture
_ANGLES = 1024            # resolution of polar outline tables


@functools.lru_cache(maxsize=None)
def _noise_texture(scale: float) -> np.ndarray:
    """A fixed, tileable noise texture at one spatial scale: zero mean, unit std (same in every process)."""
    rng = np.random.default_rng(int(scale * 1000) + 7)
    noise = ndimage.gaussian_filter(rng.standard_normal((_BANK, _BANK)).astype(np.float32), scale, mode="wrap")
    return (noise - noise.mean()) / noise.std()


def _texture(rng: np.random.Generator, scale: float) -> np.ndarray:
    """A random SIZE x SIZE crop of a fixed texture, flipped/transposed at random (cheap and deterministic)."""
    y0, x0 = rng.integers(0, _BANK - SIZE + 1, size=2)
    tex = _noise_texture(scale)[y0:y0 + SIZE, x0:x0 + SIZE]
    k = int(rng.integers(8))
    if k & 1:
        tex = tex[::-1]
    if k & 2:
        tex = tex[:, ::-1]
    if k & 4:
        tex = tex.T
    return tex


@dataclass
class Window:
    """The part of the patch around a point: slices into the canvas and offsets (dx row, dy column) from it."""
    sl: tuple
    dx: np.ndarray
    dy: np.ndarray

    @classmethod
    def around(cls, cx: float, cy: float, radius: float) -> "Window | None":
        y0, y1 = max(0, int(cy - radius)), min(SIZE, int(cy + radius) + 2)
        x0, x1 = max(0, int(cx - radius)), min(SIZE, int(cx + radius) + 2)
        if y0 >= y1 or x0 >= x1:
            return None
        dy = (np.arange(y0, y1, dtype=np.float32) - cy)[:, None]
        dx = (np.arange(x0, x1, dtype=np.float32) - cx)[None, :]
        return cls((slice(y0, y1), slice(x0, x1)), dx, dy)


def _outline_table(rng: np.random.Generator, radius: float, aspect: float, wobble: float,
                   hairs: float = 0.0, blebs: float = 0.0) -> np.ndarray:
    """Radius of an outline as a function of angle (a table over [-pi, pi)): an ellipse with a wavy border."""
    theta = np.linspace(-np.pi, np.pi, _ANGLES, endpoint=False)
    rot = rng.uniform(0, np.pi)
    a = np.sqrt(aspect)
    r = radius / np.sqrt((np.cos(theta - rot) / a) ** 2 + (np.sin(theta - rot) * a) ** 2)
    wave = sum(rng.normal(0, wobble / k) * np.cos(k * theta + rng.uniform(0, 2 * np.pi)) for k in range(2, 7))
    r = r * (1 + wave)
    if hairs > 0:   # many narrow spikes: hair-like projections
        n = int(rng.integers(25, 50))
        centres, lengths = rng.uniform(-np.pi, np.pi, n), rng.uniform(0.3, 1.0, n) * hairs * radius
        for c, length in zip(centres, lengths):
            dtheta = np.angle(np.exp(1j * (theta - c)))
            r = np.maximum(r, r + length * np.exp(-(dtheta / (1.2 / radius)) ** 2))
    if blebs > 0:   # a few round bulges
        for c in rng.uniform(-np.pi, np.pi, int(rng.integers(1, 4))):
            dtheta = np.angle(np.exp(1j * (theta - c)))
            r = r + blebs * 0.15 * radius * np.exp(-(dtheta / 0.18) ** 2)
    return r.astype(np.float32)


def _polar(win: Window):
    dist = np.hypot(win.dx, win.dy)
    idx = ((np.arctan2(win.dy, win.dx) + np.pi) * (_ANGLES / (2 * np.pi))).astype(np.int32) % _ANGLES
    return dist, idx


def _soft(field: np.ndarray, edge: float = 1.0) -> np.ndarray:
    """Signed distance (px, positive inside) -> coverage in [0, 1] with an anti-aliased edge."""
    return np.clip(field / edge + 0.5, 0.0, 1.0)


def _tube_field(dx, dy, length: float, half_width: float, bend: float, rot: float, lobes: int, pinch: float):
    """Signed distance to a bent tube (px): a round nucleus (length 0), kidney, horseshoe or lobed band.

    The tube follows an arc of `length` px bent by `bend` radians, centred on the origin; its half-width
    narrows at `lobes - 1` places by `pinch` (0.85: lobes joined by thin threads).
    """
    c, s = np.cos(rot), np.sin(rot)
    x, y = c * dx + s * dy, -s * dx + c * dy
    if length < 1e-3:
        return half_width - np.hypot(x, y)
    if bend < 0.05:
        t = np.clip(x / length + 0.5, 0.0, 1.0)
        d = np.hypot(x - (t - 0.5) * length, y)
    else:
        bend = min(bend, 1.8 * np.pi)
        rho = length / bend
        y = y + rho * (1 - np.sin(bend / 2) / (bend / 2))   # put the arc's centroid on the origin
        phi = np.clip(np.arctan2(x, rho - y), -bend / 2, bend / 2)
        d = np.hypot(x - rho * np.sin(phi), y - rho * (1 - np.cos(phi)))
        t = phi / bend + 0.5
    width = np.full_like(d, half_width)
    if lobes > 1 and pinch > 0:
        dips = np.max([np.exp(-((t - k / lobes) / 0.06) ** 2) for k in range(1, lobes)], axis=0)
        width = half_width * (1 - pinch * dips)
    return width - d


def _dots(rng: np.random.Generator, region: np.ndarray, count: int, sigma: float, peak: float) -> np.ndarray:
    """`count` blurred dots (granules, precipitate) at random places of a window where region > 0.5."""
    h, w = region.shape
    out = np.zeros((h, w), np.float32)
    if count <= 0:
        return out
    ys, xs = rng.integers(0, h, count), rng.integers(0, w, count)
    amp = rng.uniform(0.6, 1.4, count).astype(np.float32) * (peak * 2 * np.pi * sigma ** 2)
    keep = region[ys, xs] > 0.5
    np.add.at(out, (ys[keep], xs[keep]), amp[keep])
    return ndimage.gaussian_filter(out, sigma, truncate=3.0)


def _segments(win: Window, rng: np.random.Generator, n: int, centre, spread: float, length: tuple,
              half_width: float, angle: float, angle_jitter: float) -> np.ndarray:
    """Coverage of n thin straight rods (Auer rods, streaks) in a bundle around `centre` (offsets in px)."""
    cover = np.zeros(np.broadcast_shapes(win.dx.shape, win.dy.shape), np.float32)
    for _ in range(n):
        ox, oy = centre[0] + rng.normal(0, spread), centre[1] + rng.normal(0, spread)
        a = angle + rng.normal(0, angle_jitter)
        half = rng.uniform(*length) / 2
        ux, uy = np.cos(a), np.sin(a)
        px, py = win.dx - ox, win.dy - oy
        t = np.clip(px * ux + py * uy, -half, half)
        d = np.hypot(px - t * ux, py - t * uy)
        cover = np.maximum(cover, _soft(half_width - d, 0.8))
    return cover


class Canvas:
    """Stain concentrations of the patch, one map per stain colour, painted object by object.

    Keeping 2-D maps per colour (and mixing them into RGB optical density once, in `optical_density`) is
    three times cheaper than adding RGB densities for every object.
    """

    def __init__(self, look: Look):
        self.look = look
        self.conc: dict[str, np.ndarray] = {}

    def add(self, sl, conc: np.ndarray, colour: str, gain: float = 1.0) -> None:
        if colour not in self.conc:
            self.conc[colour] = np.zeros((SIZE, SIZE), np.float32)
        target = self.conc[colour][sl]
        if gain == 1.0:
            target += conc
        else:
            target += conc * np.float32(gain)

    def optical_density(self) -> np.ndarray:
        channels = [np.zeros((SIZE, SIZE), np.float32) for _ in range(3)]
        for colour, conc in self.conc.items():
            for channel, weight in zip(channels, getattr(self.look, colour)):
                channel += np.float32(weight) * conc
        return np.stack(channels, axis=-1)


# --------------------------------------------------------------------------------------------------------------
# Painting a cell
# --------------------------------------------------------------------------------------------------------------


@dataclass
class StainJitter:
    """Per-slide stain intensity and colour response (drawn once per patch): same draws whatever the look."""
    haem: float = 1.0
    cyto: float = 1.0
    eos: float = 1.0
    rgb: tuple = (1.0, 1.0, 1.0)    # slide-to-slide colour balance: RGB densities times this


def paint_cell(canvas: Canvas, spec: CellSpec, cx: float, cy: float, rng: np.random.Generator,
               textures: dict, stain: StainJitter) -> tuple[Window | None, np.ndarray | None, np.ndarray | None]:
    """Paint one cell centred at (cx, cy); returns its window with cell and nucleus coverage there."""
    radius = spec.diameter * PX_PER_UM / 2
    table = _outline_table(rng, radius, spec.aspect, spec.wobble, spec.hairs, spec.blebs)
    win = Window.around(cx, cy, float(table.max()) + 3)
    if win is None:
        return None, None, None
    dist, idx = _polar(win)
    r_at = table[idx]
    cell = _soft(r_at - dist, 1.2)
    if spec.smudge:
        return win, *_paint_smudge(canvas, spec, win, cell, dist, r_at, rng, textures, stain)
    nucleus, nuc_conc = _nucleus(spec, win, radius, r_at, dist, rng, textures)
    cyto = cell * (1 - nucleus)
    rim = cell - _soft(r_at - 4.0 - dist, 2.0)    # the membrane edge reads darker, as in real smears
    _paint_cytoplasm(canvas, spec, win, cell, cyto + 0.3 * rim * (1 - nucleus), radius, rng, textures, stain)
    canvas.add(win.sl, nuc_conc * stain.haem, "haem")
    _paint_granules(canvas, spec, win, cell, cyto, rng, stain)
    if spec.auer_rods:
        _paint_auer_rods(canvas, spec, win, cell, nucleus, radius, rng)
    return win, cell, nucleus


def _nucleus(spec: CellSpec, win: Window, radius: float, r_at, dist, rng, textures):
    """Nucleus coverage and its chromatin density inside a cell's window."""
    area = spec.nucleus_fraction * np.pi * radius ** 2
    half_w = np.sqrt(area / (2 * spec.nuc_length + np.pi))
    length = spec.nuc_length * half_w
    extent = half_w + length / 2
    room = max(radius - extent - 3, 0.0)
    ang = rng.uniform(0, 2 * np.pi)
    ox, oy = spec.nuc_offset * room * np.cos(ang), spec.nuc_offset * room * np.sin(ang)
    sl = win.sl
    field = _tube_field(win.dx - ox, win.dy - oy, length, half_w, spec.nuc_bend, rng.uniform(0, 2 * np.pi),
                        spec.nuc_lobes, spec.nuc_pinch)
    field = field + spec.nuc_wobble * half_w * textures["blob"][sl]
    inside_cell = _soft(r_at - 2.0 - dist, 1.0)
    nucleus = _soft(field, 1.0) * inside_cell
    # chromatin: fine and open in young cells, coarse and clumped in mature ones
    c = spec.chromatin_coarse
    tex = (1 - c) * textures["fine"][sl] + c * textures["mid"][sl]
    if c > 0.5:
        tex = np.tanh(1.5 * tex)
    density = spec.nuc_density * (1 + spec.chromatin_contrast * (1 - spec.pyknotic) * tex)
    if spec.clockface:
        density = density * _clockface(win.dx - ox, win.dy - oy, half_w, rng)
    for _ in range(spec.nucleoli):
        r = rng.uniform(0, 0.45 * half_w)
        a = rng.uniform(0, 2 * np.pi)
        size = rng.uniform(5.0, 9.0)
        d = np.hypot(win.dx - ox - r * np.cos(a), win.dy - oy - r * np.sin(a))
        density = density * (1 - 0.5 * _soft(size - d, 3.0))
    return nucleus, np.maximum(density, 0) * nucleus


def _clockface(dx, dy, half_w: float, rng) -> np.ndarray:
    """Cartwheel chromatin: dark clumps on a ring plus one in the middle, paler between them."""
    n = int(rng.integers(6, 10))
    phase = rng.uniform(0, 2 * np.pi)
    clumps = np.exp(-(np.hypot(dx, dy) / (0.28 * half_w)) ** 2)
    for k in range(n):
        a = phase + 2 * np.pi * k / n
        px, py = 0.62 * half_w * np.cos(a), 0.62 * half_w * np.sin(a)
        clumps = np.maximum(clumps, np.exp(-(np.hypot(dx - px, dy - py) / (0.22 * half_w)) ** 2))
    return 0.55 + 0.7 * clumps


def _paint_cytoplasm(canvas, spec, win, cell, cyto, radius, rng, textures, stain):
    sl = win.sl
    conc = spec.cyto_density * cyto * (1 + 0.15 * textures["mid"][sl])
    if spec.hof > 0:   # pale Golgi zone: a soft ellipse beside the nucleus, towards the cell centre
        a = rng.uniform(0, 2 * np.pi)
        d = np.hypot(win.dx - 0.15 * radius * np.cos(a), win.dy - 0.15 * radius * np.sin(a))
        conc = conc * (1 - 0.6 * spec.hof * _soft(0.3 * radius - d, 6.0))
    if spec.hairs > 0:   # hairy projections are thin and pale
        conc = conc * (0.55 + 0.45 * _soft(cell * 8 - 4, 1.0))
    for _ in range(spec.vacuoles):
        r, a = rng.uniform(0.3, 0.85) * radius, rng.uniform(0, 2 * np.pi)
        size = rng.uniform(2.5, 7.0)
        d = np.hypot(win.dx - r * np.cos(a), win.dy - r * np.sin(a))
        conc = conc * (1 - 0.9 * _soft(size - d, 1.2))
    canvas.add(sl, conc * spec.cyto_blue, "baso", stain.cyto)
    canvas.add(sl, conc * spec.cyto_pink, "eosin", stain.eos)
    canvas.add(sl, conc * spec.cyto_grey, "grey", stain.cyto)


def _paint_granules(canvas, spec, win, cell, cyto, rng, stain):
    for name, amount in spec.granules.items():
        kind = GRANULES[name]
        region = cell if kind.over_nucleus else cyto
        # candidates fall uniformly over the window; those outside the region are dropped
        count = int(kind.per_px * amount * cell.size)
        conc = _dots(rng, region, count, kind.sigma, kind.peak) * cell
        gain = stain.eos if kind.colour == "eos_granule" else stain.haem
        canvas.add(win.sl, conc, kind.colour, gain)


def _paint_auer_rods(canvas, spec, win, cell, nucleus, radius, rng):
    """Bundles of thin red-purple needles (faggots) across the cytoplasm."""
    bundles = 1 + spec.auer_rods // 6
    for b in range(bundles):
        r, a = rng.uniform(0.35, 0.7) * radius, rng.uniform(0, 2 * np.pi)
        rods = _segments(win, rng, spec.auer_rods // bundles + 1, (r * np.cos(a), r * np.sin(a)), 3.0,
                         (0.25 * radius, 0.6 * radius), 1.1, rng.uniform(0, np.pi), 0.35)
        canvas.add(win.sl, 1.5 * rods * cell, "auer")


def _paint_smudge(canvas, spec, win, cell, dist, r_at, rng, textures, stain):
    """A ruptured cell: pale smeared nuclear material with streaks, no cytoplasm or membrane."""
    sl = win.sl
    streak_angle = rng.uniform(0, np.pi)
    streaks = _segments(win, rng, int(rng.integers(3, 9)), (0.0, 0.0), 0.25 * r_at.mean(),
                        (0.6 * r_at.mean(), 1.4 * r_at.mean()), 2.5, streak_angle, 0.3)
    body = cell * (0.55 + 0.45 * textures["coarse"][sl].clip(-1, 1))
    conc = spec.nuc_density * np.clip(body * (1 + 0.5 * textures["mid"][sl]) + 0.25 * streaks, 0, None)
    canvas.add(sl, conc * stain.haem, "haem", 0.75)
    canvas.add(sl, 0.25 * conc, "baso")
    nucleus = np.maximum(cell, streaks)
    return np.zeros_like(nucleus), nucleus    # no intact cytoplasm: the whole smudge is nuclear material


# --------------------------------------------------------------------------------------------------------------
# Context: background, red cells, neighbours, precipitate; whole-patch classes (ART, NIF)
# --------------------------------------------------------------------------------------------------------------


def _paint_red_cells(canvas: Canvas, rng, keep_out: tuple, textures) -> None:
    """Red cells with central pallor, scattered around (not on top of) the labelled cell."""
    cx0, cy0, r0 = keep_out
    for _ in range(int(rng.integers(3, 13))):
        r = rng.uniform(3.3, 4.0) * PX_PER_UM
        for _attempt in range(6):
            cx, cy = rng.uniform(-0.6 * r, SIZE + 0.6 * r, 2)
            if np.hypot(cx - cx0, cy - cy0) > r0 + 0.4 * r:
                break
        table = _outline_table(rng, r, rng.uniform(1.0, 1.15), 0.015)
        win = Window.around(cx, cy, float(table.max()) + 2)
        if win is None:
            continue
        dist, idx = _polar(win)
        rbc = _soft(table[idx] - dist, 1.3)
        pallor = np.exp(-(dist / (0.5 * r)) ** 2)
        conc = rbc * rng.uniform(0.35, 0.75) * (1 - 0.55 * pallor + 0.03 * textures["mid"][win.sl])
        canvas.add(win.sl, conc, "rbc")


def _paint_neighbours(canvas, rng, centre_radius: float, textures, stain, difficulty) -> None:
    """0-2 other white cells, mostly outside the patch, cut by its edge."""
    for _ in range(int(rng.choice([0, 1, 2, 2, 3, 3]))):
        spec = sample_spec(str(rng.choice(COMMON_CELLS, p=COMMON_WEIGHTS)), rng, difficulty)
        r = spec.diameter * PX_PER_UM / 2
        a = rng.uniform(0, 2 * np.pi)
        d = max(centre_radius + 0.6 * r, SIZE / 2 - 0.2 * r) + rng.uniform(0, 0.4 * r)
        paint_cell(canvas, spec, SIZE / 2 + d * np.cos(a), SIZE / 2 + d * np.sin(a), rng, textures, stain)


def _paint_precipitate(canvas, rng, count: int, sigma=(0.7, 1.6)) -> None:
    """Tiny purple dots on the background (platelets, stain precipitate)."""
    full = np.ones((SIZE, SIZE), np.float32)
    conc = _dots(rng, full, count, rng.uniform(*sigma), 0.45)
    canvas.add((slice(None), slice(None)), conc, "azur")


def _paint_artefact(canvas, rng, textures, stain, difficulty) -> None:
    """No diagnostic cell: precipitate, crushed fragments, a platelet clump or a cell cut off at the edge."""
    kind = int(rng.integers(4))
    full = Window.around(SIZE / 2, SIZE / 2, SIZE)
    if kind == 0:     # heavy stain precipitate
        _paint_precipitate(canvas, rng, int(rng.integers(150, 600)), (0.8, 2.2))
    elif kind == 1:   # crushed fragments of cells
        for _ in range(int(rng.integers(3, 8))):
            cx, cy = rng.uniform(30, 220, 2)
            r = rng.uniform(8, 35)
            win = Window.around(cx, cy, 1.5 * r)
            dist, idx = _polar(win)
            table = _outline_table(rng, r, rng.uniform(1.0, 2.5), 0.25)
            frag = _soft(table[idx] - dist, 2.0) * (0.6 + 0.4 * textures["mid"][win.sl])
            canvas.add(win.sl, frag * rng.uniform(0.2, 0.7), str(rng.choice(["haem", "baso", "eosin"])))
    elif kind == 2:   # platelet clump
        region = _soft(40 - np.hypot(full.dx - rng.normal(0, 25), full.dy - rng.normal(0, 25))
                       + 15 * textures["coarse"], 4.0)
        canvas.add(full.sl, 0.25 * region, "baso")
        canvas.add(full.sl, _dots(rng, region, int(rng.integers(200, 500)), 1.3, 0.6), "azur")
    else:             # the cell sits outside the patch: only an edge of it shows
        spec = sample_spec(str(rng.choice(COMMON_CELLS, p=COMMON_WEIGHTS)), rng, difficulty)
        r = spec.diameter * PX_PER_UM / 2
        a = rng.uniform(0, 2 * np.pi)
        d = SIZE / 2 + 0.5 * r
        paint_cell(canvas, spec, SIZE / 2 + d * np.cos(a), SIZE / 2 + d * np.sin(a), rng, textures, stain)
        _paint_precipitate(canvas, rng, int(rng.integers(10, 80)))


@functools.lru_cache(maxsize=1)
def _unit_grid() -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) / SIZE - 0.5
    return yy, xx


def _background(look: Look, rng) -> np.ndarray:
    """Illumination: a background colour between yellow-green and lilac, uneven across the patch."""
    u = rng.random() ** 0.5   # lilac backgrounds are the more common
    colour = (1 - u) * np.asarray(look.background[0]) + u * np.asarray(look.background[1])
    colour = colour * rng.uniform(0.94, 1.03)
    yy, xx = _unit_grid()
    gx, gy = rng.normal(0, 0.04, 2)
    light = 1 + gx * xx + gy * yy - look.vignette * rng.uniform(0.3, 1.0) * (xx ** 2 + yy ** 2)
    return light[..., None] * colour.astype(np.float32)


def _finish(canvas: Canvas, light: np.ndarray, rng, blur: float, stain: StainJitter) -> np.ndarray:
    """Optical density -> RGB uint8: stain gain and colour balance, focus blur, Beer-Lambert, sensor noise."""
    gain = canvas.look.stain_gain * np.asarray(canvas.look.channel_gain) * np.asarray(stain.rgb)
    od = canvas.optical_density() * gain.astype(np.float32)
    if blur > 0.3:
        od = ndimage.gaussian_filter(od, (blur, blur, 0), truncate=2.5)
    rgb = light * np.exp(-od)
    rgb += rng.standard_normal(rgb.shape[:2], dtype=np.float32)[..., None] * np.float32(canvas.look.noise)
    return np.clip(rgb * 255 + 0.5, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------------------------
# One patch
# --------------------------------------------------------------------------------------------------------------


def _textures(rng) -> dict:
    return {"fine": _texture(rng, 1.2), "mid": _texture(rng, 2.5), "coarse": _texture(rng, 6.0),
            "blob": _texture(rng, 14.0)}


def render_patch(abbr: str, rng: np.random.Generator, difficulty: float = 0.5, look: Look | None = None):
    """Draw one 250x250 patch of class `abbr`: (RGB uint8 array, uint8 mask 0/1/2)."""
    look = look or SHIFTS["none"]
    canvas = Canvas(look)
    light = _background(look, rng)
    textures = _textures(rng)
    stain = StainJitter(haem=rng.uniform(0.85, 1.15), cyto=rng.uniform(0.8, 1.2), eos=rng.uniform(0.8, 1.2),
                        rgb=tuple(rng.uniform(0.9, 1.1, 3)))
    blur = rng.uniform(*look.blur)
    mask = np.zeros((SIZE, SIZE), np.uint8)
    cx, cy = SIZE / 2 + rng.normal(0, 4, 2)

    if abbr == "ART":
        _paint_red_cells(canvas, rng, (cx, cy, 0.0), textures)
        _paint_artefact(canvas, rng, textures, stain, difficulty)
        return _finish(canvas, light, rng, blur, stain), mask

    degraded = abbr == "NIF"
    spec = sample_spec(str(rng.choice(COMMON_CELLS, p=COMMON_WEIGHTS)) if degraded else abbr, rng, difficulty)
    how = NIF_KINDS[rng.choice(len(NIF_KINDS), p=NIF_WEIGHTS)] if degraded else ""
    if degraded:
        spec, extra_blur = _degrade(spec, how, rng)
        blur += extra_blur
    radius = spec.diameter * PX_PER_UM / 2
    _paint_red_cells(canvas, rng, (cx, cy, radius), textures)
    _paint_neighbours(canvas, rng, radius, textures, stain, difficulty)
    win, cell, nucleus = paint_cell(canvas, spec, cx, cy, rng, textures, stain)
    if how == "overlapped":   # another cell lies across it: neither can be named
        other = sample_spec(str(rng.choice(COMMON_CELLS, p=COMMON_WEIGHTS)), rng, difficulty)
        a, d = rng.uniform(0, 2 * np.pi), rng.uniform(0.45, 0.8) * radius
        paint_cell(canvas, other, cx + d * np.cos(a), cy + d * np.sin(a), rng, textures, stain)
    _paint_precipitate(canvas, rng, int(rng.integers(0, 25)))
    mask[win.sl][cell > 0.5] = MASK_CYTOPLASM
    mask[win.sl][nucleus > 0.5] = MASK_NUCLEUS
    return _finish(canvas, light, rng, blur, stain), mask


NIF_KINDS = ("defocused", "pyknotic", "lysed", "overlapped")
NIF_WEIGHTS = (0.4, 0.25, 0.2, 0.15)


def _degrade(spec: CellSpec, how: str, rng) -> tuple[CellSpec, float]:
    """A cell too degraded or obscured to name, and the extra focus blur of its patch."""
    spec = replace(spec, abbr="NIF", nucleoli=0, hof=0.0)
    if how == "defocused":
        return replace(spec, granules={}), rng.uniform(2.0, 4.0)
    if how == "pyknotic":      # shrunken, ragged, a dense structureless nucleus, vacuolated cytoplasm
        return replace(spec, diameter=spec.diameter * rng.uniform(0.7, 0.9), wobble=spec.wobble + 0.1,
                       nuc_density=rng.uniform(1.2, 1.5), nuc_length=rng.uniform(0, 0.5), pyknotic=1.0,
                       nucleus_fraction=rng.uniform(0.25, 0.5), vacuoles=int(rng.integers(2, 8))), 0.0
    if how == "lysed":         # pale, washed out, torn outline
        return replace(spec, wobble=spec.wobble + rng.uniform(0.1, 0.2), nuc_density=spec.nuc_density * 0.55,
                       chromatin_contrast=0.1, cyto_density=spec.cyto_density * 0.45, granules={}), 0.0
    return spec, 0.0


def cell_rng(seed: int, abbr: str, n: int) -> np.random.Generator:
    """The random generator of image n of a class: the same whatever order or process draws it."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), ABBRS.index(abbr), int(n)]))


def generate_cell(abbr: str, rng: np.random.Generator, difficulty: float = 0.5, shift: str = "none"):
    """One synthetic cell: (PIL 250x250 RGB image, uint8 mask with 0 background, 1 cytoplasm, 2 nucleus)."""
    if abbr not in ABBRS:
        raise UserError(f"Unknown class {abbr!r}: expected one of {', '.join(ABBRS)}.")
    rgb, mask = render_patch(abbr, rng, float(difficulty), get_look(shift))
    return Image.fromarray(rgb, "RGB"), mask


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

