"""Augmentation: the paper's geometry, stain augmentation and class balancing, with known answers."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from bmteach.augment import (
    STAIN_MATRIX,
    STAIN_MATRIX_INV,
    BalancedSampler,
    PaperAugment,
    StainAugment,
    apply_seeded,
    balanced_indices,
    derive_seed,
    eval_transform,
    flip_matrix,
    geometric_augment,
    inverse_affine_matrix,
    normalize_batch,
    perturb_stains,
    perturb_stains_fused,
    reference_augment,
    resize_transform,
    rgb_to_stains,
    sampling_grids,
    stain_map,
    stains_to_rgb,
    train_transform,
    warp_and_normalize,
)

MEAN, STD = (0.563, 0.496, 0.735), (0.242, 0.283, 0.177)


def random_pil(size=48, seed=0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def pure_stain_rgb(h: float, e: float) -> torch.Tensor:
    """A 1x1 image made of the given haematoxylin and eosin amounts (Beer-Lambert, our OD convention)."""
    stains = torch.tensor([h, e, 0.0], dtype=torch.float64).view(3, 1, 1)
    return stains_to_rgb(stains)


# --- training transform --------------------------------------------------------------------------------------

def test_train_transform_shape_dtype_and_seeding():
    t = train_transform(32, MEAN, STD)
    img = random_pil(60)
    torch.manual_seed(5)
    a = t(img)
    torch.manual_seed(5)
    b = t(img)
    torch.manual_seed(6)
    c = t(img)
    assert a.shape == (3, 32, 32) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_apply_seeded_is_reproducible_and_leaves_global_rng_alone():
    t = train_transform(32, MEAN, STD)
    img = random_pil()
    torch.manual_seed(0)
    expected_next = torch.rand(3)
    torch.manual_seed(0)
    first = apply_seeded(t, img, seed=11)
    assert torch.equal(torch.rand(3), expected_next)
    assert torch.equal(first, apply_seeded(t, img, seed=11))


def _half_turn(kind: str, size: int):
    """A one-pixel image and an augmentation fixed at a 180 deg turn without shift or shear: torchvision's
    transforms one by one ("reference") or the fused PaperAugment, whose flips live in the sampling grid."""
    if kind == "reference":
        x = torch.zeros(3, size, size)
        return x, 1.0, geometric_augment((0.0, 0.0, 0.0), rotation=(180.0, 180.0), shift=0.0, shear=0.0)
    x = torch.zeros(3, size, size, dtype=torch.uint8)
    return x, 255, PaperAugment((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), stain_strength=0.0, rotation=(180.0, 180.0),
                                shift=0.0, shear=0.0)


@pytest.mark.parametrize("kind", ["reference", "fused"])
def test_half_turn_plus_flips_puts_a_pixel_on_one_of_four_mirror_positions(kind):
    # rotation fixed at 180 deg, no shift/shear: a pixel at (r, c) must end at a mirror image of (r, c).
    size, r, c = 17, 3, 5
    x, on, aug = _half_turn(kind, size)
    x[:, r, c] = on
    allowed = {(r, c), (size - 1 - r, c), (r, size - 1 - c), (size - 1 - r, size - 1 - c)}
    seen = set()
    for seed in range(40):
        torch.manual_seed(seed)
        y = aug(x)
        pos = divmod(int(y[0].argmax()), size)
        assert pos in allowed and y[0].max() > 0.99
        seen.add(pos)
    assert len(seen) == 4  # both flips really happen


def test_uncovered_corners_get_the_mean_colour():
    x = torch.zeros(3, 32, 32)
    aug = geometric_augment(MEAN, rotation=(45.0, 45.0), shift=0.0, shear=0.0)
    y = aug(x)
    assert torch.allclose(y[:, 0, 0], torch.tensor(MEAN), atol=1e-6)


def test_shift_stays_within_a_quarter_of_the_image():
    size = 40
    x = torch.zeros(1, size, size)
    x[:, 18:22, 18:22] = 1.0   # a blob at the centre: rotation, flips and shear keep it there
    aug = geometric_augment((0.0,))
    largest = 0.0
    for seed in range(60):
        torch.manual_seed(seed)
        y = aug(x)[0]
        ys, xs = torch.nonzero(y > 0.5, as_tuple=True)
        dy, dx = ys.float().mean() - 19.5, xs.float().mean() - 19.5
        assert abs(dy) <= 0.25 * size + 1.5 and abs(dx) <= 0.25 * size + 1.5
        largest = max(largest, abs(dy), abs(dx))
    assert largest > 0.15 * size  # and it does shift


# --- stain augmentation --------------------------------------------------------------------------------------

def test_stain_round_trip_is_exact():
    x = torch.rand(2, 3, 9, 9, dtype=torch.float64)
    x[0, :, 0, 0] = 0.0
    x[0, :, 0, 1] = 1.0
    assert torch.allclose(stains_to_rgb(rgb_to_stains(x)), x, atol=1e-12)


def test_pure_stain_pixels_decompose_into_their_stains():
    rgb = pure_stain_rgb(0.6, 0.25)
    assert torch.allclose(rgb_to_stains(rgb).flatten(), torch.tensor([0.6, 0.25, 0.0], dtype=torch.float64),
                          atol=1e-9)
    # haematoxylin absorbs red most: a purple-blue pixel; eosin absorbs green most: a pink pixel.
    h_only, e_only = pure_stain_rgb(1.0, 0.0).flatten(), pure_stain_rgb(0.0, 1.0).flatten()
    assert h_only[2] > h_only[0] and e_only[0] > e_only[1] and e_only[2] > e_only[1]
    assert STAIN_MATRIX.shape == (3, 3)


def test_scaling_haematoxylin_leaves_an_eosin_only_pixel_unchanged():
    e_only = pure_stain_rgb(0.0, 0.4).float()
    h_only = pure_stain_rgb(0.3, 0.0).float()
    assert torch.allclose(perturb_stains(e_only, (2.0, 1.0), (0.0, 0.0)), e_only, atol=1e-6)
    doubled = perturb_stains(h_only, (2.0, 1.0), (0.0, 0.0))
    assert torch.allclose(doubled, pure_stain_rgb(0.6, 0.0).float(), atol=1e-6)


def test_zero_strength_is_identity_for_float_and_uint8():
    x = torch.rand(3, 16, 16)
    u = (torch.rand(3, 16, 16) * 255).to(torch.uint8)
    u[:, 0, 0], u[:, 0, 1] = 0, 255
    aug = StainAugment(0.0)
    assert torch.allclose(aug(x), x, atol=1e-6)
    assert torch.equal(aug(u), u)


def test_strong_stain_augmentation_keeps_range_and_changes_the_image():
    x = torch.rand(3, 16, 16)
    x[:, 0, 0], x[:, 0, 1] = 0.0, 1.0
    torch.manual_seed(0)
    y = StainAugment(1.0)(x)
    assert y.dtype == x.dtype and y.min() >= 0.0 and y.max() <= 1.0
    assert (y - x).abs().max() > 0.05
    u = (x * 255).to(torch.uint8)
    v = StainAugment(1.0)(u)
    assert v.dtype == torch.uint8 and v.shape == u.shape


def test_negative_strength_is_refused():
    with pytest.raises(ValueError):
        StainAugment(-0.1)


# --- class balancing -----------------------------------------------------------------------------------------

def test_balanced_epoch_draws_each_class_to_the_target():
    labels = [0] * 3 + [1] * 10 + [2] * 7
    idx = balanced_indices(labels, per_class=8, seed=1)
    lab = np.asarray(labels)[idx]
    assert [int((lab == c).sum()) for c in range(3)] == [8, 8, 8]
    # the small class is repeated whole (8 = 2 x 3 + 2): each image 2 or 3 times
    small = np.bincount(idx[lab == 0], minlength=3)
    assert sorted(small.tolist()) == [2, 3, 3]
    # the big class is subsampled without replacement
    assert np.bincount(idx[lab == 1]).max() == 1


def test_without_per_class_every_image_once():
    idx = balanced_indices([0, 0, 1, 2, 2, 2], None, seed=3)
    assert sorted(idx.tolist()) == list(range(6))


def test_sampler_is_seeded_per_epoch():
    labels = [0] * 20 + [1] * 5
    s = BalancedSampler(labels, per_class=10, seed=4)
    e0 = list(s)
    assert list(BalancedSampler(labels, per_class=10, seed=4)) == e0
    s.set_epoch(1)
    assert list(s) != e0
    assert len(s) == 20


def test_sampler_shards_like_distributed_sampler():
    labels = [0] * 7 + [1] * 4
    full = BalancedSampler(labels, per_class=5, seed=0)        # 10 samples per epoch
    r0 = BalancedSampler(labels, per_class=5, seed=0, num_replicas=3, rank=0)
    r1 = BalancedSampler(labels, per_class=5, seed=0, num_replicas=3, rank=1)
    r2 = BalancedSampler(labels, per_class=5, seed=0, num_replicas=3, rank=2)
    assert len(r0) == len(r1) == len(r2) == 4                  # ceil(10 / 3), padded to 12
    padded = r0.epoch_indices()
    assert len(padded) == 12 and padded[:10].tolist() == list(full)
    interleaved = [x for trio in zip(r0, r1, r2) for x in trio]
    assert interleaved == padded.tolist()


def test_derive_seed_separates_streams():
    assert derive_seed(0, 1, 2) == derive_seed(0, 1, 2)
    assert len({derive_seed(0, f, e) for f in range(5) for e in range(13)}) == 65
    assert 0 <= derive_seed(123456789, 4) < 2**31


# --- the fast training transform against its step-by-step definition ------------------------------------------

def test_fast_train_transform_matches_the_reference_draw_for_draw():
    """PaperAugment (one fused step) against reference_augment (torchvision's transforms one by one), from PIL
    images of several sizes through the resize: the same draws in the same order (the generator ends in the same
    state) and the same image up to float rounding (the warp's grid is built in another order: ~3e-5 px)."""
    worst = 0.0
    for size, source, strength in [(32, 48, 0.05), (57, 60, 0.05), (64, 40, 1.0), (40, 40, 0.0)]:
        fast = train_transform(size, MEAN, STD, stain_strength=strength)
        ref = train_transform(size, MEAN, STD, stain_strength=strength, reference=True)
        for seed in range(12):
            img = random_pil(source, seed=seed)
            torch.manual_seed(seed)
            expected, after_ref = ref(img), torch.rand(2)
            torch.manual_seed(seed)
            got, after_fast = fast(img), torch.rand(2)
            assert torch.equal(after_ref, after_fast)
            assert got.shape == expected.shape == (3, size, size) and got.dtype == torch.float32
            assert (got - expected).abs().mean() < 1e-5
            worst = max(worst, float((got - expected).abs().max()))
    assert worst < 2e-3  # normalised units (std ~0.2): well under a tenth of one grey level


def test_paper_augment_on_float_input_matches_the_reference():
    x = torch.rand(3, 36, 36)
    x[:, 0, 0], x[:, 0, 1] = 0.0, 1.0
    for seed in range(8):
        torch.manual_seed(seed)
        expected = reference_augment(MEAN, STD, stain_strength=0.5)(x.clone())
        torch.manual_seed(seed)
        got = PaperAugment(MEAN, STD, stain_strength=0.5)(x.clone())
        assert torch.allclose(got, expected, atol=2e-3) and (got - expected).abs().mean() < 1e-5


def test_fused_stains_equal_the_two_changes_of_basis():
    alpha, beta = (1.7, 0.6), (0.3, -0.2)   # far stronger than training uses
    x = torch.rand(3, 11, 13, dtype=torch.float64)
    x[:, 0, 0], x[:, 0, 1] = 0.0, 1.0
    assert torch.allclose(perturb_stains_fused(x, alpha, beta), perturb_stains(x, alpha, beta), atol=1e-12)
    u = torch.arange(256, dtype=torch.uint8).repeat(3, 1).view(3, 16, 16)   # every uint8 value
    u[1] = u[1].flip(-1)
    expected = perturb_stains(u.float() / 255.0, alpha, beta)
    got = perturb_stains_fused(u, alpha, beta)
    assert got.dtype == torch.float32 and torch.allclose(got, expected, atol=1e-6)
    k, e = stain_map(alpha, beta)
    od = torch.rand(3, 5, dtype=torch.float64)
    stains = (od.T @ STAIN_MATRIX_INV).T
    a, b = torch.tensor([*alpha, 1.0], dtype=torch.float64), torch.tensor([*beta, 0.0], dtype=torch.float64)
    two_steps = ((stains * a[:, None] + b[:, None]).T @ STAIN_MATRIX).T
    assert torch.allclose(k @ od + e[:, None], two_steps, atol=1e-12)


@pytest.mark.parametrize("hflip,vflip", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("angle,translate,shear", [(0.0, (0, 0), (0.0, 0.0)), (90.0, (3, -2), (0.0, 0.0)),
                                                   (37.5, (-5, 4), (8.0, 0.0)), (180.0, (0, 7), (-11.3, 0.0))])
def test_warp_with_folded_flips_equals_affine_then_flips_then_normalize(angle, translate, shear, hflip, vflip):
    from torchvision.transforms.v2 import functional as F

    x = torch.rand(3, 23, 30)
    expected = F.affine(x, angle=angle, translate=list(translate), scale=1.0, shear=list(shear),
                        interpolation=v2.InterpolationMode.BILINEAR, fill=list(MEAN))
    if hflip:
        expected = F.horizontal_flip(expected)
    if vflip:
        expected = F.vertical_flip(expected)
    expected = F.normalize(expected, list(MEAN), list(STD))
    m = torch.tensor([flip_matrix(inverse_affine_matrix(angle, translate, shear), hflip, vflip)], dtype=torch.float64)
    got = warp_and_normalize(x.unsqueeze(0), sampling_grids(m, 23, 30), torch.tensor(MEAN), torch.tensor(STD))[0]
    assert torch.allclose(got, expected, atol=1e-4)




def test_uint8_then_normalize_batch_is_eval_transform_exactly():
    t = eval_transform(40, MEAN, STD)
    images = [random_pil(size, seed=size) for size in (40, 53, 29)]
    batch = torch.stack([resize_transform(40)(im) for im in images])
    assert batch.dtype == torch.uint8
    assert torch.equal(normalize_batch(batch, MEAN, STD), torch.stack([t(im) for im in images]))
    tensors = torch.tensor(MEAN), torch.tensor(STD)
    assert torch.equal(normalize_batch(batch, *tensors), normalize_batch(batch, MEAN, STD))


def test_seed_sample_draws_what_manual_seed_draws():
    from bmteach.train import seed_sample

    for seed in (0, 7, 2**40 + 3):
        torch.manual_seed(seed)
        expected = torch.rand(5)
        torch.manual_seed(seed + 1)
        seed_sample(seed)
        assert torch.equal(torch.rand(5), expected)


def test_augmenting_on_the_device_equals_augmenting_in_the_worker():
    """The worker's half (PlannedAugment: uint8 image + plan) draws exactly what PaperAugment draws, and
    augment_batch over the collated batch gives each image PaperAugment's result."""
    from bmteach.augment import PLAN_SIZE, augment_batch

    in_worker = train_transform(40, MEAN, STD)
    planned = train_transform(40, MEAN, STD, on_device=True)
    images, plans, expected = [], [], []
    for seed in range(6):
        img = random_pil(52, seed=seed)
        torch.manual_seed(seed)
        expected.append(in_worker(img))
        after_worker = torch.rand(2)
        torch.manual_seed(seed)
        image, plan = planned(img)
        assert torch.equal(torch.rand(2), after_worker)
        assert image.dtype == torch.uint8 and image.shape == (3, 40, 40)
        assert plan.dtype == torch.float64 and plan.shape == (PLAN_SIZE,)
        images.append(image)
        plans.append(plan)
    got = augment_batch(torch.stack(images), torch.stack(plans))
    assert got.dtype == torch.float32 and got.shape == (6, 3, 40, 40)
    assert torch.allclose(got, torch.stack(expected), atol=1e-5)
