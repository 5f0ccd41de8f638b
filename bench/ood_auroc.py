"""How well the run's out-of-distribution score tells real cells from held-out synthetic ones.

    .venv/bin/python bench/ood_auroc.py [--run models/demo] [--real ../shared/realdata/BM_cytomorphology_sample]

In-distribution: the run's held-out images of its reference fold (through the fold model that never trained on
them, bmteach.features; the AUROC does not depend on the threshold they also set). Out-of-distribution: the TEST
half of the real sample (bench/realism_common.real_split). Prints the AUROC, the share of each flagged at the
stored threshold, and per-class flag rates of the real cells. Needs `python -m bmteach ood RUN` first.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from realism_common import real_test_images, run_on_real_parser  # noqa: E402


def main() -> None:
    ap = run_on_real_parser(__doc__)
    ap.add_argument("--data", default=None, help="the run's data folder (default: its own, else built-in)")
    args = ap.parse_args()
    from sklearn.metrics import roc_auc_score

    from bmteach import ood
    from bmteach.features import resolve_data_root, run_features
    from bmteach.infer import Predictor

    model = ood.load(args.run)
    if model is None:
        sys.exit(f"{args.run} has no out-of-distribution score: run `python -m bmteach ood {args.run}` first")
    predictor = Predictor.from_run(args.run, device="cpu")
    root = resolve_data_root(args.run, args.data)
    syn_scores = ood.held_out_scores(model, run_features(args.run, root), root)   # what set the threshold
    real_scores, real_labels = [], []
    for abbr, images in real_test_images(args.real):
        s, _ = ood.score_images(predictor, model, images)
        real_scores += s.tolist()
        real_labels += [abbr] * len(images)
    real_scores = np.asarray(real_scores)
    y = np.r_[np.zeros(len(syn_scores)), np.ones(len(real_scores))]
    auroc = roc_auc_score(y, np.r_[syn_scores, real_scores])
    print(f"run {args.run}: reference fold {model.fold}, threshold {model.threshold:.4g}")
    print(f"held-out synthetic ({len(syn_scores)} images of fold {model.fold}): flagged "
          f"{model.flag(syn_scores).mean():.1%} (the threshold leaves 5% of them above it), median score {np.median(syn_scores):.3f}")
    print(f"real cells (test half, {len(real_scores)}): flagged {model.flag(real_scores).mean():.1%}, "
          f"median score {np.median(real_scores):.3f}")
    labels = np.asarray(real_labels)
    print("  flagged per class: " + ", ".join(f"{a} {model.flag(real_scores[labels == a]).mean():.0%}"
                                              for a in sorted(set(real_labels))))
    print(f"AUROC real vs held-out synthetic: {auroc:.3f}")


if __name__ == "__main__":
    main()
