"""runs.py, the owner of the run folder: names, the fold scan, join_oof's one coverage policy, the run stamp."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from bmteach import runs
from bmteach.errors import UserError

CLASSES = ["BLA", "LYT", "MON"]
# (path, label, fold): two folds of three images
MANIFEST = [("BLA/1.jpg", "BLA", 0), ("LYT/2.jpg", "LYT", 0), ("MON/3.jpg", "MON", 0),
            ("BLA/4.jpg", "BLA", 1), ("LYT/5.jpg", "LYT", 1), ("MON/6.jpg", "MON", 1)]


def fold_rows(fold: int, classes=CLASSES) -> pd.DataFrame:
    """Predictions of one fold: every image called BLA with probability 0.5."""
    rows = [(p, t, "BLA", k) for p, t, k in MANIFEST if k == fold]
    df = pd.DataFrame(rows, columns=["path", "true", "pred", "fold"])
    for c in classes:
        df[f"prob_{c}"] = 0.5 if c == "BLA" else 0.25
    return df


def finish_fold(run: Path, fold: int, df: pd.DataFrame | None = None) -> None:
    d = runs.fold_dir(run, fold)
    d.mkdir(parents=True, exist_ok=True)
    (fold_rows(fold) if df is None else df).to_csv(d / runs.OOF, index=False)
    (d / runs.MODEL).write_bytes(b"weights")
    (d / runs.META).write_text(json.dumps({"model": "sequential", "classes": CLASSES, "complete": True}))


@pytest.fixture
def run(tmp_path) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    (run / runs.CONFIG).write_text(json.dumps({"classes": CLASSES, "num_folds": 2}))
    pd.DataFrame(MANIFEST, columns=["path", "label", "fold"]).to_csv(run / runs.MANIFEST, index=False)
    return run


def test_join_oof_puts_every_fold_in_manifest_order(run):
    finish_fold(run, 1)
    finish_fold(run, 0)
    oof = runs.join_oof(run)
    assert oof["path"].tolist() == [p for p, _, _ in MANIFEST]
    assert oof["fold"].tolist() == [0, 0, 0, 1, 1, 1]
    assert runs.all_folds_complete(run)
    runs.write_oof(run)
    assert pd.read_csv(run / runs.OOF)["path"].tolist() == [p for p, _, _ in MANIFEST]


def test_a_missing_fold_is_named(run):
    finish_fold(run, 0)
    assert not runs.all_folds_complete(run)
    with pytest.raises(UserError, match=r"3 of 6 manifest image\(s\) .* train fold\(s\) 1 first"):
        runs.join_oof(run)
    partial = runs.join_oof(run, partial=True)            # a run still training: its finished folds
    assert partial["path"].tolist() == ["BLA/1.jpg", "LYT/2.jpg", "MON/3.jpg"]
    assert runs.read_oof(run)["fold"].tolist() == [0, 0, 0]


def test_a_doubled_image_is_named(run):
    finish_fold(run, 0)
    doubled = pd.concat([fold_rows(1), fold_rows(0).iloc[[0]]], ignore_index=True)
    finish_fold(run, 1, doubled)
    with pytest.raises(UserError, match=r"1 image\(s\) .* more than once \(BLA/1.jpg\)"):
        runs.join_oof(run)


def test_wrong_classes_are_refused(run):
    finish_fold(run, 0)
    finish_fold(run, 1, fold_rows(1, classes=["BLA", "LYT", "EOS"]))
    with pytest.raises(UserError, match="other columns than the first fold's"):
        runs.join_oof(run)
    finish_fold(run, 0, fold_rows(0, classes=["BLA", "LYT", "EOS"]))
    with pytest.raises(UserError, match="probabilities for other classes than the run's"):
        runs.join_oof(run)


def test_an_image_outside_the_manifest_is_named(run):
    finish_fold(run, 0)
    extra = pd.concat([fold_rows(1), fold_rows(1).assign(path="EOS/9.jpg", true="MON").iloc[[0]]])
    finish_fold(run, 1, extra)
    with pytest.raises(UserError, match=r"1 predicted image\(s\) are not in .*manifest.csv \(EOS/9.jpg\)"):
        runs.join_oof(run)


def test_no_predictions_yet(run):
    assert runs.read_oof(run) is None
    with pytest.raises(UserError, match="no out-of-fold predictions yet"):
        runs.join_oof(run)


def test_fold_scan_ignores_other_folders_and_files(run):
    finish_fold(run, 0)
    (run / "fold1").mkdir()                              # started, no model yet
    (run / "foldx").mkdir()
    (run / "fold2.txt").write_text("not a folder")
    assert [k for k, _ in runs.fold_dirs(run)] == [0, 1]
    assert [k for k, _ in runs.fold_checkpoint_dirs(run)] == [0]
    assert runs.complete_folds(run) == [0]


def test_run_classes_and_config_errors(run, tmp_path):
    assert runs.run_classes(run) == CLASSES
    assert runs.run_classes(tmp_path / "nothing")[:2] == ["BLA", "PMO"]   # the 21 classes' order
    with pytest.raises(UserError, match="is not a training run"):
        runs.read_config(tmp_path)
    (tmp_path / runs.CONFIG).write_text("[1, 2]")
    with pytest.raises(UserError, match="does not hold a run configuration"):
        runs.read_config(tmp_path)


def test_run_stamp_changes_when_a_fold_finishes(run):
    before = runs.run_stamp(run)
    finish_fold(run, 0)
    assert runs.run_stamp(run) != before


def test_run_folder_names_are_defined_only_in_runs():
    """Every run-folder file name appears as a string literal in runs.py only."""
    names = [runs.CONFIG, runs.MANIFEST, runs.OOF, runs.METRICS, runs.MODEL, runs.META, runs.LAST, runs.PROGRESS,
             runs.TABLE, runs.CONFUSION, runs.CONFUSION_COUNTS, runs.CONFUSION_PNG, runs.LOG_NAME]
    package = Path(runs.__file__).parent
    offenders = []
    for path in sorted(package.rglob("*.py")):
        if path.name == "runs.py":
            continue
        text = path.read_text(encoding="utf-8")
        offenders += [f"{path.name}: {n}" for n in names if f'"{n}"' in text or f"'{n}'" in text]
    assert offenders == []
