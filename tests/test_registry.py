"""The registry's batched scoring equals the library classes on the same images (1e-5 rel)."""

import pytest
import torch

from losses import (
    LPIPS,
    REGISTRY,
    CLPLoss,
    DISTSLoss,
    HybridLoss,
    KDImageLoss,
    MetricError,
    PerceptualLoss,
    VGGPerceptualLoss,
    compute,
    lr_psnr,
    ms_ssim,
    psnr,
    ssim,
)
from losses.niqe import niqe
from losses.registry import get_metrics, resolve_options

REL = 1e-5
# fid and kid score sets (tests/test_fid.py); every other metric scores images.
PER_IMAGE = {name for name, metric in REGISTRY.items() if metric.kind == "image"}


@pytest.fixture()
def images():
    g = torch.Generator().manual_seed(11)
    sr, gt, teacher = (torch.rand(2, 3, 34, 42, generator=g) for _ in range(3))  # AlexNet needs ≥ 31
    return dict(sr=sr, gt=gt, lr=torch.rand(2, 3, 17, 21, generator=g), teacher=teacher)


def library_values(images, options):
    sr, gt, lr, teacher = images["sr"], images["gt"], images["lr"], images["teacher"]
    per = lambda fn: torch.stack([torch.as_tensor(fn(i)) for i in range(sr.shape[0])])  # noqa: E731
    one = lambda t, i: t[i : i + 1]  # noqa: E731
    hybrid = HybridLoss(perceptual_weight=0.3)
    kd = KDImageLoss(lambda_kd=0.5)
    table = {
        "psnr": lambda: psnr(sr, gt, **options["psnr"]),
        "ssim": lambda: ssim(sr, gt, **options["ssim"]),
        "l1": lambda: per(lambda i: (one(sr, i) - one(gt, i)).abs().mean()),
        "perceptual": lambda: per(lambda i: PerceptualLoss.from_preset("perceptual")(one(sr, i), one(gt, i))),
        "vgg_relu2_2": lambda: per(lambda i: VGGPerceptualLoss()(one(sr, i), one(gt, i))),
        "hybrid": lambda: per(lambda i: hybrid(one(sr, i), one(gt, i))["total"]),
        "hybrid.perceptual": lambda: per(lambda i: hybrid(one(sr, i), one(gt, i))["perceptual"]),
        "kd": lambda: per(lambda i: kd(one(sr, i), one(gt, i), one(teacher, i))["total"]),
        "kd.vgg": lambda: per(lambda i: kd(one(sr, i), one(gt, i), one(teacher, i))["vgg"]),
        "clp_vgg19": lambda: per(lambda i: CLPLoss("vgg19", 2.0)(one(sr, i), one(gt, i), one(lr, i))),
        "clp_dinov2": lambda: per(lambda i: CLPLoss("dinov2", 2.0)(one(sr, i), one(gt, i), one(lr, i))),
        "lpips_vgg": lambda: per(lambda i: LPIPS()(one(sr, i), one(gt, i))),
        "lpips_alex": lambda: per(lambda i: LPIPS("alex")(one(sr, i), one(gt, i))),
        "dists": lambda: per(lambda i: DISTSLoss()(one(sr, i), one(gt, i))),
        "lr_psnr": lambda: lr_psnr(sr, lr, **options["lr_psnr"]),
        "ms_ssim": lambda: ms_ssim(sr, gt, **options["ms_ssim"]),
        "niqe": lambda: per(lambda i: niqe(one(sr, i), **options["niqe"])["total"][0]),
    }
    return {name: value() for name, value in table.items() if name.split(".")[0] in options}  # only the metrics asked for


def test_every_metric_matches_library(weights_dir, images):
    # ms_ssim needs 176 px (test_ms_ssim_batched), niqe two 96² blocks (tests/test_niqe.py, test_service.py),
    # maniqa_kadid's crops 224² (tests/test_maniqa.py); ntire2025_perceptual reads niqe
    metrics = get_metrics(sorted(PER_IMAGE - {"ms_ssim", "niqe", "maniqa_kadid", "ntire2025_perceptual"}))
    options = resolve_options(metrics, dict(crop_border=2, y_channel=True, perceptual_weight=0.3, lambda_kd=0.5, loss_weight=2.0))
    with torch.no_grad():
        scores = compute(metrics, images, options)
        expected = library_values(images, options)
    for name, value in expected.items():
        assert scores[name].shape == (2,), name
        for a, b in zip(scores[name].tolist(), value.tolist()):
            assert abs(a - b) <= REL * max(abs(b), 1e-12), (name, a, b)


def test_no_metric_writes_to_its_inputs(weights_dir, images):
    """The service hands a decoded upload to the library as a view, not a copy (a batch of one)."""
    views = {role: image.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2) for role, image in images.items()}  # HWC memory
    before = {role: view.clone() for role, view in views.items()}
    metrics = get_metrics(sorted(PER_IMAGE - {"ms_ssim", "niqe", "maniqa_kadid", "ntire2025_perceptual"}))
    with torch.inference_mode():
        compute(metrics, views, resolve_options(metrics, dict(crop_border=2, y_channel=True)))
    for role, view in views.items():
        assert torch.equal(view, before[role]), role


def test_an_image_with_a_nan_pixel_scores_nan_in_every_metric_and_its_neighbour_as_before(weights_dir, images):
    """A diverged model's output: NaN in every per-image metric and component (none turns it into a
    number: MS-SSIM's power of the positive part once gave the 0 of a negative value), while the
    other image of the batch keeps its score. Weightless components (a weight of 0) stay 0."""
    g = torch.Generator().manual_seed(13)
    sized = {
        **{name: images for name in PER_IMAGE - {"ms_ssim", "niqe", "maniqa_kadid", "ntire2025_perceptual"}},
        "ms_ssim": dict(sr=torch.rand(2, 3, 176, 176, generator=g), gt=torch.rand(2, 3, 176, 176, generator=g)),
        "niqe": dict(sr=torch.rand(2, 3, 96, 192, generator=g)),
    }
    for name, clean in sized.items():
        metrics = get_metrics([name])
        options = resolve_options(metrics, {})
        broken = {role: image.clone() for role, image in clean.items()}
        broken["sr"][1, 0, 3, 4] = float("nan")
        with torch.no_grad():
            before, after = compute(metrics, clean, options), compute(metrics, broken, options)
        for key, value in after.items():
            assert value[0].item() == before[key][0].item(), key
            assert torch.isnan(value[1]) or (before[key][1].item() == 0.0 == value[1].item()), key


def test_ms_ssim_batched_equals_per_image():
    g = torch.Generator().manual_seed(12)
    sr, gt = torch.rand(2, 3, 181, 190, generator=g, dtype=torch.float64), torch.rand(2, 3, 181, 190, generator=g, dtype=torch.float64)
    sr = (gt + 0.1 * (sr - 0.5)).clamp(0, 1)
    metrics = get_metrics(["ms_ssim"])
    scores = compute(metrics, dict(sr=sr, gt=gt), resolve_options(metrics, dict(crop_border=2)))
    for i in range(2):
        assert abs(scores["ms_ssim"][i].item() - ms_ssim(sr[i : i + 1], gt[i : i + 1], crop_border=2).item()) <= 1e-12


def test_one_vgg16_pass_serves_perceptual_and_lpips(weights_dir, images, monkeypatch):
    from losses import get_backbone

    backbone = get_backbone("vgg16", "cpu")
    calls = []
    original = type(backbone).stream
    monkeypatch.setattr(
        type(backbone),
        "stream",
        lambda self, x, layers, normalize=True: calls.append((x.shape[0], tuple(layers))) or original(self, x, layers, normalize),
    )
    metrics = get_metrics(["perceptual", "lpips_vgg", "hybrid"])
    compute(metrics, images, resolve_options(metrics, dict(perceptual_weight=1.0)))
    assert len(calls) == 1  # SR and GT concatenated into one pass, read at the union of layers
    rows, layers = calls[0]
    assert rows == 2 * images["sr"].shape[0] and "relu5_3" in layers and "relu1_2" in layers


def test_options_and_names_are_validated():
    with pytest.raises(MetricError, match="valid:") as info:
        get_metrics(["psnr", "nope"])
    assert info.value.field == "metrics"
    metrics = get_metrics(["psnr"])
    with pytest.raises(MetricError, match="unknown option"):
        resolve_options(metrics, dict(lambda_kd=1.0))
    with pytest.raises(MetricError, match="crop_border"):
        resolve_options(metrics, dict(crop_border=-1))
    with pytest.raises(MetricError, match="y_channel"):
        resolve_options(metrics, dict(y_channel="yes"))


def test_missing_image_is_named(images):
    metrics = get_metrics(["kd"])
    with pytest.raises(MetricError) as info:
        compute(metrics, {"sr": images["sr"], "gt": images["gt"]}, resolve_options(metrics, {}))
    assert info.value.field == "teacher"


@pytest.mark.parametrize(
    "bad, message",
    [
        (lambda x: (x * 255).to(torch.uint8), r"dtype torch.uint8; images are floating-point in \[0, 1\]"),  # was PSNR ≈ −40 dB
        (lambda x: x[0], r"expected a \(B, C, H, W\) tensor, got shape \(3, \d+, \d+\)"),  # was 3 grayscale images
        (lambda x: x[:0], r"the batch is empty \(B = 0\)"),  # was an IndexError
    ],
)
def test_images_a_metric_would_misread_are_refused_by_role(images, bad, message):
    for metrics in (["psnr"], ["psnr", "ssim", "lr_psnr"]):
        chosen = get_metrics(metrics)
        for role in ("sr", "lr"):
            given = {**images, role: bad(images[role])}
            with pytest.raises(MetricError, match=message) as info:
                compute(chosen, given, resolve_options(chosen, {}))
            assert info.value.field == role and str(info.value).startswith(f"{role}: ")
    with pytest.raises(ValueError, match=message):
        psnr(bad(images["sr"]), bad(images["gt"]))


@pytest.mark.parametrize(
    "make, needs",
    [
        (lambda: PerceptualLoss.from_preset("perceptual"), ("sr", "gt")),
        (lambda: VGGPerceptualLoss(), ("sr", "gt")),
        (lambda: LPIPS(), ("sr", "gt")),
        (lambda: LPIPS("alex"), ("sr", "gt")),
        (lambda: DISTSLoss(), ("sr", "gt")),
        (lambda: HybridLoss(), ("sr", "gt")),
        (lambda: CLPLoss("vgg19"), ("sr", "gt", "lr")),
        (lambda: KDImageLoss(), ("sr", "gt", "teacher")),
    ],
)
def test_loss_classes_refuse_integer_images(weights_dir, images, make, needs):
    """Four of these used to take a uint8 tensor silently (cast to float: 0–255 read as 0–1)."""
    loss = make()
    as_uint8 = {role: (images[role] * 255).round().to(torch.uint8) for role in needs}
    with pytest.raises(ValueError, match=r"floating-point .*x / 255"):
        loss(*as_uint8.values())
    assert torch.isfinite(torch.as_tensor(_total(loss(*(images[role] for role in needs))))).all()


def _total(value):
    return value["total"] if isinstance(value, dict) else value


def test_backbones_refuse_channel_counts_other_than_1_or_3(weights_dir, images):
    four = {role: torch.cat([image, image[:, :1]], dim=1) for role, image in images.items()}
    chosen = get_metrics(["perceptual"])
    with pytest.raises(ValueError, match="RGB \\(C = 3\\) or grayscale \\(C = 1\\) images; got C = 4"):
        compute(chosen, four, resolve_options(chosen, {}))
    assert psnr(four["sr"], four["gt"]).shape == (2,)  # pixel metrics take any channel count


def test_grayscale_y_channel_equals_its_rgb_replica(images):
    """A C = 1 image with y_channel is read as R = G = B (Y = 16 + 219·v), which is what the server
    computes for a grayscale upload (decoded to RGB) and what BasicSR's colour-reading test gives."""
    gray_sr, gray_gt = images["sr"][:, :1], images["gt"][:, :1]
    rgb_sr, rgb_gt = gray_sr.expand(-1, 3, -1, -1), gray_gt.expand(-1, 3, -1, -1)
    for fn in (psnr, ssim):
        assert torch.allclose(fn(gray_sr, gray_gt, y_channel=True), fn(rgb_sr, rgb_gt, y_channel=True), rtol=0, atol=1e-12)


def test_catalogue_entries():
    entry = REGISTRY["clp_dinov2"].catalogue_entry()
    assert entry == dict(
        name="clp_dinov2",
        lower_is_better=True,
        needs=["sr", "gt", "lr"],
        options=dict(loss_weight=1.0),
        choices={},
        backbone="dinov2",
        description=entry["description"],
        convention=entry["convention"],
        kind="image",
        dataset=False,
        clip=False,
        available=True,
        unavailable_reason=None,
    )
    assert REGISTRY["fid"].catalogue_entry()["dataset"] is True and REGISTRY["fid"].catalogue_entry()["needs"] == ["sr"]
    assert REGISTRY["psnr"].catalogue_entry()["lower_is_better"] is False
    assert REGISTRY["hybrid"].backbones(dict(perceptual_weight=0.0)) == set()
