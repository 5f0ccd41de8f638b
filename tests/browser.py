"""What every browser test shares: Debian's Chromium driven by Playwright, and `streamlit run app.py` started on
127.0.0.1 as a user starts it. Import this module after `pytest.importorskip("playwright.sync_api")`; a test
module calls `require_browser()` at import to skip cleanly where Chromium or Playwright is missing."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

from bmteach.storage import REPO_ROOT

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Headless, sandbox-free (root), and no background connections: this machine's network is closed.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def require_browser():
    """The playwright module, or a module-level skip naming what is missing (.ci/run installs both)."""
    module = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    if not Path(CHROMIUM).exists():
        pytest.skip("Chromium is not installed (apt-get install chromium)", allow_module_level=True)
    return module


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_health(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Poll Streamlit's health endpoint until it answers (a generous limit: it only catches a hang)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited early (exit status {proc.returncode}); see its log")
        try:
            with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError("streamlit did not become healthy in time")


@contextmanager
def streamlit_server(env_overrides: dict[str, str], log_dir: Path, unset: tuple[str, ...] = ()):
    """`streamlit run app.py` on a free loopback port with these environment variables (no instructor secret
    unless given; `unset` removes more); yields its URL. Output goes to log_dir/streamlit.log, never a pipe
    nobody reads. The server runs in its own process group, stopped whole: children it started (the data
    generation) go with it."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name in ("BMTEACH_INSTRUCTOR_SECRET", *unset):
        env.pop(name, None)
    env.update(env_overrides)
    port = free_port()
    with open(Path(log_dir) / "streamlit.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
             "--server.address", "127.0.0.1", "--server.headless", "true", "--server.fileWatcherType", "none"],
            cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_for_health(url, proc)
            yield url
        finally:
            _stop_group(proc)


def _stop_group(proc: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=10)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def wait_until_idle(page, timeout_ms: int = 60_000) -> None:
    """Wait until Streamlit has finished running the script (its 'Running...' status widget is gone)."""
    page.wait_for_function("() => !document.querySelector('[data-testid=stStatusWidget]')", timeout=timeout_ms)


@contextmanager
def chromium_context(profile_dir: Path, args: list[str] = CHROMIUM_ARGS, timeout_ms: float | None = None):
    """A headless Chromium browser context with its own fresh profile, 1400 x 1600 (whole pages on screen)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(str(profile_dir), executable_path=CHROMIUM, args=args,
                                                       headless=True, viewport={"width": 1400, "height": 1600})
        if timeout_ms is not None:
            context.set_default_timeout(timeout_ms)
        try:
            yield context
        finally:
            context.close()
