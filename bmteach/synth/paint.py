"""Painting one synthetic patch in optical density (Beer-Lambert): windows, shapes and textures, the labelled
cell, its context (background, red cells, neighbours, precipitate), the whole-patch classes (ART, NIF), and
the patch with its mask (`render_patch`, `generate_cell`)."""
from __future__ import annotations

import functools
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image
from scipy import ndimage

from bmteach.classes import ABBRS
from bmteach.errors import UserError
from bmteach.synth.looks import PX_PER_UM, SHIFTS, SIZE, Look, get_look
from bmteach.synth.morphology import COMMON_CELLS, COMMON_WEIGHTS, GRANULES, CellSpec, sample_spec

MASK_BACKGROUND, MASK_CYTOPLASM, MASK_NUCLEUS = 0, 1, 2
OCCLUSION = 0.85          # how much of what lies under a cell it hides

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
                   hairs: float = 0.0, blebs: float = 0.0, ruffle: float = 0.0, tail: float = 0.0) -> np.ndarray:
    """Radius of an outline as a function of angle (a table over [-pi, pi)): an ellipse with a wavy border,
    optionally ruffled (fine high-frequency waves) or drawn out into a teardrop tail."""
    theta = np.linspace(-np.pi, np.pi, _ANGLES, endpoint=False)
    rot = rng.uniform(0, np.pi)
    a = np.sqrt(aspect)
    r = radius / np.sqrt((np.cos(theta - rot) / a) ** 2 + (np.sin(theta - rot) * a) ** 2)
    wave = sum(rng.normal(0, wobble / k) * np.cos(k * theta + rng.uniform(0, 2 * np.pi)) for k in range(2, 7))
    if ruffle > 0:
        wave = wave + sum(rng.normal(0, ruffle / np.sqrt(k)) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
                          for k in range(7, 17, 2))
    r = r * (1 + wave)
    if tail > 0:
        dtheta = np.angle(np.exp(1j * (theta - rng.uniform(-np.pi, np.pi))))
        r = r * (1 + tail * np.exp(-(dtheta / 0.45) ** 2))
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

    def occlude(self, sl, cover: np.ndarray, strength: float) -> None:
        """Hide what is already painted under `cover` (a cell lies on top: real cells are nearly opaque and
        push their neighbours aside, they do not show red cells through them like soap bubbles)."""
        keep = 1 - np.float32(strength) * cover
        for conc in self.conc.values():
            conc[sl] *= keep

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
    table = _outline_table(rng, radius, spec.aspect, spec.wobble, spec.hairs, spec.blebs, spec.ruffle, spec.tail)
    win = Window.around(cx, cy, float(table.max()) + 3)
    if win is None:
        return None, None, None
    dist, idx = _polar(win)
    r_at = table[idx]
    cell = _soft(r_at - dist, 2.4)    # soft edges: real outlines are never pen-drawn
    canvas.occlude(win.sl, cell, OCCLUSION)
    if spec.smudge:
        return win, *_paint_smudge(canvas, spec, win, cell, dist, r_at, rng, textures, stain)
    nucleus, nuc_conc, nuc_at = _nucleus(spec, win, radius, r_at, dist, rng, textures)
    cyto = cell * (1 - nucleus)
    rim = cell - _soft(r_at - 4.0 - dist, 2.0)    # a faint membrane edge, no pen-drawn ring
    _paint_cytoplasm(canvas, spec, win, cell, cyto + 0.08 * rim * (1 - nucleus), radius, rng, textures, stain,
                     nuc_at)
    canvas.add(win.sl, nuc_conc * stain.haem, "haem")
    _paint_granules(canvas, spec, win, cell, cyto, rng, stain, textures)
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
    nucleus = _soft(field, 1.8) * inside_cell
    # chromatin: smooth and open in young cells, lacy (a network of strands) to clumped in mature ones; no
    # pixel-scale speckle (real chromatin sits at the scale of a few px and is softened by the optics)
    c = spec.chromatin_coarse
    tex = (1 - c) * textures["fine"][sl] + c * textures["lacy"][sl]
    if c > 0.6:
        tex = np.tanh(1.5 * tex)
    density = spec.nuc_density * (1 + spec.chromatin_contrast * (1 - spec.pyknotic) * tex)
    if spec.clockface:
        density = density * _clockface(win.dx - ox, win.dy - oy, half_w, rng)
    for _ in range(spec.nucleoli):
        r = rng.uniform(0, 0.45 * half_w)
        a = rng.uniform(0, 2 * np.pi)
        size = rng.uniform(4.0, 8.0)
        d = np.hypot(win.dx - ox - r * np.cos(a), win.dy - oy - r * np.sin(a))
        density = density * (1 - spec.nucleolus_contrast * _soft(size - d, 4.0))
    return nucleus, np.maximum(density, 0) * nucleus, (ox, oy, extent)


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


def _paint_cytoplasm(canvas, spec, win, cell, cyto, radius, rng, textures, stain, nuc_at=(0.0, 0.0, 0.0)):
    sl = win.sl
    conc = spec.cyto_density * cyto * (1 + 0.15 * textures["mid"][sl])
    if spec.hof > 0:   # pale Golgi zone: a soft patch touching the nucleus on the side of the cell centre
        ox, oy, extent = nuc_at
        norm = np.hypot(ox, oy)
        ux, uy = (-ox / norm, -oy / norm) if norm > 1 else (np.cos(a := rng.uniform(0, 2 * np.pi)), np.sin(a))
        hx, hy = ox + ux * (extent + 0.1 * radius), oy + uy * (extent + 0.1 * radius)
        d = np.hypot(win.dx - hx, win.dy - hy)
        conc = conc * (1 - 0.7 * spec.hof * _soft(0.28 * radius - d, 5.0))
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


def _paint_granules(canvas, spec, win, cell, cyto, rng, stain, textures):
    for name, amount in spec.granules.items():
        kind = GRANULES[name]
        region = cell if kind.over_nucleus else cyto
        if kind.clustered:   # coarse granules gather in clumps rather than being sprinkled evenly
            region = region * (textures["coarse"][win.sl] > -0.3)
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


def _paint_red_cells(canvas: Canvas, rng, keep_out: tuple, textures, packed: float | None = None) -> None:
    """Opaque pink-beige red cells, from a few to packed, pressed against (slightly under) the labelled cell;
    central pallor from clear to absent, sometimes crenated (a spiky outline)."""
    cx0, cy0, r0 = keep_out
    packed = rng.random() if packed is None else packed
    count = int(2 + packed * 16 * rng.uniform(0.5, 1.0))
    opacity = rng.uniform(0.35, 0.8)           # per slide: how strongly the red cells take the stain
    pallor_depth = rng.uniform(0.0, 0.45)
    crenated = rng.random() < 0.2
    pink = rng.uniform(0.3, 1.0)               # per slide: pink-beige ... grey-green red cells
    layer = np.zeros((SIZE, SIZE), np.float32)  # opaque: overlapping red cells do not add up (max, not sum)
    for _ in range(count):
        r = rng.uniform(3.1, 4.0) * PX_PER_UM
        for _attempt in range(6):
            cx, cy = rng.uniform(-0.6 * r, SIZE + 0.6 * r, 2)
            if np.hypot(cx - cx0, cy - cy0) > r0 + 0.1 * r:
                break
        table = _outline_table(rng, r, rng.uniform(1.0, 1.2), 0.025, ruffle=0.02 if crenated else 0.0)
        win = Window.around(cx, cy, float(table.max()) + 2)
        if win is None:
            continue
        dist, idx = _polar(win)
        rbc = _soft(table[idx] - dist, 2.0)
        pallor = np.exp(-(dist / (0.45 * r)) ** 2)
        conc = rbc * opacity * rng.uniform(0.85, 1.1) * (1 - pallor_depth * pallor + 0.04 * textures["mid"][win.sl])
        np.maximum(layer[win.sl], conc, out=layer[win.sl])
    full = (slice(None), slice(None))
    canvas.add(full, layer, "rbc", pink)
    canvas.add(full, layer, "rbc_grey", 1 - pink)


def _paint_neighbours(canvas, rng, centre_radius: float, textures, stain, difficulty) -> None:
    """0-2 other white cells, mostly outside the patch, cut by its edge."""
    for _ in range(int(rng.choice([0, 1, 1, 2, 2, 3]))):
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


def _paint_film(canvas, rng, textures, amount: float) -> None:
    """A faint plasma/protein film over the background and a few pale debris flakes (not every slide)."""
    if amount <= 0:
        return
    full = (slice(None), slice(None))
    film = np.clip(textures["blob"] + rng.normal(0, 0.5), 0, None) * np.float32(amount * rng.uniform(0.0, 0.08))
    canvas.add(full, film, str(rng.choice(["baso", "eosin", "grey"])))
    for _ in range(int(rng.integers(0, 4) * amount)):
        cx, cy = rng.uniform(0, SIZE, 2)
        r = rng.uniform(3, 14)
        win = Window.around(cx, cy, 1.6 * r)
        dist, idx = _polar(win)
        table = _outline_table(rng, r, rng.uniform(1.0, 2.5), 0.2)
        flake = _soft(table[idx] - dist, 2.0) * (0.7 + 0.3 * textures["mid"][win.sl])
        canvas.add(win.sl, flake * rng.uniform(0.05, 0.25), str(rng.choice(["haem", "baso", "grey", "eosin"])))


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


def _background(look: Look, rng, bright: tuple | None = None) -> np.ndarray:
    """Illumination: a mix of two background tints (cream, yellow-green, grey, blue-grey, pink, lilac) at a
    brightness either dim or bright (bimodal, as real smears), uneven across the patch."""
    p = np.asarray(look.background_weights, float)
    i, j = rng.choice(len(look.background), 2, p=p / p.sum())
    u = rng.random()
    colour = (1 - u) * np.asarray(look.background[i]) + u * np.asarray(look.background[j])
    lo, hi = bright or look.bg_bright
    # real backgrounds are bimodal (fit half: about a quarter of patches dim, the rest bright): 28% of patches
    # from the bottom quarter of the range, the rest from its top third
    level = rng.uniform(0.0, 0.25) if rng.random() < 0.28 else rng.uniform(0.65, 1.0)
    colour = colour * (lo + (hi - lo) * level)
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
    fine, mid = _texture(rng, 1.8), _texture(rng, 2.5)
    return {"fine": fine, "mid": mid, "lacy": _lacy(rng), "coarse": _texture(rng, 6.0), "blob": _texture(rng, 14.0)}


@functools.lru_cache(maxsize=None)
def _lacy_texture() -> np.ndarray:
    """A network of dark strands with pale gaps (lacy chromatin): ridges of a band-pass noise, zero mean."""
    band = _noise_texture(2.2) - 0.6 * _noise_texture(4.5)
    ridges = 1.0 - np.abs(band) / np.abs(band).mean()
    return ((ridges - ridges.mean()) / ridges.std()).astype(np.float32)


def _lacy(rng) -> np.ndarray:
    y0, x0 = rng.integers(0, _BANK - SIZE + 1, size=2)
    tex = _lacy_texture()[y0:y0 + SIZE, x0:x0 + SIZE]
    return tex.T if rng.random() < 0.5 else tex


def render_patch(abbr: str, rng: np.random.Generator, difficulty: float = 0.5, look: Look | None = None):
    """Draw one 250x250 patch of class `abbr`: (RGB uint8 array, uint8 mask 0/1/2)."""
    look = look or SHIFTS["none"]
    canvas = Canvas(look)
    # not-identifiable cells come mostly from thin, bright areas of the smear (so do the real ones)
    light = _background(look, rng, (max(look.bg_bright[0], 0.8), look.bg_bright[1]) if abbr == "NIF" else None)
    textures = _textures(rng)
    stain = StainJitter(haem=rng.uniform(0.75, 1.25), cyto=rng.uniform(0.7, 1.35), eos=rng.uniform(0.75, 1.25),
                        rgb=tuple(rng.uniform(0.85, 1.15, 3)))
    blur = rng.uniform(*look.blur) + (rng.uniform(0.5, 1.5) if rng.random() < 0.15 else 0.0)
    mask = np.zeros((SIZE, SIZE), np.uint8)
    cx, cy = SIZE / 2 + rng.normal(0, 4, 2)
    _paint_film(canvas, rng, textures, look.film)

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
    if how == "cut":          # the cell lies half outside the frame
        a = rng.uniform(0, 2 * np.pi)
        cx, cy = SIZE / 2 + (SIZE / 2 - rng.uniform(0.0, 0.5) * radius) * np.array([np.cos(a), np.sin(a)])
    _paint_red_cells(canvas, rng, (cx, cy, radius), textures)
    _paint_neighbours(canvas, rng, radius, textures, stain, difficulty)
    win, cell, nucleus = paint_cell(canvas, spec, cx, cy, rng, textures, stain)
    if how in ("overlapped", "cluster"):   # other cells lie across it or crowd it: none can be named
        for _ in range(1 if how == "overlapped" else int(rng.integers(2, 4))):
            other = sample_spec(str(rng.choice(COMMON_CELLS, p=COMMON_WEIGHTS)), rng, difficulty)
            a, d = rng.uniform(0, 2 * np.pi), rng.uniform(0.45, 0.8 if how == "overlapped" else 1.1) * radius
            paint_cell(canvas, other, cx + d * np.cos(a), cy + d * np.sin(a), rng, textures, stain)
    _paint_precipitate(canvas, rng, int(rng.integers(0, 12)))
    mask[win.sl][cell > 0.5] = MASK_CYTOPLASM
    mask[win.sl][nucleus > 0.5] = MASK_NUCLEUS
    return _finish(canvas, light, rng, blur, stain), mask


NIF_KINDS = ("defocused", "pyknotic", "lysed", "overlapped", "naked", "smudged", "cut", "cluster")
NIF_WEIGHTS = (0.2, 0.22, 0.08, 0.1, 0.18, 0.06, 0.08, 0.08)   # real ones: mostly small, dark and compact


def _degrade(spec: CellSpec, how: str, rng) -> tuple[CellSpec, float]:
    """A cell too degraded or obscured to name, and the extra focus blur of its patch."""
    spec = replace(spec, abbr="NIF", nucleoli=0, hof=0.0)
    if how == "defocused":
        return replace(spec, granules={}), rng.uniform(2.0, 4.0)
    if how == "pyknotic":      # shrunken, ragged, a dense structureless nucleus, vacuolated cytoplasm
        return replace(spec, diameter=spec.diameter * rng.uniform(0.7, 0.9), wobble=spec.wobble + 0.1,
                       nuc_density=rng.uniform(1.3, 1.9), nuc_length=rng.uniform(0, 0.5), pyknotic=1.0,
                       nucleus_fraction=rng.uniform(0.25, 0.5), vacuoles=int(rng.integers(2, 8))), 0.0
    if how == "lysed":         # pale, washed out, torn outline
        return replace(spec, wobble=spec.wobble + rng.uniform(0.1, 0.2), nuc_density=spec.nuc_density * 0.55,
                       chromatin_contrast=0.1, cyto_density=spec.cyto_density * 0.45, granules={}), 0.0
    if how == "naked":         # a bare nucleus: the cytoplasm is gone
        return replace(spec, nucleus_fraction=0.92, nuc_offset=0.0, cyto_density=0.05, granules={},
                       diameter=spec.diameter * rng.uniform(0.55, 0.75), nuc_wobble=0.15), rng.uniform(0, 1.0)
    if how == "smudged":       # squashed, streaky nuclear material
        return replace(spec, smudge=True, nuc_density=rng.uniform(0.4, 0.7), wobble=0.18), rng.uniform(0, 1.0)
    return spec, rng.uniform(0.0, 1.5)


def cell_rng(seed: int, abbr: str, n: int) -> np.random.Generator:
    """The random generator of image n of a class: the same whatever order or process draws it."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), ABBRS.index(abbr), int(n)]))


def generate_cell(abbr: str, rng: np.random.Generator, difficulty: float = 0.5, shift: str = "none"):
    """One synthetic cell: (PIL 250x250 RGB image, uint8 mask with 0 background, 1 cytoplasm, 2 nucleus)."""
    if abbr not in ABBRS:
        raise UserError(f"Unknown class {abbr!r}: expected one of {', '.join(ABBRS)}.")
    rgb, mask = render_patch(abbr, rng, float(difficulty), get_look(shift))
    return Image.fromarray(rgb, "RGB"), mask
