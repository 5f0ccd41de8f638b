"""What a synthetic cell looks like: one CellSpec per drawn cell, sampled per class.

The maturation chains (BLA-PMO-MYB-MMZ-NGB-NGS, PEB-EBO, LYI-LYT) come from one continuous maturation parameter
per chain; each class owns an interval of it and `difficulty` widens the intervals into their neighbours, so
tolerated pairs are genuinely confusable. Morphology follows ../shared/design/taxonomy.md.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np



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
    ruffle: float = 0.012           # fine waves of the outline (ruffled membranes of monocytes, blasts)
    tail: float = 0.0               # a teardrop tail: extra radius in one direction, as a fraction
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
    nucleolus_contrast: float = 0.3  # how much paler a nucleolus is than the chromatin around it
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
    clustered: bool = False         # gathered in clumps (coarse azurophilic granules of promyelocytes)


GRANULES = {
    "azurophilic": GranuleKind("azur", 1.7, 0.42, 0.045, False, True),
    "specific": GranuleKind("azur", 1.1, 0.14, 0.060, False),
    "dust": GranuleKind("azur", 0.9, 0.12, 0.030, False),
    "eosinophilic": GranuleKind("eos_granule", 1.6, 0.42, 0.120, False),
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
    lobes = int(rng.choice([2, 3, 3, 3, 4, 4])) if t > 0.8 else 1
    young = t < 0.2
    return CellSpec(
        abbr=abbr,
        # sizes measured against the fit half of the real sample (bench/synth_realism.py): smaller than before
        diameter=_along(t, k, (12.0, 15.5, 13.5, 12.0, 11.0, 10.5)) * rng.uniform(0.85, 1.15),
        aspect=rng.uniform(1.0, 1.2),
        wobble=rng.uniform(0.03, 0.08),
        ruffle=rng.uniform(0.0, 0.035) if young else 0.01,
        tail=rng.uniform(0.1, 0.3) if young and rng.random() < 0.3 else 0.0,    # teardrop blasts
        nucleus_fraction=_along(t, k, (0.74, 0.45, 0.38, 0.34, 0.34, 0.38)) * rng.uniform(0.88, 1.12),
        nuc_length=_along(t, k, (0.25, 0.45, 0.6, 1.6, 4.5, 6.0)) * rng.uniform(0.8, 1.25),
        nuc_bend=_along(t, k, (0.2, 0.3, 0.9, 2.3, 3.2, 3.3)) * rng.uniform(0.5, 1.35),   # C ... horseshoe
        nuc_lobes=lobes,
        nuc_pinch=_along(t, (0.8, 0.95), (0.0, 0.88)),
        nuc_offset=_along(t, k, (0.35, 0.8, 0.6, 0.35, 0.15, 0.1)) * rng.uniform(0.6, 1.15),
        nuc_wobble=_along(t, k, (0.07, 0.07, 0.09, 0.1, 0.12, 0.14)),
        # young nuclei are dense violet with a fine visible chromatin (generator 5; real blasts' nuclei are not flat)
        nuc_density=_along(t, k, (0.85, 0.8, 0.82, 0.88, 1.0, 1.05)) * rng.uniform(0.85, 1.15),
        chromatin_coarse=_along(t, k, (0.0, 0.15, 0.45, 0.65, 0.8, 0.9)),
        chromatin_contrast=_along(t, k, (0.2, 0.22, 0.3, 0.38, 0.4, 0.42)),
        nucleoli=int(rng.integers(1, 4)) if rng.random() < _along(t, k, (0.8, 0.45, 0.05, 0, 0, 0)) else 0,
        nucleolus_contrast=rng.uniform(0.08, 0.3),                              # faint, never crisp white
        cyto_density=_along(t, k, (0.62, 0.55, 0.46, 0.45, 0.45, 0.45)) * rng.uniform(0.85, 1.15),
        cyto_blue=_along(t, k, (1.2, 0.95, 0.35, 0.12, 0.04, 0.0)),
        cyto_pink=_along(t, k, (0.0, 0.1, 0.5, 0.7, 0.8, 0.8)),
        cyto_grey=_along(t, k, (0.0, 0.0, 0.1, 0.25, 0.3, 0.3)),
        hof=_along(t, k, (0.0, 0.8, 0.5, 0.1, 0, 0)) * rng.uniform(0.4, 1.0),
        vacuoles=int(rng.choice([0, 0, 0, 2, 3])) if 0.15 < t < 0.4 else 0,
        granules={
            "azurophilic": _along(t, (0.13, 0.24, 0.43, 0.6, 0.7), (0.0, 1.0, 0.35, 0.05, 0.0)) * rng.uniform(0.6, 1.3),
            "specific": _along(t, k, (0.0, 0.15, 0.7, 0.85, 0.9, 0.9)) * rng.uniform(0.7, 1.3),
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
        diameter=_along(t, k, (12.5, 11.8, 10.0, 8.8, 8.2)) * rng.uniform(0.85, 1.15),
        aspect=rng.uniform(1.0, 1.15),
        wobble=0.04,
        nucleus_fraction=_along(t, k, (0.75, 0.75, 0.76, 0.78, 0.8)) * rng.uniform(0.9, 1.05),
        nuc_length=rng.uniform(0.0, 0.7),                                        # round to oval
        nuc_bend=rng.uniform(0.5, 1.6) * (rng.random() < 0.3),                  # sometimes notched
        nuc_offset=rng.uniform(0.1, 0.5),
        nuc_density=_along(t, k, (0.72, 0.75, 0.95, 1.1, 1.15)) * rng.uniform(0.9, 1.1),
        chromatin_coarse=_along(t, k, (0.05, 0.1, 0.3, 0.35, 0.4)),              # smooth, dark violet
        chromatin_contrast=_along(t, k, (0.15, 0.16, 0.22, 0.22, 0.22)),
        nucleoli=int(rng.integers(1, 3)) if rng.random() < _along(t, k, (0.8, 0.6, 0.05, 0, 0)) else 0,
        cyto_density=_along(t, k, (0.55, 0.55, 0.42, 0.34, 0.32)) * rng.uniform(0.8, 1.2),
        cyto_blue=_along(t, k, (1.0, 1.0, 0.8, 0.7, 0.7)),
    )


def _eosinophil(abbr: str, rng: np.random.Generator) -> CellSpec:
    if rng.random() < 0.4:   # many marrow eosinophils are immature: a round or oval, unlobed nucleus
        shape = dict(nuc_length=rng.uniform(0.0, 1.0), nuc_bend=rng.uniform(0.0, 1.0), nuc_lobes=1,
                     nuc_offset=rng.uniform(0.3, 0.7), nucleus_fraction=rng.uniform(0.3, 0.42))
    else:
        shape = dict(nuc_length=rng.uniform(2.5, 4.0), nuc_bend=rng.uniform(1.5, 3.0),
                     nuc_lobes=int(rng.choice([1, 2, 2])), nuc_pinch=rng.uniform(0.3, 0.85),
                     nuc_offset=rng.uniform(0.1, 0.4), nucleus_fraction=rng.uniform(0.25, 0.35))
    return CellSpec(
        abbr=abbr, diameter=rng.uniform(10.0, 13.5), aspect=rng.uniform(1.0, 1.2), **shape,
        nuc_density=rng.uniform(0.75, 0.95), chromatin_coarse=0.6, chromatin_contrast=0.3,
        cyto_density=0.25, cyto_blue=rng.uniform(0.3, 0.7), cyto_pink=0.3, cyto_grey=0.3,  # pale blue-grey
        granules={"eosinophilic": rng.uniform(0.6, 1.2)},                        # packed salmon-mauve granules
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
        # smaller than before (fit half of the real sample); kidney-shaped or folded nucleus with lacy
        # chromatin, violet-grey vacuolated cytoplasm, ruffled edges
        abbr=abbr, diameter=rng.uniform(11.5, 15.0), aspect=rng.uniform(1.0, 1.3), wobble=rng.uniform(0.05, 0.1),
        ruffle=rng.uniform(0.02, 0.05),
        nucleus_fraction=rng.uniform(0.5, 0.72), nuc_length=rng.uniform(0.6, 2.2), nuc_bend=rng.uniform(1.5, 3.6),
        nuc_lobes=int(rng.choice([1, 1, 2])), nuc_pinch=rng.uniform(0.0, 0.35), nuc_offset=rng.uniform(0.1, 0.5),
        nuc_wobble=0.16, nuc_density=rng.uniform(0.65, 0.85), chromatin_coarse=0.4, chromatin_contrast=0.22,
        cyto_density=rng.uniform(0.38, 0.5), cyto_blue=0.7, cyto_grey=0.2, cyto_pink=0.3,
        vacuoles=int(rng.choice([0, 2, 4, 6, 9])), granules={"dust": rng.uniform(0.3, 0.8)},
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
