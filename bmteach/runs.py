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

    def fold_status(self, fold: int) -> FoldStatus:
        epochs = int(self.config.get("epochs", 0))
        if self.fold_complete(fold):
            meta = self.fold_meta(fold) or {}
            return FoldStatus(fold, "complete", epochs, epochs, None, meta.get("metrics"))
        records = self.progress(fold)
        last = records[-1] if records else None
        if last is None and not (self.fold_dirs[fold] / LAST).is_file():
            return FoldStatus(fold, "pending", 0, epochs)
        state = "running" if self.running() else "stopped"
        return FoldStatus(fold, state, int((last or {}).get("epoch", 0)), epochs, last)

    def status(self) -> list[FoldStatus]:
        return [self.fold_status(k) for k in self.fold_dirs]

    def running(self) -> bool:
        return lock_owner(self.path) is not None

    def oof(self) -> pd.DataFrame | None:
        """All out-of-fold predictions: run/oof.csv, else the completed folds' files joined (None if none)."""
        path = self.path / OOF
        if path.is_file():
            return pd.read_csv(path, keep_default_na=False)
        parts = [pd.read_csv(self.fold_dirs[k] / OOF, keep_default_na=False) for k in self.complete_folds()]
        return pd.concat(parts, ignore_index=True) if parts else None

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
    from bmteach.launch import start_detached

    return start_detached(cmd, out / LOG_NAME)


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
