"""launch.py: the app's data-generation child cannot deadlock on a full pipe; progress lines are relayed."""
from __future__ import annotations

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
