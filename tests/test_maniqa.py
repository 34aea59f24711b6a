"""MANIQA against its authors' procedure (tests/maniqa_reference.py), both reading one generated
checkpoint in the layout of the authors' ``ckpt_koniq10k.pt`` (tests/conftest.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import losses
from losses.nets import weights as W
from losses.nets.maniqa import AUTHORS_SIZES, CROP_PROTOCOLS, architecture, crop_positions, load_maniqa, opencv_bicubic

from . import maniqa_reference as ref
from .conftest import to_tensor

METRIC_CHECKPOINT = {"maniqa": "ckpt_koniq10k.pt", "maniqa_kadid": "ckpt_kadid10k.pt"}


@pytest.fixture(scope="module")
def reference_models(weights_dir):
    return {metric: ref.reference_model(torch.load(weights_dir / name, weights_only=True)) for metric, name in METRIC_CHECKPOINT.items()}


def test_maniqa_equals_the_authors_procedure_for_every_crop_protocol(photos, reference_models):
    """Square, non-square, a side of exactly 224 and sizes that are not multiples of the patch
    (8); both checkpoints; every crop protocol (random20 needs both sides above 224, as the
    authors' script does)."""
    from skimage import data

    images = [photos[1], data.coffee()[:257, :301], data.astronaut()[:224, :300], data.astronaut()]
    for metric, model in reference_models.items():
        for image in images if metric == "maniqa" else images[1:3]:
            for crops in CROP_PROTOCOLS:
                if crops == "random20" and min(image.shape[:2]) == 224:
                    continue
                expected = ref.reference_score(model, image, crops)
                got = losses.score(to_tensor(image), metrics=[metric], crops=crops)[metric].item()
                assert got == pytest.approx(expected, rel=1e-5), (metric, image.shape, crops)


def test_the_photos_are_told_apart_and_the_default_views_are_each_checkpoints_own(photos, weights_dir):
    values = [losses.score(to_tensor(image), metrics=["maniqa"])["maniqa"].item() for image in photos]
    assert len(set(values)) == len(values) and all(v > 0 for v in values)
    record = losses.conventions(["maniqa", "maniqa_kadid"])["metrics"]
    assert record["maniqa"]["options"] == {"crops": "resize"} and record["maniqa_kadid"]["options"] == {"crops": "five_point"}


def test_crop_positions_are_the_authors_crops():
    """five_point: the authors' five_point_crop, indices 0–4; random20: the positions their
    script draws after np.random.seed(20) (top then left, 20 times)."""
    x = torch.zeros(1, 3, 300, 451)
    for index, (top, left) in enumerate(crop_positions(300, 451, "five_point")):
        marked = x.clone()
        marked[..., top : top + 224, left : left + 224] = 1
        assert ref.five_point_crop(index, marked, 224).min() == 1
    np.random.seed(20)
    expected = [(np.random.randint(0, 300 - 224), np.random.randint(0, 451 - 224)) for _ in range(20)]
    assert crop_positions(300, 451, "random20") == expected


def test_resize_is_opencvs_bicubic_to_8_bits(photos):
    """Against opencv-python itself: equal bytes but for ≤ 1 level on < 1e-3 of the pixels (measured: 0.5–1.1e-4; the
    Intel IPP path opencv-python takes rounds its own way)."""
    import cv2

    for image in photos:
        expected = cv2.resize(image, (224, 224), interpolation=cv2.INTER_CUBIC).astype(np.int64)
        got = (opencv_bicubic(to_tensor(image), 224)[0].permute(1, 2, 0) * 255).round().long().numpy()
        difference = np.abs(got - expected)
        assert difference.max() <= 1 and (difference > 0).mean() < 1e-3, image.shape


def test_a_batch_scores_each_image_alone_and_gradients_flow(photos, weights_dir):
    from skimage import data

    batch = torch.cat([to_tensor(image[:240, :250]) for image in (*photos[:2], data.coffee())])
    for crops in ("resize", "five_point"):
        together = losses.score(batch, metrics=["maniqa"], crops=crops)["maniqa"]
        alone = torch.cat([losses.score(image[None], metrics=["maniqa"], crops=crops)["maniqa"] for image in batch])
        torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-7)
        x = batch.clone().requires_grad_(True)
        (-losses.create_metric("maniqa", crops=crops)(x).mean()).backward()  # a loss that raises MANIQA
        assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_the_real_checkpoints_layout_loads_and_a_renamed_or_missing_key_is_named():
    """The reference at the authors' sizes (ViT-B/8, 768 channels) on the meta device has the
    released checkpoints' key names and shapes: the sizes are read from them and every key loads
    (onto the meta device, so no 540 MB is allocated); a renamed or missing key is refused by name."""
    with torch.device("meta"):
        state = ref.ReferenceMANIQA(AUTHORS_SIZES).state_dict()
        assert architecture(state) == AUTHORS_SIZES
        model = load_maniqa(state)
    assert sum(p.numel() for p in model.parameters()) > 100_000_000
    small = ref.generated_state(0)
    renamed = dict(small)
    renamed["conv1.weights"] = renamed.pop("conv1.weight")
    with pytest.raises(W.WeightsError, match=r"conv1\.weight"):
        load_maniqa(renamed)
    with pytest.raises(W.WeightsError, match=r"fc_weight\.3\.bias"):
        load_maniqa({k: v for k, v in small.items() if k != "fc_weight.3.bias"})
    with pytest.raises(W.WeightsError, match=r"vit\.blocks\.9\.attn\.qkv\.weight"):
        load_maniqa({k: v for k, v in small.items() if k != "vit.blocks.9.attn.qkv.weight"})


def test_maniqa_is_declared_with_its_weight_files(weights_dir):
    from losses.registry import REGISTRY

    for metric, filename in METRIC_CHECKPOINT.items():
        entry = REGISTRY[metric]
        assert entry.lower_is_better is False and entry.needs == ("sr",) and entry.choices["crops"] == CROP_PROTOCOLS
        spec = losses.get_backbone(entry.backbone).spec.weights
        assert spec.filenames == (filename,) and spec.url.endswith(filename)
    assert {"maniqa_koniq10k", "maniqa_kadid10k"} <= set(W.WEIGHT_FILES)


def test_a_crop_larger_than_the_image_is_refused_by_name_and_resize_takes_it(weights_dir):
    with pytest.raises(ValueError, match="224"):
        losses.score(torch.rand(1, 3, 200, 300), metrics=["maniqa_kadid"])
    assert losses.score(torch.rand(1, 3, 200, 300), metrics=["maniqa"])["maniqa"].shape == (1,)
