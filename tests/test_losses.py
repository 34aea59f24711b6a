"""Backbone losses against independent references built from torchvision / lpips / torch.nn
with the same generated weights. Tolerances are stated per test."""

import copy

import pytest
import torch
import torch.nn.functional as F
import torchvision

from losses import (
    LPIPS,
    CLPLoss,
    FeatureKDLoss,
    HybridLoss,
    KDImageLoss,
    PerceptualLoss,
    VGGPerceptualLoss,
    clear_shared_backbones,
    get_backbone,
)

from .conftest import generated_vgg_state

REL = 1e-5
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def rel_close(a, b, rel=REL):
    a, b = float(a), float(b)
    return abs(a - b) <= rel * max(abs(b), 1e-12)


@pytest.fixture(scope="module")
def tv_vgg16():
    model = torchvision.models.vgg16(weights=None)
    model.load_state_dict({**model.state_dict(), **generated_vgg_state("vgg16")})
    return model.features.eval()


@pytest.fixture(scope="module")
def tv_vgg19():
    model = torchvision.models.vgg19(weights=None)
    model.load_state_dict({**model.state_dict(), **generated_vgg_state("vgg19")})
    return model.features.eval()


@pytest.fixture()
def images():
    g = torch.Generator().manual_seed(0)
    return torch.rand(2, 3, 40, 48, generator=g), torch.rand(2, 3, 40, 48, generator=g)


def by_hand_perceptual(features, x, y, ends, weights, normalize=True, resize=None, crit=F.l1_loss):
    """Σ w · crit(features[:end](x), features[:end](y)), slicing torchvision's module by hand."""
    if resize:
        x = F.interpolate(x, size=(resize, resize), mode="bilinear", align_corners=False)
        y = F.interpolate(y, size=(resize, resize), mode="bilinear", align_corners=False)
    if normalize:
        x, y = (x - MEAN) / STD, (y - MEAN) / STD
    with torch.no_grad():
        return sum(w * crit(features[:end](x), features[:end](y)) for end, w in zip(ends, weights))


def test_perceptual_preset_matches_sliced_torchvision(weights_dir, tv_vgg16, images):
    x, y = images
    ours = PerceptualLoss.from_preset("perceptual")(x, y)
    ref = by_hand_perceptual(tv_vgg16, x, y, (4, 9, 16, 23), (0.25,) * 4)
    assert rel_close(ours, ref)


@pytest.mark.parametrize("normalize", [True, False])
def test_vgg_relu2_2_with_resize_and_normalize(weights_dir, tv_vgg16, images, normalize):
    x, y = images
    ours = VGGPerceptualLoss(normalize=normalize)(x, y)
    ref = by_hand_perceptual(tv_vgg16, x, y, (9,), (1.0,), normalize=normalize, resize=224)
    assert rel_close(ours, ref)
    assert rel_close(PerceptualLoss.from_preset("vgg_relu2_2", normalize=normalize)(x, y), ref)


def test_vgg19_l2_custom_weights(weights_dir, tv_vgg19, images):
    x, y = images
    ours = PerceptualLoss("vgg19", ("relu3_4", "relu5_4"), (0.3, 2.0), criterion="l2")(x, y)
    ref = by_hand_perceptual(tv_vgg19, x, y, (18, 36), (0.3, 2.0), crit=F.mse_loss)
    assert rel_close(ours, ref)


def test_grayscale_is_replicated(weights_dir, images):
    x, y = images
    loss = PerceptualLoss.from_preset("perceptual")
    assert rel_close(loss(x[:, :1], y[:, :1]), loss(x[:, :1].expand(-1, 3, -1, -1), y[:, :1].expand(-1, 3, -1, -1)))


def test_lpips_matches_lpips_package(weights_dir, tv_vgg16, images):
    import lpips

    reference = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False).eval()
    # lpips' slices keep torchvision's indices: slice1.0 = features.0, …, slice5.28 = features.28.
    slices = {1: range(0, 4), 2: range(4, 9), 3: range(9, 16), 4: range(16, 23), 5: range(23, 30)}
    tv_state = tv_vgg16.state_dict()
    reference.net.load_state_dict(
        {f"slice{s}.{key}": tv_state[key] for s, indices in slices.items() for key in tv_state if int(key.split(".")[0]) in indices}
    )
    x, y = images
    with torch.no_grad():
        ref = reference(x, y, normalize=True).flatten()
    ours = LPIPS().per_sample(x, y)
    for a, b in zip(ours, ref):
        # lpips' scaling constants (shift −.030/−.088/−.188, scale .458/.448/.450) are exactly 2·mean − 1
        # and 2·std, so only float32 rounding separates the two paths.
        assert rel_close(a, b, rel=1e-5)


@pytest.mark.filterwarnings("ignore:Anomaly Detection has been enabled")
def test_lpips_normalisation_is_the_packages_with_a_finite_gradient_at_dead_features():
    """Where every channel's ReLU is off the feature vector is 0, and the lpips package's
    normalisation (√ of the squared norm) has a NaN derivative there: under
    ``detect_anomaly``, the tool people turn on to find NaNs, LPIPS' backward raised
    "Function 'SqrtBackward0' returned nan values" (PerceptualSimilarity issues 69 and 121).
    Ours gives the same values, bit for bit, and a finite gradient."""
    import lpips

    from losses.lpips_loss import _unit_normalize

    features = torch.relu(torch.randn(2, 64, 9, 9, generator=torch.Generator().manual_seed(3)))
    features[:, :, 2:5, 3] = 0  # dead locations
    features[0, :, 7, 7] = 1e-30  # a squared norm below float32's smallest normal
    assert torch.equal(_unit_normalize(features), lpips.normalize_tensor(features))
    other = torch.relu(torch.randn_like(features))
    with torch.autograd.detect_anomaly():
        leaf = features.clone().requires_grad_(True)
        (_unit_normalize(leaf) - _unit_normalize(other)).pow(2).sum().backward()
    assert leaf.grad.isfinite().all()


def test_hybrid_by_hand(weights_dir, images):
    x, y = images
    l1 = (x - y).abs().mean()
    ms = (F.avg_pool2d(x, 2) - F.avg_pool2d(y, 2)).abs().mean()
    gx = lambda t: (t[..., 1:] - t[..., :-1]).abs()  # noqa: E731
    gy = lambda t: (t[..., 1:, :] - t[..., :-1, :]).abs()  # noqa: E731
    grad = 0.5 * (F.l1_loss(gx(x), gx(y)) + F.l1_loss(gy(x), gy(y)))
    out = HybridLoss()(x, y)
    assert out["perceptual"] == 0.0
    for name, value in dict(l1=l1, ms=ms, grad=grad).items():
        assert rel_close(out[name], value)
    assert rel_close(out["total"], 0.6 * l1 + 0.2 * ms + 0.2 * grad)
    override = HybridLoss()(x, y, l1_weight=1.0, ms_weight=0.0, grad_weight=0.0, perceptual_weight=0.1)
    perceptual = PerceptualLoss.from_preset("perceptual")(x, y)
    assert rel_close(override["total"], l1 + 0.1 * perceptual)
    assert rel_close(HybridLoss.from_preset("p4_optimised")(x, y)["total"], override["total"])
    with pytest.raises(TypeError, match="unknown weight"):
        HybridLoss()(x, y, bogus_weight=1.0)


def test_hybrid_without_perceptual_builds_no_backbone(monkeypatch, images):
    monkeypatch.setenv("LOSS_SERVICE_WEIGHTS_DIR", "/nonexistent")
    clear_shared_backbones()
    out = HybridLoss()(*images)  # no weights needed at weight 0: neither found nor built
    assert out["perceptual"] == 0.0
    from losses.nets.models import MODELS

    assert len(MODELS) == 0


def test_kd_image_loss_by_hand(weights_dir, images):
    student, gt = images
    teacher = (gt * 0.7 + 0.1).clamp(0, 1)
    out = KDImageLoss()(student, gt, teacher)
    vgg = VGGPerceptualLoss()(student, teacher)
    expected = F.l1_loss(student, gt) + 1.0 * F.l1_loss(student, teacher) + 0.1 * vgg
    assert rel_close(out["total"], expected)
    assert rel_close(out["vgg"], vgg) and rel_close(out["l1_gt"], F.l1_loss(student, gt))
    for lambda_kd, lambda_vgg in ((0.3, 2.5), (2.0, 0.0)):
        varied = KDImageLoss(lambda_kd=lambda_kd, lambda_vgg=lambda_vgg)(student, gt, teacher)
        by_hand = F.l1_loss(student, gt) + lambda_kd * F.l1_loss(student, teacher) + lambda_vgg * vgg
        assert rel_close(varied["total"], by_hand) and (varied["vgg"] == 0.0) == (lambda_vgg == 0.0)


def test_feature_kd_criteria():
    g = torch.Generator().manual_seed(1)
    s = [torch.randn(2, 8, 5, 5, generator=g) for _ in range(2)]
    t = [torch.randn(2, 8, 5, 5, generator=g) for _ in range(2)]
    assert rel_close(FeatureKDLoss("l1")(s, t), sum((a - b).abs().mean() for a, b in zip(s, t)))
    assert rel_close(FeatureKDLoss("l2", [2.0, 0.5])(s, t), 2.0 * ((s[0] - t[0]) ** 2).mean() + 0.5 * ((s[1] - t[1]) ** 2).mean())
    cos = sum(1 - ((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))).mean() for a, b in zip(s, t))
    assert rel_close(FeatureKDLoss("cosine")(s, t), cos)


def reference_clp(features_by_layer, sr, gt, lr, weights):
    """The seed's CLP: resize/replace LR, weight maps, flatten, nn.TripletMarginLoss per layer."""
    if lr.shape[-2:] != sr.shape[-2:]:
        lr = F.interpolate(lr, size=sr.shape[-2:], mode="bicubic", align_corners=True).clamp(0, 1)
    lr = lr.clone()
    same = lr == gt
    lr[same] = 1 - gt[same]
    triplet = torch.nn.TripletMarginLoss(margin=1.0, p=2, eps=1e-6)
    fa, fp, fn = features_by_layer(sr), features_by_layer(gt), features_by_layer(lr)
    losses = []
    for a, p, n, w in zip(fa, fp, fn, weights):
        b, c = a.shape[:2]
        losses.append(triplet((a * w).reshape(b * c, -1), (p * w).reshape(b * c, -1), (n * w).reshape(b * c, -1)))
    return torch.stack(losses).mean()


@pytest.mark.parametrize("lr_size", [(40, 48), (10, 12)])
def test_clp_vgg19_matches_triplet_reference(weights_dir, tv_vgg19, images, lr_size):
    sr, gt = images
    lr = F.interpolate(gt, size=lr_size, mode="area")
    lr[..., 0, 0] = gt[..., 0, 0] if lr_size == gt.shape[-2:] else lr[..., 0, 0]
    before = [t.clone() for t in (sr, gt, lr)]

    def features(x):
        x = (x - MEAN) / STD
        with torch.no_grad():
            return [tv_vgg19[:end](x) for end in (4, 9, 18, 27, 36)]

    ref = reference_clp(features, sr, gt, lr, (0.5, 0.5, 1.0, 1.0, 1.0))
    ours = CLPLoss("vgg19", loss_weight=2.0)(sr, gt, lr)
    assert rel_close(ours, 2.0 * ref)
    assert rel_close(CLPLoss("vgg")(sr, gt, lr), ref)
    for a, b in zip(before, (sr, gt, lr)):
        assert torch.equal(a, b), "CLPLoss modified its inputs"


def test_clp_replaces_lr_equal_to_target(weights_dir, images):
    sr, gt = images
    loss = CLPLoss("vgg19")
    lr = gt.clone()
    assert rel_close(loss(sr, gt, lr), loss(sr, gt, 1 - gt))
    assert torch.equal(lr, gt)


@pytest.mark.parametrize("lr_size", [(30, 44), (9, 11)])
def test_clp_dinov2_matches_triplet_reference(weights_dir, lr_size):
    """Against the official DINOv2 token path (tests/test_dinov2.py) on sizes that need the reflect pad."""
    from .test_dinov2 import official_features

    vit = get_backbone("dinov2", "cpu").model
    g = torch.Generator().manual_seed(3)
    sr, gt = torch.rand(2, 3, 30, 44, generator=g), torch.rand(2, 3, 30, 44, generator=g)
    lr = torch.rand(2, 3, *lr_size, generator=g)

    def features(x):
        with torch.no_grad():
            return official_features(vit, x)

    ref = reference_clp(features, sr, gt, lr, (1.0, 0.5, 0.5, 1.0, 0.5, 0.5, 1.0, 0.1))
    assert rel_close(CLPLoss("dinov2")(sr, gt, lr), ref, rel=1e-5)


@pytest.mark.parametrize(
    "make_loss,call",
    [
        (lambda: PerceptualLoss.from_preset("perceptual"), lambda loss, x, y: loss(x, y)),
        (lambda: VGGPerceptualLoss(), lambda loss, x, y: loss(x, y)),
        (lambda: LPIPS(), lambda loss, x, y: loss(x, y)),
        (lambda: CLPLoss("vgg19"), lambda loss, x, y: loss(x, y, y[..., ::2, ::2])),
        (lambda: CLPLoss("dinov2"), lambda loss, x, y: loss(x, y, y[..., ::2, ::2])),
        (lambda: HybridLoss(perceptual_weight=0.1), lambda loss, x, y: loss(x, y)["total"]),
        (lambda: KDImageLoss(), lambda loss, x, y: loss(x, y, y.flip(-1))["total"]),
    ],
)
def test_gradients_flow_to_input_only(weights_dir, make_loss, call):
    loss = make_loss()
    loss.train()
    g = torch.Generator().manual_seed(5)
    x = torch.rand(1, 3, 28, 28, generator=g, requires_grad=True)
    y = torch.rand(1, 3, 28, 28, generator=g)
    value = call(loss, x, y)
    value.backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for name in ("vgg16", "vgg19", "dinov2"):
        backbone = get_backbone(name, "cpu")
        assert not backbone.training
        assert all(p.grad is None and not p.requires_grad for p in backbone.parameters())
    assert all(not p.requires_grad for p in loss.parameters())


def test_losses_follow_input_dtype(weights_dir, images):
    """Backbone losses compute in float32 (the backbone's dtype) and return the input's dtype
    (docs/metrics.md): a float64 input gives exactly the float32 computation's value."""
    x, y = (t.double() for t in images)
    loss = PerceptualLoss.from_preset("perceptual")
    value = loss(x, y)
    assert value.dtype == torch.float64
    assert value.item() == loss(x.float(), y.float()).item()


def test_shared_instance_per_backbone_and_device(weights_dir):
    clear_shared_backbones()
    a, b = PerceptualLoss.from_preset("perceptual"), LPIPS()
    x = torch.rand(1, 3, 16, 16)
    assert a.backbones_on(x.device)("vgg16") is b.backbones_on(x.device)("vgg16") is get_backbone("vgg16", "cpu")
    parent = torch.nn.ModuleDict(dict(a=a, b=b))
    parent.train()
    assert not get_backbone("vgg16", "cpu").training
    assert not any(k.startswith("features") for k in copy.deepcopy(a).state_dict())


def test_backbone_first_built_under_inference_mode_still_trains(weights_dir):
    clear_shared_backbones()
    with torch.inference_mode():
        get_backbone("vgg16", "cpu")  # as the server and `score --local` first build it
    x = torch.rand(1, 3, 16, 16, requires_grad=True)
    PerceptualLoss.from_preset("perceptual")(x, torch.rand(1, 3, 16, 16)).backward()
    assert torch.isfinite(x.grad).all()
