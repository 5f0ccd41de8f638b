"""How long each app interaction takes (AppTest, headless, one session): prints seconds per step.

    .venv/bin/python bench/bench_app.py            # models/demo + built-in synthetic data when the demo exists
    .venv/bin/python bench/bench_app.py --tiny     # a random-weight sequential CNN at 128 px on 2 cells/class
    .venv/bin/python bench/bench_app.py --run RUN --data DIR
    .venv/bin/python bench/bench_app.py --tries 5 --json out.json   # medians, as bench_browser.py prints them

The first run of a page includes loading the model and the caches; later steps are what a student waits for.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def tiny_setup(root: Path, image_size: int = 128) -> tuple[Path, Path]:
    import torch

    from bmteach.classes import ABBRS
    from bmteach.data import build_manifest, index, write_manifest
    from bmteach.models import ModelMeta, create_model, save_checkpoint
    from bmteach.synth import generate_dataset

    data = generate_dataset(root / "data", per_class=2, seed=0)
    run = root / "run"
    run.mkdir()
    write_manifest(build_manifest(index(data), k=5, seed=0), run / "manifest.csv")
    torch.manual_seed(0)
    for fold in range(5):
        meta = ModelMeta(model="sequential", image_size=image_size, fold=fold, complete=True)
        save_checkpoint(create_model("sequential", len(ABBRS)), meta, run / f"fold{fold}" / "model.pt")
    return data, run


RESULTS: dict[str, list[float]] = {}


def timed(label: str, step, key: str | None = None) -> None:
    """Run one step and print its seconds; `key` (an action name of bench_browser.py) also records them."""
    start = time.perf_counter()
    at = step()
    seconds = time.perf_counter() - start
    if at is not None and at.exception:
        print(f"{label:55s} EXCEPTION {[e.value for e in at.exception]}")
    else:
        print(f"{label:55s} {seconds:7.3f} s")
        if key:
            RESULTS.setdefault(key, []).append(seconds)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tiny", action="store_true", help="use a tiny random run instead of models/demo")
    parser.add_argument("--run", help="run folder to use (default: models/demo)")
    parser.add_argument("--data", help="data folder to use (default: the built-in synthetic set)")
    parser.add_argument("--tries", type=int, default=1, help="repeat the timed actions (median in --json)")
    parser.add_argument("--json", help="write the median seconds per action (bench_browser.py's names) here")
    args = parser.parse_args()
    os.environ.setdefault("BMTEACH_HOME", tempfile.mkdtemp(prefix="bmteach-bench-home-"))
    from streamlit.testing.v1 import AppTest

    from bmteach import settings
    from bmteach.storage import DEMO_RUN

    if args.run or args.data:
        for name, value in ((settings.RUN_ENV, args.run), (settings.DATA_ENV, args.data)):
            if value:
                os.environ[name] = str(Path(value).resolve())
        print(f"run {args.run or DEMO_RUN}, data {args.data or 'built-in synthetic'}")
    elif args.tiny or not settings.trained_folds(DEMO_RUN):
        data, run = tiny_setup(Path(tempfile.mkdtemp(prefix="bmteach-bench-")))
        os.environ[settings.DATA_ENV], os.environ[settings.RUN_ENV] = str(data), str(run)
        print(f"tiny run: random sequential CNN at 128 px, 5 folds, {run}")
    elif os.environ.get(settings.DATA_ENV):
        print(f"demo run {DEMO_RUN}, data {os.environ[settings.DATA_ENV]}")
    else:
        print(f"demo run {DEMO_RUN}, built-in synthetic data under {os.environ['BMTEACH_HOME']}")
    import torch
    print(f"torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}")

    def page(name):
        return AppTest.from_file(str(REPO / name), default_timeout=600)

    home = page("app.py")
    timed("home: first run (incl. data generation / index)", home.run)
    timed("home: rerun", home.run)
    atlas = page("pages/1_Atlas.py")
    timed("atlas: first run", atlas.run)
    timed("atlas: pick another class (MMZ)", lambda: atlas.selectbox(key="atlas_class").select("MMZ").run())
    ex = page("pages/3_Explain.py")
    timed("explain: first run (load model, predict, Grad-CAM)", ex.run)
    classes = ["NGS", "EOS", "LYT", "MON", "PMO", "BLA", "PEB", "BAS", "MMZ", "NGB", "PLM", "HAC"]
    targets = ["EOS", "MYB", "LYT", "BAS", "MON", "PLM", "NGB", "KSC", "ART", "EBO", "LYI", "OTH"]
    for i in range(args.tries):
        # a page change in AppTest: the page script run again from the top (what a sidebar click runs)
        timed("explain: rerun of the whole page (page change)", ex.run, "page change")
        timed(f"explain: another class ({classes[i % 12]}; its first image, predict + Grad-CAM x3)",
              lambda: ex.selectbox(key="explain_class").select(classes[i % 12]).run(), "class change")
        thumbs = [b for b in ex.button if b.key.startswith("explain_thumb_")]
        timed("explain: another image of the class (thumbnail)",
              lambda: thumbs[(i + 1) % len(thumbs)].click().run(), "new image with maps")
        timed("explain: opacity slider", lambda: ex.slider(key="explain_alpha").set_value(
            0.7 if i % 2 == 0 else 0.5).run(), "opacity slider")
        timed("explain: another target class (Grad-CAM)",
              lambda: ex.selectbox(key="explain_target").select(targets[i % 12]).run(), "target change")
        timed("explain: SmoothGrad, 25 samples", lambda: ex.button(key="explain_smoothgrad").click().run(),
              "SmoothGrad (25 samples)")
        timed("explain: sanity check", lambda: ex.toggle(key="explain_sanity").set_value(True).run(), "sanity check")
        timed("explain: deletion curve", lambda: ex.toggle(key="explain_deletion").set_value(True).run(),
              "deletion curve")
        ex.toggle(key="explain_sanity").set_value(False)
        ex.toggle(key="explain_deletion").set_value(False).run()
    timed("explain: rerun with everything cached", ex.run)
    if args.json:
        import json
        import statistics
        Path(args.json).write_text(json.dumps({k: statistics.median(v) for k, v in RESULTS.items()}))


if __name__ == "__main__":
    main()
