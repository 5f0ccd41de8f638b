"""Run folders: the lock that keeps one writer per run, reading a run back, and launching training as a process.

A run folder (docs/formats.md) holds config.json, manifest.csv, fold<k>/ (model.pt, meta.json, last.pt,
progress.jsonl, oof.csv) and, once evaluated, oof.csv, metrics.json, table.csv and confusion.csv. Everything here
only reads files, so the app can watch a run that another process is writing.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bmteach.errors import UserError
from bmteach.storage import REPO_ROOT, atomic_write_json, read_json, runs_dir

LOCK_NAME = ".lock"
LOG_NAME = "train.log"
# A child started by `train --parallel-folds` may write into the run its parent has locked.
PARENT_LOCK_ENV = "BMTEACH_LOCK_PARENT"


# --- the one-writer lock -----------------------------------------------------------------------------------

def pid_alive(pid: int) -> bool:
    """True for a running process (a zombie, killed but not yet reaped, counts as dead)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # Linux: the state letter follows the parenthesised command name
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (OSError, IndexError):
        return True


def lock_owner(run_dir: str | Path) -> int | None:
    """PID of the live process writing this run, or None (no lock, or a stale one)."""
    path = Path(run_dir) / LOCK_NAME
    try:
        pid = int(read_json(path).get("pid", 0))
    except (OSError, ValueError, AttributeError, json.JSONDecodeError):
        return None
    return pid if pid_alive(pid) else None


class RunLock:
    """RUN/.lock holding the owner's PID. A live owner other than us is a clear error; a dead owner's lock is
    taken over. Use as a context manager; released on exit."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.held = False

    def acquire(self) -> "RunLock":
        owner = lock_owner(self.run_dir)
        parent = int(os.environ.get(PARENT_LOCK_ENV) or 0)
        if owner is not None and owner == parent:
            return self  # our parent holds it for us (--parallel-folds); it releases it
        if owner is not None and owner != os.getpid():
            raise UserError(f"{self.run_dir} is being written by another training process (PID {owner}); "
                            "wait for it to finish, stop it, or choose another --out.")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.path, {"pid": os.getpid(), "started": time.time()})
        if lock_owner(self.run_dir) != os.getpid():  # lost a race with another process taking over
            raise UserError(f"{self.run_dir} was just taken by another training process; choose another --out.")
        self.held = True
        return self

    def release(self) -> None:
        if self.held and lock_owner(self.run_dir) == os.getpid():
            self.path.unlink(missing_ok=True)
        self.held = False

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


# --- reading a run -----------------------------------------------------------------------------------------

def fold_checkpoint_dirs(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(k, fold<k>/) for every fold folder holding a model.pt, sorted by k."""
    found = []
    for d in Path(run_dir).glob("fold*"):
        suffix = d.name[len("fold"):]
        if d.is_dir() and suffix.isdigit() and (d / "model.pt").is_file():
            found.append((int(suffix), d))
    return sorted(found)


def fold_is_complete(fold_dir: str | Path) -> bool:
    """A finished fold: meta.json says complete, and model.pt and oof.csv are there."""
    fold_dir = Path(fold_dir)
    try:
        complete = bool(read_json(fold_dir / "meta.json").get("complete"))
    except (OSError, ValueError, AttributeError):
        return False
    return complete and (fold_dir / "model.pt").is_file() and (fold_dir / "oof.csv").is_file()


def read_jsonl(path: str | Path) -> list[dict]:
    """JSON lines, skipping a half-written last line (the writer may be mid-append)."""
    records = []
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
    except FileNotFoundError:
        pass
    return records


@dataclass
class FoldStatus:
    fold: int
    state: str                 # "pending", "running", "stopped" (resumable), "complete"
    epoch: int = 0             # epochs finished (or in progress, for a running fold)
    epochs: int = 0
    progress: dict | None = None   # the latest progress.jsonl record
    metrics: dict | None = None    # meta.json's metrics once complete

    @property
    def fraction(self) -> float:
        """0..1 through this fold's training, for a progress bar."""
        if self.state == "complete":
            return 1.0
        p = self.progress or {}
        steps = p.get("steps_per_epoch") or 0
        if not self.epochs or not steps:
            return 0.0
        return min(1.0, ((p.get("epoch", 1) - 1) + p.get("step", 0) / steps) / self.epochs)


@dataclass
class Run:
    path: Path
    config: dict

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def classes(self) -> list[str]:
        return list(self.config.get("classes") or [])

    @property
    def num_folds(self) -> int:
        return int(self.config.get("num_folds", 5))

    @property
    def fold_dirs(self) -> dict[int, Path]:
        """fold number -> fold<k>/ folder, for every fold of the split (the folder may not exist yet)."""
        return {k: self.path / f"fold{k}" for k in range(self.num_folds)}

    @property
    def manifest(self) -> pd.DataFrame:
        return pd.read_csv(self.path / "manifest.csv", keep_default_na=False)

    def fold_meta(self, fold: int) -> dict | None:
        path = self.fold_dirs[fold] / "meta.json"
        try:
            return read_json(path)
        except (OSError, json.JSONDecodeError):
            return None

    def fold_complete(self, fold: int) -> bool:
        return fold_is_complete(self.fold_dirs[fold])

    def complete_folds(self) -> list[int]:
        return [k for k in self.fold_dirs if self.fold_complete(k)]

    def is_complete(self) -> bool:
        return len(self.complete_folds()) == self.num_folds

    def progress(self, fold: int) -> list[dict]:
        return read_jsonl(self.fold_dirs[fold] / "progress.jsonl")

    def fold_status(self, fold: int) -> FoldStatus:
        epochs = int(self.config.get("epochs", 0))
        if self.fold_complete(fold):
            meta = self.fold_meta(fold) or {}
            return FoldStatus(fold, "complete", epochs, epochs, None, meta.get("metrics"))
        records = self.progress(fold)
        last = records[-1] if records else None
        if last is None and not (self.fold_dirs[fold] / "last.pt").is_file():
            return FoldStatus(fold, "pending", 0, epochs)
        state = "running" if self.running() else "stopped"
        return FoldStatus(fold, state, int((last or {}).get("epoch", 0)), epochs, last)

    def status(self) -> list[FoldStatus]:
        return [self.fold_status(k) for k in self.fold_dirs]

    def running(self) -> bool:
        return lock_owner(self.path) is not None

    def oof(self) -> pd.DataFrame | None:
        """All out-of-fold predictions: run/oof.csv, else the completed folds' files joined (None if none)."""
        path = self.path / "oof.csv"
        if path.is_file():
            return pd.read_csv(path, keep_default_na=False)
        parts = [pd.read_csv(self.fold_dirs[k] / "oof.csv", keep_default_na=False) for k in self.complete_folds()]
        return pd.concat(parts, ignore_index=True) if parts else None

    def metrics(self) -> dict | None:
        try:
            return read_json(self.path / "metrics.json")
        except (OSError, json.JSONDecodeError):
            return None


def open_run(path: str | Path) -> Run:
    """A run folder written by `train`; a clear error when it is not one."""
    path = Path(path).expanduser()
    config_path = path / "config.json"
    if not config_path.is_file():
        raise UserError(f"{path} is not a training run (no config.json); train one with `python -m bmteach train`.")
    try:
        config = read_json(config_path)
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{config_path} is not readable ({exc}).") from None
    return Run(path.resolve(), config)


def list_runs(root: str | Path | None = None) -> list[Run]:
    """Runs directly under `root` (default BMTEACH_HOME/runs), newest first."""
    root = Path(root) if root else runs_dir()
    found = [p for p in root.iterdir() if (p / "config.json").is_file()] if root.is_dir() else []
    return [open_run(p) for p in sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)]


def read_progress(run: Run | str | Path) -> pd.DataFrame:
    """Every progress record of every fold as one table (columns fold, epoch, step, loss, accuracy,
    images_per_s, eta_s, time, ...); empty when nothing has been logged yet."""
    run = run if isinstance(run, Run) else open_run(run)
    rows = [r for k in run.fold_dirs for r in run.progress(k)]
    return pd.DataFrame(rows)


# --- launching and stopping --------------------------------------------------------------------------------

def train_command(out: str | Path, data: str | Path = "default", model: str = "sequential",
                  folds=None, epochs: int = 13, per_class: int | None = None, image_size: int | None = None,
                  device: str = "auto", resume: bool = False, extra: tuple[str, ...] = ()) -> list[str]:
    """The `python -m bmteach train ...` command line for these settings."""
    cmd = [sys.executable, "-m", "bmteach", "train", "--data", str(data), "--model", model,
           "--epochs", str(epochs), "--out", str(out), "--device", device]
    if folds is not None:
        cmd += ["--folds", ",".join(str(k) for k in folds)]
    if per_class:
        cmd += ["--per-class", str(per_class)]
    if image_size:
        cmd += ["--image-size", str(image_size)]
    if resume:
        cmd.append("--resume")
    return cmd + list(extra)


def launch_training(out: str | Path, data: str | Path = "default", model: str = "sequential", folds=None,
                    epochs: int = 13, per_class: int | None = None, image_size: int | None = None,
                    device: str = "auto", resume: bool = False, extra: tuple[str, ...] = ()) -> subprocess.Popen:
    """Start training as a separate process (the app never trains in its own script thread). Output goes to
    RUN/train.log; the process runs in its own session so it outlives a browser refresh."""
    out = Path(out)
    if lock_owner(out) is not None:
        raise UserError(f"{out} is already being trained (PID {lock_owner(out)}).")
    out.mkdir(parents=True, exist_ok=True)
    cmd = train_command(out, data, model, folds, epochs, per_class, image_size, device, resume, extra)
    with open(out / LOG_NAME, "ab") as log:
        return subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)


def read_log(run_dir: str | Path, max_chars: int = 4000) -> str:
    """The tail of RUN/train.log (errors of a launched run end up there)."""
    try:
        text = (Path(run_dir) / LOG_NAME).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return ""
    return text[-max_chars:]


def stop_training(run_dir: str | Path) -> bool:
    """Ask the process writing this run to stop (SIGTERM); it can be resumed later. False if none runs."""
    pid = lock_owner(run_dir)
    if pid is None:
        return False
    os.kill(pid, signal.SIGTERM)
    return True
