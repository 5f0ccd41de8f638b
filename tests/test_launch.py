"""launch.py: the app's data-generation child cannot deadlock on a full pipe; progress lines are relayed."""
from __future__ import annotations

import time

from bmteach import launch


def test_a_child_flooding_stderr_does_not_block_and_progress_is_relayed(monkeypatch):
    # 1 MB on stderr before any progress: with stdout read to EOF first and stderr piped separately, the child
    # would block on a full stderr pipe while the parent waits on stdout, forever.
    code = ("import sys\nsys.stderr.write('warning line\\n' * 80000)\nsys.stderr.flush()\n"
            "print(1, 2, flush=True)\nprint(2, 2, flush=True)\n")
    monkeypatch.setattr(launch, "GENERATE_DEFAULT", code)
    seen = []
    assert launch.generate_default_data(lambda done, total: seen.append((done, total))) is None
    assert seen == [(1, 2), (2, 2)]


def test_a_failing_child_is_one_sentence_with_its_last_line(monkeypatch):
    monkeypatch.setattr(launch, "GENERATE_DEFAULT", "raise SystemExit('disk full')\n")
    message = launch.generate_default_data(lambda *_: None)
    assert message == "The built-in synthetic data set could not be generated (disk full)."


def test_progress_lines_are_two_numbers():
    assert launch.progress_line("3 10\n") == (3, 10)
    assert launch.progress_line("note: 3 10") is None and launch.progress_line("") is None



def test_one_shared_generation_reports_progress_rate_and_time_left_to_every_watcher(monkeypatch):
    """Issue 13.3: sessions that open during the generation watch the same one (no second start, no lock)."""
    import threading

    from bmteach import launch

    starts, release = [], threading.Event()

    def generate(progress):
        starts.append(1)
        progress(0, 100)
        time.sleep(0.7)
        progress(40, 100)
        release.wait(10)
        return None

    first = launch.shared_generation("key-a", generate)
    assert first.sentence().startswith(("Starting the generator", "Drawing synthetic cells"))
    time.sleep(1.0)
    second = launch.shared_generation("key-a", generate)
    assert second is first and starts == [1]
    assert first.fraction == 0.4 and not first.finished
    text = first.sentence()
    assert text.startswith("Drawing synthetic cells: 40 of 100 (") and "per second, about" in text and "left" in text
    assert "about a minute" not in text
    release.set()
    assert first.wait(5) and first.error is None
    third = launch.shared_generation("key-a", generate)  # a finished one is not reused
    assert third is not first
    assert third.wait(5) and len(starts) == 2


def test_a_shared_generation_that_raises_is_one_sentence():
    from bmteach import launch

    def generate(progress):
        raise OSError("No space left on device")

    job = launch.shared_generation("key-b", generate)
    assert job.wait(5)
    assert job.error == "The built-in synthetic data set could not be generated (No space left on device)."
