"""Stopping training: after the current step, with last.pt written, resumable bit for bit; SIGTERM from the app;
SIGKILL only as the fallback; the heartbeat and the final state written by the training process."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import (
    TINY,
    make_tiny_dataset,
    prepared_run,
    state_dicts_equal,
    tiny_config,
    train_in_child,
)

from bmteach import runs
from bmteach.cli import main
from bmteach.train import run_training


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return make_tiny_dataset(tmp_path_factory.mktemp("tiny") / "data")


def train_cli(data: Path, out: Path, *extra: str) -> int:
    return main(["train", "--data", str(data), "--out", str(out), *TINY, *extra])


def stop_on_call(n: int):
    """A stand-in for runs.stop_requested that says 'stop' from its n-th call on."""
    calls = {"n": 0}

    def asked() -> bool:
        calls["n"] += 1
        return calls["n"] >= n
    return asked


def test_a_stop_mid_epoch_resumes_bit_identical(tiny_data, tmp_path, monkeypatch):
    cfg = tiny_config(tiny_data)  # 2 folds, 3 epochs of 3 steps
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    manifest = prepared_run(tiny_data, whole, cfg)
    assert run_training(cfg, whole, manifest, tiny_data, torch.device("cpu"), workers=0) == 0
    prepared_run(tiny_data, parts, cfg)
    # calls: fold start, epoch 1 steps 1-2, epoch 1's end, epoch 2 step 1 -> stop there, mid-epoch
    monkeypatch.setattr(runs, "stop_requested", stop_on_call(5))
    assert run_training(cfg, parts, manifest, tiny_data, torch.device("cpu"), workers=0) == 0
    blob = torch.load(parts / "fold0" / runs.LAST, weights_only=True)
    assert (blob["epoch"], blob["step"]) == (1, 1) and blob["epoch_sums"][2] == 8
    assert not (parts / "fold1").exists()
    assert json.loads((parts / "fold0" / runs.PROGRESS).read_text().splitlines()[-1])["phase"] == "stopped"
    monkeypatch.setattr(runs, "stop_requested", lambda: False)
    assert run_training(cfg, parts, manifest, tiny_data, torch.device("cpu"), workers=0, resume=True) == 0
    for k in (0, 1):
        assert state_dicts_equal(whole / f"fold{k}" / runs.MODEL, parts / f"fold{k}" / runs.MODEL)
        assert (whole / f"fold{k}" / runs.OOF).read_text() == (parts / f"fold{k}" / runs.OOF).read_text()
        meta_whole = json.loads((whole / f"fold{k}" / runs.META).read_text())
        assert meta_whole == json.loads((parts / f"fold{k}" / runs.META).read_text())  # same epoch losses too


def test_a_stop_at_an_epochs_end_resumes_bit_identical(tiny_data, tmp_path, monkeypatch):
    cfg = tiny_config(tiny_data, folds=[0])
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    manifest = prepared_run(tiny_data, whole, cfg)
    run_training(cfg, whole, manifest, tiny_data, torch.device("cpu"), workers=0)
    prepared_run(tiny_data, parts, cfg)
    monkeypatch.setattr(runs, "stop_requested", stop_on_call(4))   # asked during epoch 1's last step
    run_training(cfg, parts, manifest, tiny_data, torch.device("cpu"), workers=0)
    blob = torch.load(parts / "fold0" / runs.LAST, weights_only=True)
    assert (blob["epoch"], blob["step"]) == (1, 0)
    monkeypatch.setattr(runs, "stop_requested", lambda: False)
    run_training(cfg, parts, manifest, tiny_data, torch.device("cpu"), workers=0, resume=True)
    assert state_dicts_equal(whole / "fold0" / runs.MODEL, parts / "fold0" / runs.MODEL)


def wait_for(predicate, timeout: float = 120.0, proc=None) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            return
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def test_sigterm_stops_after_a_step_and_the_run_resumes_to_the_same_model(tiny_data, tmp_path, monkeypatch):
    args = ["--num-folds", "2", "--folds", "0", "--epochs", "6", "--per-class", "40"]
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    assert train_in_child(tiny_data, whole, *args) == 0
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    proc = runs.launch_training(stopped, data=tiny_data, folds=[0], epochs=6, per_class=40, image_size=32,
                                extra=("--num-folds", "2", "--batch-size", "8", "--lr", "0.003"))
    try:
        wait_for(lambda: (stopped / "fold0" / runs.PROGRESS).exists(), proc=proc)
        assert proc.poll() is None, runs.read_log(stopped)
        assert runs.run_state(stopped).state == "running"
        beat = json.loads((stopped / runs.HEARTBEAT).read_text())
        assert beat["pid"] == proc.pid and beat["fold"] == 0 and beat["device"] == "cpu"
        assert runs.stop_training(stopped, timeout=60) is True
        assert proc.wait(timeout=60) == 0                      # it exited by itself, cleanly
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    state = runs.run_state(stopped)
    assert state.state == "stopped" and state.resumable, (state, runs.read_log(stopped))
    assert json.loads((stopped / runs.HEARTBEAT).read_text())["outcome"] == "stopped"
    assert (stopped / "fold0" / runs.LAST).is_file() and not (stopped / runs.LOCK).exists()
    assert [s.state for s in runs.open_run(stopped).status()] == ["stopped", "pending"]
    assert train_in_child(tiny_data, stopped, "--resume") == 0
    assert state_dicts_equal(whole / "fold0" / runs.MODEL, stopped / "fold0" / runs.MODEL)


def test_a_process_that_ignores_the_stop_is_killed_after_the_timeout(tmp_path):
    """The fallback: a stand-in 'training' process that ignores SIGTERM, holding the lock in its own group."""
    run = tmp_path / "run"
    repo = str(Path(runs.__file__).parent.parent)
    code = (f"import signal, time, sys\nsys.path.insert(0, {repo!r})\nfrom bmteach import runs\n"
            f"signal.signal(signal.SIGTERM, signal.SIG_IGN)\nlock = runs.RunLock({str(run)!r}).acquire()\n"
            "print('locked', flush=True)\ntime.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, start_new_session=True, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        started = time.time()
        assert runs.stop_training(run, timeout=1.0) is True
        assert proc.wait(timeout=30) == -signal.SIGKILL and time.time() - started < 20
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    state = runs.run_state(run)
    assert state.state == "crashed" and state.resumable       # killed: the heartbeat never said it ended
    assert os.path.exists(run / runs.STOP_REQUEST)
