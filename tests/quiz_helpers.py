"""A tiny quiz setup shared by the quiz page tests: a synthetic data set (3 cells per class) and a two-fold run
(an untrained 32 px sequential CNN) whose out-of-fold predictions are written by hand: every cell right at 0.9,
except the first MMZ (the model says MYB at 0.95: contested) and the first EOS (BAS at 0.4: unsure)."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from bmteach.classes import ABBRS
from bmteach.synth import generate_dataset
from helpers import make_untrained_run

CONTESTED = "MMZ/0001-0003/MMZ_00001.jpg"
UNSURE = "EOS/0001-0003/EOS_00001.jpg"


def make_quiz_setup(root: Path) -> tuple[Path, Path]:
    """(data folder, run folder) under root."""
    data = generate_dataset(root / "data", per_class=3, seed=0, workers=1)
    run = root / "run"
    manifest = make_untrained_run(data, run)
    (run / "config.json").write_text(json.dumps({"classes": list(ABBRS), "num_folds": 2}))
    rows = []
    for r in manifest.itertuples():
        pred, conf = {CONTESTED: ("MYB", 0.95), UNSURE: ("BAS", 0.4)}.get(r.path, (r.label, 0.9))
        probs = {f"prob_{a}": (1 - conf) / 20 for a in ABBRS}
        probs[f"prob_{pred}"] = conf
        rows.append({"path": r.path, "true": r.label, "pred": pred, "fold": int(r.fold), **probs})
    pd.DataFrame(rows).to_csv(run / "oof.csv", index=False)
    return data, run
