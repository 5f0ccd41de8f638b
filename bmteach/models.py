"""Models: one `create_model` entry, and checkpoints as a weights-only state_dict with meta.json beside it.

Every model exposes the same three parts so training, inference and explanation need no special cases:
  body      the convolutional stages; its last child is the last convolutional stage (Grad-CAM's layer)
  features  body -> global average pool -> flat penultimate features (2048-d for ResNeXt-50)
  head      the linear classifier
"""
from __future__ import annotations

import json
import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from bmteach.classes import ABBRS
from bmteach.errors import CheckpointError
from bmteach.runs import META, MODEL
from bmteach.storage import atomic_write_bytes, atomic_write_json

# RGB mean/std of the full data set (0-1 scale); the synthetic cells are calibrated to the same statistics.
DATASET_MEAN = (0.563, 0.496, 0.735)
DATASET_STD = (0.242, 0.283, 0.177)

# Input sizes a checkpoint may ask for: below 16 px the sequential CNN's three poolings leave nothing to see; above
# 1024 px one image's activations take gigabytes (60,000 px asked for 10.8 GB), and the data set's cells are 250 px.
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 16, 1024


@dataclass
class ModelMeta:
    """Everything needed to rebuild and use a checkpoint; saved as meta.json beside model.pt."""
    model: str
    classes: list[str] = field(default_factory=lambda: list(ABBRS))
    image_size: int = 128
    mean: list[float] = field(default_factory=lambda: list(DATASET_MEAN))
    std: list[float] = field(default_factory=lambda: list(DATASET_STD))
    fold: int | None = None
    seed: int = 0
    epoch: int = 0
    epochs: int = 0
    complete: bool = False
    metrics: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelMeta":
        """Validated, not trusted: every field is checked for type, range and length (meta.json comes from disk,
        maybe hand-edited or from elsewhere); a bad one is a CheckpointError naming the field. Unknown keys are
        ignored, missing ones take the defaults."""
        if not isinstance(d, dict):
            raise CheckpointError(f"it holds {type(d).__name__ if d is not None else 'null'} instead of an object "
                                  "of named fields")
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        if "model" not in known:
            raise CheckpointError("it names no model")
        meta = cls(**known)
        meta.validate()
        return meta

    def validate(self) -> None:
        """Raise CheckpointError (a clause, no path) on the first field that is not what a checkpoint needs."""
        if not isinstance(self.model, str) or self.model not in MODEL_NAMES:
            raise CheckpointError(f"it names an unknown model {self.model!r} (known: {', '.join(MODEL_NAMES)})")
        _check_classes(self.classes)
        if not _is_int(self.image_size) or not MIN_IMAGE_SIZE <= self.image_size <= MAX_IMAGE_SIZE:
            raise CheckpointError(f"image_size must be a whole number of pixels from {MIN_IMAGE_SIZE} to "
                                  f"{MAX_IMAGE_SIZE}, not {self.image_size!r}")
        _check_channels("mean", self.mean, low=0.0, high=1.0)
        _check_channels("std", self.std, low=0.0, high=1.0, open_low=True)
        if self.fold is not None and (not _is_int(self.fold) or self.fold < 0):
            raise CheckpointError(f"fold must be a fold number (0, 1, ...) or null, not {self.fold!r}")
        for name in ("seed", "epoch", "epochs"):
            value = getattr(self, name)
            if not _is_int(value) or value < 0:
                raise CheckpointError(f"{name} must be a whole number of at least 0, not {value!r}")
        if not isinstance(self.complete, bool):
            raise CheckpointError(f"complete must be true or false, not {self.complete!r}")
        if not isinstance(self.metrics, dict):
            raise CheckpointError(f"metrics must be an object, not {type(self.metrics).__name__}")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_classes(classes) -> None:
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise CheckpointError("classes must be a list of class abbreviations such as \"BLA\"")
    if len(classes) < 2:
        raise CheckpointError(f"classes must name at least 2 classes, not {len(classes)}")
    unknown = [c for c in classes if c not in ABBRS]
    if unknown:
        raise CheckpointError(f"classes has names outside the 21 classes: {', '.join(map(repr, unknown[:5]))}")
    doubled = sorted({c for c in classes if classes.count(c) > 1})
    if doubled:
        raise CheckpointError(f"classes names {', '.join(doubled)} more than once")


def _check_channels(name: str, values, low: float, high: float, open_low: bool = False) -> None:
    """mean/std: one finite number per RGB channel within [low, high] (std above 0), on the 0-1 pixel scale."""
    if not isinstance(values, (list, tuple)) or len(values) != 3:
        count = len(values) if isinstance(values, (list, tuple)) else type(values).__name__
        raise CheckpointError(f"{name} must hold 3 numbers (R, G, B), not {count}")
    for v in values:
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) \
                or v > high or v < low or (open_low and v <= low):
            bound = f"above {low:g}" if open_low else f"from {low:g}"
            raise CheckpointError(f"{name} must hold numbers {bound} to {high:g} (0-1 pixel scale), not {v!r}")


class CellNet(nn.Module):
    """body -> global average pool -> head; `forward_features` gives the penultimate features."""

    def __init__(self, body: nn.Sequential, num_features: int, num_classes: int, dropout: float = 0.0):
        super().__init__()
        self.body = body
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(num_features, num_classes)
        self.num_features = num_features

    @property
    def cam_layer(self) -> nn.Module:
        """The last convolutional stage: where Grad-CAM looks."""
        return self.body[-1]

    def forward_features(self, x: torch.Tensor, tap: nn.Module | None = None) -> torch.Tensor:
        """Penultimate features; `tap` (an identity module) sees the last stage's output, so Grad-CAM can hook
        a private module instead of the shared model's own layer."""
        stage = self.body(x)
        return self.pool(tap(stage) if tap is not None else stage).flatten(1)

    def forward(self, x: torch.Tensor, tap: nn.Module | None = None) -> torch.Tensor:
        return self.head(self.dropout(self.forward_features(x, tap)))


def _conv_block(cin: int, cout: int, pool: bool) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


def sequential_cnn(num_classes: int = 21, widths=(32, 64, 96, 128, 128)) -> CellNet:
    """A compact plain CNN (~0.33 M parameters), the counterpart of the paper's 303,694-parameter model.

    Only the first three blocks pool, so the last stage keeps 1/8 of the input resolution (16x16 at 128 px):
    Grad-CAM maps then resolve the cell instead of smearing a 6x6 grid over its neighbours, for ~15% more compute.
    """
    blocks, cin = [], 3
    for i, cout in enumerate(widths):
        blocks.append(_conv_block(cin, cout, pool=i < len(widths) - 2))
        cin = cout
    return CellNet(nn.Sequential(*blocks), cin, num_classes, dropout=0.2)


def resnext50(num_classes: int = 21, pretrained: bool = False) -> CellNet:
    """torchvision's resnext50_32x4d (cardinality 32), 2048-d features, a new 21-way head."""
    from torchvision.models import ResNeXt50_32X4D_Weights, resnext50_32x4d

    weights = None
    if pretrained:
        weights = ResNeXt50_32X4D_Weights.IMAGENET1K_V2
    try:
        net = resnext50_32x4d(weights=weights)
    except Exception as exc:  # no cache and no internet: say so instead of a urllib traceback
        raise CheckpointError(
            "ImageNet weights for ResNeXt-50 are not in torchvision's cache and could not be downloaded; "
            f"train without --pretrained or place the file in {torch.hub.get_dir()}/checkpoints ({exc})."
        ) from None
    body = nn.Sequential(OrderedDict(
        conv1=net.conv1, bn1=net.bn1, relu=net.relu, maxpool=net.maxpool,
        layer1=net.layer1, layer2=net.layer2, layer3=net.layer3, layer4=net.layer4,
    ))
    return CellNet(body, net.fc.in_features, num_classes)


def _sequential(num_classes: int = 21, pretrained: bool = False) -> CellNet:
    if pretrained:
        raise CheckpointError("The sequential model has no pretrained weights; drop --pretrained.")
    return sequential_cnn(num_classes)


# --- the model registry ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelSpec:
    """A model bmteach can train: how to build it and the training defaults it was tuned with."""
    name: str
    factory: Callable[..., CellNet]    # factory(num_classes, pretrained=False) -> CellNet
    image_size: int                    # input size the model was designed for
    batch_size: int
    lr: float                          # peak learning rate of the one-cycle schedule (AdamW)


# ResNeXt-50 at the data set's native 250 px as in the paper; the small sequential CNN at 128 px so the demo run
# trains on a laptop CPU.
MODELS: dict[str, ModelSpec] = {spec.name: spec for spec in (
    ModelSpec("sequential", _sequential, image_size=128, batch_size=64, lr=3e-3),
    ModelSpec("resnext50", resnext50, image_size=250, batch_size=64, lr=1e-3),
)}
MODEL_NAMES = tuple(MODELS)


def create_model(name: str, num_classes: int = 21, pretrained: bool = False) -> CellNet:
    """The one entry point for every model bmteach trains or loads."""
    spec = MODELS.get(name)
    if spec is None:
        raise CheckpointError(f"Unknown model {name!r}: choose one of {', '.join(MODEL_NAMES)}.")
    return spec.factory(num_classes, pretrained=pretrained)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def pick_device(device: str = "auto") -> torch.device:
    """'auto' picks CUDA when present; asking for CUDA without it is a clear error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise CheckpointError("CUDA was requested but no GPU is available; use --device cpu or auto.")
    return torch.device(device)


# --- checkpoints -------------------------------------------------------------------------------------------

def save_checkpoint(model: nn.Module, meta: ModelMeta, path: str | Path) -> None:
    """model.pt (state_dict only, loadable with weights_only=True) and meta.json beside it, both atomic."""
    import io

    path = Path(path)
    buf = io.BytesIO()
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())
    atomic_write_json(path.with_name(META), asdict(meta))


def read_meta(path: str | Path) -> ModelMeta:
    """meta.json of a checkpoint (path may be the model.pt, meta.json or their folder)."""
    path = Path(path)
    meta_path = path / META if path.is_dir() else path.with_name(META)
    if not meta_path.is_file():
        raise CheckpointError(f"No meta.json beside the checkpoint {path}; it cannot be loaded without it.")
    try:
        raw = json.loads(meta_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise CheckpointError(f"{meta_path} is not valid checkpoint metadata (not JSON: {exc}).") from None
    except OSError as exc:
        raise CheckpointError(f"{meta_path} cannot be read ({exc.strerror or exc}).") from None
    try:
        return ModelMeta.from_dict(raw)
    except CheckpointError as exc:
        raise CheckpointError(f"{meta_path} is not valid checkpoint metadata: {exc}.") from None


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[CellNet, ModelMeta]:
    """Rebuild the model from meta.json and load model.pt with weights_only=True; eval mode, on `device`."""
    path = Path(path)
    if path.is_dir():
        path = path / MODEL
    meta = read_meta(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint not found: {path}.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path} is not a readable checkpoint (corrupt or not a weights file: "
                              f"{type(exc).__name__}).") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} does not hold a model state_dict.")
    model = create_model(meta.model, num_classes=len(meta.classes))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError:
        raise CheckpointError(
            f"{path} does not match its meta.json (model {meta.model}, {len(meta.classes)} classes)."
        ) from None
    return model.to(device).eval(), meta
