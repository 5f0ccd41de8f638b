"""Synthetic bone-marrow cells: the embedded default data set, drawn procedurally with cell/nucleus masks.

Every patch is 250x250 px at the real data set's scale (a patch is about 21 um, so ~12 px per um). A cell is
painted in optical density (Beer-Lambert): each stain adds absorbance, and the image is the illumination
times exp(-density). That keeps colours where real May-Grunwald-Giemsa smears are (purple nuclei, blue to pink
cytoplasm, grey-pink red cells) and makes overlapping objects darker, as in a real smear.

Morphology follows ../shared/design/taxonomy.md. The maturation chains (BLA-PMO-MYB-MMZ-NGB-NGS, PEB-EBO,
LYI-LYT) come from one continuous maturation parameter per chain; each class owns an interval of it and
`difficulty` widens the intervals into their neighbours, so tolerated pairs are genuinely confusable.

The package, in drawing order: looks (stains, scanners, patch geometry), morphology (what a cell of each class
looks like), paint (one patch and its mask), dataset (folders on disk, the app's default set).

These images are synthetic: they teach shapes and colours, not diagnosis. `synth.json` in a generated folder
says so, and every place that shows one must say so too.
"""
from __future__ import annotations

from bmteach.synth.dataset import (DEFAULT_PER_CLASS, DEFAULT_SEED, GENERATOR, GENERATOR_VERSION, RANGE_BLOCK,
                                   default_dataset_is_current, ensure_default_dataset, generate_dataset,
                                   image_relpath, is_synthetic, mask_path, range_folder, read_description)
from bmteach.synth.looks import JPEG_QUALITY, PX_PER_UM, SHIFTS, SIZE, Look, get_look
from bmteach.synth.morphology import CellSpec, granulocytic_spec, maturation, sample_spec
from bmteach.synth.paint import (MASK_BACKGROUND, MASK_CYTOPLASM, MASK_NUCLEUS, cell_rng, generate_cell,
                                 render_patch)

__all__ = [
    "DEFAULT_PER_CLASS", "DEFAULT_SEED", "GENERATOR", "GENERATOR_VERSION", "RANGE_BLOCK", "default_dataset_is_current",
    "ensure_default_dataset", "generate_dataset", "image_relpath", "is_synthetic", "mask_path", "range_folder",
    "read_description", "JPEG_QUALITY", "PX_PER_UM", "SHIFTS", "SIZE", "Look", "get_look", "CellSpec",
    "granulocytic_spec", "maturation", "sample_spec", "MASK_BACKGROUND", "MASK_CYTOPLASM", "MASK_NUCLEUS",
    "cell_rng", "generate_cell", "render_patch",
]
