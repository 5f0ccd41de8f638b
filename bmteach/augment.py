"""Image transforms: the evaluation transform shared by training and inference, and the paper's augmentation."""
from __future__ import annotations

import torch
from torchvision.transforms import v2


def eval_transform(image_size: int, mean, std) -> v2.Compose:
    """PIL RGB image -> normalised float tensor (3, S, S). Inference and validation use exactly this."""
    return v2.Compose([
        v2.PILToTensor(),
        v2.Resize((image_size, image_size), antialias=True),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=list(mean), std=list(std)),
    ])
