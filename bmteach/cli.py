"""The command line: python -m bmteach <command>. The parser and one small handler per command.

The library (bmteach/*) returns values and raises UserError; this module is the only one that prints or parses
arguments. Handlers import the library lazily so `python -m bmteach --help` stays fast (no torch import).
Errors a person can cause (UserError, a missing or unreadable file) are printed as one sentence on stderr with
exit status 2; anything else is a bug and shows its traceback.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

from bmteach.errors import UserError

# The registered model names and train's augmentation placements, for --help without importing torch; tests
# check they equal models.MODELS and train.AUGMENT_ON.
MODEL_CHOICES = ("sequential", "resnext50")
AUGMENT_CHOICES = ("auto", "workers", "device")


def note(message: str) -> None:
    """The `report` callback handed to library functions: one line on stderr."""
    print(f"note: {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------------------------
# index
# --------------------------------------------------------------------------------------------------------------

def format_summary(df, k: int) -> str:
    """Per-class table: abbreviation, name, images, images per fold; a total row."""
    import pandas as pd

    from bmteach.classes import ABBRS, BY_ABBR

    per_fold = pd.crosstab(df["label"], df["fold"]).reindex(columns=range(k), fill_value=0)
    head = f"{'class':<6}{'name':<22}{'images':>8}" + "".join(f"{'fold' + str(f):>8}" for f in range(k))
    lines = [head, "-" * len(head)]
    for abbr in ABBRS:
        if abbr in per_fold.index:
            row = per_fold.loc[abbr]
            lines.append(f"{abbr:<6}{BY_ABBR[abbr].name:<22}{int(row.sum()):>8}"
                         + "".join(f"{int(n):>8}" for n in row))
    totals = per_fold.sum(axis=0)
    lines.append(f"{'total':<28}{len(df):>8}" + "".join(f"{int(n):>8}" for n in totals))
    return "\n".join(lines)


def format_skipped(result, show: int = 3) -> str:
    """Skipped entries of an IndexResult grouped by reason, the first few of each."""
    if not result.skipped:
        return "Skipped: nothing."
    lines = [f"Skipped {len(result.skipped)} file(s) or folder(s):"]
    for reason, rels in sorted(result.skipped_by_reason().items(), key=lambda kv: -len(kv[1])):
        more = f" ... and {len(rels) - show} more" if len(rels) > show else ""
        lines.append(f"  {len(rels):>6}  {reason}: {', '.join(rels[:show])}{more}")
    return "\n".join(lines)


def cli_index(args) -> int:
    """python -m bmteach index ROOT --out manifest.csv [--folds 5] [--seed 0] [--mapping CSV] [--groups CSV]"""
    from bmteach import data

    result = data.index(args.root, mapping=args.mapping, verify=args.verify)
    groups = data.read_groups(args.groups) if args.groups else None
    df = data.build_manifest(result, k=args.folds, seed=args.seed, groups=groups)
    data.write_manifest(df, args.out)  # first: a read-only or full disk stops before the summary is printed
    where = "" if result.class_root == result.root else f" (class folders in {result.class_root.name}/)"
    print(f"Data folder: {result.root}{where}")
    print(format_summary(df, args.folds))
    print(format_skipped(result))
    if groups is not None:
        alone = int((df["group"] == "").sum())
        named = df.loc[df["group"] != "", "group"].nunique()
        print(f"Groups: {named} from {args.groups}"
              + (f"; {alone} image(s) without a group, each kept as a group of its own." if alone else "."))
    print(f"Wrote {args.out}: {len(df)} images, {args.folds} folds, seed {args.seed} "
          f"(paths relative to {result.root}).")
    sys.stdout.flush()
    return 0


# --------------------------------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------------------------------

def cli_metrics(args) -> int:
    """python -m bmteach metrics --predictions CSV [--tolerance CSV] [--json]"""
    from bmteach.classes import tolerance_set
    from bmteach.metrics import format_table, metrics_of_table, read_predictions

    pairs = tolerance_set(args.tolerance) if args.tolerance else None
    metrics = metrics_of_table(read_predictions(args.predictions), pairs=pairs)
    print(json.dumps(metrics, indent=2) if args.json else format_table(metrics))
    return 0


# --------------------------------------------------------------------------------------------------------------
# synth
# --------------------------------------------------------------------------------------------------------------

def cli_synth(args) -> int:
    """python -m bmteach synth --out DIR [--per-class N] [--seed S] [--classes ...] [--shift LOOK]"""
    from bmteach.classes import ABBRS
    from bmteach.synth import generate_dataset

    started = time.perf_counter()
    total = args.per_class * len(args.classes or ABBRS)

    def progress(done: int, total: int) -> None:
        if done == total or done % 100 == 0:
            print(f"\r{done}/{total} images", end="\n" if done == total else "", file=sys.stderr, flush=True)

    out = generate_dataset(args.out, per_class=args.per_class, seed=args.seed, classes=args.classes,
                           shift=args.shift, difficulty=args.difficulty, progress=progress)
    print(f"Wrote {total} synthetic images ({args.per_class} per class, shift {args.shift}) and their masks "
          f"to {out} in {time.perf_counter() - started:.1f} s.")
    return 0


# --------------------------------------------------------------------------------------------------------------
# train: train the folds -> join their predictions -> evaluate
# --------------------------------------------------------------------------------------------------------------

def parse_folds(text: str | None, num_folds: int) -> list[int]:
    """--folds "0,2" -> [0, 2]; None or "all" -> every fold of the split."""
    if text is None or text == "all":
        return list(range(num_folds))
    try:
        folds = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise UserError(f"--folds takes comma-separated fold numbers such as 0,1,2,3,4, not {text!r}.") from None
    if not folds:
        raise UserError("--folds names no fold.")
    return sorted(set(folds))


def check_args(args) -> None:
    """Mistakes on the command line, caught before any indexing or writing."""
    from bmteach.models import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE, MODELS

    if args.model not in MODELS:
        raise UserError(f"Unknown model {args.model!r}: choose one of {', '.join(MODELS)}.")
    if args.image_size is not None and not MIN_IMAGE_SIZE <= args.image_size <= MAX_IMAGE_SIZE:
        raise UserError(f"--image-size must be from {MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE} pixels (the checkpoint "
                        "would be refused otherwise).")
    if args.epochs < 1:
        raise UserError("--epochs must be at least 1.")
    if args.per_class is not None and args.per_class < 1:
        raise UserError("--per-class must be at least 1.")
    if args.num_folds < 2:
        raise UserError("--num-folds must be at least 2.")
    parse_folds(args.folds, args.num_folds)


def config_from_args(args, root: Path, manifest):
    """The run's TrainConfig from the command line; a given manifest decides the number of folds; unset
    --image-size, --batch-size and --lr come from the model's registry entry."""
    from bmteach.models import MODELS
    from bmteach.train import TrainConfig

    spec = MODELS[args.model]
    num_folds = int(manifest["fold"].max()) + 1 if args.manifest else args.num_folds
    return TrainConfig(
        # "default": the built-in synthetic set, wherever BMTEACH_HOME puts it (no machine's path in a shipped run)
        model=args.model, data_root="default" if args.data == "default" else str(root),
        image_size=args.image_size or spec.image_size,
        num_folds=num_folds, folds=parse_folds(args.folds, num_folds), epochs=args.epochs,
        per_class=args.per_class, batch_size=args.batch_size or spec.batch_size, lr=args.lr or spec.lr,
        seed=args.seed, finetune=args.finetune, pretrained=args.pretrained,
        manifest_source=str(Path(args.manifest).resolve()) if args.manifest else "index")


def resumed_config(run_dir: Path, args):
    """On --resume the saved config decides the result; only --folds may pick other folds of the same split."""
    from bmteach.runs import read_config
    from bmteach.train import TrainConfig

    cfg = TrainConfig.from_dict(read_config(run_dir))
    if args.folds is not None:
        cfg.folds = parse_folds(args.folds, cfg.num_folds)
    return cfg


def _passthrough_args(args, run_dir: Path) -> list[str]:
    """The arguments a --parallel-folds child needs (it resumes the run this process prepared)."""
    out = ["--data", args.data, "--model", args.model, "--epochs", str(args.epochs), "--out", str(run_dir),
           "--device", "cuda"]
    if args.workers is not None:
        out += ["--workers", str(args.workers)]
    if args.augment_on != "auto":
        out += ["--augment-on", args.augment_on]
    return out


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt


def evaluate_trained_run(run_dir: Path) -> int:
    """Every fold is done: join the folds' predictions into RUN/oof.csv and evaluate. Training is saved either
    way, so a failed evaluation says how to retry it alone."""
    from bmteach import runs
    from bmteach.evaluate import evaluate_run

    try:
        runs.write_oof(run_dir)
        evaluate_run(run_dir)
    except (UserError, OSError) as exc:
        print(f"error: training finished but evaluation failed ({exc}); run `python -m bmteach evaluate "
              f"{run_dir}`.", file=sys.stderr)
        return 1
    return 0


def cli_train(args) -> int:
    """python -m bmteach train ... (see bmteach.train's docstring)."""
    from bmteach import runs, train
    from bmteach.models import pick_device
    from bmteach.storage import resolve_path

    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)  # `stop` from the app: clean up, keep last.pt
    dist = train.dist_from_env()
    device = pick_device(args.device)
    if dist.world_size > 1:
        device = train.init_distributed(dist, device)
    check_args(args)
    run_dir = resolve_path(args.out)  # a symbolic-link loop is one sentence
    resume = args.resume and (run_dir / runs.CONFIG).is_file()
    if args.parallel_folds:
        if dist.world_size > 1:
            raise UserError("--parallel-folds and torchrun do not mix: use one or the other.")
        if device.type != "cuda":
            raise UserError("--parallel-folds needs CUDA GPUs; none is available.")
    root = train.resolve_data_root(args.data) if dist.main else None  # before the lock: a typo leaves no folder
    lock = runs.RunLock(run_dir) if dist.main else None
    try:
        if lock is not None:
            lock.acquire()
        if dist.main:
            if resume:
                cfg = resumed_config(run_dir, args)
                manifest = runs.read_run_manifest(run_dir)
            else:
                manifest = train.build_or_read_manifest(root, args.manifest, args.num_folds, args.seed, report=note)
                cfg = config_from_args(args, root, manifest)
                train.check_folds(cfg.folds, manifest, cfg.num_folds)
                train.prepare_run(cfg, run_dir, manifest, resume=False)
        train._barrier(dist)
        if not dist.main:  # the other ranks read what rank 0 prepared (the default data set exists by now)
            root = train.resolve_data_root(args.data)
            cfg = resumed_config(run_dir, args)
            manifest = runs.read_run_manifest(run_dir)
        if cfg.finetune == "head" and not cfg.pretrained and dist.main:
            note("--finetune head without --pretrained trains a classifier on random features.")
        if args.parallel_folds:
            status = train.run_parallel_folds(_passthrough_args(args, run_dir), cfg.folds)
        else:
            # resume=True: a new run has nothing to resume, and an existing one got here only with --resume.
            status = train.run_training(cfg, run_dir, manifest, root, device, args.workers, resume=True, dist=dist,
                                        report=note if dist.main else None, augment_on=args.augment_on)
        # Only the process that owns the run joins and evaluates: not another torchrun rank, not a
        # --parallel-folds child (its parent does it once every child is done).
        child = bool(os.environ.get(runs.PARENT_LOCK_ENV))
        if status == 0 and dist.main and not child and runs.all_folds_complete(run_dir):
            status = evaluate_trained_run(run_dir)
        return status
    finally:
        if lock is not None:
            lock.release()
        if dist.world_size > 1:
            import torch.distributed as td

            if td.is_initialized():
                td.destroy_process_group()


# --------------------------------------------------------------------------------------------------------------
# evaluate, evaluate-external
# --------------------------------------------------------------------------------------------------------------

def cli_evaluate(args) -> int:
    """python -m bmteach evaluate RUN [--tolerance CSV]"""
    from bmteach import runs
    from bmteach.evaluate import evaluate_run
    from bmteach.metrics import format_table

    run_dir = Path(args.run)
    metrics = evaluate_run(run_dir, tolerance=args.tolerance)
    print(format_table(metrics))
    written = (runs.METRICS, runs.TABLE, runs.CONFUSION, runs.CONFUSION_PNG)
    print(f"\nWrote {', '.join(str(run_dir / name) for name in written)}")
    return 0


def format_external_report(report: dict) -> str:
    """evaluate_external's report as text: agreement, per-class recall and ART/NIF share, predicted shares."""
    lines = [f"{report['n']} external images; agreement strict {report['agreement']['strict']:.2f}, "
             f"tolerant {report['agreement']['tolerant']:.2f}; predicted as ART/NIF: {report['art_nif_share']:.2f}",
             "", f"{'class':<6}{'n':>7}{'recall':>9}{'toler.':>9}{'ART/NIF':>9}"]
    for abbr, r in report["per_class"].items():
        lines.append(f"{abbr:<6}{r['n']:>7}{r['recall_strict']:>9.2f}{r['recall_tolerant']:>9.2f}"
                     f"{r['art_nif_share']:>9.2f}")
    shares = sorted(report["predicted_share"].items(), key=lambda kv: -kv[1])
    lines += ["", "predicted as: " + ", ".join(f"{c} {s:.2f}" for c, s in shares)]
    lines += [f"* {w}" for w in report.get("skipped_notes", [])]
    return "\n".join(lines)


def cli_evaluate_external(args) -> int:
    """python -m bmteach evaluate-external --run RUN --data DIR --mapping CSV [--out DIR]"""
    from tqdm import tqdm

    from bmteach.external import evaluate_external
    from bmteach.runs import EXTERNAL

    out_dir = Path(args.out) if args.out else Path(args.run) / EXTERNAL
    bars = []  # the bar appears with the first batch, so input errors print one clean line

    def progress(done: int, total: int) -> None:
        if not bars:
            bars.append(tqdm(total=total, unit="img", file=sys.stderr, desc="predicting"))
        bars[0].update(done - bars[0].n)

    try:
        report = evaluate_external(args.run, args.data, args.mapping, out_dir, progress=progress)
    finally:
        for bar in bars:
            bar.close()
    print(format_external_report(report))
    print(f"\nWrote {out_dir / 'predictions.csv'} and {out_dir / 'report.json'}")
    return 0


# --------------------------------------------------------------------------------------------------------------
# predict
# --------------------------------------------------------------------------------------------------------------

def _describe_error(exc: Exception) -> str:
    """One sentence for the person: our own errors already are; others get their cause named."""
    if isinstance(exc, UserError):
        return str(exc)
    if isinstance(exc, FileNotFoundError):
        return "file not found."
    if isinstance(exc, IsADirectoryError):
        return "this is a folder, not an image."
    return f"could not read this file as an image ({type(exc).__name__}: {exc})."


def _result_line(path: str, probs, classes: list[str], as_json: bool, ood=(None, None)) -> str:
    import numpy as np

    from bmteach.classes import class_name

    order = np.argsort(-probs, kind="stable")
    score, flagged = ood
    if as_json:   # ood_score: higher = more unusual; ood: flagged (null: the run has no score)
        return json.dumps({"path": path, "pred": classes[order[0]],
                           "probs": {c: round(float(p), 6) for c, p in zip(classes, probs)},
                           "ood_score": None if score is None else round(float(score), 4),
                           "ood": None if flagged is None else bool(flagged)})
    top = " | ".join(f"{classes[i]} {class_name(classes[i])} {probs[i]:.3f}" for i in order[:3])
    return f"{path}: {top}" + (" | unlike the training cells: a guess" if flagged else "")


def _print_error(path: str, message: str, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"path": path, "error": message}), flush=True)
    else:
        print(f"{path}: error: {message}", file=sys.stderr, flush=True)


def _predict_chunk(predictor, paths: list[str], as_json: bool, ood_model=None) -> int:
    """Load, predict and print one chunk of paths in input order; returns how many failed."""
    from bmteach.images import load_image

    loaded, errors = {}, {}
    for i, path in enumerate(paths):
        try:
            loaded[i] = load_image(path)
        except Exception as exc:  # one bad file never stops the others
            errors[i] = _describe_error(exc)
    probs = predictor.predict_proba([loaded[i] for i in sorted(loaded)])
    row_of = {i: r for r, i in enumerate(sorted(loaded))}
    scores = flags = [None] * len(row_of)
    if ood_model is not None and loaded:
        from bmteach.ood import score_images
        scores, flags = score_images(predictor, ood_model, [loaded[i] for i in sorted(loaded)])
    for i, path in enumerate(paths):
        if i in errors:
            _print_error(path, errors[i], as_json)
        else:
            r = row_of[i]
            print(_result_line(path, probs[r], predictor.classes, as_json, (scores[r], flags[r])), flush=True)
    return len(errors)


def cli_predict(args) -> int:
    """python -m bmteach predict --run RUN|--checkpoint FILE [--json] IMAGE...: exit 1 when any image failed."""
    from bmteach.infer import BATCH_SIZE, Predictor

    ood_model = None
    if args.run:
        from bmteach import ood

        predictor = Predictor.from_run(args.run, device=args.device)
        ood_model = ood.load(args.run)
        if ood_model is None:
            note(f"{args.run} has no out-of-distribution score yet: `python -m bmteach ood {args.run}` fits it "
                 "(ood_score and ood are null until then).")
    else:
        predictor = Predictor.from_checkpoint(args.checkpoint, device=args.device)
    failed = 0
    for start in range(0, len(args.images), BATCH_SIZE):
        failed += _predict_chunk(predictor, args.images[start:start + BATCH_SIZE], args.json, ood_model)
    return 1 if failed else 0


def cli_ood(args) -> int:
    """python -m bmteach ood RUN [--data DIR]: fit, calibrate and store the out-of-distribution score."""
    from bmteach import ood, runs

    model = ood.fit_run(args.run, args.data, max_fit_per_class=args.max_per_class, seed=args.seed,
                        device=args.device, progress=lambda stage: note(stage))
    info = model.info
    print(f"Wrote {Path(args.run) / runs.OOD}: fold-{model.fold} model, {info['fit_images']} training images, "
          f"threshold {model.threshold:.4g} ({1 - info['quantile']:.0%} of {info['calibration_images']} held-out "
          f"images flagged by construction; a threshold set on half of them flags {info['check_flagged_share']:.1%} "
          f"of the other half), {info['seconds']} s.")
    return 0


# --------------------------------------------------------------------------------------------------------------
# features, embed: the feature map
# --------------------------------------------------------------------------------------------------------------

class _FractionBar:
    """A progress(done, total, *stage) callback printing one updating line on stderr; `end()` closes the line
    (only when something was printed: a cache hit prints nothing)."""

    def __init__(self, label: str):
        self.label, self.shown = label, False

    def __call__(self, done, total, *stage) -> None:
        share = done / total if total else 1.0
        print(f"\r{self.label}: {share:5.1%} {stage[0] if stage else ''}".rstrip() + "   ", end="",
              file=sys.stderr, flush=True)
        self.shown = True

    def end(self) -> None:
        if self.shown:
            print(file=sys.stderr)


def cli_features(args) -> int:
    from bmteach.features import ExtractOptions, run_features, skipped_summary

    started = time.perf_counter()
    options = ExtractOptions(device=args.device, batch_size=args.batch_size, workers=args.workers)
    bar = _FractionBar("features")
    table = run_features(args.run, args.data, progress=bar, options=options)
    bar.end()
    n, width = table.features.shape
    print(f"{n:,} x {width} features (float16) of {args.run} in {table.folder} "
          f"({time.perf_counter() - started:.1f} s; extraction {table.meta.get('images_per_s', '?')} images/s "
          f"on {table.meta.get('device', '?')}).")
    if skipped_summary(table):
        note(skipped_summary(table))
    return 0


def cli_embed(args) -> int:
    from bmteach.embed import EmbedParams, embed_run
    from bmteach.features import ExtractOptions

    started = time.perf_counter()
    params = EmbedParams(pca_dims=args.pca_dims, n_neighbors=args.neighbors, min_dist=args.min_dist, seed=args.seed)
    bar = _FractionBar("map")
    emb = embed_run(args.run, args.data, params, progress=bar, options=ExtractOptions(device=args.device))
    bar.end()
    print(f"{len(emb.coords):,} points mapped to 2-d in {emb.path} ({time.perf_counter() - started:.1f} s; "
          f"UMAP {emb.info.get('seconds', '?')} s when computed; parameters in {emb.path.with_suffix('.json').name}).")
    return 0


# --------------------------------------------------------------------------------------------------------------
# the parser
# --------------------------------------------------------------------------------------------------------------

def _add_index(sub):
    p = sub.add_parser("index", help="find images under ROOT and write a manifest with stratified folds")
    p.add_argument("root", help="data folder: the TCIA layout (BM_cytomorphology_data) or one folder per class")
    p.add_argument("--folds", type=int, default=5, help="number of cross-validation folds (default 5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the fold assignment (default 0)")
    p.add_argument("--mapping", help="CSV mapping folder names onto the 21 classes (columns: folder,abbr)")
    p.add_argument("--groups", help="CSV with columns path,group (patient, slide): each group stays in one fold")
    p.add_argument("--verify", action="store_true", help="fully decode every image (slow; default: cheap checks)")
    p.add_argument("--out", required=True, help="manifest CSV to write (path,label,fold)")
    p.set_defaults(handler=cli_index)


def _add_metrics(sub):
    p = sub.add_parser("metrics", help="strict and tolerant precision/recall from a predictions CSV")
    p.add_argument("--predictions", required=True, help="CSV with columns true,pred and optionally fold")
    p.add_argument("--tolerance", help="tolerance pairs CSV (default: assets/tolerance.csv)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.set_defaults(handler=cli_metrics)


def _add_synth(sub):
    p = sub.add_parser("synth", help="generate synthetic bone-marrow cells in the real data set's layout")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--per-class", type=int, default=100, help="images per class (default 100)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--classes", nargs="+", help="class abbreviations (default: all 21)")
    p.add_argument("--shift", default="none", help="acquisition shift: none or a named stain/scanner look")
    p.add_argument("--difficulty", type=float, default=0.5, help="0 = distinct classes, 1 = heavy overlap")
    p.set_defaults(handler=cli_synth)


def _add_train(sub):
    p = sub.add_parser("train", help="train cross-validation folds (the paper's protocol)")
    p.add_argument("--data", required=True, help="data folder (the root the manifest's paths are relative to)")
    p.add_argument("--manifest", help="manifest CSV written by `index` (default: index --data with --num-folds)")
    p.add_argument("--model", default="sequential", metavar="MODEL",
                   help=f"model to train: {', '.join(MODEL_CHOICES)} (default sequential)")
    p.add_argument("--folds", default=None, help="comma-separated folds to run, e.g. 0,1 (default: every fold)")
    p.add_argument("--num-folds", type=int, default=5, help="folds in the split when indexing --data")
    p.add_argument("--epochs", type=int, default=13)
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--per-class", type=int, default=None, help="images per class per epoch (class balancing)")
    p.add_argument("--image-size", type=int, default=None, help="input size (default: the model's own)")
    p.add_argument("--batch-size", type=int, default=None, help="images per step (default: the model's own)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the model's own)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--finetune", default="all", choices=["all", "head"])
    p.add_argument("--pretrained", action="store_true", help="start from ImageNet weights (ResNeXt-50)")
    p.add_argument("--workers", type=int, default=None, help="data-loader workers (default: by device)")
    p.add_argument("--augment-on", default="auto", choices=AUGMENT_CHOICES,
                   help="where the training augmentation runs: the loader workers, or the device on uint8 "
                        "batches (default auto: the device on CUDA, the workers on CPU; same draws either way)")
    p.add_argument("--parallel-folds", action="store_true", help="one fold per GPU, in parallel")
    p.add_argument("--resume", action="store_true", help="continue a stopped run from its last checkpoint")
    p.set_defaults(handler=cli_train)


def _add_evaluate(sub):
    p = sub.add_parser("evaluate", help="metrics.json, Table-1-style table and confusion matrix of a run")
    p.add_argument("run", help="run folder")
    p.add_argument("--tolerance", help="tolerance pairs CSV (default: assets/tolerance.csv)")
    p.set_defaults(handler=cli_evaluate)


def _add_evaluate_external(sub):
    p = sub.add_parser("evaluate-external", help="predict an external folder-per-class data set (paper Fig. 5)")
    p.add_argument("--run", required=True, help="run folder")
    p.add_argument("--data", required=True, help="external data folder (one folder per class)")
    p.add_argument("--mapping", required=True, help="CSV mapping its folder names onto our classes")
    p.add_argument("--out", help="where to write predictions and the report (default: RUN/external/)")
    p.set_defaults(handler=cli_evaluate_external)


def _add_predict(sub):
    p = sub.add_parser("predict", help="classify images with a run or a checkpoint")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", help="run folder (fold models' probabilities averaged)")
    src.add_argument("--checkpoint", help="one model checkpoint (model.pt with meta.json beside it)")
    p.add_argument("--json", action="store_true", help="one JSON line per image")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("images", nargs="+")
    p.set_defaults(handler=cli_predict)


def _add_run_command(sub, name: str, summary: str, device_help: str | None = None) -> argparse.ArgumentParser:
    """A command over a run's images: RUN, --data (where its manifest's paths live) and --device."""
    p = sub.add_parser(name, help=summary)
    p.add_argument("run", help="run folder")
    p.add_argument("--data", help="data folder the manifest is relative to (default: the run's, else built-in)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help=device_help)
    return p


def _add_ood(sub):
    p = _add_run_command(sub, "ood", "fit the out-of-distribution score of a run (stored beside it)")
    p.add_argument("--max-per-class", type=int, default=200, help="training images per class used to fit")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=cli_ood)


def _add_features(sub):
    p = _add_run_command(sub, "features", "penultimate features of a run's images, each from its held-out fold model")
    p.add_argument("--batch-size", type=int, default=None, help="images per forward pass (default 64 CPU, 512 GPU)")
    p.add_argument("--workers", type=int, default=None,
                   help="decoding workers (default: 1 on CPU, all cores but one on a GPU)")
    p.set_defaults(handler=cli_features)


def _add_embed(sub):
    p = _add_run_command(sub, "embed", "the feature map: PCA then UMAP of a run's features (cached)",
                         device_help="for the features")
    p.add_argument("--pca-dims", type=int, default=50)
    p.add_argument("--neighbors", type=int, default=15, help="UMAP n_neighbors")
    p.add_argument("--min-dist", type=float, default=0.1, help="UMAP min_dist")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=cli_embed)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bmteach", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_index, _add_metrics, _add_synth, _add_train, _add_evaluate, _add_evaluate_external,
                _add_predict, _add_ood, _add_features, _add_embed):
        add(sub)
    return parser


# --------------------------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------------------------

def describe_os_error(exc: OSError, out: str | None = None) -> str:
    """One sentence naming the file for the I/O errors a person causes (a wrong path, no permission, a read-only
    or full disk). A failed write() carries no file name: then the command's --out is named, where it has one."""
    filename = exc.filename if exc.filename is not None else out
    where = f" {filename}" if filename is not None else ""
    if exc.filename is None and out is not None and not isinstance(exc, (FileNotFoundError, PermissionError)):
        return f"Could not write under {out}: {exc.strerror or exc}."
    if isinstance(exc, FileNotFoundError):
        return f"Not found:{where}." if where else f"Not found ({exc})."
    if isinstance(exc, NotADirectoryError):
        return f"Not a folder:{where}." if where else f"Not a folder ({exc})."
    if isinstance(exc, PermissionError):
        return f"Permission denied:{where}." if where else f"Permission denied ({exc})."
    reason = exc.strerror or type(exc).__name__
    return f"Could not read or write{where}: {reason}." if where else f"Input/output error: {exc}."


def main(argv: list[str] | None = None) -> int:
    """Parse argv, run the command's handler; a person's mistake is one sentence and exit status 2."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # FileNotFoundError, NotADirectoryError, PermissionError, a full disk ...
        print(f"error: {describe_os_error(exc, getattr(args, 'out', None))}", file=sys.stderr)
        return 2
    except RuntimeError as exc:  # Path.resolve on a symbolic-link loop (Python < 3.13); any other is a bug
        if not str(exc).startswith("Symlink loop from"):
            raise
        print(f"error: {str(exc).removeprefix('Symlink loop from ')} is a loop of symbolic links.", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
