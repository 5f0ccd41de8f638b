"""Every child process bmteach starts, in one place: the app's data-generation child, a launched training run,
and the one-fold-per-GPU children of `train --parallel-folds`. Argument lists only, never a shell; children
run the checkout's own package (PYTHONPATH) with this interpreter. (Joining a torchrun process group is not
launching: it stays in train.init_distributed.)"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

from bmteach.storage import REPO_ROOT


def child_env(**extra: str) -> dict[str, str]:
    """This process's environment, with the checkout on PYTHONPATH so `-m bmteach` finds this very package."""
    path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    return dict(os.environ, PYTHONPATH=path, **extra)


def bmteach_command(*args: str) -> list[str]:
    """`python -m bmteach ARGS...` with this interpreter."""
    return [sys.executable, "-m", "bmteach", *args]


def start_detached(cmd: list[str], log_path: str | Path, env: dict | None = None) -> subprocess.Popen:
    """A long job (training) in its own session and process group, so it outlives a browser refresh or the app
    and can be stopped as a group; stdout and stderr are appended to log_path."""
    with open(log_path, "ab") as log:
        return subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=env or child_env())


def start_children(cmds_and_envs: list[tuple[list[str], dict]]) -> int:
    """Run several children at once (one per GPU) and wait for all; the worst exit status. If this process is
    interrupted, the children are terminated too."""
    procs = [subprocess.Popen(cmd, env=env) for cmd, env in cmds_and_envs]
    try:
        return max(p.wait() for p in procs)
    except BaseException:
        for p in procs:
            p.terminate()  # SIGTERM: each child finishes its step and writes last.pt (train._stop_on_sigterm)
        for p in procs:
            p.wait()       # before this process releases the run lock (a stuck child: the group's SIGKILL)
        raise


# Run in a child Python: synth's worker pool uses "spawn", which re-runs the parent's __main__ in every worker,
# and inside Streamlit __main__ is the page script itself (each worker would start the app again).
GENERATE_DEFAULT = "from bmteach.launch import generate_in_child\ngenerate_in_child()\n"


def generate_in_child() -> None:
    """The child's side: draw the default data set, one 'done total' line per progress step on stdout."""
    import sys

    from bmteach.synth import ensure_default_dataset

    def report(done: int, total: int) -> None:
        sys.stdout.write(f"{done} {total}\n")
        sys.stdout.flush()

    ensure_default_dataset(progress=report)


def progress_line(line: str) -> tuple[int, int] | None:
    """'done total' -> (done, total); anything else (a warning, a traceback line) -> None."""
    parts = line.split()
    if len(parts) == 2 and all(p.isdigit() for p in parts):
        return int(parts[0]), int(parts[1])
    return None


def generate_default_data(progress: Callable[[int, int], None]) -> str | None:
    """synth.ensure_default_dataset in a child process, its progress relayed; an error sentence or None.

    stderr is merged into stdout and read line by line, so neither pipe can fill up and block the child."""
    child = subprocess.Popen([sys.executable, "-c", GENERATE_DEFAULT], cwd=REPO_ROOT, env=child_env(), text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    other: list[str] = []
    for line in child.stdout:
        done_total = progress_line(line)
        if done_total:
            progress(*done_total)
        elif line.strip():
            other = (other + [line.strip()])[-20:]
    if child.wait() != 0:
        last = other[-1] if other else f"exit status {child.returncode}"
        return f"The built-in synthetic data set could not be generated ({last})."
    return None



# --- the app's one shared generation of the default data set ---------------------------------------------------

class SharedGeneration:
    """One generation of the default data set per server process, shared by every session: a background thread
    runs it and records its progress here; each session polls the same object and shows the same bar, with the
    measured rate and the time left (no fixed promise: a loaded laptop may take minutes)."""

    def __init__(self, generate: Callable[[Callable[[int, int], None]], str | None]):
        self.done, self.total = 0, 0
        self.started = time.monotonic()
        self.first_report: tuple[float, int] | None = None  # (time, done) of the first progress line
        self.error: str | None = None
        self._finished = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(generate,), daemon=True,
                                        name="bmteach-default-data")
        self._thread.start()

    def _run(self, generate) -> None:
        try:
            self.error = generate(self._report)
        except Exception as exc:  # a thread's exception reaches no page: keep it as the sentence they show
            self.error = f"The built-in synthetic data set could not be generated ({exc})."
        finally:
            self._finished.set()

    def _report(self, done: int, total: int) -> None:
        if self.first_report is None:
            self.first_report = (time.monotonic(), done)
        self.done, self.total = int(done), int(total)

    @property
    def finished(self) -> bool:
        return self._finished.is_set()

    def wait(self, timeout: float) -> bool:
        """Block up to timeout seconds; True once the generation has finished (well or not)."""
        return self._finished.wait(timeout)

    @property
    def fraction(self) -> float:
        return min(1.0, self.done / self.total) if self.total else 0.0

    def rate(self) -> float | None:
        """Images per second since the first progress line (the child's start-up is not counted), or None."""
        if self.first_report is None:
            return None
        t0, d0 = self.first_report
        elapsed = time.monotonic() - t0
        return (self.done - d0) / elapsed if elapsed > 0.5 and self.done > d0 else None

    def sentence(self) -> str:
        """What the bar says: images drawn of how many, the measured rate and the time left."""
        if self.total == 0:
            return f"Starting the generator ({time.monotonic() - self.started:.0f} s)..."
        rate = self.rate()
        text = f"Drawing synthetic cells: {self.done:,} of {self.total:,}"
        if rate:
            left = (self.total - self.done) / rate
            text += f" ({rate:.0f} per second, about {_duration(left)} left)"
        return text + "."


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


_GENERATIONS: dict[str, SharedGeneration] = {}
_GENERATIONS_LOCK = threading.Lock()


def shared_generation(key: str, generate: Callable[[Callable[[int, int], None]], str | None]
                      ) -> SharedGeneration:
    """The running generation for key (the default data folder), or a new one when none runs: a whole class
    opening the app at once starts one generation, and every session watches that one."""
    with _GENERATIONS_LOCK:
        job = _GENERATIONS.get(key)
        if job is None or job.finished:
            job = _GENERATIONS[key] = SharedGeneration(generate)
        return job
