"""AppTest of the Training page with real training processes on a tiny data set (4 colour classes, 32 px, CPU).

Launch -> finished with results; a second launch is queued and runs after the first; a restarted app (a fresh
AppTest) sees the running and the finished runs; stop -> resume; SIGKILL -> crashed -> resume; nothing without
the instructor secret. Waits poll the run folder with generous limits (they only catch hangs).
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from helpers import make_tiny_dataset
from streamlit.testing.v1 import AppTest

from bmteach import jobs, runs, settings
from bmteach.storage import REPO_ROOT

PAGE = str(REPO_ROOT / "pages" / "6_Training.py")
SECRET = "train them"
HANG_S = 240


@pytest.fixture
def env(fresh_home, monkeypatch):
    data = make_tiny_dataset(fresh_home / "tinycells", per_class=12)
    monkeypatch.setenv(settings.DATA_ENV, str(data))
    monkeypatch.delenv(settings.RUN_ENV, raising=False)
    monkeypatch.setenv(settings.SECRET_ENV, SECRET)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")        # training children: one thread each, like the tests
    monkeypatch.setenv(jobs.STOP_TIMEOUT_ENV, "60")
    yield fresh_home
    # leave no process behind: the queue first (so nothing new starts), then the supervisor, then training
    for job in jobs.jobs():
        job.path.unlink(missing_ok=True)
    pid = jobs.supervisor_pid()
    if pid:
        os.kill(pid, signal.SIGKILL)
    for run in (fresh_home / "runs").glob("*"):
        owner = runs.lock_owner(run)
        if owner:
            runs.kill_process_group(owner)


def open_page(secret: str | None = SECRET) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=90)
    at.run()
    if secret is not None:
        at.text_input(key="training_secret").input(secret).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def launch(at: AppTest, name: str, epochs: int = 1, per_class: int = 8, folds: int = 2) -> Path:
    """Fill the custom form and press Launch."""
    data_label = next(o for o in at.selectbox(key="train_data_custom").options if "tinycells" in o)
    at.selectbox(key="train_data_custom").set_value(data_label)
    at.selectbox(key="train_model_custom").set_value("sequential")
    at.text_input(key="train_name_custom").input(name)
    at.number_input(key="train_folds_custom").set_value(folds)
    at.number_input(key="train_epochs_custom").set_value(epochs)
    at.number_input(key="train_per_class_custom").set_value(per_class)
    at.number_input(key="train_size_custom").set_value(32)
    at.selectbox(key="train_device_custom").set_value("cpu")
    at.button(key="train_launch").click().run()
    assert not at.exception, [e.value for e in at.exception]
    return runs.runs_dir() / name


def wait_state(run: Path, *states: str, timeout: float = HANG_S, also=None) -> runs.RunState:
    deadline = time.time() + timeout
    while True:
        state = runs.run_state(run)
        if state.state in states and (also is None or also()):
            return state
        assert time.time() < deadline, f"{run.name} stuck in {state}: {runs.read_log(run)}"
        time.sleep(0.2)


def show(at: AppTest, run: Path) -> str:
    at.selectbox(key="train_run").set_value(str(run)).run()
    assert not at.exception, [e.value for e in at.exception]
    return texts(at)


def texts(at: AppTest) -> str:
    parts = [e.value for kind in ("markdown", "caption", "info", "error", "warning", "success", "header",
                                  "subheader", "title", "code") for e in getattr(at, kind)]
    return "\n".join(str(p) for p in parts)


def badge(at: AppTest) -> str:
    found = [m.value for m in at.markdown if "-badge[" in m.value]
    return found[-1].split("[", 1)[1].rstrip("]") if found else ""


def training_started(run: Path) -> bool:
    return any((run / f"fold{k}" / runs.PROGRESS).exists() for k in range(5))


# --- the tests -----------------------------------------------------------------------------------------------

def test_everything_is_refused_without_the_secret(env, monkeypatch):
    at = open_page(secret=None)
    assert not [b for b in at.button if b.key == "train_launch"] and not at.selectbox
    at.text_input(key="training_secret").input("wrong").run()
    assert "not the instructor secret" in texts(at) and not [b for b in at.button if b.key == "train_launch"]
    monkeypatch.delenv(settings.SECRET_ENV)
    at = AppTest.from_file(PAGE, default_timeout=90)
    at.run()
    assert settings.SECRET_ENV in texts(at) and not at.text_input


def test_a_tiny_run_launched_from_the_page_finishes_and_shows_its_results(env):
    at = open_page()
    assert "Projected duration" in texts(at) and "GPUs found" in texts(at)
    run = launch(at, "tiny")
    wait_state(run, "finished", also=lambda: (run / runs.METRICS).is_file() and not runs.lock_owner(run))
    at.run()
    text = show(at, run)
    assert badge(at) == "finished" and "Results" in text and "Table 1" in text
    table = next(df.value for df in at.dataframe if "strict recall" in df.value.columns)
    assert {"paper strict recall", "tolerant precision"} <= set(table.columns) and len(table) == 21
    assert any("code version" in str(j.value) and "split file" in str(j.value) for j in at.json)   # provenance
    launched = runs.read_config(run)
    assert launched["num_folds"] == 2 and launched["epochs"] == 1 and launched["image_size"] == 32
    at.button(key="train_make_active").click().run()
    assert settings.active_run_dir().path == run.resolve() and "every page now uses this run" in texts(at)
    at.run()
    assert "active model of every page" in texts(at)


def test_queue_restart_stop_resume_and_a_killed_run(env):
    at = open_page()
    slow = launch(at, "slow", epochs=6, per_class=300)      # long enough to be caught running
    quick = launch(at, "quick")
    assert "queued" in texts(at)
    wait_state(slow, "running", also=lambda: training_started(slow))
    assert runs.run_state(quick).state == "queued"

    # a restarted app (a fresh AppTest, no session state) sees the running and the queued run
    fresh = open_page()
    show(fresh, slow)
    assert badge(fresh) == "running"
    show(fresh, quick)
    assert badge(fresh) == "queued"

    # stop from the page: the run saves its step and ends; the queued run then starts and finishes
    show(fresh, slow)
    fresh.button(key="train_stop").click().run()
    state = wait_state(slow, "stopped")
    assert state.resumable and (slow / "fold0" / runs.LAST).is_file()
    wait_state(quick, "finished", also=lambda: not runs.lock_owner(quick))
    quick_began = runs.read_heartbeat(quick)["started"]
    assert quick_began >= runs.read_heartbeat(slow)["ended"] - 0.5     # after the first one ended
    at = open_page()
    show(at, quick)
    assert badge(at) == "finished"

    # resume from the page, then kill it hard: crashed, with its error, and resumable
    show(at, slow)
    assert badge(at) == "stopped"
    at.button(key="train_resume").click().run()
    wait_state(slow, "running", also=lambda: runs.lock_owner(slow) is not None)
    runs.kill_process_group(runs.lock_owner(slow))
    state = wait_state(slow, "crashed")
    assert "SIGKILL" in (state.error or "") or "disappeared" in (state.error or ""), state
    at.run()
    show(at, slow)
    assert badge(at) == "crashed" and "Crashed:" in texts(at)

    # and resumed again, it completes
    at.button(key="train_resume").click().run()
    wait_state(slow, "finished", also=lambda: (slow / runs.METRICS).is_file() and not runs.lock_owner(slow))
    at.run()
    show(at, slow)
    assert badge(at) == "finished"
