"""The run folder: its file names, reading it back, the lock that keeps one writer per run, and launching
training as a process. This module is the one owner of the run folder's layout (docs/formats.md):

    RUN/config.json            the TrainConfig (written last when a run is prepared: it marks a run)
    RUN/manifest.csv           path,label,fold[,group] of every image (paths relative to the data root)
    RUN/fold<k>/               progress.jsonl while training, last.pt (resume state), then oof.csv (the fold's
                               held-out predictions), model.pt + meta.json (complete)
    RUN/oof.csv                every fold's predictions joined in manifest order (join_oof / write_oof)
    RUN/metrics.json, table.csv, confusion.csv, confusion_counts.csv, confusion.png   written by evaluate
    RUN/.lock, RUN/train.log   the writing process's PID; a launched run's output

Reading never writes, so the app can watch a run that another process is writing.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bmteach.errors import UserError
from bmteach.storage import atomic_write_json, atomic_write_text, read_json, runs_dir

# --- the names of the run folder: defined here and nowhere else ---------------------------------------------

CONFIG = "config.json"
MANIFEST = "manifest.csv"
OOF = "oof.csv"
METRICS = "metrics.json"
TABLE = "table.csv"
CONFUSION = "confusion.csv"
CONFUSION_COUNTS = "confusion_counts.csv"
CONFUSION_PNG = "confusion.png"
EXTERNAL = "external"          # RUN/external/: predictions of an external data set (evaluate-external)
FOLD_PREFIX = "fold"
MODEL = "model.pt"             # fold<k>/model.pt: the finished fold's weights (meta.json beside it)
META = "meta.json"
LAST = "last.pt"               # fold<k>/last.pt: resume state after every epoch, removed when the fold completes
PROGRESS = "progress.jsonl"
LOCK_NAME = ".lock"
LOG_NAME = "train.log"
OOD = "ood.json"               # the out-of-distribution score fitted on the run's features (bmteach.ood)
LOCK, LOG = LOCK_NAME, LOG_NAME
# A child started by `train --parallel-folds` may write into the run its parent has locked.
PARENT_LOCK_ENV = "BMTEACH_LOCK_PARENT"
OOF_FLOAT_FORMAT = "%.6g"      # 6 significant digits keep oof files small


def fold_dir(run_dir: str | Path, fold: int) -> Path:
    return Path(run_dir) / f"{FOLD_PREFIX}{int(fold)}"


def fold_dirs(run_dir: str | Path) -> list[tuple[int, Path]]:
    """The one fold scan: (k, fold<k>/) for every fold folder of a run, sorted by k."""
    found = []
    try:
        entries = list(Path(run_dir).iterdir())
    except OSError:
        return []
    for d in entries:
        suffix = d.name[len(FOLD_PREFIX):]
        if d.name.startswith(FOLD_PREFIX) and suffix.isdigit() and d.is_dir():
            found.append((int(suffix), d))
    return sorted(found)


def fold_checkpoint_dirs(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(k, fold<k>/) for every fold folder holding a model.pt, sorted by k."""
    return [(k, d) for k, d in fold_dirs(run_dir) if (d / MODEL).is_file()]


def fold_is_complete(fold_path: str | Path) -> bool:
    """A finished fold: meta.json says complete, and model.pt and oof.csv are there."""
    fold_path = Path(fold_path)
    try:
        complete = bool(read_json(fold_path / META).get("complete"))
    except (OSError, ValueError, AttributeError):
        return False
    return complete and (fold_path / MODEL).is_file() and (fold_path / OOF).is_file()


def complete_folds(run_dir: str | Path) -> list[int]:
    return [k for k, d in fold_dirs(run_dir) if fold_is_complete(d)]


def read_config(run_dir: str | Path) -> dict:
    """RUN/config.json; a clear error when the folder is not a run."""
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise UserError(f"{run_dir} is not a training run (no {CONFIG}); train one with `python -m bmteach train`.")
    try:
        config = read_json(path)
    except (OSError, ValueError) as exc:
        raise UserError(f"{path} is not readable ({exc}).") from None
    if not isinstance(config, dict):
        raise UserError(f"{path} does not hold a run configuration (a JSON object).")
    return config


def read_run_manifest(run_dir: str | Path) -> pd.DataFrame:
    """RUN/manifest.csv as path,label,fold(int)[,group]."""
    from bmteach.data import read_manifest

    return read_manifest(Path(run_dir) / MANIFEST)


read_manifest = read_run_manifest


def num_folds(run_dir: str | Path) -> int:
    return int(read_config(run_dir).get("num_folds", 5))


def all_folds_complete(run_dir: str | Path) -> bool:
    """Every fold of the run's split is finished (the run can be joined and evaluated)."""
    try:
        n = num_folds(run_dir)
    except UserError:
        return False
    return all(fold_is_complete(fold_dir(run_dir, k)) for k in range(n))


def run_classes(run_dir: str | Path) -> list[str]:
    """The run's class order: config.json, else the first fold's meta.json, else the 21 classes."""
    from bmteach.classes import ABBRS

    candidates = [Path(run_dir) / CONFIG] + [d / META for _, d in fold_dirs(run_dir)]
    for path in candidates:
        try:
            classes = read_json(path).get("classes")
        except (OSError, ValueError, AttributeError):
            continue
        if classes:
            return list(classes)
    return list(ABBRS)


def _mtime_ns(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


def run_stamp(run_dir: str | Path) -> tuple:
    """Changes whenever a fold checkpoint, the manifest, an oof file or metrics.json changes: the cache key of
    everything derived from a run (predictors, maps, features)."""
    run = Path(run_dir)
    files = [run / CONFIG, run / MANIFEST, run / OOF, run / METRICS]
    for _, d in fold_dirs(run):
        files += [d / MODEL, d / OOF]
    return tuple((str(p), m) for p in files if (m := _mtime_ns(p)) is not None)


# --- out-of-fold predictions: one join, one coverage policy -------------------------------------------------

def fold_oof_files(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(k, fold<k>/oof.csv) for every fold folder that has one, sorted by k."""
    return [(k, d / OOF) for k, d in fold_dirs(run_dir) if (d / OOF).is_file()]


def _read_oof_csv(path: Path) -> pd.DataFrame:
    try:
        df = pd.read_csv(path, dtype={"path": str, "true": str, "pred": str}, keep_default_na=False)
    except (OSError, ValueError) as exc:
        raise UserError(f"{path} cannot be read as out-of-fold predictions ({exc}).") from None
    missing = [c for c in ("path", "true", "pred", "fold") if c not in df.columns]
    if missing:
        raise UserError(f"{path} lacks the column(s) {', '.join(missing)}: expected path,true,pred,fold,prob_<class>...")
    return df


def _examples(items, n: int = 3) -> str:
    items = sorted(items)
    return ", ".join(items[:n]) + (" ..." if len(items) > n else "")


def _check_oof_classes(part: pd.DataFrame, classes: list[str], path: Path) -> None:
    """Probability columns in the run's class order, and no label outside it (named with its line)."""
    probs = [c[len("prob_"):] for c in part.columns if c.startswith("prob_")]
    if probs and probs != list(classes):
        raise UserError(f"{path} holds probabilities for other classes than the run's ({len(probs)} columns, "
                        f"{len(classes)} classes in {CONFIG}); retrain this fold.")
    for column in ("true", "pred"):
        bad = ~part[column].isin(classes)
        if bad.any():
            i = int(bad.to_numpy().argmax())
            raise UserError(f"{path} names a class the run does not have in its {column} column: "
                            f"{part[column].iloc[i]!r} (line {i + 2}).")


def _check_coverage(oof: pd.DataFrame, expected: pd.DataFrame, manifest: pd.DataFrame, run_dir: Path) -> None:
    """Each expected manifest image predicted exactly once, by the fold that held it out, with its own label."""
    doubled = set(oof["path"][oof["path"].duplicated()])
    if doubled:
        raise UserError(f"{len(doubled)} image(s) of {run_dir} are predicted more than once ({_examples(doubled)}); "
                        "every image belongs to exactly one fold: retrain the folds that changed.")
    extra = set(oof["path"]) - set(manifest["path"])
    if extra:
        raise UserError(f"{len(extra)} predicted image(s) are not in {run_dir / MANIFEST} ({_examples(extra)}); "
                        "the folds were trained on another split: retrain them.")
    missing = set(expected["path"]) - set(oof["path"])
    if missing:
        folds = sorted(set(expected.loc[expected["path"].isin(missing), "fold"].astype(int)))
        raise UserError(f"{len(missing)} of {len(expected)} manifest image(s) of {run_dir} have no out-of-fold "
                        f"prediction ({_examples(missing)}); train fold(s) {', '.join(map(str, folds))} first.")
    merged = oof[["path", "true", "fold"]].merge(manifest[["path", "label", "fold"]], on="path", suffixes=("", "_m"))
    wrong = merged[(merged["true"] != merged["label"]) | (merged["fold"].astype(int) != merged["fold_m"].astype(int))]
    if len(wrong):
        raise UserError(f"{len(wrong)} prediction(s) in {run_dir} disagree with {MANIFEST} on the image's label or "
                        f"fold ({_examples(wrong['path'])}); retrain the folds that changed.")


def join_oof(run_dir: str | Path, partial: bool = False) -> pd.DataFrame:
    """Every fold's out-of-fold predictions joined in manifest order (path,true,pred,fold,prob_<class>...).

    The one coverage policy: each manifest image predicted exactly once, by the fold model that held it out,
    under its manifest label; otherwise a one-sentence UserError naming what is missing, doubled or wrong.
    partial=True joins only the completed folds (a run still training) and asks the same of their images."""
    run_dir = Path(run_dir)
    manifest = read_run_manifest(run_dir)
    wanted = complete_folds(run_dir) if partial else sorted(set(manifest["fold"].astype(int)))
    folds = [k for k in wanted if (fold_dir(run_dir, k) / OOF).is_file()]
    parts = [_read_oof_csv(fold_dir(run_dir, k) / OOF) for k in folds]
    if not parts:
        raise UserError(f"{run_dir} has no out-of-fold predictions yet (no finished fold); train it first.")
    columns = list(parts[0].columns)
    for k, part in zip(folds, parts):
        if list(part.columns) != columns:
            raise UserError(f"{fold_dir(run_dir, k) / OOF} has other columns than the first fold's; the folds of one "
                            "run must share their classes (retrain or remove the odd fold).")
    classes = run_classes(run_dir)
    for k, part in zip(folds, parts):
        _check_oof_classes(part, classes, fold_dir(run_dir, k) / OOF)
    oof = pd.concat(parts, ignore_index=True)
    oof["fold"] = oof["fold"].astype(int)
    expected = manifest[manifest["fold"].astype(int).isin(wanted)]
    _check_coverage(oof, expected, manifest, run_dir)
    order = {p: i for i, p in enumerate(manifest["path"])}
    return oof.sort_values("path", key=lambda s: s.map(order)).reset_index(drop=True)


def write_oof(run_dir: str | Path) -> pd.DataFrame:
    """RUN/oof.csv from join_oof (every fold, exact coverage); returns the joined table."""
    oof = join_oof(run_dir)
    atomic_write_text(Path(run_dir) / OOF, oof.to_csv(index=False, float_format=OOF_FLOAT_FORMAT))
    return oof


def read_oof(run_dir: str | Path) -> pd.DataFrame | None:
    """The run's out-of-fold predictions for the pages: the finished folds joined (join_oof, partial), or
    RUN/oof.csv alone for a run shipped without fold files; None when it has none yet."""
    run_dir = Path(run_dir)
    if fold_oof_files(run_dir):
        try:
            return join_oof(run_dir, partial=True)
        except UserError:
            if not complete_folds(run_dir):
                return None
            raise
    if (run_dir / OOF).is_file():
        oof = _read_oof_csv(run_dir / OOF)
        oof["fold"] = oof["fold"].astype(int)
        return oof
    return None


# --- the one-writer lock, the heartbeat and the stop request -------------------------------------------------
# RUN/.lock appears atomically (a complete file hard-linked into place: two takers can never both create it)
# and names its owner by PID, host and the process's start time (a recycled PID is not mistaken for it). The
# owner rewrites RUN/heartbeat.json every HEARTBEAT_S from a daemon thread and, on release, writes a final one
# saying how it ended. run_state() reads only these files, so a refreshed page or a restarted app loses nothing.

HEARTBEAT = "heartbeat.json"
STOP_REQUEST = "stop.json"     # when the app asked the run to stop (the queue's supervisor escalates to SIGKILL)
LAUNCH = "launch.json"         # how the Training page launched the run: command, code version, preset
HEARTBEAT_S = 2.0
STALE_S = 30.0                 # no heartbeat for this long: the writer is gone, or hangs
HOST = socket.gethostname()
_STOP = threading.Event()      # set by SIGTERM while a fold trains: finish the step, write last.pt, exit
_BEAT_INFO: dict = {}          # what the trainer adds to the heartbeat (fold, device)
_BEATING: set = set()          # this process's running heartbeats


def request_stop(*_signal_args) -> None:
    """Ask this process's training loop to stop after its current step (a SIGTERM handler)."""
    _STOP.set()


def stop_requested() -> bool:
    return _STOP.is_set()


def clear_stop() -> None:
    _STOP.clear()


def set_heartbeat_info(**info) -> None:
    """Extra fields for this process's heartbeat (the fold it trains, its device), written at once."""
    _BEAT_INFO.update(info)
    for beat in list(_BEATING):
        beat.beat()


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


def process_start(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), None where unknown."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _identity() -> dict:
    pid = os.getpid()
    return {"pid": pid, "host": HOST, "start": process_start(pid)}


def _record_alive(record: dict) -> bool:
    """Is the process a lock or heartbeat record names still running? (Another host's: assume so.)"""
    if record.get("host") not in (None, HOST):
        return True
    try:
        pid = int(record.get("pid") or 0)
    except (TypeError, ValueError):
        return False
    if not pid_alive(pid):
        return False
    start = record.get("start")
    return start is None or process_start(pid) in (None, start)


def _read_record(path: Path) -> dict | None:
    try:
        record = read_json(path)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def read_heartbeat(run_dir: str | Path) -> dict | None:
    """RUN/heartbeat.json (pid, host, started, time, fold, device; ended/outcome/error once over), or None."""
    return _read_record(Path(run_dir) / HEARTBEAT)


def lock_owner(run_dir: str | Path) -> int | None:
    """PID of the live process writing this run, or None (no lock, or a stale one)."""
    record = _read_record(Path(run_dir) / LOCK)
    if record is None or not _record_alive(record):
        return None
    try:
        return int(record["pid"])
    except (KeyError, TypeError, ValueError):
        return None


class Heartbeat:
    """RUN/heartbeat.json rewritten every `interval` seconds by a daemon thread, so it keeps beating through a
    long step or a validation pass; `end()` writes the last one with how the process ended."""

    def __init__(self, run_dir: Path, interval: float = HEARTBEAT_S):
        self.path = Path(run_dir) / HEARTBEAT
        self.interval = interval
        self.record = {**_identity(), "started": time.time()}
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bmteach-heartbeat", daemon=True)

    def beat(self, **final) -> None:
        try:
            atomic_write_json(self.path, {**self.record, **_BEAT_INFO, "time": time.time(), **final})
        except OSError:
            pass  # a full disk must not kill the training; the page then sees a stale heartbeat

    def _loop(self) -> None:
        while not self._done.wait(self.interval):
            self.beat()

    def start(self) -> None:
        self.beat()
        self._thread.start()
        _BEATING.add(self)

    def end(self, outcome: str, error: str | None = None) -> None:
        _BEATING.discard(self)
        self._done.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self.beat(ended=time.time(), outcome=outcome, error=error)


def _outcome() -> tuple[str, str | None]:
    """How this process is leaving its run: called from release(), where sys.exc_info() shows an exception
    on its way out of the `train` command."""
    exc = sys.exc_info()[1]
    if stop_requested() or isinstance(exc, KeyboardInterrupt):
        return "stopped", None
    if exc is None or isinstance(exc, SystemExit) and not exc.code:
        return "exited", None
    return "error", str(exc) or type(exc).__name__


class RunLock:
    """RUN/.lock naming the one process that writes a run. A live owner other than us is a clear error; a dead
    owner's lock is taken over (under a flock on the run folder, so two takers cannot both remove it). The
    holder also writes the heartbeat. Use as a context manager, or acquire() ... release() in try/finally."""

    def __init__(self, run_dir: str | Path, heartbeat: bool = True):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK
        self.held = False
        self.heartbeat = Heartbeat(self.run_dir) if heartbeat else None
        self._content = b""

    def _create(self) -> bool:
        """Make RUN/.lock appear complete or not at all: write a private file, hard-link it into place."""
        self._content = json.dumps({**_identity(), "time": time.time(), "token": os.urandom(8).hex()}).encode()
        tmp = self.run_dir / f".lock.{os.getpid()}.{os.urandom(4).hex()}.tmp"
        tmp.write_bytes(self._content)
        try:
            os.link(tmp, self.path)
            return True
        except FileExistsError:
            return False
        except OSError:  # a file system without hard links: exclusive create (the content follows at once)
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as f:
                f.write(self._content)
            return True
        finally:
            tmp.unlink(missing_ok=True)

    def _remove_if_unchanged(self, seen: bytes | None) -> None:
        """Remove a stale lock, but only if it is still the one judged stale (flock: one remover at a time)."""
        fd = os.open(self.run_dir, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                now = self.path.read_bytes()
            except FileNotFoundError:
                return
            if now == seen:
                self.path.unlink(missing_ok=True)
        finally:
            os.close(fd)  # closing drops the flock

    def acquire(self) -> "RunLock":
        self.run_dir.mkdir(parents=True, exist_ok=True)
        parent = int(os.environ.get(PARENT_LOCK_ENV) or 0)
        for _ in range(20):
            if self._create():
                self.held = True
                (self.run_dir / STOP_REQUEST).unlink(missing_ok=True)  # an old stop request is not for us
                if self.heartbeat is not None:
                    self.heartbeat.start()
                return self
            try:
                seen = self.path.read_bytes()
            except FileNotFoundError:
                continue  # released just now: try again
            record = _read_record(self.path) or {}
            owner = record.get("pid")
            if parent and owner == parent and _record_alive(record):
                return self  # our parent holds it for us (--parallel-folds); it releases it
            if record and _record_alive(record):
                raise UserError(f"{self.run_dir} is being written by another training process (PID {owner}); "
                                "wait for it to finish, stop it, or choose another --out.")
            self._remove_if_unchanged(seen)
        raise UserError(f"{self.run_dir} was just taken by another training process; choose another --out.")

    def release(self) -> None:
        if not self.held:
            return
        if self.heartbeat is not None:
            self.heartbeat.end(*_outcome())
        try:
            if self.path.read_bytes() == self._content:
                self.path.unlink()
        except FileNotFoundError:
            pass
        self.held = False

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


# --- reading a run -----------------------------------------------------------------------------------------

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
    state: str                 # "pending", "running", "stopped" or "crashed" (resumable), "complete"
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
        return {k: fold_dir(self.path, k) for k in range(self.num_folds)}

    @property
    def manifest(self) -> pd.DataFrame:
        return pd.read_csv(self.path / MANIFEST, keep_default_na=False)

    def fold_meta(self, fold: int) -> dict | None:
        path = self.fold_dirs[fold] / META
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
        return read_jsonl(self.fold_dirs[fold] / PROGRESS)

    def fold_status(self, fold: int, state: RunState | None = None) -> FoldStatus:
        """One fold's state; a fold with progress but not complete takes the run's state when it is the fold
        trained last (running or crashed), else it is stopped (resumable)."""
        epochs = int(self.config.get("epochs", 0))
        if self.fold_complete(fold):
            meta = self.fold_meta(fold) or {}
            return FoldStatus(fold, "complete", epochs, epochs, None, meta.get("metrics"))
        records = self.progress(fold)
        last = records[-1] if records else None
        if last is None and not (self.fold_dirs[fold] / LAST).is_file():
            return FoldStatus(fold, "pending", 0, epochs)
        state = state or run_state(self)
        current = state.state in ("running", "crashed") and fold == self.latest_fold()
        return FoldStatus(fold, state.state if current else "stopped", int((last or {}).get("epoch", 0)), epochs, last)

    def latest_fold(self) -> int | None:
        """The unfinished fold whose progress or last.pt changed last (the one being, or last, trained)."""
        stamps = []
        for k, d in self.fold_dirs.items():
            if not self.fold_complete(k):
                times = [m for m in (_mtime_ns(d / PROGRESS), _mtime_ns(d / LAST)) if m is not None]
                if times:
                    stamps.append((max(times), k))
        return max(stamps)[1] if stamps else None

    def status(self) -> list[FoldStatus]:
        state = run_state(self)
        return [self.fold_status(k, state) for k in self.fold_dirs]

    def running(self) -> bool:
        return run_state(self).state == "running"

    def metrics(self) -> dict | None:
        try:
            return read_json(self.path / METRICS)
        except (OSError, json.JSONDecodeError):
            return None


def open_run(path: str | Path) -> Run:
    """A run folder written by `train`; a clear error when it is not one."""
    path = Path(path).expanduser()
    config_path = path / CONFIG
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
    found = [p for p in root.iterdir() if (p / CONFIG).is_file()] if root.is_dir() else []
    return [open_run(p) for p in sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)]


def read_progress(run: Run | str | Path) -> pd.DataFrame:
    """Every progress record of every fold as one table (columns fold, epoch, step, loss, accuracy,
    images_per_s, eta_s, time, ...); empty when nothing has been logged yet."""
    run = run if isinstance(run, Run) else open_run(run)
    rows = [r for k in run.fold_dirs for r in run.progress(k)]
    return pd.DataFrame(rows)


# --- launching and stopping --------------------------------------------------------------------------------

START_MARK = "[bmteach start]"   # train.log: what follows belongs to the latest start


def append_log(run_dir: str | Path, line: str) -> None:
    """One line of our own in RUN/train.log, stamped (queued, started, ended, killed)."""
    path = Path(run_dir) / LOG
    path.parent.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    with open(path, "a", encoding="utf-8") as f:
        f.write(f"[bmteach {stamp}] {line}\n")


def train_command(out: str | Path, data: str | Path = "default", model: str = "sequential",
                  folds=None, epochs: int = 13, per_class: int | None = None, image_size: int | None = None,
                  device: str = "auto", resume: bool = False, extra: tuple[str, ...] = (),
                  num_folds: int | None = None) -> list[str]:
    """The `python -m bmteach train ...` command line for these settings (an argument list: never a shell)."""
    from bmteach.launch import bmteach_command

    cmd = bmteach_command("train", "--data", str(data), "--model", model, "--epochs", str(epochs), "--out", str(out),
                          "--device", device)
    if num_folds:
        cmd += ["--num-folds", str(num_folds)]
    if folds is not None:
        cmd += ["--folds", ",".join(str(k) for k in folds)]
    if per_class:
        cmd += ["--per-class", str(per_class)]
    if image_size:
        cmd += ["--image-size", str(image_size)]
    if resume:
        cmd.append("--resume")
    return cmd + list(extra)


def resume_command(run_dir: str | Path, device: str = "auto") -> list[str]:
    """The command that continues a stopped or crashed run from its last checkpoints (its saved config
    decides everything else)."""
    config = read_config(run_dir)
    return train_command(Path(run_dir).resolve(), config.get("data_root") or "default", config.get("model", "sequential"),
                         epochs=int(config.get("epochs", 13)), device=device, resume=True)


def launch_command(cmd: list[str], run_dir: str | Path) -> subprocess.Popen:
    """Start a command as its own process group (launch.start_detached: a new session, so it outlives the app
    and a browser refresh, and SIGKILL reaches its data-loading workers too), output appended to RUN/train.log
    after a start mark (errors before it belong to earlier attempts)."""
    from bmteach.launch import start_detached

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    append_log(run_dir, f"{START_MARK} {' '.join(cmd[1:])}")
    return start_detached(cmd, run_dir / LOG)


def launch_training(out: str | Path, data: str | Path = "default", model: str = "sequential", folds=None,
                    epochs: int = 13, per_class: int | None = None, image_size: int | None = None,
                    device: str = "auto", resume: bool = False, extra: tuple[str, ...] = ()) -> subprocess.Popen:
    """Start training now as a separate process (the app never trains in its own script thread); the Training
    page uses submit_training, which queues it behind a run already training."""
    out = Path(out)
    if lock_owner(out) is not None:
        raise UserError(f"{out} is already being trained (PID {lock_owner(out)}).")
    cmd = train_command(out, data, model, folds, epochs, per_class, image_size, device, resume, extra)
    return launch_command(cmd, out)


def submit_training(cmd: list[str], run_dir: str | Path):
    """Queue a training (it starts at once when nothing else trains on this machine); see bmteach.jobs."""
    from bmteach import jobs

    return jobs.submit(run_dir, cmd)


def read_log(run_dir: str | Path, max_chars: int = 4000) -> str:
    """The tail of RUN/train.log (errors of a launched run end up there)."""
    path = Path(run_dir) / LOG
    try:
        with open(path, "rb") as f:
            f.seek(max(0, path.stat().st_size - 4 * max_chars))  # never read a huge log whole
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return text[-max_chars:]


def kill_process_group(pid: int) -> None:
    """SIGKILL a training process and, when it leads its own group (as launched), its loader workers too."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def stop_training(run_dir: str | Path, timeout: float | None = None) -> bool:
    """Ask the process writing this run to stop: SIGTERM, on which it finishes its current step, writes last.pt
    and exits (resumable). A queued run is taken off the queue. With `timeout`, wait that long and then SIGKILL
    it; without, the queue's supervisor does so after jobs.STOP_TIMEOUT_S. False if nothing runs or waits."""
    from bmteach import jobs

    run_dir = Path(run_dir)
    pid = lock_owner(run_dir)
    if pid is None:
        return jobs.cancel(run_dir)
    atomic_write_json(run_dir / STOP_REQUEST, {"time": time.time(), "pid": pid})
    os.kill(pid, signal.SIGTERM)
    if timeout is not None:
        deadline = time.time() + timeout
        while pid_alive(pid) and time.time() < deadline:
            time.sleep(0.1)
        if pid_alive(pid):
            kill_process_group(pid)
    return True


# --- run state: running, queued, finished, stopped, crashed — from the run folder's files only --------------

STATES = ("running", "queued", "finished", "stopped", "crashed")


@dataclass
class RunState:
    """What a run is doing now, read from its folder (and the queue); never remembered by the app."""
    state: str                       # one of STATES
    detail: str = ""                 # one sentence for the page
    error: str | None = None         # crashed: why (the process's last error, from its heartbeat or log)
    pid: int | None = None           # running: the training process
    heartbeat_age: float | None = None
    queue_position: int | None = None

    @property
    def resumable(self) -> bool:
        return self.state in ("stopped", "crashed")

    @property
    def active(self) -> bool:
        return self.state in ("running", "queued")


def _run_path(run) -> Path:
    return Path(run.path if isinstance(run, Run) else run)


def run_state(run, now: float | None = None, stale_s: float = STALE_S) -> RunState:
    """Running (a live lock owner with a fresh heartbeat), queued, finished (every fold complete), stopped
    (resumable: stopped on request, or only some folds asked for) or crashed (the process went without
    finishing, with the reason), decided from RUN/.lock, RUN/heartbeat.json, the folds, RUN/train.log and
    the queue."""
    from bmteach import jobs

    path = _run_path(run)
    now = time.time() if now is None else now
    beat = _read_record(path / HEARTBEAT)
    age = now - beat["time"] if beat and isinstance(beat.get("time"), (int, float)) else None
    lock = _read_record(path / LOCK)
    if lock and _record_alive(lock):
        pid = lock.get("pid")
        if beat and beat.get("pid") == pid and not beat.get("ended"):
            if age is not None and age <= stale_s:
                return RunState("running", f"training (process {pid})", pid=pid, heartbeat_age=age)
            return RunState("crashed", f"process {pid} still exists but its heartbeat stopped {age:.0f} s ago",
                            error=f"No heartbeat for {age:.0f} s: the training process {pid} hangs or is "
                                  "suspended; stop it, then resume.", pid=pid, heartbeat_age=age)
        started = lock.get("time")
        if not isinstance(started, (int, float)) or now - started <= stale_s:
            return RunState("running", f"starting (process {pid})", pid=pid)  # the lock comes just before the beat
    job = jobs.job_for(path)
    if job is not None and not job.waiting and job.pid and pid_alive(job.pid):
        return RunState("running", f"starting (process {job.pid})", pid=job.pid)
    if job is not None and job.waiting:
        pos = jobs.position(path)
        return RunState("queued", f"queued, number {pos} in line", queue_position=pos)
    if all_folds_complete(path):
        return RunState("finished", "every fold is trained", heartbeat_age=age)
    if lock and not (beat and beat.get("pid") == lock.get("pid") and beat.get("ended")):
        # a lock its dead owner never released (a clean exit always does): killed or out of memory, possibly
        # before its first heartbeat, so an older heartbeat's "stopped" must not speak for it
        error = last_error(read_log(path))
        return RunState("crashed", "the training process ended without finishing",
                        error=error or f"The training process {lock.get('pid')} disappeared without a word "
                                       "(killed, or out of memory).", heartbeat_age=age)
    if beat and beat.get("ended"):
        if beat.get("outcome") == "error":
            error = beat.get("error") or last_error(read_log(path)) or "the training command failed"
            return RunState("crashed", "the training command failed", error=error, heartbeat_age=age)
        if beat.get("outcome") == "stopped":
            return RunState("stopped", "stopped on request; resume continues from the last step", heartbeat_age=age)
        return RunState("stopped", "only some folds were trained; resume trains the rest", heartbeat_age=age)
    error = last_error(read_log(path))
    if beat:  # a heartbeat that never ended: the process died (killed, out of memory, power cut)
        return RunState("crashed", "the training process ended without finishing",
                        error=error or f"The training process {beat.get('pid')} disappeared without a word "
                                       "(killed, or out of memory).", heartbeat_age=age)
    if error:
        return RunState("crashed", "the training command failed", error=error)
    return RunState("stopped", "not trained to the end; resume continues it")


# a process's own last error ("error: ..." from the CLI, or a traceback's last line) and, failing that, how the
# queue's supervisor saw it end ("... ended: killed by SIGKILL")
_ERROR_LINE = re.compile(r"^(error: .+|[A-Za-z_][\w.]*(Error|Exception)\b.*)$")
_END_LINE = re.compile(r"^\[bmteach [^]]*\] (.*(killed by|exit status (?!130\b)[1-9]).*)$")  # 130: stopped


def last_error(log_text: str) -> str | None:
    """The last error line of a train.log since its last start (or None)."""
    lines = [line.strip() for line in log_text.rsplit(START_MARK, 1)[-1].splitlines()]
    for pattern in (_ERROR_LINE, _END_LINE):
        for line in reversed(lines):
            match = pattern.match(line)
            if match:
                return match.group(1).removeprefix("error: ")
    return None


def stop_requested_at(run_dir: str | Path) -> float | None:
    """When the app asked this run to stop (RUN/stop.json), or None."""
    record = _read_record(Path(run_dir) / STOP_REQUEST)
    value = (record or {}).get("time")
    return float(value) if isinstance(value, (int, float)) else None
