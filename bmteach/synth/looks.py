"""Stains and acquisition looks of the synthetic generator: stain colours in optical density per scanner
("none", "scanner-b", "faded"), and the patch geometry every part shares (250 px, ~12 px per um)."""
from __future__ import annotations

from dataclasses import dataclass

from bmteach.errors import UserError

SIZE = 250                # patch size in px, as the real data set
PX_PER_UM = SIZE / 21.0   # a real patch spans about 21 um
JPEG_QUALITY = 95         # the real files are quality-100 4:2:0 JPEGs; 95 keeps the data set half the size

# --------------------------------------------------------------------------------------------------------------
# Stains and acquisition looks
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Look:
    """Stain colours (optical density per unit concentration, RGB) and acquisition properties of one scanner."""
    name: str
    # nuclear stain: violet (generator 5: less red absorbed than before; real nuclei read violet, not navy)
    haem: tuple = (1.10, 1.85, 0.48)
    baso: tuple = (0.85, 1.30, 0.06)        # basophilic (RNA-rich) cytoplasm: blue
    eosin: tuple = (0.30, 0.54, 0.10)       # acidophilic cytoplasm: pink-lilac
    grey: tuple = (0.60, 0.60, 0.25)        # ground-glass grey (monocytes, hairy cells)
    rbc: tuple = (0.22, 0.44, 0.34)         # red cells: opaque pink-beige (green absorbed most)
    rbc_grey: tuple = (0.42, 0.40, 0.40)    # red cells on slides where they read grey
    # eosinophilic granules: salmon-mauve, packed densely enough to tint the whole cytoplasm (green absorbed most,
    # then blue, then red; generator 4's sparse rose-mauve ones left the cytoplasm pale lilac, unlike real
    # eosinophils; absorbing blue more than this turns the cytoplasm redder than blue, which no real one is)
    eos_granule: tuple = (0.28, 0.75, 0.38)
    azur: tuple = (0.70, 1.60, 0.50)        # azurophilic granules: purple-red
    dark_granule: tuple = (1.60, 2.20, 0.90)  # basophilic / mast-cell granules: purple-black
    auer: tuple = (0.80, 1.70, 0.60)        # Auer rods: red-purple
    # background tints (RGB relative to grey) mixed pairwise, times a brightness drawn from bg_bright: cream,
    # yellow-green, grey, blue-grey, pink, lilac (real backgrounds: RGB brightness ~0.6-0.95, mostly bluish)
    background: tuple = ((1.04, 1.02, 0.92), (0.99, 1.04, 0.95), (0.98, 1.0, 1.03), (0.94, 0.98, 1.09),
                         (1.03, 0.96, 1.02), (0.98, 0.95, 1.09))
    background_weights: tuple = (0.08, 0.1, 0.2, 0.25, 0.12, 0.25)
    bg_bright: tuple = (0.56, 1.0)          # background brightness range (a bimodal draw, see paint._background)
    film: float = 1.0                       # faint plasma film and debris on the background
    stain_gain: float = 1.1                 # all densities times this
    channel_gain: tuple = (1.1, 1.16, 0.95)  # the scanner's colour response: RGB densities times this
    blur: tuple = (0.9, 2.0)                # focus: Gaussian sigma range in px (real patches are soft)
    vignette: float = 0.10                  # illumination fall-off towards the corners
    noise: float = 0.004                    # sensor noise (0-1 scale)
    jpeg_quality: int = JPEG_QUALITY


SHIFTS: dict[str, Look] = {
    "none": Look("none"),
    # Another lab and scanner: redder eosin, bluer haematoxylin, warm background, softer focus, harder JPEG.
    "scanner-b": Look(
        "scanner-b", haem=(1.95, 2.25, 0.45), baso=(1.05, 0.70, 0.05), eosin=(0.15, 0.95, 0.45),
        rbc=(0.35, 0.80, 0.55), eos_granule=(0.10, 1.30, 1.20),
        background=((1.03, 0.99, 0.86), (1.02, 0.96, 0.92)), background_weights=(0.5, 0.5), bg_bright=(0.9, 0.98),
        stain_gain=0.8, blur=(2.0, 3.2),
        vignette=0.22, noise=0.015, jpeg_quality=75),
    # A faded, under-stained slide on a bright scanner.
    "faded": Look("faded", background=((1.0, 1.0, 0.98), (0.99, 0.98, 1.01)), background_weights=(0.5, 0.5),
                  bg_bright=(0.93, 0.99), stain_gain=0.55, blur=(1.0, 2.0), vignette=0.05, film=0.3),
}


def get_look(shift: str) -> Look:
    if shift not in SHIFTS:
        raise UserError(f"Unknown shift {shift!r}: choose one of {', '.join(SHIFTS)}.")
    return SHIFTS[shift]
