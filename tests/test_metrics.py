"""Strict/tolerant metrics against hand-computed answers, fold mean ± sd, and the `metrics` command line."""
from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest

from bmteach.__main__ import main
from bmteach.errors import UserError
from bmteach.metrics import (compute_metrics, confusion_matrix, format_table, mean_sd, per_class_table,
                             read_predictions)


def scores(metrics, abbr, mode="strict"):
    e = metrics["classes"][abbr][mode]
    return e["precision"], e["recall"], e["f1"], e["support"]


def test_two_class_confusion_by_hand():
    # MON: 3 of 4 right (1 called EOS); EOS: 1 of 2 right (1 called MON). Nothing here is tolerated.
    true = ["MON"] * 4 + ["EOS"] * 2
    pred = ["MON", "MON", "MON", "EOS", "EOS", "MON"]
    m = compute_metrics(true, pred)
    assert scores(m, "MON") == pytest.approx((3 / 4, 3 / 4, 3 / 4, 4))
    assert scores(m, "EOS") == pytest.approx((1 / 2, 1 / 2, 1 / 2, 2))
    assert m["overall"]["strict"] == pytest.approx({"accuracy": 4 / 6, "balanced_accuracy": 0.625,
                                                    "macro_f1": 0.625})
    assert m["overall"]["tolerant"] == m["overall"]["strict"]
    assert set(m["classes"]) == {"MON", "EOS"}                  # absent classes are left out ...
    assert len(m["absent_classes"]) == 19 and "NGS" in m["absent_classes"]   # ... and listed
    assert m["warnings"] == [] and m["folds"] is None


def test_tolerance_raises_band_and_segmented_like_table_1_but_not_monocytes():
    # NGB: 6 right, 3 -> NGS, 1 -> MON.  NGS: 7 right, 2 -> NGB, 1 -> MON.  MON: 4 right, 1 -> NGS.
    true = ["NGB"] * 10 + ["NGS"] * 10 + ["MON"] * 5
    pred = (["NGB"] * 6 + ["NGS"] * 3 + ["MON"]) + (["NGS"] * 7 + ["NGB"] * 2 + ["MON"]) + (["MON"] * 4 + ["NGS"])
    m = compute_metrics(true, pred)
    # strict: NGB predicted 8 times (6 right), NGS 11 times (7 right), MON 6 times (4 right)
    assert scores(m, "NGB") == pytest.approx((6 / 8, 6 / 10, 2 * .75 * .6 / 1.35, 10))
    assert scores(m, "NGS") == pytest.approx((7 / 11, 7 / 10, 2 * (7 / 11) * .7 / (7 / 11 + .7), 10))
    # tolerant: NGB<->NGS confusions count as right: NGB predicted 9 times (all right), NGS 10 (9 right)
    assert scores(m, "NGB", "tolerant") == pytest.approx((1.0, 0.9, 2 * 0.9 / 1.9, 10))
    assert scores(m, "NGS", "tolerant") == pytest.approx((0.9, 0.9, 0.9, 10))
    # MON-NGS is not a tolerated pair: MON's numbers do not move
    assert scores(m, "MON") == scores(m, "MON", "tolerant") == pytest.approx((4 / 6, 4 / 5, 8 / 11, 5))
    for abbr in ("NGB", "NGS"):
        for k in ("precision", "recall"):
            assert m["classes"][abbr]["tolerant"][k] > m["classes"][abbr]["strict"][k]
    assert m["overall"]["strict"]["accuracy"] == pytest.approx(17 / 25)
    assert m["overall"]["tolerant"]["accuracy"] == pytest.approx(22 / 25)
    assert m["overall"]["tolerant"]["balanced_accuracy"] == pytest.approx((0.9 + 0.9 + 0.8) / 3)


def test_tolerant_pairs_can_be_overridden():
    true = ["NGB", "NGS", "MON", "EOS"]
    pred = ["NGS", "NGB", "EOS", "MON"]
    assert compute_metrics(true, pred, pairs=[])["overall"]["tolerant"]["accuracy"] == 0.0
    m = compute_metrics(true, pred, pairs=[("MON", "EOS")])
    assert m["overall"]["tolerant"]["accuracy"] == 0.5
    assert m["classes"]["EOS"]["tolerant"]["recall"] == 1.0 and m["classes"]["NGB"]["tolerant"]["recall"] == 0.0
    assert m["tolerance_pairs"] == [["EOS", "MON"]]


def test_class_without_predictions_has_precision_zero_and_a_warning():
    # PMO is never predicted strictly (its cells are called MYB and BLA, both tolerated neighbours).
    # BLA is predicted once but has no true images: recall undefined.
    true = ["PMO", "PMO", "MYB", "MYB"]
    pred = ["MYB", "BLA", "MYB", "MYB"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")           # no numpy "invalid value" / "mean of empty slice" warnings
        m = compute_metrics(true, pred)
    assert scores(m, "PMO") == (0.0, 0.0, 0.0, 2)
    assert scores(m, "MYB") == pytest.approx((2 / 3, 1.0, 0.8, 2))
    assert scores(m, "BLA") == (0.0, None, 0.0, 0)
    assert m["overall"]["strict"]["balanced_accuracy"] == pytest.approx(0.5)      # PMO 0, MYB 1
    assert m["overall"]["strict"]["macro_f1"] == pytest.approx(0.8 / 3)            # PMO 0, MYB .8, BLA 0
    # tolerant: both PMO cells count as PMO; BLA then has neither images nor predictions
    assert scores(m, "PMO", "tolerant") == (1.0, 1.0, 1.0, 2)
    assert scores(m, "BLA", "tolerant") == (None, None, None, 0)
    assert m["overall"]["tolerant"]["macro_f1"] == pytest.approx(1.0)
    assert m["no_predictions"] == {"strict": ["PMO"], "tolerant": []}
    assert any(w.startswith("PMO: no strict predictions") for w in m["warnings"])
    assert any(w.startswith("BLA: predicted 1 time(s) but has no true images") for w in m["warnings"])
    table = per_class_table(m).set_index("class")
    assert "precision 0" in table.loc["PMO", "note"] and table.loc["MYB", "note"] == ""
    json.dumps(m, allow_nan=False)               # valid JSON: no NaN anywhere


def test_folds_mean_and_sample_sd_by_hand():
    # fold 0: MON P 2/3 R 1, EOS P 1 R 1/2 | fold 1: MON P 1 R 1/2, EOS P 2/3 R 1 | fold 2: all right
    true = ["MON", "MON", "EOS", "EOS"] * 2 + ["MON", "EOS"]
    pred = ["MON", "MON", "EOS", "MON", "MON", "EOS", "EOS", "EOS", "MON", "EOS"]
    folds = [0] * 4 + [1] * 4 + [2] * 2
    m = compute_metrics(true, pred, folds=folds)
    mon = m["classes"]["MON"]["strict"]
    assert mon["precision"] == pytest.approx(8 / 9)
    assert mon["precision_sd"] == pytest.approx(math.sqrt(1 / 27))    # ddof=1: (4+1+1)/81 / 2
    assert mon["recall"] == pytest.approx(5 / 6)
    assert mon["recall_sd"] == pytest.approx(math.sqrt(1 / 12))
    assert mon["support"] == 5                                         # a total, not a mean
    acc = m["overall"]["strict"]
    assert acc["accuracy"] == pytest.approx(5 / 6) and acc["accuracy_sd"] == pytest.approx(math.sqrt(3) / 12)
    assert m["folds"] == [0, 1, 2] and "ddof=1" in m["sd"]
    assert set(mon) == {"precision", "precision_sd", "recall", "recall_sd", "f1", "f1_sd", "support"}
    text = format_table(m)
    assert "0.89 ± 0.19" in text and "0.83 ± 0.29" in text


def test_mean_sd_skips_undefined_values_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mean, sd = mean_sd([[1.0, np.nan, np.nan], [3.0, 2.0, np.nan]])
    assert mean[0] == 2.0 and sd[0] == pytest.approx(math.sqrt(2))
    assert mean[1] == 2.0 and np.isnan(sd[1])          # one value: mean, but no sd
    assert np.isnan(mean[2]) and np.isnan(sd[2])


def test_fold_missing_a_class_is_left_out_of_that_class_mean():
    true = ["MON", "EOS", "MON", "MON"]
    pred = ["MON", "EOS", "MON", "EOS"]
    m = compute_metrics(true, pred, folds=[0, 0, 1, 1])
    eos = m["classes"]["EOS"]["strict"]
    assert eos["recall"] == 1.0 and eos["recall_sd"] is None          # only fold 0 has EOS cells
    assert eos["precision"] == pytest.approx(0.5)                     # fold 0: 1/1, fold 1: 0/1
    assert any("Fold 1 has no true images of EOS" in w for w in m["warnings"])


def test_confusion_matrix_counts_and_rows():
    true = ["MON", "MON", "MON", "EOS"]
    pred = ["MON", "EOS", "EOS", "EOS"]
    classes = ("MON", "EOS", "BAS")
    counts = confusion_matrix(true, pred, classes)
    assert counts.tolist() == [[1, 2, 0], [0, 1, 0], [0, 0, 0]]
    norm = confusion_matrix(true, pred, classes, normalize=True)
    assert norm[0].tolist() == pytest.approx([1 / 3, 2 / 3, 0]) and norm[1].tolist() == [0, 1, 0]
    assert norm[2].tolist() == [0, 0, 0]                               # no true BAS: an empty row, no NaN


def test_agrees_with_scikit_learn_on_random_predictions():
    from sklearn.metrics import balanced_accuracy_score, f1_score, precision_recall_fscore_support

    rng = np.random.default_rng(0)
    classes = ["NGS", "NGB", "LYT", "MON", "EOS", "ART"]
    true = rng.choice(classes, 500, p=[.4, .2, .2, .1, .1, 0])        # ART only ever predicted
    pred = np.where(rng.random(500) < 0.6, true, rng.choice(classes, 500))
    m = compute_metrics(true, pred, pairs=[])
    labels = [c for c in classes if c in set(true) | set(pred)]
    p, r, f, s = precision_recall_fscore_support(true, pred, labels=labels, zero_division=0)
    for i, c in enumerate(labels):
        assert scores(m, c)[0] == pytest.approx(p[i]) and scores(m, c)[2] == pytest.approx(f[i])
        if s[i]:
            assert scores(m, c)[1] == pytest.approx(r[i])
    assert m["overall"]["strict"]["macro_f1"] == pytest.approx(f1_score(true, pred, labels=labels,
                                                                        average="macro", zero_division=0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")      # sklearn warns about ART in y_pred only
        assert m["overall"]["strict"]["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(true, pred))


def test_unknown_labels_and_empty_input_are_clear_errors():
    with pytest.raises(UserError, match="'XYZ'"):
        compute_metrics(["MON"], ["XYZ"])
    with pytest.raises(UserError, match="no predictions"):
        compute_metrics([], [])


# --- CSV reading and the command line ----------------------------------------------------------------------

def write(tmp_path, text, name="pred.csv"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def run_cli(argv, capsys):
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_json_shape_with_folds(tmp_path, capsys):
    path = write(tmp_path, "true,pred,fold\nNGB,NGS,0\nNGS,NGS,0\nngb,ngb,1\nNGS,NGB,1\nMON,MON,0\nMON,MON,1\n")
    rc, out, _ = run_cli(["metrics", "--predictions", str(path), "--json"], capsys)
    assert rc == 0
    m = json.loads(out)
    assert set(m["classes"]) == {"NGB", "NGS", "MON"}
    for entry in m["classes"].values():
        assert set(entry) == {"strict", "tolerant"}
        for mode in entry.values():
            assert set(mode) == {"precision", "precision_sd", "recall", "recall_sd", "f1", "f1_sd", "support"}
    for mode in ("strict", "tolerant"):
        assert set(m["overall"][mode]) == {"accuracy", "accuracy_sd", "balanced_accuracy",
                                           "balanced_accuracy_sd", "macro_f1", "macro_f1_sd"}
    assert m["overall"]["strict"]["accuracy"] == pytest.approx(2 / 3)   # 2/3 in each fold
    assert m["overall"]["strict"]["accuracy_sd"] == 0.0
    assert m["overall"]["tolerant"]["accuracy"] == 1.0


def test_cli_json_shape_without_folds_and_table(tmp_path, capsys):
    path = write(tmp_path, "true,pred\nMON,MON\nEOS,MON\n")
    rc, out, _ = run_cli(["metrics", "--predictions", str(path), "--json"], capsys)
    m = json.loads(out)
    assert rc == 0 and set(m["classes"]["MON"]["strict"]) == {"precision", "recall", "f1", "support"}
    assert set(m["overall"]["tolerant"]) == {"accuracy", "balanced_accuracy", "macro_f1"}
    assert m["no_predictions"]["strict"] == ["EOS"]
    rc, out, _ = run_cli(["metrics", "--predictions", str(path)], capsys)
    assert rc == 0 and "strict P" in out and "EOS: no strict or tolerant predictions" in out
    row = next(line for line in out.splitlines() if line.startswith("MON"))
    assert row.split()[:6] == ["MON", "1", "0.50", "1.00", "0.50", "1.00"]


def test_cli_tolerance_override(tmp_path, capsys):
    path = write(tmp_path, "true,pred\nNGB,NGS\nMON,EOS\n")
    tol = write(tmp_path, "a,b\nMON,EOS\n", "tol.csv")
    rc, out, _ = run_cli(["metrics", "--predictions", str(path), "--tolerance", str(tol), "--json"], capsys)
    m = json.loads(out)
    assert m["classes"]["MON"]["tolerant"]["recall"] == 1.0 and m["classes"]["NGB"]["tolerant"]["recall"] == 0.0


@pytest.mark.parametrize("text, message", [
    ("", "is empty"),
    ("true,pred\n", "header but no predictions"),
    ("truth,pred\nMON,MON\n", "lacks the column(s) true"),
    ("true,pred\nMON,MON\nMON,FOO\nBAR,MON\nFOO,MON\n", "'FOO' (lines 3, 5); 'BAR' (line 4)"),
    ("true,pred,fold\nMON,MON,x\n", "line 2: fold 'x'"),
])
def test_cli_bad_csv_is_one_clear_sentence(tmp_path, capsys, text, message):
    path = write(tmp_path, text)
    rc, out, err = run_cli(["metrics", "--predictions", str(path)], capsys)
    assert rc == 2 and message in err and "Traceback" not in err and out == ""


def test_missing_file_is_a_clear_error(tmp_path, capsys):
    rc, _, err = run_cli(["metrics", "--predictions", str(tmp_path / "nope.csv")], capsys)
    assert rc == 2 and "not found" in err


def test_read_predictions_keeps_extra_columns_and_skips_blank_lines(tmp_path):
    path = write(tmp_path, "path,true,pred,fold,prob_MON\na.jpg,MON,EOS,3,0.1\n\nb.jpg,eos,EOS,4,0.2\n")
    df = read_predictions(path, keep=("path",))
    assert df.to_dict("list") == {"true": ["MON", "EOS"], "pred": ["EOS", "EOS"], "fold": [3, 4],
                                  "path": ["a.jpg", "b.jpg"]}
