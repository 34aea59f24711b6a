"""The loss classes' constructors: exact refusals, ``weights_dir`` honoured, and the
compatibility classes equal to their written-out form."""

import re

import pytest
import torch

from losses import CLPLoss, KDImageLoss, PerceptualLoss, VGGPerceptualLoss
from losses.nets.weights import WeightsNotFoundError

from .test_losses import by_hand_perceptual, images, rel_close, tv_vgg16  # noqa: F401 - fixtures


def refuses(message: str):
    return pytest.raises(ValueError, match=f"^{re.escape(message)}$")


def test_refusals_name_the_argument_and_the_choices():
    with refuses("PerceptualLoss backbone must be one of ['vgg16', 'vgg19'], got 'alexnet'"):
        PerceptualLoss("alexnet", pretrained=False)
    with refuses("criterion must be one of ['l1', 'l2'], got 'huber'"):
        PerceptualLoss(criterion="huber", pretrained=False)
    with refuses("layers ['relu1_2'] disagree with the layer_weights mapping ['relu2_2']"):
        PerceptualLoss(layers=["relu1_2"], layer_weights={"relu2_2": 1.0}, pretrained=False)
    with refuses("unknown preset 'lpips'; valid: ['perceptual', 'vgg_relu2_2']"):
        PerceptualLoss.from_preset("lpips", pretrained=False)
    with refuses("CLP backbone must be one of ['dinov2', 'vgg19', 'vgg'], got 'resnet'"):
        CLPLoss("resnet", pretrained=False)
    # Agreeing layers and mapping are accepted, in the mapping's order.
    loss = PerceptualLoss(layers=["relu1_2", "relu2_2"], layer_weights={"relu1_2": 0.5, "relu2_2": 2.0}, criterion="l2", pretrained=False)
    assert loss.layer_weights == {"relu1_2": 0.5, "relu2_2": 2.0} and loss.criterion == "l2"


@pytest.mark.parametrize(
    "make",
    [
        lambda **kw: PerceptualLoss.from_preset("perceptual", **kw),
        lambda **kw: VGGPerceptualLoss(**kw),
        lambda **kw: CLPLoss("vgg19", **kw),
        lambda **kw: KDImageLoss(**kw),
    ],
    ids=["perceptual", "vgg_relu2_2", "clp_vgg19", "kd"],
)
def test_weights_dir_is_where_the_checkpoint_is_found(weights_dir, tmp_path, monkeypatch, make):
    """With the default directory empty, a loss finds its checkpoint only through ``weights_dir``."""
    monkeypatch.setenv("LOSS_SERVICE_WEIGHTS_DIR", str(tmp_path))
    with pytest.raises(WeightsNotFoundError):
        make()
    loss = make(weights_dir=weights_dir)
    assert loss.weights_dir == weights_dir


def test_vgg_perceptual_loss_is_the_relu2_2_preset_written_out(weights_dir, tv_vgg16, images):  # noqa: F811 - fixtures
    """``resize=False`` compares at the input size; the default resizes to 224 (both against
    torchvision's own module); ``layer`` picks the tap, weighted 1."""
    x, y = images
    assert rel_close(VGGPerceptualLoss(resize=False)(x, y), by_hand_perceptual(tv_vgg16, x, y, (9,), (1.0,)))
    assert rel_close(VGGPerceptualLoss()(x, y), by_hand_perceptual(tv_vgg16, x, y, (9,), (1.0,), resize=224))
    assert rel_close(VGGPerceptualLoss(resize=False, layer="relu3_3")(x, y), by_hand_perceptual(tv_vgg16, x, y, (16,), (1.0,)))


@pytest.mark.parametrize("normalize", [True, False])
def test_kd_vgg_term_follows_normalize(weights_dir, tv_vgg16, images, normalize):  # noqa: F811 - fixtures
    student, gt = images
    teacher = (gt * 0.7 + 0.1).clamp(0, 1)
    vgg = KDImageLoss(normalize=normalize)(student, gt, teacher)["vgg"]
    assert rel_close(vgg, by_hand_perceptual(tv_vgg16, student, teacher, (9,), (1.0,), normalize=normalize, resize=224))


def test_clp_returns_the_input_dtype(weights_dir, images):  # noqa: F811 - fixture
    """Like the perceptual loss: the backbone runs in float32, the input's dtype comes out. The
    negative (LR resized bicubically) is built in the input's dtype, hence 1e-6, not equality."""
    sr, gt = (t.double() for t in images)
    lr = gt[..., ::2, ::2]
    loss = CLPLoss("vgg19")
    value = loss(sr, gt, lr)
    assert value.dtype == torch.float64
    assert rel_close(value, loss(sr.float(), gt.float(), lr.float()).double(), rel=1e-6)


def test_sequence_form_honours_resize_and_normalize(weights_dir, tv_vgg16, images):  # noqa: F811 - fixtures
    """``layers`` + a weight sequence is the same loss as the mapping form, resize and normalize included."""
    x, y = images
    loss = PerceptualLoss(layers=("relu1_2", "relu2_2"), layer_weights=(0.5, 2.0), resize=64, normalize=False)
    expected = by_hand_perceptual(tv_vgg16, x, y, (4, 9), (0.5, 2.0), normalize=False, resize=64)
    assert rel_close(loss(x, y), expected)


def test_preset_views_are_the_loss_classes_views():
    """The registry's and the hybrid/kd terms' views (``preset_view``) are the ones the loss
    classes build: normalised by default, the preset's layers, weights and resize."""
    from losses.perceptual import preset_view

    for name in ("perceptual", "vgg_relu2_2"):
        assert preset_view(name) == PerceptualLoss.from_preset(name, pretrained=False).view
        assert preset_view(name, normalize=False) == PerceptualLoss.from_preset(name, normalize=False, pretrained=False).view
        assert preset_view(name) != preset_view(name, normalize=False)
