"""Image transforms: the evaluation transform shared by training and inference, and the paper's augmentation.

Training images go through `train_transform`: resize, stain augmentation (haematoxylin/eosin-like components
perturbed, after Tellez et al. 2018), one random affine (rotation 0-180 deg, shift up to 25 %, shear up to
20 %), horizontal/vertical flips, normalisation. `BalancedSampler` draws each class to the same count per epoch
(the paper upsampled to about 25,000 images per class).

Speed: on a GPU the loader workers' augmentation is what limits training, so `PaperAugment` does all of it in one
fused step (about twice as fast per image as torchvision's transforms one by one); `reference_augment` keeps the
step-by-step definition it is tested against (same random draws, same images up to float rounding).

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


def resize_transform(image_size: int) -> v2.Compose:
    """PIL RGB image -> uint8 tensor (3, S, S): the first half of `eval_transform` and of `train_transform`.
    Loader workers ship this (a quarter of float32's bytes through shared and pinned memory); `normalize_batch`
    does the rest on the device."""
    return v2.Compose([v2.PILToTensor(), v2.Resize((image_size, image_size), antialias=True)])


def eval_transform(image_size: int, mean, std) -> v2.Compose:
    """PIL RGB image -> normalised float tensor (3, S, S). Inference and validation use exactly this."""
    return v2.Compose([
        resize_transform(image_size),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=list(mean), std=list(std)),
    ])


def normalize_batch(x: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 (..., 3, S, S) -> normalised float32 on x's device: the second half of `eval_transform` with its
    arithmetic (ToDtype: * (1 / 255); Normalize: - mean, / std), so resize_transform then normalize_batch equals
    eval_transform exactly. `mean`/`std`: sequences, or float32 tensors already on the device (no copy per batch:
    a copy from a list waits for the GPU)."""
    mean = torch.as_tensor(mean, dtype=torch.float32, device=x.device).view(-1, 1, 1)
    std = torch.as_tensor(std, dtype=torch.float32, device=x.device).view(-1, 1, 1)
    return x.to(torch.float32).mul_(1.0 / 255).sub_(mean).div_(std)


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


# log((v + 1) / 256) for each uint8 value v: minus the optical density rgb_to_stains computes, from a table
_NEG_OD_U8 = torch.log((torch.arange(256, dtype=torch.float64) + 1.0) / 256.0).float()
_NEG_OD_ON: dict = {}   # the table per device, copied once (a copy from the host per batch would wait for the GPU)


def _neg_od_table(device: torch.device) -> torch.Tensor:
    if device not in _NEG_OD_ON:
        _NEG_OD_ON[device] = _NEG_OD_U8.to(device)
    return _NEG_OD_ON[device]


def stain_map(alpha, beta) -> tuple[torch.Tensor, torch.Tensor]:
    """`perturb_stains` as one affine map in optical-density space: (K, e), float64, with od' = K @ od + e for
    each pixel's column of three densities. The stains are linear in the density and the perturbation is linear
    in the stains, so the two changes of basis and the scale-and-shift fold into one 3x3 matrix and an offset."""
    a = torch.tensor([alpha[0], alpha[1], 1.0], dtype=torch.float64)
    b = torch.tensor([beta[0], beta[1], 0.0], dtype=torch.float64)
    # row-vector form of rgb_to_stains and stains_to_rgb: stains = od @ M^-1, od' = (stains * a + b) @ M
    return (STAIN_MATRIX_INV @ torch.diag(a) @ STAIN_MATRIX).T, b @ STAIN_MATRIX


def perturb_stains_batch(images: torch.Tensor, k: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """Each image's stains changed by its own map (k: (B, 3, 3), e: (B, 3); see `stain_map`) in a few passes over
    (B, 3, H, W) images, uint8 (densities read from a table; float32 out) or float in [0, 1] (its dtype out)."""
    n = images.shape[0]
    if images.dtype == torch.uint8:
        dtype = torch.float32
        neg_od = _neg_od_table(images.device).index_select(0, images.reshape(-1).int()).view(n, 3, -1)
    else:
        dtype = images.dtype
        neg_od = torch.log((images.reshape(n, 3, -1) * 255.0 + 1.0) / 256.0)
    neg_out = torch.baddbmm(-e.to(dtype).view(n, 3, 1), k.to(dtype), neg_od)   # minus the new density
    return neg_out.exp_().mul_(256.0).sub_(1.0).div_(255.0).clamp_(0.0, 1.0).view(images.shape)


def perturb_stains_fused(image: torch.Tensor, alpha, beta) -> torch.Tensor:
    """`perturb_stains` on one (3, H, W) image (uint8 or float in [0, 1]) as one matrix product: `stain_map`."""
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"Expected a (3, H, W) image, got shape {tuple(image.shape)}.")
    k, e = stain_map(alpha, beta)
    return perturb_stains_batch(image.unsqueeze(0), k.unsqueeze(0), e.unsqueeze(0))[0]


# --- the training transform --------------------------------------------------------------------------------

def _paper_affine(mean, rotation, shift: float, shear: float) -> v2.RandomAffine:
    shear_deg = math.degrees(math.atan(shear))
    return v2.RandomAffine(degrees=rotation, translate=(shift, shift), shear=(-shear_deg, shear_deg),
                           interpolation=v2.InterpolationMode.BILINEAR, fill=[float(m) for m in mean])


def geometric_augment(mean, rotation=PAPER_ROTATION, shift: float = PAPER_SHIFT,
                      shear: float = PAPER_SHEAR) -> v2.Compose:
    """The paper's geometry as one affine warp (one interpolation) plus flips; the uncovered corners are filled
    with the data set's mean colour, which is 0 after normalisation."""
    return v2.Compose([_paper_affine(mean, rotation, shift, shear), v2.RandomHorizontalFlip(), v2.RandomVerticalFlip()])


def reference_augment(mean, std, stain_strength: float = 0.05, rotation=PAPER_ROTATION, shift: float = PAPER_SHIFT,
                      shear: float = PAPER_SHEAR) -> v2.Compose:
    """The training augmentation step by step with torchvision's transforms (float in [0, 1] in, normalised float
    out): the definition `PaperAugment` is held to by the tests, at about half its speed."""
    return v2.Compose([StainAugment(stain_strength), geometric_augment(mean, rotation, shift, shear),
                       v2.Normalize(mean=list(mean), std=list(std))])


def inverse_affine_matrix(angle: float, translate, shear) -> list[float]:
    """The 2x3 matrix taking an output pixel to the input pixel it samples (coordinates centred on the image),
    for a rotation by `angle` degrees, a shift and a shear (degrees) at scale 1: the formula of torchvision's
    private `_get_inverse_affine_matrix`, which v2.functional.affine uses."""
    rot, sx, sy = math.radians(angle), math.radians(shear[0]), math.radians(shear[1])
    a = math.cos(rot - sy) / math.cos(sy)
    b = -(a * math.tan(sx) + math.sin(rot))
    c = math.sin(rot - sy) / math.cos(sy)
    d = math.cos(rot) - c * math.tan(sx)
    m = [d, -b, 0.0, -c, a, 0.0]   # the inverse of [[a, b], [c, d]] (determinant 1)
    tx, ty = translate
    m[2] = -m[0] * tx - m[1] * ty
    m[5] = -m[3] * tx - m[4] * ty
    return m


def flip_matrix(m: list[float], hflip: bool, vflip: bool) -> list[float]:
    """The inverse matrix `m` followed by the flips: flipping the output mirrors the coordinate an output pixel
    starts from, so a flip is a sign change of one column of `m` instead of a copy of the image."""
    if hflip:
        m = [-m[0], m[1], m[2], -m[3], m[4], m[5]]
    if vflip:
        m = [m[0], -m[1], m[2], m[3], -m[4], m[5]]
    return m


def sampling_grids(m: torch.Tensor, height: int, width: int, dtype=torch.float32) -> torch.Tensor:
    """grid_sample's grids (B, H, W, 2) for inverse matrices `m` (B, 6) on torchvision's pixel-centre
    coordinates: its `_affine_grid`, built by broadcasting instead of a (H*W, 3) x (3, 2) product."""
    n, device = m.shape[0], m.device
    scaled = m.clone()
    scaled[:, :3] /= 0.5 * width    # grid_sample's [-1, 1] spans the image
    scaled[:, 3:] /= 0.5 * height
    s = scaled.to(dtype).view(n, 6, 1, 1)
    xs = torch.linspace((1.0 - width) * 0.5, (width - 1.0) * 0.5, width, dtype=dtype, device=device)
    ys = torch.linspace((1.0 - height) * 0.5, (height - 1.0) * 0.5, height, dtype=dtype, device=device).view(height, 1)
    grid = torch.empty(n, height, width, 2, dtype=dtype, device=device)
    torch.add(xs * s[:, 0], ys * s[:, 1] + s[:, 2], out=grid[..., 0])
    torch.add(xs * s[:, 3], ys * s[:, 4] + s[:, 5], out=grid[..., 1])
    return grid


def warp_and_normalize(rgb: torch.Tensor, grid: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Bilinear warp of (B, 3, H, W) float images with the mean colour filling what the warp uncovers, then
    Normalize (`mean`, `std`: (3,) or (B, 3)). torchvision samples a fourth all-ones channel (the coverage c) and
    fills as (warped - mean) * c + mean; Normalize then subtracts the mean again: both become
    (warped - mean) * c / std."""
    n, _, height, width = rgb.shape
    with_cover = torch.cat([rgb, torch.ones(n, 1, height, width, dtype=rgb.dtype, device=rgb.device)], dim=1)
    sampled = torch.nn.functional.grid_sample(with_cover, grid.to(rgb.dtype), mode="bilinear", padding_mode="zeros",
                                              align_corners=False)
    warped, covered = sampled[:, :3], sampled[:, 3:]
    return warped.sub_(mean.view(-1, 3, 1, 1)).mul_(covered).div_(std.view(-1, 3, 1, 1))


PLAN_SIZE = 24   # an image's augmentation plan: stain map K (9) and offset e (3), sampling matrix (6), mean, std


def augment_batch(images: torch.Tensor, plans: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) images, uint8 or float in [0, 1], each augmented by its plan (B, PLAN_SIZE) float64 from
    `PaperAugment.plan`: stains, warp with flips and mean fill, Normalize. The same code for one image in a loader
    worker (PaperAugment) and for a whole batch on the GPU (train.py, the augmentation on the device)."""
    n = images.shape[0]
    rgb = perturb_stains_batch(images, plans[:, :9].reshape(n, 3, 3), plans[:, 9:12])
    grid = sampling_grids(plans[:, 12:18], *images.shape[-2:], dtype=rgb.dtype)
    return warp_and_normalize(rgb, grid, plans[:, 18:21].to(rgb.dtype), plans[:, 21:24].to(rgb.dtype))


class PaperAugment(v2.Transform):
    """`reference_augment` (StainAugment, the random affine warp, the two random flips, Normalize) in one step:
    the same random draws in the same order and the same result up to float rounding, about twice as fast. The
    stain change is one 3x3 matrix in optical-density space (`stain_map`) with a uint8 pixel's density read from
    a table, the flips are folded into the warp's sampling grid, the grid is built by broadcasting, and the fill
    and the normalisation share one pass. Input: uint8, or float in [0, 1], (3, H, W); output: normalised float
    (float32 for uint8 input)."""

    def __init__(self, mean, std, stain_strength: float = 0.05, rotation=PAPER_ROTATION, shift: float = PAPER_SHIFT,
                 shear: float = PAPER_SHEAR):
        super().__init__()
        self.stain = StainAugment(stain_strength)
        self.affine = _paper_affine(mean, rotation, shift, shear)   # draws the geometry exactly as before
        self.mean = torch.tensor([float(v) for v in mean], dtype=torch.float64)
        self.std = torch.tensor([float(v) for v in std], dtype=torch.float64)

    def make_params(self, flat_inputs):
        # reference_augment's draws in its order: four for the stains, four for the affine, one per flip
        params = {**self.stain.make_params(flat_inputs), **self.affine.make_params(flat_inputs)}
        params["hflip"] = bool(torch.rand(1) < 0.5)   # RandomHorizontalFlip(p=0.5) flips when rand(1) < p
        params["vflip"] = bool(torch.rand(1) < 0.5)
        return params

    def plan(self, params) -> torch.Tensor:
        """The drawn parameters as what `augment_batch` applies: (PLAN_SIZE,) float64."""
        k, e = stain_map(params["alpha"], params["beta"])
        m = flip_matrix(inverse_affine_matrix(params["angle"], params["translate"], params["shear"]),
                        params["hflip"], params["vflip"])
        return torch.cat([k.reshape(9), e, torch.tensor(m, dtype=torch.float64), self.mean, self.std])

    def transform(self, inpt, params):
        if not isinstance(inpt, torch.Tensor) or inpt.ndim != 3 or inpt.shape[0] != 3:
            raise ValueError(f"PaperAugment takes a (3, H, W) image tensor, not {type(inpt).__name__} "
                             f"{tuple(getattr(inpt, 'shape', ()))}.")
        return augment_batch(inpt.unsqueeze(0), self.plan(params).unsqueeze(0))[0]


class PlannedAugment:
    """The loader worker's half of augmenting on the device: PaperAugment's draws, exactly, returned as
    (uint8 image, its plan) for `augment_batch` to apply to the whole batch on the GPU. The workers then only
    decode and resize, and ship a quarter of float32's bytes."""

    def __init__(self, augment: PaperAugment):
        self.augment = augment

    def __call__(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return image, self.augment.plan(self.augment.make_params([image]))


def train_transform(image_size: int, mean, std, stain_strength: float = 0.05, rotation=PAPER_ROTATION,
                    shift: float = PAPER_SHIFT, shear: float = PAPER_SHEAR, reference: bool = False,
                    on_device: bool = False) -> v2.Compose:
    """PIL RGB image -> augmented, normalised float tensor (3, S, S). Deterministic under torch.manual_seed.
    reference=True builds it from torchvision's step-by-step transforms (`reference_augment`; slower, same
    draws, same result to float rounding): what the tests and bench/ compare the fast path with.
    on_device=True stops before the pixel work: (uint8 (3, S, S), plan), for `augment_batch` on the device."""
    resize = resize_transform(image_size)  # augment at the training size: cheaper
    if reference:
        return v2.Compose([resize, v2.ToDtype(torch.float32, scale=True),
                           reference_augment(mean, std, stain_strength, rotation, shift, shear)])
    augment = PaperAugment(mean, std, stain_strength, rotation, shift, shear)
    return v2.Compose([resize, PlannedAugment(augment) if on_device else augment])


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
