"""Planning a training run from the app: presets, projected durations from measured throughput, the devices and
data sets that may be chosen, run names, provenance, and the tables the Training page shows for a finished run.

No Streamlit here (pages/6_Training.py lays out widgets); torch is imported only to list GPUs.
"""
from __future__ import annotations

import math
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bmteach import runs
from bmteach.classes import ABBRS
from bmteach.errors import UserError
from bmteach.storage import REPO_ROOT, atomic_write_json, home, read_json, runs_dir


@dataclass(frozen=True)
class Throughput:
    """Measured training images/s (whole `train` command: loading, augmentation, step) at one input size."""
    images_per_s: float
    image_size: int
    measured: str      # where and how: the machine and the command that gave the figure


# Training throughput per (model, device kind). Other input sizes scale by pixel count (a convolutional network's
# cost is about proportional to it). Re-measure with the commands given and update the figures here.
THROUGHPUT: dict[tuple[str, str], Throughput] = {
    ("sequential", "cpu"): Throughput(90.0, 128, "2-core CPU, `.venv/bin/python bench/bench_train.py` "
                                                 "(102 images/s network only, ~90 with loading; README)"),
    ("resnext50", "cpu"): Throughput(2.5, 250, "2-core CPU, ResNeXt-50 train step ~2-3 images/s "
                                               "(../shared/design/platform-notes.md)"),
    ("resnext50", "cuda"): Throughput(1495.0, 250, "one H200 (16 cores), bf16, channels_last, `bash "
                                                   "bench/gpu_check.sh`: the real train command at its default "
                                                   "batch 64 (2,000 images/s with --batch-size 256)"),
}
PREDICT_SPEEDUP = 3.0   # predicting the held-out fold runs about 3x faster than training (no backward pass)
STARTUP_S = 20.0        # process start, imports, indexing a small data set


@dataclass(frozen=True)
class Preset:
    key: str
    label: str
    model: str
    device: str            # "cpu" or "cuda"
    num_folds: int
    epochs: int
    per_class: int
    image_size: int
    data: str              # "default" (built-in synthetic) or "configured" (the app's data folder)


PRESETS: tuple[Preset, ...] = (
    Preset("quick", "quick demo (CPU, minutes)", "sequential", "cpu", 5, 3, 40, 96, "default"),
    Preset("synthetic-resnext", "synthetic ResNeXt-50 (GPU, minutes)", "resnext50", "cuda", 5, 3, 500, 250, "default"),
    Preset("paper", "paper protocol (5 folds x 13 epochs, ~25,000 per class; GPU, hours)", "resnext50", "cuda", 5, 13,
           25_000, 250, "configured"),
)


def measured_here(model: str, device: str, root: Path | None = None) -> Throughput | None:
    """The training rate this machine reached in its own runs of this model on this device kind (the median of
    each fold's last progress record in BMTEACH_HOME/runs), or None when it has trained none."""
    kind = "cuda" if device.startswith("cuda") else "cpu"
    rates, size, names = [], None, []
    root = root or runs_dir()
    for run in sorted(root.iterdir()) if root.is_dir() else []:
        try:
            config = read_json(run / runs.CONFIG)
        except (OSError, ValueError):
            continue
        beat = runs.read_heartbeat(run) or {}
        if config.get("model") != model or not str(beat.get("device", "")).startswith(kind):
            continue
        for _, fold in runs.fold_dirs(run):
            records = [r for r in runs.read_jsonl(fold / runs.PROGRESS) if not r.get("phase")]
            if records and records[-1].get("images_per_s"):
                rates.append(float(records[-1]["images_per_s"]))
                size = int(config.get("image_size") or 0)
                names.append(run.name)
    if not rates or not size:
        return None
    rates.sort()
    return Throughput(rates[len(rates) // 2], size, f"this machine ({len(rates)} fold(s) of {names[-1]}, ...)"
                      if len(set(names)) > 1 else f"this machine (run {names[-1]})")


def throughput(model: str, device: str, image_size: int) -> tuple[float, Throughput] | None:
    """Projected training images/s for this model, device kind and input size, with the measurement behind it:
    this machine's own runs first, else the table above; None when nothing was measured for that model and
    device."""
    base = measured_here(model, device) or THROUGHPUT.get((model, "cuda" if device.startswith("cuda") else "cpu"))
    if base is None:
        return None
    return base.images_per_s * (base.image_size / max(image_size, 1)) ** 2, base


def projected_seconds(model: str, device: str, image_size: int, num_folds: int, folds: int, epochs: int,
                      per_class: int | None, n_images: int, n_classes: int = len(ABBRS)) -> float | None:
    """Time to train `folds` of a num_folds split: every fold trains epochs x per_class x classes images (or its
    training share of n_images per epoch without balancing) and predicts its held-out share once."""
    rate = throughput(model, device, image_size)
    if rate is None:
        return None
    images_per_s = rate[0]
    train_share = n_images * (num_folds - 1) / num_folds
    per_epoch = per_class * n_classes if per_class else train_share
    training = folds * epochs * per_epoch / images_per_s
    predicting = folds * (n_images / num_folds) / (PREDICT_SPEEDUP * images_per_s)
    return STARTUP_S + training + predicting


def format_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "not measured for this model and device"
    if seconds < 90:
        return f"about {seconds:.0f} s"
    if seconds < 90 * 60:
        return f"about {seconds / 60:.0f} min"
    return f"about {seconds / 3600:.1f} h"


# --- devices -----------------------------------------------------------------------------------------------

def list_gpus() -> list[str]:
    """'cuda:0 NVIDIA H100 (80 GiB)' for every GPU torch sees; empty without CUDA."""
    try:
        import torch
    except ImportError:
        return []
    if not torch.cuda.is_available():
        return []
    found = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        found.append(f"cuda:{i} {p.name} ({p.total_memory / 2**30:.0f} GiB)")
    return found


# --- data sets and run folders -------------------------------------------------------------------------------

def data_choices(configured: Path | None) -> dict[str, str]:
    """Data sets the page may train on, label -> the --data argument: the built-in synthetic cells, the app's
    configured data folder, and data sets under BMTEACH_HOME/data. Nothing typed: paths stay inside these."""
    choices = {"built-in synthetic cells": "default"}
    if configured is not None and configured.is_dir():
        choices[f"the app's data folder ({configured.name})"] = str(configured)
    data_home = home() / "data"
    if data_home.is_dir():
        for d in sorted(data_home.iterdir()):
            if d.is_dir() and d.name != "synthetic" and any((d / a).is_dir() for a in ABBRS):
                choices[f"{d.name} (in BMTEACH_HOME/data)"] = str(d.resolve())
    return choices


_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def run_folder(name: str) -> Path:
    """BMTEACH_HOME/runs/<name>, the name reduced to letters, digits, '.', '_' and '-' (never a path)."""
    clean = _NAME.sub("-", name.strip()).strip(".-")[:80]
    if not clean:
        raise UserError("Give the run a name (letters, digits, '-', '_').")
    return runs_dir() / clean


def inside_runs(path: str | Path) -> Path:
    """A run folder the page may act on: directly under BMTEACH_HOME/runs (else a UserError)."""
    path = Path(path).resolve()
    if path.parent != runs_dir().resolve():
        raise UserError(f"{path} is not a run of this app (BMTEACH_HOME/runs).")
    return path


def code_version() -> str:
    """`git describe --always --dirty` of the checkout, else bmteach's version."""
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty", "--tags"], cwd=REPO_ROOT, timeout=5,
                             capture_output=True, text=True, check=False)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    from bmteach import __version__

    return f"bmteach {__version__}"


def record_launch(run_dir: Path, cmd: list[str], preset: str | None) -> None:
    """RUN/launch.json: how the app launched the run (command, code version, preset), for its provenance."""
    import time

    atomic_write_json(run_dir / runs.LAUNCH, {"command": cmd[1:], "code_version": code_version(),
                                              "preset": preset, "time": time.time()})


def provenance(run_dir: Path) -> dict:
    """What decides a run's result: its config, seed, split (manifest) and the code that trained it."""
    config = runs.read_config(run_dir)
    try:
        launched = read_json(run_dir / runs.LAUNCH)
    except (OSError, ValueError):
        launched = {}
    manifest = run_dir / runs.MANIFEST
    return {"seed": config.get("seed"), "model": config.get("model"), "split file": str(manifest),
            "split": f"{config.get('num_folds')} folds, seed {config.get('seed')}, "
                     f"{config.get('manifest_source') or 'index'}",
            "data": config.get("data_root"), "code version": launched.get("code_version") or config.get("version"),
            "command": " ".join(launched.get("command") or []) or "run from the command line", "config": config}


# --- results -------------------------------------------------------------------------------------------------

def _pm(mean: float, sd: float) -> str:
    if not isinstance(mean, (int, float)) or math.isnan(mean):
        return ""
    return f"{mean:.2f}" if not isinstance(sd, (int, float)) or math.isnan(sd) else f"{mean:.2f} ± {sd:.2f}"


def table1(metrics: dict) -> pd.DataFrame:
    """The paper's Table 1 shape for a run: per class strict and tolerant precision and recall, mean ± sd over
    folds, with the paper's figures beside them."""
    from bmteach.atlas import model_vs_paper

    wide = model_vs_paper(metrics)
    out = pd.DataFrame({"class": wide["class"], "name": wide["name"]})
    for mode in ("strict", "tolerant"):
        for stat in ("precision", "recall"):
            col = f"model {mode} {stat}"
            out[f"{mode} {stat}"] = [_pm(m, s) for m, s in zip(wide[col], wide[f"{col} sd"])]
            out[f"paper {mode} {stat}"] = wide[f"paper {mode} {stat}"].round(2)
    return out


def overall(metrics: dict) -> dict[str, str]:
    """Headline figures: accuracy and balanced accuracy, strict and tolerant, mean ± sd over folds."""
    o = metrics.get("overall", {})
    return {f"{mode} {name.replace('_', ' ')}": _pm(o.get(mode, {}).get(name, math.nan),
                                                    o.get(mode, {}).get(f"{name}_sd", math.nan))
            for mode in ("strict", "tolerant") for name in ("accuracy", "balanced_accuracy")}


def compare(metrics_a: dict, metrics_b: dict, name_a: str, name_b: str) -> pd.DataFrame:
    """Two runs side by side with the paper: per class strict and tolerant recall."""
    from bmteach.atlas import model_vs_paper

    a, b = model_vs_paper(metrics_a), model_vs_paper(metrics_b)
    out = pd.DataFrame({"class": a["class"]})
    for mode in ("strict", "tolerant"):
        out[f"{name_a} {mode} recall"] = a[f"model {mode} recall"].round(2)
        out[f"{name_b} {mode} recall"] = b[f"model {mode} recall"].round(2)
        out[f"paper {mode} recall"] = a[f"paper {mode} recall"].round(2)
    return out


def curves(progress: pd.DataFrame, column: str, held_out: bool = False) -> pd.DataFrame:
    """A progress table pivoted for a line chart: index = epochs done (fractional), one column per fold. The
    training records, or with held_out the after-epoch checks on the held-out sample (val_loss, val_accuracy)."""
    if progress.empty or column not in progress.columns:
        return pd.DataFrame()
    phase = progress["phase"] if "phase" in progress.columns else pd.Series(None, index=progress.index, dtype=object)
    keep = phase.eq("epoch") if held_out else ~phase.isin(["done", "epoch"])
    df = progress[keep & progress[column].notna()].copy()
    if df.empty:
        return pd.DataFrame()
    steps = df["steps_per_epoch"].where(df["steps_per_epoch"] > 0, 1)
    df["epochs"] = (df["epoch"] - 1) + df["step"] / steps
    df["fold"] = "fold " + df["fold"].astype(int).astype(str)
    return df.pivot_table(index="epochs", columns="fold", values=column, aggfunc="last").sort_index()
