"""CLIP's ResNet image encoder and its text encoder (Radford et al., "Learning Transferable Visual
Models From Natural Language Supervision", ICML 2021), as CLIP-IQA reads them.

Written from the paper and OpenAI's published architecture: a ResNet whose stem is three 3×3
convolutions and an average pool, whose strided blocks average-pool before the convolution
("anti-aliased"), and whose global pool is one multi-head attention over the spatial tokens with
their mean as the query; a causal text transformer read at the end-of-text token. The sizes are
read from the checkpoint (OpenAI's ``RN50.pt`` gives the ResNet-50, 1024-d embeddings), so any
checkpoint of this layout loads by its own key names.

The backbone's layers are CLIP-IQA's logits, not feature maps: each image's embedding against
the text embeddings of every built-in antonym prompt pair (``PROMPT_PAIRS``), scaled by CLIP's
learned temperature, with the spatial tokens' positional embedding left out (``logits``, the
CLIP-IQA authors' default, which takes any image size) or resized to the token count as the
authors' ``pos_embedding=True`` resizes it (``logits_positional``). The text side runs once, when
the backbone is built, and only its embeddings are kept.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from losses.nets import weights as W

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
LAYERS = ("logits", "logits_positional")
StateDict = Mapping[str, torch.Tensor]

# CLIP-IQA's antonym prompt pairs (the authors' configs: image quality and the degradation
# attributes), each as CLIP's BPE tokenizer encodes it: start-of-text 49406, the tokens, then
# end-of-text 49407 (tests/test_clipiqa.py checks every pair against open_clip's tokenizer).
START, END = 49406, 49407
PROMPT_PAIRS: dict[str, tuple[tuple[str, tuple[int, ...]], tuple[str, tuple[int, ...]]]] = {
    "quality": (("Good photo.", (886, 1125, 269)), ("Bad photo.", (2103, 1125, 269))),
    "brightness": (("Bright photo.", (4852, 1125, 269)), ("Dark photo.", (3144, 1125, 269))),
    "sharpness": (("Sharp photo.", (8157, 1125, 269)), ("Blurry photo.", (21977, 1125, 269))),
    "noisiness": (("Noisy photo.", (33495, 1125, 269)), ("Clean photo.", (3772, 1125, 269))),
    "colorfulness": (("Colorful photo.", (11444, 1125, 269)), ("Dull photo.", (19433, 1125, 269))),
    "contrast": (("High contrast photo.", (1400, 18501, 1125, 269)), ("Low contrast photo.", (1042, 18501, 1125, 269))),
}


def prompt_tokens(context_length: int) -> torch.Tensor:
    """The token ids of every prompt pair, (pairs, 2, context_length), zero-padded as CLIP's tokenizer pads."""
    tokens = torch.zeros(len(PROMPT_PAIRS), 2, context_length, dtype=torch.long)
    for pair, prompts in enumerate(PROMPT_PAIRS.values()):
        for index, (_, ids) in enumerate(prompts):
            row = (START, *ids, END)
            tokens[pair, index, : len(row)] = torch.tensor(row)
    return tokens


class Bottleneck(nn.Module):
    """A ResNet bottleneck whose stride is an average pool after the 3×3 convolution (and before
    the 1×1 projection of the shortcut)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.downsample = None
        if stride > 1 or inplanes != planes * self.expansion:
            self.downsample = nn.Sequential(
                OrderedDict(
                    [
                        ("-1", nn.AvgPool2d(stride)),
                        ("0", nn.Conv2d(inplanes, planes * self.expansion, 1, bias=False)),
                        ("1", nn.BatchNorm2d(planes * self.expansion)),
                    ]
                )
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.avgpool(F.relu(self.bn2(self.conv2(out))))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class AttentionPool(nn.Module):
    """CLIP's attention pooling: the spatial tokens and their mean, one multi-head attention, the
    mean token's output as the embedding."""

    def __init__(self, tokens: int, width: int, heads: int, output: int):
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.zeros(tokens, width))
        self.k_proj, self.q_proj, self.v_proj = (nn.Linear(width, width) for _ in range(3))
        self.c_proj = nn.Linear(width, output)
        self.heads = heads

    def forward(self, x: torch.Tensor, positional: bool) -> torch.Tensor:
        x = x.flatten(2).permute(2, 0, 1)  # (HW, B, C)
        x = torch.cat([x.mean(dim=0, keepdim=True), x])
        if positional:  # the CLIP-IQA authors' resize: the (tokens × width) table as a bicubic image
            table = self.positional_embedding[None, None]
            x = x + F.interpolate(table, size=(x.shape[0], x.shape[2]), mode="bicubic")[0, 0][:, None, :].to(x.dtype)
        out, _ = F.multi_head_attention_forward(
            query=x[:1],
            key=x,
            value=x,
            embed_dim_to_check=x.shape[-1],
            num_heads=self.heads,
            q_proj_weight=self.q_proj.weight,
            k_proj_weight=self.k_proj.weight,
            v_proj_weight=self.v_proj.weight,
            in_proj_weight=None,
            in_proj_bias=torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias]),
            bias_k=None,
            bias_v=None,
            add_zero_attn=False,
            dropout_p=0.0,
            out_proj_weight=self.c_proj.weight,
            out_proj_bias=self.c_proj.bias,
            use_separate_proj_weight=True,
            training=False,
            need_weights=False,
        )
        return out[0]


class ImageEncoder(nn.Module):
    """CLIP's modified ResNet: ``blocks`` bottlenecks per stage, ``width`` stem channels."""

    def __init__(self, blocks: tuple[int, ...], width: int, tokens: int, output: int):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width // 2, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width // 2)
        self.conv2 = nn.Conv2d(width // 2, width // 2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width // 2)
        self.conv3 = nn.Conv2d(width // 2, width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        inplanes = width
        for stage, count in enumerate(blocks):
            planes = width * 2**stage
            layers = [Bottleneck(inplanes, planes, 1 if stage == 0 else 2)]
            layers += [Bottleneck(planes * Bottleneck.expansion, planes) for _ in range(1, count)]
            setattr(self, f"layer{stage + 1}", nn.Sequential(*layers))
            inplanes = planes * Bottleneck.expansion
        self.attnpool = AttentionPool(tokens, inplanes, inplanes // 64, output)
        self.stages = len(blocks)

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        for conv, bn in ((self.conv1, self.bn1), (self.conv2, self.bn2), (self.conv3, self.bn3)):
            x = F.relu(bn(conv(x)))
        x = F.avg_pool2d(x, 2)
        for stage in range(1, self.stages + 1):
            x = getattr(self, f"layer{stage}")(x)
        return x


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            OrderedDict([("c_fc", nn.Linear(width, width * 4)), ("gelu", QuickGELU()), ("c_proj", nn.Linear(width * 4, width))])
        )
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=mask)[0]
        return x + self.mlp(self.ln_2(x))


class QuickGELU(nn.Module):
    """x·σ(1.702x), the activation OpenAI's CLIP was trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class TextTransformer(nn.Module):
    def __init__(self, width: int, layers: int):
        super().__init__()
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(width, width // 64) for _ in range(layers))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x, mask)
        return x


class CLIPText(nn.Module):
    """The text encoder: token and position embeddings, a causal transformer, the final norm,
    read at each sequence's end-of-text token (its largest id), projected."""

    def __init__(self, vocab: int, context: int, width: int, layers: int, output: int):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab, width)
        self.positional_embedding = nn.Parameter(torch.zeros(context, width))
        self.transformer = TextTransformer(width, layers)
        self.ln_final = nn.LayerNorm(width)
        self.text_projection = nn.Parameter(torch.zeros(width, output))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        context = tokens.shape[-1]
        mask = torch.full((context, context), float("-inf")).triu(1)
        x = (self.token_embedding(tokens) + self.positional_embedding).permute(1, 0, 2)  # (L, N, width)
        x = self.ln_final(self.transformer(x, mask).permute(1, 0, 2))
        return x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)] @ self.text_projection


def architecture(state: StateDict) -> dict:
    """The sizes of a CLIP ResNet checkpoint, read from its shapes (OpenAI's layout)."""
    try:
        blocks = tuple(len({k.split(".")[2] for k in state if k.startswith(f"visual.layer{stage}.")}) for stage in range(1, 5))
        return dict(
            blocks=blocks,
            width=state["visual.layer1.0.conv1.weight"].shape[0],
            tokens=state["visual.attnpool.positional_embedding"].shape[0],
            output=state["text_projection"].shape[1],
            vocab=state["token_embedding.weight"].shape[0],
            context=state["positional_embedding"].shape[0],
            text_width=state["ln_final.weight"].shape[0],
            text_layers=len({k.split(".")[2] for k in state if k.startswith("transformer.resblocks.")}),
        )
    except KeyError as exc:
        raise W.WeightsError(f"not a CLIP ResNet checkpoint: no {exc.args[0]!r} (OpenAI's RN50.pt key names)") from None


# OpenAI's ResNet-50 (RN50.pt): a random initialisation takes these sizes.
RN50 = dict(blocks=(3, 4, 6, 3), width=64, tokens=50, output=1024, vocab=49408, context=77, text_width=512, text_layers=12)
# Entries of a checkpoint that are not weights: OpenAI's sizes, and the causal mask that
# open_clip's traced models carry as a buffer.
NOT_WEIGHTS = ("input_resolution", "context_length", "vocab_size", "attn_mask")


def build_clip(sizes: dict) -> tuple[ImageEncoder, CLIPText, nn.Parameter]:
    image = ImageEncoder(sizes["blocks"], sizes["width"], sizes["tokens"], sizes["output"])
    text = CLIPText(sizes["vocab"], sizes["context"], sizes["text_width"], sizes["text_layers"], sizes["output"])
    return image, text, nn.Parameter(torch.zeros(()))


def load_clip(state: StateDict | None) -> tuple[ImageEncoder, CLIPText, nn.Parameter]:
    """The encoders and the logit scale with ``state`` loaded (every key, by name), or seeded
    random weights of RN50's sizes when ``state`` is None (explicit opt-in only)."""
    if state is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            image, text, scale = build_clip(RN50)
            for parameter in [*image.parameters(), *text.parameters()]:
                if parameter.dim() >= 2:
                    nn.init.normal_(parameter, std=0.02)
            scale.data.fill_(4.6052)  # log(100), CLIP's trained temperature
        return image, text, scale
    state = {k: v for k, v in state.items() if k not in NOT_WEIGHTS}
    image, text, scale = build_clip(architecture(state))
    holder = nn.Module()
    holder.visual, holder.logit_scale = image, scale
    for name, module in text.named_children():
        holder.add_module(name, module)
    holder.positional_embedding, holder.text_projection = text.positional_embedding, text.text_projection
    missing, unexpected = holder.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise W.WeightsError(f"CLIP checkpoint: missing keys {sorted(missing)[:5]}, unexpected keys {sorted(unexpected)[:5]}")
    return image, text, scale
