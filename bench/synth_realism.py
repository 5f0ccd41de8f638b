"""Realism of the synthetic cells, statistic by statistic, class by class, against the real sample.

    .venv/bin/python bench/synth_realism.py [--real ../shared/realdata/BM_cytomorphology_sample]
        [--per-class 30] [--half test] [--figure docs/synthetic-realism.png] [--synth-root DIR]

Measures on every patch (bench/realism_common.py, the same crude segmentation for both): the labelled cell's
equivalent diameter in px, nucleus/cell area ratio, solidity and contour roughness (perimeter^2 / 4 pi area,
1 = circle), nuclear and cytoplasmic RGB, chromatin texture at two scales (grey-level sd of the 0-1 px and
1-4 px band inside the nucleus), background brightness and colour (R-B) and the spread of brightness between
images, crowding (share of the frame stained outside the labelled cell), red cells (share of frame, RGB),
stained share of the frame, blur (variance of the Laplacian) and contrast (grey-level sd).

The real sample is split by file name with a fixed seed (realism_common.real_split, seed 12): statistics that
steer the generator come from the FIT half; this table reports the TEST half unless --half fit.
`--synth-root DIR` measures another copy of the generator (DIR/bmteach), e.g. an older commit extracted with
`git archive <commit> bmteach | tar -x -C DIR`.

Prints a synthetic-vs-real table (mean per class) and draws box plots of the main statistics (no real pixels).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from realism_common import REAL, STATS, image_stats, load_rgb, real_split  # noqa: E402

CLASSES = ("BLA", "EOS", "LYT", "MON", "NGS", "NIF", "PMO")
FIGURE_STATS = ("diameter_px", "nc_ratio", "solidity", "bg_bright", "laplacian_var", "grey_sd", "crowding",
                "tex_fine", "tex_coarse", "rbc_share")


def synthetic_stats(per_class: int, seed: int) -> dict[str, list[dict]]:
    from bmteach import synth
    out = {}
    for abbr in CLASSES:
        rows = []
        for n in range(1, per_class + 1):
            image, _ = synth.generate_cell(abbr, synth.cell_rng(seed, abbr, n))
            rows.append(image_stats(np.asarray(image)))
        out[abbr] = rows
    return out


def real_stats(files: dict) -> dict[str, list[dict]]:
    return {abbr: [image_stats(load_rgb(f)) for f in files[abbr]] for abbr in CLASSES if abbr in files}


def column(rows: list[dict], stat: str) -> np.ndarray:
    v = np.array([r[stat] for r in rows], float)
    return v[np.isfinite(v)]


def summary(rows: list[dict], stat: str) -> float:
    if stat == "bg_bright_sd":
        v = column(rows, "bg_bright")
        return float(v.std()) if len(v) else np.nan
    v = column(rows, stat)
    return float(v.mean()) if len(v) else np.nan


def print_table(syn: dict, real: dict, half: str) -> None:
    stats = list(STATS) + ["bg_bright_sd"]
    print(f"\nmean per class: synthetic / real ({half} half of the real sample)")
    print(f"{'statistic':>14} " + " ".join(f"{c:>13}" for c in CLASSES) + f" {'all':>13}")
    for stat in stats:
        cells = []
        for c in CLASSES:
            cells.append(f"{summary(syn[c], stat):6.2f}/{summary(real[c], stat):<6.2f}")
        all_syn = sum((syn[c] for c in CLASSES), [])
        all_real = sum((real[c] for c in CLASSES), [])
        cells.append(f"{summary(all_syn, stat):6.2f}/{summary(all_real, stat):<6.2f}")
        print(f"{stat:>14} " + " ".join(f"{x:>13}" for x in cells))


def draw_figure(syn: dict, real: dict, path: Path, half: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 5, figsize=(20, 7.5))
    for ax, stat in zip(axes.ravel(), FIGURE_STATS):
        data, positions, colours = [], [], []
        for i, c in enumerate(CLASSES):
            data += [column(syn[c], stat), column(real[c], stat)]
            positions += [3 * i, 3 * i + 1]
            colours += ["#8c6bb1", "#e6a04a"]
        parts = ax.boxplot(data, positions=positions, widths=0.8, patch_artist=True, showfliers=False)
        for patch, colour in zip(parts["boxes"], colours):
            patch.set_facecolor(colour)
        ax.set_xticks([3 * i + 0.5 for i in range(len(CLASSES))], CLASSES, fontsize=8)
        ax.set_title(stat, fontsize=10)
    axes[0, 0].legend([plt.Rectangle((0, 0), 1, 1, fc="#8c6bb1"), plt.Rectangle((0, 0), 1, 1, fc="#e6a04a")],
                      ["synthetic", f"real ({half} half)"], fontsize=8)
    fig.suptitle("Synthetic vs real cells: realism statistics per class (bench/synth_realism.py)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=70)
    print(f"figure: {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--real", type=Path, default=REAL, help="real sample folder (<ABBR>/.../*.jpg)")
    ap.add_argument("--per-class", type=int, default=30, help="synthetic cells per class")
    ap.add_argument("--seed", type=int, default=0, help="synthetic seed")
    ap.add_argument("--half", choices=("test", "fit"), default="test")
    ap.add_argument("--figure", type=Path, default=None, help="write box plots here (PNG)")
    ap.add_argument("--synth-root", type=Path, default=None, help="import bmteach from DIR instead")
    args = ap.parse_args()
    sys.path.insert(0, str(args.synth_root.resolve() if args.synth_root else HERE.parent))
    if not args.real.is_dir():
        sys.exit(f"real sample not found: {args.real}")
    started = time.perf_counter()
    fit, test = real_split(args.real)
    real = real_stats(test if args.half == "test" else fit)
    syn = synthetic_stats(args.per_class, args.seed)
    import bmteach.synth as synth_module
    print(f"generator {synth_module.__file__} version {synth_module.GENERATOR_VERSION}; "
          f"{args.per_class} synthetic and {len(next(iter(real.values())))} real cells per class "
          f"({time.perf_counter() - started:.0f} s)")
    print_table(syn, real, args.half)
    if args.figure:
        draw_figure(syn, real, args.figure, args.half)


if __name__ == "__main__":
    main()
