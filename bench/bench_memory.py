"""Memory per upload (issue 14 item 1): peak RSS while N students upload a large image at once, and RSS after
their sessions are over.

Every scenario runs in a fresh child process, so its RSS is its own (the parent only writes the files):
  uploads   N threads call ui.decode_image at once (the app's cached upload decoder: images.load_image, then a
            shrink to ui.MAX_SIDE), each on its own file of one kind (distinct bytes, so no cache hit); a sampler
            thread reads VmRSS from /proc/self/status every 2 ms. Reported: RSS before (modules imported, files
            read), peak, after, per-upload outcome (decoded size or the refusal) and wall time.
  sessions  S sessions one after another, each decoding its own photo upload (3,000 x 2,000 JPEG) through
            ui.decode_image, as Explain does; then nothing refers to them any more. Reported: RSS idle, after the
            S sessions (after gc), and after st.cache_data.clear() (what Streamlit's caches held).
Streamlit's caches work without a server (bare mode), so these are the app's own cached functions; sessions are
approximated by calls from threads (no browser, no session state, no model).

python bench/bench_memory.py [--tree PATH] [--concurrent 6] [--sessions 30] [--kinds float-tiff-6324 ...]
--tree PATH imports bmteach from another checkout (e.g. `git worktree`/`git archive` of an older commit), to
compare before and after on the same machine.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent

# kind -> (size, how to draw file i); float TIFFs compress to a few hundred kB, as in the attack
KINDS = {
    "float-tiff-6324": (6324, 6324), "float-tiff-4000": (4000, 4000), "jpeg-6000x4000": (6000, 4000),
    "png-rgb-4000": (4000, 4000),
}


def make_file(kind: str, i: int) -> bytes:
    """File i of a kind: distinct bytes per i (the cache never answers), content cheap to compress."""
    w, h = KINDS[kind]
    buf = io.BytesIO()
    if kind.startswith("float-tiff"):
        Image.new("F", (w, h), 0.25 + 0.01 * i).save(buf, "TIFF", compression="tiff_adobe_deflate")
    else:
        ramp = np.linspace(0, 255, w, dtype=np.float32)[None, :, None]
        pixels = np.broadcast_to(ramp, (h, w, 3)).astype(np.uint8).copy()
        pixels[i % h, :, 0] = 7  # one different row per file
        fmt = "JPEG" if kind.startswith("jpeg") else "PNG"
        Image.fromarray(pixels).save(buf, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def photo(i: int) -> bytes:
    """A 3,000 x 2,000 phone-photo-like JPEG (smooth colours plus mild noise), distinct per i."""
    rng = np.random.default_rng(i)
    y, x = np.mgrid[0:2000, 0:3000].astype(np.float32)
    base = np.stack([120 + 60 * np.sin(x / 300 + i), 100 + 50 * np.cos(y / 250), 180 + 40 * np.sin((x + y) / 400)], -1)
    pixels = np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=88)
    return buf.getvalue()


CHILD_COMMON = textwrap.dedent("""
    import gc, json, sys, threading, time
    from pathlib import Path

    def rss_mb():
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024

    import logging
    logging.getLogger("streamlit").setLevel(logging.ERROR)
    from bmteach import ui
    from bmteach.errors import UserError
""")

CHILD_UPLOADS = CHILD_COMMON + textwrap.dedent("""
    files = [Path(p) for p in sys.argv[1:]]
    datas = [p.read_bytes() for p in files]
    gc.collect()
    before = rss_mb()
    peak = [before]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], rss_mb())
            time.sleep(0.002)

    results = [None] * len(datas)
    go = threading.Barrier(len(datas))

    def upload(i):
        go.wait()
        t0 = time.perf_counter()
        try:
            im = ui.decode_image(datas[i], files[i].name)
            outcome = f"decoded, shown at {im.size[0]}x{im.size[1]}"
        except UserError as exc:
            outcome = f"refused: {exc}"
        results[i] = {"seconds": round(time.perf_counter() - t0, 2), "outcome": outcome}

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    threads = [threading.Thread(target=upload, args=(i,)) for i in range(len(datas))]
    for t in threads: t.start()
    for t in threads: t.join()
    wall = time.perf_counter() - t0
    stop.set(); sampler.join()
    gc.collect()
    print(json.dumps({"rss_before_mb": round(before), "rss_peak_mb": round(peak[0]), "rss_after_mb": round(rss_mb()),
                      "wall_s": round(wall, 2), "uploads": results}))
""")

CHILD_SESSIONS = CHILD_COMMON + textwrap.dedent("""
    files = [Path(p) for p in sys.argv[1:]]
    gc.collect()
    idle = rss_mb()

    def session(path):
        data = path.read_bytes()           # the upload, as Streamlit hands it to the page
        ui.decode_image(data, path.name)   # Explain's decode (cached per image)

    for path in files:                     # one session after another, each in its own thread
        t = threading.Thread(target=session, args=(path,)); t.start(); t.join()
    gc.collect()
    after = rss_mb()
    import streamlit as st
    st.cache_data.clear()
    gc.collect()
    cleared = rss_mb()
    print(json.dumps({"sessions": len(files), "rss_idle_mb": round(idle), "rss_after_sessions_mb": round(after),
                      "held_per_session_mb": round((after - idle) / max(len(files), 1), 2),
                      "rss_after_cache_clear_mb": round(cleared)}))
""")


def run_child(code: str, files: list[Path], tree: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree), "BMTEACH_HOME": tempfile.mkdtemp(prefix="bench-mem-home-")}
    done = subprocess.run([sys.executable, "-c", code, *map(str, files)], capture_output=True, text=True, env=env,
                          cwd=tree, timeout=1800)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["?"])[-1], "status": done.returncode}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", default=str(REPO), help="checkout whose bmteach is measured (default: this one)")
    parser.add_argument("--concurrent", type=int, default=6)
    parser.add_argument("--sessions", type=int, default=30)
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=list(KINDS))
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    tree = Path(args.tree).resolve()
    report = {"tree": str(tree), "concurrent": args.concurrent, "uploads": {}, "sessions": None}
    with tempfile.TemporaryDirectory(prefix="bench-mem-") as tmp:
        for kind in args.kinds:
            files = []
            for i in range(args.concurrent):
                path = Path(tmp) / f"{kind}-{i}.{'tif' if 'tiff' in kind else kind.split('-')[0]}"
                path.write_bytes(make_file(kind, i))
                files.append(path)
            result = run_child(CHILD_UPLOADS, files, tree)
            result["file_kb"] = round(files[0].stat().st_size / 1024)
            report["uploads"][kind] = result
            print(f"{kind} ({KINDS[kind][0]}x{KINDS[kind][1]}, {result['file_kb']} kB) x{args.concurrent} at once: "
                  + (f"RSS {result['rss_before_mb']} -> peak {result['rss_peak_mb']} -> {result['rss_after_mb']} MB, "
                     f"{result['wall_s']} s; {result['uploads'][0]['outcome'][:110]}"
                     if "error" not in result else f"child failed: {result['error']}"), flush=True)
        if args.sessions:
            photos = []
            for i in range(args.sessions):
                path = Path(tmp) / f"photo-{i}.jpg"
                path.write_bytes(photo(i))
                photos.append(path)
            report["sessions"] = run_child(CHILD_SESSIONS, photos, tree)
            s = report["sessions"]
            print(f"{args.sessions} sessions, one 3000x2000 photo each: " + (
                f"RSS idle {s['rss_idle_mb']} MB, after the sessions {s['rss_after_sessions_mb']} MB "
                f"({s['held_per_session_mb']} MB held per session), after clearing st.cache_data "
                f"{s['rss_after_cache_clear_mb']} MB" if "error" not in s else f"child failed: {s['error']}"))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
