"""Image transforms: the evaluation transform shared by training and inference, and the paper's augmentation.

Training images go through `train_transform`: resize, stain augmentation (haematoxylin/eosin-like components
perturbed, after Tellez et al. 2018), one random affine (rotation 0-180 deg, shift up to 25 %, shear up to
20 %), horizontal/vertical flips, normalisation. `BalancedSampler` draws each class to the same count per epoch
(the paper upsampled to about 25,000 images per class).

Randomness: the transforms draw from torch's global generator (train.py seeds it per fold and epoch, and the
data loader seeds its workers from a seeded generator); the sampler has its own seed. Same seed, same epoch.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch.utils.data import Sampler
from torchvision.transforms import v2

# Ruifrok & Johnston's optical-density vectors: haematoxylin-like (purple-blue nuclei) and eosin-like (pink
# cytoplasm, red cells). May-Grunwald-Giemsa is not H&E, but its azure/eosin pair separates the same way.
# The third vector (their cross product) completes an invertible basis and is left unperturbed.
_H = np.array([0.650, 0.704, 0.286])
_E = np.array([0.072, 0.990, 0.105])
_R = np.cross(_H, _E)
STAIN_MATRIX = torch.tensor(np.stack([v / np.linalg.norm(v) for v in (_H, _E, _R)]), dtype=torch.float64)
STAIN_MATRIX_INV = torch.linalg.inv(STAIN_MATRIX)

PAPER_ROTATION = (0.0, 180.0)       # degrees
PAPER_SHIFT = 0.25                  # fraction of the image size, each axis
PAPER_SHEAR = 0.20                  # shear factor; RandomAffine takes the angle atan(0.2) = 11.3 deg


def eval_transform(image_size: int, mean, std) -> v2.Compose:
    """PIL RGB image -> normalised float tensor (3, S, S). Inference and validation use exactly this."""
    return v2.Compose([
        v2.PILToTensor(),
        v2.Resize((image_size, image_size), antialias=True),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=list(mean), std=list(std)),
    ])


# --- stain augmentation ------------------------------------------------------------------------------------

def rgb_to_stains(rgb: torch.Tensor) -> torch.Tensor:
    """RGB in [0, 1], shape (..., 3, H, W) -> stain concentrations (..., 3, H, W): [haem, eosin, residual].

    Optical density uses (255*I + 1) / 256 so that black pixels stay finite and the map is exactly invertible.
    """
    rgb = rgb if rgb.is_floating_point() else rgb.float()
    od = -torch.log((rgb * 255.0 + 1.0) / 256.0)
    return torch.einsum("...chw,cs->...shw", od, STAIN_MATRIX_INV.to(rgb.dtype))


def stains_to_rgb(stains: torch.Tensor) -> torch.Tensor:
    """The inverse of `rgb_to_stains`, clipped to [0, 1] (same dtype)."""
    od = torch.einsum("...shw,sc->...chw", stains, STAIN_MATRIX.to(stains.dtype))
    return ((256.0 * torch.exp(-od) - 1.0) / 255.0).clamp(0.0, 1.0)


def perturb_stains(rgb: torch.Tensor, alpha, beta) -> torch.Tensor:
    """Scale and shift the haematoxylin and eosin components: c' = alpha * c + beta; alpha=(1,1), beta=(0,0)
    gives back the image. `rgb` is float in [0, 1]; the result has its dtype."""
    stains = rgb_to_stains(rgb)
    a = torch.tensor([alpha[0], alpha[1], 1.0], dtype=stains.dtype).view(3, 1, 1)
    b = torch.tensor([beta[0], beta[1], 0.0], dtype=stains.dtype).view(3, 1, 1)
    return stains_to_rgb(stains * a + b).to(rgb.dtype)


class StainAugment(v2.Transform):
    """Tellez et al. (2018) HED-style stain augmentation on image tensors (float in [0, 1] or uint8).

    Per image, each of the haematoxylin-like and eosin-like components is scaled by a factor drawn from
    U(1 - strength, 1 + strength) and shifted by U(-strength, strength) optical-density units; strength 0 is
    the identity. Values stay in range: the result is clipped to [0, 1] (or 0..255 for uint8).
    """

    def __init__(self, strength: float = 0.05):
        super().__init__()
        if strength < 0:
            raise ValueError("Stain augmentation strength must be >= 0.")
        self.strength = float(strength)

    def make_params(self, flat_inputs):
        s = self.strength
        draws = torch.rand(4) * 2.0 - 1.0      # four U(-1, 1) draws from torch's global generator
        return {"alpha": (1.0 + s * draws[0].item(), 1.0 + s * draws[1].item()),
                "beta": (s * draws[2].item(), s * draws[3].item())}

    def transform(self, inpt, params):
        if not isinstance(inpt, torch.Tensor) or inpt.ndim < 3 or inpt.shape[-3] != 3:
            return inpt
        if inpt.dtype == torch.uint8:
            out = perturb_stains(inpt.float() / 255.0, params["alpha"], params["beta"])
            return (out * 255.0).round().to(torch.uint8)
        return perturb_stains(inpt, params["alpha"], params["beta"])


# --- the training transform --------------------------------------------------------------------------------

def geometric_augment(mean, rotation=PAPER_ROTATION, shift: float = PAPER_SHIFT,
                      shear: float = PAPER_SHEAR) -> v2.Compose:
    """The paper's geometry as one affine warp (one interpolation) plus flips; the uncovered corners are filled
    with the data set's mean colour, which is 0 after normalisation."""
    shear_deg = math.degrees(math.atan(shear))
    return v2.Compose([
        v2.RandomAffine(degrees=rotation, translate=(shift, shift), shear=(-shear_deg, shear_deg),
                        interpolation=v2.InterpolationMode.BILINEAR, fill=[float(m) for m in mean]),
        v2.RandomHorizontalFlip(),
        v2.RandomVerticalFlip(),
    ])


def train_transform(image_size: int, mean, std, stain_strength: float = 0.05, rotation=PAPER_ROTATION,
                    shift: float = PAPER_SHIFT, shear: float = PAPER_SHEAR) -> v2.Compose:
    """PIL RGB image -> augmented, normalised float tensor (3, S, S). Deterministic under torch.manual_seed."""
    return v2.Compose([
        v2.PILToTensor(),
        v2.Resize((image_size, image_size), antialias=True),   # augment at the training size: cheaper
        v2.ToDtype(torch.float32, scale=True),
        StainAugment(stain_strength),
        geometric_augment(mean, rotation, shift, shear),
        v2.Normalize(mean=list(mean), std=list(std)),
    ])


def apply_seeded(transform, image, seed: int):
    """Apply a random transform with its own seed, leaving torch's global generator as it was (for showing
    reproducible augmented examples)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return transform(image)


# --- class balancing ---------------------------------------------------------------------------------------

def derive_seed(*parts: int) -> int:
    """A 31-bit seed from several integers (run seed, fold, epoch, purpose): independent streams per part."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0] & 0x7FFFFFFF)


def balanced_indices(labels, per_class: int | None, seed: int) -> np.ndarray:
    """One epoch of sample indices, shuffled. With `per_class`, each class present is drawn to exactly that count:
    classes with more images are subsampled without replacement, smaller classes are repeated whole and topped
    up without replacement (so every image appears floor or ceil(per_class / n) times). Without it, every index
    once."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    if per_class is None:
        return rng.permutation(len(labels))
    if per_class < 1:
        raise ValueError("--per-class must be at least 1.")
    chosen = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        repeats, rest = divmod(per_class, len(members))
        chosen.append(np.tile(members, repeats))
        chosen.append(rng.choice(members, size=rest, replace=False))
    return rng.permutation(np.concatenate(chosen))


class BalancedSampler(Sampler[int]):
    """Class-balanced epochs (`per_class` per class, or every image once when None), seeded per epoch, and
    sharded like DistributedSampler: the epoch list is padded to a multiple of `num_replicas` and replica `rank`
    takes every num_replicas-th index, so the shards are disjoint and together cover the epoch."""

    def __init__(self, labels, per_class: int | None = None, seed: int = 0, num_replicas: int = 1, rank: int = 0):
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside 0..{num_replicas - 1}.")
        self.labels = np.asarray(labels)
        self.per_class = per_class
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        total = len(self.labels) if per_class is None else per_class * len(np.unique(self.labels))
        self.total_size = math.ceil(total / num_replicas) * num_replicas

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def epoch_indices(self) -> np.ndarray:
        """The whole epoch (all replicas), padded by wrapping around."""
        idx = balanced_indices(self.labels, self.per_class, derive_seed(self.seed, self.epoch))
        pad = self.total_size - len(idx)
        return np.concatenate([idx, idx[:pad]]) if pad else idx

    def __iter__(self):
        return iter(self.epoch_indices()[self.rank::self.num_replicas].tolist())

    def __len__(self) -> int:
        return self.total_size // self.num_replicas
