"""How long each app interaction takes (AppTest, headless, one session): prints seconds per step.

    .venv/bin/python bench/bench_app.py            # models/demo + built-in synthetic data when the demo exists
    .venv/bin/python bench/bench_app.py --tiny     # a random-weight sequential CNN at 128 px on 2 cells/class
    .venv/bin/python bench/bench_app.py --run RUN --data DIR

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


def timed(label: str, step) -> None:
    start = time.perf_counter()
    at = step()
    seconds = time.perf_counter() - start
    if at is not None and at.exception:
        print(f"{label:55s} EXCEPTION {[e.value for e in at.exception]}")
    else:
        print(f"{label:55s} {seconds:7.3f} s")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tiny", action="store_true", help="use a tiny random run instead of models/demo")
    parser.add_argument("--run", help="run folder to use (default: models/demo)")
    parser.add_argument("--data", help="data folder to use (default: the built-in synthetic set)")
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
    timed("explain: another class's image (predict + Grad-CAM x3)",
          lambda: ex.selectbox(key="explain_class").select("NGS").run())
    timed("explain: opacity slider", lambda: ex.slider(key="explain_alpha").set_value(0.7).run())
    target = "EOS" if ex.selectbox(key="explain_target").value != "EOS" else "BAS"
    timed("explain: another target class (Grad-CAM)", lambda: ex.selectbox(key="explain_target").select(target).run())
    timed("explain: SmoothGrad, 25 samples", lambda: ex.button(key="explain_smoothgrad").click().run())
    timed("explain: sanity check", lambda: ex.toggle(key="explain_sanity").set_value(True).run())
    timed("explain: deletion curve", lambda: ex.toggle(key="explain_deletion").set_value(True).run())
    timed("explain: rerun with everything cached", ex.run)


if __name__ == "__main__":
    main()
