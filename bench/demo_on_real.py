"""A run's balanced accuracy on the real sample's test half (the shipped demo by default).

    .venv/bin/python bench/demo_on_real.py [--run models/demo] [--real ../shared/realdata/BM_cytomorphology_sample]

Fold models' probabilities averaged (the real cells are uploads to the run: no fold trained on them). Prints the
21-way (argmax over all the run's classes) and 7-way (argmax over the classes present) balanced accuracy with
per-class recall, and the share of answers that are NIF.
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
    args = run_on_real_parser(__doc__).parse_args()
    from bmteach.infer import Predictor
    predictor = Predictor.from_run(args.run, device="cpu")
    present, true, probs = [], [], []
    for abbr, images in real_test_images(args.real):
        present.append(abbr)
        probs.append(predictor.predict_proba(images))
        true += [abbr] * len(images)
    probs, true = np.concatenate(probs), np.array(true)
    classes = np.array(predictor.classes)
    pred_all = classes[probs.argmax(1)]
    pred_present = np.array(present)[probs[:, [list(classes).index(a) for a in present]].argmax(1)]
    for name, pred in ((f"{len(classes)}-way", pred_all), (f"{len(present)}-way", pred_present)):
        recall = [np.mean(pred[true == a] == a) for a in present]
        print(f"{name}: balanced accuracy {np.mean(recall):.3f} ({len(true)} real cells, test half); "
              + " ".join(f"{a} {r:.2f}" for a, r in zip(present, recall)))
    print(f"share of NIF answers ({len(classes)}-way): {np.mean(pred_all == 'NIF'):.2f}")


if __name__ == "__main__":
    main()
