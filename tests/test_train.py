"""Cross-validation training on a tiny data set: overfitting, folds, out-of-fold coverage, resume, lock, runs."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from bmteach.__main__ import main
from bmteach.data import read_manifest
from bmteach.errors import UserError
from bmteach.models import load_checkpoint
from bmteach.runs import (LOCK_NAME, PARENT_LOCK_ENV, RunLock, launch_training, lock_owner, open_run, read_log, read_oof, read_progress,
                          stop_training)
from bmteach.train import (build_or_read_manifest, plan_parallel_folds, run_training, split_fold)
from helpers import TINY, make_tiny_dataset, prepared_run, state_dicts_equal, tiny_config, train_in_child

REPO = Path(__file__).resolve().parent.parent
@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return make_tiny_dataset(tmp_path_factory.mktemp("tiny") / "data")


def train_cli(data: Path, out: Path, *extra: str) -> int:
    return main(["train", "--data", str(data), "--out", str(out), *TINY, *extra])


# --- learning ------------------------------------------------------------------------------------------------

def test_tiny_model_overfits_a_tiny_set(tiny_data, tmp_path):
    out = tmp_path / "run"
    assert train_cli(tiny_data, out, "--num-folds", "2", "--folds", "0", "--epochs", "8", "--per-class", "16") == 0
    meta = json.loads((out / "fold0" / "meta.json").read_text())
    records = read_progress(out).to_dict("records")
    epochs = [r for r in records if r.get("step") == r.get("steps_per_epoch") and not isinstance(r.get("phase"), str)]
    assert [r["epoch"] for r in epochs] == list(range(1, 9))
    checks = [r for r in records if r.get("phase") == "epoch"]            # the held-out sample after each epoch
    assert [r["epoch"] for r in checks] == list(range(1, 9)) and all(0 <= r["val_accuracy"] <= 1 for r in checks)
    assert epochs[-1]["loss"] < 0.5 * epochs[0]["loss"]           # the loss falls
    assert meta["metrics"]["train_accuracy"] >= 0.95               # and it learns its training images
    assert meta["complete"] and meta["epoch"] == 8 and meta["fold"] == 0
    assert not (out / "fold0" / "last.pt").exists()                 # removed once the fold is complete
    model, loaded_meta = load_checkpoint(out / "fold0")             # weights_only=True, eval mode
    assert loaded_meta.image_size == 32 and not model.training


def test_folds_are_disjoint_and_complete(tiny_data):
    manifest = build_or_read_manifest(tiny_data, None, num_folds=5, seed=0)
    assert len(manifest) == 40
    held_out = []
    for k in range(5):
        train_df, val_df = split_fold(manifest, k)
        assert set(train_df["path"]).isdisjoint(val_df["path"])
        assert len(train_df) + len(val_df) == 40
        assert set(val_df["fold"]) == {k}
        held_out += list(val_df["path"])
    assert sorted(held_out) == sorted(manifest["path"])             # each image held out exactly once


def test_every_image_is_predicted_exactly_once(tiny_data, tmp_path):
    out, given = tmp_path / "run", tmp_path / "manifest.csv"
    assert main(["index", str(tiny_data), "--folds", "3", "--seed", "2", "--out", str(given)]) == 0
    assert train_cli(tiny_data, out, "--manifest", str(given), "--epochs", "1", "--per-class", "4") == 0
    manifest = read_manifest(out / "manifest.csv")
    assert manifest.equals(read_manifest(given))                     # the given split, its 3 folds, is used
    oof = pd.read_csv(out / "oof.csv")
    assert sorted(oof["path"]) == sorted(manifest["path"]) and not oof["path"].duplicated().any()
    merged = oof.merge(manifest, on="path")
    assert (merged["fold_x"] == merged["fold_y"]).all()             # predicted by the model that never saw it
    assert (merged["true"] == merged["label"]).all()
    probs = oof[[c for c in oof.columns if c.startswith("prob_")]]
    assert probs.shape[1] == 21 and np.allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    assert (oof["pred"] == probs.idxmax(axis=1).str[5:]).all()
    for k in range(3):                                              # the per-fold files agree
        fold_oof = pd.read_csv(out / f"fold{k}" / "oof.csv")
        assert set(fold_oof["path"]) == set(manifest.loc[manifest["fold"] == k, "path"])
    assert (out / "metrics.json").is_file()                         # evaluated at the end
    run = open_run(out)
    assert run.is_complete() and [s.state for s in run.status()] == ["complete"] * 3
    assert len(read_oof(out)) == 40 and read_oof(out)["path"].tolist() == manifest["path"].tolist()


# --- resume ------------------------------------------------------------------------------------------------

def test_resume_after_a_stop_is_bit_identical(tiny_data, tmp_path):
    cfg = tiny_config(tiny_data)
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    manifest = prepared_run(tiny_data, whole, cfg)
    assert run_training(cfg, whole, manifest, tiny_data, torch.device("cpu"), workers=0) == 0
    prepared_run(tiny_data, parts, cfg)
    # stop right after epoch 1 of fold 0 (what a kill after that checkpoint leaves behind)
    assert run_training(cfg, parts, manifest, tiny_data, torch.device("cpu"), workers=0, stop_after_epoch=1) == 0
    assert (parts / "fold0" / "last.pt").is_file() and not (parts / "fold0" / "model.pt").exists()
    blob = torch.load(parts / "fold0" / "last.pt", weights_only=True)
    assert blob["epoch"] == 1 and set(blob) >= {"model", "optimizer", "scheduler", "rng"}
    assert open_run(parts).fold_status(0).state == "stopped"
    with pytest.raises(UserError, match="--resume"):               # not silently restarted
        run_training(cfg, parts, manifest, tiny_data, torch.device("cpu"), workers=0)
    assert train_cli(tiny_data, parts, "--resume") == 0
    for k in (0, 1):
        assert state_dicts_equal(whole / f"fold{k}" / "model.pt", parts / f"fold{k}" / "model.pt")
        assert (whole / f"fold{k}" / "oof.csv").read_text() == (parts / f"fold{k}" / "oof.csv").read_text()
    # and a different seed really gives a different model (the comparison can fail)
    other = tmp_path / "other"
    prepared_run(tiny_data, other, tiny_config(tiny_data, seed=1, folds=[0]))
    run_training(tiny_config(tiny_data, seed=1, folds=[0]), other, manifest, tiny_data, torch.device("cpu"), 0)
    assert not state_dicts_equal(whole / "fold0" / "model.pt", other / "fold0" / "model.pt")


def test_killed_training_process_resumes_to_the_same_model(tiny_data, tmp_path, monkeypatch):
    args = ["--num-folds", "2", "--folds", "0", "--epochs", "6", "--per-class", "40"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert train_in_child(tiny_data, whole, *args) == 0
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the child: one thread, like the tests
    # launched the way the app's Training page does it
    proc = launch_training(killed, data=tiny_data, folds=[0], epochs=6, per_class=40, image_size=32,
                           extra=("--num-folds", "2", "--batch-size", "8", "--lr", "0.003"))
    try:
        deadline = time.time() + 60
        while not (killed / "fold0" / "last.pt").exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, read_log(killed)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert lock_owner(killed) is None and (killed / LOCK_NAME).exists()   # a stale lock of a dead process
    assert not (killed / "fold0" / "model.pt").exists()
    assert open_run(killed).fold_status(0).state == "crashed"                # gone without a word: crashed
    assert train_in_child(tiny_data, killed, "--resume") == 0              # takes the stale lock over
    assert state_dicts_equal(whole / "fold0" / "model.pt", killed / "fold0" / "model.pt")
    assert not (killed / LOCK_NAME).exists()


def test_stop_training_signals_the_lock_owner(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    assert stop_training(out) is False                                      # nothing runs
    owner = subprocess.Popen(["sleep", "30"])
    try:
        (out / LOCK_NAME).write_text(json.dumps({"pid": owner.pid}))
        assert stop_training(out) is True
        assert owner.wait(timeout=10) == -signal.SIGTERM
    finally:
        owner.kill()
        owner.wait()


# --- the lock, errors, status ------------------------------------------------------------------------------

def test_lock_refuses_a_second_writer_and_takes_over_a_dead_ones(tiny_data, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    out.mkdir()
    other = subprocess.Popen(["sleep", "30"])
    try:
        (out / LOCK_NAME).write_text(json.dumps({"pid": other.pid}))
        assert lock_owner(out) == other.pid
        with pytest.raises(UserError, match=f"PID {other.pid}"):
            RunLock(out).acquire()
        assert train_cli(tiny_data, out, "--epochs", "1") == 2
        assert f"another training process (PID {other.pid})" in capsys.readouterr().err
        assert not (out / "config.json").exists()                    # nothing written
        # a --parallel-folds child may write into the run its parent (the lock owner) holds for it
        monkeypatch.setenv(PARENT_LOCK_ENV, str(other.pid))
        child_lock = RunLock(out).acquire()
        assert not child_lock.held and lock_owner(out) == other.pid
        child_lock.release()
        assert lock_owner(out) == other.pid                          # the parent's lock stays
        monkeypatch.delenv(PARENT_LOCK_ENV)
    finally:
        other.kill()
        other.wait()
    assert lock_owner(out) is None
    with RunLock(out) as lock:
        assert lock.held and lock_owner(out) == os.getpid()
    assert not (out / LOCK_NAME).exists()


@pytest.mark.parametrize("extra, message", [
    (["--folds", "7"], "Unknown fold 7"),
    (["--folds", "x"], "comma-separated"),
    (["--epochs", "0"], "at least 1"),
])
def test_bad_arguments_are_one_clear_sentence(tiny_data, tmp_path, capsys, extra, message):
    assert train_cli(tiny_data, tmp_path / "run", *extra) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_missing_data_and_missing_gpu(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r")]) == 2
    assert "Data folder not found" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()                               # a typo leaves no half-made run
    if not torch.cuda.is_available():
        assert main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "r"), "--device", "cuda"]) == 2
        assert "no GPU" in capsys.readouterr().err


def test_an_existing_run_is_not_overwritten(tiny_data, tmp_path, capsys):
    out = tmp_path / "run"
    (out).mkdir()
    (out / "config.json").write_text("{}")
    assert train_cli(tiny_data, out, "--epochs", "1") == 2
    assert "already holds a run" in capsys.readouterr().err


def test_finetune_head_changes_only_the_head(tiny_data, tmp_path):
    out = tmp_path / "run"
    assert train_cli(tiny_data, out, "--num-folds", "2", "--folds", "1", "--epochs", "2", "--per-class", "8",
                     "--finetune", "head") == 0
    from bmteach.augment import derive_seed
    from bmteach.models import create_model

    torch.manual_seed(derive_seed(0, 1, 0, 1))                        # the fold's initial weights
    start = create_model("sequential", 21).state_dict()
    trained = torch.load(out / "fold1" / "model.pt", weights_only=True)
    body = [k for k in start if k.startswith("body.")]
    assert body and all(torch.equal(start[k], trained[k]) for k in body)  # weights and BN statistics frozen
    assert not torch.equal(start["head.weight"], trained["head.weight"])


def test_progress_records_have_the_documented_fields(tiny_data, tmp_path):
    out = tmp_path / "run"
    assert train_cli(tiny_data, out, "--num-folds", "2", "--folds", "0", "--epochs", "2", "--per-class", "8") == 0
    df = read_progress(out)
    for column in ("fold", "epoch", "step", "loss", "accuracy", "images_per_s", "eta_s", "time"):
        assert column in df.columns
    assert (df["fold"] == 0).all() and df["images_per_s"].iloc[-2] > 0
    run = open_run(out)
    states = [s.state for s in run.status()]
    assert states == ["complete", "pending"] and run.status()[0].fraction == 1.0
    config = json.loads((out / "config.json").read_text())
    assert config["per_class"] == 8 and config["image_size"] == 32 and config["folds"] == [0]


def test_parallel_fold_plan_deals_folds_round_robin():
    assert plan_parallel_folds([0, 1, 2, 3, 4], 2) == [[0, 2, 4], [1, 3]]
    assert plan_parallel_folds([0, 1], 4) == [[0], [1]]


def test_augmenting_on_the_device_trains_the_same_model(tiny_data, tmp_path):
    """--augment-on device (workers ship uint8 images and plans, the batch is augmented after the copy) trains
    bit for bit the model the workers' own augmentation trains, here on CPU, through a worker process too."""
    models = {}
    for aug, workers in [("workers", 1), ("device", 1), ("workers", 0), ("device", 0)]:
        cfg = tiny_config(tiny_data, folds=[0], epochs=2)
        out = tmp_path / f"{aug}{workers}"
        manifest = prepared_run(tiny_data, out, cfg)
        assert run_training(cfg, out, manifest, tiny_data, torch.device("cpu"), workers=workers, augment_on=aug) == 0
        models[aug, workers] = out / "fold0" / "model.pt"
    assert state_dicts_equal(models["workers", 1], models["device", 1])
    assert state_dicts_equal(models["workers", 0], models["device", 0])
    with pytest.raises(UserError, match="augment-on"):
        run_training(tiny_config(tiny_data, folds=[0]), tmp_path / "x", manifest, tiny_data, torch.device("cpu"),
                     workers=0, augment_on="gpu")


def test_the_number_of_loader_workers_does_not_change_the_model(tiny_data, tmp_path):
    """Persistent workers keep the loader's first iterator, so only its first iter() would draw the workers' base
    seed; from the global RNG, that shifted the dropout draws of every later epoch by the number of workers (and
    on resuming with workers). The loader has its own generator: the same model with 0 or 1 workers, resumed or
    not, from epoch 2 on too."""
    cfg = tiny_config(tiny_data, folds=[0], epochs=2)
    models = {}
    for name, workers, stop in [("w0", 0, None), ("w1", 1, None), ("w1-resumed", 1, 1)]:
        out = tmp_path / name
        manifest = prepared_run(tiny_data, out, cfg)
        assert run_training(cfg, out, manifest, tiny_data, torch.device("cpu"), workers, stop_after_epoch=stop) == 0
        if stop:
            assert run_training(cfg, out, manifest, tiny_data, torch.device("cpu"), workers, resume=True) == 0
        models[name] = out / "fold0" / "model.pt"
    assert state_dicts_equal(models["w0"], models["w1"])
    assert state_dicts_equal(models["w1"], models["w1-resumed"])
