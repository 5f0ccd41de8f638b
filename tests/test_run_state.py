"""Run state from the run folder alone (hand-made folders), the run lock under a race, file modes, the queue.

The states: running (a live lock owner with a fresh heartbeat), queued, finished, stopped (resumable, on
request or partial), crashed (the process went without finishing, or its heartbeat stopped).
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bmteach import jobs, runs
from bmteach.errors import UserError
from bmteach.storage import atomic_write_bytes, atomic_write_json

# --- hand-made run folders ---------------------------------------------------------------------------------

def make_run(path: Path, num_folds: int = 2, complete: tuple[int, ...] = (), partial: tuple[int, ...] = ()) -> Path:
    """A run folder by hand: config, and folds complete (meta/model/oof) or partial (progress + last.pt)."""
    path.mkdir(parents=True)
    (path / runs.CONFIG).write_text(json.dumps({"num_folds": num_folds, "epochs": 2, "classes": ["BLA", "LYT"]}))
    for k in complete:
        d = runs.fold_dir(path, k)
        d.mkdir()
        (d / runs.META).write_text(json.dumps({"complete": True, "metrics": {"accuracy": 0.5}}))
        (d / runs.MODEL).write_bytes(b"weights")
        (d / runs.OOF).write_text("path,true,pred,fold\n")
    for k in partial:
        d = runs.fold_dir(path, k)
        d.mkdir()
        (d / runs.PROGRESS).write_text(json.dumps({"fold": k, "epoch": 1, "step": 3, "steps_per_epoch": 5}) + "\n")
        (d / runs.LAST).write_bytes(b"state")
    return path


def start_of(pid: int) -> int:
    """The process's start time; for a dead one an impossible value, so a recycled PID never matches it."""
    return runs.process_start(pid) or 1


def beat(path: Path, pid: int, age: float = 0.0, **extra) -> None:
    record = {"pid": pid, "host": runs.HOST, "start": start_of(pid), "started": time.time() - age - 5,
              "time": time.time() - age, **extra}
    (path / runs.HEARTBEAT).write_text(json.dumps(record))


def lock(path: Path, pid: int, age: float = 0.0) -> None:
    (path / runs.LOCK).write_text(json.dumps({"pid": pid, "host": runs.HOST, "start": start_of(pid),
                                              "time": time.time() - age}))


@pytest.fixture
def sleeper():
    """A live process that is not us (a stand-in training process)."""
    proc = subprocess.Popen(["sleep", "60"])
    yield proc
    proc.kill()
    proc.wait()


@pytest.fixture
def dead_pid():
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_running_needs_a_live_owner_and_a_fresh_heartbeat(tmp_path, sleeper):
    run = make_run(tmp_path / "r", partial=(0,))
    lock(run, sleeper.pid)
    beat(run, sleeper.pid, age=1)
    state = runs.run_state(run)
    assert state.state == "running" and state.pid == sleeper.pid and state.heartbeat_age < 5
    assert not state.resumable and state.active
    statuses = runs.open_run(run).status()
    assert [s.state for s in statuses] == ["running", "pending"]


def test_a_heartbeat_that_stops_is_crashed_even_with_the_process_there(tmp_path, sleeper):
    run = make_run(tmp_path / "r", partial=(0,))
    lock(run, sleeper.pid, age=200)
    beat(run, sleeper.pid, age=120)          # the writer hangs (or was suspended)
    state = runs.run_state(run)
    assert state.state == "crashed" and "heartbeat" in state.error and str(sleeper.pid) in state.error
    # the same folder an instant earlier was running: only the heartbeat's age decides
    assert runs.run_state(run, now=time.time() - 119).state == "running"


def test_a_dead_writer_is_crashed_with_the_logs_last_error(tmp_path, dead_pid):
    run = make_run(tmp_path / "r", partial=(0,))
    lock(run, dead_pid)                       # the stale lock a SIGKILL leaves behind
    beat(run, dead_pid, age=1)                # fresh, but its process is gone
    (run / runs.LOG).write_text("old attempt\nerror: an older failure\n[bmteach start] train ...\n"
                                "fold 0: 40%\nRuntimeError: CUDA out of memory\n")
    state = runs.run_state(run)
    assert state.state == "crashed" and state.error == "RuntimeError: CUDA out of memory" and state.resumable
    assert [s.state for s in runs.open_run(run).status()] == ["crashed", "pending"]


def test_a_crash_without_a_log_still_says_what_happened(tmp_path, dead_pid):
    run = make_run(tmp_path / "r", partial=(1,))
    beat(run, dead_pid, age=500)
    state = runs.run_state(run)
    assert state.state == "crashed" and "disappeared" in state.error


def test_finished_when_every_fold_is_complete(tmp_path, dead_pid):
    run = make_run(tmp_path / "r", complete=(0, 1))
    beat(run, dead_pid, age=3, ended=time.time(), outcome="exited")
    assert runs.run_state(run).state == "finished"
    assert [s.state for s in runs.open_run(run).status()] == ["complete", "complete"]
    # a run from before heartbeats (the shipped demo) is finished too
    (run / runs.HEARTBEAT).unlink()
    assert runs.run_state(run).state == "finished"


def test_stopped_on_request_and_partial_runs_are_resumable(tmp_path, dead_pid):
    run = make_run(tmp_path / "r", complete=(0,), partial=(1,))
    beat(run, dead_pid, ended=time.time(), outcome="stopped")
    state = runs.run_state(run)
    assert state.state == "stopped" and "request" in state.detail and state.resumable
    assert [s.state for s in runs.open_run(run).status()] == ["complete", "stopped"]
    beat(run, dead_pid, ended=time.time(), outcome="exited")          # `train --folds 0` only
    assert runs.run_state(run).state == "stopped"
    beat(run, dead_pid, ended=time.time(), outcome="error", error="Fold 1 has no images in the manifest.")
    state = runs.run_state(run)
    assert state.state == "crashed" and state.error == "Fold 1 has no images in the manifest."


def test_queued_runs_wait_in_line(tmp_path, monkeypatch):
    monkeypatch.setattr(jobs, "ensure_supervisor", lambda: False)   # nothing starts: just the queue files
    first, second = tmp_path / "first", tmp_path / "second"
    cmd = runs.train_command(first, "default")
    jobs.submit(first, cmd)
    jobs.submit(second, runs.train_command(second, "default"))
    try:
        assert runs.run_state(first).state == "queued" and runs.run_state(first).queue_position == 1
        assert runs.run_state(second).queue_position == 2
        with pytest.raises(UserError, match="already queued"):
            jobs.submit(first, cmd)
        with pytest.raises(UserError, match="Only"):
            jobs.submit(tmp_path / "x", ["/bin/sh", "-c", "echo hi", "x", "y"])
        assert runs.stop_training(first) is True                      # a waiting job is taken off the queue
        assert runs.run_state(second).queue_position == 1
        assert runs.run_state(first).state != "queued"
    finally:
        for job in jobs.jobs():
            job.path.unlink()


def test_last_error_reads_only_the_latest_attempt():
    log = "error: first try failed\n[bmteach 2026] [bmteach start] train\nfold 0 ...\n"
    assert runs.last_error(log) is None
    assert runs.last_error(log + "[bmteach 2026-11-28 07:00:00] training process 12 ended: exit status 130\n") is None
    log += "[bmteach 2026-11-28 07:00:00] training process 12 ended: killed by SIGKILL\n"
    assert runs.last_error(log) == "training process 12 ended: killed by SIGKILL"


# --- the lock -------------------------------------------------------------------------------------------------

def _take(run_dir: str, start, done, results) -> None:
    start.wait()
    try:
        lock = runs.RunLock(run_dir, heartbeat=False).acquire()
    except UserError:
        results.put("refused")
        return
    results.put("won" if lock.held else "refused")
    done.wait(60)  # a winner holds the lock (stays alive) until every taker has tried


@pytest.mark.parametrize("stale", [False, True], ids=["fresh", "stale-lock-takeover"])
def test_exactly_one_of_many_concurrent_takers_gets_the_lock(tmp_path, stale, dead_pid):
    run = tmp_path / "run"
    run.mkdir()
    if stale:
        lock(run, dead_pid)  # every taker sees a dead owner and tries to take it over at once
    ctx = mp.get_context("fork")
    start, done, results = ctx.Event(), ctx.Event(), ctx.Queue()
    takers = [ctx.Process(target=_take, args=(str(run), start, done, results)) for _ in range(60)]
    for p in takers:
        p.start()
    start.set()
    outcomes = [results.get(timeout=60) for _ in takers]
    done.set()
    for p in takers:
        p.join(timeout=30)
    assert outcomes.count("won") == 1, outcomes
    assert outcomes.count("refused") == len(takers) - 1


def test_lock_release_writes_how_the_process_ended(tmp_path):
    run = tmp_path / "run"
    with runs.RunLock(run) as held:
        assert held.held and runs.lock_owner(run) == os.getpid()
        record = json.loads((run / runs.HEARTBEAT).read_text())
        assert record["pid"] == os.getpid() and "ended" not in record
    record = json.loads((run / runs.HEARTBEAT).read_text())
    assert record["outcome"] == "exited" and not (run / runs.LOCK).exists()
    with pytest.raises(UserError), runs.RunLock(run):
        raise UserError("Fold 3 is odd.")
    assert json.loads((run / runs.HEARTBEAT).read_text())["error"] == "Fold 3 is odd."


def test_a_recycled_pid_does_not_hold_a_lock(tmp_path, sleeper):
    run = tmp_path / "run"
    run.mkdir()
    (run / runs.LOCK).write_text(json.dumps({"pid": sleeper.pid, "host": runs.HOST, "start": 1}))  # another start
    assert runs.lock_owner(run) is None
    with runs.RunLock(run, heartbeat=False) as held:
        assert held.held


# --- file modes (issue 14 item 7) -------------------------------------------------------------------------------

def test_atomic_writes_use_the_umasks_normal_mode(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "a.bin", b"x")
        atomic_write_json(tmp_path / "b.json", {"a": 1})
        os.umask(0o027)
        atomic_write_bytes(tmp_path / "c.bin", b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.bin").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "b.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "c.bin").stat().st_mode) == 0o640


# --- the supervisor -------------------------------------------------------------------------------------------

def test_the_supervisor_runs_queued_jobs_one_after_another(tmp_path):
    """Two `train` commands that fail fast (a missing data folder): each runs in turn, its end is logged."""
    first, second = tmp_path / "first", tmp_path / "second"
    for run in (first, second):
        jobs.submit(run, runs.train_command(run, data=tmp_path / "missing", epochs=1))
    deadline = time.time() + 120
    while jobs.jobs() and time.time() < deadline:
        time.sleep(0.2)
    assert not jobs.jobs()
    for run in (first, second):
        log = runs.read_log(run)
        assert "Data folder not found" in log and "exit status 2" in log and runs.START_MARK in log
        assert runs.run_state(run).state == "crashed" and "Data folder not found" in runs.run_state(run).error
    # one after the other: the second started once the first had ended
    ended = next(ln for ln in runs.read_log(first).splitlines() if "ended" in ln)[9:28]
    started = next(ln for ln in runs.read_log(second).splitlines() if runs.START_MARK in ln)[9:28]
    assert started >= ended
    deadline = time.time() + 10
    while jobs.supervisor_alive() and time.time() < deadline:   # the supervisor leaves once the queue is empty
        time.sleep(0.1)
    assert not jobs.supervisor_alive()


def test_a_run_whose_queued_process_died_can_be_resubmitted_before_the_supervisor_notices(fresh_home, tmp_path,
                                                                                         monkeypatch):
    """A crashed run's job file may outlive its process by one supervisor poll: resubmitting then is allowed."""
    from dataclasses import asdict

    run_dir = (tmp_path / "run").resolve()
    run_dir.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    train = [sys.executable, "-m", "bmteach", "train"]
    old = jobs.Job(id=f"{time.time_ns():020d}-run", run=str(run_dir), cmd=train, submitted=time.time(), pid=dead.pid)
    atomic_write_json(old.path, asdict(old))
    started = []
    monkeypatch.setattr(jobs, "ensure_supervisor", lambda: started.append(True) or True)
    again = jobs.submit(run_dir, train + ["--resume"])
    assert again.id != old.id and again.waiting and started == [True]
    assert [j.id for j in jobs.jobs()] == [again.id]


def test_a_process_killed_before_its_first_heartbeat_is_crashed_not_stopped(tmp_path):
    """A resumed run killed before it beat once: the lock it took is left behind, the heartbeat is the previous
    (stopped) process's. The run crashed; the old 'stopped' must not speak for it."""
    run = tmp_path / "run"
    run.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    atomic_write_json(run / runs.HEARTBEAT, {"pid": 1, "host": runs.HOST, "time": time.time() - 5,
                                             "ended": time.time() - 5, "outcome": "stopped", "error": None})
    atomic_write_json(run / runs.LOCK, {"pid": dead.pid, "host": runs.HOST, "time": time.time()})
    state = runs.run_state(run)
    assert state.state == "crashed" and f"process {dead.pid} disappeared" in state.error
