"""Explain benchmarks (issue 5): prints figures, asserts nothing.

  (a) Grad-CAM for one image vs one forward+backward of the same model, and vs pytorch-grad-cam's GradCAM
      on the same model and image (ResNeXt-50 at 250 px with random weights; the demo sequential at 128 px)
  (b) SmoothGrad with 25 samples vs 25 forward+backward passes in one batch
  (c) with a run (default models/demo) and its synthetic data (default: the app's synthetic data set):
      share of Grad-CAM energy inside the cell mask, the sanity-check rank correlation, deletion AUCs

    .venv/bin/python bench/bench_explain.py [--threads 2] [--repeats 5] [--cells 100] [--run RUN] [--data DIR]

pytorch-grad-cam is only needed here: pip install -r bench/requirements-bench.txt (part (a) says when missing).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bmteach import explain, maps  # noqa: E402
from bmteach.models import create_model  # noqa: E402
from bmteach.storage import DEMO_RUN, default_data_dir  # noqa: E402


def median_time(fn, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def interleaved(fns: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each function, run in turns so a busy shared machine slows all of them alike."""
    for fn in fns.values():
        fn()  # warm-up
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def forward_backward(model, x, target):
    """One ordinary training-style pass: forward, backward of the target logit (weight gradients included)."""
    def run():
        model.zero_grad(set_to_none=True)
        model(x)[0, target].backward()
    return run


def forward_backward_to_input(model, x, target):
    """Forward and backward to the input only (what a saliency method needs)."""
    def run():
        xg = x.clone().requires_grad_()
        torch.autograd.grad(model(xg)[:, target].sum(), xg)
    return run


def grad_cam_library(model, x, target):
    try:
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    except ImportError:
        return None
    cam = GradCAM(model=model, target_layers=[model.cam_layer])  # built once, as a viewer would keep it
    targets = [ClassifierOutputTarget(target)]
    return lambda: cam(input_tensor=x, targets=targets)[0]


def part_a(name: str, model, size: int, repeats: int) -> None:
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    target = 3
    fns = {
        "forward+backward (weights)": forward_backward(model, x, target),
        "forward+backward (input)": forward_backward_to_input(model, x, target),
        "bmteach gradcam": lambda: explain.gradcam(model, x, target),
    }
    library = grad_cam_library(model, x, target)
    if library is not None:
        fns["pytorch-grad-cam GradCAM"] = library
    t = interleaved(fns, repeats)
    base = t["forward+backward (weights)"]
    print(f"\n(a) Grad-CAM, {name} at {size}x{size}, 1 image, median of {repeats}")
    for k, v in t.items():
        print(f"    {k:28s} {v * 1000:8.1f} ms   {v / base:5.2f}x forward+backward")
    if library is not None:
        ours, theirs = explain.gradcam(model, x, target), library()
        print(f"    pytorch-grad-cam / bmteach time: {t['pytorch-grad-cam GradCAM'] / t['bmteach gradcam']:.2f}x; "
              f"maps agree: max |difference| = {np.abs(ours - theirs).max():.4f} (0-1 scale)")
    else:
        print("    pytorch-grad-cam not installed (pip install -r bench/requirements-bench.txt): no side-by-side")


def part_b(name: str, model, size: int, repeats: int, samples: int = 25) -> None:
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    target = 3
    batch = x.repeat(samples, 1, 1, 1)
    fives = [forward_backward_to_input(model, batch[i:i + 5], target) for i in range(0, samples, 5)]
    fns = {
        f"{samples} fwd+bwd, one batch": forward_backward_to_input(model, batch, target),
        f"{samples} fwd+bwd, batches of 5": lambda: [f() for f in fives],
        "smoothgrad, batches of 5": lambda: explain.smoothgrad(model, x, target, samples=samples, batch_size=5),
        f"smoothgrad, one batch of {samples}": lambda: explain.smoothgrad(model, x, target, samples=samples,
                                                                          batch_size=samples),
    }
    t = interleaved(fns, repeats)
    base = t[f"{samples} fwd+bwd, one batch"]
    print(f"\n(b) SmoothGrad {samples} samples, {name} at {size}x{size}, median of {repeats}")
    for k, v in t.items():
        print(f"    {k:28s} {v * 1000:8.1f} ms   {v / base:5.2f}x")


def pick_cells(predictor, n: int, seed: int = 0) -> list[tuple[str, str]]:
    """Up to n data-set images spread over the classes (round robin over a seeded shuffle per class), only from
    folds whose model exists (a run still training has fewer)."""
    rng = np.random.default_rng(seed)
    by_class: dict[str, list[str]] = {}
    for path in predictor.data_paths:
        if predictor.fold_of(path) not in predictor.folds:
            continue
        by_class.setdefault(path.split("/")[0], []).append(path)
    for paths in by_class.values():
        rng.shuffle(paths)
    picked, i = [], 0
    while len(picked) < n and any(i < len(p) for p in by_class.values()):
        for label, paths in sorted(by_class.items()):
            if i < len(paths) and len(picked) < n:
                picked.append((paths[i], label))
        i += 1
    return picked


def part_c(run: Path, data: Path, cells: int, deletion_cells: int) -> None:
    from PIL import Image

    from bmteach.images import load_image
    from bmteach.infer import Predictor
    from bmteach.synth import mask_path

    print(f"\n(c) demo model on synthetic cells: run {run}, data {data}")
    predictor = Predictor.from_run(run, device="cpu")
    energies, areas, peaks, correlations, aucs, random_aucs, cam_times, hits = [], [], [], [], [], [], [], 0
    picked = pick_cells(predictor, cells)
    for i, (rel, label) in enumerate(picked):
        mpath = mask_path(data, rel)
        if mpath is None or not Path(mpath).is_file():
            continue
        image = load_image(data / rel)
        fold = predictor.fold_of(rel)
        model = predictor.model(fold)
        x = predictor.preprocess([image])
        with torch.inference_mode():
            pred = int(model(x).argmax(1))
        hits += predictor.classes[pred] == label
        t = time.perf_counter()
        cam = explain.gradcam(model, x, pred)
        cam_times.append(time.perf_counter() - t)
        mask = np.asarray(Image.open(mpath)) > 0
        energies.append(maps.mask_energy(cam, mask))
        areas.append(mask.mean())
        peak = np.unravel_index(np.argmax(maps.resize_map(cam, mask.shape)), mask.shape)
        peaks.append(bool(mask[peak]) if mask.any() else np.nan)
        correlations.append(explain.sanity_check(model, x, pred, method="gradcam").correlation)
        if i < deletion_cells:
            aucs.append(explain.deletion_curve(model, x, pred, cam).auc)
            noise = np.random.default_rng(i).random(cam.shape)
            random_aucs.append(explain.deletion_curve(model, x, pred, noise).auc)
    n = len(energies)
    if not n:
        print("    no images with masks found: is --data the synthetic data set the run was trained on?")
        return
    e, c, a = np.array(energies), np.array(correlations), np.array(areas)
    with_cell = ~np.isnan(e)
    print(f"    cells: {n} (out-of-fold model for each; target = its predicted class; {hits}/{n} correct); "
          f"{n - with_cell.sum()} without a labelled cell (artefacts) left out of the mask figures")
    print(f"    Grad-CAM energy inside the cell mask: mean {np.nanmean(e):.3f}, median {np.nanmedian(e):.3f}, "
          f"share of cells >= 0.8: {np.mean(e[with_cell] >= 0.8):.2f}   (aim >= 0.8; a uniform map would give "
          f"the mask's mean area, {a[with_cell].mean():.3f})")
    print(f"    pointing game (map's peak inside the cell mask): {np.nanmean(np.array(peaks, float)):.2f}")
    print(f"    sanity check (trained vs randomised, Spearman): mean {c.mean():.3f}, median {np.median(c):.3f}, "
          f"max {c.max():.3f}   (aim < 0.3)")
    if aucs:
        print(f"    deletion AUC over {len(aucs)} cells: Grad-CAM {np.mean(aucs):.3f} vs random map "
              f"{np.mean(random_aucs):.3f}   (lower = more faithful)")
    print(f"    Grad-CAM time per image: median {np.median(cam_times) * 1000:.1f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--cells", type=int, default=100)
    ap.add_argument("--deletion-cells", type=int, default=20)
    ap.add_argument("--run", type=Path, default=DEMO_RUN)
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: a,b,c")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    skip = set(args.skip.split(","))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")

    torch.manual_seed(0)
    resnext = create_model("resnext50", 21).eval()
    demo = create_model("sequential", 21).eval()
    if (args.run / "fold0" / "model.pt").is_file():
        from bmteach.models import load_checkpoint
        demo, _ = load_checkpoint(args.run / "fold0" / "model.pt")
        print(f"sequential model: {args.run}/fold0")
    else:
        print("sequential model: random weights (no demo run found)")
    if "a" not in skip:
        part_a("ResNeXt-50 (random weights)", resnext, 250, args.repeats)
        part_a("sequential", demo, 128, max(args.repeats, 20))
    if "b" not in skip:
        part_b("ResNeXt-50 (random weights)", resnext, 250, max(1, args.repeats // 2))
        part_b("sequential", demo, 128, args.repeats)
    if "c" not in skip:
        data = args.data or default_data_dir()
        if not (args.run / "manifest.csv").is_file() or not data.is_dir():
            print(f"\n(c) skipped: needs a run with manifest.csv ({args.run}) and its synthetic data ({data})")
        else:
            part_c(args.run, data, args.cells, args.deletion_cells)


if __name__ == "__main__":
    main()
