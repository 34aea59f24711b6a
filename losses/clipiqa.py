"""CLIP-IQA (Wang, Chan and Loy, "Exploring CLIP for Assessing the Look and Feel of Images",
AAAI 2023): no reference image, higher is better, in [0, 1].

The image, on CLIP's normalisation and at its own size (no resize, no crop), goes through CLIP's
ResNet-50; its embedding's cosine similarities with an antonym prompt pair ("Good photo." /
"Bad photo."), scaled by CLIP's learned temperature (×100), are turned into probabilities by a
softmax over the pair, and the score is the probability of the positive prompt. This is the
authors' ``CLIPIQAFixed`` (RN50, ``pos_embedding=False``), the CLIP-IQA that papers report.

Options, each recorded in the conventions:

- ``prompts``: the pair (``losses.nets.clip.PROMPT_PAIRS``): ``quality`` (default) or one of the
  authors' degradation attributes (``brightness``, ``sharpness``, ``noisiness``,
  ``colorfulness``, ``contrast``), each the probability of its first prompt.
- ``positional_embedding``: ``none`` (default, the authors': the attention pool runs without
  CLIP's positional embedding, so any size is scored alike) or ``interpolate`` (the authors'
  ``pos_embedding=True``: the 50 × 2048 table resized bicubically, as one image, to the number of
  tokens; at 224² it is CLIP's own).
"""

from __future__ import annotations

import torch

from losses.nets.clip import PROMPT_PAIRS
from losses.nets.features import FeatureView, ImageBatch, LayerTerm

POSITIONAL = {"none": "logits", "interpolate": "logits_positional"}
DEFAULTS = dict(prompts="quality", positional_embedding="none")


def _probability_of_first(pair: int):
    def fn(name: str, weight: float, features: list[torch.Tensor]) -> torch.Tensor:
        return features[0][:, pair].float().softmax(dim=-1)[:, 0]

    return fn


CLIPIQA_TERMS = {
    (prompts, positional): LayerTerm(FeatureView.of("clip_rn50", [layer]), ("sr",), _probability_of_first(index))
    for index, prompts in enumerate(PROMPT_PAIRS)
    for positional, layer in POSITIONAL.items()
}


def clipiqa(batch: ImageBatch, options: dict) -> torch.Tensor:
    """Per-image CLIP-IQA (B,) of ``batch["sr"]`` with the chosen prompt pair and positional embedding."""
    term = CLIPIQA_TERMS[(options["prompts"], options["positional_embedding"])]
    return batch.reduced(term)[term.view.layers[0]]
