"""python -m bmteach predict: good, odd and broken files side by side."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from bmteach.__main__ import main
from bmteach.classes import ABBRS
from bmteach.models import ModelMeta, create_model, save_checkpoint

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("predict") / "run"
    for k in (0, 1):
        torch.manual_seed(k)
        save_checkpoint(create_model("sequential", len(ABBRS)),
                        ModelMeta("sequential", image_size=32, fold=k, complete=True), run / f"fold{k}" / "model.pt")
    pd.DataFrame({"path": ["BLA/a.jpg", "BLA/b.jpg"], "label": ["BLA", "BLA"], "fold": [0, 1]}).to_csv(
        run / "manifest.csv", index=False)
    return run


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (250, 250, 3), dtype=np.uint8))
    out = {"good": d / "good.jpg", "rgba": d / "rgba.png", "grey16": d / "grey16.png", "empty": d / "empty.jpg",
           "text": d / "notes.jpg", "truncated": d / "truncated.jpg", "missing": d / "missing.jpg"}
    rgb.save(out["good"], quality=90)
    rgb.convert("RGBA").save(out["rgba"])
    Image.fromarray(rng.integers(0, 65536, (60, 70), dtype=np.uint16)).save(out["grey16"])
    assert Image.open(out["grey16"]).mode.startswith("I;16")
    out["empty"].write_bytes(b"")
    out["text"].write_text("this is not an image\n")
    buf = io.BytesIO()
    rgb.save(buf, format="JPEG", quality=90)
    out["truncated"].write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    return out


ORDER = ["good", "empty", "rgba", "text", "grey16", "truncated", "missing"]
BAD = {"empty", "text", "truncated", "missing"}


def test_json_lines_in_order_errors_for_bad_files_and_exit_1(run, files, capsys):
    status = main(["predict", "--run", str(run), "--json", "--device", "cpu"] + [str(files[k]) for k in ORDER])
    assert status == 1
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["path"] for line in lines] == [str(files[k]) for k in ORDER]
    for key, line in zip(ORDER, lines):
        if key in BAD:
            assert set(line) == {"path", "error"}
            assert line["error"] and "\n" not in line["error"] and "Traceback" not in line["error"]
        else:
            # this run has no ood.json: the out-of-distribution fields are there, and say "no score"
            assert set(line) == {"path", "pred", "probs", "ood_score", "ood"}
            assert line["ood_score"] is None and line["ood"] is None
            assert list(line["probs"]) == list(ABBRS)
            assert sum(line["probs"].values()) == pytest.approx(1.0, abs=1e-4)
            assert line["pred"] == max(line["probs"], key=line["probs"].get)
    by_key = dict(zip(ORDER, lines))
    assert "empty" in by_key["empty"]["error"]
    assert "truncated" in by_key["truncated"]["error"]
    assert "not found" in by_key["missing"]["error"]


def test_all_good_exits_0_and_readable_output_names_top_3(run, files, capsys):
    status = main(["predict", "--checkpoint", str(run / "fold0" / "model.pt"), "--device", "cpu",
                   str(files["good"]), str(files["rgba"])])
    assert status == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and out[0].startswith(f"{files['good']}: ")
    assert out[0].count(" | ") == 2                          # top-3 classes
    top = out[0].split(": ", 1)[1].split(" | ")[0].split()
    assert top[0] in ABBRS and float(top[-1]) > 0            # abbreviation, name, probability


def test_readable_errors_go_to_stderr(run, files, capsys):
    status = main(["predict", "--run", str(run), "--device", "cpu", str(files["text"]), str(files["good"])])
    captured = capsys.readouterr()
    assert status == 1
    assert captured.out.count("\n") == 1 and str(files["good"]) in captured.out
    note, error = captured.err.splitlines()
    assert note.startswith("note: ") and "no out-of-distribution score yet" in note
    assert error.startswith(f"{files['text']}: error: ")


def test_a_missing_run_is_one_sentence_with_status_2(tmp_path, files, capsys):
    assert main(["predict", "--run", str(tmp_path / "nope"), str(files["good"])]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1


def test_module_entry_point(run, files):
    """The real command line, in a subprocess."""
    proc = subprocess.run(
        [sys.executable, "-m", "bmteach", "predict", "--run", str(run), "--json", "--device", "cpu",
         str(files["good"]), str(files["empty"])],
        cwd=REPO, capture_output=True, text=True, timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 1, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert "pred" in lines[0] and "error" in lines[1]
    assert "Traceback" not in proc.stderr
