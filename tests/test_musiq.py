"""MUSIQ against its authors' procedure (tests/musiq_reference.py: their TensorFlow preprocessing
transcribed in NumPy float32, their flax network in JAX), both reading one generated checkpoint
in the authors' ``.npz`` layout (tests/conftest.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import losses
from losses.nets import musiq as M
from losses.nets import weights as W

from . import musiq_reference as ref
from .conftest import to_tensor


@pytest.fixture(scope="module")
def checkpoints(weights_dir):
    def load(name):
        with np.load(weights_dir / name) as arrays:
            return {k: arrays[k] for k in arrays.files}

    return {"musiq": load("koniq_ckpt.npz"), "musiq_ava": load("ava_ckpt.npz")}


def test_musiq_equals_the_authors_procedure_on_photos_of_several_sizes(photos, checkpoints):
    """Non-square, smaller than the 224 scale (upscaled) and sizes that are not multiples of the
    patch (32; a multiple of it is in the preprocessing test); the KonIQ (one output) and AVA (ten
    buckets) layouts."""
    from skimage import data

    images = [photos[1], data.astronaut()[:100, :60]]
    for metric, params in checkpoints.items():
        for image in images if metric == "musiq" else images[1:2]:
            expected = ref.reference_score(params, image)
            got = losses.score(to_tensor(image), metrics=[metric])[metric].item()
            assert got == pytest.approx(expected, rel=1e-5), (metric, image.shape)


def test_each_preprocessing_step_is_the_authors(photos):
    """The resize (TensorFlow's Gaussian, float32 positions), the resized size, the SAME-padded
    patches and the hashed positions, each against its transcription."""
    from skimage import data

    for image in (photos[1], data.astronaut(), data.astronaut()[:100, :60]):
        normalised = np.float32(-1) + image.astype(np.float32) / np.float32(255) * np.float32(2)
        x = to_tensor(image) * 2 - 1
        height, width = image.shape[:2]
        for longer in M.LONGER_SIDES:
            ratio = np.float32(longer) / np.float32(max(height, width))
            size = (ref.tf_round(np.float32(height) * ratio), ref.tf_round(np.float32(width) * ratio))
            assert M.resized_size(height, width, longer) == size
            expected = ref.tf_gaussian_resize(normalised, *size)
            got = M.gaussian_resize(x, size)[0].permute(1, 2, 0).numpy()
            np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
        cut, rows, cols = M.patches(x)
        flat = cut[0].permute(0, 2, 3, 1).reshape(rows * cols, -1).numpy()
        np.testing.assert_allclose(flat, ref.extract_patches_same(normalised, 32), rtol=0, atol=1e-6)
        np.testing.assert_array_equal(M.hashed_positions(rows, cols, 10).numpy(), ref.hashed_index(10, rows, cols))
    assert M.resized_size(5, 10, 5) == (2, 5)  # 2.5 rounds to even, as tf.round


def test_a_batch_scores_each_image_alone_and_gradients_flow(photos, weights_dir):
    batch = torch.cat([to_tensor(image[:150, :170]) for image in photos])
    together = losses.score(batch, metrics=["musiq"])["musiq"]
    alone = torch.cat([losses.score(image[None], metrics=["musiq"])["musiq"] for image in batch])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)
    x = batch.clone().requires_grad_(True)
    (-losses.create_metric("musiq")(x).mean()).backward()  # a loss that raises MUSIQ
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_the_real_checkpoints_layout_loads_and_a_renamed_or_missing_key_is_named():
    """An .npz of the authors' names and shapes at their sizes (384-d, 6 heads, 14 layers) loads;
    a renamed or missing key is refused by name."""
    params = {k: torch.from_numpy(v) for k, v in ref.generated_params(0, sizes=M.AUTHORS_SIZES).items()}
    assert M.architecture(params) == M.AUTHORS_SIZES
    M.load_musiq(params)
    renamed = dict(params)
    renamed["opt/target/Transformer/encoderblock_3/MlpBlock_3/Dense_1/kernels"] = renamed.pop(
        "opt/target/Transformer/encoderblock_3/MlpBlock_3/Dense_1/kernel"
    )
    with pytest.raises(W.WeightsError, match=r"encoderblock_3/MlpBlock_3/Dense_1/kernel"):
        M.load_musiq(renamed)
    with pytest.raises(W.WeightsError, match=r"block1/unit1/gn2/scale"):
        M.load_musiq({k: v for k, v in params.items() if k != "opt/target/block1/unit1/gn2/scale"})


def test_an_npz_holding_pickled_objects_is_refused(tmp_path):
    path = tmp_path / "koniq_ckpt.npz"
    np.savez(path, bad=np.array([{"a": 1}], dtype=object))
    with pytest.raises(W.WeightsError, match="npz"):
        W.load_state_dict(path)


def test_musiq_is_declared_with_its_weight_files(weights_dir):
    from losses.registry import REGISTRY

    for metric, dataset in (("musiq", "koniq"), ("musiq_spaq", "spaq"), ("musiq_paq2piq", "paq2piq"), ("musiq_ava", "ava")):
        entry = REGISTRY[metric]
        assert entry.lower_is_better is False and entry.needs == ("sr",)
        spec = losses.get_backbone(entry.backbone).spec.weights
        assert spec.filenames == (f"{dataset}_ckpt.npz",) and spec.url.endswith(f"/musiq/{dataset}_ckpt.npz")
    scores = losses.score(torch.rand(1, 3, 64, 96), metrics=["musiq", "musiq_ava"])
    assert 1 <= scores["musiq_ava"].item() <= 10
