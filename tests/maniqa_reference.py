"""A transcription of the MANIQA authors' published procedure (models/maniqa.py, models/swin.py,
predict_one_image.py, utils/inference_process.py, data/koniq10k/koniq10k.py), written for the
tests from the procedure: the ViT's blocks read through forward hooks, the transposed attention's
transpose-then-reshape, Swin's window partition, shift mask and relative position bias as the
authors build them, a Python loop over the batch for the weighted score, their crop functions
and their OpenCV loading. timm's ``VisionTransformer`` is the ViT, as in the authors' code.

It also writes the generated checkpoints: its ``state_dict()`` has the key names of the
authors' released ``ckpt_*.pt`` (including the keys MANIQA never reads).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# A small MANIQA of the authors' layout: ViT width 64 (one head), 12 blocks, patch 8 on 224²;
# 32 channels after conv1, Swin windows of 4 with 4 heads, two layers of two blocks.
TINY = dict(vit_dim=64, vit_hidden=128, patch=8, side=28, dim=32, hidden=48, window=4, depths=[2, 2], tab=2)


class TABlock(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.c_q, self.c_k, self.c_v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.norm_fact = dim**-0.5

    def forward(self, x):
        shortcut = x
        b, c, n = x.shape
        attn = torch.softmax(self.c_q(x) @ self.c_k(x).transpose(-2, -1) * self.norm_fact, dim=-1)
        return (attn @ self.c_v(x)).transpose(1, 2).reshape(b, c, n) + shortcut


def window_partition(x, ws):
    b, h, w, c = x.shape
    x = x.view(b, h // ws, ws, w // ws, ws, c)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, ws, ws, c)


def window_reverse(windows, ws, h, w):
    b = int(windows.shape[0] / (h * w / ws / ws))
    x = windows.view(b, h // ws, w // ws, ws, ws, -1)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(b, h, w, -1)


class WindowAttention(nn.Module):
    def __init__(self, dim, ws, heads):
        super().__init__()
        self.ws, self.heads = ws, heads
        self.scale = (dim // heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * ws - 1) * (2 * ws - 1), heads))
        coords = torch.stack(torch.meshgrid([torch.arange(ws), torch.arange(ws)], indexing="ij"))
        flat = torch.flatten(coords, 1)
        rel = (flat[:, :, None] - flat[:, None, :]).permute(1, 2, 0).contiguous()
        rel[:, :, 0] += ws - 1
        rel[:, :, 1] += ws - 1
        rel[:, :, 0] *= 2 * ws - 1
        self.register_buffer("relative_position_index", rel.sum(-1))
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, mask=None):
        b_, n, c = x.shape
        qkv = self.qkv(x).reshape(b_, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q * self.scale) @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(self.ws * self.ws, self.ws * self.ws, -1)
        attn = attn + bias.permute(2, 0, 1).contiguous().unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            attn = attn.view(b_ // nw, nw, self.heads, n, n) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.heads, n, n)
        attn = torch.softmax(attn, dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b_, n, c))


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class SwinBlock(nn.Module):
    def __init__(self, dim, res, heads, ws, shift, hidden):
        super().__init__()
        self.res, self.ws, self.shift = res, ws, shift
        if min(res) <= ws:
            self.shift, self.ws = 0, min(res)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, self.ws, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, hidden)
        if self.shift > 0:
            h, w = res
            img_mask = torch.zeros((1, h, w, 1))
            slices = (slice(0, -self.ws), slice(-self.ws, -self.shift), slice(-self.shift, None))
            cnt = 0
            for hs in slices:
                for wsl in slices:
                    img_mask[:, hs, wsl, :] = cnt
                    cnt += 1
            mw = window_partition(img_mask, self.ws).view(-1, self.ws * self.ws)
            attn_mask = mw.unsqueeze(1) - mw.unsqueeze(2)
            attn_mask = attn_mask.masked_fill(attn_mask != 0, (-100.0)).masked_fill(attn_mask == 0, 0.0)
        else:
            attn_mask = None
        self.register_buffer("attn_mask", attn_mask)

    def forward(self, x):
        h, w = self.res
        b, _, c = x.shape
        shortcut = x
        x = self.norm1(x).view(b, h, w, c)
        shifted = torch.roll(x, shifts=(-self.shift, -self.shift), dims=(1, 2)) if self.shift > 0 else x
        windows = window_partition(shifted, self.ws).view(-1, self.ws * self.ws, c)
        attn_windows = self.attn(windows, mask=self.attn_mask).view(-1, self.ws, self.ws, c)
        shifted = window_reverse(attn_windows, self.ws, h, w)
        x = torch.roll(shifted, shifts=(self.shift, self.shift), dims=(1, 2)) if self.shift > 0 else shifted
        x = shortcut + x.view(b, h * w, c)
        return x + self.mlp(self.norm2(x))


class BasicLayer(nn.Module):
    def __init__(self, dim, res, depth, heads, ws, hidden):
        super().__init__()
        self.res = res
        self.conv = nn.Conv2d(dim, dim, 3, 1, 1)
        self.blocks = nn.ModuleList([SwinBlock(dim, res, heads, ws, 0 if i % 2 == 0 else ws // 2, hidden) for i in range(depth)])

    def forward(self, x):
        for blk in self.blocks:
            x = blk(x)
        b, n, c = x.shape
        x = x.permute(0, 2, 1).reshape(b, c, self.res[0], self.res[1])  # 'b (h w) c -> b c h w'
        x = F.relu(self.conv(x))
        return x.flatten(2).permute(0, 2, 1)  # 'b c h w -> b (h w) c'


class SwinTransformer(nn.Module):
    def __init__(self, res, depths, heads, dim, ws, hidden, scale):
        super().__init__()
        self.scale, self.res = scale, res
        self.downsample = nn.Conv2d(dim, dim, kernel_size=3, stride=2, padding=1)  # built, never called
        self.layers = nn.ModuleList([BasicLayer(dim, res, depths[i], heads[i], ws, hidden) for i in range(len(depths))])

    def forward(self, x):
        b, c, h, w = x.shape
        x = x.flatten(2).permute(0, 2, 1)
        for layer in self.layers:
            x = self.scale * layer(x) + x
        return x.permute(0, 2, 1).reshape(b, c, self.res[0], self.res[1])


class ReferenceMANIQA(nn.Module):
    def __init__(self, sizes=TINY, scale=0.8):
        super().__init__()
        import timm.models.vision_transformer as vit

        dim, side = sizes["vit_dim"], sizes["side"]
        self.input_size = side
        self.vit = vit.VisionTransformer(
            img_size=side * sizes["patch"],
            patch_size=sizes["patch"],
            embed_dim=dim,
            depth=12,
            num_heads=max(1, dim // 64),
            mlp_ratio=sizes["vit_hidden"] / dim,
            num_classes=10,
        )
        self.outputs = []
        for layer in self.vit.modules():
            if isinstance(layer, vit.Block):
                layer.register_forward_hook(lambda module, inputs, output: self.outputs.append(output))
        channels, res = sizes["dim"], (side, side)
        self.tablock1 = nn.ModuleList([TABlock(side * side) for _ in range(sizes["tab"])])
        self.conv1 = nn.Conv2d(dim * 4, channels, 1, 1, 0)
        self.swintransformer1 = SwinTransformer(res, sizes["depths"], [4, 4], channels, sizes["window"], sizes["hidden"], scale)
        self.tablock2 = nn.ModuleList([TABlock(side * side) for _ in range(sizes["tab"])])
        self.conv2 = nn.Conv2d(channels, channels // 2, 1, 1, 0)
        self.swintransformer2 = SwinTransformer(res, sizes["depths"], [4, 4], channels // 2, sizes["window"], sizes["hidden"], scale)
        half = channels // 2
        self.fc_score = nn.Sequential(nn.Linear(half, half), nn.ReLU(), nn.Dropout(0.1), nn.Linear(half, 1), nn.ReLU())
        self.fc_weight = nn.Sequential(nn.Linear(half, half), nn.ReLU(), nn.Dropout(0.1), nn.Linear(half, 1), nn.Sigmoid())

    def forward(self, x):
        self.vit(x)
        x = torch.cat([self.outputs[i][:, 1:] for i in (6, 7, 8, 9)], dim=2)
        self.outputs.clear()
        s = self.input_size
        x = x.permute(0, 2, 1)  # 'b (h w) c -> b c (h w)'
        for tab in self.tablock1:
            x = tab(x)
        x = self.swintransformer1(self.conv1(x.reshape(x.shape[0], -1, s, s)))
        x = x.flatten(2)
        for tab in self.tablock2:
            x = tab(x)
        x = self.swintransformer2(self.conv2(x.reshape(x.shape[0], -1, s, s)))
        x = x.flatten(2).permute(0, 2, 1)  # 'b c h w -> b (h w) c'
        score = torch.tensor([])
        for i in range(x.shape[0]):
            f, w = self.fc_score(x[i]), self.fc_weight(x[i])
            score = torch.cat((score, (torch.sum(f * w) / torch.sum(w)).unsqueeze(0)), 0)
        return score


def generated_state(seed: int) -> dict[str, torch.Tensor]:
    """The reference's state dict at TINY's sizes, with weights that keep activations in range:
    matrices of half He-normal gain (a full gain makes this small random MANIQA
    chaotic: one pixel moved by 1/255 moved the score by 1.5%), norms near identity, small biases and a spread relative position bias."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ReferenceMANIQA().eval()
        state = model.state_dict()
        for key, value in state.items():
            if not value.is_floating_point() or key.endswith("attn_mask"):
                continue
            if key == "fc_score.3.bias":  # scores near 0.5, as the real checkpoints give
                state[key] = torch.full_like(value, 0.5)
            elif ".norm" in key and key.endswith("weight"):
                state[key] = torch.empty_like(value).uniform_(0.7, 1.3)
            elif key.endswith("bias") or key.endswith("relative_position_bias_table"):
                state[key] = torch.empty_like(value).uniform_(-0.1, 0.1)
            elif value.dim() >= 2:
                fan_in = value[0].numel()
                state[key] = torch.randn_like(value) * (0.25 / fan_in) ** 0.5
            else:
                state[key] = torch.randn_like(value) * 0.02
        return state


def reference_model(state: dict[str, torch.Tensor]) -> ReferenceMANIQA:
    model = ReferenceMANIQA().eval()
    model.load_state_dict(state)
    return model


def five_point_crop(idx, d_img, crop):
    _, _, h, w = d_img.shape
    top, left = [(0, 0), (0, w - crop), (h - crop, 0), (h - crop, w - crop), (h // 2 - crop // 2, w // 2 - crop // 2)][idx]
    return d_img[:, :, top : top + crop, left : left + crop]


def reference_score(model: ReferenceMANIQA, rgb: np.ndarray, crops: str) -> float:
    """One uint8 RGB H×W×3 image scored as the authors' scripts score it."""
    import cv2

    with torch.no_grad():
        if crops == "resize":  # the KonIQ-10k loader (cv2 reads BGR), then the one 224² view
            bgr = cv2.resize(np.ascontiguousarray(rgb[..., ::-1]), (224, 224), interpolation=cv2.INTER_CUBIC)
            img = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB).astype("float32") / 255
            x = torch.from_numpy((np.transpose(img, (2, 0, 1)) - 0.5) / 0.5).float()[None]
            return model(five_point_crop(0, x, 224)).item()
        img = np.transpose(rgb.astype("float32") / 255, (2, 0, 1))
        img = (img - 0.5) / 0.5
        if crops == "five_point":
            x = torch.from_numpy(img).float()[None]
            pred = 0
            for i in range(5):
                pred += model(five_point_crop(i, x, 224))
            return (pred / 5).item()
        np.random.seed(20)  # predict_one_image.py: setup_seed(20), then 20 random crops
        _, h, w = img.shape
        patches = []
        for _ in range(20):
            top = np.random.randint(0, h - 224)
            left = np.random.randint(0, w - 224)
            patches.append(img[:, top : top + 224, left : left + 224])
        avg = 0
        for patch in patches:
            avg += model(torch.from_numpy(patch).float().unsqueeze(0))
        return (avg / 20).item()
