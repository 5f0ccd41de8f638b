"""The command line: python -m bmteach <command>. Each command lives beside the code it drives.

Arguments are declared here so `--help` shows the whole tool in one place; the work is done by a
`cli_<command>(args) -> int` function in the module of that concern (imported lazily: `--help` stays fast).
Errors a user can cause are printed as one sentence on stderr with exit status 2, never a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from bmteach.errors import UserError


def _add_index(sub):
    p = sub.add_parser("index", help="find images under ROOT and write a manifest with stratified folds")
    p.add_argument("root", help="data folder: the TCIA layout (BM_cytomorphology_data) or one folder per class")
    p.add_argument("--folds", type=int, default=5, help="number of cross-validation folds (default 5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the fold assignment (default 0)")
    p.add_argument("--mapping", help="CSV mapping folder names onto the 21 classes (columns: folder,abbr)")
    p.add_argument("--groups", help="CSV with columns path,group (patient, slide): each group stays in one fold")
    p.add_argument("--verify", action="store_true", help="fully decode every image (slow; default: cheap checks)")
    p.add_argument("--out", required=True, help="manifest CSV to write (path,label,fold)")
    p.set_defaults(module="bmteach.data", func="cli_index")


def _add_metrics(sub):
    p = sub.add_parser("metrics", help="strict and tolerant precision/recall from a predictions CSV")
    p.add_argument("--predictions", required=True, help="CSV with columns true,pred and optionally fold")
    p.add_argument("--tolerance", help="tolerance pairs CSV (default: assets/tolerance.csv)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.set_defaults(module="bmteach.metrics", func="cli_metrics")


def _add_synth(sub):
    p = sub.add_parser("synth", help="generate synthetic bone-marrow cells in the real data set's layout")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--per-class", type=int, default=100, help="images per class (default 100)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--classes", nargs="+", help="class abbreviations (default: all 21)")
    p.add_argument("--shift", default="none", help="acquisition shift: none or a named stain/scanner look")
    p.add_argument("--difficulty", type=float, default=0.5, help="0 = distinct classes, 1 = heavy overlap")
    p.set_defaults(module="bmteach.cli", func="cli_synth")


def _add_train(sub):
    p = sub.add_parser("train", help="train cross-validation folds (the paper's protocol)")
    p.add_argument("--data", required=True, help="data folder (the root the manifest's paths are relative to)")
    p.add_argument("--manifest", help="manifest CSV written by `index` (default: index --data with --num-folds)")
    p.add_argument("--model", default="sequential", choices=["sequential", "resnext50"])
    p.add_argument("--folds", default=None, help="comma-separated folds to run, e.g. 0,1 (default: every fold)")
    p.add_argument("--num-folds", type=int, default=5, help="folds in the split when indexing --data")
    p.add_argument("--epochs", type=int, default=13)
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--per-class", type=int, default=None, help="images per class per epoch (class balancing)")
    p.add_argument("--image-size", type=int, default=None, help="input size (default: the model's own)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--finetune", default="all", choices=["all", "head"])
    p.add_argument("--pretrained", action="store_true", help="start from ImageNet weights (ResNeXt-50)")
    p.add_argument("--workers", type=int, default=None, help="data-loader workers (default: by device)")
    p.add_argument("--parallel-folds", action="store_true", help="one fold per GPU, in parallel")
    p.add_argument("--resume", action="store_true", help="continue a stopped run from its last checkpoint")
    p.set_defaults(module="bmteach.train", func="cli_train")


def _add_evaluate(sub):
    p = sub.add_parser("evaluate", help="metrics.json, Table-1-style table and confusion matrix of a run")
    p.add_argument("run", help="run folder")
    p.add_argument("--tolerance", help="tolerance pairs CSV (default: assets/tolerance.csv)")
    p.set_defaults(module="bmteach.evaluate", func="cli_evaluate")


def _add_evaluate_external(sub):
    p = sub.add_parser("evaluate-external", help="predict an external folder-per-class data set (paper Fig. 5)")
    p.add_argument("--run", required=True, help="run folder")
    p.add_argument("--data", required=True, help="external data folder (one folder per class)")
    p.add_argument("--mapping", required=True, help="CSV mapping its folder names onto our classes")
    p.add_argument("--out", help="where to write predictions and the report (default: RUN/external/)")
    p.set_defaults(module="bmteach.evaluate", func="cli_evaluate_external")


def _add_predict(sub):
    p = sub.add_parser("predict", help="classify images with a run or a checkpoint")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", help="run folder (fold models' probabilities averaged)")
    src.add_argument("--checkpoint", help="one model checkpoint (model.pt with meta.json beside it)")
    p.add_argument("--json", action="store_true", help="one JSON line per image")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("images", nargs="+")
    p.set_defaults(module="bmteach.infer", func="cli_predict")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bmteach", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_index, _add_metrics, _add_synth, _add_train, _add_evaluate, _add_evaluate_external,
                _add_predict):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = getattr(importlib.import_module(args.module), args.func)
    try:
        return int(handler(args) or 0)
    except (UserError, FileNotFoundError, NotADirectoryError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
