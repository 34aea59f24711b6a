"""CLIP-IQA against its authors' procedure, with open_clip's CLIP as the network.

The reference below transcribes the CLIP-IQA authors' ``CLIPIQAFixed`` (mmedit
``coopclipiqa.py``) and their modified attention pool (``components/clip/model.py``): the image
normalised with CLIP's mean and std at its own size, the attention pool with or without the
positional embedding (``pos_embedding``), the prompts through CLIP's text encoder and tokenizer,
``logit_scale.exp()`` × cosine similarity, a softmax over the pair, the first prompt's
probability. open_clip (OpenAI's architecture and key names) supplies the network; both sides
read one generated checkpoint in OpenAI's ``RN50.pt`` format (tests/conftest.py).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import losses
from losses.nets import weights as W
from losses.nets.clip import CLIP_MEAN, CLIP_STD, PROMPT_PAIRS, RN50, architecture, load_clip

from .conftest import tiny_open_clip, to_tensor


@pytest.fixture(scope="module")
def reference_model(weights_dir):
    """open_clip's CLIP with the generated ``RN50.pt``'s weights, read by TorchScript's loader."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice
        state = torch.jit.load(str(weights_dir / "RN50.pt"), map_location="cpu").state_dict()
    model = tiny_open_clip()
    model.load_state_dict({k: v for k, v in state.items() if k != "attn_mask"})
    return model


def authors_attention_pool(pool, x: torch.Tensor, pos_embedding: bool) -> torch.Tensor:
    """The CLIP-IQA authors' ``AttentionPool2d.forward``: every token queries; the first one's output."""
    x = x.reshape(x.shape[0], x.shape[1], x.shape[2] * x.shape[3]).permute(2, 0, 1)
    x = torch.cat([x.mean(dim=0, keepdim=True), x], dim=0)
    if pos_embedding:
        resized = F.interpolate(pool.positional_embedding.unsqueeze(0).unsqueeze(0), size=(x.size(0), x.size(2)), mode="bicubic")
        x = x + resized.squeeze(0).squeeze(0)[:, None, :].to(x.dtype)
    x, _ = F.multi_head_attention_forward(
        query=x,
        key=x,
        value=x,
        embed_dim_to_check=x.shape[-1],
        num_heads=pool.num_heads,
        q_proj_weight=pool.q_proj.weight,
        k_proj_weight=pool.k_proj.weight,
        v_proj_weight=pool.v_proj.weight,
        in_proj_weight=None,
        in_proj_bias=torch.cat([pool.q_proj.bias, pool.k_proj.bias, pool.v_proj.bias]),
        bias_k=None,
        bias_v=None,
        add_zero_attn=False,
        dropout_p=0,
        out_proj_weight=pool.c_proj.weight,
        out_proj_bias=pool.c_proj.bias,
        use_separate_proj_weight=True,
        training=False,
        need_weights=False,
    )
    return x[0]


def reference_clipiqa(model, image: np.ndarray, prompts: tuple[str, str], pos_embedding: bool) -> float:
    """``CLIPIQAFixed.forward`` on one uint8 H×W×3 image."""
    import open_clip

    x = (to_tensor(image) - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        visual = model.visual
        h = visual.stem(x)
        for stage in (visual.layer1, visual.layer2, visual.layer3, visual.layer4):
            h = stage(h)
        image_features = authors_attention_pool(visual.attnpool, h, pos_embedding)
        text_features = model.encode_text(open_clip.get_tokenizer("RN50")(list(prompts)))
        image_features = image_features / image_features.norm(dim=-1, keepdim=True)
        text_features = text_features / text_features.norm(dim=-1, keepdim=True)
        logits = model.logit_scale.exp() * image_features @ text_features.t()
    return logits.softmax(dim=-1)[0, 0].item()


def test_every_prompt_pair_is_clips_tokenization():
    import open_clip

    tokenizer = open_clip.get_tokenizer("RN50")
    for name, pair in PROMPT_PAIRS.items():
        for text, ids in pair:
            expected = [token for token in tokenizer([text])[0].tolist() if token]
            assert expected == [49406, *ids, 49407], (name, text)


@pytest.mark.parametrize("positional", ["none", "interpolate"])
def test_clipiqa_equals_the_authors_procedure_on_photos_of_several_sizes(photos, reference_model, positional):
    """Square, non-square and sizes that are not multiples of 32 (the ResNet's stride), and every
    prompt pair on a non-square photo; 224² is where the interpolated positional embedding is CLIP's own."""
    from skimage import data

    images = [*photos, data.astronaut()[:224, :224], data.rocket()[:97, :131]]
    cases = [("quality", image) for image in images] + [(name, photos[1]) for name in PROMPT_PAIRS if name != "quality"]
    for name, image in cases:
        prompts = tuple(text for text, _ in PROMPT_PAIRS[name])
        expected = reference_clipiqa(reference_model, image, prompts, positional == "interpolate")
        got = losses.score(to_tensor(image), metrics=["clipiqa"], prompts=name, positional_embedding=positional)["clipiqa"]
        assert got.item() == pytest.approx(expected, rel=1e-5, abs=1e-7), (name, image.shape)
    values = [losses.score(to_tensor(image), metrics=["clipiqa"])["clipiqa"].item() for image in images]
    assert len(set(values)) == len(values) and all(0 < v < 1 for v in values)  # the generated weights tell photos apart


def test_preprocessing_is_clips_normalisation_at_the_images_own_size(photos, weights_dir):
    """The backbone sees the image unresized, normalised with CLIP's mean and std."""
    seen = []
    backbone = losses.get_backbone("clip_rn50")
    handle = backbone.visual.conv1.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
    try:
        losses.score(to_tensor(photos[1]), metrics=["clipiqa"])
    finally:
        handle.remove()
    expected = (to_tensor(photos[1]) - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(seen[0], expected, rtol=0, atol=1e-6)


def test_a_batch_scores_each_image_alone_and_gradients_flow(photos, weights_dir):
    batch = torch.cat([to_tensor(image[:128, :128]) for image in photos])
    together = losses.score(batch, metrics=["clipiqa"])["clipiqa"]
    alone = torch.cat([losses.score(image[None], metrics=["clipiqa"])["clipiqa"] for image in batch])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-7)
    x = batch.clone().requires_grad_(True)
    loss = 1 - losses.create_metric("clipiqa")(x).mean()  # a loss that raises CLIP-IQA
    loss.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_the_real_checkpoints_layout_loads_and_a_renamed_key_is_named():
    """open_clip's RN50 (OpenAI's names and shapes, taken on the meta device) as a full-size
    checkpoint of zeros: every key loads into the shape it has there; a renamed or missing key
    is refused by name."""
    import open_clip
    from open_clip.model import CLIP

    with torch.device("meta"):
        real = CLIP(**open_clip.get_model_config("RN50"), quick_gelu=True)
    state = {k: torch.zeros(v.shape, dtype=v.dtype) for k, v in real.state_dict().items() if k != "attn_mask"}
    assert architecture(state) == RN50
    image, text, scale = load_clip(state)
    loaded = {f"visual.{k}": v.shape for k, v in image.state_dict().items()}
    loaded.update({k: v.shape for k, v in text.state_dict().items()})
    assert {k: v.shape for k, v in state.items() if k != "logit_scale"} == loaded
    renamed = dict(state)
    renamed["visual.attnpool.q_proj.weights"] = renamed.pop("visual.attnpool.q_proj.weight")
    with pytest.raises(W.WeightsError, match=r"visual\.attnpool\.q_proj\.weight"):
        load_clip(renamed)
    with pytest.raises(W.WeightsError, match="text_projection"):
        load_clip({k: v for k, v in state.items() if k != "text_projection"})


def test_clipiqa_is_declared_with_its_weight_file_and_conventions(weights_dir):
    from losses.registry import REGISTRY

    entry = REGISTRY["clipiqa"]
    assert entry.lower_is_better is False and entry.needs == ("sr",)
    assert entry.choices["prompts"] == tuple(PROMPT_PAIRS) and entry.choices["positional_embedding"] == ("none", "interpolate")
    spec = losses.get_backbone("clip_rn50").spec.weights
    assert spec.filenames == ("RN50.pt",) and spec.sha256 in spec.url
    record = losses.conventions(["clipiqa"], prompts="sharpness")
    assert record["metrics"]["clipiqa"]["options"] == {"prompts": "sharpness", "positional_embedding": "none"}


def test_an_image_smaller_than_the_resnets_stride_is_refused_by_name(weights_dir):
    with pytest.raises(ValueError, match="clipiqa|clip_rn50|32"):
        losses.score(torch.rand(1, 3, 16, 40), metrics=["clipiqa"])
