"""Cross-validation training (the paper's protocol): one fold = train on the other folds, predict this fold.

    python -m bmteach train --data DIR [--manifest CSV] --model sequential --epochs 13 --out RUN

Each fold writes RUN/fold<k>/: progress.jsonl while it trains, last.pt after every epoch (model, optimiser,
scheduler, epoch, RNG state; loadable with weights_only=True), then oof.csv (its own images' probabilities),
model.pt + meta.json (complete) and removes last.pt. Every random draw is seeded from (seed, fold, epoch[, sample]),
so `--resume` after a kill reproduces an uninterrupted run bit for bit on CPU. One process writes a run at a time
(RUN/.lock). channels_last everywhere; on CUDA also mixed precision and parallel data loading; `--parallel-folds` runs one fold per
GPU; under `torchrun` one fold is spread over the processes with DistributedDataParallel (only rank 0 writes).
"""
from __future__ import annotations

import io
import itertools
import json
import os
import signal
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from bmteach import __version__
from bmteach.augment import BalancedSampler, augment_batch, derive_seed, eval_transform, train_transform
from bmteach.classes import ABBRS
from bmteach.errors import CheckpointError, UserError
from bmteach.models import DATASET_MEAN, DATASET_STD, MODELS, CellNet, ModelMeta, create_model, save_checkpoint
from bmteach import runs
from bmteach.runs import PARENT_LOCK_ENV, fold_is_complete
from bmteach.storage import atomic_write_bytes, atomic_write_json, atomic_write_text

# Seed "purposes", so model init, augmentation and sampling draw independent streams.
_INIT, _AUGMENT, _SAMPLER, _EPOCH, _HOLDOUT = 1, 2, 3, 4, 5
HOLDOUT_CHECK = 1000   # held-out images scored after every epoch for the live curves (display only, chooses nothing)


@dataclass
class TrainConfig:
    """Everything that decides a run's result; saved as RUN/config.json."""
    model: str = "sequential"
    data_root: str = ""                 # absolute path where the run was trained (manifest paths are relative)
    classes: list[str] = field(default_factory=lambda: list(ABBRS))
    image_size: int = MODELS["sequential"].image_size
    mean: list[float] = field(default_factory=lambda: list(DATASET_MEAN))
    std: list[float] = field(default_factory=lambda: list(DATASET_STD))
    num_folds: int = 5
    folds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    epochs: int = 13
    per_class: int | None = None        # class balancing: images per class per epoch (None: each image once)
    batch_size: int = MODELS["sequential"].batch_size   # per-model defaults: the model registry's
    lr: float = MODELS["sequential"].lr                 # peak of the one-cycle schedule (AdamW)
    weight_decay: float = 1e-4
    stain_strength: float = 0.05
    seed: int = 0
    finetune: str = "all"               # "all" or "head" (frozen body)
    pretrained: bool = False
    manifest_source: str = ""           # the --manifest given, or "index" when built from --data
    version: str = __version__

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


@dataclass
class Dist:
    """This process's place in a torchrun job (world_size 1 when not distributed)."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


# --- data --------------------------------------------------------------------------------------------------

class CellImages(Dataset):
    """Images listed by relative path under `root`. Items are (index, seed) pairs: each sample's augmentation
    is drawn from its own seed, so results do not depend on the number of loader workers or their history."""

    def __init__(self, root: Path, paths, labels, transform, classes):
        self.root, self.paths, self.transform = Path(root), list(paths), transform
        lookup = {c: i for i, c in enumerate(classes)}
        self.targets = [lookup[c] for c in labels]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, item):
        from bmteach.images import load_image, safe_join

        index, seed = item if isinstance(item, tuple) else (item, None)
        image = load_image(safe_join(self.root, self.paths[index]))
        if seed is None:
            return self.transform(image), self.targets[index]
        with torch.random.fork_rng(devices=[]):
            seed_sample(seed)
            return self.transform(image), self.targets[index]


def seed_sample(seed: int) -> None:
    """torch.manual_seed(seed) for one sample's augmentation, without its cost: manual_seed also queues a lazy
    seeding of each accelerator not initialised in this process (CUDA, XPU, MTIA: never, in a loader worker),
    formatting a stack trace for each, about 0.5 ms a sample. The CPU generator gets the seed as before, and an
    initialised CUDA generator too (a GPU run with workers=0), so the random draws are those of manual_seed."""
    torch.default_generator.manual_seed(seed)
    if torch.cuda.is_initialized():
        torch.cuda.manual_seed_all(seed)


class SeededSampler(Sampler):
    """Wraps the balancing sampler: yields (index, per-sample seed) with seeds fixed by (seed, fold, epoch)."""

    def __init__(self, base: BalancedSampler, seed: int, fold: int):
        self.base, self.seed, self.fold, self.epoch = base, seed, fold, 0
        self.skip = 0  # samples already trained on in this epoch (resuming a stopped epoch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.base.set_epoch(epoch)

    def __iter__(self):
        start = derive_seed(self.seed, self.fold, self.epoch, _AUGMENT) * 1_000_003
        seeded = ((i, (start + n) % 2**62) for n, i in enumerate(self.base))
        return itertools.islice(seeded, self.skip, None)

    def __len__(self) -> int:
        return len(self.base)


def resolve_data_root(data: str) -> Path:
    """--data DIR, or 'default' for the embedded synthetic data set (generated on first use). DIR is accepted or
    refused by `data.find_class_root`, the rule the app's settings use too; manifest paths stay relative to DIR
    itself, as `python -m bmteach index DIR` writes them."""
    if data == "default":
        from bmteach.synth import ensure_default_dataset

        return Path(ensure_default_dataset(progress=None)).resolve()
    from bmteach.data import find_class_root

    find_class_root(data, required=True)
    return Path(data).expanduser().resolve()


def build_or_read_manifest(root: Path, manifest: str | None, num_folds: int, seed: int,
                           report: Callable[[str], None] | None = None) -> pd.DataFrame:
    """The manifest given with --manifest, or one built by indexing --data (stratified folds, seeded).
    report(sentence) hears about files skipped while indexing."""
    from bmteach import data

    if manifest:
        if not Path(manifest).is_file():
            raise UserError(f"Manifest not found: {manifest}.")
        df = data.read_manifest(manifest)
    else:
        result = data.index(root)
        if result.skipped and report:
            report(f"{len(result.skipped)} files skipped while indexing {root} (see `python -m bmteach index`).")
        df = data.build_manifest(result, k=num_folds, seed=seed)
    df = df.reset_index(drop=True)
    unknown = sorted(set(df["label"]) - set(ABBRS))
    if unknown:
        raise UserError(f"The manifest has labels outside the 21 classes: {', '.join(unknown)}.")
    return df


def check_folds(folds: list[int], manifest: pd.DataFrame, num_folds: int) -> None:
    present = set(int(f) for f in manifest["fold"])
    for k in folds:
        if not 0 <= k < num_folds:
            raise UserError(f"Unknown fold {k}: this split has folds 0..{num_folds - 1}.")
        if k not in present:
            raise UserError(f"Fold {k} has no images in the manifest.")
    if len(present) < 2:
        raise UserError("Cross-validation needs at least two folds with images.")


def split_fold(manifest: pd.DataFrame, fold: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(training images, held-out images) of one fold: train on every other fold, predict this one."""
    held_out = manifest["fold"].astype(int) == fold
    return manifest[~held_out], manifest[held_out]


def make_loader(dataset: Dataset, sampler: Sampler | None, batch_size: int, device: torch.device,
                workers: int) -> DataLoader:
    """Its own generator: each iter() of a loader draws a base seed for its workers from `generator`, the global
    RNG when None, but persistent workers reuse the first iterator, so from epoch 2 on (and after a resume) the
    dropout draws would depend on the number of workers. The base seed changes nothing here (every training sample
    is seeded by SeededSampler; evaluation draws nothing)."""
    on_gpu = device.type == "cuda"
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=False, num_workers=workers,
                      pin_memory=on_gpu, persistent_workers=workers > 0 and sampler is not None,
                      prefetch_factor=4 if workers > 0 else None, drop_last=False, generator=torch.Generator())


AUGMENT_ON = ("auto", "workers", "device")


def augment_on_device(device: torch.device, augment_on: str = "auto") -> bool:
    """Where the training augmentation runs. "workers": the loader workers ship augmented float32 images.
    "device": the workers only decode, resize and draw each image's parameters (the same draws), and the device
    augments the uint8 batch (augment.augment_batch): a quarter of the bytes through shared and pinned memory and
    about half the workers' work per image. "auto": the device on CUDA (where the workers were the bottleneck),
    the workers elsewhere (CPU runs stay as they were)."""
    if augment_on not in AUGMENT_ON:
        raise UserError(f"--augment-on must be one of {', '.join(AUGMENT_ON)}, not {augment_on!r}.")
    return augment_on == "device" or (augment_on == "auto" and device.type == "cuda")


def model_batch(x, device: torch.device) -> torch.Tensor:
    """A training batch on the device, channels_last: augmented images as they come, or (uint8 images, plans)
    from workers that left the augmentation to the device, augmented there."""
    if isinstance(x, (tuple, list)):
        images, plans = x
        x = augment_batch(images.to(device, non_blocking=True), plans.to(device, non_blocking=True))
    return x.to(device, non_blocking=True, memory_format=torch.channels_last)


def default_workers(device: torch.device) -> int:
    """GPU: most cores decode and augment (the GPU outruns a few of them); CPU: decode in the main process
    (the cores are busy training)."""
    return max(1, min(16, (os.cpu_count() or 2) - 2)) if device.type == "cuda" else 0


# --- one fold ----------------------------------------------------------------------------------------------

@dataclass
class FoldState:
    """What a training step needs; kept together so checkpointing is one function."""
    model: CellNet
    net: nn.Module                     # the model itself, or its DistributedDataParallel wrapper
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    epoch: int = 0                     # epochs completed
    history: list = field(default_factory=list)
    step: int = 0                      # steps done in the epoch under way (a stop mid-epoch saves it)
    sums: list = field(default_factory=lambda: [0.0, 0.0, 0])   # that epoch's loss x images, correct, images
    resume_rng: torch.Tensor | None = None   # the RNG state to continue a stopped epoch with


def amp_dtype(device: torch.device) -> torch.dtype | None:
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def build_fold_state(cfg: TrainConfig, fold: int, steps_per_epoch: int, device: torch.device, dist: Dist) -> FoldState:
    torch.manual_seed(derive_seed(cfg.seed, fold, 0, _INIT))
    model = create_model(cfg.model, num_classes=len(cfg.classes), pretrained=cfg.pretrained)
    if cfg.finetune == "head":
        for p in model.body.parameters():
            p.requires_grad_(False)
    if device.type == "cuda":  # one input size throughout: let cuDNN time its kernels once and keep the fastest
        torch.backends.cudnn.benchmark = True
    # channels_last: faster convolutions on GPUs with AMP and, measured, on CPU too (28 -> 37 images/s)
    model = model.to(device, memory_format=torch.channels_last)
    net: nn.Module = model
    if dist.world_size > 1:
        ids = [device.index] if device.type == "cuda" else None
        net = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    params = [p for p in model.parameters() if p.requires_grad]
    # fused AdamW on CUDA: one kernel for all parameters instead of a launch per tensor group (CPU keeps the default,
    # so CPU runs stay bit-identical to the shipped ones)
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                  fused=True if device.type == "cuda" else None)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, pct_start=0.2,
                                                    total_steps=max(1, cfg.epochs * steps_per_epoch))
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype(device) == torch.float16)
    return FoldState(model, net, optimizer, scheduler, scaler)


def save_training_state(state: FoldState, path: Path) -> None:
    """last.pt: tensors, lists, dicts, numbers only (weights_only=True loads it), written atomically."""
    blob = {
        "model": {k: v.detach().cpu() for k, v in state.model.state_dict().items()},
        "optimizer": state.optimizer.state_dict(),
        "scheduler": state.scheduler.state_dict(),
        "scaler": state.scaler.state_dict(),
        "epoch": state.epoch,
        "history": state.history,
        "step": state.step,
        "epoch_sums": [float(v) for v in state.sums],
        "rng": {"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
    }
    buf = io.BytesIO()
    torch.save(blob, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_training_state(state: FoldState, path: Path) -> None:
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        state.model.load_state_dict(blob["model"])
        state.optimizer.load_state_dict(blob["optimizer"])
        state.scheduler.load_state_dict(blob["scheduler"])
        state.scaler.load_state_dict(blob["scaler"])
    except Exception as exc:
        raise CheckpointError(f"{path} cannot be resumed from ({type(exc).__name__}); delete it to restart "
                              "this fold from scratch.") from None
    state.epoch, state.history = int(blob["epoch"]), list(blob["history"])
    state.step = int(blob.get("step", 0))
    if state.step:  # stopped mid-epoch: continue that epoch exactly where it was left
        sums = blob.get("epoch_sums") or [0.0, 0.0, 0]
        state.sums = [float(sums[0]), float(sums[1]), int(sums[2])]
        state.resume_rng = blob["rng"]["torch"]
    torch.set_rng_state(blob["rng"]["torch"])
    cuda_rng = blob["rng"].get("cuda") or []
    if torch.cuda.is_available() and len(cuda_rng) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda_rng)


class ProgressLog:
    """Appends progress records to fold<k>/progress.jsonl (main process only) and tracks speed and ETA."""

    def __init__(self, path: Path | None, fold: int, epochs: int, steps_per_epoch: int, batch_images: int):
        self.path, self.fold, self.epochs, self.steps = path, fold, epochs, steps_per_epoch
        self.batch_images = batch_images   # images per step over all processes
        self.mark, self.images, self.rate = time.time(), 0, None

    def count(self, images: int) -> None:
        self.images += images

    def write(self, epoch: int, step: int, loss: float, accuracy: float, **extra) -> dict:
        now = time.time()
        if self.images:
            current = self.images / max(now - self.mark, 1e-9)
            self.rate = current if self.rate is None else 0.7 * self.rate + 0.3 * current
        self.mark, self.images = now, 0
        remaining_steps = (self.epochs - epoch) * self.steps + (self.steps - step)
        per_step = self.batch_images / self.rate if self.rate else None
        record = {"fold": self.fold, "epoch": epoch, "step": step, "loss": round(loss, 6),
                  "accuracy": round(accuracy, 6), "images_per_s": round(self.rate or 0.0, 2),
                  "eta_s": round(remaining_steps * per_step, 1) if per_step else None,
                  "time": round(now, 3), "epochs": self.epochs, "steps_per_epoch": self.steps, **extra}
        if self.path is not None:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        return record


def train_one_epoch(state: FoldState, loader: DataLoader, device: torch.device, log: ProgressLog,
                    epoch: int, finetune: str, bar, world_size: int = 1, stoppable: bool = True) -> bool:
    """One pass over the epoch's balanced sample, from step state.step on (a stopped epoch continues). Returns
    True when the epoch is done, False when a stop was asked (SIGTERM): then state.step says how far it got.
    Either way state.sums holds the epoch's loss x images, correct predictions and images (this process's
    share). Loss and accuracy add up on the device and reach the host only at log points: a per-step
    `.item()` would make the CPU wait for the GPU every step."""
    state.net.train()
    if finetune == "head":
        state.model.body.eval()  # frozen body: keep its batch-norm statistics as they are
    dtype = amp_dtype(device)
    loss_fn = nn.CrossEntropyLoss()
    sums = torch.tensor(state.sums[:2], dtype=torch.float64, device=device)  # loss x images, correct
    seen = int(state.sums[2])
    log_every = max(1, min(50, log.steps // 10))
    batches = iter(loader)  # touches no global RNG (make_loader), but a resumed epoch restores it after this anyway
    if state.resume_rng is not None:
        torch.set_rng_state(state.resume_rng)
        state.resume_rng = None
    for step, (x, y) in enumerate(batches, start=state.step + 1):
        x = model_batch(x, device)
        y = y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            logits = state.net(x)
            loss = loss_fn(logits.float(), y)
        state.optimizer.zero_grad(set_to_none=True)
        state.scaler.scale(loss).backward()
        state.scaler.step(state.optimizer)
        state.scaler.update()
        state.scheduler.step()
        sums[0] += loss.detach().double() * len(y)
        sums[1] += (logits.argmax(1) == y).sum()
        seen += len(y)
        state.step = step
        log.count(len(y) * world_size)
        if bar is not None:
            bar.update(1)
        stop = stoppable and step < log.steps and runs.stop_requested()
        if step % log_every == 0 or step == log.steps or stop:
            total, correct = sums.tolist()  # the one host sync, at log points only
            state.sums = [total, correct, seen]
            if device.type == "cuda":  # device use, for the Training page
                runs.set_heartbeat_info(gpu_memory_gib=round(torch.cuda.max_memory_allocated(device) / 2**30, 1))
            if bar is not None:
                bar.set_postfix(loss=f"{total / seen:.3f}", acc=f"{correct / seen:.3f}")
            log.write(epoch + 1, step, total / seen, correct / seen, **({"phase": "stopped"} if stop else {}))
        if stop:
            return False
    total, correct = sums.tolist()
    state.sums = [total, correct, seen]
    return True


@torch.no_grad()
def predict_probabilities(model: CellNet, loader: DataLoader, device: torch.device) -> np.ndarray:
    """Softmax probabilities (n, C) in the loader's order, float64. Held-out predictions run in full float32
    (no autocast, no TF32) even on a GPU: they are the run's record, and the same weights must give the same
    probabilities on any machine (the app recomputes them on a CPU)."""
    model.eval()
    out = []
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        for x, _ in loader:
            x = x.to(device, non_blocking=True, memory_format=torch.channels_last)
            logits = model(x)
            out.append(torch.softmax(logits.float(), dim=1).double().cpu())
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    return torch.cat(out).numpy() if out else np.zeros((0, len(model.head.weight)))


def oof_frame(df: pd.DataFrame, probs: np.ndarray, classes: list[str], fold: int) -> pd.DataFrame:
    """oof.csv rows: path,true,pred,fold,prob_<ABBR>... (docs/formats.md)."""
    out = pd.DataFrame({"path": df["path"].to_numpy(), "true": df["label"].to_numpy(),
                        "pred": [classes[i] for i in probs.argmax(1)], "fold": fold})
    for j, c in enumerate(classes):
        out[f"prob_{c}"] = probs[:, j]
    return out


def fold_summary(oof: pd.DataFrame, history: list[dict]) -> dict:
    """meta.json metrics: held-out accuracy and mean per-class recall, and the last epoch's training figures."""
    hit = oof["true"] == oof["pred"]
    recalls = hit.groupby(oof["true"]).mean()
    last = history[-1] if history else {}
    return {"accuracy": round(float(hit.mean()), 6), "balanced_accuracy": round(float(recalls.mean()), 6),
            "n_val": int(len(oof)), "train_loss": last.get("loss"), "train_accuracy": last.get("accuracy"),
            "n_train_per_epoch": last.get("images")}


def train_fold(cfg: TrainConfig, run_dir: Path, root: Path, manifest: pd.DataFrame, fold: int,
               device: torch.device, workers: int = 0, dist: Dist | None = None,
               stop_after_epoch: int | None = None, augment_on: str = "auto") -> CellNet | None:
    """Train fold `fold` (resuming from its last.pt when present), then write its oof.csv, model.pt and meta.json.
    Returns the trained model, or None when stopped early by `stop_after_epoch` (a test hook: the effect of a
    kill right after that epoch's checkpoint). `augment_on`: see augment_on_device."""
    dist = dist or Dist()
    if runs.stop_requested():
        return None  # asked to stop before this fold began: nothing to save
    fold_dir = runs.fold_dir(run_dir, fold)
    if dist.main:
        fold_dir.mkdir(parents=True, exist_ok=True)
    train_df, val_df = split_fold(manifest, fold)
    on_device = augment_on_device(device, augment_on)
    dataset = CellImages(root, train_df["path"], train_df["label"],
                         train_transform(cfg.image_size, cfg.mean, cfg.std, cfg.stain_strength, on_device=on_device),
                         cfg.classes)
    balanced = BalancedSampler(dataset.targets, cfg.per_class, seed=derive_seed(cfg.seed, fold, _SAMPLER),
                               num_replicas=dist.world_size, rank=dist.rank)
    sampler = SeededSampler(balanced, cfg.seed, fold)
    loader = make_loader(dataset, sampler, cfg.batch_size, device, workers)
    state = build_fold_state(cfg, fold, len(loader), device, dist)
    holdout = holdout_loader(cfg, root, val_df, fold, device, workers)
    last_pt = fold_dir / runs.LAST
    if last_pt.is_file():
        load_training_state(state, last_pt)
    log = ProgressLog(fold_dir / runs.PROGRESS if dist.main else None, fold, cfg.epochs, len(loader),
                      cfg.batch_size * dist.world_size)
    bar = _progress_bar(fold, cfg.epochs, len(loader), state.epoch, state.step) if dist.main else None
    runs.set_heartbeat_info(fold=fold, device=str(device))
    stoppable = dist.world_size == 1  # under torchrun every rank would have to stop at the same step
    try:
        with _stop_on_sigterm(stoppable):
            while state.epoch < cfg.epochs:
                torch.manual_seed(derive_seed(cfg.seed, fold, state.epoch, _EPOCH))  # dropout etc.
                sampler.set_epoch(state.epoch)
                sampler.skip = state.step * cfg.batch_size
                done = train_one_epoch(state, loader, device, log, state.epoch, cfg.finetune, bar, dist.world_size,
                                       stoppable)
                sampler.skip = 0
                if not done:  # stopped mid-epoch: last.pt holds this step, --resume continues from it
                    if dist.main:
                        save_training_state(state, last_pt)
                    return None
                total, correct, seen = state.sums
                state.epoch, state.step, state.sums = state.epoch + 1, 0, [0.0, 0.0, 0]
                record = {"epoch": state.epoch, "loss": total / max(seen, 1), "accuracy": correct / max(seen, 1),
                          "images": len(sampler) * dist.world_size}
                if dist.main:
                    val_loss, val_acc = holdout_check(state.model, holdout, device)
                    record.update(val_loss=val_loss, val_accuracy=val_acc)
                    log.write(state.epoch, log.steps, record["loss"], record["accuracy"], phase="epoch",
                              val_loss=round(val_loss, 6), val_accuracy=round(val_acc, 6))
                state.history.append(record)
                if dist.main:
                    save_training_state(state, last_pt)
                if stop_after_epoch is not None and state.epoch >= stop_after_epoch and state.epoch < cfg.epochs:
                    return None
                if stoppable and runs.stop_requested() and state.epoch < cfg.epochs:
                    return None  # asked at an epoch's end: last.pt is written already
            if dist.main:
                finish_fold(cfg, state, fold_dir, root, val_df, fold, device, workers, log)
    finally:
        if bar is not None:
            bar.close()
    _barrier(dist)
    return state.model


def holdout_loader(cfg: TrainConfig, root: Path, val_df: pd.DataFrame, fold: int, device: torch.device,
                   workers: int) -> DataLoader:
    """A fixed sample of up to HOLDOUT_CHECK held-out images, the same after every epoch. Its own generator: the
    loader draws its seed from it, never from the global RNG, so training is bit-identical with or without it."""
    if len(val_df) > HOLDOUT_CHECK:
        rng = np.random.default_rng(derive_seed(cfg.seed, fold, 0, _HOLDOUT))
        val_df = val_df.iloc[np.sort(rng.choice(len(val_df), HOLDOUT_CHECK, replace=False))]
    sample = CellImages(root, val_df["path"], val_df["label"], eval_transform(cfg.image_size, cfg.mean, cfg.std),
                        cfg.classes)
    return DataLoader(sample, batch_size=cfg.batch_size * 2, shuffle=False, num_workers=min(workers, 4),
                      pin_memory=device.type == "cuda", generator=torch.Generator())


@torch.no_grad()
def holdout_check(model: CellNet, loader: DataLoader, device: torch.device) -> tuple[float, float]:
    """Mean loss and accuracy on the held-out sample (the model is left in eval mode; training sets it back)."""
    model.eval()
    dtype = amp_dtype(device)
    sums = torch.zeros(2, dtype=torch.float64, device=device)
    n = 0
    for x, y in loader:
        x = x.to(device, non_blocking=True, memory_format=torch.channels_last)
        y = y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            logits = model(x)
        sums[0] += nn.functional.cross_entropy(logits.float(), y, reduction="sum").double()
        sums[1] += (logits.argmax(1) == y).sum()
        n += len(y)
    loss, correct = sums.tolist()
    return loss / max(n, 1), correct / max(n, 1)


def finish_fold(cfg: TrainConfig, state: FoldState, fold_dir: Path, root: Path, val_df: pd.DataFrame, fold: int,
                device: torch.device, workers: int, log: ProgressLog) -> None:
    """Predict the held-out fold, then oof.csv -> model.pt + meta.json (complete) -> remove last.pt, in that
    order, so a kill at any point leaves either a resumable or a complete fold."""
    val = CellImages(root, val_df["path"], val_df["label"], eval_transform(cfg.image_size, cfg.mean, cfg.std),
                     cfg.classes)
    probs = predict_probabilities(state.model, make_loader(val, None, cfg.batch_size * 2, device, workers), device)
    oof = oof_frame(val_df, probs, cfg.classes, fold)
    atomic_write_text(fold_dir / runs.OOF, oof.to_csv(index=False, float_format=runs.OOF_FLOAT_FORMAT))
    summary = fold_summary(oof, state.history)
    meta = ModelMeta(model=cfg.model, classes=list(cfg.classes), image_size=cfg.image_size, mean=list(cfg.mean),
                     std=list(cfg.std), fold=fold, seed=cfg.seed, epoch=state.epoch, epochs=cfg.epochs,
                     complete=True, metrics=summary)
    save_checkpoint(state.model, meta, fold_dir / runs.MODEL)
    (fold_dir / runs.LAST).unlink(missing_ok=True)
    last = state.history[-1] if state.history else {"loss": float("nan"), "accuracy": float("nan")}
    log.write(cfg.epochs, log.steps, last["loss"], last["accuracy"], phase="done", val_accuracy=summary["accuracy"])


@contextmanager
def _stop_on_sigterm(enabled: bool = True):
    """While a fold trains, SIGTERM (the app's stop) only sets a flag that the loop reads after each step: the
    step finishes, last.pt is written and the process exits cleanly. Elsewhere SIGTERM interrupts as before."""
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, runs.request_stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _progress_bar(fold: int, epochs: int, steps: int, done_epochs: int, done_steps: int = 0):
    from tqdm import tqdm

    # disable=None: a bar on a terminal, nothing when the app runs us with output to a log file.
    return tqdm(total=epochs * steps, initial=done_epochs * steps + done_steps, desc=f"fold {fold}", unit="batch",
                disable=None, dynamic_ncols=True, leave=True)


# --- the whole run -----------------------------------------------------------------------------------------

def fold_complete(run_dir: Path, fold: int) -> bool:
    return fold_is_complete(runs.fold_dir(run_dir, fold))


def prepare_run(cfg: TrainConfig, run_dir: Path, manifest: pd.DataFrame, resume: bool) -> None:
    """Write config.json and manifest.csv for a new run; refuse to overwrite one unless resuming."""
    if (run_dir / runs.CONFIG).is_file() and not resume:
        raise UserError(f"{run_dir} already holds a run; add --resume to continue it or choose another --out.")
    from bmteach.data import write_manifest

    run_dir.mkdir(parents=True, exist_ok=True)
    write_manifest(manifest, run_dir / runs.MANIFEST)
    atomic_write_json(run_dir / runs.CONFIG, asdict(cfg))  # last: config.json marks a prepared run


def run_training(cfg: TrainConfig, run_dir: Path, manifest: pd.DataFrame, root: Path, device: torch.device,
                 workers: int | None = None, resume: bool = False, dist: Dist | None = None,
                 stop_after_epoch: int | None = None, report: Callable[[str], None] | None = None,
                 augment_on: str = "auto") -> int:
    """Train cfg.folds in turn into run_dir (the caller holds its lock). Joining the folds' predictions and
    scoring them is the caller's next step (runs.write_oof, evaluate.evaluate_run). report(sentence) hears about
    folds skipped as already complete. Returns an exit status."""
    dist = dist or Dist()
    workers = default_workers(device) if workers is None else workers
    check_folds(cfg.folds, manifest, cfg.num_folds)
    for fold in cfg.folds:
        if fold_complete(run_dir, fold):
            if dist.main and report:
                report(f"fold {fold}: already complete")
            continue
        if not resume and (runs.fold_dir(run_dir, fold) / runs.LAST).is_file():
            raise UserError(f"Fold {fold} of {run_dir} was interrupted; add --resume to continue it.")
        model = train_fold(cfg, run_dir, root, manifest, fold, device, workers, dist, stop_after_epoch, augment_on)
        if model is None:
            return 0
    return 0


# --- distributed and parallel folds ------------------------------------------------------------------------

def dist_from_env() -> Dist:
    """torchrun sets WORLD_SIZE, RANK and LOCAL_RANK; without them this is a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return Dist(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))


def init_distributed(dist: Dist, device: torch.device) -> torch.device:
    """Join the process group (nccl on CUDA, gloo on CPU); each process gets its own GPU."""
    import torch.distributed as td

    if device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    if not td.is_initialized():
        td.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return device


def _barrier(dist: Dist) -> None:
    if dist.world_size > 1:
        import torch.distributed as td

        if td.is_initialized():
            td.barrier()


def plan_parallel_folds(folds: list[int], n_gpus: int) -> list[list[int]]:
    """Folds dealt round-robin onto GPUs: [[0, 2, 4], [1, 3]] for 5 folds on 2 GPUs."""
    return [folds[g::n_gpus] for g in range(min(n_gpus, len(folds)))]


def run_parallel_folds(argv: list[str], folds: list[int]) -> int:
    """One `train` subprocess per GPU (CUDA_VISIBLE_DEVICES), each running its share of the folds; this process
    holds the run lock and joins and evaluates the predictions at the end."""
    n_gpus = torch.cuda.device_count()
    if n_gpus < 2:
        raise UserError(f"--parallel-folds needs at least 2 GPUs; {n_gpus} found. Train without it.")
    from bmteach.launch import bmteach_command, child_env, start_children

    # The parent prepared the run and holds its lock: the children resume it and leave the evaluation to it.
    children = [(bmteach_command("train", *argv, "--folds", ",".join(map(str, share)), "--resume"),
                 child_env(CUDA_VISIBLE_DEVICES=str(gpu), **{PARENT_LOCK_ENV: str(os.getpid())}))
                for gpu, share in enumerate(plan_parallel_folds(folds, n_gpus))]
    return start_children(children)

