"""Make the documentation figures of the synthetic cells.

    .venv/bin/python bench/make_comparison.py [--out docs]

docs/synthetic-vs-real.png: for each class present in ../shared/realdata, a row of synthetic cells (left, seed 0
of the default data set) next to real cells (right). docs/synthetic-classes.png: a contact sheet of all 21
synthetic classes. Real cells appear only in the first figure (CC BY 4.0, Matek et al. 2021, TCIA).
"""
from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bmteach import synth  # noqa: E402
from bmteach.classes import ABBRS, class_name  # noqa: E402

REAL = Path(__file__).resolve().parent.parent.parent / "shared" / "realdata" / "BM_cytomorphology_sample"
TILE, LABEL_W, HEADER = 96, 150, 26


def synthetic_tile(abbr: str, n: int) -> Image.Image:
    image, _ = synth.generate_cell(abbr, synth.cell_rng(synth.DEFAULT_SEED, abbr, n))
    return image.resize((TILE, TILE), Image.LANCZOS)


def real_tiles(abbr: str, count: int) -> list[Image.Image]:
    files = sorted((REAL / abbr).rglob("*.jpg"))[::7][:count]
    return [Image.open(f).convert("RGB").resize((TILE, TILE), Image.LANCZOS) for f in files]


def sheet(rows: list[tuple[str, list[Image.Image]]], header: str, split: int | None = None) -> Image.Image:
    width = LABEL_W + max(len(tiles) for _, tiles in rows) * TILE + (12 if split else 0)
    img = Image.new("RGB", (width, HEADER + len(rows) * TILE), "white")
    draw = ImageDraw.Draw(img)
    draw.text((6, 7), header, fill="black")
    for r, (label, tiles) in enumerate(rows):
        y = HEADER + r * TILE
        draw.text((6, y + TILE // 2 - 12), label, fill="black")
        for i, tile in enumerate(tiles):
            x = LABEL_W + i * TILE + (12 if split and i >= split else 0)
            img.paste(tile, (x, y))
    return img


def save_png(img: Image.Image, path: Path) -> None:
    """Quantised PNG: keeps each figure well under 1 MB."""
    buf = io.BytesIO()
    img.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.FLOYDSTEINBERG).save(
        buf, "PNG", optimize=True)
    path.write_bytes(buf.getvalue())
    print(f"wrote {path} ({len(buf.getvalue()) / 1e6:.2f} MB)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "docs"))
    ap.add_argument("--per-row", type=int, default=4)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    k = args.per_row
    if REAL.is_dir():
        classes = [c for c in ABBRS if (REAL / c).is_dir()]
        rows = [(f"{c} {class_name(c)}", [synthetic_tile(c, n) for n in range(1, k + 1)] + real_tiles(c, k))
                for c in classes]
        save_png(sheet(rows, f"left: {k} SYNTHETIC cells (bmteach generator)   |   right: {k} REAL cells "
                             "(Matek et al. 2021, TCIA, CC BY 4.0)", split=k), out / "synthetic-vs-real.png")
    else:
        print(f"{REAL} not found: synthetic-vs-real.png not made")
    rows = [(f"{c} {class_name(c)}", [synthetic_tile(c, n) for n in range(1, 2 * k + 1)]) for c in ABBRS]
    save_png(sheet(rows, "SYNTHETIC cells, all 21 classes (bmteach generator, seed 0): not real patients' cells"),
             out / "synthetic-classes.png")


if __name__ == "__main__":
    main()
