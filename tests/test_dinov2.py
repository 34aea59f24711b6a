"""DINOv2 features equal the official model's at every input size (not only 518²).

The reference follows facebookresearch/dinov2's ``prepare_tokens_with_masks`` and
``get_intermediate_layers(n=range(8), reshape=True, norm=True)``, with its
``interpolate_pos_encoding`` written out here: bicubic, antialias=False, scale factor
(n + 0.1)/37. Tolerance: ≤ 1e-5 max relative difference per block, on scikit-image's photos.
"""

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from losses import CLPLoss, get_backbone

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def reflect_pad_14(x):
    pad_h, pad_w = (14 - x.shape[-2] % 14) % 14, (14 - x.shape[-1] % 14) % 14
    return F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), mode="reflect")


def official_interpolate_pos_encoding(pos_embed, npatch, w, h, patch_size=14, offset=0.1):
    """dinov2/models/vision_transformer.py: DinoVisionTransformer.interpolate_pos_encoding."""
    N = pos_embed.shape[1] - 1
    if npatch == N and w == h:
        return pos_embed
    pos_embed = pos_embed.float()
    class_pos_embed, patch_pos_embed = pos_embed[:, 0], pos_embed[:, 1:]
    dim = pos_embed.shape[-1]
    w0, h0 = w // patch_size, h // patch_size
    M = int(math.sqrt(N))
    patch_pos_embed = F.interpolate(
        patch_pos_embed.reshape(1, M, M, dim).permute(0, 3, 1, 2),
        mode="bicubic",
        antialias=False,
        scale_factor=(float(w0 + offset) / M, float(h0 + offset) / M),
    )
    assert (w0, h0) == patch_pos_embed.shape[-2:]
    patch_pos_embed = patch_pos_embed.permute(0, 2, 3, 1).view(1, -1, dim)
    return torch.cat((class_pos_embed.unsqueeze(0), patch_pos_embed), dim=1)


def official_features(vit, x):
    """prepare_tokens_with_masks → blocks 0..7 → norm → patch tokens as (B, 768, h, w)."""
    x = reflect_pad_14((x - MEAN) / STD)
    B, _, w, h = x.shape
    tokens = vit.patch_embed.proj(x).flatten(2).transpose(1, 2)  # the official PatchEmbed: conv, flatten
    tokens = torch.cat((vit.cls_token.expand(B, -1, -1), tokens), dim=1)
    tokens = tokens + official_interpolate_pos_encoding(vit.pos_embed, tokens.shape[1] - 1, w, h)
    outputs = []
    for block in list(vit.blocks)[:8]:
        tokens = block(tokens)
        outputs.append(vit.norm(tokens)[:, 1:].reshape(B, w // 14, h // 14, -1).permute(0, 3, 1, 2))
    return outputs


def photo(size, photos):
    image = np.asarray(photos[1], dtype=np.float32) / 255  # chelsea, 300×451
    if size[0] > image.shape[0] or size[1] > image.shape[1]:
        tensor = F.interpolate(torch.from_numpy(image).permute(2, 0, 1)[None], size=size, mode="bilinear", align_corners=False)
        return tensor.clamp(0, 1)
    return torch.from_numpy(image[: size[0], : size[1]].copy()).permute(2, 0, 1)[None]


@pytest.mark.parametrize("size", [(518, 518), (256, 256), (130, 200), (70, 90)])
def test_dinov2_features_equal_the_official_model(weights_dir, photos, size):
    backbone = get_backbone("dinov2", "cpu")
    x = photo(size, photos)
    with torch.no_grad():
        ours = backbone(x, backbone.layer_names)
        reference = official_features(backbone.model, x)
    for index, expected in enumerate(reference):
        got = ours[f"block{index}"]
        assert got.shape == expected.shape == (1, 768, math.ceil(size[0] / 14), math.ceil(size[1] / 14))
        relative = ((got - expected).abs().max() / expected.abs().max()).item()
        assert relative <= 1e-5, (size, index, relative)


def test_timm_resize_would_be_caught(weights_dir, photos):
    """The check above can fail: timm's own antialiased exact-size resize differs at 256²."""
    vit = get_backbone("dinov2", "cpu").model
    timm_vit = copy.copy(vit)
    del timm_vit._pos_embed  # back to timm's own method
    x = reflect_pad_14((photo((256, 256), photos) - MEAN) / STD)
    with torch.no_grad():
        timm_maps = timm_vit.forward_intermediates(x, indices=[3], norm=True, output_fmt="NCHW", intermediates_only=True)
        official = official_features(vit, photo((256, 256), photos))[3]
    assert ((timm_maps[0] - official).abs().max() / official.abs().max()).item() > 1e-3


def test_clp_dinov2_uses_the_official_features(weights_dir, photos):
    from .test_losses import reference_clp

    sr = photo((70, 90), photos)
    gt = (sr * 0.9 + 0.05).clamp(0, 1)
    lr = F.interpolate(gt, size=(35, 45), mode="area")
    vit = get_backbone("dinov2", "cpu").model
    with torch.no_grad():
        expected = reference_clp(lambda t: official_features(vit, t), sr, gt, lr, (1.0, 0.5, 0.5, 1.0, 0.5, 0.5, 1.0, 0.1))
    assert abs(CLPLoss("dinov2")(sr, gt, lr).item() - expected.item()) <= 1e-5 * abs(expected.item())
