"""Saliency maps and their checks on models whose decisive pixels are known."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from torch import nn

from bmteach import explain, maps
from bmteach.models import CellNet, create_model

SIZE = 64
# The decisive square of the toy model, in pixels (aligned to its 4x4 pooling cells).
ROWS, COLS = slice(16, 32), slice(40, 56)


class SquareStage(nn.Module):
    """Channel sum (1x1 conv) -> 4x4 average pool -> times a spatial weight map that is 1 on the decisive square
    and 0 elsewhere. With `learnt=False` the spatial map is a fixed buffer: randomising the weights leaves it."""

    def __init__(self, learnt: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 1, bias=False)
        self.pool = nn.AvgPool2d(4)
        square = torch.zeros(1, 1, SIZE // 4, SIZE // 4)
        square[..., ROWS.start // 4:ROWS.stop // 4, COLS.start // 4:COLS.stop // 4] = 1.0
        if learnt:
            self.spatial = nn.Parameter(square)
        else:
            self.register_buffer("spatial", square)
        with torch.no_grad():
            self.conv.weight.fill_(1.0 / 3)

    def reset_parameters(self) -> None:
        if isinstance(self.spatial, nn.Parameter):
            nn.init.normal_(self.spatial)

    def forward(self, x):
        return self.spatial * self.pool(self.conv(x))


def toy_model(learnt: bool = True) -> CellNet:
    """A CellNet whose class-1 logit is 16 x (area share of the square) x mean over the square of the
    channel-mean input, i.e. proportional to the square's mean brightness; class 0's logit is always 0."""
    model = CellNet(nn.Sequential(SquareStage(learnt)), num_features=1, num_classes=2)
    with torch.no_grad():
        model.head.weight.copy_(torch.tensor([[0.0], [16.0]]))
        model.head.bias.zero_()
    return model.eval()


def toy_image(seed: int = 0) -> torch.Tensor:
    """Dim positive background with texture, a bright decisive square: class 1 with p = sigmoid(3) ~ 0.95."""
    g = torch.Generator().manual_seed(seed)
    x = 0.1 + 0.1 * torch.rand(1, 3, SIZE, SIZE, generator=g)
    x[..., ROWS, COLS] = 3.0
    return x


def share_in(m: np.ndarray, rows: slice, cols: slice) -> float:
    return float(m[rows, cols].sum() / m.sum())


def dilated(s: slice, by: int) -> slice:
    return slice(max(0, s.start - by), min(SIZE, s.stop + by))


@pytest.fixture(scope="module")
def seq():
    torch.manual_seed(123)
    return create_model("sequential", 21).eval()


def test_toy_model_logit_is_the_square_mean():
    x = toy_image()
    logits = toy_model()(x)
    assert logits[0, 0].item() == 0.0
    assert logits[0, 1].item() == pytest.approx(16 * (256 / SIZE**2) * 3.0, rel=1e-5)


@pytest.mark.parametrize("method", ["gradcam", "smoothgrad"])
def test_maps_have_input_shape_range_and_are_deterministic(seq, method):
    x = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    a = explain.METHODS[method](seq, x, 4)
    b = explain.METHODS[method](seq, x, 4)
    assert a.shape == (128, 128) and a.dtype == np.float32
    assert a.min() >= 0.0 and a.max() == pytest.approx(1.0)
    np.testing.assert_array_equal(a, b)


def test_gradcam_mass_sits_on_the_decisive_square():
    m = explain.gradcam(toy_model(), toy_image(), 1)
    assert share_in(m, ROWS, COLS) > 0.75                          # bilinear upsampling leaks a little...
    assert share_in(m, dilated(ROWS, 4), dilated(COLS, 4)) > 0.999  # ...but only into one pooling cell around it


def test_smoothgrad_mass_is_exactly_on_the_decisive_square():
    m = explain.smoothgrad(toy_model(), toy_image(), 1, samples=10)
    assert share_in(m, ROWS, COLS) == pytest.approx(1.0, abs=1e-6)


def test_gradcam_matches_a_hand_written_grad_cam(seq):
    """Grad-CAM by hand: weights = mean gradient over space at the last stage, ReLU(sum_k w_k A_k), bilinear."""
    x = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(2))
    acts = seq.body(x)
    logit = seq.head(seq.pool(acts).flatten(1))[0, 7]
    grads, = torch.autograd.grad(logit, acts)
    cam = torch.relu((grads.mean((2, 3), keepdim=True) * acts).sum(1, keepdim=True))
    cam = torch.nn.functional.interpolate(cam, size=(128, 128), mode="bilinear", align_corners=False)[0, 0]
    expected = (cam / cam.max()).detach().numpy()
    np.testing.assert_allclose(explain.gradcam(seq, x, 7), expected, atol=1e-5)


def test_smoothgrad_without_noise_is_the_plain_gradient(seq):
    x = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(3))
    xg = x.clone().requires_grad_()
    grad, = torch.autograd.grad(seq(xg)[0, 5], xg)
    expected = grad.abs().amax(1)[0]
    expected = (expected / expected.max()).numpy()
    np.testing.assert_allclose(explain.smoothgrad(seq, x, 5, noise=0.0, samples=3), expected, atol=1e-5)


def test_smoothgrad_reports_progress_in_batches_and_seed_matters(seq):
    x = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(4))
    calls = []
    a = explain.smoothgrad(seq, x, 2, samples=7, batch_size=3, progress=lambda d, n: calls.append((d, n)))
    assert calls == [(3, 7), (6, 7), (7, 7)]
    assert not np.array_equal(a, explain.smoothgrad(seq, x, 2, samples=7, batch_size=3, seed=1))


def test_contrast_map_uses_the_logit_difference():
    x, model = toy_image(), toy_model()
    a, b = explain.gradcam(model, x, 1), explain.gradcam(model, x, 0)
    assert b.max() == 0.0                               # class 0's logit never changes: no evidence anywhere
    np.testing.assert_allclose(explain.gradcam(model, x, 1, versus=0), a, atol=1e-6)  # logit1 - logit0 == logit1
    assert explain.gradcam(model, x, 0, versus=1).max() == 0.0  # nothing speaks for 0 rather than 1


def test_explain_refuses_batches_and_training_mode(seq):
    with pytest.raises(ValueError, match="one image"):
        explain.gradcam(seq, torch.zeros(2, 3, 32, 32), 0)
    model = create_model("sequential", 21)  # train mode
    with pytest.raises(ValueError, match="eval mode"):
        explain.gradcam(model, torch.zeros(1, 3, 32, 32), 0)


def test_an_inference_mode_tensor_can_be_explained(seq):
    with torch.inference_mode():
        x = torch.randn(1, 3, 64, 64)
    assert explain.gradcam(seq, x, 0).shape == (64, 64)


def test_rank_correlation_known_values():
    a = np.arange(16.0).reshape(4, 4)
    assert explain.rank_correlation(a, a) == pytest.approx(1.0)
    assert explain.rank_correlation(a, np.exp(a)) == pytest.approx(1.0)   # ranks only
    assert explain.rank_correlation(a, -a) == pytest.approx(-1.0)
    assert explain.rank_correlation(a, np.zeros_like(a)) == 0.0


def test_sanity_check_separates_learnt_from_fixed_maps():
    x = toy_image()
    learnt = toy_model(learnt=True)
    before = {k: v.clone() for k, v in learnt.state_dict().items()}
    result = explain.sanity_check(learnt, x, 1, method="smoothgrad", samples=5)
    assert abs(result.correlation) < 0.3          # the map depended on the learnt square: it passes
    for k, v in learnt.state_dict().items():       # the caller's model is untouched
        assert torch.equal(v, before[k]), k
    same = explain.rank_correlation(result.trained, explain.smoothgrad(learnt, x, 1, samples=5))
    assert same == pytest.approx(1.0)
    # The square of this one is a fixed buffer, not a learnt weight: its map survives randomisation (fails).
    fixed = explain.sanity_check(toy_model(learnt=False), x, 1, method="smoothgrad", samples=5)
    assert fixed.correlation > 0.9


def test_sanity_check_gradcam_on_the_toy():
    """Grad-CAM weights the activations, so a random model's map still follows bright input: with the bright
    square the randomised map keeps some of it; on evenly bright texture only the learnt square is left."""
    even = 1.0 + 0.2 * torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(7))
    result = explain.sanity_check(toy_model(), even, 1, method="gradcam")
    assert result.trained.shape == result.randomized.shape == (SIZE, SIZE)
    assert share_in(result.trained, dilated(ROWS, 4), dilated(COLS, 4)) > 0.999
    assert abs(result.correlation) < 0.3
    bright = explain.sanity_check(toy_model(), toy_image(), 1, method="gradcam")
    assert bright.correlation > result.correlation


def test_randomized_copy_changes_every_learnt_layer(seq):
    clone = explain.randomized_copy(seq, seed=5)
    assert not clone.training
    for (name, p), q in zip(seq.named_parameters(), clone.parameters()):
        if p.dim() > 1:  # conv and linear weights (BatchNorm's are 1 both fresh and reset)
            assert not torch.equal(p, q), name


def test_deletion_curve_falls_faster_for_the_true_map():
    model, x = toy_model(), toy_image()
    true_map = explain.gradcam(model, x, 1)
    random_map = np.random.default_rng(0).random((SIZE, SIZE))
    good = explain.deletion_curve(model, x, 1, true_map, steps=20, baseline="zero")
    bad = explain.deletion_curve(model, x, 1, random_map, steps=20, baseline="zero")
    assert good.fractions.shape == good.scores.shape == (21,)
    p_full = torch.sigmoid(torch.tensor(3.0)).item()
    assert good.scores[0] == pytest.approx(p_full, abs=1e-5)     # nothing removed yet
    assert good.scores[-1] == pytest.approx(0.5, abs=1e-5)       # everything replaced by 0: logit 0 vs 0
    assert np.all(np.diff(good.scores) <= 1e-6)                  # monotone on this toy
    assert 0.0 <= good.auc <= 1.0 and 0.0 <= bad.auc <= 1.0
    assert good.auc < bad.auc - 0.1
    assert good.scores[2] == pytest.approx(0.5, abs=0.02)        # the square (6% of pixels) is gone by 10%


def test_deletion_baselines():
    x = toy_image()
    assert torch.equal(explain.deletion_baseline(x, "zero"), torch.zeros_like(x))
    mean = explain.deletion_baseline(x, "mean")
    assert torch.allclose(mean[0, :, 0, 0], x.mean((2, 3))[0])
    blur = explain.deletion_baseline(x, "blur")
    assert blur.shape == x.shape and blur.std() < x.std()
    with pytest.raises(ValueError, match="baseline"):
        explain.deletion_baseline(x, "noise")


def test_mask_energy_known_shares():
    m = np.zeros((4, 4))
    m[:, :2] = 1.0
    left = np.zeros((4, 4), np.uint8)
    left[:, :2] = 2                                   # nucleus label counts as inside the cell
    assert maps.mask_energy(m, left) == pytest.approx(1.0)
    top = np.zeros((4, 4), np.uint8)
    top[:2] = 1
    assert maps.mask_energy(m, top) == pytest.approx(0.5)
    big = np.zeros((8, 8), np.uint8)
    big[:, :4] = 1
    # A 2x2 map [1, 0] per row resized bilinearly to 8 columns: 1, 1, .875, .625, .375, .125, 0, 0 -> 3.5 / 4.
    assert maps.mask_energy(np.array([[1.0, 0.0], [1.0, 0.0]]), big) == pytest.approx(0.875)
    assert np.isnan(maps.mask_energy(np.zeros((4, 4)), top))
    assert np.isnan(maps.mask_energy(m, np.zeros((4, 4), np.uint8)))  # no cell labelled


def test_overlay_blends_colour_map_over_image():
    image = np.full((10, 12, 3), 200, np.uint8)
    m = np.zeros((5, 6), np.float32)
    out = maps.overlay(image, m, alpha=0.0)
    assert out.dtype == np.uint8 and out.shape == (10, 12, 3)
    np.testing.assert_array_equal(out, image)
    full = maps.overlay(image, m, alpha=1.0, cmap="jet")
    np.testing.assert_array_equal(full[0, 0], [0, 0, 128])      # jet(0) is dark blue
    half = maps.overlay(image, np.ones((5, 6)), alpha=0.5, cmap="jet")
    np.testing.assert_array_equal(half[0, 0], [164, 100, 100])  # (200 + jet(1) = (128, 0, 0)) / 2


def test_gradcam_is_safe_beside_concurrent_inference(seq):
    """Captum hooks a private module, so another thread's forward passes of the shared model neither see the
    hook nor feed it their activations."""
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(6))
    batch = torch.randn(8, 3, 64, 64)
    expected_map = explain.gradcam(seq, x, 3)
    with torch.inference_mode():
        expected_out = seq(batch)
    errors, maps = [], []

    def infer():
        try:
            for _ in range(10):
                with torch.inference_mode():
                    assert torch.allclose(seq(batch), expected_out, atol=1e-5)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def cam():
        try:
            for _ in range(10):
                maps.append(explain.gradcam(seq, x, 3))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=f) for f in (infer, cam, infer, cam)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(maps) == 20
    for m in maps:
        np.testing.assert_allclose(m, expected_map, atol=1e-5)


def test_deletion_against_a_random_order_separates_a_true_map_from_noise():
    """Issue 13.2b: the raw area depends on the starting probability; the ratio to a random order does not."""
    model, x = toy_model(), toy_image()
    good = explain.deletion_vs_random(model, x, 1, explain.gradcam(model, x, 1), baseline="zero")
    noise = explain.deletion_vs_random(model, x, 1, np.random.default_rng(5).random((SIZE, SIZE)), baseline="zero")
    assert good.start == pytest.approx(torch.sigmoid(torch.tensor(3.0)).item(), abs=1e-5)
    assert good.ratio < 0.8 and 0.8 <= noise.ratio <= 1.2
    assert "faster than removing pixels in a random order" in explain.deletion_verdict(good, "Blast")
    assert "no faster than a random order" in explain.deletion_verdict(noise, "Blast")
    # the same map for a class that starts improbable (class 0: p ~ 0.05) is not praised for a small area
    low = explain.deletion_vs_random(model, x, 0, explain.gradcam(model, x, 1), baseline="zero")
    assert low.curve.auc < 0.5 and low.start < explain.LOW_START
    assert "says little about the map" in explain.deletion_verdict(low, "Monocyte")


def test_sanity_verdict_in_words():
    assert explain.sanity_verdict(0.1).startswith("The map depends on what the model learnt")
    assert "only in part" in explain.sanity_verdict(0.5)
    assert explain.sanity_verdict(0.9).startswith("The map mostly shows the image itself")


def test_colour_bar_runs_from_low_to_high_in_the_overlay_colours():
    bar = maps.colour_bar(100, 5)
    assert bar.shape == (5, 100, 3) and bar.dtype == np.uint8
    black = np.zeros((1, 2, 3), np.uint8)
    low, high = maps.overlay(black, np.zeros((1, 2)), 1.0), maps.overlay(black, np.ones((1, 2)), 1.0)
    assert np.array_equal(bar[0, 0], low[0, 0]) and np.array_equal(bar[0, -1], high[0, 0])
