"""PSNR/SSIM against scikit-image on its bundled photos. Tolerance: |Δ| ≤ 1e-6."""

import math

import numpy as np
import pytest
import torch
from skimage.color import rgb2ycbcr
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from losses import SSIMLoss, psnr, ssim

from .conftest import degrade, to_tensor

TOL = 1e-6


def reference(gt: np.ndarray, sr: np.ndarray, crop_border: int, y_channel: bool) -> tuple[float, float]:
    """scikit-image on the [0, 255] scale; Y via skimage's rgb2ycbcr (MATLAB's BT.601 matrix)."""
    if y_channel:
        gt, sr = rgb2ycbcr(gt)[..., 0], rgb2ycbcr(sr)[..., 0]
    else:
        gt, sr = gt.astype(np.float64), sr.astype(np.float64)
    if crop_border:
        gt, sr = gt[crop_border:-crop_border, crop_border:-crop_border], sr[crop_border:-crop_border, crop_border:-crop_border]
    channel_axis = None if y_channel else -1
    s = structural_similarity(
        gt, sr, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255, channel_axis=channel_axis
    )
    return peak_signal_noise_ratio(gt, sr, data_range=255), s


@pytest.mark.parametrize("crop_border,y_channel", [(0, False), (0, True), (1, False), (4, False), (4, True)])
def test_matches_scikit_image(photos, crop_border, y_channel):
    for index, gt in enumerate(photos):
        sr = degrade(gt, seed=index)
        ref_psnr, ref_ssim = reference(gt, sr, crop_border, y_channel)
        ours_psnr = psnr(to_tensor(sr), to_tensor(gt), crop_border=crop_border, y_channel=y_channel)
        ours_ssim = ssim(to_tensor(sr), to_tensor(gt), crop_border=crop_border, y_channel=y_channel)
        assert ours_psnr.dtype == torch.float64 and ours_psnr.shape == (1,)
        assert abs(ours_psnr.item() - ref_psnr) <= TOL, (gt.shape, ours_psnr.item(), ref_psnr)
        assert abs(ours_ssim.item() - ref_ssim) <= TOL, (gt.shape, ours_ssim.item(), ref_ssim)


def test_batch_gives_one_value_per_image(photos):
    gt = photos[0]
    batch_gt = torch.cat([to_tensor(gt)] * 3)
    batch_sr = torch.cat([to_tensor(degrade(gt, seed=s)) for s in range(3)])
    values = ssim(batch_sr, batch_gt)
    assert values.shape == (3,)
    for i in range(3):
        assert abs(values[i].item() - ssim(batch_sr[i : i + 1], batch_gt[i : i + 1]).item()) <= 1e-12


def test_identical_images(photos):
    x = to_tensor(photos[1])
    assert math.isinf(psnr(x, x).item()) and psnr(x, x).item() > 0
    assert abs(ssim(x, x).item() - 1.0) <= 1e-12


def test_y_channel_formula_by_hand():
    x = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64).view(1, 3, 1, 1).expand(1, 3, 16, 16)
    from losses.psnr_ssim import rgb_to_y

    expected = 16 + 65.481 * 0.2 + 128.553 * 0.5 + 24.966 * 0.9
    assert abs(rgb_to_y(x.double())[0, 0, 0, 0].item() - expected) <= 1e-9


def test_too_small_for_window():
    x = torch.rand(1, 3, 8, 8)
    with pytest.raises(ValueError, match="at least 11"):
        ssim(x, x)


def test_ssim_loss_is_differentiable_and_consistent(photos):
    gt, sr = to_tensor(photos[0]), to_tensor(degrade(photos[0], seed=7)).requires_grad_(True)
    loss = SSIMLoss()(sr, gt)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(sr.grad).all() and sr.grad.abs().sum() > 0
    # data range 1 on [0, 1] equals data range 255 on [0, 255]; float32 vs float64 rounding only.
    assert abs((1 - loss.item()) - ssim(sr.detach(), gt).item()) <= 1e-4


@pytest.mark.parametrize("crop_border", [0, 4])
def test_float64_inputs_match_scikit_image_to_1e12(photos, crop_border):
    """From float64 inputs nothing is rounded to float32, so the only differences are summation
    order: ≤ 1e-12 for SSIM (the SciPy CPU path and the torch autograd path alike) and for PSNR."""
    for index, gt in enumerate(photos):
        sr = degrade(gt, seed=index)
        ref_psnr, ref_ssim = reference(gt, sr, crop_border, False)
        x, y = (torch.from_numpy(a).permute(2, 0, 1)[None].double() / 255 for a in (sr, gt))
        assert abs(ssim(x, y, crop_border=crop_border).item() - ref_ssim) <= 1e-12
        assert abs(psnr(x, y, crop_border=crop_border).item() - ref_psnr) <= 1e-12
        with_grad = ssim(x.clone().requires_grad_(True), y, crop_border=crop_border)  # the torch path
        assert with_grad.requires_grad and abs(with_grad.item() - ref_ssim) <= 1e-12


def test_ssim_is_differentiable_through_the_metric(photos):
    x = to_tensor(degrade(photos[0], seed=3)).double().requires_grad_(True)
    ssim(x, to_tensor(photos[0]).double()).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


# --- the float64 promise, gradients on either side, refusals, output dtypes ---


def test_psnr_difference_is_exact_in_float64():
    """x − y is formed in float64 (exact for float32 inputs), never rounded to float32 first.
    1 − t for small t rounds in float32; a float32 difference would shift PSNR by ~1e-7 dB."""
    g = torch.Generator().manual_seed(5)
    x = torch.ones(2, 3, 40, 50)
    y = torch.rand(2, 3, 40, 50, generator=g) * 1e-3
    x64, y64 = x.double(), y.double()
    expected = -10.0 * torch.log10(((x64 - y64) ** 2).mean(dim=(1, 2, 3)))
    rounded = -10.0 * torch.log10(((x - y).double() ** 2).mean(dim=(1, 2, 3)))
    assert (rounded - expected).abs().max() > 1e-9  # the test can tell the two apart
    assert (psnr(x, y) - expected).abs().max() <= 1e-12
    assert (psnr(y, x) - expected).abs().max() <= 1e-12


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_pixel_metrics_of_half_precision_images_are_those_of_their_values(photos, dtype):
    """A bfloat16 batch (mixed-precision training) made PSNR and LR-PSNR raise NumPy's
    "Got unsupported ScalarType BFloat16"; every half value is exact in float64, so the scores
    are those of the same values in float64, to summation order."""
    import losses

    x, y = to_tensor(photos[0]).to(dtype), to_tensor(degrade(photos[0], seed=2)).to(dtype)
    scores = losses.score(x, y, lr=y[..., ::4, ::4], metrics=("psnr", "ssim", "lr_psnr"))
    exact = losses.score(x.double(), y.double(), lr=y[..., ::4, ::4].double(), metrics=("psnr", "ssim", "lr_psnr"))
    for name, value in scores.items():
        assert value.dtype == torch.float64 and (value - exact[name]).abs().max() <= 1e-9, name


@pytest.mark.parametrize("side", ["x", "y"])
def test_psnr_gradient_flows_through_either_argument(side):
    """With gradients wanted on either image, PSNR takes the autograd path: the same value as
    the host path and the gradient of −10·log10(mean((x − y)²)) written out."""
    g = torch.Generator().manual_seed(6)
    x, y = torch.rand(2, 3, 16, 18, generator=g, dtype=torch.float64), torch.rand(2, 3, 16, 18, generator=g, dtype=torch.float64)
    with torch.no_grad():
        host = psnr(x, y)
    leaf = (x if side == "x" else y).clone().requires_grad_()
    a, b = (leaf, y) if side == "x" else (x, leaf)
    value = psnr(a, b)
    assert value.grad_fn is not None and (value - host).abs().max() <= 1e-12
    (grad,) = torch.autograd.grad(value.sum(), leaf)
    hand_leaf = leaf.detach().clone().requires_grad_()
    ha, hb = (hand_leaf, y) if side == "x" else (x, hand_leaf)
    (expected,) = torch.autograd.grad((-10.0 * torch.log10(((ha - hb) ** 2).mean(dim=(1, 2, 3)))).sum(), hand_leaf)
    assert torch.allclose(grad, expected, rtol=1e-10, atol=0)


def test_crop_refusals_name_the_metric_and_the_largest_crop():
    from losses import lr_psnr, ms_ssim

    x = torch.rand(1, 3, 10, 12)
    with pytest.raises(
        ValueError, match="^crop_border=5 leaves 2×0 of a 12×10 image; PSNR needs at least 1×1, so the largest valid crop_border is 4$"
    ):
        psnr(x, x, crop_border=5)
    assert psnr(torch.rand(1, 3, 3, 3), torch.rand(1, 3, 3, 3), crop_border=1).shape == (1,)  # 1×1 left is enough
    big = torch.rand(1, 3, 180, 190)
    with pytest.raises(
        ValueError,
        match="^crop_border=3 leaves 184×174 of a 190×180 image; MS-SSIM needs at least 176×176, so the largest valid crop_border is 2$",
    ):
        ms_ssim(big, big, crop_border=3)
    with pytest.raises(
        ValueError, match="^crop_border=3 leaves 0×-1 of a 6×5 image; lr_psnr needs at least 1×1, so the largest valid crop_border is 2$"
    ):
        lr_psnr(torch.rand(1, 3, 20, 24), torch.rand(1, 3, 5, 6), crop_border=3)


def test_ms_ssim_y_channel_is_ms_ssim_of_bt601_luma(photos):
    """``y_channel=True`` equals MS-SSIM of the BT.601 luma (written out here) as 1-channel images."""
    from losses import ms_ssim

    gt = photos[0][:180, :190]
    sr = degrade(gt, 3)
    x, y = to_tensor(sr), to_tensor(gt)
    luma = lambda t: (16.0 + 65.481 * t[:, :1] + 128.553 * t[:, 1:2] + 24.966 * t[:, 2:]) / 255.0  # noqa: E731
    expected = ms_ssim(luma(x.double()), luma(y.double()))
    assert (ms_ssim(x, y, y_channel=True) - expected).abs().max() <= 1e-12
    assert (ms_ssim(x, y, y_channel=True) - ms_ssim(x, y)).abs().max() > 1e-4  # Y is not RGB


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ssim_loss_returns_the_input_dtype(dtype):
    g = torch.Generator().manual_seed(7)
    x, y = torch.rand(2, 3, 24, 24, generator=g, dtype=dtype), torch.rand(2, 3, 24, 24, generator=g, dtype=dtype)
    assert SSIMLoss()(x, y).dtype == dtype


def test_shape_refusals_say_what_was_given():
    x = torch.rand(1, 3, 8, 8)
    with pytest.raises(ValueError, match="^SSIM needs images of at least 11×11, got 8×8$"):
        ssim(x, x)
    with pytest.raises(ValueError, match=r"^images differ in shape: \(1, 3, 8, 8\) vs \(1, 3, 8, 9\)$"):
        psnr(x, torch.rand(1, 3, 8, 9))
    for y_channel in (False, True):  # a (C, H, W) image is not C grayscale images
        with pytest.raises(ValueError, match=r"^x: expected a \(B, C, H, W\) tensor, got shape \(3, 8, 8\) \(one image: x\[None\]\)$"):
            psnr(x[0], x[0], y_channel=y_channel)
    with pytest.raises(ValueError, match="^SSIM needs images of at least 11×11, got 9×8$"):
        SSIMLoss()(torch.rand(1, 3, 8, 9), torch.rand(1, 3, 8, 9))
    big = torch.rand(1, 3, 20, 30)
    with pytest.raises(
        ValueError, match="^crop_border=5 leaves 20×10 of a 30×20 image; SSIM needs at least 11×11, so the largest valid crop_border is 4$"
    ):
        ssim(big, big, crop_border=5)


def test_ms_ssim_of_a_batch_is_each_image_alone(photos):
    """Per-image values: the contrast-structure terms are averaged per image and channel, never
    across batch-mates."""
    from losses import ms_ssim

    pairs = [(to_tensor(degrade(p[:176, :176], seed)), to_tensor(p[:176, :176])) for seed, p in zip((1, 2), photos)]
    alone = torch.cat([ms_ssim(x, y) for x, y in pairs])
    together = ms_ssim(torch.cat([x for x, _ in pairs]), torch.cat([y for _, y in pairs]))
    assert (alone - together).abs().max() <= 1e-12 and (alone[0] - alone[1]).abs() > 1e-3
    with_grad = ms_ssim(torch.cat([x for x, _ in pairs]).double().requires_grad_(), torch.cat([y for _, y in pairs]))
    assert with_grad.grad_fn is not None and (with_grad - together).abs().max() <= 1e-10  # the autograd path too


def test_ssim_gradient_through_the_reference_matches_finite_differences():
    """With the reference (y) requiring gradients, SSIM takes the autograd path: the host path's
    value, and a gradient equal to central differences (float64, step 1e-6) at sampled pixels."""
    g = torch.Generator().manual_seed(8)
    x, y = torch.rand(1, 3, 16, 16, generator=g, dtype=torch.float64), torch.rand(1, 3, 16, 16, generator=g, dtype=torch.float64)
    with torch.no_grad():
        host = ssim(x, y)
    leaf = y.clone().requires_grad_()
    value = ssim(x, leaf)
    assert value.grad_fn is not None and (value - host).abs().max() <= 1e-12
    (grad,) = torch.autograd.grad(value.sum(), leaf)
    for index in ((0, 0, 0, 0), (0, 1, 7, 9), (0, 2, 15, 3)):
        step = torch.zeros_like(y)
        step[index] = 1e-6
        with torch.no_grad():
            numeric = (ssim(x, y + step) - ssim(x, y - step)).item() / 2e-6
        assert abs(grad[index].item() - numeric) <= 1e-7 * max(1.0, abs(numeric))
