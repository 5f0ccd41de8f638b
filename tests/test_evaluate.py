"""evaluate_run on hand-made run folders, and evaluate-external with a tiny run whose answer is known."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bmteach.__main__ import main
from bmteach.classes import ABBRS
from bmteach.errors import UserError
from bmteach.evaluate import evaluate_run
from bmteach.external import evaluate_external, external_report
from bmteach.metrics import compute_metrics

# fold 0: 2 NGB (one called NGS), 1 NGS, 1 MON | fold 1: 1 NGB, 2 NGS (one called NGB), 1 MON called EOS
ROWS = [
    ("NGB/a.jpg", "NGB", "NGB", 0), ("NGB/b.jpg", "NGB", "NGS", 0), ("NGS/c.jpg", "NGS", "NGS", 0),
    ("MON/d.jpg", "MON", "MON", 0),
    ("NGB/e.jpg", "NGB", "NGB", 1), ("NGS/f.jpg", "NGS", "NGB", 1), ("NGS/g.jpg", "NGS", "NGS", 1),
    ("MON/h.jpg", "MON", "EOS", 1),
]


def oof_text(rows) -> str:
    header = "path,true,pred,fold," + ",".join(f"prob_{c}" for c in ABBRS)
    lines = [header]
    for path, true, pred, fold in rows:
        probs = ["0.9" if c == pred else "0.005" for c in ABBRS]
        lines.append(f"{path},{true},{pred},{fold}," + ",".join(probs))
    return "\n".join(lines) + "\n"


def make_run(tmp_path, rows=ROWS, manifest_rows=None, name="run"):
    run = tmp_path / name
    for fold in sorted({r[3] for r in rows}):
        (run / f"fold{fold}").mkdir(parents=True)
        (run / f"fold{fold}" / "oof.csv").write_text(oof_text([r for r in rows if r[3] == fold]))
    (run / "config.json").write_text(json.dumps({"model": "sequential", "classes": list(ABBRS)}))
    manifest = manifest_rows if manifest_rows is not None else [(p, t, f) for p, t, _, f in rows]
    pd.DataFrame(manifest, columns=["path", "label", "fold"]).to_csv(run / "manifest.csv", index=False)
    return run


def test_evaluate_run_equals_compute_metrics_and_writes_its_files(tmp_path):
    run = make_run(tmp_path)
    metrics = evaluate_run(run)
    expected = compute_metrics([r[1] for r in ROWS], [r[2] for r in ROWS], folds=[r[3] for r in ROWS])
    assert metrics["classes"] == expected["classes"] and metrics["overall"] == expected["overall"]
    # by hand: NGB fold 0 P 1/1 R 1/2, fold 1 P 1/2 R 1/1 -> mean .75 each; tolerant NGB/NGS all right
    assert metrics["classes"]["NGB"]["strict"]["precision"] == pytest.approx(0.75)
    assert metrics["classes"]["NGB"]["tolerant"]["recall"] == 1.0
    assert metrics["classes"]["MON"]["strict"]["recall"] == pytest.approx(0.5)        # fold 0: 1, fold 1: 0
    assert metrics["coverage"] == {"images": 8, "rows": 8, "duplicated": 0, "manifest_images": 8, "missing": 0,
                                   "not_in_manifest": 0}
    assert json.loads((run / "metrics.json").read_text()) == metrics
    # run/oof.csv is the two fold files joined
    joined = pd.read_csv(run / "oof.csv")
    assert joined["path"].tolist() == [r[0] for r in ROWS] and list(joined.columns[4:]) == [f"prob_{c}" for c in ABBRS]
    # the table: Table 1 shape, one row per reported class
    table = pd.read_csv(run / "table.csv", keep_default_na=False).set_index("class")
    assert list(table.index) == ["NGB", "NGS", "EOS", "MON"]
    assert table.loc["NGB", "n"] == 3 and table.loc["NGB", "strict_precision"] == pytest.approx(0.75)
    assert {"strict_recall_sd", "tolerant_precision", "tolerant_recall_sd"} <= set(table.columns)


def test_confusion_files_are_row_normalised_and_readable(tmp_path):
    run = make_run(tmp_path)
    evaluate_run(run)
    norm = pd.read_csv(run / "confusion.csv", index_col="true")
    assert list(norm.index) == list(ABBRS) and list(norm.columns) == list(ABBRS)
    sums = norm.sum(axis=1)
    assert sums[["NGB", "NGS", "MON"]].tolist() == pytest.approx([1, 1, 1])
    assert sums.drop(["NGB", "NGS", "MON"]).eq(0).all()                   # classes without images: empty rows
    assert norm.loc["MON", "EOS"] == pytest.approx(0.5) and norm.loc["NGB", "NGS"] == pytest.approx(1 / 3)
    counts = pd.read_csv(run / "confusion_counts.csv", index_col="true")
    assert counts.to_numpy().sum() == 8 and counts.loc["NGS", "NGB"] == 1
    with Image.open(run / "confusion.png") as im:
        assert im.format == "PNG" and im.width >= 1000 and im.height >= 900   # 21x21 cells at a readable size


def test_an_image_predicted_twice_or_never_is_an_error_naming_it(tmp_path):
    manifest = [(p, t, f) for p, t, _, f in ROWS]
    doubled = make_run(tmp_path, ROWS + [("NGB/a.jpg", "NGB", "NGB", 1)], manifest, name="doubled")  # folds 0 and 1
    with pytest.raises(UserError, match=r"1 image\(s\) of .* are predicted more than once \(NGB/a.jpg\)"):
        evaluate_run(doubled)
    missing = make_run(tmp_path, ROWS, manifest + [("EOS/z.jpg", "EOS", 1)], name="missing")  # z.jpg: never predicted
    with pytest.raises(UserError, match=r"1 of 9 manifest image\(s\) .* \(EOS/z.jpg\); train fold\(s\) 1 first"):
        evaluate_run(missing)
    assert not (missing / "metrics.json").exists() and not (missing / "oof.csv").exists()


def test_fold_column_disagreeing_with_the_manifest_is_an_error(tmp_path):
    run = make_run(tmp_path)
    text = (run / "fold1" / "oof.csv").read_text().replace("MON/h.jpg,MON,EOS,1", "MON/h.jpg,MON,EOS,0")
    (run / "fold1" / "oof.csv").write_text(text)
    with pytest.raises(UserError, match=r"1 prediction\(s\) .* disagree with manifest.csv .* \(MON/h.jpg\)"):
        evaluate_run(run)


def test_stale_run_oof_is_rebuilt_and_a_lone_run_oof_is_used(tmp_path):
    run = make_run(tmp_path)
    (run / "oof.csv").write_text(oof_text(ROWS[:2]))                     # stale: written before fold 1 ended
    assert evaluate_run(run)["n"] == 8
    assert pd.read_csv(run / "oof.csv")["path"].tolist() == [r[0] for r in ROWS]   # manifest order
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "oof.csv").write_text(oof_text(ROWS))
    assert evaluate_run(lone)["n"] == 8 and "manifest_images" not in evaluate_run(lone)["coverage"]


def test_tolerance_override(tmp_path):
    run = make_run(tmp_path)
    tol = tmp_path / "none.csv"
    tol.write_text("a,b,enabled\n")
    metrics = evaluate_run(run, tolerance=tol)
    assert metrics["overall"]["tolerant"] == metrics["overall"]["strict"]
    assert metrics["tolerance_pairs"] == []


def test_cli_evaluate_prints_table_and_errors_are_sentences(tmp_path, capsys):
    run = make_run(tmp_path)
    assert main(["evaluate", str(run)]) == 0
    out = capsys.readouterr().out
    assert "strict P" in out and "0.75 ± 0.35" in out and "metrics.json" in out
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["evaluate", str(empty)]) == 2
    assert "no out-of-fold predictions" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "missing")]) == 2
    assert "Run folder not found" in capsys.readouterr().err


def test_unknown_class_in_oof_names_its_line(tmp_path):
    run = make_run(tmp_path)
    text = (run / "fold0" / "oof.csv").read_text().replace("MON/d.jpg,MON,MON", "MON/d.jpg,MON,XXX")
    (run / "fold0" / "oof.csv").write_text(text)
    with pytest.raises(UserError, match=r"'XXX' \(line 5\)"):
        evaluate_run(run)


# --- external validation ------------------------------------------------------------------------------------

def test_external_report_by_hand():
    true = ["NGS", "NGS", "NGB", "NGB", "MON"]
    pred = ["NGS", "ART", "NGS", "NGB", "NIF"]
    r = external_report(true, pred)
    assert r["agreement"] == pytest.approx({"strict": 2 / 5, "tolerant": 3 / 5})
    assert r["per_class"]["NGB"] == pytest.approx({"n": 2, "recall_strict": .5, "recall_tolerant": 1.0,
                                                   "art_nif_share": 0.0})
    assert r["per_class"]["NGS"]["art_nif_share"] == 0.5 and r["per_class"]["MON"]["art_nif_share"] == 1.0
    assert r["art_nif_share"] == pytest.approx(2 / 5)
    assert r["predicted_share"] == pytest.approx({"NGB": .2, "NGS": .4, "ART": .2, "NIF": .2})


def make_constant_run(tmp_path, abbr: str):
    """A 2-fold run of tiny models that always answer `abbr` (zero head weights, a large bias)."""
    import torch

    from bmteach.models import ModelMeta, create_model, save_checkpoint

    run = tmp_path / f"run_{abbr}"
    for fold in (0, 1):
        torch.manual_seed(fold)
        model = create_model("sequential", len(ABBRS))
        with torch.no_grad():
            model.head.weight.zero_()
            model.head.bias.zero_()
            model.head.bias[ABBRS.index(abbr)] = 10.0
        save_checkpoint(model, ModelMeta(model="sequential", image_size=32, fold=fold, complete=True),
                        run / f"fold{fold}" / "model.pt")
    return run


def make_external_set(tmp_path):
    """seg/ (3) -> NGS, band/ (2) -> NGB, mono/ (1) -> MON, junk/ excluded, plus a file that is no image."""
    root = tmp_path / "external"
    rng = np.random.default_rng(0)
    for folder, n in (("seg", 3), ("band", 2), ("mono", 1), ("junk", 1)):
        (root / folder).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(root / folder / f"{i}.png")
    (root / "band" / "broken.png").write_bytes(b"not a picture at all")
    mapping = tmp_path / "mapping.csv"
    mapping.write_text("folder,abbr\nseg,NGS\nband,NGB\nmono,MON\njunk,\n")
    return root, mapping


def test_evaluate_external_with_a_run_that_always_says_ngs(tmp_path, capsys):
    run = make_constant_run(tmp_path, "NGS")
    root, mapping = make_external_set(tmp_path)
    assert main(["evaluate-external", "--run", str(run), "--data", str(root), "--mapping", str(mapping)]) == 0
    out = capsys.readouterr().out
    assert "agreement strict 0.50, tolerant 0.83" in out
    report = json.loads((run / "external" / "report.json").read_text())
    assert report["n"] == 6 and report["predicted_share"] == {"NGS": 1.0} and report["art_nif_share"] == 0.0
    assert report["per_class"]["NGB"]["recall_strict"] == 0.0 and report["per_class"]["NGB"]["recall_tolerant"] == 1.0
    assert report["per_class"]["MON"]["recall_tolerant"] == 0.0
    assert any(s["path"].endswith("broken.png") for s in report["skipped"])
    preds = pd.read_csv(run / "external" / "predictions.csv")
    assert len(preds) == 6 and set(preds["pred"]) == {"NGS"} and (preds["prob_NGS"] > 0.99).all()
    assert sorted(preds["true"]) == ["MON", "NGB", "NGB", "NGS", "NGS", "NGS"]


def test_evaluate_external_counts_artefact_predictions(tmp_path):

    run = make_constant_run(tmp_path, "ART")
    root, mapping = make_external_set(tmp_path)
    report = evaluate_external(run, root, mapping, out_dir=tmp_path / "out", device="cpu")
    assert report["art_nif_share"] == 1.0 and report["agreement"]["tolerant"] == 0.0
    assert all(r["art_nif_share"] == 1.0 for r in report["per_class"].values())
    assert (tmp_path / "out" / "predictions.csv").is_file()
