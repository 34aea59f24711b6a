"""The one-call library API and the declarative specs: ``score``/``create_metric``/``list_metrics``
equal the loss classes (1e-6 relative: the same float32 code on the same inputs), layer weights
as a mapping, wrong layers refused at construction, and one spec entry drives a backbone."""

import pytest
import torch
from torch import nn

import losses
from losses import BACKBONES, CLPLoss, PerceptualLoss, create_metric, list_metrics, psnr, ssim
from losses.nets import weights as W
from losses.nets.backbones import BackboneSpec, SequentialFeatures, build_backbone, get_backbone
from losses.nets.features import FeatureView
from service.common import protocol

REL = 1e-6


def close(a, b, rel=REL):
    return torch.allclose(torch.as_tensor(a).double(), torch.as_tensor(b).double(), rtol=rel, atol=1e-12)


@pytest.fixture()
def images():
    g = torch.Generator().manual_seed(21)
    return dict(
        sr=torch.rand(2, 3, 32, 36, generator=g), gt=torch.rand(2, 3, 32, 36, generator=g), lr=torch.rand(2, 3, 16, 18, generator=g)
    )


def test_list_metrics_is_the_registry():
    entries = list_metrics()
    assert [e["name"] for e in entries] == [*losses.REGISTRY]
    clip = {e["name"]: e for e in entries if e.get("clip")}
    assert set(clip) == {"tof", "tlp", "tecogan_psnr", "tecogan_lpips", "vmaf", "vmaf_neg"} and clip["tof"]["available"] is True
    assert clip["tof"]["options"] == {"skip": 2} and clip["tlp"]["backbone"] == "alexnet"
    assert {"name", "kind", "lower_is_better", "needs", "options", "backbone"} <= set(entries[0])


def test_list_metrics_filters_by_kind():
    by_kind = {kind: [e["name"] for e in list_metrics(kind)] for kind in ("image", "clip", "set")}
    assert by_kind["clip"] == ["tof", "tlp", "tecogan_psnr", "tecogan_lpips", "vmaf", "vmaf_neg"] and by_kind["set"] == ["fid", "kid"]
    assert "psnr" in by_kind["image"] and not {"tof", "fid"} & set(by_kind["image"])
    assert sorted(sum(by_kind.values(), [])) == sorted(losses.REGISTRY)
    with pytest.raises(ValueError, match="kinds are"):
        list_metrics("video")


def test_each_kind_is_refused_where_another_is_scored(images):
    with pytest.raises(losses.MetricError, match="whole clip"):
        losses.score(images["sr"], images["gt"], metrics=["psnr", "tof"])
    with pytest.raises(losses.MetricError, match="dataset metric"):
        losses.score(images["sr"], images["gt"], metrics=["fid"])
    with pytest.raises(losses.MetricError, match="here the metrics are"):
        losses.dataset_score([images["sr"]], [images["gt"]], metrics=["psnr"])


def test_score_equals_the_loss_functions(weights_dir, images):
    with torch.no_grad():
        out = losses.score(
            images["sr"], images["gt"], metrics=("psnr", "ssim", "perceptual", "hybrid"), crop_border=3, perceptual_weight=0.5
        )
        perceptual = PerceptualLoss.from_preset("perceptual").per_sample(images["sr"], images["gt"])
        hybrid = losses.HybridLoss(perceptual_weight=0.5)
    assert close(out["psnr"], psnr(images["sr"], images["gt"], crop_border=3))
    assert close(out["ssim"], ssim(images["sr"], images["gt"], crop_border=3))
    assert close(out["perceptual"], perceptual)
    assert close(out["hybrid.perceptual"], perceptual)
    for i in range(2):
        one = hybrid(images["sr"][i : i + 1], images["gt"][i : i + 1])
        assert close(out["hybrid"][i], one["total"]) and close(out["hybrid.l1"][i], one["l1"])
    assert set(out) == {"psnr", "ssim", "perceptual", "hybrid", "hybrid.l1", "hybrid.ms", "hybrid.grad", "hybrid.perceptual"}


def test_score_refuses_unknown_metric_and_option(images):
    with pytest.raises(losses.MetricError, match="unknown metric"):
        losses.score(images["sr"], images["gt"], metrics=("psnr", "nope"))
    with pytest.raises(losses.MetricError, match="unknown option"):
        losses.score(images["sr"], images["gt"], metrics=("psnr",), loss_weight=2.0)


@pytest.mark.parametrize(
    "names, hint",
    [
        (["PSNR", "SSIM"], "did you mean 'psnr', 'ssim'?"),
        (["MS-SSIM", "LPIPS-Alex"], "did you mean 'ms_ssim', 'lpips_alex'?"),
        (["lpips"], "did you mean 'lpips_vgg', 'lpips_alex'?"),
        (["psnr ssim"], "separate names with commas, e.g. psnr,ssim"),  # not 'ms_ssim', the closest spelling
        (['["psnr"', '"ssim"]'], "did you mean 'psnr', 'ssim'?"),  # a JSON list split at its comma
        (["brisque"], "unknown metric(s) ['brisque']; valid: "),  # nothing close: no guess
    ],
)
def test_unknown_metric_names_as_papers_write_them_get_a_guess(images, names, hint):
    with pytest.raises(losses.MetricError) as caught:
        losses.score(images["sr"], images["gt"], metrics=names)
    assert hint in str(caught.value) and str(caught.value).endswith(f"valid: {sorted(losses.REGISTRY)}")


def test_create_metric_is_a_differentiable_module(weights_dir, images):
    module = create_metric("clp_vgg19", loss_weight=2.0)
    assert isinstance(module, nn.Module)
    sr = images["sr"].clone().requires_grad_(True)
    value = module(sr, images["gt"], images["lr"])
    assert value.shape == (2,)
    assert close(value.detach(), CLPLoss("vgg19", 2.0).per_sample(images["sr"], images["gt"], images["lr"]).detach())
    value.sum().backward()
    assert sr.grad is not None and sr.grad.abs().sum() > 0
    ssim_module = create_metric("ssim", y_channel=True)
    assert close(ssim_module(images["sr"], images["gt"]), ssim(images["sr"], images["gt"], y_channel=True))
    with pytest.raises(losses.MetricError):
        create_metric("ssim", crop_border=-1)


def test_layer_weights_as_mapping_equal_the_sequence(weights_dir, images):
    by_name = PerceptualLoss("vgg19", layer_weights={"relu3_4": 0.3, "relu5_4": 2.0}, criterion="l2")
    by_order = PerceptualLoss("vgg19", ("relu3_4", "relu5_4"), (0.3, 2.0), criterion="l2")
    assert by_name.layer_weights == {"relu3_4": 0.3, "relu5_4": 2.0}
    assert close(by_name(images["sr"], images["gt"]), by_order(images["sr"], images["gt"]))


@pytest.mark.parametrize(
    "make",
    [
        lambda: PerceptualLoss(layer_weights={"relu1_2": 0.5, "relu9_9": 0.5}),
        lambda: PerceptualLoss("vgg16", ("relu5_4",)),  # a VGG19 name, not VGG16's
        lambda: FeatureView.of("dinov2", ("block8",)),
    ],
)
def test_wrong_layer_is_refused_at_construction(weights_dir, make):
    with pytest.raises(ValueError, match="has no layer"):
        make()


def test_mismatched_layer_weights_are_refused(weights_dir):
    with pytest.raises(ValueError, match="2 layers but 1 layer weights"):
        PerceptualLoss(layers=("relu1_2", "relu2_2"), layer_weights=(1.0,))


def test_clp_takes_backbone_and_keeps_model_alias(weights_dir, images):
    a = CLPLoss(backbone="vgg19")(images["sr"], images["gt"], images["lr"])
    b = CLPLoss(model="vgg")(images["sr"], images["gt"], images["lr"])
    assert close(a, b) and CLPLoss(backbone="vgg").term.view.backbone == "vgg19"
    assert CLPLoss().term.view.backbone == "dinov2"  # the default, as the paper's CLP


def test_clp_layer_term_equals_torch_triplet_loss_on_weighted_copies():
    """The in-place ‖w·(a − p) + eps‖ equals TripletMarginLoss on weighted rows, for any weight."""
    from losses.clp import TRIPLET, triplet_layer

    g = torch.Generator().manual_seed(4)
    a, p, n = (torch.rand(3, 5, 6, 7, generator=g, dtype=torch.float64) for _ in range(3))
    for weight in (0.5, 1.0, 2.0, 0.1):
        rows = [(t * weight).flatten(2).reshape(15, -1) for t in (a, p, n)]
        expected = torch.nn.TripletMarginLoss(reduction="none", **TRIPLET)(*rows).view(3, 5).mean(dim=1)
        assert torch.allclose(triplet_layer("relu1_2", weight, (a, p, n)), expected, rtol=1e-12, atol=0), weight


def test_protocol_defaults_match_the_library():
    assert tuple(protocol.DEFAULT_METRICS) == tuple(losses.DEFAULT_METRICS)
    assert set(protocol.DEFAULT_METRICS) <= set(losses.REGISTRY)


def test_one_spec_entry_makes_a_backbone(tmp_path, monkeypatch):
    """A new backbone is one BackboneSpec: weights resolution, building, views and settings follow."""
    from service.server.settings import Settings

    def build(spec, state):
        features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        if state is not None:
            features.load_state_dict({k.removeprefix("features."): v for k, v in state.items()})
        return SequentialFeatures(spec, features)

    spec = BackboneSpec("tiny", build, ("conv1", "relu1"), W.WeightSpec("tiny", ("tiny-00000000.pth",), "file:///unused"))
    monkeypatch.setitem(BACKBONES, "tiny", spec)
    torch.manual_seed(0)
    state = {"features.0.weight": torch.randn(4, 3, 3, 3), "features.0.bias": torch.randn(4)}
    torch.save(state, tmp_path / "tiny-00000000.pth")
    model = build_backbone("tiny", weights_dir=tmp_path)
    assert torch.equal(model.features[0].weight, state["features.0.weight"])
    x = torch.rand(1, 3, 8, 8)
    view = FeatureView.of("tiny", {"relu1": 1.0})
    expected = torch.relu(
        nn.functional.conv2d((x - model.mean) / model.std, state["features.0.weight"], state["features.0.bias"], padding=1)
    )
    assert torch.allclose(
        view.extract(get_backbone("tiny", "cpu", weights_dir=tmp_path), x)["relu1"], expected, rtol=1e-5, atol=1e-5
    )  # float32 conv, values ~10
    assert "tiny" in Settings().model_names
    assert Settings(models="tiny,vgg16").model_names == ["tiny", "vgg16"]
    with pytest.raises(ValueError, match="unknown model"):
        Settings(models="tiny,nope")
    assert BACKBONES["vgg16_l2pool"].weights is BACKBONES["vgg16"].weights  # one file, declared once
    assert set(W.WEIGHT_FILES) >= {"vgg16", "vgg19", "alexnet", "dinov2", "lpips_vgg_heads", "lpips_alex_heads", "dists_alpha_beta"}


def test_one_reference_for_many_candidates_is_computed_once(weights_dir):
    """gt/lr/teacher with one image for B candidates: each backbone sees the reference once (a
    batch of 1), and every metric equals scoring against B copies of it."""
    g = torch.Generator().manual_seed(8)
    sr, gt = torch.rand(3, 3, 48, 48, generator=g), torch.rand(1, 3, 48, 48, generator=g)
    lr, teacher = torch.rand(1, 3, 12, 12, generator=g), torch.rand(1, 3, 48, 48, generator=g)
    # MS-SSIM needs 176², NIQE 96×192 (and ntire2025_perceptual, which reads it), maniqa_kadid's crops 224²
    skip = ("ms_ssim", "niqe", "maniqa_kadid", "ntire2025_perceptual")
    names = [m for m, e in losses.REGISTRY.items() if m not in skip and e.kind == "image"]
    seen: dict[str, list[tuple[str, int]]] = {"shared": [], "copies": []}

    class Counting:
        """A backbone that records the batch size of every pass."""

        def __init__(self, run_name: str, name: str):
            self.run_name, self.name, self.backbone = run_name, name, get_backbone(name, "cpu")

        def stream(self, x, layers, normalize=True):
            seen[self.run_name].append((self.name, x.shape[0]))
            return self.backbone.stream(x, layers, normalize)

    metrics = losses.registry.get_metrics(names)
    options = losses.registry.resolve_options(metrics, {})
    with torch.no_grad():
        shared = losses.compute(metrics, dict(sr=sr, gt=gt, lr=lr, teacher=teacher), options, lambda n: Counting("shared", n))
        copies = {role: x.expand(3, -1, -1, -1).contiguous() for role, x in dict(gt=gt, lr=lr, teacher=teacher).items()}
        expected = losses.compute(metrics, dict(sr=sr, **copies), options, lambda n: Counting("copies", n))
    assert {name for name, _ in seen["shared"]} == {
        "vgg16",
        "vgg19",
        "vgg16_l2pool",
        "alexnet",
        "dinov2",
        "clip_rn50",
        "maniqa_koniq10k",
    } | {f"musiq_{dataset}" for dataset in ("koniq", "spaq", "paq2piq", "ava")}
    assert len(seen["shared"]) == len(seen["copies"])  # one concatenated pass per backbone view, in both runs
    for (name, rows), (same, copied_rows) in zip(seen["shared"], seen["copies"]):
        roles = copied_rows // 3  # with copies every role brings 3 rows; a shared reference brings 1
        assert name == same and rows == 3 + (roles - 1), (name, rows, copied_rows)
    for name, values in expected.items():
        assert close(shared[name], values), name
    with pytest.raises(ValueError, match="gt holds 2 images but the batch has 3"):
        losses.score(sr, gt.expand(2, -1, -1, -1), metrics="psnr")


def test_conventions_record_names_options_and_weight_hashes(weights_dir):
    import hashlib

    from losses.nets import weights as W
    from losses.nets.backbones import backbone_spec

    record = losses.conventions(("psnr", "lpips_vgg"), crop_border=4)
    assert record["metrics"]["psnr"]["options"] == dict(crop_border=4, y_channel=False)
    assert record["metrics"]["lpips_vgg"]["backbones"] == ["vgg16"] and record["metrics"]["lpips_vgg"]["lower_is_better"]
    vgg16 = W.resolve(backbone_spec("vgg16").weights)
    assert record["weights"]["vgg16"] == dict(file=vgg16.name, sha256=hashlib.sha256(vgg16.read_bytes()).hexdigest())
    heads = losses.lpips_loss.lpips_lin_weights_path("vgg")
    assert record["weights"]["lpips_vgg_heads"]["sha256"] == hashlib.sha256(heads.read_bytes()).hexdigest()
    random = losses.conventions(("perceptual",), pretrained=False)
    assert random["pretrained"] is False and random["weights"]["vgg16"]["sha256"] is None


def test_slicing_a_batch_into_passes_changes_no_value(weights_dir, monkeypatch):
    """Below ``PASS_PIXELS`` a batch runs in sample slices; every per-sample value is unchanged,
    with a shared reference too."""
    from losses.nets import features

    g = torch.Generator().manual_seed(9)
    sr, gt = torch.rand(5, 3, 40, 40, generator=g), torch.rand(5, 3, 40, 40, generator=g)
    lr, teacher = torch.rand(5, 3, 10, 10, generator=g), torch.rand(5, 3, 40, 40, generator=g)
    names = ("perceptual", "lpips_vgg", "lpips_alex", "dists", "clp_vgg19", "clp_dinov2", "kd", "vgg_relu2_2")
    with torch.no_grad():
        whole = losses.score(sr, gt, lr, teacher, metrics=names)
        whole_shared = losses.score(sr, gt[:1], lr[:1], teacher[:1], metrics=names)
        monkeypatch.setattr(features, "PASS_PIXELS", 2 * 3 * 40 * 40)  # two samples of three roles per pass
        sliced = losses.score(sr, gt, lr, teacher, metrics=names)
        sliced_shared = losses.score(sr, gt[:1], lr[:1], teacher[:1], metrics=names)
    for name in whole:
        assert close(sliced[name], whole[name], rel=1e-5), name  # float32 convolutions over other batch shapes
        assert close(sliced_shared[name], whole_shared[name], rel=1e-5), name


def test_public_names_load_lazily_and_no_module_shadows_one():
    """``losses`` binds its names on first use: a module named like one (``losses/conventions.py``
    once) would be bound over it by any import of that module; the FID/KID reductions load
    without torch, as the torch-free client needs."""
    import pkgutil
    import subprocess
    import sys

    assert not {module.name for module in pkgutil.iter_modules(losses.__path__)} & set(losses.__all__)
    check = "import sys, losses.sets.statistics, losses.api; assert callable(losses.conventions)"
    assert subprocess.run([sys.executable, "-c", check], capture_output=True).returncode == 0
    torch_free = "import sys, losses.sets.statistics; assert 'torch' not in sys.modules, 'torch imported'"
    assert subprocess.run([sys.executable, "-c", torch_free], capture_output=True, text=True).returncode == 0


def test_list_metrics_says_when_vmaf_cannot_run(monkeypatch):
    """Without an FFmpeg built with libvmaf, the catalogue says so and names what to install."""
    from losses.clips import vmaf

    monkeypatch.setattr(vmaf, "ffmpeg_with_libvmaf", lambda: None)
    entries = {e["name"]: e for e in list_metrics()}
    assert entries["vmaf"]["available"] is False and "imageio-ffmpeg" in entries["vmaf"]["unavailable_reason"]
    assert entries["tof"]["available"] is True
