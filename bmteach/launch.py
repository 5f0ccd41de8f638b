"""Every child process bmteach starts, in one place: the app's data-generation child, a launched training run,
and the one-fold-per-GPU children of `train --parallel-folds`. Argument lists only, never a shell; children
run the checkout's own package (PYTHONPATH) with this interpreter. (Joining a torchrun process group is not
launching: it stays in train.init_distributed.)"""
from __future__ import annotations

import os
import subprocess
import sys
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
            p.terminate()
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
