"""Shared test fixtures. Tests run on 2 CPU cores: keep torch to one thread per process."""
from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
REAL_SAMPLE = REPO.parent / "shared" / "realdata" / "BM_cytomorphology_sample"

try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # pragma: no cover - torch is in requirements.txt
    pass


# The whole session writes runtime state into one temporary BMTEACH_HOME, never into the checkout. Tests that
# need a pristine home of their own use the `fresh_home` fixture.
os.environ["BMTEACH_HOME"] = tempfile.mkdtemp(prefix="bmteach-test-home-")


@pytest.fixture
def fresh_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("BMTEACH_HOME", str(home))
    return home


@pytest.fixture
def env(tiny, monkeypatch, fresh_home):
    """The app pointed at the test module's `tiny` fixture (its first two items: the data folder and the run
    folder), with a fresh home and no instructor secret. Returns `tiny`."""
    from bmteach import settings

    data, run = tiny[:2]
    monkeypatch.setenv(settings.DATA_ENV, str(data))
    monkeypatch.setenv(settings.RUN_ENV, str(run))
    monkeypatch.delenv(settings.SECRET_ENV, raising=False)
    return tiny


@pytest.fixture
def real_sample() -> Path:
    """The 420 real cells in ../shared/realdata; the test is skipped when they are absent."""
    if not REAL_SAMPLE.is_dir():
        pytest.skip("../shared/realdata is not present")
    return REAL_SAMPLE


@pytest.fixture(scope="session")
def postgres_url():
    """A real PostgreSQL server for this test session (tests/postgres_server.py); skipped, with the reason,
    only when the server cannot start on this machine."""
    from postgres_server import PostgresServer

    server = PostgresServer()
    try:
        url = server.start()
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        server.stop()
        pytest.skip(f"PostgreSQL cannot start here: {exc}")
    yield url
    server.stop()


@pytest.fixture(scope="session")
def default_data() -> Path:
    """The built-in synthetic data set, generated once per test session into the session's BMTEACH_HOME (about a
    minute on 2 cores); tests that need the real defaults share it."""
    from bmteach.launch import generate_default_data
    from bmteach.storage import default_data_dir

    # In a child process, as the app does: synth's spawn pool re-runs __main__, which after an AppTest run in
    # this process is a page script.
    error = generate_default_data(lambda done, total: None)
    assert error is None, error
    return default_data_dir()
