"""How long does `index` take on a tree the size of the full data set (171,374 files)?

Generates the real TCIA layout in a temporary folder (per-class counts from bmteach.classes; classes with
1000+ images in range folders 0001-1000, 1001-2000, ..., the last one truncated; smaller classes flat), every
file the same tiny but valid JPEG, then times:
  - index, first call in a fresh process ("cold-ish": the files were just written, so the OS caches are warm;
    a real cold disk is slower),
  - index again in the same process (warm),
  - build_manifest (5 stratified folds) and write_manifest,
  - index(verify=True) on one class folder and on the real 420-cell sample when present, extrapolated.
Usage: python bench/bench_index.py [--scale 1.0] [--dir /tmp] [--keep]
"""
from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bmteach import data  # noqa: E402
from bmteach.classes import CLASSES  # noqa: E402


def tiny_jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (2, 2), (180, 120, 200)).save(buf, "JPEG", quality=50)
    return buf.getvalue()


def range_folder(n: int, count: int) -> str:
    """The range folder of the n-th image (1-based): 0001-1000, ..., the last one ending at count."""
    start = (n - 1) // 1000 * 1000 + 1
    end = min(start + 999, count)
    return f"{start:04d}-{end}"


def generate_tree(top: Path, scale: float) -> int:
    content = tiny_jpeg()
    total = 0
    for c in CLASSES:
        count = max(1, round(c.count * scale))
        made = set()
        for n in range(1, count + 1):
            folder = top / c.abbr / range_folder(n, count) if count >= 1000 else top / c.abbr
            if folder not in made:
                folder.mkdir(parents=True, exist_ok=True)
                made.add(folder)
            fd = os.open(folder / f"{c.abbr}_{n:05d}.jpg", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.write(fd, content)
            os.close(fd)
        total += count
    return total


def time_index_in_fresh_process(root: Path) -> float:
    code = ("import time,sys; sys.path.insert(0, %r); from bmteach import data; t=time.perf_counter(); "
            "r=data.index(%r); print(time.perf_counter()-t, len(r.items))") % (str(REPO), str(root))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    seconds, found = out.split()
    return float(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the full data set's size")
    parser.add_argument("--dir", default=None, help="where to create the temporary tree")
    parser.add_argument("--keep", action="store_true", help="keep the generated tree")
    args = parser.parse_args()

    base = Path(tempfile.mkdtemp(prefix="bench-index-", dir=args.dir))
    top = base / "BM_cytomorphology_data"
    try:
        t = time.perf_counter()
        total = generate_tree(top, args.scale)
        print(f"generated {total:,} files in {time.perf_counter() - t:.1f} s under {base}")

        cold = time_index_in_fresh_process(base)
        print(f"index, first call in a fresh process: {cold:.2f} s ({total / cold:,.0f} files/s)")

        t = time.perf_counter()
        result = data.index(base)
        warm = time.perf_counter() - t
        assert len(result.items) == total and not result.skipped, (len(result.items), result.skipped[:3])
        print(f"index, warm:                          {warm:.2f} s ({total / warm:,.0f} files/s)")

        t = time.perf_counter()
        df = data.build_manifest(result, k=5, seed=0)
        data.write_manifest(df, base / "manifest.csv")
        print(f"build_manifest (5 folds) + write:     {time.perf_counter() - t:.2f} s")

        sample = top / "MON"  # 4,040 files in 5 range folders
        t = time.perf_counter()
        n = len(data.index(sample.parent, mapping={c.abbr: "" for c in CLASSES if c.abbr != "MON"},
                           verify=True).items)
        per_file = (time.perf_counter() - t) / n
        print(f"index(verify=True) on {n:,} files:     {per_file * 1e6:.0f} us/file "
              f"(~{per_file * total:.0f} s for {total:,} files; tiny 2x2 JPEGs)")
        real = REPO.parent / "shared" / "realdata" / "BM_cytomorphology_sample"
        if real.is_dir():  # real 250x250 JPEGs decode far slower than the tiny ones above
            t = time.perf_counter()
            n = len(data.index(real, verify=True).items)
            per_file = (time.perf_counter() - t) / n
            print(f"index(verify=True) on {n} real cells:  {per_file * 1e3:.2f} ms/file "
                  f"(~{per_file * total / 60:.1f} min for {total:,} real files)")
    finally:
        if args.keep:
            print(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
